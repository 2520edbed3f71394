"""Uncertainty of a selection: seed intervals, and a paired bootstrap over test clips.

Why: with 10 pairings one swap moves Kendall tau by 0.04, and two seeds of one pairing can
differ by more than neighbouring pairings do. A ranking without intervals cannot say
whether "A+V beats A'+V'" is real.

- Seeds (K > 1, no bootstrap): the mean of a pairing's K runs with a Student-t 95% interval.
- Bootstrap (``--bootstrap B``): B resamples of the test clips with replacement, the *same*
  resample for every pairing and every method (paired, so rank statistics between methods
  see one common perturbation). A trained score is the mean of its per-clip scores
  (:mod:`avvp_pipe.selection.clip_scores`), so a resample costs a weighted mean; with K
  seeds, each resample also draws K of the pairing's runs with replacement (a two-level
  bootstrap of the seed mean). A training-free score is recomputed on the resample's
  distinct clips (:func:`free_samples` says why), and those values are recentred on the
  full-data score and rescaled to its spread at N (:func:`recentred`).
  Intervals are percentile intervals of the B values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from avvp_pipe.core.errors import AvvpError
from avvp_pipe.pipeline.train.seeds import LEVEL, seed_summary  # train --seeds summarises its runs the same way
from avvp_pipe.selection import stats

#: a training-free method of one pairing on resampled rows
RowScore = Callable[[np.ndarray], float]


def interval(samples: np.ndarray) -> list[float]:
    """The percentile 95% interval [low, high] of bootstrap samples (NaN ones dropped)."""
    x = np.asarray(samples, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return [float("nan"), float("nan")]
    low, high = np.quantile(x, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return [float(low), float(high)]


def resample_rows(n: int, b: int, seed: int) -> np.ndarray:
    """(B, n) clip indices drawn with replacement, reproducible from ``seed``."""
    if b < 1 or n < 2:
        raise AvvpError(f"--bootstrap: expected B >= 1 and at least 2 clips but got B={b}, {n} clips")
    return np.random.default_rng(seed).integers(0, n, size=(b, n))


def trained_samples(clip_scores: Sequence[np.ndarray], rows: np.ndarray, seed: int | tuple[int, ...]) -> np.ndarray:
    """(B,) bootstrap values of one pairing's seed-mean score; clip_scores: K arrays (N,), one per run."""
    runs = np.stack([np.asarray(c, dtype=np.float64) for c in clip_scores])  # (K, N)
    k, n = runs.shape
    weights = np.stack([np.bincount(r, minlength=n) for r in rows]) / n  # (B, N): each resample's clip weights
    per_run = weights @ runs.T  # (B, K): every run's score on every resample
    if k == 1:
        return per_run[:, 0]
    draws = np.random.default_rng(seed).integers(0, k, size=(len(rows), k))  # (B, K) runs drawn per resample
    return np.take_along_axis(per_run, draws, axis=1).mean(axis=1)


def free_samples(score: RowScore, rows: np.ndarray) -> np.ndarray:
    """(B,) values of a training-free score recomputed on each resample's distinct clips (raw: see :func:`recentred`).

    Why distinct: a duplicated clip is not new evidence, yet LogME, H-score and TransRate
    read it as such (LogME's evidence per sample rose from 1.8 to 6 on a test resample), so
    each resample is scored on the clips it drew, once each (about 63% of N).
    """
    return np.asarray([score(np.unique(r)) for r in rows], dtype=np.float64)


def recentred(samples: np.ndarray, point: float, rows: np.ndarray) -> np.ndarray:
    """:func:`free_samples` values as draws of the full-data score: centred on ``point`` (the score on
    all N clips), their spread scaled by sqrt(m / (N - m)), m the mean number of distinct clips.

    Why: the distinct clips of a resample are a random subset of m ~ 0.632 N clips, drawn without
    replacement. A score on them estimates the score at m clips, which is shifted for any score
    that depends on N (LogME, TransRate, H-score's shrinkage), and it varies around the full-data
    score by sd_N * sqrt((N - m) / m) (subsampling's finite-population correction), 0.76 sd_N, not
    sd_N. Left raw, the intervals missed the point estimate (LogME's point lay above its own
    interval) and the expected full-data score; benchmarks/free_bootstrap_coverage.py measures
    the coverage before and after (BENCHMARKS.md). Each
    pairing moves by its own constant and all are scaled alike, so every resample still perturbs
    all pairings together (the paired design the rank statistics need).
    """
    x = np.asarray(samples, dtype=np.float64)
    n = rows.shape[1]
    m = float(np.mean([len(np.unique(r)) for r in rows]))
    finite = np.isfinite(x)
    if m >= n or not finite.any():  # every resample held every clip: no spread to scale
        return np.where(finite, float(point), np.nan)
    return float(point) + np.sqrt(m / (n - m)) * (x - x[finite].mean())


def agreement_intervals(chooser: np.ndarray, truth: np.ndarray, names: Sequence[str]) -> dict:
    """Bootstrap intervals of tau and rho, and how often the chooser's top-1 is the truth's top-1.

    chooser, truth: (B, P) resampled scores of the P pairings ``names``.
    """
    taus, rhos, hits = [], [], []
    for c, t in zip(chooser, truth):
        a = stats.compare(dict(zip(names, c.tolist())), dict(zip(names, t.tolist())))
        taus.append(a["kendall_tau"])
        rhos.append(a["spearman_rho"])
        hits.append(a["top1_agree"])
    return {"kendall_tau_ci95": interval(np.asarray(taus)), "spearman_rho_ci95": interval(np.asarray(rhos)),
            "top1_agree_prob": float(np.mean(hits))}


def top1_prob(samples: np.ndarray, names: Sequence[str], chosen: str) -> float:
    """How often ``chosen`` is the top-1 of a resample: (B, P) samples of the pairings ``names``."""
    winners = np.argmax(samples, axis=1)
    return float(np.mean(winners == list(names).index(chosen)))


def column_intervals(samples: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, dict[str, list]]:
    """column -> pairing -> [low, high], from (B, P) samples per column."""
    return {col: {name: interval(s[:, j]) for j, name in enumerate(names)} for col, s in samples.items()}
