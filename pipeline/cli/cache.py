"""``avvp-pipe cache``: list, verify, import and export feature stores."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

DEFAULT_ROOT_HELP = "Cache folder or fsspec URL [default: $AVVP_CACHE, else ./avvp-cache]."
#: Kinds whose numbers are not from pretrained weights: shown in capitals (red on a terminal).
UNREAL = {"random-init": "RANDOM-INIT (not pretrained)", "simulated": "SIMULATED (not real features)"}


def default_root() -> str:
    """``$AVVP_CACHE``, else ``avvp-cache`` in the current folder."""
    return os.environ.get("AVVP_CACHE") or "avvp-cache"


@click.group("cache")
def cache_group() -> None:
    """Inspect and maintain the zarr feature cache (one store per dataset and extractor config).

    The cache root is $AVVP_CACHE, else ./avvp-cache, unless a command is given one.
    """


# ---------------------------------------------------------------------- ls


def _kind_label(kind: str) -> str:
    if kind in UNREAL:
        return click.style(UNREAL[kind], fg="red", bold=True)
    return kind


def _provenance(store) -> dict[str, Any]:
    prov = dict(store.attrs.get("provenance", {}))
    return {
        "created": prov.get("created"),
        "host": prov.get("host"),
        "weights": prov.get("weights_identity", store.config.get("weights_identity")),
        "imported_from": prov.get("imported_from"),
        "file_count": prov.get("file_count"),
        "content_xxh3_128": prov.get("content_xxh3_128"),
    }


def _progress_text(progress: dict[str, dict[str, int]]) -> str:
    order = [s for s in ("train", "val", "test", "unsplit") if s in progress]
    order += [s for s in progress if s not in order and s != "all"]
    parts = [f"{s} {progress[s]['done']}/{progress[s]['total']}" for s in order]
    failed = progress.get("all", {}).get("failed", 0)
    return "  ".join(parts) + (f"  ({failed} failed)" if failed else "")


@cache_group.command("ls")
@click.argument("root", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the listing as JSON.")
def ls_command(root: str | None, as_json: bool) -> None:
    """List the stores under ROOT: dataset, extractor@key, kind, shape, progress per split,
    size and provenance. Random-init and simulated stores are shown in capitals.

    ROOT defaults to $AVVP_CACHE, else ./avvp-cache.

    Example: avvp-pipe cache ls ~/avvp-cache --json
    """
    from cache import list_stores
    from pipeline.report import human_bytes

    root = root or default_root()
    rows = []
    for store in list_stores(root):
        row = store.summary()
        row["provenance"] = _provenance(store)
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo(f"no stores under {root}")
        return
    for row in rows:
        shape = "x".join(str(n) for n in row["shape"])
        click.echo(f"{row['dataset']}  {row['name']}  {_kind_label(row['kind'])}  {row['modality']}  "
                   f"{shape} {row['dtype']}  {_progress_text(row['progress'])}  {human_bytes(row['size_bytes'])}")
        prov = row["provenance"]
        source = f"imported from {prov['imported_from']} ({prov['file_count']} files)" if prov["imported_from"] else ""
        details = [f"created {prov['created']}", f"host {prov['host']}", f"weights {prov['weights'] or '-'}", source]
        click.echo("    " + ", ".join(d for d in details if d))
        click.echo(f"    {row['url']}")


# ---------------------------------------------------------------------- verify


def _stores_at(target: str) -> list:
    """One store if ``target`` is a store, else every store under the root ``target``."""
    from cache import list_stores, open_store
    from pipeline.errors import StoreError

    try:
        return [open_store(target)]
    except StoreError:
        stores = list_stores(target)
    if not stores:
        raise StoreError(f"{target}: neither a feature store nor a cache folder with stores")
    return stores


@cache_group.command("verify")
@click.argument("target", metavar="STORE_URL_OR_ROOT")
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON.")
def verify_command(target: str, as_json: bool) -> None:
    """Read every done clip of a store (or of every store under a cache root); clips that
    are unreadable, non-finite or whose chunk is missing go back to pending, so the next
    `extract` (or `cache import-npy`) recomputes exactly those.

    Exits 1 (partial failure) when any clip was reset.

    \b
    Example:
      avvp-pipe cache verify avvp-cache/llp/resnet152/3f9c0a1b2c3d4e5f.zarr
      avvp-pipe cache verify avvp-cache
    """
    from cache import verify
    from pipeline.errors import PartialFailure

    reports = [verify(store) for store in _stores_at(target)]
    if as_json:
        click.echo(json.dumps(reports, indent=2))
    else:
        for report in reports:
            click.echo(f"{report['store']}: checked {report['checked']} done clips, reset {len(report['reset'])}")
            for cid, reason in list(report["reset"].items())[:20]:
                click.echo(f"  {cid}: {reason}")
            if len(report["reset"]) > 20:
                click.echo(f"  ... and {len(report['reset']) - 20} more")
    reset = sum(len(r["reset"]) for r in reports)
    if reset:
        raise PartialFailure(f"{reset} clips were reset to pending; rerun extraction or import to recompute them")


# ---------------------------------------------------------------------- import / export


@cache_group.command("import-npy")
@click.argument("src", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--cache", "root", default=None, help=DEFAULT_ROOT_HELP)
@click.option("--dataset", required=True, help="Dataset name of the store (e.g. llp).")
@click.option("--as", "as_extractor", required=True,
              help="Extractor these features come from (e.g. resnet152, vggish, r2plus1d_18).")
@click.option("--annotations", type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="LLP annotation folder: the store's clip list becomes its full list (all splits).")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Storage dtype of the store.")
@click.option("--modality", type=click.Choice(["audio", "visual-2d", "visual-3d"]),
              help="Needed only when --as is neither in the registry nor vggish/res152/r2plus1d_18.")
@click.option("--workers", type=click.IntRange(min=1), default=8, show_default=True, help="Reader threads.")
@click.option("--overwrite", is_flag=True, help="Import every file again, even clips already done.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def import_npy_command(src: Path, root: str | None, dataset: str, as_extractor: str, annotations: Path | None,
                       dtype: str, modality: str | None, workers: int, overwrite: bool, quiet: bool,
                       as_json: bool) -> None:  # fmt: skip
    """Import a folder of per-clip .npy files (one float32 <11-char id>.npy per clip, the
    format of every public AVVP codebase) into a cache store of kind "imported".

    Shapes are checked against the extractor registry's spec of --as when it has one, else
    against the files' most common shape. Each bad file (wrong shape or dtype, not .npy,
    truncated, unknown id) gets one error line, the rest is imported, and the command exits
    1. Rerunning resumes: clips already done are skipped.

    \b
    Example:
      avvp-pipe cache import-npy feats/res152 --cache avvp-cache --dataset llp \\
        --as resnet152 --annotations ../shared/llp
    """
    from cache.npy_io import import_npy
    from pipeline.errors import PartialFailure

    try:
        summary = import_npy(src, root or default_root(), dataset, as_extractor, annotations=annotations,
                             workers=workers, dtype=dtype, overwrite=overwrite, modality=modality,
                             progress=not quiet)
    except PartialFailure as err:
        _print_import(getattr(err, "summary", {}), as_json)
        raise
    _print_import(summary, as_json)


def _print_import(summary: dict[str, Any], as_json: bool) -> None:
    if not summary:
        return
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    from pipeline.report import human_seconds

    shape = "x".join(str(n) for n in summary["shape"])
    click.echo(f"imported {summary['imported']} clips into {summary['dataset']}/{summary['name']} (kind imported) "
               f"from {summary['source']} in {human_seconds(summary['seconds'])}; "
               f"{summary['skipped_done']} already done")
    click.echo(f"  shape {shape} from {summary['shape_source']}; modality {summary['modality']} from "
               f"{summary['modality_source']}; stored as {summary['dtype']}")
    click.echo(f"  clip list: {summary['clips']} clips from {summary['clip_list']}; {summary['files']} files; "
               f"content xxh3-128 {summary['content_xxh3_128']}")
    click.echo(f"  store: {summary['store']}")
    missing = summary["missing"]
    if missing:
        click.echo(f"warning: {len(missing)} listed clips have no file in {summary['source']} "
                   f"(e.g. {', '.join(missing[:5])}); they stay pending", err=True)
    if summary["ignored"]:
        click.echo(f"note: ignored {len(summary['ignored'])} hidden files or folders "
                   f"(e.g. {', '.join(summary['ignored'][:3])})", err=True)
    for name, reason in summary["bad"].items():
        click.echo(f"error: {Path(summary['source']) / name}: {reason}", err=True)


@cache_group.command("export-npy")
@click.argument("store_url", metavar="STORE")
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option("--overwrite", is_flag=True, help="Rewrite files that already exist with the right shape.")
@click.option("--allow-unreal", is_flag=True, help="Also export random-init or simulated stores.")
@click.option("--workers", type=click.IntRange(min=1), default=4, show_default=True, help="Writer threads.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def export_npy_command(store_url: str, out: Path, overwrite: bool, allow_unreal: bool, workers: int,
                       quiet: bool) -> None:
    """Write each done clip of STORE (a store path or URL, see `cache ls`) to OUT as a float32
    <11-char id>.npy, the layout public AVVP code reads. Files are written atomically;
    rerunning skips files that exist with the right shape.

    \b
    Example:
      avvp-pipe cache export-npy avvp-cache/llp/resnet152/3f9c0a1b2c3d4e5f.zarr feats/res152
    """
    from cache.npy_io import export_npy
    from pipeline.report import human_seconds

    result = export_npy(store_url, out, overwrite=overwrite, allow_unreal=allow_unreal, workers=workers,
                        progress=not quiet)
    shape = "x".join(str(n) for n in result["shape"])
    click.echo(f"exported {result['written']} clips ({shape} float32) of {result['name']} to {result['out']} "
               f"in {human_seconds(result['seconds'])}; kept {result['skipped_existing']} existing files")
    if result["not_done"]:
        click.echo(f"warning: {result['not_done']} clips of the store are not done and were not exported", err=True)
    if result["kind"] != "extracted" and result["kind"] != "imported":
        click.echo(f"warning: these are {result['kind']} features; the .npy files do not say so", err=True)


COMMANDS = [cache_group]
