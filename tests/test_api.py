"""The notebook API (``avvp_pipe.extract/train/select/open_store``): light to import, and the
same objects the CLI prints from."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest

import avvp_pipe
from avvp_pipe.cache import FeatureStore, UnrealFeaturesWarning
from avvp_pipe.core.errors import AvvpError, StoreError
from tests.featuresets import make_annotations, make_cache


def test_import_avvp_pipe_stays_light():
    code = "import sys, avvp_pipe; avvp_pipe.open_store; print(sorted(m for m in ('torch', 'zarr', 'xarray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"  # the API module loads on first use, its stages only when called
    assert {"extract", "train", "select", "open_store"} <= set(avvp_pipe.__all__)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    make_annotations(root / "ann", n_clips=60, seed=0)
    from avvp_pipe.pipeline.llp.annotations import load_annotations

    cache = make_cache(root / "cache", load_annotations(root / "ann"), ["a1:audio:16:0.9", "v1:visual-2d:24:0.9",
                                                                      "v2:visual-2d:24:0.3"])
    return {"root": root, "cache": cache, "ann": str(root / "ann")}


def test_open_store_by_name_or_url(world):
    store = avvp_pipe.open_store(world["cache"], "a1", dataset="tiny")
    assert isinstance(store, FeatureStore) and store.extractor == "a1"
    assert avvp_pipe.open_store(store.url).key == store.key
    with pytest.raises(AvvpError, match="dataset="):
        avvp_pipe.open_store(world["cache"], "a1")
    with pytest.raises(StoreError, match="no store for extractor 'nope'"):
        avvp_pipe.open_store(world["cache"], "nope", dataset="tiny")


def test_train_and_select_return_what_the_cli_prints(world):
    from avvp_pipe.pipeline.train import summary
    from avvp_pipe.selection.report import format_ranking

    small = {"epochs": 1, "d_model": 16, "ffn": 16, "allow_simulated": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnrealFeaturesWarning)
        result = avvp_pipe.train(world["cache"], "tiny", world["ann"], "a1", "v1", world["root"] / "run",
                                 progress=False, **small)
        ranking = avvp_pipe.select(world["cache"], "tiny", world["ann"], "a1", ["v1", "v2"], world["root"] / "sel",
                                   **small)
    assert "best epoch 1" in summary(result) and len(result.history) == 1
    assert json.loads((world["root"] / "run" / "config.json").read_text())["train"]["device"] == "cpu"  # auto
    assert "v1" in format_ranking(ranking) and "v2" in format_ranking(ranking)
    with pytest.raises(AvvpError, match="unknown option 'epoch'"):
        avvp_pipe.train(world["cache"], "tiny", world["ann"], "a1", "v1", world["root"] / "x", epoch=1)


def test_extract_refuses_unknown_options_before_any_work(tmp_path):
    with pytest.raises(AvvpError, match="unknown option 'devcie'"):
        avvp_pipe.extract(tmp_path, tmp_path / "cache", "vggish", devcie="cpu")
