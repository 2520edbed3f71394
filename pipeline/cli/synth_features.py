"""``avvp-pipe synth-features``: simulated feature stores for a real (or synthetic) label structure."""

from __future__ import annotations

import os
from pathlib import Path

import click


@click.command("synth-features")
@click.argument("root")
@click.option("--dataset", required=True, help="Dataset name the stores are filed under (e.g. llp-sim).")
@click.option("--annotations", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Official-format LLP annotation folder whose clips, splits and labels to simulate.")
@click.option("--extractor", "extractors", multiple=True, metavar="NAME:MODALITY:DIM:QUALITY",
              help="A simulated extractor; MODALITY is audio, visual-2d (80 frames) or visual-3d; "
                   "QUALITY in [0, 1] sets signal-to-noise and cross-modal alignment. Repeatable.")
@click.option("--preset", type=click.Choice(["llp"]),
              help="Add sim_vggish, sim_openl3_audio, sim_resnet152, sim_vgg19_bn and sim_r2plus1d_18 "
                   "with LLP's shapes and distinct qualities (see avvp_pipe.pipeline.synth.features.PRESETS).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Same seed, annotations and extractor => identical stores.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Storage dtype (float16 halves disk and write time).")
@click.option("--overwrite", is_flag=True, help="Recompute every clip (otherwise done clips are kept).")
@click.option("--limit", type=click.IntRange(min=0), help="Stop each store after this many new clips.")
@click.option("--workers", type=click.IntRange(min=1), default=lambda: min(4, os.cpu_count() or 1),
              show_default="min(4, CPUs)", help="Processes per store (used from 1,000 pending clips on).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def synth_features(root: str, dataset: str, annotations: Path, extractors: tuple[str, ...],
                   preset: str | None, seed: int, dtype: str, overwrite: bool, limit: int | None,
                   workers: int, quiet: bool) -> None:  # fmt: skip
    """Write SIMULATED feature stores under ROOT for every clip of an annotation set, without
    video: per-second features from class prototypes plus noise, following each clip's
    per-second truth (dense labels for val/test; plausible seconds consistent with the weak
    labels for train). Stores are marked simulated; the truth is written to
    ROOT/DATASET/simulated_truth.npz. Rerunning resumes: done clips are kept.

    Example: avvp-pipe synth-features avvp-cache --dataset llp-sim --annotations ../shared/llp
    --extractor sim_a:audio:128:0.3 --extractor sim_v:visual-2d:2048:0.9 --preset llp
    """
    from avvp_pipe.pipeline.llp.annotations import load_annotations
    from avvp_pipe.core.fmt import human_seconds, table
    from avvp_pipe.pipeline.synth.features import parse_extractors, synthesize_features

    specs = parse_extractors(extractors, preset)
    ann = load_annotations(annotations)
    summary = synthesize_features(root, dataset, ann, specs, seed=seed, dtype=dtype, overwrite=overwrite,
                                  progress=not quiet, limit=limit, workers=workers)
    rows = [(s["name"], f"{s['quality']:g}", s["written"], s["already_done"], human_seconds(s["seconds"]), s["url"])
            for s in summary["stores"]]
    click.echo(f"synth-features: {summary['clips']} clips of {dataset} (SIMULATED features), "
               f"truth {summary['truth']}")
    click.echo(table(["store", "quality", "written", "already done", "time", "url"], rows))


COMMANDS = [synth_features]
