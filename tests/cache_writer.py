"""A feature-store writer run as a subprocess by tests/test_cache.py.

The tests kill it with SIGKILL mid-write and run two copies at once, so it must behave like
a real extraction worker: open (or create) the store, skip clips already done, write the
rest in small batches, and print one line per batch so the parent can follow progress.
Each clip's data is a pure function of its index (``expected_clip``), so the parent can
check every done clip bit for bit without sharing memory with this process.

Usage::

    python tests/cache_writer.py ROOT --clips N [--first A --last B] [--reverse]
        [--batch K] [--start-at EPOCH] [--hold-before-status SECONDS] [--pace SECONDS]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

DATASET = "killtest"
EXTRACTOR = "fake2d"
T, D = 80, 2048  # res152's shape: ~640 KB a clip, so a write takes long enough to be cut


def clip_ids(n: int) -> list[str]:
    """n distinct 11-char ids (the LLP id shape), in store order."""
    return [f"clip{i:07d}" for i in range(n)]


def expected_clip(index: int, shape: tuple[int, int] = (T, D)) -> np.ndarray:
    """The exact float32 data of clip ``index``: seeded by the index alone."""
    rng = np.random.default_rng(index)
    return (np.abs(rng.standard_normal(shape)) * 3).astype(np.float32)  # (T, D), ReLU-like


def spec(shape: tuple[int, int] = (T, D)):
    from avvp_pipe.cache import StoreSpec

    return StoreSpec(DATASET, EXTRACTOR, "visual-2d", shape, {"writer": "tests/cache_writer.py", "v": 1},
                     kind="simulated", provenance={"note": "test writer"})


def _hold_before_status(seconds: float) -> None:
    """Pause between a batch's feature writes and its status write, so a test can kill there.

    Wraps the store's private row writer: the one place data and completion are ordered.
    """
    import avvp_pipe.cache.store as store_module

    write_rows = store_module._write_rows

    def held(array, idx, values):
        if array.path.endswith("status") and (np.asarray(values) == store_module.DONE).all():
            print(f"holding {' '.join(str(i) for i in idx)}", flush=True)
            time.sleep(seconds)
        write_rows(array, idx, values)

    store_module._write_rows = held


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root")
    parser.add_argument("--clips", type=int, required=True, help="clips in the store")
    parser.add_argument("--first", type=int, default=0, help="first clip index this writer owns")
    parser.add_argument("--last", type=int, default=None, help="last clip index (inclusive)")
    parser.add_argument("--reverse", action="store_true", help="write from the last clip backwards")
    parser.add_argument("--batch", type=int, default=1, help="clips per write_clips call")
    parser.add_argument("--start-at", type=float, default=None, help="wall-clock time to start (a barrier)")
    parser.add_argument("--hold-before-status", type=float, default=None,
                        help="sleep after a batch's features are written and before its status is")
    parser.add_argument("--pace", type=float, default=0.0,
                        help="sleep after each batch, so a kill after a random delay lands mid-run on any machine")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from avvp_pipe.cache import open_or_create

    if args.hold_before_status is not None:
        _hold_before_status(args.hold_before_status)
    ids = clip_ids(args.clips)
    last = args.clips - 1 if args.last is None else args.last
    mine = list(range(args.first, last + 1))
    if args.reverse:
        mine.reverse()
    if args.start_at is not None:  # both writers of the concurrency test create the store at once
        time.sleep(max(0.0, args.start_at - time.time()))
    store = open_or_create(args.root, spec(), ids)
    todo = [store.index[c] for c in store.pending([ids[i] for i in mine])]
    print(f"pending {len(todo)}", flush=True)
    for start in range(0, len(todo), args.batch):
        part = todo[start : start + args.batch]
        store.write_clips([ids[i] for i in part], np.stack([expected_clip(i) for i in part]))
        print(f"wrote {' '.join(str(i) for i in part)}", flush=True)
        time.sleep(args.pace)
    print("finished", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
