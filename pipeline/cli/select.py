"""``avvp-pipe select``: rank audio x visual extractor pairings (seed paper section 3.2); calls selection."""

from __future__ import annotations

from pathlib import Path

import click

from avvp_pipe.models.metrics import metric_names
from avvp_pipe.selection.methods import METHODS

from avvp_pipe.pipeline.cli._options import optional_store, permission_options, recipe, recipe_options, store_options


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


@click.command("select")
@store_options
@click.option("--audio", required=True, help="Comma-separated audio stores EXTRACTOR[@KEY], e.g. vggish,openl3_audio.")
@click.option("--visual", required=True, help="Comma-separated 2D visual stores, e.g. resnet152,vgg19_bn,senet154.")
@click.option("--visual-3d", "visual_3d", default="none", show_default=True,
              help="One 3D visual store shared by every pairing (e.g. r2plus1d_18), or none.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output dir: ranking.json, ranking.csv, selection.md, ranking.png, f1_f2.png, pairings/.")
@click.option("--score", type=click.Choice(metric_names()), default="segment.type_at_av", show_default=True,
              help="Key of evaluate's JSON to rank by (and to pick each run's best epoch): LEVEL.SCORE or average.")
@click.option("--method", default="upper-bound", show_default=True,
              help=f"Comma list of {', '.join(METHODS)}: the trained upper bound F1 and training-free scores "
                   "(both = upper-bound,logme), e.g. upper-bound,logme,hscore,transrate,knn,cca.")
@click.option("--validate", is_flag=True,
              help="Also run the traditional protocol (train on train, epoch on val, test = F2) and compare.")
@recipe_options
@click.option("--parallel", type=click.IntRange(0), default=0, show_default=True,
              help="Runs trained at once (grouped matmuls); 0 = auto: 10 on cuda, 1 (one at a time) on cpu, "
                   "and at least --seeds (a pairing's seeds train together).")
@click.option("--seeds", type=click.IntRange(1), default=1, show_default=True,
              help="Runs per pairing and protocol (seeds --seed, --seed+1, ...), trained in one grouped run; "
                   "reports mean, sd, the runs and a 95% interval.")
@click.option("--bootstrap", type=click.IntRange(0), default=0, show_default=True,
              help="Resamples of the test clips for 95% intervals of every score, tau and rho (0 = none).")
@click.option("--bootstrap-seed", type=int, default=0, show_default=True, help="Seed of the resamples.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Train the groups on a local dask cluster of N processes (0 = one per GPU).")
@click.option("--scheduler", default=None, help="Address of a running dask scheduler, e.g. tcp://10.0.0.5:8786.")
@click.option("--overwrite", is_flag=True, help="Redo pairings whose results are already saved in --out.")
@permission_options
@click.option("--quiet", is_flag=True, help="No progress bars.")
def select(cache, dataset, annotations, audio, visual, visual_3d, out_dir, score, method, validate, parallel,
           seeds, bootstrap, bootstrap_seed, workers, scheduler, overwrite, allow_random_init, allow_simulated,
           quiet, **recipe_params) -> None:
    """Rank audio x visual extractor pairings by the upper bound F1: HAN trained, epoch-selected and
    scored on the test split (seed paper, section 3.2). Only test-split features are needed.

    --validate also runs the traditional protocol (F2) and reports Kendall tau, Spearman rho, top-1
    agreement and times. Finished pairings are saved in OUT/pairings and skipped on a rerun.
    --seeds 3 --bootstrap 1000 adds seed spread and 95% intervals; --workers 2 spreads training.

    Example:

    \b
        avvp-pipe select --cache cache --dataset llp --audio vggish,openl3_audio \\
            --visual resnet152,vgg19_bn,senet154 --visual-3d r2plus1d_18 \\
            --annotations data/llp --out runs/select --method upper-bound,logme,hscore,cca \\
            --seeds 3 --bootstrap 1000

    --validate needs train and val features too (extract all splits first).
    """
    from avvp_pipe.pipeline.llp.annotations import load_annotations
    from avvp_pipe.pipeline.train import TrainConfig
    from avvp_pipe.selection.report import format_ranking
    from avvp_pipe.selection.upper_bound import Candidates, SelectOptions, run_select

    config = TrainConfig(**recipe(recipe_params), select_metric=score)
    cands = Candidates(cache=cache, dataset=dataset, audio=_names(audio), visual=_names(visual),
                       visual_3d=optional_store(visual_3d),
                       allow_random_init=allow_random_init, allow_simulated=allow_simulated)
    options = SelectOptions(score=score, method=method, validate=validate, parallel=parallel, overwrite=overwrite,
                            progress=not quiet, seeds=seeds, bootstrap=bootstrap, bootstrap_seed=bootstrap_seed,
                            workers=workers, scheduler=scheduler)
    ranking = run_select(cands, load_annotations(annotations), config, str(out_dir), options,
                         notify=lambda message: click.echo(message, err=True))
    click.echo(format_ranking(ranking))
    click.echo("wrote " + ", ".join(ranking["files"]))


COMMANDS = [select]
