"""avvp-pipe select: upper bound vs traversal, LogME, batched training, resume, refusals.

Simulated stores (tests/featuresets.py) have a quality order known by construction: 3 audio
x 3 visual extractors at qualities 0.2 / 0.5 / 0.9, so a pairing's expected rank follows the
sum of its two qualities. To keep the suite fast on one CPU core, HAN is shrunk to
d_model = ffn = 128 (``--d-model``/``--ffn``, TrainConfig's HAN sizes), and runs use 10
epochs, batch 8, lr 1e-3 on 80 test clips: enough to over-fit, which is what the upper
bound relies on.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy import stats as sps

from avvp_pipe.pipeline import cli as cli_mod
from avvp_pipe.pipeline.train import Member, TrainConfig, train_group, train_pairing
from avvp_pipe.models.han import HAN, HANConfig
from avvp_pipe.pipeline.train.pairing import load_pairing
from avvp_pipe.selection import logme, stats
from avvp_pipe.models import grouped
from tests.featuresets import QUALITY, make_quality_world
from tests.tolerance import float32_atol

TRAIN_ARGS = ["--epochs", "10", "--batch-size", "8", "--lr", "0.001", "--d-model", "128", "--ffn", "128", "--quiet"]
SMALL = {"d_model": 128, "ffn": 128}
pytestmark = pytest.mark.filterwarnings("ignore:.*holds simulated features")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    return make_quality_world(tmp_path_factory.mktemp("select"), extra=["t0:visual-3d:16:0.5"])


def _select_args(world: dict, out: Path, audio: str = "a0,a1,a2", visual: str = "v0,v1,v2") -> list[str]:
    return ["select", "--cache", world["cache"], "--dataset", "tiny", "--audio", audio, "--visual", visual,
            "--annotations", world["ann_dir"], "--out", str(out), *TRAIN_ARGS]


def _invoke(args: list[str]):
    return CliRunner().invoke(cli_mod.cli, args)


@pytest.fixture(scope="module")
def validated(world) -> dict:
    """One full run: upper bound + traditional (--validate) + LogME, 3 x 3 pairings, 3 trained at once."""
    out = world["root"] / "out"
    result = _invoke(_select_args(world, out) + ["--allow-simulated", "--validate", "--method", "both",
                                                 "--parallel", "3"])
    assert result.exit_code == 0, result.output
    return {"out": out, "output": result.output, "ranking": json.loads((out / "ranking.json").read_text())}


def _quality(pairing: str) -> float:
    audio, visual = pairing.split("+")
    return QUALITY[audio[1]] + QUALITY[visual[1]]


# ---------------------------------------------------------------------- the protocols


def test_upper_bound_recovers_quality_order(validated):
    rows = validated["ranking"]["pairings"]
    assert len(rows) == 9 and validated["ranking"]["ranked_by"] == "f1"
    tau = sps.kendalltau([r["f1"] for r in rows], [_quality(r["pairing"]) for r in rows]).statistic
    assert tau >= 0.8, rows
    assert rows[0]["pairing"] == "a2+v2" and rows[-1]["f1_rank"] == 9


def test_upper_bound_agrees_with_traversal(validated):
    ranking = validated["ranking"]
    agreement = ranking["agreement"]["f1_vs_f2"]
    assert agreement["top1_agree"] and agreement["relative_top1"] == pytest.approx(1.0)
    assert agreement["kendall_tau"] >= 0.5 and agreement["spearman_rho"] >= 0.6
    f1 = {r["pairing"]: r["f1"] for r in ranking["pairings"]}
    f2 = {r["pairing"]: r["f2"] for r in ranking["pairings"]}
    assert agreement["kendall_tau"] == pytest.approx(sps.kendalltau(list(f1.values()), [f2[k] for k in f1]).statistic)
    assert np.mean(list(f1.values())) > np.mean(list(f2.values()))  # over-fitted on test: an upper bound
    assert f1["a2+v2"] > f2["a2+v2"]
    time = ranking["time"]
    assert time["traditional_over_upper_bound"] == pytest.approx(
        time["traditional"]["seconds"] / time["upper-bound"]["seconds"])


def test_outputs_written(validated):
    out = validated["out"]
    for name in ("ranking.json", "ranking.csv", "ranking.png", "f1_f2.png"):
        assert (out / name).stat().st_size > 0
    with open(out / "ranking.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["pairing"] for r in rows] == [r["pairing"] for r in validated["ranking"]["pairings"]]
    assert {"f1", "f1_rank", "f2", "f2_rank", "logme", "logme_rank"} <= set(rows[0])
    assert len(list((out / "pairings").glob("*.json"))) == 27  # 9 x (upper-bound, traditional, logme)
    assert "Kendall tau" in validated["output"] and "a2+v2" in validated["output"]
    saved = [json.loads(p.read_text()) for p in (out / "pairings").glob("*upper-bound*.json")]
    assert {r["trained"] for r in saved} == {"batched x3"}  # --parallel 3 took the grouped path


def test_logme_in_ranking_is_well_formed(validated):
    rows = validated["ranking"]["pairings"]
    values = [r["logme"] for r in rows]
    assert all(math.isfinite(v) for v in values)
    assert sorted(r["logme_rank"] for r in rows) == list(range(1, 10))
    best = max(rows, key=lambda r: r["logme"])
    assert best["logme_rank"] == 1
    for key in ("logme_vs_f1", "logme_vs_f2"):
        assert -1 <= validated["ranking"]["agreement"][key]["kendall_tau"] <= 1
    assert validated["ranking"]["time"]["logme"]["seconds"] > 0


# ---------------------------------------------------------------------- resume and refusals


def test_rerun_skips_finished_pairings(validated, world, monkeypatch):
    out = validated["out"]
    files = sorted((out / "pairings").glob("*.json"))
    mtimes = {f: f.stat().st_mtime_ns for f in files}

    def no_training(*args, **kwargs):
        raise AssertionError("a finished pairing was trained again")

    monkeypatch.setattr("avvp_pipe.selection.upper_bound.train_datas", no_training)
    monkeypatch.setattr("avvp_pipe.selection.logme.logme_pairing", no_training)
    result = _invoke(_select_args(world, out) + ["--allow-simulated", "--validate", "--method", "both",
                                                 "--parallel", "3"])
    assert result.exit_code == 0, result.output
    assert "9 of 9 pairings already done" in result.output
    assert {f: f.stat().st_mtime_ns for f in files} == mtimes
    again = json.loads((out / "ranking.json").read_text())
    assert [r["f1"] for r in again["pairings"]] == [r["f1"] for r in validated["ranking"]["pairings"]]


def test_overwrite_redoes_pairings(validated, world, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(validated["out"], out)
    import avvp_pipe.selection.upper_bound as ub

    calls = []
    real = ub.train_datas

    def spy(datas, *args, **kwargs):
        calls.append([d.name for d in datas])
        return real(datas, *args, **kwargs)

    monkeypatch.setattr(ub, "train_datas", spy)
    args = _select_args(world, out, audio="a0", visual="v0") + ["--allow-simulated"]
    assert _invoke(args).exit_code == 0 and calls == []  # the same key: found, not retrained
    result = _invoke(args + ["--overwrite"])
    assert result.exit_code == 0, result.output
    assert calls == [["a0+v0"]]


def test_refuses_simulated_without_permission(world, tmp_path):
    result = _invoke(_select_args(world, tmp_path / "out"))
    assert result.exit_code == 3
    assert "a0@" in result.output and "--allow-simulated" in result.output
    assert not (tmp_path / "out" / "pairings").exists()  # refused before any training


def test_refuses_unknown_store_before_training(world, tmp_path):
    result = _invoke(_select_args(world, tmp_path / "out", visual="v0,nope") + ["--allow-simulated"])
    assert result.exit_code == 3 and "'nope'" in result.output
    assert not (tmp_path / "out" / "pairings").exists()


# ---------------------------------------------------------------------- batched training


def test_grouped_forward_matches_han():
    """The grouped forward on zero-padded stacked weights equals each HAN on its own widths."""
    torch.manual_seed(0)
    dims = [(24, 40, 16), (32, 56, 16)]
    models = [HAN(HANConfig(audio_dim=a, visual_dim=v, visual_3d_dim=t, d_model=32, ffn=48, heads=2,
                            keep_visual_head=True)).eval() for a, v, t in dims]
    inputs = [(torch.randn(3, 10, a), torch.randn(3, 10, v), torch.randn(3, 10, t)) for a, v, t in dims]
    params = {name: torch.stack([grouped_pad(dict(m.named_parameters())[name], dict(models[1].named_parameters())[name])
                                 for m in models]) for name, _ in models[1].named_parameters()}
    params = {f"model.{k}": v for k, v in params.items()}
    pad = [torch.stack([torch.nn.functional.pad(x[i], (0, max(d[i] for d in dims) - x[i].shape[-1])) for x in inputs])
           for i in range(3)]
    a, v = grouped.project(*pad, params)
    got = grouped.forward_projected(a, v, params, models[0].config, training=False)
    for p, model in enumerate(models):
        with torch.no_grad():
            want = model(*inputs[p])
        for g, w in zip(got, want):
            torch.testing.assert_close(g[p], w, atol=float32_atol(w, 56), rtol=0)  # widest input: 56


def grouped_pad(param: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(like)
    out[tuple(slice(0, s) for s in param.shape)] = param.detach()
    return out


#: Groups of (audio, visual, seed): K pairings, K seeds of one pairing, and both at once.
GROUPS = {
    "pairings": [("a0", "v2", 1), ("a2", "v0", 1), ("a1", "v1", 1)],  # three different width pairs
    "seeds": [("a1", "v1", 1), ("a1", "v1", 2), ("a1", "v1", 3)],
    "both": [("a0", "v2", 4), ("a2", "v0", 5), ("a0", "v2", 6)],
}


@pytest.mark.parametrize("group,mtsc,visual_3d", [("pairings", "off", None), ("pairings", "entire", "t0"),
                                                  ("seeds", "off", None), ("both", "part", "t0")])
def test_grouped_run_equals_runs_alone(world, group, mtsc, visual_3d):
    """Dropout 0: a group's masks cannot match lone draws, everything else must, member by member."""
    ann = world["ann"]
    members = [Member(load_pairing(world["cache"], "tiny", ann, ["test"], audio=a, visual=v, visual_3d=visual_3d,
                                   allow_simulated=True), seed)
               for a, v, seed in GROUPS[group]]
    config = TrainConfig(epochs=3, batch_size=8, lr=1e-3, dropout=0.0, mtsc=mtsc, train_split="test",
                         select_split="test", eval_split="test", **SMALL)
    grouped_results = train_group(members, ann, config)
    for member, got in zip(members, grouped_results):
        want = train_pairing(member.data, ann, replace(config, seed=member.seed), progress=False)
        assert got.best_epoch == want.best_epoch
        assert got.best_score == pytest.approx(want.best_score, abs=1e-6)
        assert [h["loss"] for h in got.history] == pytest.approx([h["loss"] for h in want.history], rel=1e-4)
        np.testing.assert_allclose(got.predictions["frame_prob"], want.predictions["frame_prob"], atol=1e-4)
        assert got.scores["segment"] == pytest.approx(want.scores["segment"], abs=1e-6)
    if group == "seeds":  # the seeds really differ: other weights, other batches, other losses
        losses = {tuple(r["loss"] for r in res.history) for res in grouped_results}
        assert len(losses) == len(members)


