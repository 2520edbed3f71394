"""``cache compare``: are a store's features the released ones? One clip at a time, then a summary.

The question comes up whenever clips are re-downloaded or features re-extracted ("my VGGish
features differ from the official ones"). A store and a folder of per-clip ``<id>.npy``
files (the release's layout) are compared clip by clip on the clips both hold: shape, max
absolute difference, cosine similarity of the whole clip and of its worst row, and relative
L2 ``||store - file|| / ||file||`` (the folder is the reference). All in float64, so the
numbers measure the features, not this comparison. Clips on one side only are listed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from avvp_pipe.cache.store import open_store
from avvp_pipe.core.errors import AvvpError, one_line
from avvp_pipe.core.io import atomic_path

#: Percentiles the summary reports for each per-clip measure.
PERCENTILES = (0, 1, 5, 25, 50, 75, 95, 99, 100)
#: Relative L2 at or below which a clip counts as "the same features" by default: float32
#: round-off of a deep network's output stays orders of magnitude under it, bf16 inference
#: (about 3e-3) and a different decode (frames, audio path) lie above it.
DEFAULT_RTOL = 1e-4
MEASURES = ("max_abs", "cosine", "min_row_cosine", "rel_l2")


def clip_measures(mine: np.ndarray, ref: np.ndarray) -> dict[str, float | None]:
    """The four measures of one clip (``ref`` is the released file); None where undefined."""
    a = np.asarray(mine, dtype=np.float64).reshape(len(mine), -1)  # (T, D)
    b = np.asarray(ref, dtype=np.float64).reshape(len(ref), -1)
    diff_norm, ref_norm = float(np.linalg.norm(a - b)), float(np.linalg.norm(b))
    return {
        "max_abs": float(np.max(np.abs(a - b))) if a.size else 0.0,
        "cosine": _cosine(a.ravel(), b.ravel()),
        "min_row_cosine": min((c for c in (_cosine(x, y) for x, y in zip(a, b)) if c is not None), default=None),
        "rel_l2": diff_norm / ref_norm if ref_norm > 0 else (0.0 if diff_norm == 0 else None),
    }


def _cosine(x: np.ndarray, y: np.ndarray) -> float | None:
    """Cosine similarity; 1.0 for two zero vectors (identical), None for one zero vector."""
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if nx == 0 and ny == 0:
        return 1.0
    if nx == 0 or ny == 0:
        return None
    return float(np.dot(x, y) / (nx * ny))


def _folder_files(folder: Path) -> dict[str, Path]:
    """11-char clip id -> file for every ``<id>.npy`` (names that are not LLP ids are skipped)."""
    from avvp_pipe.pipeline.llp.annotations import clip_id

    files: dict[str, Path] = {}
    for path in sorted(folder.glob("*.npy")):
        try:
            files[clip_id(path.name)] = path
        except AvvpError:
            continue
    return files


def _store_rows(store: Any, ids: Sequence[str], block: int = 256) -> Iterator[tuple[str, np.ndarray]]:
    """(clip id, (T, D) float32) for ``ids``, read block by block."""
    for part, rows in store.iter_blocks(list(ids), block=block):
        yield from zip(part, rows)


def compare(store_url: str, folder: str | os.PathLike, *, rtol: float = DEFAULT_RTOL) -> dict[str, Any]:
    """Compare every done clip of the store with ``<id>.npy`` in ``folder``; a JSON-ready dict."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise AvvpError(f"{folder}: expected a folder of per-clip <id>.npy files but it is not a folder")
    store = open_store(store_url, mode="r")
    files = _folder_files(folder)
    from avvp_pipe.pipeline.llp.annotations import clip_id

    done = {clip_id(cid): cid for cid in store.done_ids()}
    common = [cid for cid in done if cid in files]
    per_clip = [_one_clip(cid, row, files[cid]) for cid, row in _store_rows(store, [done[c] for c in common])]
    return {
        "store": store.url, "name": store.name, "folder": str(folder), "store_shape": list(store.shape),
        "rtol": rtol,
        "counts": {"compared": len(per_clip), "store_done": len(done), "folder_files": len(files),
                   "shape_mismatch": sum(1 for c in per_clip if c["shape_match"] is False),
                   "within_rtol": sum(1 for c in per_clip if c["rel_l2"] is not None and c["rel_l2"] <= rtol),
                   "identical": sum(1 for c in per_clip if c["max_abs"] == 0.0)},
        "summary": summarise(per_clip),
        "only_in_store": sorted(c for c in done if c not in files),
        "only_in_folder": sorted(c for c in files if c not in done),
        "clips": per_clip,
    }


