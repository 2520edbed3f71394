"""Stores open in xarray: a fresh one as it is, one of the previous layout after an in-place upgrade.

The previous layout (before dimension names and coordinate arrays) is made by creating a store
with this version's creation helpers switched back to what they wrote then, and the upgrade
must leave every feature and status chunk byte-for-byte (and file-for-file) untouched.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import avvp_pipe.cache.store as store_module
from avvp_pipe.cache import StoreSpec, open_or_create, open_store, verify
from avvp_pipe.core.errors import StoreError

xr = pytest.importorskip("xarray")

SHAPE = (4, 6)
IDS = [f"clip{i:07d}" for i in range(8)]  # 11 characters, like YouTube ids
SPLITS = {**{c: "train" for c in IDS[:4]}, **{c: "val" for c in IDS[4:6]}, **{c: "test" for c in IDS[6:]}}


def spec() -> StoreSpec:
    return StoreSpec("tiny", "fake", "visual-2d", SHAPE, {"layer": "pool"})


def features(n: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, *SHAPE)).astype(np.float32)


def previous_layout_store(root: Path, monkeypatch: pytest.MonkeyPatch):
    """A store as the previous version created it: no dimension names, no coordinates, codecs of then."""
    with monkeypatch.context() as patch:
        patch.setattr(store_module, "array_options", lambda name: {})
        patch.setattr(store_module, "write_coordinates", lambda group, ids, splits: None)
        patch.setattr(store_module, "consolidate", lambda url: None)
        patch.setattr(store_module, "FEATURE_COMPRESSORS", (zarr.codecs.ZstdCodec(level=1),))
        patch.setattr(store_module, "STATUS_COMPRESSORS", (zarr.codecs.ZstdCodec(level=0),))  # zarr's default then
        store = open_or_create(str(root), spec(), IDS, SPLITS)
    return store


def open_quietly(url: str, **kwargs):
    """``xr.open_zarr`` with every warning an error: a store of this version opens cleanly."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message="Treating an array-like", category=Warning)  # pandas 3 vs xarray
        return xr.open_zarr(url, **kwargs)


def test_fresh_store_opens_in_xarray_by_clip_and_split(tmp_path):
    store = open_or_create(str(tmp_path), spec(), IDS, SPLITS)
    data = features(len(IDS))
    store.write_clips(IDS[:7], data[:7])
    ds = open_quietly(store.url)
    assert ds.features.dims == ("clip", "time", "feature") and ds.status.dims == ("clip",)
    assert list(ds["clip"].values) == IDS and "split" in ds.coords
    np.testing.assert_array_equal(ds.features.sel(clip=IDS[3]).values, data[3])
    test = ds.where(ds.split == "test")  # lazy: other clips masked, dims kept
    assert np.isnan(test.features.sel(clip=IDS[0]).values).all()
    np.testing.assert_array_equal(test.features.sel(clip=IDS[6]).values, data[6])
    eager = open_quietly(store.url, chunks=None)
    assert list(eager.where(eager.split == "test", drop=True)["clip"].values) == IDS[6:]
    assert list(ds.status.values) == [1] * 7 + [0]
    assert list(store.to_xarray().split.values) == [SPLITS[c] for c in IDS]


def test_fresh_store_keeps_the_fast_chunk_path_and_checksums(tmp_path):
    store = open_or_create(str(tmp_path), spec(), IDS, SPLITS)
    for name in ("features", "status"):
        layout = store_module._local_row_chunks(store.group[name])
        assert layout is not None and layout[1].checksum  # [BytesCodec, ZstdCodec(checksum=True)]
    assert verify(store)["layout"] == []


def test_previous_layout_is_read_then_upgraded_in_place_without_touching_chunks(tmp_path, monkeypatch):
    store = previous_layout_store(tmp_path, monkeypatch)
    data = features(len(IDS))
    store.write_clips(IDS[2:6], data[2:6])
    assert store.group["features"].metadata.dimension_names is None
    np.testing.assert_array_equal(store.read(IDS[2:6]), data[2:6])  # both layouts read alike
    with pytest.raises(StoreError, match="cache verify --upgrade"):
        store.to_xarray()
    assert "features has no dimension names" in verify(store)["layout"]

    chunks = sorted(p for name in ("features", "status") for p in (Path(store.url) / name / "c").rglob("*") if p.is_file())
    assert len(chunks) == 8  # 4 feature and 4 status chunks
    before = {p: (p.read_bytes(), os.stat(p).st_mtime_ns, os.stat(p).st_ino) for p in chunks}
    report = verify(store, upgrade=True)
    assert report["upgraded"] and report["checked"] == 4 and report["reset"] == {}
    assert {p: (p.read_bytes(), os.stat(p).st_mtime_ns, os.stat(p).st_ino) for p in chunks} == before

    doc = json.loads((Path(store.url) / "features" / "zarr.json").read_text())
    assert [c["name"] for c in doc["codecs"]] == ["bytes", "zstd"] and not doc["codecs"][1]["configuration"]["checksum"]
    ds = open_quietly(store.url)
    np.testing.assert_array_equal(ds.features.sel(clip=IDS[4]).values, data[4])
    assert list(ds.split.values) == [SPLITS[c] for c in IDS]
    upgraded = open_store(store.url)
    np.testing.assert_array_equal(upgraded.read(IDS[2:6]), data[2:6])
    upgraded.write_clips([IDS[0]], data[:1])  # still written by the fast path, with the old codec
    assert store_module._local_row_chunks(upgraded.group["features"]) is not None
    assert verify(upgraded, upgrade=True)["upgraded"] == []  # idempotent


def test_cache_verify_upgrade_on_the_command_line(tmp_path, monkeypatch):
    from avvp_pipe.pipeline.cli import cli

    store = previous_layout_store(tmp_path, monkeypatch)
    plain = CliRunner().invoke(cli, ["cache", "verify", str(tmp_path)])
    assert plain.exit_code == 0 and "cache verify --upgrade" in plain.output
    result = CliRunner().invoke(cli, ["cache", "verify", "--upgrade", str(tmp_path)])
    assert result.exit_code == 0 and "upgraded in place" in result.output
    assert list(open_quietly(store.url)["clip"].values) == IDS


def test_memory_filesystem_store_opens_in_xarray():
    url = f"memory://xr-{os.getpid()}"
    store = open_or_create(url, spec(), IDS, SPLITS)
    store.write_clips(IDS[:2], features(2))
    ds = store.to_xarray()
    np.testing.assert_array_equal(ds.features.sel(clip=IDS[1]).values, features(2)[1])
