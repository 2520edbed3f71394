"""avvp-pipe analyze: retrieval metrics against brute force, simulated pairings, probes, CLI."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from avvp_pipe.models.probe import ProbeConfig, average_precision, clip_split, mean_average_precision, probe
from avvp_pipe.models.similarity import headline, modality_metrics, retrieval_metrics
from avvp_pipe.pipeline.analyze import measure as lib
from avvp_pipe.pipeline.cli import cli
from avvp_pipe.core.errors import AnnotationError, AvvpError, StoreError
from tests.tolerance import float32_atol
from tests.featuresets import make_annotations, make_cache

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# ---------------------------------------------------------------------- brute force


def brute_force(q, c, ql, cl, own, match):
    """The definitions written out over the full (Nq, Nc) matrix in float64."""
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    cn = c / np.linalg.norm(c, axis=1, keepdims=True)
    sim = qn @ cn.T
    if match == "any":
        matches = (ql.astype(int) @ cl.astype(int).T) > 0
    else:
        matches = (ql[:, None, :] == cl[None, :, :]).all(2)
    if own is not None:
        sim[np.arange(len(q)), own] = -np.inf
        matches[np.arange(len(q)), own] = False
    top = sim.argmax(1)
    precisions = []
    for i in range(len(q)):
        m = matches[i].sum()
        if m:
            precisions.append(matches[i, np.argsort(-sim[i])[:m]].mean())
    return {"recall_top1": matches[np.arange(len(q)), top].mean(), "distinguish": cl[top].any(1).mean(),
            "precision": np.mean(precisions), "precision_queries": len(precisions)}


@pytest.mark.parametrize("block", [7, None], ids=["block7", "oneblock"])
@pytest.mark.parametrize("match", ["any", "exact"])
@pytest.mark.parametrize("within", [True, False], ids=["within", "across"])
def test_retrieval_agrees_with_brute_force(within, match, block):
    rng = np.random.default_rng(3)
    n, dim, classes = 90, 6, 4
    c = rng.standard_normal((n, dim))
    cl = rng.random((n, classes)) < 0.3
    if within:
        rows = np.flatnonzero(cl.any(1))
        q, ql, own = c[rows], cl[rows], rows
    else:
        q = rng.standard_normal((60, dim))
        ql = rng.random((60, classes)) < 0.3
        ql[~ql.any(1), 0] = True  # queries are labelled
        own = None
    got = retrieval_metrics(q, c, ql, cl, self_index=own, match=match, block=block, dtype=torch.float64)
    want = brute_force(q, c, ql, cl, own, match)
    assert got["queries"] == len(q) and got["candidates"] == n
    assert got["precision_queries"] == want["precision_queries"]
    for key in ("recall_top1", "distinguish", "precision"):
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    assert 0 < want["recall_top1"] < 1  # the case is not degenerate


def test_modality_metrics_queries_labelled_seconds_over_all_candidates():
    rng = np.random.default_rng(0)
    s = 50
    audio, visual = rng.standard_normal((s, 5)), rng.standard_normal((s, 5))
    la, lv = rng.random((s, 3)) < 0.25, rng.random((s, 3)) < 0.25
    passes = modality_metrics(audio, visual, la, lv, block=8, device="cpu", dtype=torch.float64)
    assert passes["audio->visual"]["queries"] == la.any(1).sum()
    assert passes["visual->audio"]["queries"] == lv.any(1).sum()
    assert all(p["candidates"] == s for p in passes.values())
    rows = np.flatnonzero(la.any(1))
    want = brute_force(audio[rows], visual, la[rows], lv, None, "any")
    assert passes["audio->visual"]["precision"] == pytest.approx(want["precision"])
    top = headline(passes)
    aa, vv = passes["audio->audio"], passes["visual->visual"]
    pooled = (aa["recall_top1"] * aa["queries"] + vv["recall_top1"] * vv["queries"]) / (aa["queries"] + vv["queries"])
    assert top["recall_within"] == pytest.approx(pooled)
    assert top["distinguish"] == passes["audio->visual"]["distinguish"]


def test_identical_streams_retrieve_their_own_second():
    """Across modalities the same second is a candidate: identical streams give recall 1."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 8))
    labels = rng.random((40, 5)) < 0.4
    labels[~labels.any(1), 0] = True
    out = retrieval_metrics(x, x, labels, labels, match="exact", block=5)
    assert out["recall_top1"] == 1.0 and out["distinguish"] == 1.0


