"""Stage three as a measuring instrument: the training-free panel, seeds, the bootstrap, the cluster.

Each panel score is checked against a direct transcription of its paper's formula on small
seeded random inputs (torchmetrics style); the bootstrap's interval is checked for coverage
on a simulation whose truth is known; on simulated stores of known quality order the panel
recovers it; K seeds in one grouped run equal K separate runs (dropout off); a 2-process
dask LocalCluster gives the in-process results.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats as sps

from avvp_pipe.pipeline import cli as cli_mod
from avvp_pipe.pipeline.train import TrainConfig
from avvp_pipe.pipeline.train.pairing import load_pairing
from avvp_pipe.selection import bootstrap, clip_scores, panel
from avvp_pipe.selection.methods import SelectUsageError, parse_methods
from avvp_pipe.selection.upper_bound import Candidates, SelectOptions, run_select, train_datas
from tests.featuresets import QUALITY, make_quality_world

SMALL = {"d_model": 64, "ffn": 64}
pytestmark = pytest.mark.filterwarnings("ignore:.*holds simulated features")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    return make_quality_world(tmp_path_factory.mktemp("panel"))


def _data(seed: int, n: int = 60, d: int = 5, c: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, c)) < 0.4).astype(float)
    labels[0], labels[1] = 1.0, 0.0  # every column has both values
    features = labels @ rng.standard_normal((c, d)) + rng.standard_normal((n, d))
    return features, labels


# ---------------------------------------------------------------------- each score vs its formula


def _direct_hscore(f: np.ndarray, y: np.ndarray, a: float) -> float:
    """Bao et al.: tr(cov(f)^-1 cov(E[f|y])), with Ibrahim et al.'s shrinkage a; per binary column."""
    cov_f = np.cov(f.T, bias=True)
    shrunk = (1 - a) * cov_f + a * np.trace(cov_f) / f.shape[1] * np.eye(f.shape[1])
    out = []
    for col in y.T:
        g = np.stack([f[col == v].mean(0) for v in col])  # each row replaced by its class mean
        out.append(np.trace(np.linalg.pinv(shrunk) @ ((1 - a) * np.cov(g.T, bias=True))))
    return float(np.mean(out))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("shrinkage", [0.0, 0.3])
def test_hscore_is_the_formula(seed, shrinkage):
    f, y = _data(seed)
    assert panel.hscore(f, y, shrinkage=shrinkage) == pytest.approx(_direct_hscore(f, y, shrinkage), rel=1e-8)


@pytest.mark.parametrize("n,d", [(40, 6), (10, 30)])
def test_ledoit_wolf_matches_sklearn(n, d):
    from sklearn.covariance import ledoit_wolf_shrinkage

    x = np.random.default_rng(n).standard_normal((n, d)) * np.linspace(0.5, 3, d)
    assert panel.ledoit_wolf(x - x.mean(0)) == pytest.approx(ledoit_wolf_shrinkage(x), rel=1e-8)
    f, y = _data(2, n=n, d=d)
    a = panel.ledoit_wolf(f - f.mean(0))
    assert panel.hscore(f, y) == pytest.approx(_direct_hscore(f, y, a), rel=1e-6)


def _direct_rate(z: np.ndarray, eps2: float) -> float:
    n, d = z.shape
    return 0.5 * np.linalg.slogdet(np.eye(d) + d / (n * eps2) * z.T @ z)[1]


@pytest.mark.parametrize("n,d", [(50, 4), (12, 20)])  # more samples than dims, and fewer
def test_transrate_is_the_formula(n, d):
    f, y = _data(n, n=n, d=d)
    z = f - f.mean(0)
    want = np.mean([_direct_rate(z, 0.5) - sum((col == v).mean() * _direct_rate(z[col == v], 0.5) for v in (0, 1))
                    for col in y.T])
    assert panel.transrate(f, y, eps2=0.5) == pytest.approx(want, rel=1e-8)


def _direct_knn(f: np.ndarray, y: np.ndarray, k: int, groups: np.ndarray) -> float:
    scores = []
    for i in range(len(f)):
        sims = sorted((-(f[i] @ f[j]) / np.linalg.norm(f[i]) / np.linalg.norm(f[j]), j)
                      for j in range(len(f)) if groups[j] != groups[i])
        near = [j for _, j in sims[:k]]
        pred = {c for c in range(y.shape[1]) if np.mean([y[j, c] for j in near]) >= 0.5}
        true = {c for c in range(y.shape[1]) if y[i, c]}
        scores.append(1.0 if not pred and not true else 2 * len(pred & true) / (len(pred) + len(true)))
    return float(np.mean(scores))


def test_knn_is_leave_one_out_by_hand():
    f, y = _data(3, n=30)
    assert panel.knn(f, y, k=5) == pytest.approx(_direct_knn(f, y, 5, np.arange(30)))
    rows = np.random.default_rng(0).integers(0, 30, 30)  # a resample: a clip's copies are never its neighbours
    assert panel.knn(f[rows], y[rows], k=5, groups=rows) == pytest.approx(_direct_knn(f[rows], y[rows], 5, rows))


