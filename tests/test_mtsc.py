"""MTSC loss on tiny hand-built clips; expected values come from plain-Python arithmetic."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from avvp_pipe.models.mtsc import mtsc_loss, time_lag
from avvp_pipe.core.errors import AvvpError

SQ = math.sqrt(0.5)  # 1/sqrt(2)

# ------------------------------------------------------------ plain-Python reference


def py_cos(x: list[float], y: list[float]) -> float:
    dot = sum(p * q for p, q in zip(x, y))
    return dot / (math.sqrt(sum(p * p for p in x)) * math.sqrt(sum(q * q for q in y)))


def py_mtsc(a, v, *, decay=5.0, anchor="audio", variant="entire", g=lambda x: x) -> float:
    """The module docstring's formula for one clip, written out with floats."""
    za, zv = [g(x) for x in a], [g(x) for x in v]
    n = len(a)
    if variant == "part":
        return sum((py_cos(za[i], zv[i]) - 1.0) ** 2 for i in range(n)) / n
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i == j:
                target = 1.0
            else:
                within = {
                    "audio": py_cos(za[i], za[j]),
                    "visual": py_cos(zv[i], zv[j]),
                    "both": (py_cos(za[i], za[j]) + py_cos(zv[i], zv[j])) / 2,
                }[anchor]
                target = within / abs(i - j) ** decay
            total += (py_cos(za[i], zv[j]) - target) ** 2
    return total / n**2


def clip(vectors) -> torch.Tensor:
    return torch.tensor([vectors], dtype=torch.float64)  # (1, T, C)


A2 = [[1.0, 0.0], [0.0, 1.0]]
V2 = [[1.0, 1.0], [2.0, 0.0]]
# s = [[1/sqrt2, 1], [1/sqrt2, 0]]; cos(a0, a1) = 0; cos(v0, v1) = 1/sqrt2; lag(0, 1) = 1.


# ------------------------------------------------------------ hand-checked values


def test_two_seconds_by_hand():
    got = mtsc_loss(clip(A2), clip(V2), nn.Identity())
    # target [[1, 0], [0, 1]] (audio within-similarity is 0)
    want = ((SQ - 1) ** 2 + (1 - 0) ** 2 + (SQ - 0) ** 2 + (0 - 1) ** 2) / 4
    assert got.item() == pytest.approx(want, abs=1e-12)
    assert want == pytest.approx(py_mtsc(A2, V2), abs=1e-12)


@pytest.mark.parametrize(
    "anchor, off_target",
    [("audio", 0.0), ("visual", SQ), ("both", SQ / 2)],
)
def test_anchor_variants_by_hand(anchor, off_target):
    got = mtsc_loss(clip(A2), clip(V2), nn.Identity(), anchor=anchor)
    want = ((SQ - 1) ** 2 + (1 - off_target) ** 2 + (SQ - off_target) ** 2 + (0 - 1) ** 2) / 4
    assert got.item() == pytest.approx(want, abs=1e-12)


def test_part_keeps_only_the_diagonal():
    got = mtsc_loss(clip(A2), clip(V2), nn.Identity(), variant="part")
    assert got.item() == pytest.approx(((SQ - 1) ** 2 + (0 - 1) ** 2) / 2, abs=1e-12)
    # The off-diagonal terms and the anchor do not matter for "part".
    for anchor in ("visual", "both"):
        other = mtsc_loss(clip(A2), clip(V2), nn.Identity(), variant="part", anchor=anchor)
        assert other.item() == pytest.approx(got.item())


