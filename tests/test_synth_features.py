"""Simulated feature stores (``avvp-pipe synth-features``): parsing, determinism and resume,
provenance, truth consistent with the labels, a quality order that is measurable, and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from avvp_pipe.cache.store import DONE, UnrealFeaturesWarning, find_store, list_stores
from avvp_pipe.pipeline.cli import cli
from avvp_pipe.core.errors import EXIT_INPUT, AvvpError
from avvp_pipe.pipeline.llp.annotations import NUM_CLASSES, load_annotations
from avvp_pipe.pipeline.synth.features import (
    PRESETS,
    SimulatedExtractor,
    _Simulator,
    _shared_prototypes,
    load_truth,
    parse_extractors,
    synthesize_features,
)
from tests.featuresets import make_annotations

EXTRACTORS = ["sa:audio:8:0.5", "sv:visual-2d:12:0.7", "s3:visual-3d:4:0.2"]


@pytest.fixture(scope="module")
def small_ann(tmp_path_factory):
    return make_annotations(tmp_path_factory.mktemp("ann"), n_clips=48, seed=3)


def _read_all(root, dataset: str, name: str) -> np.ndarray:
    store = find_store(str(root), dataset, name)
    with pytest.warns(UnrealFeaturesWarning):
        return store.read(store.clip_ids)


# ------------------------------------------------------------------ parsing
@pytest.mark.parametrize("text, fragment", [
    ("sim:audio:128", "expected NAME:MODALITY:DIM:QUALITY"),
    ("sim:audio:128:0.5:x", "expected NAME:MODALITY:DIM:QUALITY"),
    (":audio:128:0.5", "non-empty NAME"),
    ("sim:video:128:0.5", "MODALITY one of audio, visual-2d, visual-3d"),
    ("sim:audio:wide:0.5", "integer DIM"),
    ("sim:audio:128:good", "number QUALITY"),
    ("sim:audio:0:0.5", "DIM >= 1"),
    ("sim:audio:128:1.5", "0 <= QUALITY <= 1"),
])  # fmt: skip
def test_parse_rejects_bad_text_naming_the_option(text, fragment):
    with pytest.raises(AvvpError) as info:
        SimulatedExtractor.parse(text)
    message = str(info.value)
    assert message.startswith(f"--extractor {text!r}") and fragment in message and "\n" not in message


def test_parse_and_presets():
    ext = SimulatedExtractor.parse("sim_x:visual-2d:2048:0.25")
    assert (ext.name, ext.modality, ext.dim, ext.quality, ext.frames) == ("sim_x", "visual-2d", 2048, 0.25, 80)
    specs = parse_extractors(["extra:audio:4:0.1"], preset="llp")
    assert [s.name for s in specs][-1] == "extra" and len(specs) == len(PRESETS["llp"]) + 1
    assert all(s.name.startswith("sim_") for s in specs[:-1])
    assert len({s.quality for s in specs[:-1]}) == len(PRESETS["llp"])  # distinct qualities
    with pytest.raises(AvvpError, match="unique"):
        parse_extractors(["a:audio:4:0.1", "a:visual-3d:4:0.2"])
    with pytest.raises(AvvpError, match="at least one --extractor"):
        parse_extractors([])


# ------------------------------------------------------------------ determinism, resume, provenance
def test_same_seed_identical_and_resume_regenerates_identical(small_ann, tmp_path):
    specs = [SimulatedExtractor.parse(t) for t in EXTRACTORS]
    full = synthesize_features(str(tmp_path / "full"), "d", small_ann, specs, seed=7, progress=False)
    assert [s["written"] for s in full["stores"]] == [48, 48, 48]
    # A partial run with other block boundaries, then a resume with yet others.
    part = synthesize_features(str(tmp_path / "part"), "d", small_ann, specs, seed=7, progress=False,
                               block=5, limit=17)
    assert [s["written"] for s in part["stores"]] == [17, 17, 17]
    rest = synthesize_features(str(tmp_path / "part"), "d", small_ann, specs, seed=7, progress=False, block=11)
    assert [(s["written"], s["already_done"]) for s in rest["stores"]] == [(31, 17)] * 3
    for spec in specs:
        a, b = _read_all(tmp_path / "full", "d", spec.name), _read_all(tmp_path / "part", "d", spec.name)
        assert a.shape == (48, spec.frames, spec.dim) and a.any()
        np.testing.assert_array_equal(a, b)
    # Clearing some clips and rerunning rewrites the same bytes.
    store = find_store(str(tmp_path / "full"), "d", "sv")
    before = _read_all(tmp_path / "full", "d", "sv")
    cleared = store.clip_ids[3:9] + store.clip_ids[30:31]
    store.clear(cleared)
    again = synthesize_features(str(tmp_path / "full"), "d", small_ann, specs[1:2], seed=7, progress=False)
    assert again["stores"][0]["written"] == len(cleared)
    np.testing.assert_array_equal(before, _read_all(tmp_path / "full", "d", "sv"))
    # Another seed gives other numbers.
    synthesize_features(str(tmp_path / "other"), "d", small_ann, specs[1:2], seed=8, progress=False)
    assert not np.array_equal(before, _read_all(tmp_path / "other", "d", "sv"))


def test_process_workers_write_the_same_bytes(small_ann, tmp_path, monkeypatch):
    import avvp_pipe.pipeline.synth.features as sf

    monkeypatch.setattr(sf, "PARALLEL_MIN_CLIPS", 1)
    specs = [SimulatedExtractor.parse("sa:audio:8:0.5")]
    synthesize_features(str(tmp_path / "one"), "d", small_ann, specs, seed=1, progress=False)
    two = synthesize_features(str(tmp_path / "two"), "d", small_ann, specs, seed=1, progress=False, workers=2)
    assert two["stores"][0]["written"] == 48
    np.testing.assert_array_equal(_read_all(tmp_path / "one", "d", "sa"), _read_all(tmp_path / "two", "d", "sa"))


def test_stores_are_marked_simulated_with_provenance(small_ann, tmp_path):
    spec = SimulatedExtractor.parse("sa:audio:8:0.5")
    synthesize_features(str(tmp_path), "d", small_ann, [spec], seed=2, dtype="float16", progress=False)
    (store,) = list_stores(str(tmp_path))
    assert store.kind == "simulated" and not store.is_real and store.dtype == "float16"
    prov = store.attrs["provenance"]
    assert prov["simulated"] is True and prov["simulated_by"].startswith("avvp-pipe synth-features")
    assert prov["quality"] == 0.5 and prov["truth"].endswith("d/simulated_truth.npz")
    assert store.config["simulated"] == {"name": "sa", "modality": "audio", "dim": 8, "quality": 0.5}
    assert store.config["seed"] == 2 and (store.status() == DONE).all()
    with pytest.warns(UnrealFeaturesWarning):
        store.read(store.clip_ids[:2])


# ------------------------------------------------------------------ truth
def test_truth_consistent_with_weak_and_dense_labels(small_ann, tmp_path):
    synthesize_features(str(tmp_path), "d", small_ann, [SimulatedExtractor.parse("sa:audio:2:0.5")],
                        seed=4, progress=False)
    ids, truth = load_truth(str(tmp_path), "d", seed=4)  # (N, 2, 25, 10)
    with pytest.raises(AvvpError, match="seed 5"):
        load_truth(str(tmp_path), "d", seed=5)
    assert ids == small_ann.split_ids("all") and truth.shape == (48, 2, NUM_CLASSES, 10)
    train = [i for i, cid in enumerate(ids) if small_ann.clips[cid].split == "train"]
    assert train
    for row in train:
        weak = np.zeros(NUM_CLASSES, bool)
        weak[list(small_ann.clips[ids[row]].labels)] = True
        active = truth[row].any(axis=(0, 2))  # (25,): in some second of some modality
        np.testing.assert_array_equal(active, weak)
    held = [i for i, cid in enumerate(ids) if small_ann.clips[cid].split != "train"]
    held_ids = [ids[i] for i in held]
    np.testing.assert_array_equal(truth[held, 0], small_ann.dense(held_ids, "audio"))
    np.testing.assert_array_equal(truth[held, 1], small_ann.dense(held_ids, "visual"))


# ------------------------------------------------------------------ quality order
def _per_second(x: np.ndarray) -> np.ndarray:
    n, T, D = x.shape
    return x.reshape(n, 10, T // 10, D).mean(2)  # (n, 10, D)


def _single_event_seconds(truth: np.ndarray):
    """Per second of (n, 25, 10) truth: (n*10,) class index, and whether exactly one is active."""
    active = truth.transpose(0, 2, 1).reshape(-1, NUM_CLASSES)  # (n*10, 25)
    return active.argmax(1), active.sum(1) == 1


def _centroid_accuracy(feats: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    """Nearest-class-centroid accuracy on ``test`` seconds, centroids from ``train`` seconds."""
    classes = np.unique(labels[train])
    centroids = np.stack([feats[train & (labels == c)].mean(0) for c in classes])  # (C, D)
    dist = ((feats[test, None, :] - centroids[None]) ** 2).sum(-1)  # (n_test, C)
    return float((classes[dist.argmin(1)] == labels[test]).mean())


DIM = 64  # = LATENT_DIM: a smaller DIM keeps only part of the class signal


@pytest.fixture(scope="module")
def quality_cache(tmp_path_factory):
    """Per-second features of audio and visual extractors of quality 0.3, 0.6 and 0.9.

    One store is written through :func:`synthesize_features` and must equal the simulator's
    output; the others come from the simulator directly, which keeps this fixture fast.
    """
    folder = tmp_path_factory.mktemp("quality")
    ann = make_annotations(folder / "ann", n_clips=300, seed=5, fractions=(0.9, 0.05, 0.05))
    specs = [SimulatedExtractor(f"{m}{q}", mod, DIM, q / 10) for q in (3, 6, 9)
             for m, mod in (("a", "audio"), ("v", "visual-3d"))]  # fmt: skip
    synthesize_features(str(folder / "cache"), "q", ann, specs[:1], seed=0, progress=False)
    ids, truth = load_truth(str(folder / "cache"), "q")  # (N, 2, 25, 10)
    shared = _shared_prototypes(0)
    raw = {s.name: _Simulator(s, shared, 0).features(ids, truth[:, 0 if s.modality == "audio" else 1])
           for s in specs}  # fmt: skip
    np.testing.assert_array_equal(raw["a3"], _read_all(folder / "cache", "q", "a3"))
    return ids, truth, {name: _per_second(x) for name, x in raw.items()}


def test_per_second_class_accuracy_grows_with_quality(quality_cache):
    ids, truth, feats = quality_cache
    for prefix, modality in (("a", 0), ("v", 1)):
        labels, single = _single_event_seconds(truth[:, modality])
        clip = np.repeat(np.arange(len(ids)), 10)
        train, test = single & (clip < len(ids) // 2), single & (clip >= len(ids) // 2)
        acc = [_centroid_accuracy(feats[f"{prefix}{q}"].reshape(-1, DIM), labels, train, test) for q in (3, 6, 9)]
        chance = 1 / NUM_CLASSES
        assert acc[0] < acc[1] < acc[2], acc
        assert acc[0] > 3 * chance, acc  # quality 0.3: clearly above chance...
        assert acc[2] < 0.97, acc  # ...and quality 0.9 still not perfect
        assert acc[2] - acc[0] > 0.25, acc  # differences are visible


def test_cross_modal_agreement_grows_with_quality(quality_cache):
    """A linear audio -> visual map, fitted on half the clips, points held-out audio seconds of
    an audio-visual event towards the visual class direction of their own class, the more
    often the better both extractors are."""
    ids, truth, feats = quality_cache
    labels_a, single_a = _single_event_seconds(truth[:, 0])
    labels_v, single_v = _single_event_seconds(truth[:, 1])
    both = single_a & single_v & (labels_a == labels_v)  # one audio-visual event in the second
    clip = np.repeat(np.arange(len(ids)), 10)
    fit, held = clip < len(ids) // 2, (clip >= len(ids) // 2) & both
    scores = []
    for q in (3, 6, 9):
        a, v = feats[f"a{q}"].reshape(-1, DIM), feats[f"v{q}"].reshape(-1, DIM)  # (n*10, D)
        a1 = np.hstack([a, np.ones((len(a), 1))])  # (n*10, D+1)
        gram = a1[fit].T @ a1[fit]
        ridge = 0.01 * np.trace(gram) / len(gram) * np.eye(DIM + 1)
        mapped = a1 @ np.linalg.solve(gram + ridge, a1[fit].T @ v[fit])  # (n*10, D) audio in visual space
        mean = v[fit].mean(0)
        classes = np.unique(labels_v[fit & both])
        directions = np.stack([v[fit & both & (labels_v == c)].mean(0) for c in classes]) - mean  # (C, D)
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        best = ((mapped[held] - mean) @ directions.T).argmax(1)  # (n_held,)
        scores.append(float((classes[best] == labels_v[held]).mean()))
    assert scores[0] < scores[1] < scores[2], scores
    assert scores[2] - scores[0] > 0.15, scores


def test_prototype_alignment_grows_with_quality():
    """The class geometry of two extractors of different modalities agrees more at higher quality."""
    shared = _shared_prototypes(0)

    def mean_cosine(q: float) -> float:
        a = _Simulator(SimulatedExtractor("a", "audio", 4, q), shared, 0).prototypes  # (25, L)
        v = _Simulator(SimulatedExtractor("v", "visual-2d", 4, q), shared, 0).prototypes
        cos = (a * v).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(v, axis=1)
        return float(cos.mean())

    values = [mean_cosine(q) for q in (0.0, 0.3, 0.6, 0.9)]
    assert all(x < y for x, y in zip(values, values[1:])), values
    assert abs(values[0]) < 0.2 and values[-1] > 0.8, values


# ------------------------------------------------------------------ CLI
def test_cli_end_to_end_and_resume(small_ann, tmp_path):
    runner = CliRunner()
    args = ["synth-features", str(tmp_path / "cache"), "--dataset", "tiny", "--annotations", str(small_ann.root),
            "--extractor", "ca:audio:6:0.4", "--extractor", "cv:visual-3d:5:0.8", "--quiet"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "SIMULATED" in result.output and "already done" in result.output
    stores = {s.extractor: s for s in list_stores(str(tmp_path / "cache"))}
    assert set(stores) == {"ca", "cv"} and all((s.status() == DONE).all() for s in stores.values())
    assert stores["cv"].shape == (10, 5) and stores["cv"].kind == "simulated"
    again = runner.invoke(cli, args)
    assert again.exit_code == 0
    line = next(line for line in again.output.splitlines() if line.startswith("ca@"))
    assert line.split()[1:4] == ["0.4", "0", "48"]  # quality, written, already done


@pytest.mark.parametrize("extra, fragment", [
    (["--extractor", "bad:audio:6"], "--extractor 'bad:audio:6': expected NAME:MODALITY:DIM:QUALITY"),
    ([], "needs at least one --extractor"),
])  # fmt: skip
def test_cli_bad_extractor_is_one_line_error(small_ann, tmp_path, extra, fragment):
    result = CliRunner().invoke(cli, ["synth-features", str(tmp_path), "--dataset", "t", "--annotations",
                                      str(small_ann.root), *extra])
    assert result.exit_code == EXIT_INPUT
    assert fragment in result.output and result.output.count("\n") == 1


def test_cli_preset_llp_shapes(tmp_path):
    ann = make_annotations(tmp_path / "ann", n_clips=6, seed=1)
    result = CliRunner().invoke(cli, ["synth-features", str(tmp_path / "c"), "--dataset", "p", "--annotations",
                                      str(ann.root), "--preset", "llp", "--quiet", "--dtype", "float16"])
    assert result.exit_code == 0, result.output
    shapes = {s.extractor: (s.modality, s.shape) for s in list_stores(str(tmp_path / "c"))}
    expected = {t.split(":")[0]: (t.split(":")[1], (SimulatedExtractor.parse(t).frames, int(t.split(":")[2])))
                for t in PRESETS["llp"]}
    assert shapes == expected


def test_cli_help_has_example():
    result = CliRunner().invoke(cli, ["synth-features", "--help"])
    assert result.exit_code == 0 and "Example: avvp-pipe synth-features" in result.output


def test_cli_on_real_llp_structure(real_llp, tmp_path):
    """The store covers all 11,849 LLP clips with their splits (a partial run keeps this fast;
    benchmarks/synth_features.py times full runs)."""
    args = ["synth-features", str(tmp_path), "--dataset", "llp", "--annotations", str(real_llp),
            "--extractor", "sim_tiny:visual-3d:1:0.5", "--quiet", "--limit", "300"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    (store,) = list_stores(str(tmp_path))
    ann = load_annotations(real_llp)
    assert len(store.clip_ids) == 11849 == len(ann.clips) and store.clip_ids == list(ann.clips)
    assert (store.status() == DONE).sum() == 300
    assert {split: list(store.splits.values()).count(split) for split in ("train", "val", "test")} == {
        split: len(ann.split_ids(split)) for split in ("train", "val", "test")}
    _, truth = load_truth(str(tmp_path), "llp")
    assert truth.shape == (11849, 2, NUM_CLASSES, 10)
