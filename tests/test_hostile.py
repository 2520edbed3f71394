"""Hostile inputs and faults: each case asserts the exit code, one line naming the culprit, no
traceback, nothing executed and nothing already computed lost (issue 13).

Cases run through the real CLI (click's CliRunner, as a user's shell would) on small
simulated stores and annotation folders made here, so the suite needs no ../shared.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from avvp_pipe.cache.store import UnrealFeaturesWarning, find_store, open_or_create, open_store
from avvp_pipe.core.errors import EXIT_INPUT, EXIT_IO, EXIT_PARTIAL, EXIT_USAGE, EXIT_WEIGHTS, AvvpError
from avvp_pipe.pipeline.cli import cli
from tests.featuresets import make_annotations, make_cache

STORES = ["a1:audio:16:0.9", "v1:visual-2d:24:0.9"]
pytestmark = pytest.mark.filterwarnings("ignore::avvp_pipe.cache.store.UnrealFeaturesWarning")


def run(*args: str):
    """Invoke the CLI; stderr kept apart (click >= 8.2 separates them)."""
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result, *needles: str, code: int = EXIT_INPUT) -> str:
    """The result failed with ``code``, printed exactly one 'error:' line naming every needle, no traceback."""
    text = result.stderr if hasattr(result, "stderr") else result.output
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output and "Traceback" not in text
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    ann = make_annotations(root / "ann", n_clips=48, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnrealFeaturesWarning)
        cache = make_cache(root / "cache", ann, STORES)
    return {"root": root, "ann": ann, "ann_dir": root / "ann", "cache": cache}


def copy_world(world, tmp_path: Path) -> dict:
    """A private copy (cases below damage files)."""
    shutil.copytree(world["ann_dir"], tmp_path / "ann")
    shutil.copytree(world["cache"], tmp_path / "cache")
    return {"ann_dir": tmp_path / "ann", "cache": str(tmp_path / "cache")}


def train_args(w: dict, out: Path, *extra: str) -> list[str]:
    return ["train", "--cache", w["cache"], "--dataset", "tiny", "--annotations", w["ann_dir"], "--audio", "a1",
            "--visual", "v1", "--visual-3d", "none", "--out", out, "--epochs", "1", "--batch-size", "8",
            "--d-model", "32", "--ffn", "32", "--allow-simulated", "--quiet", *extra]


# ---------------------------------------------------------------------- 1. weights pickles


class _Runs:
    """A pickle payload that calls a numpy function which executes a string."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        from numpy.testing._private.utils import runstring

        return runstring, (f"open({str(self.marker)!r}, 'w').write('ran')", {})


def test_weights_file_with_code_is_refused_and_never_run(tmp_path):
    from avvp_pipe.core.errors import WeightsError
    from avvp_pipe.extractors import registry
    from avvp_pipe.extractors.weights import load_state_dict
    from avvp_pipe.pipeline.synth.clips import synthesize

    synthesize(tmp_path / "synth", 1, seed=0, workers=1, progress=False)
    marker = tmp_path / "ran.txt"
    file = registry.get_spec("r2plus1d_18").weights["file"]
    torch.save({"stem.0.weight": torch.zeros(1), "x": _Runs(marker)}, tmp_path / file)
    result = run("extract", "--videos", tmp_path / "synth" / "videos", "--cache", tmp_path / "c",
                 "--extractors", "r2plus1d_18", "--weights-dir", tmp_path, "--trust-weights", "--quiet")
    one_line_error(result, file, "numpy.testing", "refused", code=EXIT_WEIGHTS)
    with pytest.raises(WeightsError, match=r"pickles numpy\.testing.*refused"):
        load_state_dict(tmp_path / file)
    assert not marker.exists()
    untrusted = run("extract", "--videos", tmp_path / "synth" / "videos", "--cache", tmp_path / "c",
                    "--extractors", "r2plus1d_18", "--weights-dir", tmp_path, "--quiet")
    one_line_error(untrusted, file, "not the published", code=EXIT_WEIGHTS)  # refused before it is opened
    assert not marker.exists()