A3 = [[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]]  # a0 parallel to a2: within-similarity 1 at lag 2
V3 = [[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]  # s02 = cos(a0, v2) = 1/sqrt2, s20 = cos(a2, v0) = 0


@pytest.mark.parametrize("decay", [0.0, 1.0, 2.0, 5.0])
def test_decay_acts_on_lags_of_two_or_more(decay):
    base = mtsc_loss(clip(A3), clip(V3), nn.Identity(), decay=0.0).item()
    got = mtsc_loss(clip(A3), clip(V3), nn.Identity(), decay=decay).item()
    # Only the (0, 2) and (2, 0) targets move, from 1 * 1 to 2**-decay * 1.
    w = 2.0**-decay
    change = ((SQ - w) ** 2 - (SQ - 1) ** 2 + (0 - w) ** 2 - (0 - 1) ** 2) / 9
    assert got - base == pytest.approx(change, abs=1e-12)
    assert got == pytest.approx(py_mtsc(A3, V3, decay=decay), abs=1e-12)


def test_decay_does_not_matter_for_adjacent_seconds():
    values = {mtsc_loss(clip(A2), clip(V2), nn.Identity(), decay=d).item() for d in (0.0, 1.0, 5.0, 9.0)}
    assert max(values) - min(values) < 1e-12


def test_time_lag_matrix():
    w = time_lag(4, 2.0, dtype=torch.float64)
    want = [[0, 1, 1 / 4, 1 / 9], [1, 0, 1, 1 / 4], [1 / 4, 1, 0, 1], [1 / 9, 1 / 4, 1, 0]]
    torch.testing.assert_close(w, torch.tensor(want, dtype=torch.float64))


def test_the_head_is_applied_and_the_target_uses_its_outputs():
    head = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
    a = [[1.0, 1.0], [1.0, 0.0], [0.5, 2.0]]
    v = [[0.0, 1.0], [1.0, 1.0], [2.0, -1.0]]

    def g(x):
        return [x[0], 3 * x[1]]

    got = mtsc_loss(clip(a), clip(v), head, decay=1.0).item()
    assert got == pytest.approx(py_mtsc(a, v, decay=1.0, g=g), abs=1e-12)

    # The documented choice matters: a target from the projections before g gives another value.
    def target_before_g(i, j):
        return 1.0 if i == j else py_cos(a[i], a[j]) / abs(i - j)

    pairs = [(i, j) for i in range(3) for j in range(3)]
    other = sum((py_cos(g(a[i]), g(v[j])) - target_before_g(i, j)) ** 2 for i, j in pairs) / 9
    assert abs(got - other) > 1e-3


# ------------------------------------------------------------ structure


@pytest.mark.parametrize("anchor", ["audio", "visual", "both"])
def test_zero_when_the_target_is_met(anchor):
    # v = 3a: every same-second pair has cosine 1 and s_ij = cos(a_i, a_j) = within_ij.
    # Adjacent seconds have lag weight 1; a0 is orthogonal to a2, so the lag-2 target 0 is met too.
    a = [[1.0, 0.0, 0.0], [0.3, 0.7, 0.2], [0.0, 1.0, 0.0]]
    v = [[3 * x for x in row] for row in a]
    assert mtsc_loss(clip(a), clip(v), nn.Identity(), anchor=anchor).item() == pytest.approx(0.0, abs=1e-12)
    assert mtsc_loss(clip(a), clip(v), nn.Identity(), variant="part").item() == pytest.approx(0.0, abs=1e-12)
    # And not zero when the same clip is misaligned by one second.
    shifted = clip(v).roll(1, dims=1)
    assert mtsc_loss(clip(a), shifted, nn.Identity(), anchor=anchor).item() > 0.05


def test_batch_is_the_mean_of_clips():
    both = torch.cat([clip(A3), clip(V3)])  # (2, 3, 2)
    other = torch.cat([clip(V3), clip([[1.0, 2.0], [0.0, 1.0], [-1.0, 0.5]])])
    got = mtsc_loss(both, other, nn.Identity()).item()
    want = (py_mtsc(A3, V3) + py_mtsc(V3, [[1.0, 2.0], [0.0, 1.0], [-1.0, 0.5]])) / 2
    assert got == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("anchor", ["audio", "visual", "both"])
def test_gradients_flow_only_through_the_cross_modal_similarity(anchor):
    torch.manual_seed(0)
    head = nn.Linear(4, 4).double()
    a = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    w = time_lag(5, 5.0, dtype=torch.float64)
    eye = torch.eye(5, dtype=torch.float64)

    def loss_with(target_inputs_detached: bool) -> torch.Tensor:
        za, zv = head(a), head(v)
        s = nn.functional.cosine_similarity(za[:, :, None], zv[:, None], dim=-1)  # (B, T, T)
        ta, tv = (za.detach(), zv.detach()) if target_inputs_detached else (za, zv)
        sim_a = nn.functional.cosine_similarity(ta[:, :, None], ta[:, None], dim=-1)
        sim_v = nn.functional.cosine_similarity(tv[:, :, None], tv[:, None], dim=-1)
        within = {"audio": sim_a, "visual": sim_v, "both": (sim_a + sim_v) / 2}[anchor]
        return ((s - (eye + (1 - eye) * w * within)) ** 2).mean()

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        return torch.autograd.grad(loss, [a, v, head.weight, head.bias])

    got = grads(mtsc_loss(a, v, head, anchor=anchor, decay=5.0))
    only_s = grads(loss_with(target_inputs_detached=True))
    through_target = grads(loss_with(target_inputs_detached=False))
    for g_got, g_ref in zip(got, only_s):
        torch.testing.assert_close(g_got, g_ref)
    # The check can fail: letting the target carry gradient changes them.
    assert any((g1 - g2).abs().max() > 1e-6 for g1, g2 in zip(got, through_target))
    # g is trained by MTSC.
    assert got[2].abs().sum() > 0


# ------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"variant": "half"}, "variant"),
        ({"anchor": "text"}, "anchor"),
        ({"decay": -1.0}, "decay"),
        ({"decay": float("nan")}, "decay"),
    ],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(AvvpError, match=match):
        mtsc_loss(clip(A2), clip(V2), nn.Identity(), **kwargs)


def test_bad_shapes_or_missing_head_raise():
    with pytest.raises(AvvpError, match="equal shapes"):
        mtsc_loss(clip(A2), clip(A3), nn.Identity())
    with pytest.raises(AvvpError, match="keep_visual_head"):
        mtsc_loss(clip(A2), clip(V2), None)
