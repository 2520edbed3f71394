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

Other readings (:class:`~avvp_pipe.models.mtsc_reading.MTSCReading`, options of ``train``
and ``select``; formulas in README's MTSC section). All work on groups of N seconds: each
clip (N = T, negatives "clip", today's) or the whole batch (N = B * T, "batch", with lag
:data:`CROSS_CLIP_LAG` between clips):

    pull "linear"        same-second terms 1 - s_ii instead of (s_ii - 1) ** 2
    error "absolute"     |s_ij - target_ij| off the diagonal instead of the square
    simdetach            S from g's outputs ("head"), from a, v ("projected"), or from the
                         stored features before HAN's projections ("raw", :func:`raw_features`)
    form "infonce"       Eq. 5: mean over i of logsumexp_k(l_ik) - l_ii with l_ii = s_ii / tau
                         and l_ik = W_ik * s_ik / tau for k != i

The default reading runs the same operations in the same order as before the readings
existed, so its losses are bit-identical (tests/test_mtsc_readings.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avvp_pipe.core.errors import AvvpError
from avvp_pipe.models.han import per_second_mean
from avvp_pipe.models.mtsc_reading import ANCHORS, VARIANTS, MTSCReading

__all__ = ["ANCHORS", "VARIANTS", "CROSS_CLIP_LAG", "MTSCReading", "mtsc_loss", "mtsc_target", "time_lag",
           "lag_matrix", "raw_features", "cosine_matrix"]

#: T between seconds of two different clips (negatives "batch"). A lag is only defined within
#: a clip; SimCLR, which Algorithm 1 follows, treats every other sample of the batch as a full
#: negative, so such pairs weigh as much as adjacent seconds (T = 1) rather than vanish (T = 0).
CROSS_CLIP_LAG = 1.0

# Cosine of a zero vector is taken as 0 rather than NaN.
_EPS = 1e-8


def mtsc_loss(a: Tensor, v: Tensor, head: nn.Module, reading: MTSCReading | None = None, *,
              raw: tuple[Tensor, Tensor] | None = None, **options: object) -> Tensor:
    """MTSC loss of a batch (a scalar): a, v (B, T, C) features before HAN, head g applied to both.

    ``reading`` picks the reading (or pass its fields as keywords: variant, decay, anchor,
    form, temperature, pull, error, simdetach, negatives); the default is today's reading.
    ``raw`` is (audio (B, T, Da), visual (B, T, Dv)) from :func:`raw_features`, needed by
    ``simdetach="raw"`` only.
    """
    reading = _reading(reading, options)
    _check_args(a, v, head, raw, reading)
    za = head(a)  # (B, T, D)
    zv = head(v)  # (B, T, D)
    batch, seconds = a.shape[:2]
    lag = lag_matrix(batch, seconds, reading.decay, reading.negatives, dtype=za.dtype, device=za.device)  # (N, N)
    za, zv = _groups(za, reading.negatives), _groups(zv, reading.negatives)  # (G, N, D): G clips or 1 batch
    s = cosine_matrix(za, zv)  # (G, N, N): s[g, i, j] = cos(g(a_i), g(v_j))
    if reading.form == "infonce":
        return _infonce(s, lag, reading.temperature)
    if reading.variant == "part":
        return _pull(s.diagonal(dim1=1, dim2=2), reading.pull).mean()  # mean over G and i
    xa, xv = _simdetach_inputs(a, v, za, zv, raw, reading)  # (G, N, C') each, no gradient
    target = mtsc_target(xa, xv, lag, anchor=reading.anchor)  # (G, N, N)
    residual = s - target  # (G, N, N)
    if reading.pull == "squared" and reading.error == "squared":
        return (residual ** 2).mean()  # mean over i, j, then G (equal sizes)
    eye = torch.eye(s.shape[-1], dtype=torch.bool, device=s.device)  # (N, N)
    on = _pull(s, reading.pull)  # (G, N, N), read on the diagonal, where the target is 1
    off = residual ** 2 if reading.error == "squared" else residual.abs()  # (G, N, N)
    return torch.where(eye, on, off).mean()


def _reading(reading: MTSCReading | None, options: dict[str, object]) -> MTSCReading:
    """The reading passed, or one built from keyword fields (not both: which would win is unclear)."""
    if reading is not None and options:
        raise AvvpError(f"mtsc_loss: expected a reading or its fields as keywords but got both ({', '.join(options)})")
    if reading is not None:
        return reading
    try:
        return MTSCReading(**options)  # type: ignore[arg-type]
    except TypeError as err:
        raise AvvpError(f"mtsc_loss: {err}") from None


def _pull(s_same: Tensor, pull: str) -> Tensor:
    """Same-second terms from s_ii: (s_ii - 1)^2, or the linear pull 1 - s_ii (>= 0, as s_ii <= 1)."""
    return (s_same - 1.0) ** 2 if pull == "squared" else 1.0 - s_same


def _infonce(s: Tensor, lag: Tensor, temperature: float) -> Tensor:
    """Eq. 5 as InfoNCE, audio second i against visual seconds k: the positive k = i unweighted,
    each negative's similarity scaled by T_ik inside the exponential; the positive stays in the
    denominator as in SimCLR's NT-Xent (its 1[k != i] only drops a sample's pair with itself)."""
    eye = torch.eye(s.shape[-1], dtype=torch.bool, device=s.device)  # (N, N)
    logits = torch.where(eye, s, lag * s) / temperature  # (G, N, N)
    return (torch.logsumexp(logits, dim=-1) - logits.diagonal(dim1=1, dim2=2)).mean()  # mean over G and i


def _groups(x: Tensor, negatives: str) -> Tensor:
    """(B, T, C) -> (G, N, C): each clip a group (G = B, N = T), or the batch one group (G = 1, N = B * T)."""
    return x if negatives == "clip" else x.reshape(1, -1, x.shape[-1])


def _simdetach_inputs(a: Tensor, v: Tensor, za: Tensor, zv: Tensor, raw: tuple[Tensor, Tensor] | None,
                      reading: MTSCReading) -> tuple[Tensor, Tensor]:
    """Detached features whose within-modality cosine is simdetach: g's outputs (already grouped),
    the projections a, v before g, or the stored features."""
    if reading.simdetach == "head":
        return za.detach(), zv.detach()  # (G, N, D)
    xa, xv = (a, v) if reading.simdetach == "projected" else raw  # type: ignore[misc]
    return _groups(xa.detach(), reading.negatives), _groups(xv.detach(), reading.negatives)  # (G, N, C')


def mtsc_target(xa: Tensor, xv: Tensor, lag: Tensor, *, anchor: str = "audio") -> Tensor:
    """Target matrix (G, N, N): 1 on the diagonal, time lag times the anchor's own similarity off it.

    Callers pass detached features (G, N, C) and the lag matrix (N, N); the target must carry
    no gradient.
    """
    within = {
        "audio": lambda: cosine_matrix(xa, xa),  # (G, N, N)
        "visual": lambda: cosine_matrix(xv, xv),  # (G, N, N)
        "both": lambda: 0.5 * (cosine_matrix(xa, xa) + cosine_matrix(xv, xv)),  # (G, N, N)
    }[anchor]()
    eye = torch.eye(xa.shape[1], dtype=within.dtype, device=within.device)  # (N, N)
    return eye + (1.0 - eye) * lag * within  # (G, N, N)


def lag_matrix(batch: int, seconds: int, decay: float, negatives: str = "clip", *,
               dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """T over the seconds contrasted: (T, T) :func:`time_lag` per clip, or (B*T, B*T) for the batch
    (row b * T + i), with :data:`CROSS_CLIP_LAG` between seconds of different clips."""
    lag = time_lag(seconds, decay, dtype=dtype, device=device)  # (T, T)
    if negatives == "clip":
        return lag
    clip = torch.arange(batch * seconds, device=device) // seconds  # (B*T,) clip of each row
    same = clip[:, None] == clip[None, :]  # (B*T, B*T)
    return torch.where(same, lag.repeat(batch, batch), torch.full_like(same, CROSS_CLIP_LAG, dtype=dtype))


def raw_features(audio: Tensor, visual: Tensor, visual_3d: Tensor | None = None,
                 frames_per_second: int = 8) -> tuple[Tensor, Tensor]:
    """The stored features, per second, that simdetach "raw" compares: audio (B, T, Da) and
    visual (B, T, Dv + D3).

    Why the 2D and 3D streams are concatenated: HAN's visual branch is linear in [2D; 3D]
    (fc_fusion of fc_v and fc_st), so that concatenation is the visual second before HAN's
    projections; each stream then weighs in the cosine by its norm. Zero-padded widths (a
    group's stacked inputs) leave the cosine unchanged.
    """
    if visual.shape[1] != audio.shape[1]:
        visual = per_second_mean(visual, frames_per_second)  # (B, T * fps, Dv) -> (B, T, Dv)
    if visual_3d is not None:
        visual = torch.cat([visual, visual_3d], dim=-1)  # (B, T, Dv + D3)
    return audio, visual


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


def _check_args(a: Tensor, v: Tensor, head: nn.Module, raw: tuple[Tensor, Tensor] | None,
                reading: MTSCReading) -> None:
    """Raise on shape mistakes or a missing head or raw features (these reach the user through the config)."""
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
    if reading.simdetach != "raw" or reading.variant == "part" or reading.form == "infonce":
        return
    if raw is None or len(raw) != 2:
        raise AvvpError("mtsc simdetach 'raw': expected raw=(audio, visual) stored features but got none")
    shapes = [tuple(x.shape) for x in raw]
    if any(len(sh) != 3 or sh[:2] != tuple(a.shape[:2]) for sh in shapes):
        raise AvvpError(f"mtsc raw features: expected (B, T, D) with (B, T) = {tuple(a.shape[:2])} "
                        f"but got {shapes[0]} and {shapes[1]}")
