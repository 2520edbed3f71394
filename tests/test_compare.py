"""``cache compare``: an exported store against itself, perturbed copies, and one-sided clips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from avvp_pipe.cache.compare import clip_measures, compare, plot_compare
from avvp_pipe.cache.npy_io import export_npy
from tests.test_npy_io import DATA, IDS, cli, imp, write_folder


@pytest.fixture()
def store_and_export(tmp_path) -> tuple[str, Path]:
    """An imported store of the 8 clips and its own export (what a released folder looks like)."""
    imp(write_folder(tmp_path / "src"), tmp_path / "cache")
    from avvp_pipe.cache import list_stores

    url = list_stores(str(tmp_path / "cache"))[0].url
    export_npy(url, tmp_path / "exported")
    return url, tmp_path / "exported"


def test_measures_by_hand():
    a = np.array([[3.0, 4.0], [0.0, 0.0]])
    b = np.array([[3.0, 4.0], [0.0, 1.0]])
    m = clip_measures(a, b)
    assert m["max_abs"] == 1.0
    assert m["rel_l2"] == pytest.approx(1 / np.sqrt(26))
    assert m["cosine"] == pytest.approx(25 / (5 * np.sqrt(26)))
    assert m["min_row_cosine"] == 1.0  # row 1 of a is zero: undefined, left out
    assert clip_measures(np.zeros((2, 2)), np.zeros((2, 2))) == {"max_abs": 0.0, "cosine": 1.0,
                                                                 "min_row_cosine": 1.0, "rel_l2": 0.0}


def test_exported_store_is_identical(store_and_export):
    url, folder = store_and_export
    result = compare(url, folder)
    assert result["counts"]["compared"] == len(IDS) == result["counts"]["identical"]
    assert result["summary"]["rel_l2"]["p100"] == 0.0 and result["summary"]["cosine"]["p0"] == pytest.approx(1.0)
    assert result["only_in_store"] == [] and result["only_in_folder"] == []


def test_perturbed_copies_are_measured(store_and_export, tmp_path):
    url, folder = store_and_export
    rng = np.random.default_rng(0)
    noisy = folder.parent / "noisy"
    noisy.mkdir()
    for k, cid in enumerate(IDS[:6]):  # two clips missing here: only in the store
        ref = DATA[cid] * (1 + 1e-3 * k * rng.standard_normal(DATA[cid].shape)).astype(np.float32)
        np.save(noisy / f"{cid}.npy", ref.astype(np.float32))
    np.save(noisy / "Zzzzzzzzzzz.npy", DATA[IDS[0]])  # only in the folder
    np.save(noisy / f"{IDS[5]}.npy", DATA[IDS[5]][:, :64])  # another shape
    result = compare(url, noisy, rtol=1e-4)
    by_clip = {c["clip"]: c for c in result["clips"]}
    assert result["counts"]["compared"] == 6 and result["counts"]["shape_mismatch"] == 1
    assert by_clip[IDS[0]]["max_abs"] == 0.0
    for k in range(1, 5):
        a = DATA[IDS[k]].astype(np.float64)
        b = np.load(noisy / f"{IDS[k]}.npy").astype(np.float64)
        assert by_clip[IDS[k]]["rel_l2"] == pytest.approx(np.linalg.norm(a - b) / np.linalg.norm(b), rel=1e-12)
        assert by_clip[IDS[k]]["max_abs"] == pytest.approx(np.abs(a - b).max(), rel=1e-12)
        assert 0.9999 < by_clip[IDS[k]]["cosine"] < 1.0
    rels = [by_clip[IDS[k]]["rel_l2"] for k in range(1, 5)]
    assert rels == sorted(rels) and rels[0] > 1e-4  # noise grows with k
    assert by_clip[IDS[5]]["shape_match"] is False and by_clip[IDS[5]]["rel_l2"] is None
    assert result["counts"]["within_rtol"] == 1  # only the untouched clip
    assert result["only_in_store"] == IDS[6:] and result["only_in_folder"] == ["Zzzzzzzzzzz"]
    assert result["summary"]["rel_l2"]["p0"] == 0.0 and result["summary"]["rel_l2"]["p100"] == pytest.approx(max(rels))
    png = plot_compare(result, tmp_path / "hist.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_compare_writes_json_and_png(store_and_export, tmp_path):
    url, folder = store_and_export
    out, png = tmp_path / "cmp.json", tmp_path / "cmp.png"
    result = cli("cache", "compare", url, str(folder), "--out", str(out), "--plot", str(png))
    assert result.exit_code == 0, result.output
    assert "8 clips compared, 8 identical" in result.output
    saved = json.loads(out.read_text())
    assert saved["counts"]["compared"] == 8 and len(saved["clips"]) == 8
    assert png.stat().st_size > 1000
    bad = cli("cache", "compare", url, str(tmp_path / "nope"))
    assert bad.exit_code != 0 and "expected a folder" in bad.output
