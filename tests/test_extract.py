"""`avvp-pipe extract`: one decode feeding every extractor, failures, resume, dask, CLI errors.

CPU only, random-init weights, 64x48 synthetic clips. VGGish (~0.05 s a clip) carries most
tests; R(2+1)D-18 (~9 s a clip on one core) runs on one clip to show the visual path and
that a clip without audio still gets visual features. The heavy 2D nets and OpenL3
(20-100 s a clip on one core) run through the extract path only with AVVP_SLOW_TESTS=1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import avvp_pipe.extractors  # noqa: F401  (registers the families)
from avvp_pipe.cache.store import DONE, list_stores, open_store
from avvp_pipe.extractors.registry import REGISTRY, get_spec
from avvp_pipe.pipeline.cli import cli
from avvp_pipe.core.errors import EXIT_PARTIAL, EXIT_USAGE, EXIT_WEIGHTS, StoreError
from avvp_pipe.pipeline.extract import ExtractOptions, find_clips, run_extract
from tests import clips
from tests.tolerance import float32_atol

REPO = Path(__file__).resolve().parents[1]
CHEAP = {"vggish"}  # full extract path in every run; r2plus1d_18 has its own test
SLOW = os.environ.get("AVVP_SLOW_TESTS") == "1"
N_RESUME = 6  # clips of the resume and dask tests
pytestmark = pytest.mark.filterwarnings("ignore::avvp_pipe.cache.store.UnrealFeaturesWarning")
PROVENANCE_KEYS = {"created", "host", "libraries", "random_init", "made_by", "weights_identity", "weights_file",
                   "weights_source", "precision", "device", "decode", "videos", "extractor_spec"}


def _invoke(args: list[str]):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _store(cache: Path, dataset: str, name: str):
    found = [s for s in list_stores(str(cache)) if s.dataset == dataset and s.extractor == name]
    assert len(found) == 1, found
    return found[0]


def _normal_clips(folder: Path, n: int) -> list[str]:
    """n index-encoded 10-s clips with different textures and noise, named like LLP ids."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"clip{i:07d}" for i in range(n)]
    for i, cid in enumerate(ids):
        clips.make_clip(folder / f"{cid}.mp4", seed=i)
    return ids


# ----------------------------------------------------------------------------------------
# failure fixtures, records, summary, and a rerun


@pytest.fixture(scope="module")
def fixture_run(tmp_path_factory):
    """VGGish over every fixture kind plus a clip named in --clips but absent from the folder."""
    root = tmp_path_factory.mktemp("fixtures")
    fx = clips.make_fixture_set(root / "fx" / "videos")
    listing = root / "clips.txt"
    names = [p.name for p in fx.values()] + ["zzzzzzzzzzz_0_10"]
    listing.write_text("# fixture clips\n" + "\n".join(names) + "\n")
    args = ["extract", "--videos", root / "fx" / "videos", "--cache", root / "cache", "--extractors", "vggish",
            "--random-init", "--clips", listing, "--summary", root / "summary.json", "--quiet",
            "--decode-timeout", 60]
    result = _invoke(args)
    return {"root": root, "fx": fx, "args": args, "result": result,
            "summary": json.loads((root / "summary.json").read_text())}


def test_fixtures_give_defined_behaviour(fixture_run):
    result, summary = fixture_run["result"], fixture_run["summary"]
    assert result.exit_code == EXIT_PARTIAL, result.output
    assert summary["dataset"] == "fx"  # default: the videos folder's parent name
    reasons = {f["clip"]: f["reason"] for f in summary["failures"]}
    assert all(f["extractor"] == "vggish" for f in summary["failures"])
    assert "needs audio" in reasons["ddddddddddd"]
    assert "empty (0 bytes)" in reasons["fffffffffff"]
    assert "could not open" in reasons["ggggggggggg"] and "could not open" in reasons["hhhhhhhhhhh"]
    assert "iiiiiiiiiii" in reasons  # corrupt video data: fails while decoding
    assert reasons["zzzzzzzzzzz"] == "video file missing"
    assert set(reasons) == {"ddddddddddd", "fffffffffff", "ggggggggggg", "hhhhhhhhhhh", "iiiiiiiiiii", "zzzzzzzzzzz"}
    assert summary["clips"] == {"requested": 10, "already_cached": 0, "processed": 10, "decoded": 5, "done": 4,
                                "failed": 6}
    assert summary["per_extractor"]["vggish"]["done"] == 4
    assert summary["seconds"] > 0 and summary["clips_per_s"] > 0 and summary["frames_per_s"] > 0
    assert "error: 6 clip(s) failed" in result.output and "zzzzzzzzzzz  vggish: video file missing" in result.output