def test_cca_correlations_are_the_eigenvalue_formula():
    rng = np.random.default_rng(4)
    shared = rng.standard_normal((300, 2))
    x = np.concatenate([shared, rng.standard_normal((300, 2))], 1) @ rng.standard_normal((4, 4))
    y = np.concatenate([shared + 0.5 * rng.standard_normal((300, 2)), rng.standard_normal((300, 1))], 1)
    cxx, cyy = np.cov(x.T, bias=True), np.cov(y.T, bias=True)
    cxy = (x - x.mean(0)).T @ (y - y.mean(0)) / len(x)
    rho2 = np.sort(np.linalg.eigvals(np.linalg.solve(cxx, cxy) @ np.linalg.solve(cyy, cxy.T)).real)[::-1]
    *_, wx, wy, s = panel.cca_fit(x, y, components=3, ridge=0.0)
    np.testing.assert_allclose(s, np.sqrt(rho2[:3]), rtol=1e-8)
    np.testing.assert_allclose(panel.correlations((x - x.mean(0)) @ wx, (y - y.mean(0)) @ wy), s, rtol=1e-8)
    secs = lambda a: a.reshape(30, 10, -1)  # noqa: E731
    fit, measure = np.arange(15), np.arange(15, 30)
    held = panel.cca(secs(x), secs(y), fit, measure, components=2, ridge=0.0)
    assert 0.5 < held < s[:2].mean() + 0.1  # held out: the shared part generalises, near the in-sample value


# ---------------------------------------------------------------------- bootstrap


def test_bootstrap_interval_covers_a_known_mean():
    """Per-clip scores drawn around a known mean: the 95% interval covers it at about its rate."""
    rng = np.random.default_rng(0)
    hits = []
    for trial in range(120):
        clips = rng.gamma(2.0, 10.0, size=150)  # skewed, true mean 20
        rows = bootstrap.resample_rows(len(clips), 300, seed=trial)
        low, high = bootstrap.interval(bootstrap.trained_samples([clips], rows, seed=trial))
        hits.append(low <= 20.0 <= high)
    assert 0.85 <= np.mean(hits) <= 0.995


def test_seed_summary_is_a_t_interval():
    s = bootstrap.seed_summary([60.0, 62.0, 64.0])
    half = sps.t.ppf(0.975, 2) * 2.0 / np.sqrt(3)
    assert s["mean"] == 62.0 and s["sd"] == pytest.approx(2.0) and s["ci95"] == pytest.approx([62 - half, 62 + half])
    assert bootstrap.seed_summary([1.0])["sd"] is None


def test_parse_methods():
    assert parse_methods("both") == ("upper-bound", "logme")
    assert parse_methods("upper-bound, cca,logme,cca") == ("upper-bound", "cca", "logme")
    with pytest.raises(SelectUsageError, match="--method"):
        parse_methods("upper-bound,nope")


# ---------------------------------------------------------------------- on stores of known quality


def _quality(pairing: str) -> float:
    audio, visual = pairing.split("+")
    return QUALITY[audio[1]] + QUALITY[visual[1]]


@pytest.fixture(scope="module")
def free_run(world) -> dict:
    out = world["root"] / "free"
    args = ["select", "--cache", world["cache"], "--dataset", "tiny", "--audio", "a0,a1,a2", "--visual", "v0,v1,v2",
            "--annotations", str(world["root"] / "ann"), "--out", str(out), "--allow-simulated", "--quiet",
            "--method", "logme,hscore,transrate,knn,cca"]
    result = CliRunner().invoke(cli_mod.cli, args)
    assert result.exit_code == 0, result.output
    return {"out": out, "ranking": json.loads((out / "ranking.json").read_text()), "output": result.output}


@pytest.mark.parametrize("method", ["logme", "hscore", "transrate", "knn", "cca"])
def test_panel_recovers_quality_order(free_run, method):
    rows = free_run["ranking"]["pairings"]
    tau = sps.kendalltau([r[method] for r in rows], [_quality(r["pairing"]) for r in rows]).statistic
    assert tau >= 0.6, (method, [(r["pairing"], r[method]) for r in rows])


def test_free_run_writes_the_report(free_run):
    ranking, out = free_run["ranking"], free_run["out"]
    assert ranking["ranked_by"] == "logme" and ranking["bootstrap"] is None and ranking["seeds"] == 1
    assert "| H-score" in (out / "selection.md").read_text() and (out / "ranking.png").stat().st_size > 0
    assert len(list((out / "pairings").glob("*.json"))) == 45  # 9 pairings x 5 methods
    assert "hscore_vs_f1" not in ranking["agreement"]  # no trained column: nothing to agree with


