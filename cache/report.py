"""What ``avvp-pipe cache`` shows: store listings, verify reports, import and export summaries.

Text for people is built here, in the library, so the CLI only parses and prints (and a
notebook gets the same lines).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from avvp_pipe.cache.store import FeatureStore, scan_stores
from avvp_pipe.core.fmt import human_bytes, human_seconds

#: Kinds whose numbers are not from pretrained weights: shown in capitals (red on a terminal).
UNREAL = {"random-init": "RANDOM-INIT (not pretrained)", "simulated": "SIMULATED (not real features)"}
Emphasis = Callable[[str], str]


def store_row(store: FeatureStore) -> dict[str, Any]:
    """A store's summary plus the provenance a listing shows."""
    row = store.summary()
    prov = dict(store.attrs.get("provenance", {}))
    row["provenance"] = {
        "created": prov.get("created"),
        "host": prov.get("host"),
        "weights": prov.get("weights_identity", store.config.get("weights_identity")),
        "imported_from": prov.get("imported_from"),
        "file_count": prov.get("file_count"),
        "content_xxh3_128": prov.get("content_xxh3_128"),
    }
    return row


def listing(root: str) -> list[dict[str, Any]]:
    """One row per store under ``root`` (see :func:`store_row`); a store that cannot be opened
    is a row ``{"url", "broken"}`` saying why, and the others are still listed."""
    stores, broken = scan_stores(root)
    rows = [store_row(store) for store in stores]
    return rows + [{"url": url, "broken": reason} for url, reason in broken.items()]


def kind_label(kind: str, emphasis: Emphasis = str) -> str:
    """``kind``, or its warning in capitals (passed through ``emphasis``) for unreal features."""
    return emphasis(UNREAL[kind]) if kind in UNREAL else kind


def progress_text(progress: Mapping[str, Mapping[str, int]]) -> str:
    """``train 10/12  val 3/3 (1 failed)``: done/total per split, splits in LLP order."""
    order = [s for s in ("train", "val", "test", "unsplit") if s in progress]
    order += [s for s in progress if s not in order and s != "all"]
    parts = [f"{s} {progress[s]['done']}/{progress[s]['total']}" for s in order]
    failed = progress.get("all", {}).get("failed", 0)
    return "  ".join(parts) + (f"  ({failed} failed)" if failed else "")


def format_listing(rows: Sequence[Mapping[str, Any]], root: str, emphasis: Emphasis = str) -> str:
    """Three lines per store: what it is and how far, its provenance, its URL."""
    if not rows:
        return f"no stores under {root}"
    lines = []
    for row in rows:
        if "broken" in row:
            lines += [f"{emphasis('BROKEN')}  {row['url']}", f"    {row['broken']}"]
            continue
        shape = "x".join(str(n) for n in row["shape"])
        lines.append(f"{row['dataset']}  {row['name']}  {kind_label(row['kind'], emphasis)}  {row['modality']}  "
                     f"{shape} {row['dtype']}  {progress_text(row['progress'])}  {human_bytes(row['size_bytes'])}")
        prov = row["provenance"]
        source = f"imported from {prov['imported_from']} ({prov['file_count']} files)" if prov["imported_from"] else ""
        details = [f"created {prov['created']}", f"host {prov['host']}", f"weights {prov['weights'] or '-'}", source]
        lines.append("    " + ", ".join(d for d in details if d))
        lines.append(f"    {row['url']}")
    return "\n".join(lines)


def format_verify(reports: Sequence[Mapping[str, Any]], limit: int = 20) -> str:
    """Per store: clips checked and reset, with the first ``limit`` reasons."""
    lines = []
    for report in reports:
        lines.append(f"{report['store']}: checked {report['checked']} done clips, reset {len(report['reset'])}")
        for cid, reason in list(report["reset"].items())[:limit]:
            lines.append(f"  {cid}: {reason}")
        if len(report["reset"]) > limit:
            lines.append(f"  ... and {len(report['reset']) - limit} more")
        if report.get("upgraded"):
            lines.append(f"  upgraded in place (metadata only): {'; '.join(report['upgraded'])}")
        elif [gap for gap in report.get("layout", []) if gap != "metadata not consolidated"]:
            lines.append(f"  older layout ({'; '.join(report['layout'])}): "
                         "`cache verify --upgrade` makes it open in xarray")
    return "\n".join(lines)


def format_import(summary: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(lines for stdout, lines for stderr) of an ``import_npy`` summary."""
    shape = "x".join(str(n) for n in summary["shape"])
    out = [f"imported {summary['imported']} clips into {summary['dataset']}/{summary['name']} (kind imported) "
           f"from {summary['source']} in {human_seconds(summary['seconds'])}; {summary['skipped_done']} already done",
           f"  shape {shape} from {summary['shape_source']}; modality {summary['modality']} from "
           f"{summary['modality_source']}; stored as {summary['dtype']}",
           f"  clip list: {summary['clips']} clips from {summary['clip_list']}; {summary['files']} files; "
           f"content xxh3-128 {summary['content_xxh3_128']}",
           f"  store: {summary['store']}"]
    err = []
    missing = summary["missing"]
    if missing:
        err.append(f"warning: {len(missing)} listed clips have no file in {summary['source']} "
                   f"(e.g. {', '.join(missing[:5])}); they stay pending")
    if summary["ignored"]:
        err.append(f"note: ignored {len(summary['ignored'])} hidden files or folders "
                   f"(e.g. {', '.join(summary['ignored'][:3])})")
    err += [f"error: {Path(summary['source']) / name}: {reason}" for name, reason in summary["bad"].items()]
    return out, err


def format_export(result: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(lines for stdout, lines for stderr) of an ``export_npy`` result."""
    shape = "x".join(str(n) for n in result["shape"])
    out = [f"exported {result['written']} clips ({shape} float32) of {result['name']} to {result['out']} "
           f"in {human_seconds(result['seconds'])}; kept {result['skipped_existing']} existing files"]
    err = []
    if result["not_done"]:
        err.append(f"warning: {result['not_done']} clips of the store are not done and were not exported")
    if result["kind"] not in ("extracted", "imported"):
        err.append(f"warning: these are {result['kind']} features; the .npy files do not say so")
    return out, err