#: Non-default MTSC readings: raw simdetach reads the zero-padded stored inputs of a group.
READINGS = {
    "raw-abs-linear-batch": {"mtsc_simdetach": "raw", "mtsc_error": "absolute", "mtsc_pull": "linear",
                             "mtsc_negatives": "batch", "mtsc_anchor": "both"},
    "infonce-batch": {"mtsc_form": "infonce", "mtsc_temperature": 0.5, "mtsc_negatives": "batch"},
}


@pytest.mark.parametrize("reading,visual_3d", [("raw-abs-linear-batch", "t0"), ("infonce-batch", None)])
def test_grouped_run_equals_runs_alone_for_other_mtsc_readings(world, reading, visual_3d):
    """loss_terms (K = 1) and group_loss (K > 1) share member_mtsc: a reading cannot drift between them."""
    ann = world["ann"]
    members = [Member(load_pairing(world["cache"], "tiny", ann, ["test"], audio=a, visual=v, visual_3d=visual_3d,
                                   allow_simulated=True), seed)
               for a, v, seed in GROUPS["pairings"]]
    config = TrainConfig(epochs=2, batch_size=8, lr=1e-3, dropout=0.0, mtsc="entire", train_split="test",
                         select_split="test", eval_split="test", **READINGS[reading], **SMALL)
    for member, got in zip(members, train_group(members, ann, config)):
        want = train_pairing(member.data, ann, replace(config, seed=member.seed), progress=False)
        assert [h["mtsc"] for h in got.history] == pytest.approx([h["mtsc"] for h in want.history], rel=1e-4)
        assert [h["loss"] for h in got.history] == pytest.approx([h["loss"] for h in want.history], rel=1e-4)
        np.testing.assert_allclose(got.predictions["frame_prob"], want.predictions["frame_prob"], atol=1e-4)
    # The reading is in effect: today's reading gives another MTSC loss on the same member.
    today = TrainConfig(**{**asdict(config), **{k: getattr(TrainConfig, k) for k in READINGS[reading]}})
    first = train_pairing(members[-1].data, ann, replace(today, seed=members[-1].seed), progress=False)
    assert first.history[0]["mtsc"] != pytest.approx(want.history[0]["mtsc"], rel=1e-3)


