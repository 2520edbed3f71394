"""Import and export of the ecosystem's per-clip .npy folders, and the `cache` commands."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import xxhash
from click.testing import CliRunner

from avvp_pipe.pipeline import cli as cli_mod
from avvp_pipe.cache import StoreSpec, list_stores, open_or_create, open_store
from avvp_pipe.cache.npy_io import export_npy, import_npy, raise_if_bad
from avvp_pipe.core.errors import PartialFailure, StoreError
from avvp_pipe.pipeline.llp.annotations import Clip, write_annotations

SHAPE = (10, 128)  # vggish's per-clip shape
IDS = [f"Clip{i:03d}abcd" for i in range(8)]  # 11-char ids
DATA = {cid: (np.abs(np.random.default_rng(i).standard_normal(SHAPE)) * 3).astype(np.float32)
        for i, cid in enumerate(IDS)}


def cli(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli_mod.cli, list(args), env=env)


def write_folder(folder: Path, ids=IDS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for cid in ids:
        np.save(folder / f"{cid}.npy", DATA[cid])
    return folder


def imp(src: Path, root: Path, **kw):
    kw.setdefault("modality", "audio")
    return import_npy(src, str(root), "tiny", kw.pop("as_extractor", "featsx"), **kw)


def file_hash(path: Path) -> str:
    return xxhash.xxh3_128(path.read_bytes()).hexdigest()


def folder_hash(folder: Path, names) -> str:
    """The documented content hash, recomputed independently: xxh3-128 over sorted (name, xxh3-128)."""
    digest = xxhash.xxh3_128()
    for name in sorted(names):
        digest.update(f"{name}\t{file_hash(folder / name)}\n".encode())
    return digest.hexdigest()


def listing_hash(folder: Path, names) -> str:
    """The documented store-key part: sha256 over sorted (name, size, mtime_ns)."""
    digest = hashlib.sha256()
    for name in sorted(names):
        stat = (folder / name).stat()
        digest.update(f"{name}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


# ---------------------------------------------------------------- round trip and provenance


def test_export_then_import_gives_identical_arrays(tmp_path):
    original = open_or_create(str(tmp_path / "a"), StoreSpec("tiny", "vggish", "audio", SHAPE, {"v": 1}), IDS)
    original.write_clips(IDS, np.stack([DATA[c] for c in IDS]))
    result = export_npy(original.url, tmp_path / "out")
    assert result["written"] == len(IDS) and result["not_done"] == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{c}.npy" for c in IDS)
    for cid in IDS:
        saved = np.load(tmp_path / "out" / f"{cid}.npy")
        assert saved.dtype == np.float32 and saved.shape == SHAPE
        np.testing.assert_array_equal(saved, DATA[cid])

    summary = imp(tmp_path / "out", tmp_path / "b")
    back = open_store(summary["store"])
    np.testing.assert_array_equal(back.read(IDS), original.read(IDS))
    assert summary["imported"] == len(IDS) and summary["bad"] == {} and summary["missing"] == []


def test_fortran_order_files_import_as_their_values(tmp_path):
    src = tmp_path / "feats"
    src.mkdir()
    np.save(src / f"{IDS[0]}.npy", np.asfortranarray(DATA[IDS[0]]))
    np.save(src / f"{IDS[1]}.npy", DATA[IDS[1]])
    summary = imp(src, tmp_path / "cache")
    np.testing.assert_array_equal(open_store(summary["store"]).read(IDS[:2]), np.stack([DATA[c] for c in IDS[:2]]))


def test_provenance_and_content_hash(tmp_path):
    src = write_folder(tmp_path / "feats")
    summary = imp(src, tmp_path / "cache")
    store = open_store(summary["store"])
    expected_hash = folder_hash(src, [f"{c}.npy" for c in IDS])
    prov = store.attrs["provenance"]
    assert store.kind == "imported" and store.is_real
    assert prov["note"] == f"imported from {src.resolve()}"
    assert prov["file_count"] == len(IDS)
    assert prov["content_xxh3_128"] == expected_hash == summary["content_xxh3_128"]
    assert store.config["listing_sha256"] == listing_hash(src, [f"{c}.npy" for c in IDS])  # in the store key
    assert "unknown" in prov["weights_identity"]
    for cid in IDS:  # each clip's record names its file and that file's hash
        record = store.record(cid)
        assert record["imported_from"] == f"{cid}.npy"
        assert record["xxh3_128"] == file_hash(src / f"{cid}.npy")

    store.clear(IDS[:3])  # a resumed import rereads only those, yet states the same content hash
    Path(store.url, "records", f"{IDS[5]}.json").unlink()  # a done clip without its record: rehashed
    resumed = imp(src, tmp_path / "cache")
    assert resumed["imported"] == 3 and resumed["content_xxh3_128"] == expected_hash

    np.save(src / f"{IDS[0]}.npy", DATA[IDS[0]] + 1)  # another folder content: another store
    other = imp(src, tmp_path / "cache")
    assert other["store"] != summary["store"] and other["content_xxh3_128"] != expected_hash
    assert len(list_stores(str(tmp_path / "cache"))) == 2


# ---------------------------------------------------------------- bad files


def test_bad_files_are_reported_and_the_rest_imported(tmp_path):
    src = write_folder(tmp_path / "feats", IDS[:5])
    np.save(src / "WrongShape1.npy", np.zeros((10, 64), np.float32))
    (src / "readme.txt").write_text("not features")
    (src / "Truncated01.npy").write_bytes((src / f"{IDS[0]}.npy").read_bytes()[:700])
    (src / "NotAnArray1.npy").write_bytes(b"garbage, not the npy magic")
    np.save(src / "short.npy", DATA[IDS[5]])  # not an 11-char id
    np.save(src / "Float64file.npy", DATA[IDS[6]].astype(np.float64))
    nan = DATA[IDS[7]].copy()
    nan[3, 3] = np.nan
    np.save(src / "HasNanValue.npy", nan)
    root = tmp_path / "cache"

    result = cli("cache", "import-npy", str(src), "--cache", str(root), "--dataset", "tiny", "--as", "featsx",
                 "--modality", "audio", "--quiet")
    assert result.exit_code == PartialFailure.exit_code, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    reasons = {
        "WrongShape1.npy": "expected shape (10, 128) but got (10, 64)",
        "readme.txt": "not a .npy file",
        "Truncated01.npy": "truncated",
        "NotAnArray1.npy": "not a valid .npy file",
        "short.npy": "wrong id",
        "Float64file.npy": "expected dtype float32",
        "HasNanValue.npy": "non-finite",
    }
    for name, reason in reasons.items():
        assert any(name in line and reason in line for line in errors), (name, errors)
    assert len([line for line in errors if line.startswith(f"error: {src.resolve()}/")]) == len(reasons)
    assert "error: 7 of 12 files" in result.stderr  # the summary line of the exit

    [store] = list_stores(str(root))
    np.testing.assert_array_equal(store.read(IDS[:5]), np.stack([DATA[c] for c in IDS[:5]]))
    failed = store.failures()  # listed clips with a bad file keep their reason
    assert set(failed) == {"WrongShape1", "Truncated01", "NotAnArray1", "Float64file", "HasNanValue"}
    assert "(10, 64)" in failed["WrongShape1"]

    summary = imp(src, tmp_path / "cache2")  # the library returns what it imported and why the rest failed
    with pytest.raises(PartialFailure, match="could not be imported"):
        raise_if_bad(summary)
    assert summary["imported"] == 5 and len(summary["bad"]) == len(reasons)


def test_a_folder_with_no_good_file_is_an_error(tmp_path):
    src = tmp_path / "feats"
    src.mkdir()
    (src / "a.txt").write_text("x")
    result = cli("cache", "import-npy", str(src), "--cache", str(tmp_path / "c"), "--dataset", "tiny",
                 "--as", "featsx", "--modality", "audio")
    assert result.exit_code == 3 and "no importable .npy file" in result.stderr
    assert not (tmp_path / "c").exists()


def test_duplicate_ids_and_majority_shape(tmp_path):
    src = write_folder(tmp_path / "feats", IDS[:4])
    np.save(src / f"{IDS[0]}_30_40.npy", DATA[IDS[0]])  # the LLP filename of an id already there
    np.save(src / "AAAAAAAAAAA.npy", np.zeros((10, 64), np.float32))  # sorts first, wrong shape
    summary = imp(src, tmp_path / "cache")
    assert summary["bad"]
    bad = summary["bad"]
    assert "duplicate" in bad[f"{IDS[0]}_30_40.npy"] or "duplicate" in bad[f"{IDS[0]}.npy"]
    assert "expected shape (10, 128)" in bad["AAAAAAAAAAA.npy"]
    assert summary["imported"] == 4


def test_registry_spec_decides_the_shape_when_it_knows_the_name(tmp_path, monkeypatch):
    from avvp_pipe.extractors import registry

    spec = registry.ExtractorSpec(name="fakeaudio", modality="audio", family="vggish", out_frames=10,
                                  out_dim=64, input={}, weights={}, output_layer="x", requires=(), licence="x")
    monkeypatch.setitem(registry.REGISTRY, "fakeaudio", spec)
    src = write_folder(tmp_path / "feats", IDS[:3])  # (10, 128): most common, but not the spec's
    np.save(src / "RightShape1.npy", np.ones((10, 64), np.float32))
    summary = import_npy(src, str(tmp_path / "cache"), "tiny", "fakeaudio")
    assert summary["bad"]
    assert summary["shape"] == [10, 64] and "registry" in summary["shape_source"]
    assert summary["modality"] == "audio" and "registry" in summary["modality_source"]
    assert summary["imported"] == 1 and len(summary["bad"]) == 3

    # without the registry the files' majority decides
    summary = import_npy(src, str(tmp_path / "cache2"), "tiny", "unknownname", modality="audio", workers=1)
    assert summary["bad"]
    assert summary["shape"] == [10, 128] and "not in the extractor registry" in summary["shape_source"]
    assert list(summary["bad"]) == ["RightShape1.npy"] and summary["imported"] == 3


def test_unknown_extractor_without_modality_is_an_error(tmp_path):
    src = write_folder(tmp_path / "feats", IDS[:2])
    result = cli("cache", "import-npy", str(src), "--cache", str(tmp_path / "c"), "--dataset", "tiny",
                 "--as", "mystery")
    assert result.exit_code == 3 and "--modality" in result.stderr


# ---------------------------------------------------------------- annotations


def make_annotations(folder: Path, ids) -> Path:
    splits = ["train"] * 4 + ["val"] * 2 + ["test"] * 2
    clips = [Clip(cid, f"{cid}_0_10", split, (0,)) for cid, split in zip(ids, splits)]
    return write_annotations(folder, clips, {})


def test_annotations_give_the_clip_list_and_missing_clips_are_reported(tmp_path):
    ann = make_annotations(tmp_path / "ann", IDS)
    src = write_folder(tmp_path / "feats", IDS[:3] + IDS[6:7])
    np.save(src / "NotInAnnots.npy", DATA[IDS[3]])
    result = cli("cache", "import-npy", str(src), "--cache", str(tmp_path / "c"), "--dataset", "tiny",
                 "--as", "vggish", "--annotations", str(ann), "--quiet")
    assert result.exit_code == PartialFailure.exit_code, result.output
    assert "NotInAnnots.npy: wrong id: NotInAnnots is not a clip of the annotations" in result.stderr
    assert "warning: 4 listed clips have no file" in result.stderr
    assert IDS[3] in result.stderr  # the first missing ones are named
    [store] = list_stores(str(tmp_path / "c"))
    assert store.clip_ids == IDS  # the annotations' full list, in file order
    assert store.progress() == {
        "train": {"done": 3, "failed": 0, "total": 4},
        "val": {"done": 0, "failed": 0, "total": 2},
        "test": {"done": 1, "failed": 0, "total": 2},
        "all": {"done": 4, "failed": 0, "total": 8},
    }


def test_real_llp_annotations_clip_list(tmp_path, real_llp):
    real_ids = [line.split("\t")[0][:11] for line in (real_llp / "AVVP_test_pd.csv").read_text().splitlines()[1:4]]
    src = tmp_path / "feats"
    src.mkdir()
    for i, cid in enumerate(real_ids):
        np.save(src / f"{cid}.npy", DATA[IDS[i]])
    summary = import_npy(src, str(tmp_path / "c"), "llp", "vggish", annotations=real_llp, modality="audio")
    assert summary["clips"] == 11849 and len(summary["missing"]) == 11849 - 3
    store = open_store(summary["store"])
    assert store.progress()["test"] == {"done": 3, "failed": 0, "total": 1200}
    assert store.progress()["train"]["total"] == 10000


# ---------------------------------------------------------------- resume


def test_import_resumes_and_overwrite_reimports(tmp_path):
    src = write_folder(tmp_path / "feats")
    first = imp(src, tmp_path / "cache")
    assert first["imported"] == len(IDS)
    again = imp(src, tmp_path / "cache")
    assert again["store"] == first["store"] and again["imported"] == 0 and again["skipped_done"] == len(IDS)
    store = open_store(first["store"])
    store.clear(IDS[2:4])  # as if an earlier run had been killed before these
    resumed = imp(src, tmp_path / "cache")
    assert resumed["imported"] == 2 and resumed["skipped_done"] == len(IDS) - 2
    np.testing.assert_array_equal(store.read(IDS), np.stack([DATA[c] for c in IDS]))
    assert imp(src, tmp_path / "cache", overwrite=True)["imported"] == len(IDS)


def test_float16_store_from_float32_files(tmp_path):
    src = write_folder(tmp_path / "feats", IDS[:3])
    np.save(src / "TooBigHalf1.npy", np.full(SHAPE, 1e6, np.float32))  # inf as float16
    summary = imp(src, tmp_path / "cache", dtype="float16")
    assert summary["bad"]
    assert "non-finite" in summary["bad"]["TooBigHalf1.npy"]
    store = open_store(summary["store"])
    assert store.dtype == "float16"
    got, want = store.read(IDS[:3]), np.stack([DATA[c] for c in IDS[:3]])
    assert (np.abs(got - want) <= 2.0**-11 * np.abs(want) + 2.0**-25).all()


def test_export_resumes_skips_good_files_and_replaces_bad_ones(tmp_path):
    store = open_or_create(str(tmp_path / "c"), StoreSpec("tiny", "vggish", "audio", SHAPE, {"v": 1}), IDS)
    store.write_clips(IDS[:6], np.stack([DATA[c] for c in IDS[:6]]))
    out = tmp_path / "out"
    assert export_npy(store.url, out)["written"] == 6
    np.save(out / f"{IDS[1]}.npy", np.zeros((10, 64), np.float32))  # wrong shape: rewritten
    (out / f"{IDS[2]}.npy").write_bytes((out / f"{IDS[2]}.npy").read_bytes()[:300])  # truncated: rewritten
    (out / f".{IDS[3]}.npy.tmp999").write_bytes(b"left by a killed export")
    before = (out / f"{IDS[0]}.npy").stat().st_mtime_ns
    result = export_npy(store.url, out)
    assert result["written"] == 2 and result["skipped_existing"] == 4 and result["not_done"] == 2
    assert result["stale_temp_files_removed"] == 1 and not (out / f".{IDS[3]}.npy.tmp999").exists()
    assert (out / f"{IDS[0]}.npy").stat().st_mtime_ns == before
    for cid in IDS[:6]:
        np.testing.assert_array_equal(np.load(out / f"{cid}.npy"), DATA[cid])
    assert export_npy(store.url, out, overwrite=True)["written"] == 6


def test_export_refuses_unreal_stores_unless_allowed(tmp_path):
    sim = open_or_create(str(tmp_path / "c"), StoreSpec("tiny", "sim", "audio", SHAPE, {}, kind="simulated"), IDS)
    sim.write_clips(IDS[:2], np.stack([DATA[c] for c in IDS[:2]]))
    with pytest.raises(StoreError, match="simulated"):
        export_npy(sim.url, tmp_path / "out")
    result = cli("cache", "export-npy", sim.url, str(tmp_path / "out"), "--allow-unreal", "--quiet")
    assert result.exit_code == 0, result.output
    assert "warning: these are simulated features" in result.stderr
    assert "warning: 6 clips of the store are not done" in result.stderr
    assert len(list((tmp_path / "out").glob("*.npy"))) == 2


# ---------------------------------------------------------------- ls and verify


def test_cache_ls_lists_stores_and_flags_unreal_kinds(tmp_path):
    root = tmp_path / "c"
    imp(write_folder(tmp_path / "feats"), root)
    sim = open_or_create(str(root), StoreSpec("tiny", "sim", "audio", SHAPE, {}, kind="simulated"), IDS)
    sim.mark_failed(IDS[0], "boom")
    result = cli("cache", "ls", env={"AVVP_CACHE": str(root)})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    imported = next(line for line in lines if "featsx@" in line)
    assert "imported" in imported and "10x128 float32" in imported and "unsplit 8/8" in imported
    assert any("imported from" in line and "(8 files)" in line for line in lines)
    simulated = next(line for line in lines if "sim@" in line)
    assert "SIMULATED" in simulated and "unsplit 0/8" in simulated and "(1 failed)" in simulated

    rows = json.loads(cli("cache", "ls", str(root), "--json").output)
    assert {r["kind"] for r in rows} == {"imported", "simulated"}
    assert all(r["size_bytes"] > 0 and r["provenance"]["created"] for r in rows)
    assert cli("cache", "ls", str(tmp_path / "nothing")).exit_code == 3


def test_cache_verify_reports_reset_clips(tmp_path):
    root = tmp_path / "c"
    summary = imp(write_folder(tmp_path / "feats"), root)
    ok = cli("cache", "verify", summary["store"])
    assert ok.exit_code == 0 and "checked 8 done clips, reset 0" in ok.output
    chunk = Path(summary["store"]) / "features" / "c" / "2" / "0" / "0"
    chunk.write_bytes(b"\x00garbage" * 10)
    bad = cli("cache", "verify", str(root))  # a root: every store under it
    assert bad.exit_code == PartialFailure.exit_code
    assert f"{IDS[2]}: unreadable" in bad.output and "reset 1" in bad.output
    assert open_store(summary["store"]).pending() == [IDS[2]]
    assert imp(tmp_path / "feats", root)["imported"] == 1  # the import recomputes exactly that clip
    assert cli("cache", "verify", str(tmp_path / "nowhere")).exit_code == 3
