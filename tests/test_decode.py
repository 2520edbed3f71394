"""Clip decoding: the official frame choice, what is decoded, defined edge cases, time limits."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from avvp_pipe.pipeline.decode import clip as dec
from avvp_pipe.pipeline.decode.clip import (
    decode_clip,
    ffmpeg_rate_jpegs,
    official_frame_indices,
    save_npz,
    select_jpeg_positions,
)
from avvp_pipe.core.errors import EXIT_INPUT, ClipError
from avvp_pipe.pipeline.decode.video_io import probe, write_mp4
from tests import clips

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "llp"
REAL_CLIP = REAL / "BjCEufrlXm4.mp4"
REAL_JSON = REAL / "BjCEufrlXm4.frames.json"
NPZ_KEYS = {"frames", "frame_index", "frame_time", "audio_16k", "audio_48k"}


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> dict[str, Path]:
    return clips.make_fixture_set(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="module")
def real() -> dict:
    if not (REAL_CLIP.is_file() and REAL_JSON.is_file()):
        pytest.skip("the real LLP clip (../shared/llp/BjCEufrlXm4.mp4) is not present")
    return json.loads(REAL_JSON.read_text())


def _ticks(n: int, fps: float) -> tuple[np.ndarray, Fraction]:
    rate = Fraction(fps).limit_denominator(1001)
    return np.arange(n), rate


# ---------------------------------------------------------------- the real clip


def test_real_clip_all_82_jpegs_match_ffmpeg(real):
    tl = dec._read_timeline(str(REAL_CLIP))
    jpegs = ffmpeg_rate_jpegs(tl.pts, tl.time_base, tl.frame_rate, pkt_durations=tl.durations)
    assert jpegs.tolist() == real["ffmpeg_jpeg_source_index"]


def test_real_clip_jpeg_positions_match(real):
    n_jpegs = len(real["ffmpeg_jpeg_source_index"])
    assert select_jpeg_positions(n_jpegs, 80).tolist() == real["selected_jpeg_positions"]


def test_real_clip_decode_selects_the_official_80_frames(real):
    clip = decode_clip(REAL_CLIP)
    assert clip.frame_index.tolist() == real["selected_source_index"]
    assert clip.clip_id == "BjCEufrlXm4"
    assert clip.n_source_frames == real["source_frames"]
    assert clip.source_fps == pytest.approx(real["source_fps"])
    assert clip.frames.shape == (80, 240, 320, 3) and clip.frames.dtype == np.uint8
    assert clip.audio_16k.shape == (160000,) and clip.audio_48k.shape == (480000,)
    assert clip.notes == ()
    # The frames are the claimed ones: compare with an independent sequential PyAV decode.
    import av

    with av.open(str(REAL_CLIP)) as container:
        every = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    expected = np.stack([every[i] for i in real["selected_source_index"]])
    assert np.array_equal(clip.frames, expected)


def test_real_clip_rule_from_counts_only(real):
    got = official_frame_indices(real["source_frames"], real["source_fps"])
    assert got.tolist() == real["selected_source_index"]


# ---------------------------------------------------------------- the rule at other rates

RATES = [15.0, 15.5, 19.62, 23.976, 24.0, 25.0, 29.97, 30.0]


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "modern"])
@pytest.mark.parametrize("fps", RATES)
@pytest.mark.parametrize("seconds", [10.0, 9.9, 10.1])
def test_rule_sanity(fps, seconds, legacy):
    n = int(round(seconds * fps))
    ticks, rate = _ticks(n, fps)
    jpegs = ffmpeg_rate_jpegs(ticks, 1 / rate, rate, pkt_durations=np.ones(n), legacy_ffmpeg=legacy)
    if seconds == 10.0:
        assert 80 <= len(jpegs) <= 82
    assert jpegs[0] == 0 and jpegs[1] == 1  # as the official JPEGs
    assert np.all(np.diff(jpegs) >= 0) and jpegs.max() <= n - 1
    # JPEG k shows a frame from before slot k, lagging at most ~2.1 slots (1.1 + one frame).
    slot_of_frame = jpegs / float(rate) * 8  # (n_jpegs,)
    k = np.arange(len(jpegs))
    assert np.all(slot_of_frame <= k + 1e-6)
    assert np.all(slot_of_frame >= k - 2.2)
    chosen = official_frame_indices(n, fps, legacy_ffmpeg=legacy)
    assert chosen.shape == (80,) and np.all(np.diff(chosen) >= 0)


def test_legacy_and_modern_differ_only_below_16_fps():
    for fps in (15.0, 15.5, 17.3, 25.0, 29.97):
        n = int(round(10 * fps))
        same = np.array_equal(official_frame_indices(n, fps, legacy_ffmpeg=True),
                              official_frame_indices(n, fps, legacy_ffmpeg=False))
        assert same == (fps >= 16), fps


def _ffmpeg_binary() -> str | None:
    """A real ffmpeg, if this machine has one (PATH or the imageio-ffmpeg wheel)."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    return imageio_ffmpeg.get_ffmpeg_exe()


