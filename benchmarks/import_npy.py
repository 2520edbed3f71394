"""Benchmark `avvp-pipe cache import-npy` on a folder shaped like the official res152 release.

Not a timed test: prints files/s and MB/s for one import of N per-clip float32 .npy files
(80 x 2048 by default, the official 2D shape) into a fresh cache, and the same for a
resumed import that finds every clip done. Issue 7's target: 11,849 such files in well
under a minute on a local disk.

    .venv/bin/python benchmarks/import_npy.py --clips 11849 --workdir /tmp/avvp-import-bench
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np


def make_folder(folder: Path, n: int, shape: tuple[int, int], seed: int) -> None:
    """``n`` ReLU-like float32 clips named by 11-char ids; kept between runs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    scale = rng.random((1, shape[1]), dtype=np.float32) * 2  # per-channel scale, like pooled CNN features
    for i in range(n):
        path = folder / f"bench{i:06d}.npy"
        if not path.exists():
            clip = np.abs(rng.standard_normal(shape, dtype=np.float32)) * scale  # (T, D), mostly non-zero
            np.save(path, clip)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=11849)
    parser.add_argument("--frames", type=int, default=80)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--workdir", default="/tmp/avvp-import-bench")
    parser.add_argument("--drop-caches", action="store_true",
                        help="empty the page cache first (root only), so the fresh import reads from disk")
    args = parser.parse_args()

    from avvp_pipe.cache.npy_io import import_npy

    work = Path(args.workdir)
    src = work / f"npy-{args.frames}x{args.dim}-{args.clips}"
    started = time.perf_counter()
    make_folder(src, args.clips, (args.frames, args.dim), seed=0)
    print(f"source folder ready in {time.perf_counter() - started:.1f} s: {src}")
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    subprocess.run(["sync"], check=False)
    if args.drop_caches:
        try:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        except OSError as err:
            raise SystemExit(f"--drop-caches: cannot write /proc/sys/vm/drop_caches ({err}); run as root") from None
        print("page cache dropped: the fresh import reads the folder from disk")

    mb = args.clips * args.frames * args.dim * 4 / 1e6
    for label in ("fresh import", "resumed (all done)"):
        summary = import_npy(src, str(cache), "bench", "resnet152" if args.dim == 2048 and args.frames == 80
                             else "bench_npy", workers=args.workers, modality="visual-2d")
        s = summary["seconds"]
        print(f"{label}: {summary['imported']} imported, {summary['skipped_done']} skipped in {s:.1f} s "
              f"({args.clips / s:.0f} files/s, {mb / s:.0f} MB/s of float32)")
    from avvp_pipe.cache import open_store
    from avvp_pipe.pipeline.train.pairing import read_per_second

    store = open_store(summary["store"])
    started = time.perf_counter()
    read_per_second(store, store.clip_ids)  # what `train` and `select` do with a 2D store
    s = time.perf_counter() - started
    print(f"read back as per-second means (train's loading): {s:.1f} s ({args.clips / s:.0f} clips/s)")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"hardware: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; commit {commit}")


if __name__ == "__main__":
    main()
