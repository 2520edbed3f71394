"""HAN's training objective, the official recipe (llp-facts.md section 4).

One function, shared by ``avvp-pipe train`` and the batched trainer of ``avvp-pipe select``,
so that both optimise exactly the same thing and the "batched equals alone" test means
something.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: Outputs are clamped to [EPS, 1 - EPS] before BCE, as released.
EPS = 1e-7
#: Visual targets are smoothed: 0.9 y + 0.05 (the release's label smoothing for v_prob).
VISUAL_SMOOTHING = (0.9, 0.05)


def han_bce_loss(global_prob: Tensor, a_prob: Tensor, v_prob: Tensor, labels: Tensor) -> Tensor:
    """BCE(global, y) + BCE(a, y) + BCE(v, 0.9 y + 0.05): a scalar, each term a mean over (B, K).

    global_prob, a_prob, v_prob, labels: (B, K). The modality terms use the clip's weak labels
    for both modalities: LLP gives no modality-level labels for training.
    """
    scale, shift = VISUAL_SMOOTHING
    visual_target = labels * scale + shift  # (B, K)
    return (
        F.binary_cross_entropy(global_prob.clamp(EPS, 1 - EPS), labels)
        + F.binary_cross_entropy(a_prob.clamp(EPS, 1 - EPS), labels)
        + F.binary_cross_entropy(v_prob.clamp(EPS, 1 - EPS), visual_target)
    )


def per_sample_han_bce_loss(global_prob: Tensor, a_prob: Tensor, v_prob: Tensor, labels: Tensor) -> Tensor:
    """(B,) per-clip version of :func:`han_bce_loss`; its mean over B equals the batch loss."""
    scale, shift = VISUAL_SMOOTHING

    def bce(p: Tensor, y: Tensor) -> Tensor:
        return F.binary_cross_entropy(p.clamp(EPS, 1 - EPS), y, reduction="none").mean(dim=-1)  # (B,)

    return bce(global_prob, labels) + bce(a_prob, labels) + bce(v_prob, labels * scale + shift)


__all__ = ["EPS", "VISUAL_SMOOTHING", "han_bce_loss", "per_sample_han_bce_loss"]