def test_bad_match_and_width_are_errors():
    x = np.ones((3, 4))
    labels = np.ones((3, 2))
    with pytest.raises(AvvpError, match="match 'some'"):
        retrieval_metrics(x, x, labels, labels, match="some")
    with pytest.raises(AvvpError, match="one width"):
        retrieval_metrics(x, np.ones((3, 5)), labels, labels)


# ---------------------------------------------------------------------- probe core


def test_average_precision_by_definition():
    # Positives at ranks 1 and 3: AP = (1/1 + 2/3) / 2.
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1])) == pytest.approx(5 / 6)
    scores = np.array([[0.9, 0.1], [0.2, 0.3]])
    mean_ap, per_class = mean_average_precision(scores, np.array([[1, 0], [0, 0]]))
    assert mean_ap == 1.0 and np.isnan(per_class[1])  # a class without positives is not scored


def test_clip_split_keeps_both_sides():
    fit = clip_split(10, 0.5, seed=0)
    assert fit.sum() == 5
    assert clip_split(3, 0.99, seed=0).sum() == 2  # one clip is always left to score on
    with pytest.raises(AvvpError, match="at least 2 clips"):
        clip_split(1, 0.5, seed=0)


def test_probe_separates_informative_from_noise_features():
    rng = np.random.default_rng(0)
    labels = (rng.random((60, 10, 4)) < 0.3).astype(np.uint8)  # (N, T, K)
    informative = labels @ rng.standard_normal((4, 16)) + 0.3 * rng.standard_normal((60, 10, 16))
    noise = rng.standard_normal((60, 10, 16))
    good = probe(informative.astype(np.float32), labels, ProbeConfig(max_iter=50))
    bad = probe(noise.astype(np.float32), labels, ProbeConfig(max_iter=50))
    assert good["map"] > 0.9 and bad["map"] < 0.6
    assert good["score_clips"] + good["fit_clips"] == 60


# ---------------------------------------------------------------------- simulated stores