def test_numpy_arrays_in_a_checkpoint_still_load(tmp_path):
    from avvp_pipe.extractors.weights import load_state_dict

    torch.save({"m": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float64(2.5)}, tmp_path / "np.pt")
    state = load_state_dict(tmp_path / "np.pt")
    assert state["m"].shape == (2, 3) and float(state["s"]) == 2.5


def test_weights_with_another_hash_need_trust(tmp_path):
    from avvp_pipe.core.errors import WeightsError
    from avvp_pipe.extractors import registry, weights

    spec = registry.get_spec("r2plus1d_18")
    torch.save({"x": torch.zeros(1)}, tmp_path / spec.weights["file"])
    with pytest.raises(WeightsError, match="not the published") as err:
        weights.file_identity(tmp_path / spec.weights["file"], spec.weights["sha256_prefix"])
    assert "\n" not in str(err.value) and "--trust-weights" in str(err.value)
    with weights.trust_weights():
        assert len(weights.file_identity(tmp_path / spec.weights["file"], spec.weights["sha256_prefix"])) == 16


# ---------------------------------------------------------------------- 2. silent corruption


def test_bit_flips_in_chunks_are_detected_and_verify_resets_them(tmp_path):
    from avvp_pipe.cache.store import StoreSpec
    from avvp_pipe.core.errors import StoreError

    ids = [f"clip{i:07d}" for i in range(6)]
    store = open_or_create(str(tmp_path), StoreSpec("tiny", "fake", "visual-2d", (8, 32), {"k": 1}), ids)
    data = np.random.default_rng(0).standard_normal((6, 8, 32)).astype(np.float32)
    store.write_clips(ids, data)
    rng = np.random.default_rng(1)
    flipped = {}
    for i in (1, 4):  # one random bit in each of two clips' chunk files
        path = Path(store.url) / "features" / "c" / str(i) / "0" / "0"
        raw = bytearray(path.read_bytes())
        pos = int(rng.integers(len(raw) * 8))
        raw[pos // 8] ^= 1 << (pos % 8)
        path.write_bytes(bytes(raw))
        flipped[ids[i]] = pos
    with pytest.raises(StoreError, match=ids[1]):
        open_store(store.url).read(ids)
    result = run("cache", "verify", store.url)
    assert result.exit_code == EXIT_PARTIAL and "reset 2" in result.output
    again = open_store(store.url)
    assert sorted(set(ids) - set(again.done_ids())) == sorted(flipped)
    np.testing.assert_array_equal(again.read([ids[0], ids[2]]), data[[0, 2]])  # the rest is kept


# ---------------------------------------------------------------------- 3. one line, not a traceback


@pytest.mark.parametrize("damage", ["latin1", "binary"])
def test_annotation_file_that_is_not_utf8(world, tmp_path, damage):
    w = copy_world(world, tmp_path)
    path = w["ann_dir"] / "AVVP_train.csv"
    if damage == "latin1":
        path.write_bytes(path.read_bytes() + "abcdefghijk_0_10\tSpeech,Caf\xe9\n".encode("latin-1"))
    else:
        path.write_bytes(os.urandom(256))
    one_line_error(run("labels", "summary", "--annotations", w["ann_dir"]), "AVVP_train.csv", "UTF-8")


def test_header_only_split_file(world, tmp_path):
    w = copy_world(world, tmp_path)
    path = w["ann_dir"] / "AVVP_val_pd.csv"
    path.write_text(path.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    result = run("labels", "summary", "--annotations", w["ann_dir"])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "val" in result.output


@pytest.mark.parametrize("which", ["root", "array"])
@pytest.mark.parametrize("damage", ["truncated", "not-json"])
def test_store_metadata_that_is_not_json(world, tmp_path, which, damage):
    w = copy_world(world, tmp_path)
    store = find_store(w["cache"], "tiny", "v1")
    meta = Path(store.url) / ("zarr.json" if which == "root" else "features/zarr.json")
    text = meta.read_text(encoding="utf-8")
    meta.write_text(text[: len(text) // 2] if damage == "truncated" else "<html>", encoding="utf-8")
    one_line_error(run(*train_args(w, tmp_path / "run")), "zarr.json")
    one_line_error(run("cache", "verify", store.url), "zarr.json")
    listing = run("cache", "ls", w["cache"])  # the broken store is flagged, the others listed
    assert listing.exit_code == 0 and "Traceback" not in listing.output, listing.output
    assert "a1@" in listing.output and "BROKEN" in listing.output and "zarr.json" in listing.output


def test_disk_full_during_extract_keeps_what_was_written(tmp_path, monkeypatch):
    from avvp_pipe.cache import store as store_mod
    from avvp_pipe.pipeline.synth.clips import synthesize

    synthesize(tmp_path / "synth", 3, seed=0, workers=1, progress=False)
    calls = {"n": 0}
    real = store_mod.atomic_write_bytes

    def full_after_some(path, data, **kw):
        calls["n"] += 1
        if calls["n"] > 4:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data, **kw)

    monkeypatch.setattr(store_mod, "atomic_write_bytes", full_after_some)
    result = run("extract", "--videos", tmp_path / "synth" / "videos", "--cache", tmp_path / "c",
                 "--extractors", "vggish", "--random-init", "--quiet", "--batch-size", "1")
    one_line_error(result, "No space left on device", code=EXIT_IO)
    monkeypatch.setattr(store_mod, "atomic_write_bytes", real)
    done_before = len(find_store(str(tmp_path / "c"), "synth", "vggish").done_ids())
    again = run("extract", "--videos", tmp_path / "synth" / "videos", "--cache", tmp_path / "c",
                "--extractors", "vggish", "--random-init", "--quiet")
    assert again.exit_code == 0, again.output
    assert f"{done_before} already done" in again.output or done_before == 0 or "cached" in again.output


@pytest.mark.parametrize("damage", ["truncated", "pickle-with-code"])
def test_hostile_checkpoint_on_resume_and_analyze(world, tmp_path, damage):
    w = copy_world(world, tmp_path)
    out = tmp_path / "run"
    assert run(*train_args(w, out)).exit_code == 0
    marker = tmp_path / "ran.txt"
    for name in ("checkpoint.pt", "best.pt"):
        path = out / name
        if damage == "truncated":
            path.write_bytes(path.read_bytes()[:100])
        else:
            torch.save({"x": _Runs(marker)}, path)
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["eval"] = None  # not finished: --resume must read checkpoint.pt
    (out / "metrics.json").write_text(json.dumps(metrics))
    one_line_error(run(*train_args(w, out, "--resume")), "checkpoint.pt")
    one_line_error(run("analyze", "run", "--run", out, "--split", "test", "--allow-simulated",
                       "--out", tmp_path / "an"), "best.pt")
    assert not marker.exists()


def test_cache_that_is_a_regular_file(world, tmp_path):
    w = copy_world(world, tmp_path)
    (tmp_path / "afile").write_text("x")
    w["cache"] = str(tmp_path / "afile")
    one_line_error(run(*train_args(w, tmp_path / "run")), "afile")
    one_line_error(run("cache", "ls", tmp_path / "afile"), "afile")


def test_decode_out_into_a_missing_folder_creates_it_and_into_a_file_fails(tmp_path):
    from avvp_pipe.pipeline.synth.clips import synthesize

    synthesize(tmp_path / "synth", 1, seed=0, workers=1, progress=False)
    clip = next((tmp_path / "synth" / "videos").glob("*.mp4"))
    result = run("decode", clip, "--out", tmp_path / "nowhere" / "x.npz")  # folders are made, as every writer does
    assert result.exit_code == 0 and (tmp_path / "nowhere" / "x.npz").is_file(), result.output
    (tmp_path / "afile").write_text("x")
    one_line_error(run("decode", clip, "--out", tmp_path / "afile" / "x.npz"), "afile", code=EXIT_IO)


def test_train_out_under_an_unwritable_path(world, tmp_path):
    if os.geteuid() == 0:  # root writes anywhere: use a path under a regular file instead
        (tmp_path / "blocker").write_text("x")
        out = tmp_path / "blocker" / "run"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        out = locked / "run"
    w = copy_world(world, tmp_path)
    one_line_error(run(*train_args(w, out)), str(out.parent), code=EXIT_IO)


# ---------------------------------------------------------------------- 4. misleading checks


def test_stores_with_other_clip_counts_say_what_differs(world, tmp_path):
    w = copy_world(world, tmp_path)
    ids = list(world["ann"].clips)[:10]
    from avvp_pipe.cache.store import StoreSpec

    open_or_create(w["cache"], StoreSpec("tiny", "v9", "visual-2d", (10, 24), {"q": 1}, kind="simulated"), ids)
    args = train_args(w, tmp_path / "run")
    args[args.index("v1")] = "v9"
    line = one_line_error(run(*args))
    assert "10" in line and "clips" in line and line.count("tiny") <= 1


def test_evaluate_refuses_probabilities_outside_0_1(world, tmp_path):
    from avvp_pipe.pipeline.evaluate.scores import save_predictions

    ids = world["ann"].split_ids("test")
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((len(ids), 10, 2, 25)).astype(np.float32) * 4  # logits by mistake
    with pytest.raises(AvvpError, match=r"\[0, 1\]"):  # our own writer refuses them too
        save_predictions(tmp_path / "q.npz", ids, logits, rng.random((len(ids), 25)).astype(np.float32))
    np.savez(tmp_path / "p.npz", video_ids=np.asarray(ids), frame_prob=logits,
             global_prob=rng.random((len(ids), 25)).astype(np.float32))
    one_line_error(run("evaluate", "--predictions", tmp_path / "p.npz", "--annotations", world["ann_dir"],
                       "--split", "test"), "p.npz", "frame_prob", "[0, 1]")
    # HAN's own pooled output may exceed 1 (it is bounded by 2): accepted, not called a logit.
    ok = rng.random((len(ids), 10, 2, 25)).astype(np.float32)
    save_predictions(tmp_path / "r.npz", ids, ok, np.full((len(ids), 25), 1.01, np.float32))


def test_exit_codes_are_documented():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    for code in (EXIT_PARTIAL, EXIT_USAGE, EXIT_INPUT, EXIT_WEIGHTS, EXIT_IO):
        assert f"{code} " in readme.split("Exit codes:")[1][:600]


def _audio_only_mp4(path: Path, seconds: float = 10.0, rate: int = 44100) -> None:
    """An .mp4 with one AAC stream and no video (a tone), written with PyAV."""
    import av

    t = np.arange(int(seconds * rate)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]  # (1, n)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        frames = []
        for start in range(0, tone.shape[1], 1024):
            frames.append(av.AudioFrame.from_ndarray(tone[:, start : start + 1024], format="flt", layout="mono"))
            frames[-1].sample_rate = rate
        _mux(container, stream, frames)


def _mux(container, stream, frames) -> None:
    """Encode ``frames`` into ``stream``, flush the encoder, mux every packet."""
    for frame in [*frames, None]:
        for packet in stream.encode(frame):
            container.mux(packet)


def test_audio_only_file_feeds_audio_extractors_and_fails_visual_ones(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    _audio_only_mp4(videos / "AAAAAAAAAAA.mp4")
    result = run("extract", "--videos", videos, "--cache", tmp_path / "c", "--extractors", "vggish,r2plus1d_18",
                 "--random-init", "--quiet", "--summary", tmp_path / "s.json")
    assert result.exit_code == EXIT_PARTIAL, result.output  # one extractor failed that clip
    from avvp_pipe.cache.store import list_stores

    stores = {s.extractor: s for s in list_stores(str(tmp_path / "c"))}
    assert stores["vggish"].done_ids() == ["AAAAAAAAAAA"]
    assert "no video stream" in stores["r2plus1d_18"].failures()["AAAAAAAAAAA"]
    assert json.loads((tmp_path / "s.json").read_text())  # the summary was written before the exit


# ---------------------------------------------------------------------- cases of our own


def test_npy_names_that_try_to_leave_the_store_are_refused(tmp_path):
    src = tmp_path / "feats"
    src.mkdir()
    np.save(src / "okokokokoko.npy", np.zeros((10, 8), np.float32))
    np.save(src / "..%2F..%2Fetc.npy", np.zeros((10, 8), np.float32))  # hidden: noted and skipped
    np.save(src / "zz\\..\\..\\evil.npy", np.zeros((10, 8), np.float32))  # not an LLP id: a bad file
    result = run("cache", "import-npy", src, "--cache", tmp_path / "c", "--dataset", "tiny", "--as", "featsx",
                 "--modality", "audio")
    assert result.exit_code == EXIT_PARTIAL and "Traceback" not in result.output, result.output
    assert "evil.npy" in result.output and "ignored 1 hidden" in result.output
    written = {p.name for p in tmp_path.rglob("*") if p.is_file()} - {p.name for p in src.iterdir()}
    assert not any("evil" in name or name == "etc" for name in written)


def test_npz_predictions_with_a_pickled_object_are_refused(world, tmp_path):
    ids = world["ann"].split_ids("test")
    np.savez(tmp_path / "p.npz", video_ids=np.array(ids, dtype=object),
             frame_prob=np.zeros((len(ids), 10, 2, 25), np.float32), global_prob=np.zeros((len(ids), 25), np.float32))
    one_line_error(run("evaluate", "--predictions", tmp_path / "p.npz", "--annotations", world["ann_dir"],
                       "--split", "test"), "p.npz")


def test_nan_in_predictions_is_refused(world, tmp_path):
    ids = world["ann"].split_ids("test")
    frame = np.full((len(ids), 10, 2, 25), np.nan, np.float32)
    np.savez(tmp_path / "p.npz", video_ids=np.array(ids), frame_prob=frame,
             global_prob=np.zeros((len(ids), 25), np.float32))
    one_line_error(run("evaluate", "--predictions", tmp_path / "p.npz", "--annotations", world["ann_dir"],
                       "--split", "test"), "frame_prob", "finite")


def test_a_truncated_mp4_fails_only_that_clip(tmp_path):
    from avvp_pipe.pipeline.synth.clips import synthesize

    synthesize(tmp_path / "synth", 2, seed=1, workers=1, progress=False)
    clips = sorted((tmp_path / "synth" / "videos").glob("*.mp4"))
    clips[0].write_bytes(clips[0].read_bytes()[:2000])
    result = run("extract", "--videos", tmp_path / "synth" / "videos", "--cache", tmp_path / "c",
                 "--extractors", "vggish", "--random-init", "--quiet")
    assert result.exit_code == EXIT_PARTIAL and "Traceback" not in result.output, result.output
    store = find_store(str(tmp_path / "c"), "synth", "vggish")
    assert store.done_ids() == [clips[1].stem[:11]] and clips[0].stem[:11] in store.failures()


def test_a_directory_named_like_a_clip_is_not_a_clip(tmp_path):
    videos = tmp_path / "videos"
    (videos / "BBBBBBBBBBB.mp4").mkdir(parents=True)
    result = run("extract", "--videos", videos, "--cache", tmp_path / "c", "--extractors", "vggish",
                 "--random-init", "--quiet")
    assert result.exit_code in (EXIT_PARTIAL, EXIT_INPUT) and "Traceback" not in result.output, result.output


def test_config_json_that_is_a_list_is_refused_on_resume(world, tmp_path):
    w = copy_world(world, tmp_path)
    out = tmp_path / "run"
    (out).mkdir()
    (out / "config.json").write_text("[1, 2, 3]")
    line = one_line_error(run(*train_args(w, out, "--resume")), "config.json")
    assert "--overwrite" in line


def test_extract_with_an_unknown_extractor_creates_nothing(tmp_path):
    result = run("extract", "--videos", tmp_path, "--cache", tmp_path / "c", "--extractors", "resnet153")
    assert result.exit_code == EXIT_USAGE and "resnet153" in result.output and not (tmp_path / "c").exists()


def test_negative_and_zero_options_are_one_line_errors(world, tmp_path):
    w = copy_world(world, tmp_path)
    for option, value in (("--epochs", "0"), ("--batch-size", "-4"), ("--lr", "-1"), ("--d-model", "0")):
        args = train_args(w, tmp_path / "run")
        if option in args:
            args[args.index(option) + 1] = value
        else:
            args += [option, value]
        line = one_line_error(run(*args), option)
        assert "expected" in line


def test_select_score_outside_the_registry_is_a_usage_error(world, tmp_path):
    result = run("select", "--cache", world["cache"], "--dataset", "tiny", "--annotations", world["ann_dir"],
                 "--audio", "a1", "--visual", "v1", "--out", tmp_path / "s", "--score", "segment.typeav")
    assert result.exit_code == EXIT_USAGE and "segment.type_at_av" in result.output


def test_weights_dir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "w").write_text("x")
    result = run("extract", "--videos", tmp_path, "--cache", tmp_path / "c", "--extractors", "vggish",
                 "--weights-dir", tmp_path / "w")
    assert result.exit_code in (EXIT_USAGE, EXIT_WEIGHTS, EXIT_INPUT) and "Traceback" not in result.output
    assert "w" in result.output


def test_store_attrs_with_a_bad_clip_list_are_refused(world, tmp_path):
    w = copy_world(world, tmp_path)
    store = find_store(w["cache"], "tiny", "a1")
    meta_path = Path(store.url) / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["clip_ids"] = "not a list"
    meta_path.write_text(json.dumps(meta))
    result = run(*train_args(w, tmp_path / "run"))
    assert result.exit_code == EXIT_INPUT and "Traceback" not in result.output, result.output


def _vfr_mp4(path: Path) -> None:
    """2 s at 30 fps, then 3 s at 15 fps, then 5 s at 25 fps: one stream, explicit timestamps."""
    import av
    from fractions import Fraction

    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 600)
        frames, t = [], 0
        for fps, seconds in ((30, 2), (15, 3), (25, 5)):
            for _ in range(fps * seconds):
                frames.append(av.VideoFrame.from_ndarray(np.full((48, 64, 3), t % 255, np.uint8), format="rgb24"))
                frames[-1].pts, frames[-1].time_base = t, Fraction(1, 600)
                t += 600 // fps
        _mux(container, stream, frames)


def test_variable_frame_rate_clip_is_noted_in_its_record(tmp_path):
    from avvp_pipe.pipeline.decode.clip import decode_clip

    videos = tmp_path / "videos"
    videos.mkdir()
    _vfr_mp4(videos / "CCCCCCCCCCC.mp4")
    clip = decode_clip(videos / "CCCCCCCCCCC.mp4", audio_rates=())
    assert any(n.startswith("variable frame rate") for n in clip.notes), clip.notes
    result = run("extract", "--videos", videos, "--cache", tmp_path / "c", "--extractors", "r2plus1d_18",
                 "--random-init", "--quiet")
    assert result.exit_code == 0, result.output
    store = find_store(str(tmp_path / "c"), tmp_path.name, "r2plus1d_18")
    assert "variable frame rate" in json.dumps(store.record("CCCCCCCCCCC"))


def test_constant_frame_rate_clips_get_no_vfr_note(tmp_path):
    from avvp_pipe.pipeline.decode.clip import decode_clip
    from avvp_pipe.pipeline.synth.clips import synthesize

    synthesize(tmp_path / "synth", 2, seed=3, workers=1, progress=False)
    for path in (tmp_path / "synth" / "videos").glob("*.mp4"):
        assert not any("variable" in n for n in decode_clip(path, audio_rates=()).notes)
