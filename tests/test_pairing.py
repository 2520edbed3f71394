"""avvp_pipe.pipeline.train.pairing: what it refuses, and that frame stores become exact per-second means."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from avvp_pipe.cache.store import StoreSpec, UnrealFeaturesWarning, open_or_create, open_store
from avvp_pipe.core.errors import StoreError
from avvp_pipe.pipeline.train.pairing import load_pairing, read_per_second
from tests.featuresets import make_annotations, make_cache


@pytest.fixture(autouse=True)
def _quiet_unreal_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnrealFeaturesWarning)
        yield


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairing")
    ann = make_annotations(root / "ann", n_clips=40, seed=1)
    cache = make_cache(root / "cache", ann, ["a1:audio:8:0.9", "v1:visual-2d:6:0.9", "s1:visual-3d:5:0.9"])
    return {"root": root, "ann": ann, "cache": cache}


def _random_store(cache: str, ann, name: str, modality: str, shape: tuple[int, int], *, ids=None,
                  kind: str = "random-init", dataset: str = "tiny", written=None):
    """A store of random numbers for ``ids`` (default: every clip), with only ``written`` done."""
    ids = ann.split_ids("all") if ids is None else ids
    spec = StoreSpec(dataset=dataset, extractor=name, modality=modality, shape=shape,
                     config={"test": name}, kind=kind)
    store = open_or_create(cache, spec, ids)
    done = ids if written is None else written
    rng = np.random.default_rng(0)
    store.write_clips(done, rng.standard_normal((len(done), *shape)).astype(np.float32))
    return store


def test_frames_become_per_second_means_in_annotation_order(world):
    ann, cache = world["ann"], world["cache"]
    data = load_pairing(cache, "tiny", ann, ["val", "train"], audio="a1", visual="v1", visual_3d="s1",
                        allow_simulated=True)
    assert list(data.splits) == ["val", "train"]
    assert data.dims == {"audio": 8, "visual": 6, "visual_3d": 5}
    assert data.name == "a1+v1+s1" and set(data.store_keys()) == {"audio", "visual", "visual_3d"}
    for split, arrays in data.splits.items():
        ids = ann.split_ids(split)
        assert arrays.ids == ids and len(arrays) == len(ids)
        np.testing.assert_array_equal(arrays.labels, ann.weak_labels(split))
        frames = data.stores["visual"].read(ids)  # (N, 80, 6)
        assert frames.shape == (len(ids), 80, 6)
        for row in (0, len(ids) - 1):
            for second in range(10):
                expected = frames[row, 8 * second : 8 * second + 8].mean(axis=0)  # that second's 8 frames
                np.testing.assert_allclose(arrays.visual[row, second], expected, rtol=1e-6, atol=1e-6)
        # 10-step streams come through unchanged.
        np.testing.assert_array_equal(arrays.audio, data.stores["audio"].read(ids))
        np.testing.assert_array_equal(arrays.visual_3d, data.stores["visual_3d"].read(ids))
    # Reading block by block gives the same rows as one block.
    store, ids = data.stores["visual"], ann.split_ids("train")
    np.testing.assert_array_equal(read_per_second(store, ids, block=3), read_per_second(store, ids, block=512))


def test_no_3d_stream(world):
    data = load_pairing(world["cache"], "tiny", world["ann"], ["test"], audio="a1", visual="v1",
                        allow_simulated=True)
    assert data.dims["visual_3d"] is None and data.splits["test"].visual_3d is None
    assert data.name == "a1+v1"


def test_refuses_simulated_and_random_init_without_permission(world, tmp_path):
    ann = world["ann"]
    with pytest.raises(StoreError, match="simulated features; pass --allow-simulated"):
        load_pairing(world["cache"], "tiny", ann, ["test"], audio="a1", visual="v1")
    cache = str(tmp_path / "cache")
    _random_store(cache, ann, "ra", "audio", (10, 4))
    _random_store(cache, ann, "rv", "visual-2d", (80, 4))
    with pytest.raises(StoreError, match="random-init features; pass --allow-random-init"):
        load_pairing(cache, "tiny", ann, ["test"], audio="ra", visual="rv")
    data = load_pairing(cache, "tiny", ann, ["test"], audio="ra", visual="rv", allow_random_init=True)
    assert data.splits["test"].visual.shape == (len(ann.split_ids("test")), 10, 4)


def test_refuses_wrong_modality_and_unknown_store(world):
    with pytest.raises(StoreError, match="--audio v1.*expected a audio store but it holds visual-2d"):
        load_pairing(world["cache"], "tiny", world["ann"], ["test"], audio="v1", visual="v1",
                     allow_simulated=True)
    with pytest.raises(StoreError, match="--visual s1@.*expected a visual-2d store but it holds visual-3d"):
        load_pairing(world["cache"], "tiny", world["ann"], ["test"], audio="a1", visual="s1",
                     allow_simulated=True)
    with pytest.raises(StoreError, match="no store for extractor 'nope'"):
        load_pairing(world["cache"], "tiny", world["ann"], ["test"], audio="nope", visual="v1",
                     allow_simulated=True)


def test_refuses_incomplete_split(world, tmp_path):
    ann = world["ann"]
    cache = str(tmp_path / "cache")
    _random_store(cache, ann, "ra", "audio", (10, 4))
    _random_store(cache, ann, "rv", "visual-2d", (80, 4), written=ann.split_ids("train"))
    # The train split is complete in both stores ...
    load_pairing(cache, "tiny", ann, ["train"], audio="ra", visual="rv", allow_random_init=True)
    # ... the test split is not: the error names the store, the count and the clips.
    n_test = len(ann.split_ids("test"))
    first = ann.split_ids("test")[0]
    with pytest.raises(StoreError, match=rf"rv@\w+ .* lacks {n_test} of the {n_test} test clips: {first}"):
        load_pairing(cache, "tiny", ann, ["train", "test"], audio="ra", visual="rv", allow_random_init=True)


def test_refuses_stores_of_different_clip_lists(world, tmp_path):
    ann = world["ann"]
    other = make_annotations(tmp_path / "other_ann", n_clips=30, seed=7)
    cache = str(tmp_path / "cache")
    _random_store(cache, ann, "ra", "audio", (10, 4))
    _random_store(cache, other, "rv", "visual-2d", (80, 4))  # same dataset name, other clips
    with pytest.raises(StoreError, match="different clip lists"):  # and says how many clips each holds
        load_pairing(cache, "tiny", ann, ["test"], audio="ra", visual="rv", allow_random_init=True)


def test_refuses_frame_counts_that_are_not_whole_seconds(world, tmp_path):
    ann = world["ann"]
    cache = str(tmp_path / "cache")
    _random_store(cache, ann, "ra", "audio", (10, 4))
    store = _random_store(cache, ann, "rv", "visual-2d", (12, 4))
    assert open_store(store.url).shape == (12, 4)
    with pytest.raises(StoreError, match="multiple of 10 time steps per clip but got 12"):
        load_pairing(cache, "tiny", ann, ["test"], audio="ra", visual="rv", allow_random_init=True)