STORES = ["a_good:audio:48:0.9", "a_bad:audio:48:0.1", "v_good:visual-2d:64:0.9", "v_bad:visual-2d:64:0.1"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """A tiny annotation set (40 test clips) and four simulated stores of known quality."""
    root = tmp_path_factory.mktemp("analyze")
    ann = make_annotations(root / "ann", n_clips=160, seed=0)
    cache = make_cache(root / "cache", ann, STORES)
    return {"root": root, "ann": ann, "cache": cache, "seconds": lib.split_seconds(ann, "test")}


def _analyze(sim, audio, visual, align):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # simulated features are what this test reads
        fs = lib.store_features(sim["cache"], "tiny", sim["ann"], sim["seconds"], audio, visual, align=align,
                                allow_simulated=True)
    return lib.analyze_set(fs, sim["seconds"], progress=False, device="cpu")


def test_aligned_pairing_scores_higher_across_modalities(sim):
    good = _analyze(sim, "a_good", "v_good", "cca")["headline"]
    bad = _analyze(sim, "a_bad", "v_bad", "cca")["headline"]
    assert good["recall_across"] > bad["recall_across"] + 0.1
    assert good["recall_across_visual_audio"] > bad["recall_across_visual_audio"]
    assert good["precision"] > bad["precision"]


def test_within_modality_recall_is_high_for_good_stores(sim):
    row = _analyze(sim, "a_good", "v_good", "none")
    h = row["headline"]
    assert h["recall_within_audio"] > 0.65 and h["recall_within_visual"] > 0.65
    # The seed paper's Table 1 shape: within one modality far above across modalities.
    assert h["recall_within"] > _analyze(sim, "a_good", "v_good", "cca")["headline"]["recall_across"] + 0.2
    # Widths differ (48 vs 64): no common space, so across metrics are absent and said so.
    assert h["recall_across"] is None and "no common space" in row["note"]
    bad = _analyze(sim, "a_bad", "v_bad", "none")["headline"]
    assert h["recall_within"] > bad["recall_within"] + 0.2


def test_probe_orders_stores_by_quality(sim):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = lib.probe_stores(sim["cache"], "tiny", None, sim["seconds"], allow_simulated=True, progress=False,
                                config=ProbeConfig(max_iter=50))
    scores = {r["extractor"]: r for r in rows}
    assert set(scores) == {"a_good", "a_bad", "v_good", "v_bad"}
    assert scores["a_good"]["map"] > scores["a_bad"]["map"]
    assert scores["v_good"]["map"] > scores["v_bad"]["map"]
    assert scores["a_good"]["truth"] == "audio" and scores["v_good"]["truth"] == "visual"


def test_split_without_dense_truth_and_bad_stores_are_errors(sim):
    with pytest.raises(AnnotationError, match="dense per-second truth"):
        lib.split_seconds(sim["ann"], "train")
    with pytest.raises(StoreError, match="expected a audio store"):
        lib.store_features(sim["cache"], "tiny", sim["ann"], sim["seconds"], "v_good", "v_bad", allow_simulated=True)
    with pytest.raises(StoreError, match="--allow-simulated"):
        lib.store_features(sim["cache"], "tiny", sim["ann"], sim["seconds"], "a_good", "v_good")


# ---------------------------------------------------------------------- CLI


def _invoke(args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CliRunner().invoke(cli, args)


def _base(sim, *extra):
    return ["analyze", "features", "--cache", sim["cache"], "--dataset", "tiny", "--annotations",
            str(sim["root"] / "ann"), "--allow-simulated", "--no-progress", "--device", "cpu", *extra]


def test_cli_features_writes_json_and_pngs(sim, tmp_path):
    out = tmp_path / "out"
    clip = sim["seconds"].ids[3]
    result = _invoke(_base(sim, "--audio", "a_good", "--visual", "v_good", "--align", "cca", "--match", "exact",
                           "--clip", clip, "--out", str(out), "--json", str(tmp_path / "copy.json")))
    assert result.exit_code == 0, result.output
    assert "recall a->v" in result.output
    data = json.loads((out / "analysis.json").read_text())
    assert data["match"] == "exact" and data["rows"][0]["space"] == "cca"
    assert data["clip"]["clip"] == clip and np.asarray(data["clip"]["similarity"]).shape == (10, 10)
    assert len(data["clip"]["audio_labels"]) == 10
    assert json.loads((tmp_path / "copy.json").read_text())["rows"] == data["rows"]
    for name in ("metrics.png", f"heatmap_{clip}.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def test_cli_errors_are_one_line(sim):
    unknown = _invoke(_base(sim, "--audio", "a_good", "--visual", "v_good", "--clip", "XXXXXXXXXXX"))
    assert unknown.exit_code == 3 and "not in the annotations" in unknown.output
    wrong = _invoke(_base(sim, "--audio", "v_good", "--visual", "v_bad"))
    assert wrong.exit_code == 3 and "expected a audio store" in wrong.output
    assert len(wrong.output.strip().splitlines()) == 1


def test_cli_probe_table_json_png(sim, tmp_path):
    result = _invoke(["analyze", "probe", "--cache", sim["cache"], "--dataset", "tiny", "--stores", "a_good,v_bad",
                      "--annotations", str(sim["root"] / "ann"), "--allow-simulated", "--no-progress",
                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "probe.json").read_text())["rows"]
    assert [r["extractor"] for r in rows] == ["a_good", "v_bad"]
    assert (tmp_path / "probe.png").read_bytes()[:8] == PNG_MAGIC


def test_cli_help_has_examples():
    for sub in ("features", "run", "compare", "probe"):
        result = CliRunner().invoke(cli, ["analyze", sub, "--help"])
        assert result.exit_code == 0 and "Example" in result.output


# ---------------------------------------------------------------------- trained runs


@pytest.fixture(scope="module")
def runs(sim):
    """2-epoch runs of the good pairing: MTSC off, MTSC entire (head g kept), and another reading."""
    from avvp_pipe.pipeline.train.run import TrainConfig, train_run

    readings = {"off": {"mtsc": "off"}, "entire": {"mtsc": "entire"},
                "infonce": {"mtsc": "entire", "mtsc_form": "infonce", "mtsc_temperature": 0.5,
                            "mtsc_negatives": "batch"}}
    out = {}
    for name, options in readings.items():
        out[name] = sim["root"] / f"run_{name}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train_run(sim["cache"], "tiny", sim["root"] / "ann", "a_good", "v_good", None,
                      TrainConfig(epochs=2, **options), out[name], allow_simulated=True, progress=False)
    return out


def test_run_features_are_the_inputs_of_han_after_g(sim, runs):
    from avvp_pipe.cache.store import find_store
    from avvp_pipe.pipeline.train.pairing import read_per_second
    from avvp_pipe.pipeline.train.run import load_run

    model, _head, _config = load_run(runs["entire"])
    assert model.visual_head is not None
    ids = sim["seconds"].ids[:3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        audio = read_per_second(find_store(sim["cache"], "tiny", "a_good"), ids)  # (3, 10, 48)
        visual = read_per_second(find_store(sim["cache"], "tiny", "v_good"), ids)  # (3, 10, 64)
        fs = lib.run_features(str(runs["entire"]), sim["seconds"], allow_simulated=True, device="cpu")
    with torch.no_grad():
        a, v = model.project(torch.as_tensor(audio), torch.as_tensor(visual))  # (3, 10, 512) each
        g_v = model.visual_head(v)
    assert fs.audio.shape == (len(sim["seconds"].ids), 10, 512)
    # the same Linear layers, other batch sizes: float32 sums over the input widths (48, 64, then 512 for g)
    np.testing.assert_allclose(fs.audio[:3], a.numpy(), rtol=0, atol=float32_atol(a.numpy(), 48))
    np.testing.assert_allclose(fs.visual[:3], g_v.numpy(), rtol=0, atol=float32_atol(g_v.numpy(), 64 + 512))
    assert not np.allclose(fs.visual[:3], v.numpy(), atol=1e-3)  # g was applied
    assert fs.source["mtsc"] == "entire" and fs.source["visual_head"] is True


def test_cli_compare_runs_table_with_type_at_av(sim, runs, tmp_path):
    result = _invoke(["analyze", "compare", str(runs["off"]), str(runs["entire"]), "--allow-simulated",
                      "--no-progress", "--device", "cpu", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "Type@AV" in result.output
    rows = json.loads((tmp_path / "analysis.json").read_text())["rows"]
    assert [r["source"]["mtsc"] for r in rows] == ["off", "entire"]
    for row, mtsc in zip(rows, ("off", "entire")):
        metrics = json.loads((runs[mtsc] / "metrics.json").read_text())
        assert row["type_at_av"] == pytest.approx(metrics["eval"]["segment"]["type_at_av"])
        assert row["headline"]["recall_across"] is not None  # one 512-d space: across metrics exist
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert "metrics.png" in pngs and any(p.startswith("heatmap_") for p in pngs)


def test_cli_compare_is_table_2_one_row_per_reading(sim, runs, tmp_path):
    names = ("off", "entire", "infonce", "entire")  # a reading twice: the rows say which run
    result = _invoke(["analyze", "compare", *(str(runs[n]) for n in names), "--allow-simulated", "--no-progress",
                      "--device", "cpu", "--json", str(tmp_path / "t2.json")])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "MTSC reading" in line)
    assert header.split() == ["MTSC", "reading", "recall", "distinguish", "precision", "Type@AV"]
    data = json.loads((tmp_path / "t2.json").read_text())
    labels = [r["reading"] for r in data["table2"]]
    assert labels == ["raw", "entire [run_entire]", "entire (infonce, tau 0.5, batch negatives)",
                      "entire [run_entire]"]
    for t2, row, name in zip(data["table2"], data["rows"], names):
        metrics = json.loads((runs[name] / "metrics.json").read_text())
        assert t2["Type@AV"] == pytest.approx(metrics["eval"]["segment"]["type_at_av"] / 100)  # a fraction
        assert t2["recall"] == row["headline"]["recall_across"] and t2["precision"] == row["headline"]["precision"]
        assert t2["distinguish"] == row["headline"]["distinguish"]
        assert f"{t2['Type@AV']:.4f}" in result.output


@pytest.mark.parametrize("train, label", [
    ({"mtsc": "off", "mtsc_decay": 2.0}, "raw"),
    ({"mtsc": "part"}, "part"),
    ({"mtsc": "entire", "mtsc_decay": 5.0, "mtsc_anchor": "audio"}, "entire"),  # a config from before the readings
    ({"mtsc": "entire", "mtsc_pull": "linear", "mtsc_error": "absolute", "mtsc_simdetach": "raw",
      "mtsc_weight": 0.5}, "entire (linear pull, absolute error, simdetach raw, weight 0.5)"),
    ({"mtsc": "part", "mtsc_anchor": "both", "mtsc_decay": 3.0}, "part (anchor both, decay 3)"),
])
def test_reading_label(train, label):
    assert lib.reading_label(train) == label


def test_table2_note_when_type_at_av_splits_differ():
    rows = [{"name": n, "source": {"reading": n, "run": n}, "headline": {"recall_across": 0.5, "distinguish": 0.6,
             "precision": 0.25}, "type_at_av": 53.3, "type_at_av_split": split}
            for n, split in (("raw", "test"), ("entire", "val"))]
    table = lib.table2_rows(rows)
    assert table[0]["Type@AV"] == pytest.approx(0.533)
    assert "different eval splits: test, val" in lib.format_table2(table)
