"""Throughput of `avvp-pipe extract`: decode alone, models alone, end to end, and their ratios.

Not a test: it prints (and with --json writes) frames/s for

- decode: ``decode_clip`` on every clip with ``--decode-workers`` threads (what feeds the models),
- decode+prepare: the same plus every extractor's CPU preprocessing,
- model: each extractor's ``embed`` on synthetic input tensors of the real item shape, at the
  same batch size and precision, for as many items as the clips give (no decoding at all),
- end to end: the extract engine (decode threads -> queue -> batches -> stores) on the clips,
  models already built and warmed up, writing into a fresh temporary cache.

Frames are the 80 decoded frames per clip, so the numbers compare across extractor sets.
Target (issue #3): end to end >= 0.85x model alone for resnet152 on CPU.

Example:
    python benchmarks/extract.py --synth 6 --extractors resnet152 --random-init
    python benchmarks/extract.py --videos data/synth/videos --clips 20 --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# `python benchmarks/extract.py` puts benchmarks/ first on sys.path, where a sibling script
# named like a stdlib module would shadow it; decode workers inherit sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("Example:")[1] if "Example:" in __doc__ else None)
    ap.add_argument("--videos", type=Path, help="Folder of <id>.mp4 clips (else --synth N makes some).")
    ap.add_argument("--synth", type=int, default=6, help="Synthetic 320x240 clips to render when --videos is absent.")
    ap.add_argument("--clips", type=int, help="Use at most this many clips of --videos.")
    ap.add_argument("--extractors", default="resnet152", help="Comma-separated extractor names.")
    ap.add_argument("--random-init", action="store_true", help="Untrained weights (no weights files needed).")
    ap.add_argument("--weights-dir", help="Offline weights folder.")
    ap.add_argument("--batch-size", type=int, help="Rows per model call (default: the extract defaults).")
    ap.add_argument("--decode-workers", type=int, default=2)
    ap.add_argument("--queue", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice).")
    ap.add_argument("--json", type=Path, help="Also write the results here.")
    return ap.parse_args(argv)


def clip_folder(args: argparse.Namespace, scratch: Path) -> Path:
    """The clips to run on: --videos, or --synth N rendered by avvp_pipe.pipeline.synth (320x240, 30 fps)."""
    if args.videos is not None:
        return args.videos
    from avvp_pipe.pipeline.synth.clips import synthesize

    out = scratch / "synth"
    synthesize(out, args.synth, seed=0, size=(320, 240), progress=False)
    return out / "videos"


def cpu_seconds() -> float:
    """CPU seconds of this process (all threads) plus reaped children (decode workers).

    Why: on a shared machine wall time depends on what else runs; CPU time much less so.
    """
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(fn, *args, **kwargs):
    """(result, wall seconds, CPU seconds) of fn(*args, **kwargs)."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, cpu_seconds() - cpu