# ---------------------------------------------------------------------- LogME and statistics


def _direct_log_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y; 0, F F^T / alpha + I / beta): the marginal likelihood, no SVD, no shortcuts."""
    n = len(y)
    cov = f @ f.T / alpha + np.eye(n) / beta
    sign, logdet = np.linalg.slogdet(cov)
    return float(-0.5 * (n * np.log(2 * np.pi) + logdet + y @ np.linalg.solve(cov, y)))


# more samples than features, fewer, and rank-deficient both ways (both Gram branches)
@pytest.mark.parametrize("n,d,rank", [(40, 6, None), (12, 20, None), (30, 50, 8), (60, 20, 5)])
def test_logme_evidence_is_the_closed_form_at_its_maximum(n, d, rank):
    rng = np.random.default_rng(n)
    f = rng.standard_normal((n, d)) if rank is None else rng.standard_normal((n, rank)) @ rng.standard_normal((rank, d))
    y = np.stack([f @ rng.standard_normal(d) + 0.5 * rng.standard_normal(n), rng.integers(0, 2, n)], 1).astype(float)
    score, fits = logme.logme(f, y)
    assert score == pytest.approx(np.mean([e.log_evidence for e in fits]))
    for k, fit in enumerate(fits):
        direct = _direct_log_evidence(f, y[:, k], fit.alpha, fit.beta)
        assert fit.log_evidence * n == pytest.approx(direct, rel=1e-8, abs=1e-8)
    # Column 0 depends on F: its maximum is interior (a random binary column may peak at alpha -> inf).
    fit = fits[0]
    assert fit.iterations < 200
    best = _direct_log_evidence(f, y[:, 0], fit.alpha, fit.beta)
    for da, db in [(1.3, 1), (1 / 1.3, 1), (1, 1.3), (1, 1 / 1.3)]:  # a maximum over (alpha, beta)
        assert _direct_log_evidence(f, y[:, 0], fit.alpha * da, fit.beta * db) < best


@pytest.mark.parametrize("n,d", [(40, 6), (12, 20), (30, 50)])
def test_logme_spectrum_equals_the_thin_svd(n, d):
    """The Gram-matrix eigendecomposition gives the thin SVD's squared singular values and U^T y."""
    rng = np.random.default_rng(d)
    f, y = rng.standard_normal((n, d)), rng.standard_normal((n, 3))
    s, uty = logme._spectrum(f, y)
    u, sv, _ = np.linalg.svd(f, full_matrices=False)
    order = np.argsort(s)[::-1]
    np.testing.assert_allclose(s[order], sv**2, rtol=1e-10)
    # each column of U is fixed up to sign: compare |U^T y|, a float64 product of length n
    np.testing.assert_allclose(np.abs(uty[order]), np.abs(u.T @ y), rtol=1e-8, atol=1e-10)


