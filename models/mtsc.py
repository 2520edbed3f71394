"""MTSC, the seed paper's multimodal time-series contrastive loss (its section 3.3, Eq. 6).

What it computes, per clip of T seconds (T = 10 on LLP):

    a, v   (T, C)  audio and visual features after HAN's input projections, before HAN
                   (``HAN.project``); the paper's h = t(x), "t is part of the model before HAN".
    z      g(a), g(v), with g a Linear head (``HAN.mtsc_head``), as in Algorithm 1 (z = g(h)).
    s_ij   cosine(g(a_i), g(v_j))                          a (T, T) cross-modal matrix
    W_ij   1 / |i - j| ** decay for i != j                 the time-lag coefficient (decay 5)
    S_ij   within-modality cosine of the anchor's g outputs, gradient stopped
    target 1 on the diagonal; W_ij * S_ij off it
    loss   mean over i, j of (s_ij - target_ij) ** 2, then mean over the clips of the batch

``variant="part"`` (the paper's ablation, "only restricts the features at the same time")
keeps the diagonal terms alone: mean over i of (s_ii - 1) ** 2.

How we read Eq. 6, and why. As printed, Eq. 6 is
``l = 1/N^2 sum_j sum_i [sim(phi1_i, phi2_j) - F(j - i) * S_ij]`` with
``S_ij = T_ij * simdetach(phi1_i, phi1_j)`` and ``T_ij = 1/|i - j|^5``. Taken literally it is
not a usable loss: (1) T_ii = 1/0 is undefined, and nothing else pulls same-second pairs
together, although the text says MTSC "increase[s] the similarity of features of different
modes" at the same time and the "part" ablation consists of exactly those same-second terms;
(2) the bracket has no square or absolute value, so minimising it drives every similarity to
-1, while the text says other seconds are pushed *towards* their detached within-modality
similarity; (3) the lag enters twice (F(j - i) and T_ij inside S_ij). We therefore use a
squared regression to a target that is 1 on the diagonal (same-second audio and visual pairs
are positives) and ``T_ij * simdetach`` off it, applying the lag coefficient once. N in
1/N^2 is read as the number of seconds: i and j index seconds of one clip, since a time lag
between seconds of different clips means nothing; clips are then averaged.

The anchor of simdetach is the paper's first mode, phi1 (audio, ``anchor="audio"``);
``"visual"`` uses the visual features and ``"both"`` the mean of the two matrices.
simdetach is computed on g's outputs (detached), not on the projections a, v: Eq. 6 writes
the same phi in the cross-modal term and in simdetach, and Algorithm 1 computes the
cross-modal term on z = g(h); comparing s with a target measured in the same space keeps
the two on one scale. Because it is detached, the target trains neither g nor the
projections: gradients reach a, v and g only through s (tested).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avvp_pipe.core.errors import AvvpError

Variant = Literal["part", "entire"]
Anchor = Literal["audio", "visual", "both"]

VARIANTS: tuple[str, ...] = ("part", "entire")
ANCHORS: tuple[str, ...] = ("audio", "visual", "both")

# Cosine of a zero vector is taken as 0 rather than NaN.
_EPS = 1e-8


def mtsc_loss(
    a: Tensor,
    v: Tensor,
    head: nn.Module,
    *,
    variant: Variant = "entire",
    decay: float = 5.0,
    anchor: Anchor = "audio",
) -> Tensor:
    """MTSC loss of a batch (a scalar): a, v (B, T, C) features before HAN, head g applied to both."""
    _check_args(a, v, head, variant, decay, anchor)
    za = head(a)  # (B, T, D)
    zv = head(v)  # (B, T, D)
    s = cosine_matrix(za, zv)  # (B, T, T): s[b, i, j] = cos(g(a_i), g(v_j))
    if variant == "part":
        return ((s.diagonal(dim1=1, dim2=2) - 1.0) ** 2).mean()  # mean over B and i
    target = mtsc_target(za.detach(), zv.detach(), decay=decay, anchor=anchor)  # (B, T, T)
    return ((s - target) ** 2).mean()  # mean over i, j, then B (equal sizes)


def mtsc_target(za: Tensor, zv: Tensor, *, decay: float = 5.0, anchor: Anchor = "audio") -> Tensor:
    """Target matrix (B, T, T): 1 on the diagonal, time-lag times the anchor's own similarity off it.

    Callers pass detached head outputs; the target must carry no gradient.
    """
    within = {
        "audio": lambda: cosine_matrix(za, za),  # (B, T, T)
        "visual": lambda: cosine_matrix(zv, zv),  # (B, T, T)
        "both": lambda: 0.5 * (cosine_matrix(za, za) + cosine_matrix(zv, zv)),  # (B, T, T)
    }[anchor]()
    seconds = za.shape[1]
    eye = torch.eye(seconds, dtype=within.dtype, device=within.device)  # (T, T)
    lag = time_lag(seconds, decay, dtype=within.dtype, device=within.device)  # (T, T)
    return eye + (1.0 - eye) * lag * within  # (B, T, T)


def time_lag(
    seconds: int,
    decay: float,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """W (T, T): 1 / |i - j| ** decay off the diagonal, 0 on it (where Eq. 6 is undefined).

    Note W = 1 for adjacent seconds whatever the decay; decay only shapes lags of 2 or more.
    """
    idx = torch.arange(seconds, device=device, dtype=dtype)  # (T,)
    gap = (idx[:, None] - idx[None, :]).abs()  # (T, T)
    return torch.where(gap > 0, gap.clamp(min=1.0) ** -decay, torch.zeros_like(gap))  # (T, T)


def cosine_matrix(x: Tensor, y: Tensor) -> Tensor:
    """All-pairs cosine similarity per clip: (B, T, D) x (B, T, D) -> (B, T, T)."""
    xn = F.normalize(x, dim=-1, eps=_EPS)  # (B, T, D)
    yn = F.normalize(y, dim=-1, eps=_EPS)  # (B, T, D)
    return xn @ yn.transpose(1, 2)  # (B, T, T)


def _check_args(a: Tensor, v: Tensor, head: nn.Module, variant: str, decay: float, anchor: str) -> None:
    """Raise on option or shape mistakes (these reach the user through the training config)."""
    if variant not in VARIANTS:
        raise AvvpError(f"mtsc variant: expected one of {VARIANTS} but got {variant!r}")
    if anchor not in ANCHORS:
        raise AvvpError(f"mtsc anchor: expected one of {ANCHORS} but got {anchor!r}")
    if not decay >= 0:
        raise AvvpError(f"mtsc decay: expected a number >= 0 but got {decay!r}")
    if not isinstance(head, nn.Module):
        raise AvvpError(
            f"mtsc head: expected an nn.Module (HAN.mtsc_head; build HAN with keep_visual_head=True) "
            f"but got {type(head).__name__}"
        )
    if a.ndim != 3 or a.shape != v.shape or a.shape[1] < 1:
        raise AvvpError(
            f"mtsc features: expected audio and visual both (B, T, C) with equal shapes "
            f"but got {tuple(a.shape)} and {tuple(v.shape)}"
        )
