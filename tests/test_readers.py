"""Two frame readers, one frame choice: decord and torchcodec give the same official frames.

The frames are chosen once (pipeline/decode/clip.py replays ffmpeg's -r 8 rule); a reader only
decodes those indices. Synthetic clips whose frames spell their own index, at rates around and
below 8 fps' multiples, and the real LLP clip when ../shared/llp has it.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from avvp_pipe.core.errors import AvvpError, ClipError
from avvp_pipe.pipeline.decode import clip as dec
from avvp_pipe.pipeline.decode import readers
from avvp_pipe.pipeline.decode.clip import decode_clip
from tests.clips import make_clip, read_index
from tests.conftest import SHARED_LLP

needs_torchcodec = pytest.mark.skipif(readers.torchcodec_problem() is not None,
                                      reason=f"torchcodec cannot decode here: {readers.torchcodec_problem()}")
REAL_CLIP = SHARED_LLP / "BjCEufrlXm4.mp4"


@pytest.fixture(scope="module")
def rates(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rates")
    return {fps: make_clip(folder / f"r{fps}.mp4", seconds=10.0, fps=fps, audio=False)
            for fps in (7.5, 12.0, 24.0, 25.0, 29.97, 30.0)}


@needs_torchcodec
@pytest.mark.parametrize("fps", [7.5, 12.0, 24.0, 25.0, 29.97, 30.0])
def test_both_readers_give_the_same_frames(rates, fps):
    a = decode_clip(rates[fps], decoder="decord", timeout_s=None, audio_rates=())
    b = decode_clip(rates[fps], decoder="torchcodec", timeout_s=None, audio_rates=())
    np.testing.assert_array_equal(a.frame_index, b.frame_index)  # one frame-selection path
    np.testing.assert_array_equal(a.frames, b.frames)  # bit for bit
    assert [read_index(f) for f in b.frames] == a.frame_index.tolist()  # and the frames claimed


@needs_torchcodec
@pytest.mark.skipif(not REAL_CLIP.is_file(), reason="the real LLP clip (../shared/llp/BjCEufrlXm4.mp4) is absent")
def test_both_readers_agree_on_the_real_clip():
    a = decode_clip(REAL_CLIP, decoder="decord", timeout_s=None, audio_rates=())
    b = decode_clip(REAL_CLIP, decoder="torchcodec", timeout_s=None, audio_rates=())
    assert a.frames.shape == (80, 240, 320, 3)
    np.testing.assert_array_equal(a.frames, b.frames)


@needs_torchcodec
def test_torchcodec_runs_under_the_watchdog(rates):
    """The watchdog is reader-agnostic: the worker process decodes with torchcodec, and a
    request that overruns is killed as before."""
    inline = decode_clip(rates[25.0], decoder="torchcodec", timeout_s=None, audio_rates=())
    watched = decode_clip(rates[25.0], decoder="torchcodec", timeout_s=60, audio_rates=())
    np.testing.assert_array_equal(inline.frames, watched.frames)
    began = time.perf_counter()
    with pytest.raises(ClipError, match="timed out after 0.5s"):
        dec._run_with_timeout(time.sleep, (30,), 0.5, "slow.mp4")
    assert time.perf_counter() - began < 10
    again = decode_clip(rates[25.0], decoder="torchcodec", timeout_s=60, audio_rates=())  # a fresh worker
    np.testing.assert_array_equal(again.frames, inline.frames)
    dec.shutdown_worker()


def test_auto_takes_torchcodec_only_when_it_loads(monkeypatch):
    monkeypatch.setattr(readers, "torchcodec_problem", lambda: "not installed")
    assert readers.resolve_decoder("auto") == ("decord", "cpu")
    assert readers.resolve_decoder("auto", "cuda") == ("decord", "cpu")  # auto never picks NVDEC
    with pytest.raises(AvvpError, match="--decoder torchcodec: not installed; or use --decoder decord"):
        readers.resolve_decoder("torchcodec")
    monkeypatch.setattr(readers, "torchcodec_problem", lambda: None)
    assert readers.resolve_decoder("auto") == ("torchcodec", "cpu")
    assert readers.resolve_decoder("decord", "cuda") == ("decord", "cpu")  # models on GPU, decode on CPU


def test_nvdec_without_cuda_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(readers, "torchcodec_problem", lambda: None)
    with pytest.raises(AvvpError, match=r"on cuda \(NVDEC\): no CUDA device is visible here"):
        readers.resolve_decoder("torchcodec", "cuda")
    with pytest.raises(AvvpError, match="--decoder 'ffmpeg': expected one of auto, decord, torchcodec"):
        readers.resolve_decoder("ffmpeg")


def test_a_reader_that_counts_other_frames_is_an_error(rates):
    with pytest.raises(ClipError, match="expected 999 video frames .* but decord found 250"):
        readers.read_frames(str(rates[25.0]), np.array([0, 1]), 999, "decord")
