"""The bootstrap of the training-free scores: distinct clips, recentred on the full-data score.

A score recomputed on a resample's distinct clips (about 63% of N, drawn without replacement)
estimates the score at fewer clips and varies less than the full-data score does;
``bootstrap.recentred`` centres those values on the full-data score and scales their spread
by sqrt(m / (N - m)). Checked on a statistic whose sampling spread is known (a mean), and on
a simulated pairing for every panel score and LogME.
"""

from __future__ import annotations

import numpy as np
import pytest

from avvp_pipe.selection import logme, panel
from avvp_pipe.selection.bootstrap import free_samples, interval, recentred, resample_rows
from avvp_pipe.selection.upper_bound import Candidates, SelectOptions, run_select
from avvp_pipe.pipeline.train import TrainConfig
from tests.featuresets import make_quality_world

pytestmark = pytest.mark.filterwarnings("ignore:.*holds simulated features")
METHODS = ("logme", "hscore", "transrate", "knn", "cca")


def test_recentred_mean_has_the_sampling_spread_at_n():
    """The mean of N values has sd sigma / sqrt(N); its distinct-clip values alone have ~0.76 of that."""
    x = np.random.default_rng(0).gamma(2.0, 10.0, size=300)
    rows = resample_rows(len(x), 2000, seed=1)
    raw = free_samples(lambda r: float(x[r].mean()), rows)
    got = recentred(raw, float(x.mean()), rows)
    want = x.std(ddof=1) / np.sqrt(len(x))
    assert got.mean() == pytest.approx(x.mean(), abs=1e-9)
    assert got.std() == pytest.approx(want, rel=0.08)
    assert 0.65 < raw.std() / want < 0.87  # why the scale: subsets without replacement vary less


def test_recentred_keeps_nan_and_needs_distinct_clips():
    rows = np.array([[0, 1], [1, 0]])  # every resample holds every clip: nothing to scale
    np.testing.assert_array_equal(recentred(np.array([3.0, np.nan]), 2.0, rows), [2.0, np.nan])


def _pairing(seed: int, n: int = 200, classes: int = 5, dims: int = 8) -> panel.PanelFeatures:
    """Two streams whose seconds carry their clip's labels through fixed directions, plus noise."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, classes)) < 0.3).astype(float)
    streams = [(labels @ rng.standard_normal((classes, dims)))[:, None, :] + 1.5 * rng.standard_normal((n, 10, dims))
               for _ in range(2)]
    return panel.PanelFeatures(streams, labels)


def _scorer(method: str, data: panel.PanelFeatures):
    if method == "logme":
        features = np.concatenate(data.clips, axis=1)
        return lambda rows: logme.logme(features[rows], data.labels[rows])[0]
    half = panel.halves(len(data.labels))
    return lambda rows: panel.score_rows(method, data, rows, half)


@pytest.mark.parametrize("method", METHODS)
def test_free_interval_covers_the_point_estimate(method):
    data = _pairing(7)
    score = _scorer(method, data)
    rows = resample_rows(len(data.labels), 100, seed=3)
    point = score(np.arange(len(data.labels)))
    raw = free_samples(score, rows)
    low, high = interval(recentred(raw, point, rows))
    assert low < point < high
    if method in ("logme", "transrate"):  # these depend on N: the raw distinct-clip interval misses the point
        raw_low, raw_high = interval(raw)
        assert not raw_low <= point <= raw_high, (raw_low, point, raw_high)


def test_select_bootstrap_intervals_cover_the_free_scores(tmp_path_factory):
    world = make_quality_world(tmp_path_factory.mktemp("freeboot"))
    cands = Candidates(world["cache"], "tiny", ("a0", "a2"), ("v0", "v2"), allow_simulated=True)
    panel_methods = METHODS[1:]  # LogME's 60 resamples alone take ~40 s here; tested directly above
    options = SelectOptions(method=",".join(panel_methods), bootstrap=60)
    ranking = run_select(cands, world["ann"], TrainConfig(), str(tmp_path_factory.mktemp("out")), options,
                         notify=lambda message: None)
    for row in ranking["pairings"]:
        for method in panel_methods:
            low, high = row[f"{method}_ci95"]
            assert low <= row[method] <= high, (row["pairing"], method, low, row[method], high)