def bench_decode(tasks, extractors, opts, rates, prepare: bool) -> float:
    """Seconds to decode (and optionally prepare) every task with opts.decode_workers threads."""
    import queue as queue_mod

    from avvp_pipe.pipeline.decode.clip import decode_clip, shutdown_worker

    todo: queue_mod.Queue = queue_mod.Queue()
    for task in tasks:
        todo.put(task)

    errors: list[BaseException] = []

    def worker() -> None:
        try:
            while True:
                try:
                    task = todo.get_nowait()
                except queue_mod.Empty:
                    return
                clip = decode_clip(task.path, audio_rates=rates, timeout_s=opts.decode_timeout)
                if prepare:
                    for name in task.names:
                        extractors[name].prepare(clip)
        except BaseException as err:  # noqa: BLE001 - re-raised below: a benchmark must not time failures
            errors.append(err)
        finally:
            shutdown_worker()

    threads = [threading.Thread(target=worker) for _ in range(opts.decode_workers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - started


def synthetic_batches(extractors, opts) -> dict:
    """name -> (batcher, one batch of random items of the real item shape), each warmed up once
    (oneDNN/cuDNN kernel selection) so neither timed stage pays for it."""
    import torch

    from avvp_pipe.pipeline.extract import DEFAULT_BATCH
    from avvp_pipe.pipeline.extract.engine import _Batcher, _channels_last

    out = {}
    for name, ex in extractors.items():
        _channels_last(ex)  # as the engine does
        batch = opts.batch_size or DEFAULT_BATCH[ex.spec.modality]
        batcher = _Batcher(name, ex, batch, ex.device, opts.precision)
        x = torch.randn((batch, *_item_shape(ex)), generator=torch.Generator().manual_seed(0))  # (B, *item)
        batcher._embed([x])
        out[name] = (batcher, x)
    return out


def bench_models(extractors, batches: dict, n_clips: int) -> dict[str, float]:
    """Seconds per extractor to embed n_clips' worth of synthetic items, same batch and padding."""
    out = {}
    for name, ex in extractors.items():
        batcher, x = batches[name]
        batch = batcher.batch_size
        rows = n_clips * ex.items_per_clip
        _sync(ex.device)
        started = time.perf_counter()
        for start in range(0, rows, batch):
            batcher._embed([x[: min(batch, rows - start)]])  # same padding rule as the engine
        _sync(ex.device)
        out[name] = time.perf_counter() - started
    return out


def _item_shape(ex) -> tuple[int, ...]:
    """One prepared item's shape, from prepare() on a small synthetic clip."""
    import types

    import numpy as np

    rng = np.random.default_rng(0)
    clip = types.SimpleNamespace(
        clip_id="benchmark00", frames=rng.integers(0, 256, (80, 240, 320, 3), dtype=np.uint8),
        audio_16k=np.zeros(160_000, np.float32), audio_48k=np.zeros(480_000, np.float32))
    return tuple(ex.prepare(clip).shape[1:])


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_end_to_end(videos: Path, extractors, opts, scratch: Path) -> tuple[float, int, object]:
    """Seconds for the extract engine over every clip, into a fresh cache; (seconds, clips, result)."""
    from avvp_pipe.pipeline.extract import Engine, find_clips, open_stores, plan_tasks

    clips = find_clips(videos, dataset="bench")
    stores = open_stores(str(scratch / "cache"), clips, extractors, opts, str(videos))
    tasks, _ = plan_tasks(clips, stores)
    started = time.perf_counter()
    result = Engine(extractors, stores, opts).run(tasks)
    _sync(next(iter(extractors.values())).device)
    return time.perf_counter() - started, len(tasks), result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    from avvp_pipe.pipeline.extract import (
        ExtractOptions,
        audio_rates,
        build_extractors,
        find_clips,
        resolve_names,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    names = resolve_names(args.extractors.split(","))
    opts = ExtractOptions(extractors=tuple(names), batch_size=args.batch_size, decode_workers=args.decode_workers,
                          queue=args.queue, device=args.device, precision=args.precision,
                          weights_dir=args.weights_dir, random_init=args.random_init)
    with tempfile.TemporaryDirectory(prefix="avvp-bench-") as tmp:
        scratch = Path(tmp)
        videos = clip_folder(args, scratch)
        if args.clips:
            kept = sorted(videos.glob("*.mp4"))[: args.clips]
            videos = scratch / "subset"
            videos.mkdir()
            for path in kept:
                (videos / path.name).symlink_to(path.resolve())
        extractors = build_extractors(names, opts)
        clips = find_clips(videos, dataset="bench-decode")
        tasks = _all_tasks(clips, names)
        n = len(tasks)
        frames = 80 * n
        rates = audio_rates(extractors)
        _, t_decode, c_decode = timed(bench_decode, tasks, extractors, opts, rates, prepare=False)
        print(f"decode: {t_decode:.1f}s wall, {c_decode:.1f}s CPU", flush=True)
        _, t_prepare, c_prepare = timed(bench_decode, tasks, extractors, opts, rates, prepare=True)
        print(f"decode+prepare: {t_prepare:.1f}s wall, {c_prepare:.1f}s CPU", flush=True)
        batches = synthetic_batches(extractors, opts)
        t_models, _, c_models = timed(bench_models, extractors, batches, n)
        print(f"model: {sum(t_models.values()):.1f}s wall, {c_models:.1f}s CPU", flush=True)
        (t_e2e, n_e2e, result), _, c_e2e = timed(bench_end_to_end, videos, extractors, opts, scratch)
        print(f"end to end: {t_e2e:.1f}s wall, {c_e2e:.1f}s CPU", flush=True)
        failed = {k: v for k, v in result.failed.items() if v}
    model_total = sum(t_models.values())
    report = {
        "extractors": names, "clips": n, "frames": frames, "device": args.device, "precision": args.precision,
        "batch_size": args.batch_size, "decode_workers": args.decode_workers, "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "random_init": args.random_init, "videos": str(args.videos) if args.videos else f"synth {args.synth} x 320x240",
        "seconds": {"decode": t_decode, "decode+prepare": t_prepare, "model": model_total,
                    **{f"model:{k}": v for k, v in t_models.items()}, "end_to_end": t_e2e},
        "cpu_seconds": {"decode": c_decode, "decode+prepare": c_prepare, "model": c_models, "end_to_end": c_e2e},
        "frames_per_s": {"decode": frames / t_decode, "decode+prepare": frames / t_prepare,
                         "model": frames / model_total, "end_to_end": 80 * n_e2e / t_e2e},
        "failed": failed,
    }
    fps = report["frames_per_s"]
    report["ratios"] = {"end_to_end/model": fps["end_to_end"] / fps["model"],
                        "decode/model": fps["decode"] / fps["model"],
                        "decode+prepare/model": fps["decode+prepare"] / fps["model"]}
    print_report(report)
    if args.json:
        from avvp_pipe.core.io import atomic_write_json

        atomic_write_json(args.json, report)
    return report


def _all_tasks(clips, names):
    from avvp_pipe.pipeline.extract import ClipTask

    return [ClipTask(cid, clips.paths[cid], tuple(names)) for cid in clips.work_ids if cid in clips.paths]


def print_report(report: dict) -> None:
    from avvp_pipe.core.fmt import table

    print(f"extractors {','.join(report['extractors'])}: {report['clips']} clips ({report['frames']} frames), "
          f"device {report['device']} {report['precision']}, torch threads {report['torch_threads']}, "
          f"{report['cpu_count']} CPUs, decode workers {report['decode_workers']}")
    rows = [(stage, report["seconds"][stage], report["frames_per_s"][stage], report["cpu_seconds"][stage])
            for stage in ("decode", "decode+prepare", "model", "end_to_end")]
    print(table(("stage", "wall s", "frames/s (wall)", "CPU s"), rows))
    print("ratios: " + ", ".join(f"{k} {v:.3f}" for k, v in report["ratios"].items()))
    if report["failed"]:
        print(f"failures: {report['failed']}")


if __name__ == "__main__":
    main()
