"""``avvp-pipe select``: rank audio x visual extractor pairings (seed paper section 3.2); calls selection."""

from __future__ import annotations

from pathlib import Path

import click


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


@click.command("select")
@click.option("--cache", required=True, help="Feature cache root (local path or fsspec URL).")
@click.option("--dataset", required=True, help="Dataset name inside the cache, e.g. llp.")
@click.option("--audio", required=True, help="Comma-separated audio stores EXTRACTOR[@KEY], e.g. vggish,openl3_audio.")
@click.option("--visual", required=True, help="Comma-separated 2D visual stores, e.g. resnet152,vgg19_bn,senet154.")
@click.option("--visual-3d", "visual_3d", default="none", show_default=True,
              help="One 3D visual store shared by every pairing (e.g. r2plus1d_18), or none.")
@click.option("--annotations", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder with the official LLP CSV files.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output dir: ranking.json, ranking.csv, ranking.png, f1_f2.png, pairings/*.json.")
@click.option("--score", default="segment.type_at_av", show_default=True,
              help="Key of evaluate's JSON to rank by (and to pick each run's best epoch): LEVEL.SCORE or average.")
@click.option("--method", type=click.Choice(["upper-bound", "logme", "both"]), default="upper-bound",
              show_default=True, help="Rank by the trained upper bound F1, by training-free LogME, or both.")
@click.option("--validate", is_flag=True,
              help="Also run the traditional protocol (train on train, epoch on val, test = F2) and compare.")
@click.option("--epochs", type=int, default=40, show_default=True, help="Training epochs per pairing.")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Clips per step.")
@click.option("--lr", type=float, default=3e-4, show_default=True, help="Adam learning rate (StepLR 10, 0.1).")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of init, batch order and dropout.")
@click.option("--mtsc", type=click.Choice(["off", "part", "entire"]), default="off", show_default=True,
              help="MTSC contrastive loss, as in avvp-pipe train.")
@click.option("--mtsc-weight", type=float, default=1.0, show_default=True, help="Weight of the MTSC loss.")
@click.option("--mtsc-decay", type=float, default=5.0, show_default=True, help="Time-lag exponent T_ij = 1/|i-j|^d.")
@click.option("--mtsc-anchor", type=click.Choice(["audio", "visual", "both"]), default="audio", show_default=True,
              help="Modality whose detached self-similarity is the off-diagonal target.")
@click.option("--parallel", type=click.IntRange(0), default=0, show_default=True,
              help="Pairings trained at once (grouped matmuls); 0 = auto: 10 on cuda, 1 (one at a time) on cpu.")
@click.option("--device", default="cpu", show_default=True, help="Torch device, e.g. cpu, cuda.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="Autocast precision (fp16 on cuda only; fp16 trains pairings one at a time).")
@click.option("--overwrite", is_flag=True, help="Redo pairings whose results are already saved in --out.")
@click.option("--allow-random-init", is_flag=True, help="Accept stores of random-init (not pretrained) features.")
@click.option("--allow-simulated", is_flag=True, help="Accept stores of simulated features (synth-features).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def select(cache, dataset, audio, visual, visual_3d, annotations, out_dir, score, method, validate, epochs,
           batch_size, lr, seed, mtsc, mtsc_weight, mtsc_decay, mtsc_anchor, parallel, device, precision,
           overwrite, allow_random_init, allow_simulated, quiet) -> None:
    """Rank audio x visual extractor pairings by the upper bound F1: HAN trained, epoch-selected and
    scored on the test split (seed paper, section 3.2). Only test-split features are needed.

    --validate also runs the traditional protocol (F2) and reports Kendall tau, Spearman rho, top-1
    agreement and times. Finished pairings are saved in OUT/pairings and skipped on a rerun.

    Example:

    \b
        avvp-pipe select --cache cache --dataset llp --audio vggish,openl3_audio \\
            --visual resnet152,vgg19_bn,senet154 --visual-3d r2plus1d_18 \\
            --annotations data/llp --out runs/select --method both

    --validate needs train and val features too (extract all splits first).
    """
    from pipeline.errors import AvvpError
    from pipeline.llp import load_annotations
    from pipeline.train import TrainConfig, metric_names
    from selection.report import format_ranking
    from selection.upper_bound import Candidates, SelectOptions, run_select

    if score not in metric_names():
        raise AvvpError(f"--score {score!r}: expected one of {', '.join(metric_names())}")
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, mtsc=mtsc, mtsc_weight=mtsc_weight,
                         mtsc_decay=mtsc_decay, mtsc_anchor=mtsc_anchor, device=device, precision=precision,
                         select_metric=score)
    cands = Candidates(cache=cache, dataset=dataset, audio=_names(audio), visual=_names(visual),
                       visual_3d=None if visual_3d.lower() == "none" else visual_3d,
                       allow_random_init=allow_random_init, allow_simulated=allow_simulated)
    options = SelectOptions(score=score, method=method, validate=validate, parallel=parallel, overwrite=overwrite,
                            progress=not quiet)
    ranking = run_select(cands, load_annotations(annotations), config, str(out_dir), options,
                         notify=lambda message: click.echo(message, err=True))
    click.echo(format_ranking(ranking))
    click.echo("wrote " + ", ".join(ranking["files"]))


COMMANDS = [select]
