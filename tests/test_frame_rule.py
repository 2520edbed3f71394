"""The official frame rule for clips of any length, the aligned rule, and decord's count check."""

from __future__ import annotations

import glob
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from avvp_pipe.core.errors import ClipError
from avvp_pipe.pipeline.decode import clip as dec
from avvp_pipe.pipeline.decode.clip import decode_clip, ffmpeg_rate_jpegs, official_frame_indices
from tests import clips
from tests.test_decode import REAL_CLIP, _ffmpeg_binary, _ffmpeg_major, real  # noqa: F401 (fixture)

#: (seconds, fps): shorter and longer than 10 s, as LLP clips whose source ended early or ran on.
LENGTHS = [(3.5, 25.0), (6.0, 30.0), (9.5, 29.97), (10.0, 25.0), (10.7, 24.0), (12.0, 30.0)]


@pytest.fixture(scope="module")
def lengths(tmp_path_factory) -> dict[tuple[float, float], Path]:
    folder = tmp_path_factory.mktemp("lengths")
    return {(s, f): clips.make_clip(folder / f"len{s}_{f}.mp4", seconds=s, fps=f, audio=False)
            for s, f in LENGTHS}


def _by_hand(n_frames: int, fps: float) -> np.ndarray:
    """From scratch: every JPEG of ``-r 8`` (frame k at k / fps), then the official linspace."""
    from fractions import Fraction

    rate = Fraction(fps).limit_denominator(1001)
    jpegs = ffmpeg_rate_jpegs(np.arange(n_frames), 1 / rate, rate, pkt_durations=np.ones(n_frames))
    return jpegs[np.round(np.linspace(0, len(jpegs) - 1, 80)).astype(int)]


@pytest.mark.parametrize("seconds,fps", LENGTHS, ids=[f"{s}s@{f}" for s, f in LENGTHS])
def test_official_rule_spreads_80_frames_over_every_jpeg(lengths, seconds, fps):
    clip = decode_clip(lengths[(seconds, fps)], audio_rates=(), timeout_s=None)
    n = int(round(seconds * fps))
    assert clip.frame_index.tolist() == _by_hand(n, fps).tolist()
    assert clip.frame_index.tolist() == official_frame_indices(n, fps).tolist()
    assert [clips.read_index(f) for f in clip.frames] == clip.frame_index.tolist()  # the claimed frames
    assert clip.frame_index[0] == 0 and clip.frame_index[-1] >= n - 1 - fps / 8 * 2.2  # the whole clip
    if abs(seconds - 10) > 0.05:
        assert any("official rule" in note for note in clip.notes)


@pytest.mark.parametrize("seconds,fps", [(6.0, 30.0), (12.0, 30.0)])
def test_aligned_rule_differs_off_10_s_and_keeps_the_first_10_s(lengths, seconds, fps):
    official = decode_clip(lengths[(seconds, fps)], audio_rates=(), timeout_s=None)
    aligned = decode_clip(lengths[(seconds, fps)], audio_rates=(), timeout_s=None, frame_rule="aligned")
    assert (official.frame_index != aligned.frame_index).sum() > 40  # most positions differ
    assert aligned.frame_time.max() < 10.0
    if seconds > 10:
        assert official.frame_time.max() > 11.0  # official reaches the end of a long clip


def test_rules_agree_on_a_10_s_clip(lengths):
    path = lengths[(10.0, 25.0)]
    a = decode_clip(path, audio_rates=(), timeout_s=None)
    b = decode_clip(path, audio_rates=(), timeout_s=None, frame_rule="aligned")
    assert a.frame_index.tolist() == b.frame_index.tolist() and a.notes == b.notes == ("no audio stream",)


def test_rules_agree_on_the_real_clip(real):
    a = decode_clip(REAL_CLIP, audio_rates=(), timeout_s=None)
    b = decode_clip(REAL_CLIP, audio_rates=(), timeout_s=None, frame_rule="aligned")
    assert a.frame_index.tolist() == b.frame_index.tolist() == real["selected_source_index"]


def test_unknown_rule_is_refused(lengths):
    with pytest.raises(ValueError, match="frame_rule"):
        decode_clip(lengths[(10.0, 25.0)], frame_rule="nearest")


