"""How far two rankings of the same pairings agree (F1 vs F2, LogME vs F1).

The paper's claim is about rankings, not scores: the upper bound F1 is inflated by
over-fitting, so we compare orders (Kendall tau, Spearman rho), the choice that matters in
practice (is the top-1 the same?), and what a wrong choice costs (relative top-1: F2 of the
pairing F1 picks, over the best F2).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import stats

from avvp_pipe.core.errors import AvvpError


def ranks(scores: Mapping[str, float]) -> dict[str, int]:
    """Rank 1 = highest score; ties share the best (min) rank, as a leaderboard does."""
    values = np.asarray([-scores[name] for name in scores], dtype=np.float64)
    order = stats.rankdata(values, method="min").astype(int)
    return dict(zip(scores, order.tolist()))


def top1(scores: Mapping[str, float]) -> str:
    """The name with the highest score (first in the given order on ties)."""
    return max(scores, key=lambda name: scores[name])


def compare(chooser: Mapping[str, float], truth: Mapping[str, float]) -> dict:
    """Agreement of ``chooser`` (e.g. F1, LogME) with ``truth`` (e.g. F2) over the same pairings.

    Tau and rho are NaN (JSON null) when either side is constant or fewer than 2 pairings.
    """
    if set(chooser) != set(truth):
        raise AvvpError(f"compare: expected the same pairings on both sides but got {sorted(chooser)} "
                        f"and {sorted(truth)}")
    names = list(truth)
    x = np.asarray([chooser[n] for n in names], dtype=np.float64)
    y = np.asarray([truth[n] for n in names], dtype=np.float64)
    constant = len(names) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0
    tau = float("nan") if constant else float(stats.kendalltau(x, y).statistic)
    rho = float("nan") if constant else float(stats.spearmanr(x, y).statistic)
    chosen, best = top1(chooser), top1(truth)
    best_truth = truth[best]
    return {
        "pairings": len(names),
        "kendall_tau": tau,
        "spearman_rho": rho,
        "top1_chosen": chosen,
        "top1_best": best,
        "top1_agree": truth[chosen] == best_truth,  # a tie at the top counts as agreement
        "relative_top1": (truth[chosen] / best_truth) if best_truth else float("nan"),
    }