def _one_clip(cid: str, row: np.ndarray, path: Path) -> dict[str, Any]:
    """One clip's record: shapes, and the measures when the shapes agree."""
    try:
        ref = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        return {"clip": cid, "store_shape": list(row.shape), "file_shape": None, "shape_match": False,
                "error": f"{path.name}: {one_line(err, 200)}", **dict.fromkeys(MEASURES)}
    record = {"clip": cid, "store_shape": list(row.shape), "file_shape": list(ref.shape),
              "shape_match": tuple(ref.shape) == tuple(row.shape)}
    if not record["shape_match"]:
        return {**record, **dict.fromkeys(MEASURES)}
    return {**record, **clip_measures(row, ref)}


def summarise(per_clip: Sequence[dict[str, Any]]) -> dict[str, dict[str, float] | None]:
    """Percentiles (and the mean) of each measure over the clips where it is defined."""
    out: dict[str, dict[str, float] | None] = {}
    for name in MEASURES:
        values = np.array([c[name] for c in per_clip if c.get(name) is not None], dtype=np.float64)
        if not len(values):
            out[name] = None
            continue
        stats = {f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES))}
        out[name] = {"mean": float(values.mean()), **stats}
    return out


def format_compare(result: dict[str, Any], limit: int = 10) -> str:
    """The summary as a few readable lines (the command's output without --json)."""
    counts = result["counts"]
    lines = [f"{result['name']} vs {result['folder']}: {counts['compared']} clips compared, "
             f"{counts['identical']} identical, {counts['within_rtol']} within rel L2 {result['rtol']:g}, "
             f"{counts['shape_mismatch']} of another shape"]
    for name in MEASURES:
        stats = result["summary"].get(name)
        if stats:
            lines.append(f"  {name:15s} " + "  ".join(f"{k} {stats[k]:.3g}" for k in ("p0", "p5", "p50", "p95", "p100")))
    for side in ("only_in_store", "only_in_folder"):
        ids = result[side]
        if ids:
            more = f" (+{len(ids) - limit} more)" if len(ids) > limit else ""
            lines.append(f"  {side.replace('_', ' ')}: {len(ids)}: {', '.join(ids[:limit])}{more}")
    return "\n".join(lines)


def _bins(values: np.ndarray, n: int = 40) -> np.ndarray:
    """Bin edges that also work when every value is the same (identical features)."""
    if not len(values):
        return np.linspace(0.0, 1.0, n + 1)
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-12 * max(1.0, abs(hi)):
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, n + 1)


def plot_compare(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """Histograms of relative L2 (log scale) and cosine similarity over the compared clips."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rel = np.array([c["rel_l2"] for c in result["clips"] if c["rel_l2"] is not None], dtype=np.float64)
    cos = np.array([c["cosine"] for c in result["clips"] if c["cosine"] is not None], dtype=np.float64)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    floor = np.finfo(np.float32).eps / 2  # identical clips (0) drawn at the float32 resolution
    log_rel = np.log10(np.maximum(rel, floor))
    left.hist(log_rel, bins=_bins(log_rel), color="tab:blue")
    left.axvline(np.log10(result["rtol"]), color="tab:red", linestyle="--", label=f"rtol {result['rtol']:g}")
    left.set_xlabel("log10 relative L2 (store vs file)")
    left.set_ylabel("clips")
    left.legend(fontsize=8)
    right.hist(cos, bins=_bins(cos), color="tab:green")
    right.set_xlabel("cosine similarity of the whole clip")
    fig.suptitle(f"{result['name']} vs {Path(result['folder']).name}: {len(rel)} clips", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)
    return path