def test_logme_prefers_informative_features():
    rng = np.random.default_rng(0)
    labels = (rng.random((200, 5)) < 0.3).astype(float)
    informative = labels @ rng.standard_normal((5, 16)) + 0.3 * rng.standard_normal((200, 16))
    noise = rng.standard_normal((200, 16))
    assert logme.logme(informative, labels)[0] > logme.logme(noise, labels)[0] + 0.1


def test_rank_comparison_by_hand():
    f1 = {"a": 3.0, "b": 2.0, "c": 1.0}
    assert stats.ranks(f1) == {"a": 1, "b": 2, "c": 3}
    same = stats.compare(f1, {"a": 30.0, "b": 20.0, "c": 10.0})
    assert same["kendall_tau"] == pytest.approx(1) and same["spearman_rho"] == pytest.approx(1) and same["top1_agree"]
    swapped = stats.compare(f1, {"a": 40.0, "b": 50.0, "c": 10.0})  # F1 picks a, F2's best is b
    assert swapped["top1_chosen"] == "a" and swapped["top1_best"] == "b" and not swapped["top1_agree"]
    assert swapped["relative_top1"] == pytest.approx(40 / 50)
    assert swapped["kendall_tau"] == pytest.approx(1 / 3)  # 2 concordant, 1 discordant of 3 pairs
    assert math.isnan(stats.compare(f1, {"a": 1.0, "b": 1.0, "c": 1.0})["kendall_tau"])
