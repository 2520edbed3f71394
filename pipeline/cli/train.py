"""``avvp-pipe train``: HAN (+ MTSC) on one extractor pairing; parses options, calls avvp_pipe.pipeline.train."""

from __future__ import annotations

from pathlib import Path

import click

from avvp_pipe.pipeline.cli._options import optional_store, permission_options, recipe, recipe_options, store_options

_SPLITS = click.Choice(["train", "val", "test"])


@click.command("train")
@store_options
@click.option("--audio", required=True, help="Audio store: EXTRACTOR or EXTRACTOR@KEY, e.g. vggish.")
@click.option("--visual", required=True, help="2D visual store: EXTRACTOR[@KEY], e.g. resnet152.")
@click.option("--visual-3d", "visual_3d", default="none", show_default=True,
              help="3D visual store EXTRACTOR[@KEY] (e.g. r2plus1d_18), or none for HAN without a 3D stream.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run dir: config.json, checkpoint.pt, best.pt, metrics.json, predictions.npz, PNGs.")
@recipe_options
@click.option("--keep-visual-head/--no-keep-visual-head", default=None,
              help="Feed MTSC's head g(v) to HAN (default: on iff --mtsc is not off).")
@click.option("--train-split", type=_SPLITS, default="train", show_default=True, help="Split trained on.")
@click.option("--select-split", type=_SPLITS, default="val", show_default=True, help="Split that picks the best epoch.")
@click.option("--eval-split", type=_SPLITS, default="test", show_default=True, help="Split the best epoch is scored on.")
@click.option("--select-metric", default="segment.type_at_av", show_default=True,
              help="Key of evaluate's JSON that picks the best epoch: LEVEL.SCORE (segment|event . audio, visual, "
                   "audio_visual, type_at_av, event_at_av) or average.")
@click.option("--seeds", type=int, default=1, show_default=True,
              help="Train the pairing K times (seeds --seed, --seed+1, ...) in one grouped run: OUT/seed-<s>/ "
                   "per seed and OUT/seeds.json (mean, sd, runs, 95% t-interval per metric).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.pt.")
@click.option("--overwrite", is_flag=True, help="Replace a run already in --out.")
@permission_options
@click.option("--quiet", is_flag=True, help="No progress bar or per-epoch lines.")
def train(cache, dataset, annotations, audio, visual, visual_3d, out_dir, keep_visual_head, train_split,
          select_split, eval_split, select_metric, seeds, resume, overwrite, allow_random_init, allow_simulated, quiet,
          **recipe_params) -> None:
    """Train HAN on one audio/visual pairing with the official recipe (Adam 3e-4, StepLR 10/0.1,
    batch 16, 40 epochs), keep the best epoch on --select-split and score it on --eval-split.

    Every epoch is checkpointed; --resume continues a killed run and ends as an uninterrupted one would.
    --seeds 3 trains seeds --seed .. --seed+2 together and prints their mean, sd and 95% interval.

    Example:

    \b
        avvp-pipe train --cache cache --dataset llp --audio vggish --visual resnet152 \\
            --visual-3d r2plus1d_18 --annotations data/llp --out runs/han --mtsc entire
    """
    from avvp_pipe.pipeline.train import TrainConfig, summary, train_run

    config = TrainConfig(**recipe(recipe_params), keep_visual_head=keep_visual_head, train_split=train_split,
                         select_split=select_split, eval_split=eval_split, select_metric=select_metric)
    store_args = (cache, dataset, annotations, audio, visual, optional_store(visual_3d), config, out_dir)
    flags = {"resume": resume, "overwrite": overwrite, "allow_random_init": allow_random_init,
             "allow_simulated": allow_simulated, "progress": not quiet}
    if seeds != 1:
        _train_seeds(store_args, seeds, flags)
        return
    result = train_run(*store_args, **flags)
    if result.already_finished:
        click.echo(f"{out_dir}: the run is already finished ({len(result.history)} epochs); nothing to do")
    click.echo(summary(result, config.device))


def _train_seeds(store_args: tuple, seeds: int, flags: dict) -> None:
    from avvp_pipe.pipeline.train.seeds import format_seeds, train_seeds_run

    result = train_seeds_run(*store_args, seeds, **flags)
    if result.already_finished:
        click.echo(f"{result.out_dir}: all {len(result.seeds)} seeds are already finished; nothing to do")
    click.echo(format_seeds(result.summary))
    click.echo(f"run dirs: {', '.join(str(r.out_dir) for r in result.results)}; summary: "
               f"{result.out_dir / 'seeds.json'}")


COMMANDS = [train]
