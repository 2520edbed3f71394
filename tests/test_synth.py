"""Tests for ``avvp-pipe synth``: determinism, file format, truth, signals, resume, CLI.

Clips are tiny (64x48, 10 fps, 16 kHz audio) so the whole file stays fast on two cores.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner

from avvp_pipe.pipeline.synth import clips as synth
from avvp_pipe.core.errors import AvvpError
from avvp_pipe.pipeline.llp.annotations import CLASSES, NUM_CLASSES, SECONDS, load_annotations
from avvp_pipe.pipeline.decode.video_io import probe

LLP_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "llp"
SMALL = {"size": (64, 48), "fps": 10.0, "sample_rate": 16000, "progress": False}


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _truth(out: Path) -> dict[str, np.ndarray]:
    with np.load(out / "truth.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """One small synthetic dataset shared by the read-only tests."""
    out = tmp_path_factory.mktemp("synth") / "a"
    synth.synthesize(out, 5, seed=11, **SMALL)
    return out


# ------------------------------------------------------------------ determinism
def _decode(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Frames (n, H, W, 3) uint8 and mono samples (m,) float32 of a clip."""
    with av.open(str(path)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with av.open(str(path)) as container:
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    return frames, samples


def test_same_seed_same_output_any_workers(made: Path, tmp_path: Path) -> None:
    """Same seed -> identical truth and annotation bytes and the same clips, with 1 or 2 workers.

    The mp4 bytes are not compared: libx264's mb-tree rate control is not bit-reproducible
    run to run on tiny frames (measured: ~1 in 8 encodes of a 64x48 clip differ), so the
    decoded audio must be identical and the decoded frames nearly so.
    """
    again = tmp_path / "b"
    synth.synthesize(again, 5, seed=11, workers=2, **SMALL)
    first, second = _files(made), _files(again)
    assert first.keys() == second.keys()
    for name in first:
        if not name.endswith(".mp4"):
            assert first[name] == second[name], name
    for path in sorted((made / "videos").glob("*.mp4")):
        frames_a, audio_a = _decode(path)
        frames_b, audio_b = _decode(again / "videos" / path.name)
        np.testing.assert_array_equal(audio_a, audio_b)
        assert frames_a.shape == frames_b.shape
        assert np.abs(frames_a.astype(np.int16) - frames_b).mean() < 1.0
    other = tmp_path / "c"
    synth.synthesize(other, 5, seed=12, **SMALL)
    assert _files(other)["truth.npz"] != first["truth.npz"]
    assert not set(_truth(other)["video_ids"]) & set(_truth(made)["video_ids"])


def test_ids_look_like_youtube_and_prefix_stable() -> None:
    ids = synth.make_ids(200, seed=3)
    assert len(set(ids)) == 200
    assert all(len(i) == 11 and set(i) <= set(synth._ID_CHARS.tolist()) for i in ids)
    assert synth.make_ids(50, seed=3) == ids[:50]
    assert synth.make_ids(50, seed=4) != ids[:50]


# ------------------------------------------------------------------ files
def test_clip_format(made: Path) -> None:
    clips = sorted((made / "videos").glob("*.mp4"))
    assert len(clips) == 5
    for path in clips:
        info = probe(path)
        assert abs(info["duration"] - SECONDS) <= 1 / 10.0
        assert (info["width"], info["height"]) == (64, 48)
        assert info["fps"] == pytest.approx(10.0)
        assert info["has_audio"] and info["sample_rate"] == 16000
        with av.open(str(path)) as container:
            assert container.streams.video[0].codec_context.name == "h264"
            assert container.streams.audio[0].codec_context.name == "aac"
        _, samples = _decode(path)
        assert abs(len(samples) / 16000 - SECONDS) < 0.1
        assert np.sqrt(np.mean(samples**2)) > 1e-3  # audio is not silent


def test_annotations_load_and_match_truth(made: Path) -> None:
    ann = load_annotations(made / "annotations")
    truth = _truth(made)
    ids = list(truth["video_ids"])
    assert list(ann.clips) == ids  # train, then val, then test, in truth order
    assert Counter(c.split for c in ann.clips.values()) == Counter(truth["splits"].tolist())
    for clip in ann.clips.values():
        start, end = (int(x) for x in clip.filename.rsplit("_", 2)[1:])
        assert clip.filename.startswith(clip.id) and start % 10 == 0 and end == start + 10
    for split in ("val", "test"):
        rows = np.isin(truth["splits"], [split])
        assert rows.any()
        np.testing.assert_array_equal(ann.dense(split, "audio"), truth["audio"][rows])
        np.testing.assert_array_equal(ann.dense(split, "visual"), truth["visual"][rows])
    full = (made / "annotations" / "AVVP_dataset_full.csv").read_text().splitlines()
    assert len(full) == 1 + len(ids)


def test_weak_labels_are_union_of_dense(made: Path) -> None:
    ann = load_annotations(made / "annotations")
    truth = _truth(made)
    present = (truth["audio"] | truth["visual"]).any(2)  # (N, 25)
    np.testing.assert_array_equal(ann.weak_labels("all").astype(bool), present)
    assert present.any(1).all()


@pytest.mark.parametrize("split", ["train", "test"])
def test_builtin_structure_is_llp_like(split: str) -> None:
    rng = np.random.default_rng(0)
    grids = [synth.sample_label_structure(rng, split) for _ in range(1500)]
    audio = np.stack([a for a, _ in grids]).astype(bool)  # (N, 25, 10)
    visual = np.stack([v for _, v in grids]).astype(bool)
    heard, seen = audio.any(2), visual.any(2)  # (N, 25)
    counts = Counter((heard | seen).sum(1).tolist())
    assert min(counts) >= 1
    if split == "train":  # facts: 40 % one label, 59 % two, 1 % three
        assert set(counts) <= {1, 2, 3}
        assert abs(counts[1] / 1500 - 0.40) < 0.05 and abs(counts[2] / 1500 - 0.59) < 0.05
    both, audio_only, visual_only = (heard & seen).sum(), (heard & ~seen).sum(), (~heard & seen).sum()
    assert both > audio_only > visual_only > 0  # AV most common, then audio-only, as in LLP
    assert (audio.sum(2)[heard] == SECONDS).mean() > 0.3  # events often span the whole clip
    background = ~(audio | visual).any(1)  # (N, 10) seconds with no event at all
    assert 0.0 < background.mean() < 0.15
    assert heard[:, CLASSES.index("Speech")].mean() > 0.3  # LLP's class prior: Speech is common


# ------------------------------------------------------------------ signals
def _rms_per_second(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    return np.sqrt(np.mean(wave.reshape(SECONDS, sample_rate).astype(np.float64) ** 2, axis=1))  # (10,)


@pytest.mark.parametrize("c", range(NUM_CLASSES), ids=list(CLASSES))
def test_audio_only_in_event_seconds(c: int) -> None:
    grid = np.zeros((NUM_CLASSES, SECONDS), np.uint8)
    grid[c, 2:5] = 1
    grid[c, 8] = 1
    wave = synth.render_audio(grid, np.random.default_rng(c), 16000)
    assert wave.shape == (SECONDS * 16000,) and wave.dtype == np.float32 and np.abs(wave).max() <= 1
    rms = _rms_per_second(wave, 16000)
    active = grid[c].astype(bool)
    assert rms[active].min() > 8 * rms[~active].max(), rms


def test_class_sounds_are_separable() -> None:
    """Nearest-centroid on per-second log spectra, trained on one draw and tested on another."""
    sr = 16000
    bands = np.geomspace(125, 7500, 41)

    def features(c: int, seed: int) -> np.ndarray:
        grid = np.zeros((NUM_CLASSES, SECONDS), np.uint8)
        grid[c] = 1
        wave = synth.render_audio(grid, np.random.default_rng(seed), sr).reshape(SECONDS, sr)
        power = np.abs(np.fft.rfft(wave, axis=1)) ** 2  # (10, sr/2+1), 1 Hz bins
        edges = bands.astype(int)
        per_band = np.add.reduceat(power, edges[:-1], axis=1)[:, :-1]  # (10, 40)
        return np.log(per_band + 1e-3)

    train = np.stack([features(c, 100 + c).mean(0) for c in range(NUM_CLASSES)])  # (25, 40)
    test = np.stack([features(c, 500 + c) for c in range(NUM_CLASSES)])  # (25, 10, 40)
    dist = ((test[:, :, None, :] - train[None, None]) ** 2).sum(-1)  # (25, 10, 25)
    accuracy = (dist.argmin(-1) == np.arange(NUM_CLASSES)[:, None]).mean()
    assert accuracy > 0.95


@pytest.mark.parametrize("c", range(NUM_CLASSES), ids=list(CLASSES))
def test_sprite_only_in_visual_seconds(c: int) -> None:
    grid = np.zeros((NUM_CLASSES, SECONDS), np.uint8)
    grid[c, 3:7] = 1
    frames = synth.render_video(grid, np.random.default_rng(c), (64, 48), 10.0)
    assert frames.shape == (100, 48, 64, 3) and frames.dtype == np.uint8
    diff = np.abs(frames.astype(np.int16) - frames[0].astype(np.int16))  # (100, 48, 64, 3), frame 0 is background
    changed = (diff.max(-1) > 40).mean(axis=(1, 2)).reshape(SECONDS, 10)  # (10, 10) share of pixels per frame
    mean_diff = diff.mean(axis=(1, 2, 3)).reshape(SECONDS, 10)  # (10, 10)
    active = grid[c].astype(bool)
    assert changed[active].min() > 0.03 and mean_diff[active].min() > 1.5, changed.min(1)
    assert mean_diff[~active].max() == 0.0  # background seconds are static


def test_sprites_differ_between_classes() -> None:
    """Each class's sprite (shape x colour x stripes) differs from every other class's."""
    looks = []
    for c in range(NUM_CLASSES):
        rgb, alpha = synth._sprite(c, 20, np.random.default_rng(0))
        looks.append(rgb * alpha[..., None] / 255.0)  # (43, 43, 3)
    looks = np.stack(looks)
    dist = np.abs(looks[:, None] - looks[None]).mean(axis=(2, 3, 4))  # (25, 25)
    off_diagonal = dist[~np.eye(NUM_CLASSES, dtype=bool)]
    assert off_diagonal.min() > 0.05


def test_overlapping_events_mix() -> None:
    grid = np.zeros((NUM_CLASSES, SECONDS), np.uint8)
    grid[[0, 9, 19]] = 1
    frames = synth.render_video(grid, np.random.default_rng(1), (160, 120), 10.0)
    hues = {synth.SPRITES[c].hue for c in (0, 9, 19)}
    assert len(hues) == 3
    # red, yellow and blue sprites are all drawn: saturated pixels of different dominant channels
    sat = frames[5].max(-1).astype(int) - frames[5].min(-1)  # (H, W)
    colourful = frames[5][sat > 120]
    assert len(np.unique(np.argmax(colourful, axis=1))) >= 2
    single = np.zeros_like(grid)
    single[0] = 1
    both = synth.render_audio(grid, np.random.default_rng(2), 16000)
    one = synth.render_audio(single, np.random.default_rng(2), 16000)
    assert np.sqrt(np.mean(both**2)) > 1.3 * np.sqrt(np.mean(one**2))


# ------------------------------------------------------------------ real structures
@pytest.mark.skipif(not LLP_DIR.is_dir(), reason="real LLP annotation files not present")
def test_structures_sampled_from_real_rows() -> None:
    real = synth.RealStructures.from_folder(LLP_DIR)
    ann = load_annotations(LLP_DIR)
    eval_ids = ann.split_ids("val") + ann.split_ids("test")
    real_a, real_v = ann.dense(eval_ids, "audio").any(2), ann.dense(eval_ids, "visual").any(2)
    real_keys = {(a.tobytes(), v.tobytes()) for a, v in zip(real_a, real_v)}
    real_sets = {frozenset(c.labels) for c in ann.clips.values() if c.split == "train"}
    plans = synth.plan_dataset(300, seed=5, split_fractions=(0.5, 0.25, 0.25), real=real)
    for plan in plans:
        labels = frozenset(plan.clip.labels)
        assert labels == frozenset(np.flatnonzero((plan.audio | plan.visual).any(1)).tolist())
        if plan.clip.split == "train":
            assert labels in real_sets
        else:  # same heard and seen classes as a real val/test clip (time-warped)
            key = (plan.audio.any(1).tobytes(), plan.visual.any(1).tobytes())
            assert key in real_keys
    # val/test grids are real ones, some copied as they are and some warped in time
    real_grids = {a.tobytes() + v.tobytes() for a, v in zip(real.audio, real.visual)}
    copied = [p.audio.tobytes() + p.visual.tobytes() in real_grids for p in plans if p.clip.split != "train"]
    assert 0 < sum(copied) < len(copied)


@pytest.mark.skipif(not LLP_DIR.is_dir(), reason="real LLP annotation files not present")
def test_cli_with_real_annotations(tmp_path: Path) -> None:
    from avvp_pipe.pipeline.cli import cli

    out = tmp_path / "r"
    args = ["synth", str(out), "--clips", "3", "--seed", "2", "--size", "64x48", "--fps", "10",
            "--sample-rate", "16000", "--annotations", str(LLP_DIR), "--quiet"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "3 clips" in result.output and "clips/s" in result.output
    ann = load_annotations(out / "annotations")
    assert len(ann.clips) == 3
    assert len(list((out / "videos").glob("*.mp4"))) == 3


# ------------------------------------------------------------------ resume
def _frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(np.int16)


def _assert_same_video(path: Path, original: bytes, scratch: Path) -> None:
    """The re-rendered clip is the original one: the same bytes, or (libx264's mb-tree rate control
    is not bit-reproducible in every process state, see synth's docstring) the same frames within
    a level or two on average."""
    if path.read_bytes() == original:
        return
    scratch.write_bytes(original)
    got, want = _frames(path), _frames(scratch)
    assert got.shape == want.shape
    assert float(np.abs(got - want).mean()) < 2.0


def test_resume_keeps_complete_clips(made: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    (out / "videos").mkdir(parents=True)
    for path in made.rglob("*"):
        if path.is_file():
            target = out / path.relative_to(made)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    clips = sorted((out / "videos").glob("*.mp4"))
    removed, corrupt, kept = clips[0], clips[1], clips[2:]
    original = removed.read_bytes()
    removed.unlink()
    corrupt.write_bytes(b"not an mp4")
    stale = out / "videos" / f".{removed.stem}.abc123.mp4"  # temp file of an interrupted write
    stale.write_bytes(b"half")
    before = {p: p.stat().st_mtime_ns for p in kept}
    result = synth.synthesize(out, 5, seed=11, **SMALL)
    assert (result.rendered, result.kept, result.replaced) == (2, 3, [corrupt.name])
    assert all(p.stat().st_mtime_ns == before[p] for p in kept)
    _assert_same_video(removed, original, tmp_path / "original.mp4")
    assert not stale.exists()
    with pytest.raises(AvvpError, match="seed"):
        synth.synthesize(out, 5, seed=12, **SMALL)


def test_interrupted_run_leaves_no_half_clip(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "i"
    real_render = synth.render_video
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_render(*args, **kwargs)

    monkeypatch.setattr(synth, "render_video", failing)
    with pytest.raises(KeyboardInterrupt):
        synth.synthesize(out, 3, seed=4, **SMALL)
    names = [p.name for p in (out / "videos").iterdir()]
    assert len(names) == 1 and not names[0].startswith(".")
    assert not (out / "truth.npz").exists()  # written only once every clip exists
    monkeypatch.setattr(synth, "render_video", real_render)
    seen = []
    result = synth.synthesize(out, 3, seed=4, **{**SMALL, "progress": lambda *a: seen.append(a)})
    assert (result.rendered, result.kept) == (2, 1)
    assert [(done, total) for done, total, _ in seen] == [(1, 2), (2, 2)]


# ------------------------------------------------------------------ CLI and options
def test_cli_runs_and_prints_summary(tmp_path: Path) -> None:
    from avvp_pipe.pipeline.cli import cli

    out = tmp_path / "cli"
    args = ["synth", str(out), "--clips", "2", "--seed", "1", "--size", "64x48", "--fps", "10",
            "--sample-rate", "16000", "--splits", "0.5,0.5,0"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "rendered 2, kept 0" in result.output and "clips/s" in result.output
    assert "train 1, val 1, test 0" in result.output
    again = CliRunner().invoke(cli, args + ["--quiet"])
    assert again.exit_code == 0 and "rendered 0, kept 2" in again.output


@pytest.mark.parametrize("size", ["320by240", "63x48", "8x8", "x"])
def test_cli_rejects_bad_size(tmp_path: Path, size: str) -> None:
    from avvp_pipe.pipeline.cli import cli

    result = CliRunner().invoke(cli, ["synth", str(tmp_path / "o"), "--clips", "1", "--size", size])
    assert result.exit_code == 3
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --size"), result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("splits", ["0.8,0.1", "0.5,0.5,0.5", "a,b,c", "0,0.5,0.5"])
def test_bad_splits_rejected(splits: str) -> None:
    with pytest.raises(AvvpError, match="--splits"):
        synth.parse_fractions(splits)


def test_split_counts() -> None:
    assert synth.split_counts(10, (0.8, 0.1, 0.1)) == {"train": 8, "val": 1, "test": 1}
    assert synth.split_counts(3, (0.8, 0.1, 0.1)) == {"train": 1, "val": 1, "test": 1}
    assert synth.split_counts(7, (1.0, 0.0, 0.0)) == {"train": 7, "val": 0, "test": 0}
    counts = synth.split_counts(11849, (0.8, 0.1, 0.1))
    assert sum(counts.values()) == 11849


def test_truth_npz_is_byte_stable(tmp_path: Path) -> None:
    plans = synth.plan_dataset(4, seed=9)
    first = synth.write_truth(tmp_path / "a.npz", plans).read_bytes()
    os.utime(tmp_path / "a.npz", (0, 0))
    second = synth.write_truth(tmp_path / "b.npz", plans).read_bytes()
    assert first == second
    with np.load(tmp_path / "b.npz") as data:
        assert data["audio"].shape == (4, NUM_CLASSES, SECONDS) and data["audio"].dtype == np.uint8
        assert list(data["video_ids"]) == [p.clip.id for p in plans]


def test_labels_only_matches_the_rendered_dataset(made: Path, tmp_path: Path) -> None:
    """--labels-only writes the same annotation files as a full run with the same options, and no video."""
    from avvp_pipe.pipeline.cli import cli

    rendered = made / "annotations"
    out = tmp_path / "labels"
    result = CliRunner().invoke(cli, ["synth", str(out), "--clips", "5", "--seed", "11", "--labels-only"])
    assert result.exit_code == 0, result.output
    assert not (out / "videos").exists()
    for name in sorted(p.name for p in rendered.iterdir()):
        assert (out / "annotations" / name).read_text() == (rendered / name).read_text(), name
