"""LogME (You, Liu, Wang and Long, ICML 2021): a training-free score of features for a task.

For each label column y (N,) it fits a Bayesian linear model y = F w + noise with prior
w ~ N(0, alpha^-1 I) and noise ~ N(0, beta^-1), sets alpha and beta by maximising the
evidence p(y | F, alpha, beta) with MacKay's fixed-point updates, and reports the maximum
log evidence divided by N. The score of a feature set is the mean over label columns.

Why here: ranking M x K pairings by training HAN on each costs minutes per pairing; LogME
costs one eigendecomposition per pairing. avvp-pipe reports it beside the upper bound so a
user can see whether the cheap score ranks pairings the same way.

Everything is done in the eigenbasis of F^T F, from one symmetric eigendecomposition of the
smaller Gram matrix (F F^T or F^T F, min(N, D) square), so each update is O(min(N, D)). That
is about 5x faster than the thin SVD of F that earlier versions used (760 x 2560: 0.22 s vs
1.1 s on one core), which matters because ``--bootstrap`` repeats it per resample; the
eigenvalues agree to ~1e-15 of the largest, and directions below ``max(N, D) * eps`` of the
largest are dropped as numerically zero (their evidence terms are alpha's alone). The
evidence is evaluated at the converged (alpha, beta) with the posterior mean recomputed
there, so it equals the closed-form Gaussian marginal likelihood exactly (tested against
``log N(y; 0, F F^T / alpha + I / beta)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from avvp_pipe.core.errors import AvvpError
from avvp_pipe.pipeline.train.pairing import SplitArrays

_TINY = 1e-12


@dataclass(frozen=True)
class Evidence:
    """The fitted hyper-parameters and the log evidence per sample of one label column."""

    alpha: float
    beta: float
    log_evidence: float  # log p(y | F, alpha, beta) / N
    iterations: int


def _posterior(alpha: float, beta: float, s: np.ndarray, uty: np.ndarray, yy: float) -> tuple[float, float, float]:
    """(gamma, m^T m, ||y - F m||^2) for the posterior mean m = beta A^-1 F^T y, A = alpha I + beta F^T F.

    s: (r,) nonzero eigenvalues of F^T F (squared singular values); uty: (r,) U^T y.
    """
    shrink = beta * s / (alpha + beta * s)  # (r,) how much each direction is fitted
    gamma = float(shrink.sum())  # effective number of parameters
    mm = float((shrink**2 / np.maximum(s, _TINY) * uty**2).sum())  # m = V diag(shrink / sqrt(s)) U^T y
    fitted = shrink * uty  # (r,) U^T F m
    residual = max(yy - float((uty**2).sum()), 0.0) + float(((uty - fitted) ** 2).sum())
    return gamma, mm, residual


def log_evidence(alpha: float, beta: float, s: np.ndarray, uty: np.ndarray, yy: float, n: int, d: int) -> float:
    """log p(y | F, alpha, beta): the evidence of Bishop (3.86), in the singular basis of F."""
    _, mm, residual = _posterior(alpha, beta, s, uty, yy)
    log_det = float(np.log(alpha + beta * s).sum()) + (d - len(s)) * math.log(alpha)  # log |A|
    return (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - beta / 2 * residual - alpha / 2 * mm
            - log_det / 2 - n / 2 * math.log(2 * math.pi))


def fit_column(s: np.ndarray, uty: np.ndarray, yy: float, n: int, d: int, *, tol: float = 1e-6,
               max_iter: int = 200) -> Evidence:
    """MacKay's fixed point: alpha = gamma / m^T m, beta = (N - gamma) / ||y - F m||^2, to convergence."""
    alpha, beta = 1.0, 1.0
    for iteration in range(1, max_iter + 1):
        gamma, mm, residual = _posterior(alpha, beta, s, uty, yy)
        new_alpha = gamma / max(mm, _TINY)
        new_beta = max(n - gamma, _TINY) / max(residual, _TINY)
        done = abs(new_alpha / new_beta - alpha / beta) <= tol * (alpha / beta)
        alpha, beta = max(new_alpha, _TINY), new_beta
        if done:
            break
    return Evidence(alpha, beta, log_evidence(alpha, beta, s, uty, yy, n, d) / n, iteration)


def _spectrum(f: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(s, U^T y): the nonzero eigenvalues of F^T F (squared singular values of F) and y in F's left
    singular basis, from the eigendecomposition of the smaller Gram matrix."""
    n, d = f.shape
    s, vecs = np.linalg.eigh(f @ f.T if n <= d else f.T @ f)  # (r0,), (r0, r0): U if n <= d, else V
    keep = s > s.max(initial=0.0) * max(n, d) * np.finfo(np.float64).eps
    s, vecs = s[keep], vecs[:, keep]
    if n <= d:
        return s, vecs.T @ y
    return s, (vecs.T @ (f.T @ y)) / np.sqrt(s)[:, None]  # U = F V / sqrt(s), so U^T y = V^T F^T y / sqrt(s)


def logme(features: np.ndarray, targets: np.ndarray) -> tuple[float, list[Evidence]]:
    """Mean over target columns of the maximum log evidence per sample; features (N, D), targets (N, K)."""
    if features.ndim != 2 or targets.ndim != 2 or features.shape[0] != targets.shape[0]:
        raise AvvpError(f"logme: expected features (N, D) and targets (N, K) but got {features.shape} "
                        f"and {targets.shape}")
    f = np.asarray(features, dtype=np.float64)  # (N, D)
    y = np.asarray(targets, dtype=np.float64)  # (N, K)
    n, d = f.shape
    s, uty = _spectrum(f, y)  # (r,), (r, K)
    fits = [fit_column(s, uty[:, k], float(y[:, k] @ y[:, k]), n, d) for k in range(y.shape[1])]
    return float(np.mean([e.log_evidence for e in fits])), fits


def pairing_features(arrays: SplitArrays) -> np.ndarray:
    """(N, Da + Dv [+ D3]): each stream averaged over the 10 seconds, then concatenated."""
    parts = [arrays.audio.mean(axis=1), arrays.visual.mean(axis=1)]  # (N, Da), (N, Dv)
    if arrays.visual_3d is not None:
        parts.append(arrays.visual_3d.mean(axis=1))  # (N, D3)
    return np.concatenate(parts, axis=1)


def logme_pairing(arrays: SplitArrays) -> float:
    """LogME of a pairing on one split: time-averaged features against multi-hot clip labels."""
    return logme(pairing_features(arrays), arrays.labels)[0]