def _ffmpeg_major(binary: str) -> int | None:
    first = subprocess.run([binary, "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    digits = first.split("version")[1].strip().lstrip("n").split(".")[0] if "version" in first else ""
    return int(digits) if digits.isdigit() else None


@pytest.mark.parametrize("fps", [15.0, 19.62, 29.97])
def test_rule_matches_a_real_ffmpeg_binary(fps, tmp_path):
    binary = _ffmpeg_binary()
    if binary is None:
        pytest.skip("no ffmpeg binary here (PyAV has no -r/vsync logic to compare with)")
    major = _ffmpeg_major(binary)
    if fps < 16 and (major is None or major == 6):
        pytest.skip(f"ffmpeg {major}: unsure which duration rule it uses below 16 fps")
    clip = clips.make_clip(tmp_path / "x.mp4", seconds=10.0, fps=fps)
    subprocess.run([binary, "-v", "error", "-i", str(clip), "-r", "8", str(tmp_path / "%06d.png")], check=True)
    import av

    got = []
    for png in sorted(glob.glob(str(tmp_path / "*.png"))):
        with av.open(png) as container:
            got.append(clips.read_index(next(container.decode(video=0)).to_ndarray(format="rgb24")))
    tl = dec._read_timeline(str(clip))
    mine = ffmpeg_rate_jpegs(tl.pts, tl.time_base, tl.frame_rate, pkt_durations=tl.durations,
                             legacy_ffmpeg=major is not None and major < 6)
    assert got == mine.tolist()


# ---------------------------------------------------------------- synthetic clips


@pytest.mark.parametrize("kind,fps", [("normal", 30.0), ("odd_fps", 19.62)])
def test_decoded_frames_are_the_claimed_ones(fx, kind, fps):
    clip = decode_clip(fx[kind])
    assert clip.frames.shape == (80, 48, 64, 3)
    assert [clips.read_index(f) for f in clip.frames] == clip.frame_index.tolist()
    n = int(round(10 * fps))
    assert clip.n_source_frames == n and clip.source_fps == pytest.approx(fps)
    assert clip.frame_index.tolist() == official_frame_indices(n, fps).tolist()
    assert np.allclose(clip.frame_time, clip.frame_index / fps)
    assert clip.notes == () and clip.has_audio


@pytest.mark.parametrize("audio_path", ["moviepy", "soxr"])
def test_audio_lengths_and_rates(fx, audio_path):
    clip = decode_clip(fx["normal"], audio_path=audio_path)
    # The official (moviepy) path asks ffmpeg for stereo: a mono source is up-mixed at -3 dB.
    gain16 = 1 / np.sqrt(2) if audio_path == "moviepy" else 1.0
    for audio, rate, gain in ((clip.audio_16k, 16000, gain16), (clip.audio_48k, 48000, 1.0)):
        assert audio.shape == (10 * rate,) and audio.dtype == np.float32
        spectrum = np.abs(np.fft.rfft(audio))
        peak_hz = np.argmax(spectrum) * rate / len(audio)
        assert peak_hz == pytest.approx(clips.TONE_HZ, abs=1.0)  # right rate, not just right length
        assert np.sqrt(np.mean(audio**2)) == pytest.approx(gain * clips.TONE_AMPLITUDE / np.sqrt(2), rel=0.05)


def test_short_clip_is_padded_by_the_aligned_rule(fx):
    clip = decode_clip(fx["short"], frame_rule="aligned")  # 6 s at 30 fps: 180 frames
    padded = [n for n in clip.notes if n.startswith("video padded 6.00s->10s")]
    assert padded and any(n.startswith("audio padded") for n in clip.notes)
    assert clip.frames.shape[0] == 80
    n_repeats = int(padded[0].split("(")[1].split(" ")[0])
    assert n_repeats >= 80 - 52  # a 6 s clip gives ~50 JPEGs at 8 fps
    tail = clip.frame_index[-n_repeats - 1 :]
    assert np.all(tail == tail[-1]) and tail[-1] >= 176  # the last frame held
    assert [clips.read_index(f) for f in clip.frames] == clip.frame_index.tolist()
    assert np.all(clip.audio_16k[int(6.1 * 16000) :] == 0)  # zeros after the source audio
    assert np.sqrt(np.mean(clip.audio_16k[: 5 * 16000] ** 2)) > 0.2  # 0.25: the official path's -3 dB up-mix


def test_long_clip_is_trimmed_by_the_aligned_rule(fx):
    clip = decode_clip(fx["long"], frame_rule="aligned")  # 12 s at 30 fps
    assert "video trimmed 12.00s->10s" in clip.notes
    assert any(n.startswith("audio trimmed 12.0") for n in clip.notes)
    assert clip.frame_index.max() < 300 and clip.frame_time.max() < 10.0
    # Trimming means "as if the clip were cut at 10 s": same frames as a true 10 s clip.
    assert clip.frame_index.tolist() == official_frame_indices(300, 30.0, frame_rule="aligned").tolist()
    assert clip.frame_index.tolist() == official_frame_indices(360, 30.0, frame_rule="aligned").tolist()
    assert clip.audio_16k.shape == (160000,) and np.abs(clip.audio_16k[-1600:]).max() > 0.3


def test_no_audio_stream(fx):
    clip = decode_clip(fx["no_audio"])
    assert clip.has_audio is False
    assert clip.audio_16k is None and clip.audio_48k is None
    assert "no audio stream" in clip.notes
    assert [clips.read_index(f) for f in clip.frames] == clip.frame_index.tolist()


def test_audio_not_requested(fx):
    clip = decode_clip(fx["normal"], audio_rates=(16000,))
    assert clip.audio_16k.shape == (160000,) and clip.audio_48k is None and clip.has_audio
    clip = decode_clip(fx["normal"], audio_rates=())
    assert clip.audio_16k is None and clip.audio_48k is None and clip.notes == ()
    with pytest.raises(ValueError, match="audio_rates"):
        decode_clip(fx["normal"], audio_rates=(22050,))


@pytest.mark.parametrize("kind,reason", [
    ("empty", "empty"), ("garbage", "could not open"), ("truncated", "could not open"),
    ("corrupt", "decod"),
])
def test_bad_files_raise_clip_error(fx, kind, reason):
    with pytest.raises(ClipError, match=reason) as info:
        decode_clip(fx[kind])
    assert str(fx[kind]) in str(info.value) and "\n" not in str(info.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ClipError, match="does not exist"):
        decode_clip(tmp_path / "nope.mp4")
    with pytest.raises(ClipError, match="regular"):
        decode_clip(tmp_path)


def test_in_process_decode_equals_worker_decode(fx):
    a = decode_clip(fx["odd_fps"], timeout_s=None)
    b = decode_clip(fx["odd_fps"])
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio_48k, b.audio_48k)


# ---------------------------------------------------------------- time limit


def test_timeout_kills_a_hanging_job_and_recovers(fx):
    start = time.monotonic()
    with pytest.raises(ClipError, match=r"timed out after 0.5s"):
        dec._run_with_timeout(time.sleep, (30,), 0.5, "slow.mp4")
    assert time.monotonic() - start < 10
    assert getattr(dec._local, "worker", None) is None  # the hung worker is gone
    assert decode_clip(fx["normal"]).frames.shape[0] == 80  # a fresh worker takes over


def test_tiny_timeout_on_a_real_decode(fx):
    with pytest.raises(ClipError, match="timed out"):
        decode_clip(fx["normal"], timeout_s=0.001)


def test_worker_crash_becomes_clip_error():
    with pytest.raises(ClipError, match="died"):
        dec._run_with_timeout(os._exit, (3,), 10, "crash.mp4")


# ---------------------------------------------------------------- saving and the CLI


def test_save_npz_roundtrip(fx, tmp_path):
    clip = decode_clip(fx["no_audio"])
    out = tmp_path / "x.npz"
    save_npz(clip, out)
    with np.load(out) as data:
        assert set(data.files) == NPZ_KEYS
        assert np.array_equal(data["frames"], clip.frames)
        assert np.array_equal(data["frame_index"], clip.frame_index)
        assert data["audio_16k"].shape == (0,)  # no audio stream: empty array
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npz"]  # no temp file left


def test_cli_decode_writes_npz(fx, tmp_path):
    from avvp_pipe.pipeline.cli import cli

    out = tmp_path / "clip.npz"
    result = CliRunner().invoke(cli, ["decode", str(fx["short"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "(80, 48, 64, 3)" in result.output and "official rule, some repeat" in result.output
    with np.load(out) as data:
        assert set(data.files) == NPZ_KEYS
        assert data["frames"].shape == (80, 48, 64, 3) and data["audio_48k"].shape == (480000,)


def test_cli_decode_bad_file(fx, tmp_path):
    from avvp_pipe.pipeline.cli import cli

    result = CliRunner().invoke(cli, ["decode", str(fx["garbage"]), "--out", str(tmp_path / "g.npz")])
    assert result.exit_code == EXIT_INPUT
    assert "error:" in result.output and not (tmp_path / "g.npz").exists()


# ---------------------------------------------------------------- video_io


def test_write_mp4_fractional_rate(tmp_path):
    frames = np.stack([clips.index_frame(i) for i in range(98)])  # (98, 48, 64, 3)
    t = np.arange(44100 * 5) / 44100
    write_mp4(tmp_path / "a.mp4", frames, 19.62, (0.1 * np.sin(t)).astype(np.float32))
    info = probe(tmp_path / "a.mp4")
    assert info["n_frames"] == 98 and info["fps"] == pytest.approx(19.62)
    assert info["duration"] == pytest.approx(98 / 19.62, abs=1e-6)
    assert (info["width"], info["height"], info["has_audio"], info["sample_rate"]) == (64, 48, True, 44100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]


def test_write_mp4_rejects_odd_sizes(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_mp4(tmp_path / "b.mp4", np.zeros((3, 47, 64, 3), np.uint8), 25)
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind
