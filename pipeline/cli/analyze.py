"""``avvp-pipe analyze``: feature similarity against semantic similarity, and unimodal probes."""

from __future__ import annotations

import click

from avvp_pipe.core.device import AUTO, DEVICE_HELP

_MATCH_HELP = "any: share at least one label; exact: the same label set."


def _common(func):
    """Options every similarity subcommand shares."""
    options = [
        click.option("--split", default="test", show_default=True, type=click.Choice(["val", "test"]),
                     help="Split with dense truth whose labelled seconds are the queries."),
        click.option("--match", default="any", show_default=True, type=click.Choice(["any", "exact"]),
                     help=_MATCH_HELP),
        click.option("--clip", default=None, help="Clip for the 10x10 heatmap (default: first labelled one)."),
        click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
                     help="Folder for analysis.json and the PNGs (heatmap, bar chart)."),
        click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
                     help="Also write the JSON here (atomically)."),
        click.option("--block", type=click.IntRange(1), default=None,
                     help="Query seconds per similarity block (default: from a 256 MiB budget)."),
        click.option("--device", default=AUTO, show_default=True, help=f"Torch device: {DEVICE_HELP}."),
        click.option("--allow-simulated", is_flag=True, help="Accept simulated stores."),
        click.option("--allow-random-init", is_flag=True, help="Accept stores from random-init weights."),
        click.option("--no-progress", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group("analyze")
def analyze() -> None:
    """Seed-paper diagnostics: is the most similar second one with the same label? Probes per store.

    Metrics over the labelled seconds of a split (see `analyze features --help`):
    recall-top1 within and across modalities, distinguish (most similar visual second is
    labelled), precision (R-precision). Candidates are all seconds of the split,
    background included; a second never retrieves itself.
    """


def _emit(result: dict, rows: list[dict], seconds, ann, fsets, clip, out_dir, json_path, table2: bool = False) -> None:
    """Print the table (Table 2's layout with ``table2``); write JSON, the heatmap of one clip and the bar chart."""
    from avvp_pipe.pipeline.analyze import measure as lib

    click.echo(f"{seconds.split}: {result['seconds']['clips']} clips, {result['seconds']['audio_labelled']} labelled "
               f"audio and {result['seconds']['visual_labelled']} labelled visual seconds; match {result['match']}")
    if table2:
        result["table2"] = lib.table2_rows(rows)
    click.echo(lib.format_table2(result["table2"]) if table2 else lib.format_similarity_table(rows))
    row = lib.pick_clip(seconds, clip, ann)
    drawable = [fs for fs in fsets if fs.shared_space]
    if drawable:
        result["clip"] = lib.clip_similarity(drawable[0], seconds, row)
    elif clip is not None or out_dir is not None:
        click.echo(f"no heatmap: {fsets[0].note}")

    def figures(folder):
        made = {"bars": lib.similarity_bars(folder / "metrics.png", rows)}
        if "clip" in result:
            made["heatmap"] = lib.plot_heatmap(folder / f"heatmap_{result['clip']['clip']}.png", result["clip"])
        return made

    files = lib.write_outputs(result, out_dir=out_dir, json_path=json_path, figures=figures)
    for kind, path in files.items():
        click.echo(f"wrote {kind}: {path}")


@analyze.command("features")
@click.option("--cache", required=True, help="Cache root (folder or fsspec URL).")
@click.option("--dataset", required=True, help="Dataset name of the stores.")
@click.option("--audio", required=True, help="Audio store, EXTRACTOR[@KEY].")
@click.option("--visual", required=True, help="Visual store (2D frames averaged per second, or 3D).")
@click.option("--annotations", required=True, type=click.Path(file_okay=False), help="LLP annotation folder.")
@click.option("--align", default="none", show_default=True, type=click.Choice(["none", "cca"]),
              help="none: cosine in the raw spaces (across metrics only if widths match); "
                   "cca: map both into a CCA space fitted on --align-split first.")
@click.option("--align-split", default="train", show_default=True, help="Split the CCA is fitted on (no labels used).")
@click.option("--align-clips", default=2000, show_default=True, type=click.IntRange(2),
              help="At most this many clips of --align-split (seeded sample).")
@_common
def features(cache, dataset, audio, visual, annotations, align, align_split, align_clips, split, match, clip,
             out_dir, json_path, block, device, allow_simulated, allow_random_init, no_progress) -> None:
    """Similarity diagnostics of raw store features (seed paper Table 1, Figure 1).

    Example:

    \b
        avvp-pipe analyze features --cache cache --dataset llp --audio vggish --visual resnet152 \\
            --annotations data/llp --split test --align cca --out analysis/raw
    """
    from avvp_pipe.pipeline.analyze import measure as lib
    from avvp_pipe.pipeline.llp.annotations import load_annotations

    ann = load_annotations(annotations)
    seconds = lib.split_seconds(ann, split)
    fs = lib.store_features(cache, dataset, ann, seconds, audio, visual, align=align, align_split=align_split,
                            align_clips=align_clips, allow_random_init=allow_random_init,
                            allow_simulated=allow_simulated)
    row = lib.analyze_set(fs, seconds, match=match, block=block, device=device, progress=not no_progress)
    result = {"kind": "similarity", "split": split, "match": match, "seconds": seconds.counts(), "rows": [row]}
    _emit(result, [row], seconds, ann, [fs], clip, out_dir, json_path)


@analyze.command("run")
@click.option("--run", "--checkpoint", "run_dir", required=True, type=click.Path(file_okay=False, exists=True),
              help="Run folder written by `avvp-pipe train`.")
@click.option("--annotations", default=None, type=click.Path(file_okay=False),
              help="LLP annotation folder (default: the one recorded in the run's config.json).")
@_common
def run(run_dir, annotations, split, match, clip, out_dir, json_path, block, device, allow_simulated,
        allow_random_init, no_progress) -> None:
    """Diagnostics of a trained model's features before HAN (after g where MTSC kept it).

    Example:

    \b
        avvp-pipe analyze run --run runs/vggish+resnet152_mtsc-entire --split test --out analysis/entire
    """
    _compare_runs([run_dir], annotations, split, match, clip, out_dir, json_path, block, device, allow_simulated,
                  allow_random_init, no_progress)


@analyze.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--annotations", default=None, type=click.Path(file_okay=False),
              help="LLP annotation folder (default: the one in the first run's config.json).")