def test_fixture_store_contents_and_records(fixture_run):
    store = _store(fixture_run["root"] / "cache", "fx", "vggish")
    ok = ["aaaaaaaaaaa", "bbbbbbbbbbb", "ccccccccccc", "eeeeeeeeeee"]  # normal, short, long, odd fps
    feats = store.read(ok)
    assert feats.shape == (4, 10, 128) and feats.dtype == np.float32 and np.isfinite(feats).all()
    assert store.kind == "random-init" and not store.is_real
    assert any("official rule, some repeat" in n for n in store.record("bbbbbbbbbbb")["notes"])
    assert any("audio padded" in n for n in store.record("bbbbbbbbbbb")["notes"])
    assert any("audio trimmed" in n for n in store.record("ccccccccccc")["notes"])
    decode = store.attrs["provenance"]["decode"]["audio_16k"]
    assert decode["audio_path"] == "moviepy" and "moviepy" in decode["rule"]
    failures = store.failures()
    assert set(failures) == {"ddddddddddd", "fffffffffff", "ggggggggggg", "hhhhhhhhhhh", "iiiiiiiiiii", "zzzzzzzzzzz"}
    # the short clip's last 4 seconds are zero audio: its features differ from the normal clip's
    assert not np.allclose(feats[0], feats[1])


def test_rerun_skips_done_clips_and_retries_failed(fixture_run):
    result = _invoke(fixture_run["args"])
    assert result.exit_code == EXIT_PARTIAL, result.output
    summary = json.loads((fixture_run["root"] / "summary.json").read_text())
    c = summary["clips"]
    # the 4 done clips are not decoded again; only the 6 failures are retried (1 decodes: no audio)
    assert (c["already_cached"], c["processed"], c["decoded"], c["failed"]) == (4, 6, 1, 6)
    assert summary["per_extractor"]["vggish"]["already_cached"] == 4


# ----------------------------------------------------------------------------------------
# one decode, several extractors; every registered extractor's shape


def test_no_audio_clip_gets_visual_features_only(tmp_path):
    videos = tmp_path / "d" / "videos"
    videos.mkdir(parents=True)
    clips.make_no_audio_clip(videos / "ddddddddddd.mp4")
    opts = ExtractOptions(extractors=("vggish", "r2plus1d_18"), random_init=True, batch_size=10)
    clip_set = find_clips(videos)
    summary = run_extract(videos, tmp_path / "cache", clip_set, opts, progress=False)
    assert summary["clips"]["decoded"] == 1  # one decode fed both extractors
    assert [(f["clip"], f["extractor"]) for f in summary["failures"]] == [("ddddddddddd", "vggish")]
    store = _store(tmp_path / "cache", "d", "r2plus1d_18")
    feats = store.read(["ddddddddddd"])
    assert feats.shape == (1, 10, 512) and feats.dtype == np.float32 and np.isfinite(feats).all()
    assert not np.allclose(feats[0, 0], feats[0, 5])  # different seconds, different features
    assert PROVENANCE_KEYS <= set(store.attrs["provenance"])
    assert store.attrs["provenance"]["random_init"] is True and "RANDOM-INIT" in store.attrs["provenance"]["warning"]
    assert store.config["precision"] == "fp32" and store.config["weights"]["identity"] == "random-init"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_extractor_declared_shape_through_extract(name, tmp_path):
    if name not in CHEAP and not SLOW:
        pytest.skip(f"{name} takes 10-100 s a clip on one CPU core; set AVVP_SLOW_TESTS=1")
    videos = tmp_path / "s" / "videos"
    ids = _normal_clips(videos, 1)
    opts = ExtractOptions(extractors=(name,), random_init=True)
    summary = run_extract(videos, tmp_path / "cache", find_clips(videos), opts, progress=False)
    assert summary["failures"] == [] and summary["per_extractor"][name]["done"] == 1
    store = _store(tmp_path / "cache", "s", name)
    spec = get_spec(name)
    feats = store.read(ids)
    assert feats.shape == (1, spec.out_frames, spec.out_dim) and feats.dtype == np.float32
    assert store.attrs["dtype"] == "float32" and np.isfinite(feats).all()
    prov = store.attrs["provenance"]
    assert PROVENANCE_KEYS <= set(prov) and prov["extractor_spec"]["name"] == name
    assert store.kind == "random-init" and prov["weights_identity"] == "random-init"


