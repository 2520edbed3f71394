"""Benchmark and calibrate `avvp-pipe synth-features` (not a timed test).

Timing: one fresh store per shape for every clip of an annotation folder (the real LLP
structure, 11,849 clips, by default), reporting wall and CPU seconds and clips/s:

    .venv/bin/python benchmarks/synth_features.py --workdir /tmp/avvp-synth-bench \\
        --shapes audio:10x128 visual-2d:80x512 visual-2d:80x2048 --workers 2

Measured 2026-11-28 on the shared 2-core helper machine (load 3-13 from other jobs), workers 2,
float32, 11,849 clips: 10x128 30 s (30 s CPU), 80x512 46 s (57 s CPU), 80x2048 134-144 s
(109-115 s CPU, 1.78 GiB). zstd of the (80, 2048) chunks (~5.7 ms a clip) and zarr's per-chunk
cost (two chunk files a clip) dominate; the features themselves take ~2.4 ms a clip.

Calibration: nearest-class-centroid accuracy on single-event seconds (a proxy for "how well
features of this quality train") for qualities 0..1, per modality, without writing stores:

    .venv/bin/python benchmarks/synth_features.py --calibrate --clips 800
"""

from __future__ import annotations

import sys
from pathlib import Path

# Python puts this script's folder first on sys.path, where a sibling benchmark named like a
# stdlib module (a file named like select.py) would shadow it; import from the repository instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse
import os
import platform
import resource
import shutil
import time

import numpy as np

from avvp_pipe.pipeline.llp.annotations import NUM_CLASSES, load_annotations  # noqa: E402
from avvp_pipe.pipeline.synth.features import (  # noqa: E402
    SimulatedExtractor,
    _shared_prototypes,
    _Simulator,
    clip_truth,
    synthesize_features,
)

REPO = Path(__file__).resolve().parents[1]


def cpu_seconds() -> float:
    """User + system CPU of this process and its finished children (worker processes)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def time_stores(args: argparse.Namespace) -> None:
    ann = load_annotations(args.annotations)
    print(f"{len(ann.clips)} clips from {args.annotations}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; workers {args.workers}, dtype {args.dtype}")
    for shape in args.shapes:
        modality, dims = shape.split(":")
        frames, dim = (int(x) for x in dims.split("x"))
        ext = SimulatedExtractor.parse(f"bench_{modality}_{frames}x{dim}:{modality}:{dim}:0.7")
        if ext.frames != frames:
            raise SystemExit(f"{shape}: modality {modality} has {ext.frames} frames, not {frames}")
        root = Path(args.workdir) / f"{modality}_{frames}x{dim}"
        shutil.rmtree(root, ignore_errors=True)
        wall, cpu = time.perf_counter(), cpu_seconds()
        summary = synthesize_features(str(root), "bench", ann, [ext], dtype=args.dtype, workers=args.workers,
                                      progress=not args.quiet)
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        store = summary["stores"][0]
        size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
        print(f"{shape:>20}: {store['written']} clips in {wall:.1f} s wall ({store['seconds']:.1f} s store), "
              f"{cpu:.1f} s CPU, {store['written'] / store['seconds']:.0f} clips/s, {size / 2**30:.2f} GiB on disk, "
              f"load {os.getloadavg()[0]:.1f}")
        if not args.keep:
            removing = time.perf_counter()
            shutil.rmtree(root, ignore_errors=True)
            print(f"{'':>20}  (removed in {time.perf_counter() - removing:.1f} s)")


def calibrate(args: argparse.Namespace) -> None:
    from tests.featuresets import make_annotations

    folder = Path(args.workdir) / "calibration-annotations"
    ann = make_annotations(folder, n_clips=args.clips, seed=0, fractions=(0.8, 0.1, 0.1))
    ids, truth = clip_truth(ann, 0)
    shared = _shared_prototypes(0)
    half = np.repeat(np.arange(len(ids)), 10) < len(ids) // 2
    print(f"nearest-centroid accuracy on single-event seconds, {len(ids)} clips (chance {1 / NUM_CLASSES:.2f})")
    for modality, row in (("audio", 0), ("visual-2d", 1), ("visual-3d", 1)):
        accs = []
        for quality in (0.0, 0.3, 0.6, 0.9, 1.0):
            ext = SimulatedExtractor(f"cal_{modality}", modality, args.dim, quality)
            x = _Simulator(ext, shared, 0).features(ids, truth[:, row])  # (n, T, D)
            n, T, D = x.shape
            seconds = x.reshape(n, 10, T // 10, D).mean(2).reshape(-1, D)  # (n*10, D)
            active = truth[:, row].transpose(0, 2, 1).reshape(-1, NUM_CLASSES)  # (n*10, 25)
            single, labels = active.sum(1) == 1, active.argmax(1)
            classes = np.unique(labels[single & half])
            cents = np.stack([seconds[single & half & (labels == c)].mean(0) for c in classes])
            test = single & ~half
            dist = ((seconds[test, None] - cents[None]) ** 2).sum(-1)
            accs.append(f"q={quality:.1f} {float((classes[dist.argmin(1)] == labels[test]).mean()):.2f}")
        print(f"  {modality:>9} D={args.dim}: " + "  ".join(accs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", default=str(REPO.parent / "shared" / "llp"))
    parser.add_argument("--workdir", default="/tmp/avvp-synth-bench")
    parser.add_argument("--shapes", nargs="+", default=["audio:10x128", "visual-2d:80x512", "visual-2d:80x2048"])
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--keep", action="store_true", help="Keep the stores.")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--clips", type=int, default=800, help="Clips for --calibrate.")
    parser.add_argument("--dim", type=int, default=128, help="DIM for --calibrate.")
    args = parser.parse_args()
    calibrate(args) if args.calibrate else time_stores(args)


if __name__ == "__main__":
    main()