@_common
def compare(runs, annotations, split, match, clip, out_dir, json_path, block, device, allow_simulated,
            allow_random_init, no_progress) -> None:
    """The seed paper's Table 2 for any set of runs: one row per run, labelled by its MTSC reading
    (raw, part, entire and its non-default options), with recall, distinguish, precision
    (audio->visual, features before HAN) and Type@AV from each run's metrics.json.

    Example (the same pairing trained with --mtsc off, part, entire):

    \b
        avvp-pipe analyze compare runs/off runs/part runs/entire --split test --out analysis/table2
    """
    _compare_runs(list(runs), annotations, split, match, clip, out_dir, json_path, block, device, allow_simulated,
                  allow_random_init, no_progress, table2=True)


def _compare_runs(run_dirs, annotations, split, match, clip, out_dir, json_path, block, device, allow_simulated,
                  allow_random_init, no_progress, table2: bool = False) -> None:
    from avvp_pipe.pipeline.analyze import measure as lib

    ann, seconds, rows, fsets = lib.analyze_runs(run_dirs, annotations, split, match=match, block=block,
                                                 device=device, allow_simulated=allow_simulated,
                                                 allow_random_init=allow_random_init, progress=not no_progress)
    result = {"kind": "similarity", "split": split, "match": match, "seconds": seconds.counts(), "rows": rows}
    _emit(result, rows, seconds, ann, fsets, clip, out_dir, json_path, table2=table2)


@analyze.command("probe")
@click.option("--cache", required=True, help="Cache root (folder or fsspec URL).")
@click.option("--dataset", required=True, help="Dataset name of the stores.")
@click.option("--stores", default="all", show_default=True,
              help="Comma-separated EXTRACTOR[@KEY] list, or 'all' for every store of the dataset.")
@click.option("--annotations", required=True, type=click.Path(file_okay=False), help="LLP annotation folder.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["val", "test"]),
              help="Split with dense truth; the probe is fitted on some of its clips and scored on the rest.")
@click.option("--fit-fraction", default=0.5, show_default=True,
              type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Share of the split's clips the probe is fitted on.")
@click.option("--seed", default=0, show_default=True, help="Which clips are fitted on.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for probe.json and probe.png.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Also write the JSON here.")
@click.option("--device", default=AUTO, show_default=True, help=f"Torch device: {DEVICE_HELP}.")
@click.option("--allow-simulated", is_flag=True, help="Accept simulated stores.")
@click.option("--allow-random-init", is_flag=True, help="Accept stores from random-init weights.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def probe(cache, dataset, stores, annotations, split, fit_fraction, seed, out_dir, json_path, device,
          allow_simulated, allow_random_init, no_progress) -> None:
    """Linear probe per store on its own modality's per-second labels (seed paper Table 3 idea).

    Multi-label logistic regression, fitted on some clips of the split, scored on the others
    by mean average precision (and top-1 accuracy over labelled seconds).

    Example:

    \b
        avvp-pipe analyze probe --cache cache --dataset llp --stores all --annotations data/llp --out analysis/probe
    """
    from pathlib import Path

    from avvp_pipe.models.probe import ProbeConfig
    from avvp_pipe.pipeline.analyze import measure as lib
    from avvp_pipe.pipeline.llp.annotations import load_annotations

    ann = load_annotations(annotations)
    seconds = lib.split_seconds(ann, split)
    names = None if stores.strip() == "all" else [s.strip() for s in stores.split(",") if s.strip()]
    config = ProbeConfig(train_fraction=fit_fraction, seed=seed)
    rows = lib.probe_stores(cache, dataset, names, seconds, config=config, device=device,
                            allow_random_init=allow_random_init, allow_simulated=allow_simulated,
                            progress=not no_progress)
    click.echo(f"{split}: probe fitted on {rows[0]['fit_clips']} clips, scored on {rows[0]['score_clips']}")
    click.echo(lib.format_probe_table(rows))
    result = {"kind": "probe", "split": split, "fit_fraction": fit_fraction, "seed": seed, "rows": rows}
    files = lib.write_outputs(result, out_dir=out_dir, json_path=json_path,
                              figures=lambda folder: {"bars": lib.probe_bars(Path(folder) / "probe.png", rows)},
                              json_name="probe.json")
    for kind, path in files.items():
        click.echo(f"wrote {kind}: {path}")


COMMANDS = [analyze]