# ----------------------------------------------------------------------------------------
# resume after kill -9, and dask


@pytest.fixture(scope="module")
def resume_set(tmp_path_factory):
    """N_RESUME clips and their features from one uninterrupted in-process run."""
    root = tmp_path_factory.mktemp("resume_set")
    videos = root / "r" / "videos"
    ids = _normal_clips(videos, N_RESUME)
    opts = ExtractOptions(extractors=("vggish",), random_init=True, batch_size=16, decode_workers=1)
    summary = run_extract(videos, root / "ref", find_clips(videos), opts, progress=False)
    assert summary["clips"]["done"] == N_RESUME
    return {"root": root, "videos": videos, "ids": ids, "ref": _store(root / "ref", "r", "vggish").read(ids)}


def test_batched_rows_return_to_their_clips(resume_set):
    """Batches of 16 rows mix clips of 10 rows; each clip must get back exactly its own rows."""
    from avvp_pipe.extractors import create
    from avvp_pipe.pipeline.decode.clip import decode_clip

    ex = create("vggish", random_init=True)
    for i, cid in enumerate(resume_set["ids"][:3]):  # clip 1 straddles the first two batches
        clip = decode_clip(resume_set["videos"] / f"{cid}.mp4", audio_rates=(16000,))
        direct = ex.finalize(ex.embed(ex.prepare(clip)))  # (10, 128), one clip alone
        # other batch, other kernel blocking: float32 sums of up to 512 x 4 x 6 terms (VGGish's fc1)
        np.testing.assert_allclose(resume_set["ref"][i], direct, rtol=0, atol=float32_atol(direct, 12288))
    assert not np.allclose(resume_set["ref"][0], resume_set["ref"][1], rtol=1e-2)


def _extract_cmd(videos: Path, cache: Path, summary: Path) -> list[str]:
    # batch 16 rows = 1.6 clips: batches mix clips, commits land every one or two clips
    return [sys.executable, "-c", "from avvp_pipe.pipeline.cli import main; main()", "extract", "--videos", str(videos),
            "--cache", str(cache), "--extractors", "vggish", "--random-init", "--batch-size", "16",
            "--decode-workers", "1", "--queue", "1", "--quiet", "--summary", str(summary)]


def _done_count(cache: Path) -> int:
    stores = list(cache.glob("r/vggish/*.zarr/zarr.json"))
    try:
        return int((open_store(str(stores[0].parent)).status() == DONE).sum()) if stores else 0
    except StoreError:  # the store is being created right now
        return 0


