"""``avvp-pipe cache``: list, verify, import and export feature stores."""

from __future__ import annotations

import os
from pathlib import Path

import click

DEFAULT_ROOT_HELP = "Cache folder or fsspec URL [default: $AVVP_CACHE, else ./avvp-cache]."


def default_root() -> str:
    """``$AVVP_CACHE``, else ``avvp-cache`` in the current folder."""
    return os.environ.get("AVVP_CACHE") or "avvp-cache"


@click.group("cache")
def cache_group() -> None:
    """Inspect and maintain the zarr feature cache (one store per dataset and extractor config).

    The cache root is $AVVP_CACHE, else ./avvp-cache, unless a command is given one.
    """


# ---------------------------------------------------------------------- ls


@cache_group.command("ls")
@click.argument("root", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the listing as JSON.")
def ls_command(root: str | None, as_json: bool) -> None:
    """List the stores under ROOT: dataset, extractor@key, kind, shape, progress per split,
    size and provenance. Random-init and simulated stores are shown in capitals.

    ROOT defaults to $AVVP_CACHE, else ./avvp-cache.

    Example: avvp-pipe cache ls ~/avvp-cache --json
    """
    from avvp_pipe.cache.report import format_listing, listing
    from avvp_pipe.core.io import dumps

    root = root or default_root()
    rows = listing(root)
    click.echo(dumps(rows) if as_json else format_listing(rows, root, _red))


def _red(text: str) -> str:
    return click.style(text, fg="red", bold=True)


# ---------------------------------------------------------------------- verify


@cache_group.command("verify")
@click.argument("target", metavar="STORE_URL_OR_ROOT")
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON.")
@click.option("--upgrade", is_flag=True,
              help="Also bring stores of an older layout up to this one (metadata only), so they open in xarray.")
def verify_command(target: str, as_json: bool, upgrade: bool) -> None:
    """Read every done clip of a store (or of every store under a cache root); clips that
    are unreadable, non-finite or whose chunk is missing go back to pending, so the next
    `extract` (or `cache import-npy`) recomputes exactly those.

    Exits 1 (partial failure) when any clip was reset.

    \b
    Example:
      avvp-pipe cache verify avvp-cache/llp/resnet152/3f9c0a1b2c3d4e5f.zarr
      avvp-pipe cache verify avvp-cache
      avvp-pipe cache verify --upgrade avvp-cache
    """
    from avvp_pipe.cache import raise_if_reset, verify_all
    from avvp_pipe.cache.report import format_verify
    from avvp_pipe.core.io import dumps

    reports = verify_all(target, upgrade=upgrade)
    click.echo(dumps(reports) if as_json else format_verify(reports))
    raise_if_reset(reports)


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
    from avvp_pipe.cache.npy_io import import_npy, raise_if_bad
    from avvp_pipe.cache.report import format_import
    from avvp_pipe.core.io import dumps

    summary = import_npy(src, root or default_root(), dataset, as_extractor, annotations=annotations,
                         workers=workers, dtype=dtype, overwrite=overwrite, modality=modality, progress=not quiet)
    if as_json:
        click.echo(dumps(summary))
    else:
        _echo(*format_import(summary))
    raise_if_bad(summary)


def _echo(out: list[str], err: list[str]) -> None:
    for line in out:
        click.echo(line)
    for line in err:
        click.echo(line, err=True)


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
    from avvp_pipe.cache.npy_io import export_npy
    from avvp_pipe.cache.report import format_export

    result = export_npy(store_url, out, overwrite=overwrite, allow_unreal=allow_unreal, workers=workers,
                        progress=not quiet)
    _echo(*format_export(result))


@cache_group.command("compare")
@click.argument("store_url", metavar="STORE")
@click.argument("folder", metavar="DIR", type=click.Path(path_type=Path, file_okay=False))
@click.option("--rtol", type=click.FloatRange(min=0), default=1e-4, show_default=True,
              help="Relative L2 at or below which a clip counts as the same features.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Write histograms of relative L2 and cosine similarity here (PNG).")
@click.option("--out", "out_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the full result (per clip and summary) as JSON here.")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
def compare_command(store_url: str, folder: Path, rtol: float, plot_path: Path | None, out_path: Path | None,
                    as_json: bool) -> None:
    """Compare STORE with a folder DIR of per-clip <id>.npy files (e.g. the released LLP
    features): per clip shape, max abs difference, cosine similarity and relative L2 (DIR is
    the reference); percentiles over clips; clips on one side only.

    \b
    Example:
      avvp-pipe cache compare avvp-cache/llp/vggish/3f9c0a1b2c3d4e5f.zarr feats/vggish --plot vggish.png
    """
    from avvp_pipe.cache.compare import compare, format_compare, plot_compare
    from avvp_pipe.core.io import atomic_write_json, dumps

    result = compare(store_url, folder, rtol=rtol)
    if out_path is not None:
        atomic_write_json(out_path, result)
    if plot_path is not None:
        plot_compare(result, plot_path)
    click.echo(dumps(result) if as_json else format_compare(result))


COMMANDS = [cache_group]
