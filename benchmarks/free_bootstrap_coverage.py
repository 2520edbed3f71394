"""Coverage of the training-free scores' bootstrap intervals on simulated pairings (issue 16).

Not a test. Why: ``select --bootstrap`` scores each resample on its distinct clips and then
recentres (selection.bootstrap.recentred); this measures, on data where the truth is known,
how often each interval covers E[score at N] (the mean of the full-data score over 300
independent data sets) and how wide it is against the true 95% width, for the raw distinct-
clip values, plain resampling with duplicates, and the recentred values. (Recentred intervals
cover the point estimate by construction; E[score at N] is the check that matters.)

Example:
    python benchmarks/free_bootstrap_coverage.py --clips 200 --resamples 200 --trials 60
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from avvp_pipe.selection import logme as lm  # noqa: E402
from avvp_pipe.selection import panel  # noqa: E402
from avvp_pipe.selection.bootstrap import interval, recentred, resample_rows  # noqa: E402

METHODS = ("logme", "hscore", "transrate", "knn", "cca")
CLASSES, DIM = 5, 8


def world(seed: int, n: int) -> panel.PanelFeatures:
    """n clips, 5 classes, two 8-d streams of 10 seconds whose means depend on the labels."""
    rng = np.random.default_rng(seed)
    a_dir, v_dir = np.random.default_rng(123).standard_normal((2, CLASSES, DIM))
    y = (rng.random((n, CLASSES)) < 0.3).astype(float)
    a = (y @ a_dir)[:, None, :] + 1.5 * rng.standard_normal((n, 10, DIM))
    v = (y @ v_dir)[:, None, :] + 1.5 * rng.standard_normal((n, 10, DIM))
    return panel.PanelFeatures([a, v], y)


def score(method: str, data: panel.PanelFeatures, rows: np.ndarray) -> float:
    if method == "logme":
        return lm.logme(np.concatenate([c[rows] for c in data.clips], 1), data.labels[rows])[0]
    return panel.score_rows(method, data, rows, panel.halves(len(data.labels)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--resamples", type=int, default=200)
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--truth", type=int, default=300, help="independent data sets for E[score at N]")
    args = ap.parse_args()
    n = args.clips
    truth = {m: np.array([score(m, world(10_000 + t, n), np.arange(n)) for t in range(args.truth)])
             for m in METHODS}
    hits = {m: {k: [] for k in ("distinct", "duplicates", "recentred")} for m in METHODS}
    for t in range(args.trials):
        data, rows = world(t, n), resample_rows(n, args.resamples, seed=t)
        for m in METHODS:
            point = score(m, data, np.arange(n))
            distinct = np.array([score(m, data, np.unique(r)) for r in rows])
            dup = np.array([score(m, data, np.sort(r)) for r in rows])
            for name, s in (("distinct", distinct), ("duplicates", dup), ("recentred", recentred(distinct, point, rows))):
                lo, hi = interval(s)
                hits[m][name].append((lo <= truth[m].mean() <= hi, hi - lo))
    print(f"N {n}, {args.resamples} resamples, {args.trials} trials, truth from {args.truth} data sets")
    for m in METHODS:
        true_width = float(np.subtract(*np.quantile(truth[m], [0.975, 0.025])))
        cells = [f"{k}: covers E {np.mean([h[0] for h in v]):.2f}, width {np.mean([h[1] for h in v]):.3f}"
                 for k, v in hits[m].items()]
        print(f"{m} | " + " | ".join(cells) + f" | true width {true_width:.3f}", flush=True)


if __name__ == "__main__":
    main()
