"""Tolerances that follow the float32 error of a computation, not what passes on one CPU.

A float32 sum of K products can be off by about K * eps * sum|terms| in the worst case
(eps = 2**-23 ~ 1.19e-7), whatever the CPU; which kernel runs (AVX2 or AVX-512, oneDNN's
blocking, the batch a row shares) only decides where in that range an answer falls. So a
comparison of two float32 computations, or of one against float64, allows
``factor * K * eps * scale``, with ``scale`` the magnitude of the values compared. That is
loose for well-conditioned sums and still orders of magnitude below what a real bug (a
transposed kernel, a swapped row, a missed bias) changes.
"""

from __future__ import annotations

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)


def float32_atol(reference, reduction: int, factor: float = 4.0) -> float:
    """Absolute tolerance for float32 results of length-``reduction`` sums at ``reference``'s scale."""
    scale = float(np.max(np.abs(np.asarray(reference, dtype=np.float64)))) if np.size(reference) else 0.0
    return factor * reduction * EPS32 * max(scale, np.finfo(np.float32).tiny)


def log_domain_atol(reduction: int, factor: float = 4.0) -> float:
    """Absolute tolerance on log(x) when x is a float32 sum of ``reduction`` positive terms:
    a relative error d of x is an absolute error d of log(x)."""
    return factor * reduction * EPS32
