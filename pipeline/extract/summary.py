"""The end of an extract run: what was done, failed and how fast, as JSON and as text."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from avvp_pipe.core.errors import PartialFailure
from avvp_pipe.pipeline.decode.readers import resolve_decoder
from avvp_pipe.pipeline.extract.plan import ClipSet, ClipTask, ExtractOptions, RunResult

if TYPE_CHECKING:  # torch stays out of `avvp-pipe --help`
    from avvp_pipe.cache.store import FeatureStore


class FrameMeter:
    """Advances the bar by one clip and shows frames/s next to tqdm's clips/s and ETA."""

    def __init__(self, bar: Any) -> None:
        self.bar, self.frames = bar, 0

    def __call__(self, frames: int) -> None:
        self.frames += frames
        self.bar.update(1, **{"frames/s": f"{self.frames / max(self.bar.elapsed, 1e-9):.1f}"})


def summarise(clips: ClipSet, stores: Mapping[str, FeatureStore], tasks: Sequence[ClipTask],
              cached: Mapping[str, int], result: RunResult, opts: ExtractOptions, seconds: float, *,
              videos: str, cache_root: str) -> dict[str, Any]:
    """Plain-data summary: counts per extractor, every failure with its reason, rates."""
    failures = [{"clip": cid, "extractor": name, "reason": reason}
                for name in stores for cid, reason in sorted(result.failed.get(name, {}).items())]
    failed_clips = {f["clip"] for f in failures}
    per_extractor = {
        name: {"store": store.url, "kind": store.kind, "done": len(result.done.get(name, [])),
               "already_cached": cached[name], "failed": len(result.failed.get(name, {}))}
        for name, store in stores.items()
    }
    return {
        "dataset": clips.dataset,
        "videos": videos,
        "cache": cache_root,
        "extractors": list(stores),
        "device": _device_label(opts.device),
        "decoder": "{} on {}".format(*resolve_decoder(opts.decoder, opts.device)),
        "options": {k: v for k, v in asdict(opts).items() if k != "extractors"},
        "clips": {
            "requested": len(clips.work_ids),
            "already_cached": len(clips.work_ids) - len(tasks),  # done in every store before the run
            "processed": len(tasks),
            "decoded": result.decoded,
            "done": len(tasks) - len(failed_clips),  # written in every store that needed them
            "failed": len(failed_clips),
        },
        "per_extractor": per_extractor,
        "failures": failures,
        "ignored_files": list(clips.ignored),
        "seconds": round(seconds, 3),
        "clips_per_s": round(len(tasks) / seconds, 4) if seconds > 0 else 0.0,
        "frames_per_s": round(result.frames / seconds, 2) if seconds > 0 else 0.0,
    }


def _device_label(device: str) -> str:
    """``cuda:0 (NVIDIA H200)``, ``cpu``, or ``auto (each worker's own)`` when dask workers on
    other hosts decided (the client cannot see their GPUs)."""
    from avvp_pipe.core.device import AUTO, describe_device

    return f"{AUTO} (each worker's own)" if device == AUTO else describe_device(device)


def format_summary(summary: Mapping[str, Any], max_failures: int = 20) -> str:
    """The human view of :func:`summarise`: a table per extractor and the failure reasons."""
    from avvp_pipe.core.fmt import human_seconds, table

    c = summary["clips"]
    lines = [f"extract {summary['dataset']}: {c['requested']} clips requested, {c['already_cached']} already cached, "
             f"{c['processed']} processed ({c['decoded']} decoded), {c['done']} done, {c['failed']} failed "
             f"in {human_seconds(summary['seconds'])} ({summary['clips_per_s']:.2f} clips/s, "
             f"{summary['frames_per_s']:.1f} frames/s) on {summary.get('device', '?')}, "
             f"frames read by {summary.get('decoder', '?')}", ""]
    rows = [(name, row["kind"], row["done"], row["already_cached"], row["failed"], row["store"])
            for name, row in summary["per_extractor"].items()]
    lines.append(table(("extractor", "kind", "done", "already cached", "failed", "store"), rows))
    failures = summary["failures"]
    if failures:
        lines += ["", f"failures ({len(failures)}):"]
        lines += [f"  {f['clip']}  {f['extractor']}: {f['reason']}" for f in failures[:max_failures]]
        if len(failures) > max_failures:
            lines.append(f"  ... and {len(failures) - max_failures} more (see --summary FILE)")
    if summary["ignored_files"]:
        lines += ["", f"ignored (not <id>.mp4 names): {', '.join(summary['ignored_files'][:10])}"]
    return "\n".join(lines)


def raise_if_failed(summary: Mapping[str, Any]) -> None:
    """PartialFailure (exit 1) when any clip failed in any extractor."""
    failures = summary["failures"]
    if failures:
        clips = summary["clips"]["failed"]
        first = failures[0]
        raise PartialFailure(f"{clips} clip(s) failed ({len(failures)} clip/extractor pairs), e.g. "
                             f"{first['clip']} in {first['extractor']}: {first['reason']}")
