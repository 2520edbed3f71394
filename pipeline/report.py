"""Small shared helpers for what commands print and write: tables, JSON, durations."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path`` in one step.

    Why: a reader (or a killed writer's rerun) must never see half a file. The temp file is
    in the same folder so os.replace is atomic, and it is removed if writing fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON atomically; numpy values and paths become plain JSON."""
    return atomic_write_text(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return Path(path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table (no dependency, copy-pastes into issues)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def human_seconds(s: float) -> str:
    s = float(s)
    if s < 60:
        return f"{s:.1f}s"
    m, s = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def format_labels_summary(report: Mapping[str, Any]) -> str:
    """The human view of :meth:`pipeline.llp.Annotations.summary`."""
    clips = report["clips"]
    cov = report["dense_coverage"]
    rows = [
        (split, clips[split], report["labels_per_clip"][split], cov[split]["audio"],
         cov[split]["visual"], cov[split]["audio_visual"])
        for split in ("train", "val", "test")
    ]
    out = [table(("split", "clips", "labels per clip", "audio truth", "visual truth", "AV truth"), rows)]
    per_class = report["labels_per_class"]
    class_rows = [(name, per_class["train"][name], per_class["val"][name], per_class["test"][name])
                  for name in per_class["train"]]
    out.append("")
    out.append(table(("class", "train", "val", "test"), class_rows))
    out.append("")
    quirks = report["quirks"]
    if quirks:
        out.append("quirks (handled on purpose; the official evaluation ignores them silently):")
        for kind, count in sorted(quirks.items()):
            examples = report["quirk_examples"].get(kind, [])[:3]
            out.append(f"  {kind}: {count}" + (f"  e.g. {'; '.join(examples)}" if examples else ""))
    else:
        out.append("quirks: none")
    return "\n".join(out)