@pytest.mark.parametrize("seconds,fps", [(3.5, 25.0), (12.0, 30.0)])
def test_official_rule_matches_a_real_ffmpeg_on_any_length(lengths, seconds, fps, tmp_path):
    """The whole official recipe: ffmpeg -r 8 writes n images, keep linspace(0, n - 1, 80)."""
    binary = _ffmpeg_binary()
    if binary is None:
        pytest.skip("no ffmpeg binary here (pip install imageio-ffmpeg gives one)")
    path = lengths[(seconds, fps)]
    subprocess.run([binary, "-v", "error", "-i", str(path), "-r", "8", str(tmp_path / "%06d.png")], check=True)
    pngs = sorted(glob.glob(str(tmp_path / "*.png")))
    import av

    chosen = [pngs[i] for i in np.round(np.linspace(0, len(pngs) - 1, 80)).astype(int)]
    expected = []
    for png in chosen:
        with av.open(png) as container:
            expected.append(clips.read_index(next(container.decode(video=0)).to_ndarray(format="rgb24")))
    clip = decode_clip(path, audio_rates=(), timeout_s=None,
                       legacy_ffmpeg=(_ffmpeg_major(binary) or 0) < 6)
    assert clip.frame_index.tolist() == expected


def test_decord_frame_count_must_equal_the_packet_count(lengths, monkeypatch):
    import decord

    real_reader = decord.VideoReader

    class OneMore:  # a reader that reports one frame more than the container has packets
        def __init__(self, *args, **kwargs):
            self.inner = real_reader(*args, **kwargs)

        def __len__(self):
            return len(self.inner) + 1

        def get_batch(self, idx):
            return self.inner.get_batch(idx)

    monkeypatch.setattr(decord, "VideoReader", OneMore)
    path = lengths[(10.0, 25.0)]
    with pytest.raises(ClipError, match=r"expected 250 video frames \(the container's packets\) but decord found 251"):
        decode_clip(path, audio_rates=(), timeout_s=None, decoder="decord")


def test_frames_json_documents_an_official_rule_case(real):
    """The real clip has 82 JPEGs: the official linspace skips two, which the aligned padding never reaches."""
    assert len(real["ffmpeg_jpeg_source_index"]) == 82
    assert json.dumps(real["selected_jpeg_positions"][:3]) == "[0, 1, 2]"
    tl = dec._read_timeline(str(REAL_CLIP))
    assert len(tl.pts) == real["source_frames"]


# ---------------------------------------------------------------- store keys and the CLI


def _fake_extractor(modality: str):
    from types import SimpleNamespace

    return SimpleNamespace(config=lambda: {"name": "x", "options": {}}, spec=SimpleNamespace(modality=modality),
                           options={})


def test_frame_rule_keys_visual_stores_only():
    from avvp_pipe.cache.store import store_key
    from avvp_pipe.pipeline.extract.plan import ExtractOptions, decode_provenance, store_config

    visual, audio = _fake_extractor("visual-2d"), _fake_extractor("audio")
    official, aligned = store_config(visual, "fp32", "official"), store_config(visual, "fp32", "aligned")
    assert official["frame_rule"] == "official" and "frame_rule" not in aligned  # aligned keeps old keys
    assert store_key(official, "float32") != store_key(aligned, "float32")
    assert store_config(audio, "fp32", "official") == store_config(audio, "fp32", "aligned")
    prov = decode_provenance(visual, ExtractOptions(extractors=("x",), frame_rule="aligned"))
    assert prov["frame_rule"] == "aligned" and "10 s" in prov["rule"]
    with pytest.raises(Exception, match="--frame-rule"):
        ExtractOptions(extractors=("x",), frame_rule="nearest")


def test_vggish_audio_path_keys_the_store():
    from avvp_pipe.extractors import create
    from avvp_pipe.pipeline.extract.plan import ExtractUsageError, audio_path_16k

    moviepy = create("vggish", device="cpu", random_init=True)
    soxr = create("vggish", device="cpu", random_init=True, audio_path="soxr")
    assert moviepy.config()["options"]["audio_path"] == "moviepy"
    assert "audio_path" not in soxr.config()["options"]  # stores made before the option keep their keys
    assert audio_path_16k({"a": moviepy}) == "moviepy" and audio_path_16k({"b": soxr}) == "soxr"
    with pytest.raises(ExtractUsageError, match="different audio paths"):
        audio_path_16k({"a": moviepy, "b": soxr})


def test_cli_decode_frame_rule_and_audio_path(lengths, tmp_path):
    from click.testing import CliRunner

    from avvp_pipe.pipeline.cli import cli

    path = lengths[(6.0, 30.0)]
    for rule, note in (("official", "official rule, some repeat"), ("aligned", "video padded")):
        out = tmp_path / f"{rule}.npz"
        result = CliRunner().invoke(cli, ["decode", str(path), "--out", str(out), "--frame-rule", rule,
                                          "--audio-path", "soxr", "--timeout", "0"])
        assert result.exit_code == 0, result.output
        assert note in result.output
