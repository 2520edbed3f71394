"""The official 16 kHz audio (moviepy 1.x's wav, replayed) against moviepy itself, and its rules by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avvp_pipe.pipeline.decode import audio as official
from avvp_pipe.pipeline.decode.clip import decode_clip
from tests import clips
from tests.test_decode import REAL_CLIP

#: (seconds, sample rate, channels): other rates and channel counts than the LLP's 44.1 kHz stereo.
SYNTH = [(10.0, 48000, 2), (10.0, 44100, 1), (6.0, 22050, 2), (12.3, 32000, 1), (9.5, 16000, 2)]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> dict[tuple, Path]:
    folder = tmp_path_factory.mktemp("audio")
    return {(s, r, c): clips.make_clip(folder / f"a{s}_{r}_{c}.mp4", seconds=s, fps=25, sample_rate=r, channels=c)
            for s, r, c in SYNTH}


def _moviepy_wav(path: Path, tmp_path: Path) -> np.ndarray:
    """The reference: what the release's scripts/extract_audio.py wrote, read back as int16."""
    moviepy_editor = pytest.importorskip("moviepy.editor")
    from scipy.io import wavfile

    wav = tmp_path / (path.stem + ".wav")
    clip = moviepy_editor.VideoFileClip(str(path))
    try:
        clip.audio.write_audiofile(str(wav), fps=16000, logger=None)
    finally:
        clip.close()
    rate, data = wavfile.read(wav)
    assert rate == 16000 and data.dtype == np.int16 and data.shape[1] == 2
    return data


def _check_whole_clip(path: Path, tmp_path: Path) -> None:
    ref = _moviepy_wav(path, tmp_path)  # (n, 2) int16
    mine = official.moviepy_wav(official.read_stream(str(path)))
    assert mine.shape == ref.shape and np.array_equal(mine, ref)  # every sample, to the end
    decoded = decode_clip(path, audio_rates=(16000,), timeout_s=None)
    mono = official.wav_mono(ref)[:160000]
    expected = np.concatenate([mono, np.zeros(160000 - len(mono), np.float32)])
    assert np.array_equal(decoded.audio_16k, expected)


def test_real_clip_equals_moviepy(tmp_path):
    if not REAL_CLIP.is_file():
        pytest.skip("the real LLP clip (../shared/llp/BjCEufrlXm4.mp4) is not present")
    _check_whole_clip(REAL_CLIP, tmp_path)
    assert len(official.moviepy_wav(official.read_stream(str(REAL_CLIP)))) == 160480  # 10.03 s


@pytest.mark.parametrize("key", SYNTH, ids=[f"{s}s-{r}Hz-{c}ch" for s, r, c in SYNTH])
def test_synthetic_clips_equal_moviepy(synth, key, tmp_path):
    _check_whole_clip(synth[key], tmp_path)


# ---------------------------------------------------------------- the rules, without moviepy


@pytest.mark.parametrize("us,seconds", [(10_027_855, 10.03), (9_994_999, 9.99), (9_995_000, 10.0),
                                        (61_000_000, 61.0), (0, 0.0)])
def test_header_duration_rounds_as_ffmpeg_prints(us, seconds):
    assert official.header_duration(us) == pytest.approx(seconds, abs=1e-12)


def _ramp(n: int, duration: float) -> official.ReaderStream:
    """A stream whose frame i holds i (both channels), so each output names its source frame."""
    values = (np.arange(n) % 30000).astype(np.int16)
    return official.ReaderStream(np.stack([values, values], axis=1), duration)


def test_nearest_sample_and_the_refill_off_by_one():
    wav = official.moviepy_wav(_ramp(441000, 10.0))  # (160000, 2)
    k = np.arange(len(wav))
    nearest = np.round(44100 * ((1.0 / 16000) * k)).astype(int)
    got = wav[:, 0].astype(int)
    # Until the buffer's first refill, output k is frame round(44100 k / 16000) exactly.
    first = int(np.argmax(got != nearest % 30000))
    assert first > 50000 and np.array_equal(got[:first], nearest[:first] % 30000)
    # Each refill keeps one old frame too many: later samples lag by one more frame each time.
    lag = (nearest - got) % 30000
    assert set(np.unique(lag)) <= {0, 1, 2, 3, 4} and lag[-1] >= 2 and np.all(np.diff(lag) >= 0)


def test_quantisation_clips_and_truncates():
    frames = np.array([[32767, -32768], [1001, -1001], [-5, 5]] * 20000, np.int16)
    wav = official.moviepy_wav(official.ReaderStream(frames, 1.0))
    assert wav.max() == 32440 and wav.min() == -32440  # int(0.99 * 2**15), towards zero


def test_without_a_filter_high_tones_fold_down(synth):
    """An 11 kHz tone folds to 5 kHz on the official path; soxr's low-pass removes it."""
    path = synth[(10.0, 48000, 2)]
    moviepy = decode_clip(path, audio_rates=(16000,), timeout_s=None).audio_16k
    soxr = decode_clip(path, audio_rates=(16000,), timeout_s=None, audio_path="soxr").audio_16k

    def band(x: np.ndarray) -> float:
        spectrum = np.abs(np.fft.rfft(x)) / len(x)
        hz = np.fft.rfftfreq(len(x), 1 / 16000)
        return float(spectrum[(hz > 4900) & (hz < 5100)].max())

    assert band(moviepy) > 0.05 and band(soxr) < 0.005
    assert np.max(np.abs(moviepy - soxr)) > 0.05


def test_unknown_audio_path_is_refused(synth):
    with pytest.raises(ValueError, match="audio_path"):
        decode_clip(synth[(10.0, 44100, 1)], audio_path="librosa")

