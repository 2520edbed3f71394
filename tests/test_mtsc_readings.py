"""MTSC readings (issue 14 point 5): each against a plain-Python reference and at least one hand value.

The reference (``py_reading``) writes every reading out with floats and loops, from the
formulas in README's MTSC section; the module under test vectorises them. Hand values use
the two-second clip of tests/test_mtsc.py, whose cosines are 0, 1/sqrt(2) and 1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, fields

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from avvp_pipe.core.errors import AvvpError
from avvp_pipe.models.mtsc import MTSCReading, lag_matrix, mtsc_loss, raw_features, time_lag
from avvp_pipe.pipeline.train.config import LATER_FIELDS, MTSC_CHOICES, TrainConfig
from tests.tolerance import float32_atol

SQ = math.sqrt(0.5)
A2 = [[1.0, 0.0], [0.0, 1.0]]
V2 = [[1.0, 1.0], [2.0, 0.0]]
# s = [[1/sqrt2, 1], [1/sqrt2, 0]]; cos(a0, a1) = 0; cos(v0, v1) = 1/sqrt2; lag(0, 1) = 1.
READING_FIELDS = [f.name for f in fields(MTSCReading)]


# ------------------------------------------------------------ plain-Python reference


def py_cos(x, y) -> float:
    dot = sum(p * q for p, q in zip(x, y))
    return dot / (math.sqrt(sum(p * p for p in x)) * math.sqrt(sum(q * q for q in y)))


def py_reading(a, v, r: MTSCReading, g=lambda x: x, raw=None) -> float:
    """a, v: [B][T][C] lists; raw: ([B][T][Da], [B][T][Dv]). The README formulas, one term at a time."""
    src = {"head": ([[g(x) for x in c] for c in a], [[g(x) for x in c] for c in v]),
           "projected": (a, v), "raw": raw}[r.simdetach]
    seconds = [(b, t) for b in range(len(a)) for t in range(len(a[0]))]
    groups = [[(b, t) for t in range(len(a[0]))] for b in range(len(a))] if r.negatives == "clip" else [seconds]

    def lag(p, q) -> float:
        if p == q:
            return 0.0
        return 1.0 / abs(p[1] - q[1]) ** r.decay if p[0] == q[0] and p[1] != q[1] else 1.0

    def s(p, q) -> float:
        return py_cos(g(a[p[0]][p[1]]), g(v[q[0]][q[1]]))

    def within(p, q) -> float:
        ca = py_cos(src[0][p[0]][p[1]], src[0][q[0]][q[1]])
        cv = py_cos(src[1][p[0]][p[1]], src[1][q[0]][q[1]])
        return {"audio": ca, "visual": cv, "both": (ca + cv) / 2}[r.anchor]

    def group_loss(group) -> float:
        n = len(group)
        if r.form == "infonce":
            total = 0.0
            for p in group:
                logits = [s(p, q) / r.temperature if q == p else lag(p, q) * s(p, q) / r.temperature for q in group]
                total += math.log(sum(math.exp(x) for x in logits)) - s(p, p) / r.temperature
            return total / n
        pull = (lambda x: (x - 1) ** 2) if r.pull == "squared" else (lambda x: 1 - x)
        if r.variant == "part":
            return sum(pull(s(p, p)) for p in group) / n
        err = (lambda x: x * x) if r.error == "squared" else abs
        return sum(pull(s(p, q)) if p == q else err(s(p, q) - lag(p, q) * within(p, q))
                   for p in group for q in group) / n**2

    return sum(group_loss(gr) for gr in groups) / len(groups)


def t64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


# ------------------------------------------------------------ hand-checked values


def test_linear_pull_by_hand():
    got = mtsc_loss(t64([A2]), t64([V2]), nn.Identity(), pull="linear").item()
    # diagonal: 1 - s_ii; off: (s_ij - 0)^2 (the audio within-similarity is 0)
    assert got == pytest.approx(((1 - SQ) + (1 - 0) + 1**2 + SQ**2) / 4, abs=1e-12)
    part = mtsc_loss(t64([A2]), t64([V2]), nn.Identity(), variant="part", pull="linear").item()
    assert part == pytest.approx(((1 - SQ) + 1) / 2, abs=1e-12)


def test_absolute_error_by_hand():
    got = mtsc_loss(t64([A2]), t64([V2]), nn.Identity(), error="absolute", anchor="visual").item()
    # diagonal squared as today; off-diagonal |s_ij - 1/sqrt2|: |1 - SQ| and |SQ - SQ|
    assert got == pytest.approx(((SQ - 1) ** 2 + (0 - 1) ** 2 + (1 - SQ) + 0.0) / 4, abs=1e-12)


def test_infonce_by_hand():
    got = mtsc_loss(t64([A2]), t64([V2]), nn.Identity(), form="infonce", temperature=1.0).item()
    # row 0: logits [SQ, 1 * 1]; row 1: [1 * SQ, 0]; loss = logsumexp(row) - row[i]
    want = (math.log(math.exp(SQ) + math.e) - SQ + math.log(math.exp(SQ) + 1.0) - 0.0) / 2
    assert got == pytest.approx(want, abs=1e-12)


def test_infonce_lag_scales_negatives_inside_the_exponential():
    a = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    v = [[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
    got = mtsc_loss(t64([a]), t64([v]), nn.Identity(), form="infonce", temperature=0.5, decay=1.0).item()
    # second 0: s = [1, SQ, 0], negatives at lags 1, 2 -> weights 1, 1/2
    row0 = math.log(math.exp(1 / 0.5) + math.exp(SQ / 0.5) + math.exp(0.5 * 0 / 0.5)) - 1 / 0.5
    row1 = math.log(math.exp(0 / 0.5) + math.exp(SQ / 0.5) + math.exp(1 / 0.5)) - SQ / 0.5
    row2 = math.log(math.exp(0.5 * SQ / 0.5) + math.exp(1 / 0.5) + math.exp(SQ / 0.5)) - SQ / 0.5
    assert got == pytest.approx((row0 + row1 + row2) / 3, abs=1e-12)


def test_simdetach_sources_by_hand():
    head = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        head.weight.copy_(t64([[1.0, 1.0], [0.0, 1.0]]))  # g(a0) = (1, 0), g(a1) = (1, 1): cos 1/sqrt2
    s = [[py_cos(head(t64(x)).tolist(), head(t64(y)).tolist()) for y in V2] for x in A2]

    def loss_with_target(off: float) -> float:
        return ((s[0][0] - 1) ** 2 + (s[0][1] - off) ** 2 + (s[1][0] - off) ** 2 + (s[1][1] - 1) ** 2) / 4

    raw = (t64([[[3.0, 4.0, 0.0], [3.0, 4.0, 0.0]]]), t64([[[1.0], [1.0]]]))  # raw audio seconds parallel: cos 1
    for source, off in (("head", SQ), ("projected", 0.0), ("raw", 1.0)):
        got = mtsc_loss(t64([A2]), t64([V2]), head, simdetach=source, raw=raw).item()
        assert got == pytest.approx(loss_with_target(off), abs=1e-12), source


def test_batch_negatives_by_hand_and_one_clip_equals_clip_negatives():
    # two one-second clips: no within-clip negative, so "clip" is the diagonal alone
    a, v = t64([[[1.0, 0.0]], [[0.0, 1.0]]]), t64([[[1.0, 1.0]], [[2.0, 0.0]]])
    clip = mtsc_loss(a, v, nn.Identity()).item()
    assert clip == pytest.approx(((SQ - 1) ** 2 + (0 - 1) ** 2) / 2, abs=1e-12)
    # batch: the 2 x 2 matrix of test_mtsc's two-second clip, cross-clip lag 1 -> the same value as there
    batch = mtsc_loss(a, v, nn.Identity(), negatives="batch").item()
    assert batch == pytest.approx(((SQ - 1) ** 2 + 1 + SQ**2 + 1) / 4, abs=1e-12)
    one = (t64([A2]), t64([V2]))
    for form in ("regression", "infonce"):
        extra = {"form": form} if form == "infonce" else {}
        assert mtsc_loss(*one, nn.Identity(), negatives="batch", **extra).item() == pytest.approx(
            mtsc_loss(*one, nn.Identity(), **extra).item(), abs=1e-12)


def test_lag_matrix_of_a_batch():
    lag = lag_matrix(2, 3, 1.0, "batch", dtype=torch.float64)
    clip = time_lag(3, 1.0, dtype=torch.float64)
    torch.testing.assert_close(lag[:3, :3], clip)
    torch.testing.assert_close(lag[3:, 3:], clip)
    assert torch.equal(lag[:3, 3:], torch.ones(3, 3, dtype=torch.float64))  # CROSS_CLIP_LAG


# ------------------------------------------------------------ every reading against the reference


READINGS = {
    "today": {},
    "part-linear": {"variant": "part", "pull": "linear"},
    "linear": {"pull": "linear"},
    "absolute": {"error": "absolute"},
    "linear-absolute-both": {"pull": "linear", "error": "absolute", "anchor": "both"},
    "projected-visual": {"simdetach": "projected", "anchor": "visual"},
    "raw": {"simdetach": "raw", "decay": 1.0},
    "batch": {"negatives": "batch"},
    "batch-raw-absolute": {"negatives": "batch", "simdetach": "raw", "error": "absolute", "decay": 2.0},
    "infonce": {"form": "infonce"},
    "infonce-t1-decay0": {"form": "infonce", "temperature": 1.0, "decay": 0.0},
    "infonce-batch": {"form": "infonce", "negatives": "batch", "temperature": 0.3},
}


@pytest.mark.parametrize("options", READINGS.values(), ids=READINGS.keys())
def test_reading_matches_the_reference(options):
    gen = torch.Generator().manual_seed(len(str(options)))
    a, v = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64), torch.randn(2, 4, 3, generator=gen,
                                                                                dtype=torch.float64)
    raw = (torch.randn(2, 4, 5, generator=gen, dtype=torch.float64), torch.randn(2, 4, 2, generator=gen,
                                                                               dtype=torch.float64))
    head = nn.Linear(3, 3).double()
    with torch.no_grad():
        head.weight.copy_(torch.randn(3, 3, generator=gen, dtype=torch.float64))
        head.bias.copy_(torch.randn(3, generator=gen, dtype=torch.float64))
    reading = MTSCReading(**options)

    def g(x):
        return head(t64(x)).tolist()

    got = mtsc_loss(a, v, head, reading, raw=raw).item()
    want = py_reading(a.tolist(), v.tolist(), reading, g=g, raw=(raw[0].tolist(), raw[1].tolist()))
    assert got == pytest.approx(want, abs=1e-10)
    # float32, as training runs it: within float32 error of the float64 value (sums over <= 8 x 8 terms)
    got32 = mtsc_loss(a.float(), v.float(), head.float(), reading, raw=(raw[0].float(), raw[1].float())).item()
    assert got32 == pytest.approx(want, abs=float32_atol(max(abs(want), 1.0), 64 * 5))


def _today(a: torch.Tensor, v: torch.Tensor, head: nn.Module, variant: str, decay: float, anchor: str):
    """The loss exactly as models/mtsc.py computed it before the readings existed (copied)."""
    za, zv = head(a), head(v)
    cos = lambda x, y: nn.functional.normalize(x, dim=-1, eps=1e-8) @ nn.functional.normalize(  # noqa: E731
        y, dim=-1, eps=1e-8).transpose(1, 2)
    s = cos(za, zv)
    if variant == "part":
        return ((s.diagonal(dim1=1, dim2=2) - 1.0) ** 2).mean()
    za, zv = za.detach(), zv.detach()
    within = {"audio": lambda: cos(za, za), "visual": lambda: cos(zv, zv),
              "both": lambda: 0.5 * (cos(za, za) + cos(zv, zv))}[anchor]()
    eye = torch.eye(a.shape[1])
    return ((s - (eye + (1.0 - eye) * time_lag(a.shape[1], decay) * within)) ** 2).mean()


@pytest.mark.parametrize("variant", ["part", "entire"])
@pytest.mark.parametrize("anchor", ["audio", "visual", "both"])
def test_default_reading_is_bit_identical_to_today(variant, anchor):
    torch.manual_seed(7)
    head = nn.Linear(16, 16)
    a, v = torch.randn(4, 10, 16), torch.randn(4, 10, 16)
    want = _today(a, v, head, variant, 5.0, anchor)
    assert torch.equal(mtsc_loss(a, v, head, variant=variant, anchor=anchor), want)
    assert torch.equal(mtsc_loss(a, v, head, MTSCReading(variant=variant, anchor=anchor)), want)


def test_projected_target_carries_no_gradient():
    torch.manual_seed(0)
    head = nn.Linear(4, 4).double()
    a = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)

    def loss(detach: bool) -> torch.Tensor:
        s = nn.functional.cosine_similarity(head(a)[:, :, None], head(v)[:, None], dim=-1)  # (B, T, T)
        x = a.detach() if detach else a
        within = nn.functional.cosine_similarity(x[:, :, None], x[:, None], dim=-1)
        eye = torch.eye(5, dtype=torch.float64)
        return ((s - (eye + (1 - eye) * time_lag(5, 5.0, dtype=torch.float64) * within)).abs()).mean()

    got = torch.autograd.grad(mtsc_loss(a, v, head, simdetach="projected", error="absolute", pull="linear"), [a])[0]
    # linear pull == |s_ii - 1| since s_ii <= 1, so the whole loss is the mean absolute error
    torch.testing.assert_close(got, torch.autograd.grad(loss(True), [a])[0])
    assert (got - torch.autograd.grad(loss(False), [a])[0]).abs().max() > 1e-6  # the check can fail


def test_raw_features_of_frames_and_3d():
    audio, frames, v3 = torch.randn(2, 10, 3), torch.randn(2, 80, 4), torch.randn(2, 10, 5)
    ra, rv = raw_features(audio, frames, v3)
    assert ra is audio and rv.shape == (2, 10, 9)
    torch.testing.assert_close(rv[..., :4], frames.reshape(2, 10, 8, 4).mean(2))
    torch.testing.assert_close(rv[..., 4:], v3)


# ------------------------------------------------------------ refusals


@pytest.mark.parametrize("options, match", [
    ({"form": "simclr"}, "form"),
    ({"pull": "cubic"}, "pull"),
    ({"error": "huber"}, "error"),
    ({"simdetach": "labels"}, "simdetach"),
    ({"negatives": "dataset"}, "negatives"),
    ({"form": "infonce", "temperature": 0.0}, "temperature"),
    ({"form": "infonce", "temperature": float("inf")}, "temperature"),
    ({"form": "infonce", "variant": "part"}, "variant entire"),
    ({"form": "infonce", "pull": "linear"}, "no effect with form infonce"),
    ({"temperature": 0.5}, "no effect with form regression"),
    ({"variant": "part", "negatives": "batch"}, "no effect with variant part"),
    ({"variant": "part", "error": "absolute"}, "no effect with variant part"),
])
def test_bad_readings_raise_one_line(options, match):
    with pytest.raises(AvvpError, match=match) as err:
        MTSCReading(**options)
    assert "\n" not in str(err.value)


def test_raw_simdetach_needs_the_raw_features():
    with pytest.raises(AvvpError, match="raw=.*got none"):
        mtsc_loss(t64([A2]), t64([V2]), nn.Identity(), simdetach="raw")
    with pytest.raises(AvvpError, match="raw features"):
        mtsc_loss(t64([A2]), t64([V2]), nn.Identity(), simdetach="raw", raw=(t64([[[1.0]]]), t64([[[1.0]]])))
    with pytest.raises(AvvpError, match="both"):
        mtsc_loss(t64([A2]), t64([V2]), nn.Identity(), MTSCReading(), pull="linear")


# ------------------------------------------------------------ config and command line


NEW_FIELDS = ("mtsc_form", "mtsc_temperature", "mtsc_pull", "mtsc_error", "mtsc_simdetach", "mtsc_negatives")


def test_config_fields_default_to_today_and_keep_old_keys_valid():
    config = TrainConfig(mtsc="entire")
    assert config.mtsc_reading() == MTSCReading()
    assert set(NEW_FIELDS) <= set(LATER_FIELDS)
    assert not set(NEW_FIELDS) & set(config.keyed())  # a run saved before them keys the same
    other = TrainConfig(mtsc="entire", mtsc_negatives="batch")
    assert other.keyed()["mtsc_negatives"] == "batch"
    assert other.mtsc_reading().negatives == "batch"
    assert TrainConfig(**asdict(other)) == other  # config.json round trip


@pytest.mark.parametrize("options, match", [
    ({"mtsc": "entire", "mtsc_pull": "cubic"}, "--mtsc-pull: expected one of squared, linear"),
    ({"mtsc": "entire", "mtsc_temperature": -1.0}, "--mtsc-temperature"),
    ({"mtsc": "off", "mtsc_form": "infonce"}, "--mtsc: expected part or entire for --mtsc-form"),
    ({"mtsc": "part", "mtsc_simdetach": "raw"}, "no effect with variant part"),
])
def test_config_refuses_bad_readings(options, match):
    with pytest.raises(AvvpError, match=match):
        TrainConfig(**options)


@pytest.mark.parametrize("command", ["train", "select"])
def test_cli_offers_every_reading(command):
    from avvp_pipe.pipeline.cli import cli
    from avvp_pipe.pipeline.cli._options import RECIPE_FIELDS

    assert set(NEW_FIELDS) <= set(RECIPE_FIELDS)
    text = CliRunner().invoke(cli, [command, "--help"], terminal_width=200).output
    for field, choices in MTSC_CHOICES.items():
        assert f"--{field.replace('_', '-')} [{'|'.join(choices)}]" in text
    assert "--mtsc-temperature FLOAT" in text