# ---------------------------------------------------------------------- seeds, bootstrap of trained runs


CONFIG = TrainConfig(epochs=3, batch_size=8, lr=1e-3, dropout=0.0, **SMALL)


def test_seeds_grouped_equal_separate_runs(world):
    data = load_pairing(world["cache"], "tiny", world["ann"], ["test"], audio="a1", visual="v1", allow_simulated=True)
    cfg = replace(CONFIG, train_split="test", select_split="test", eval_split="test")
    grouped, mode = train_datas([data] * 3, world["ann"], cfg, 3, False, print, seeds=[1, 2, 3])
    assert mode == "batched x3"
    for seed, got in zip((1, 2, 3), grouped):
        (alone,), _ = train_datas([data], world["ann"], replace(cfg, seed=seed), 1, False, print)
        assert got.best_epoch == alone.best_epoch
        np.testing.assert_allclose(got.predictions["frame_prob"], alone.predictions["frame_prob"], atol=1e-4)
    assert len({g.best_score for g in grouped} | {tuple(h["loss"] for h in g.history) for g in grouped}) > 1


def _cands(world) -> Candidates:
    return Candidates(world["cache"], "tiny", ("a0", "a2"), ("v0", "v2"), allow_simulated=True)


@pytest.fixture(scope="module")
def seeded(world) -> dict:
    out = world["root"] / "seeded"
    options = SelectOptions(method="upper-bound,knn", seeds=2, bootstrap=100)
    ranking = run_select(_cands(world), world["ann"], CONFIG, str(out), options, notify=lambda m: None)
    return {"out": out, "ranking": ranking}


def test_seeds_and_bootstrap_in_ranking(seeded, world):
    ranking = seeded["ranking"]
    assert ranking["seeds"] == 2 and ranking["ci95"] == "bootstrap"
    for row in ranking["pairings"]:
        assert len(row["f1_runs"]) == 2 and row["f1"] == pytest.approx(np.mean(row["f1_runs"]))
        assert row["f1_sd"] == pytest.approx(np.std(row["f1_runs"], ddof=1))
        low, high = row["f1_ci95"]
        assert low < row["f1"] < high and row["knn_ci95"][0] < row["knn_ci95"][1]
    agreement = ranking["agreement"]["knn_vs_f1"]
    low, high = agreement["kendall_tau_ci95"]
    assert -1 <= low <= high <= 1 and 0 <= agreement["top1_agree_prob"] <= 1
    assert 0 <= ranking["top1_prob"]["f1"] <= 1
    assert (seeded["out"] / "selection.md").read_text().count("|") > 10
    saved = [json.loads(p.read_text()) for p in (seeded["out"] / "pairings").glob("*upper-bound-*.json")]
    assert sorted(r["seed"] for r in saved) == [1, 1, 1, 1, 2, 2, 2, 2]
    assert {r["trained"] for r in saved} == {"batched x2"}  # a pairing's seeds trained in one group


def test_clip_scores_average_to_the_run_score(seeded, world):
    run = json.loads(next((seeded["out"] / "pairings").glob("*upper-bound-*.json")).read_text())
    with np.load(seeded["out"] / "pairings" / run["predictions"]) as data:
        pred = dict(data)
    for metric in ("segment.type_at_av", "event.event_at_av", "average"):
        got = clip_scores.clip_scores(pred, world["ann"], "test", metric).mean()
        level, _, key = metric.partition(".")
        want = run["scores"][level][key] if key else run["scores"]["average"]
        assert got == pytest.approx(want, abs=1e-9)


def test_seed_one_keeps_the_plain_run_key(seeded, world):
    """A K = 1 run after --seeds 2 finds seed 1's results: the keys of a plain run did not change."""
    ranking = run_select(_cands(world), world["ann"], CONFIG, str(seeded["out"]), SelectOptions(),
                         notify=lambda m: None)
    by_name = {r["pairing"]: r for r in seeded["ranking"]["pairings"]}
    for row in ranking["pairings"]:
        assert row["f1"] == by_name[row["pairing"]]["f1_runs"][0] and row["f1_sd"] is None


def test_cluster_equals_in_process(seeded, world, tmp_path):
    """A real 2-process LocalCluster on CPU trains the same runs as this process did."""
    options = SelectOptions(method="upper-bound", seeds=2, parallel=2, workers=2)
    ranking = run_select(_cands(world), world["ann"], CONFIG, str(tmp_path / "out"), options, notify=lambda m: None)
    here = {r["pairing"]: r["f1_runs"] for r in seeded["ranking"]["pairings"]}
    there = {r["pairing"]: r["f1_runs"] for r in ranking["pairings"]}
    assert set(there) == set(here)
    for name in here:
        assert there[name] == pytest.approx(here[name], abs=1e-9)
    assert len(list((tmp_path / "out" / "pairings").glob("*.npz"))) == 8
