"""``avvp-pipe train``: HAN (+ MTSC) on one extractor pairing; parses options, calls pipeline.train."""

from __future__ import annotations

from pathlib import Path

import click

_SPLITS = click.Choice(["train", "val", "test"])


@click.command("train")
@click.option("--cache", required=True, help="Feature cache root (local path or fsspec URL).")
@click.option("--dataset", required=True, help="Dataset name inside the cache, e.g. llp.")
@click.option("--audio", required=True, help="Audio store: EXTRACTOR or EXTRACTOR@KEY, e.g. vggish.")
@click.option("--visual", required=True, help="2D visual store: EXTRACTOR[@KEY], e.g. resnet152.")
@click.option("--visual-3d", "visual_3d", default="none", show_default=True,
              help="3D visual store EXTRACTOR[@KEY] (e.g. r2plus1d_18), or none for HAN without a 3D stream.")
@click.option("--annotations", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder with the official LLP CSV files.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run dir: config.json, checkpoint.pt, best.pt, metrics.json, predictions.npz, PNGs.")
@click.option("--epochs", type=int, default=40, show_default=True, help="Training epochs.")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Clips per step.")
@click.option("--lr", type=float, default=3e-4, show_default=True, help="Adam learning rate (StepLR 10, 0.1).")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of init, batch order and dropout.")
@click.option("--mtsc", type=click.Choice(["off", "part", "entire"]), default="off", show_default=True,
              help="MTSC contrastive loss on the features before HAN (seed paper).")
@click.option("--mtsc-weight", type=float, default=1.0, show_default=True, help="Weight of the MTSC loss.")
@click.option("--mtsc-decay", type=float, default=5.0, show_default=True, help="Time-lag exponent T_ij = 1/|i-j|^d.")
@click.option("--mtsc-anchor", type=click.Choice(["audio", "visual", "both"]), default="audio", show_default=True,
              help="Modality whose detached self-similarity is the off-diagonal target.")
@click.option("--keep-visual-head/--no-keep-visual-head", default=None,
              help="Feed MTSC's head g(v) to HAN (default: on iff --mtsc is not off).")
@click.option("--train-split", type=_SPLITS, default="train", show_default=True, help="Split trained on.")
@click.option("--select-split", type=_SPLITS, default="val", show_default=True, help="Split that picks the best epoch.")
@click.option("--eval-split", type=_SPLITS, default="test", show_default=True, help="Split the best epoch is scored on.")
@click.option("--select-metric", default="segment.type_at_av", show_default=True,
              help="Key of evaluate's JSON that picks the best epoch: LEVEL.SCORE (segment|event . audio, visual, "
                   "audio_visual, type_at_av, event_at_av) or average.")
@click.option("--device", default="cpu", show_default=True, help="Torch device, e.g. cpu, cuda, cuda:1.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="Autocast precision of the model (fp16 on cuda only).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.pt.")
@click.option("--overwrite", is_flag=True, help="Replace a run already in --out.")
@click.option("--allow-random-init", is_flag=True, help="Accept stores of random-init (not pretrained) features.")
@click.option("--allow-simulated", is_flag=True, help="Accept stores of simulated features (synth-features).")
@click.option("--quiet", is_flag=True, help="No progress bar or per-epoch lines.")
def train(cache, dataset, audio, visual, visual_3d, annotations, out_dir, epochs, batch_size, lr, seed, mtsc,
          mtsc_weight, mtsc_decay, mtsc_anchor, keep_visual_head, train_split, select_split, eval_split,
          select_metric, device, precision, resume, overwrite, allow_random_init, allow_simulated, quiet) -> None:
    """Train HAN on one audio/visual pairing with the official recipe (Adam 3e-4, StepLR 10/0.1,
    batch 16, 40 epochs), keep the best epoch on --select-split and score it on --eval-split.

    Every epoch is checkpointed; --resume continues a killed run and ends as an uninterrupted one would.

    Example:

    \b
        avvp-pipe train --cache cache --dataset llp --audio vggish --visual resnet152 \\
            --visual-3d r2plus1d_18 --annotations data/llp --out runs/han --mtsc entire
    """
    from pipeline.train import TrainConfig, summary, train_run

    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, mtsc=mtsc, mtsc_weight=mtsc_weight,
        mtsc_decay=mtsc_decay, mtsc_anchor=mtsc_anchor, keep_visual_head=keep_visual_head,
        train_split=train_split, select_split=select_split, eval_split=eval_split,
        select_metric=select_metric, device=device, precision=precision,
    )  # fmt: skip
    result = train_run(
        cache, dataset, annotations, audio, visual, None if visual_3d.lower() == "none" else visual_3d,
        config, out_dir, resume=resume, overwrite=overwrite, allow_random_init=allow_random_init,
        allow_simulated=allow_simulated, progress=not quiet,
    )  # fmt: skip
    if result.already_finished:
        click.echo(f"{out_dir}: the run is already finished ({len(result.history)} epochs); nothing to do")
    click.echo(summary(result))


COMMANDS = [train]