def test_resume_after_kill_minus_9(resume_set, tmp_path):
    cache, summary_file = tmp_path / "cache", tmp_path / "summary.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(_extract_cmd(resume_set["videos"], cache, summary_file), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while _done_count(cache) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _done_count(cache)
    assert 2 <= before < N_RESUME, f"the run was not interrupted mid-way ({before} of {N_RESUME} clips done)"
    assert not summary_file.exists()

    rerun = subprocess.run(_extract_cmd(resume_set["videos"], cache, summary_file), cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(summary_file.read_text())
    assert summary["clips"]["already_cached"] == before
    assert summary["clips"]["processed"] == summary["clips"]["decoded"] == N_RESUME - before
    feats = _store(cache, "r", "vggish").read(resume_set["ids"])
    np.testing.assert_array_equal(feats, resume_set["ref"])  # bit-identical to the uninterrupted run


def test_dask_local_cluster_matches_in_process(resume_set, tmp_path):
    pytest.importorskip("distributed")
    four = resume_set["ids"][:4]
    listing = tmp_path / "four.txt"
    listing.write_text("\n".join(four) + "\n")
    clip_set = find_clips(resume_set["videos"], clips_file=listing)
    opts = ExtractOptions(extractors=("vggish",), random_init=True, batch_size=16, decode_workers=1, unit_clips=2)
    summary = run_extract(resume_set["videos"], tmp_path / "cache", clip_set, opts, workers=2, progress=False)
    assert summary["failures"] == [] and summary["clips"]["done"] == 4
    store = _store(tmp_path / "cache", "r", "vggish")
    assert store.done_ids() == four
    np.testing.assert_array_equal(store.read(four), resume_set["ref"][:4])


# ----------------------------------------------------------------------------------------
# weights and option errors


def test_missing_weights_stop_before_decoding(tmp_path):
    videos = tmp_path / "m" / "videos"
    _normal_clips(videos, 1)
    empty = tmp_path / "weights"
    empty.mkdir()
    result = _invoke(["extract", "--videos", videos, "--cache", tmp_path / "cache", "--extractors",
                      "vggish,r2plus1d_18", "--weights-dir", empty, "--quiet"])
    assert result.exit_code == EXIT_WEIGHTS, result.output
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith("error:")
    assert "vggish-10086976.pth" in line and "r2plus1d_18-91a641e6.pth" in line and str(empty) in line
    assert "--random-init" in line
    assert not (tmp_path / "cache").exists()  # nothing decoded, no store created


@pytest.mark.parametrize("case", ["unknown extractor", "missing videos", "split without annotations",
                                  "bad precision"])
def test_bad_options_one_line_usage_error(case, tmp_path):
    videos = tmp_path / "v"
    videos.mkdir()
    args = {
        "unknown extractor": ["--videos", videos, "--extractors", "vggish,resnet999"],
        "missing videos": ["--videos", tmp_path / "nope"],
        "split without annotations": ["--videos", videos, "--split", "test"],
        "bad precision": ["--videos", videos, "--precision", "fp8"],
    }[case]
    result = _invoke(["extract", "--cache", tmp_path / "cache", *args])
    assert result.exit_code == EXIT_USAGE, result.output
    if case == "bad precision":  # click's own choice check
        assert "fp8" in result.stderr
        return
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith("error:"), line
    expected = {"unknown extractor": "resnet999", "missing videos": "nope",
                "split without annotations": "--annotations"}[case]
    assert expected in line


def test_annotations_split_and_missing_files(tmp_path):
    from avvp_pipe.pipeline.llp.annotations import Clip, write_annotations

    videos = tmp_path / "a" / "videos"
    ids = _normal_clips(videos, 1)
    named = [Clip(ids[0], f"{ids[0]}_0_10", "test", (0,)), Clip("missing0001", "missing0001_0_10", "test", (1,)),
             Clip("trainonly01", "trainonly01_0_10", "train", (2,))]
    ann = write_annotations(tmp_path / "ann", named, {})
    result = _invoke(["extract", "--videos", videos, "--cache", tmp_path / "cache", "--extractors", "vggish",
                      "--random-init", "--annotations", ann, "--split", "test", "--quiet",
                      "--summary", tmp_path / "s.json"])
    assert result.exit_code == EXIT_PARTIAL, result.output
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["failures"] == [{"clip": "missing0001", "extractor": "vggish", "reason": "video file missing"}]
    store = _store(tmp_path / "cache", "a", "vggish")
    assert store.clip_ids == ["trainonly01", ids[0], "missing0001"]  # every annotated clip: train, val, test
    assert store.progress()["test"] == {"done": 1, "failed": 1, "total": 2}
    assert store.progress()["train"]["done"] == 0  # not in the split: untouched


def test_workers_zero_means_one_per_gpu_else_one(monkeypatch):
    import torch

    from avvp_pipe.pipeline.extract.distributed import auto_workers

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert auto_workers() == 1
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert auto_workers() == 4


def test_negative_workers_is_a_usage_error(tmp_path):
    from click.testing import CliRunner

    from avvp_pipe.pipeline.cli import cli

    result = CliRunner().invoke(cli, ["extract", "--videos", str(tmp_path), "--cache", str(tmp_path / "c"),
                                      "--workers", "-1"])
    assert result.exit_code == 2 and "--workers" in result.output


def test_event_meter_counts_each_clip_once_whatever_arrives_first():
    from avvp_pipe.pipeline.extract.distributed import _EventMeter

    shown = []
    meter = _EventMeter(shown.append)
    meter.event((0.0, {"frames": 80}))  # unit A, clip 1: its event comes first
    meter.unit_finished(2, 80)  # unit B (2 clips) finishes before any of its events
    assert len(shown) == 2
    meter.event((0.0, {"frames": 80}))  # A's clip 2 arrives: 2 shown, 2 reported done -> nothing new
    meter.event((0.0, {"frames": 80}))  # B's late events must not count again
    meter.event((0.0, {"frames": 80}))
    assert len(shown) == 4  # events ran ahead of finished units: shown as they come
    meter.unit_finished(2, 80)  # unit A reports done
    assert len(shown) == 4  # ... and nothing is counted twice
