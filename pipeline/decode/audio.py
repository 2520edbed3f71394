"""The 16 kHz audio behind the official VGGish features, replayed sample for sample.

The AVVP-ECCV20 release made its wavs with moviepy 1.x (``scripts/extract_audio.py``):
``VideoFileClip(path).audio.write_audiofile(wav, fps=16000)``. In moviepy 1.0.3 that is:

1. ``FFMPEG_AudioReader`` runs ``ffmpeg -i clip -vn -f s16le -acodec pcm_s16le -ar 44100
   -ac 2 -`` (44.1 kHz stereo int16: a mono source is up-mixed by libswresample at -3 dB,
   so both channels hold 0.7071 x) and reads it as float64 ``s16 / 2**15``;
2. it keeps a buffer of ``min(nframes + 1, 200000)`` frames (``nframes = int(44100 *
   duration)``, ``duration`` the ``Duration: HH:MM:SS.cc`` line of ffmpeg's header, i.e. the
   container's length rounded to 10 ms) and refills it when a request leaves it. Each
   refill keeps ONE frame more of the old buffer than it should (``conserved = end - start
   + 1``), so every refill delays all later samples by one more 44.1 kHz frame;
3. ``AudioClip.iter_chunks`` asks for ``t = k / 16000``, ``k < int(16000 * duration)``, in
   chunks cut by ``np.linspace``; ``get_frame`` returns buffer row ``np.round(44100 * t)``
   (nearest sample, no anti-alias filter: everything above 8 kHz folds down);
4. ``to_soundarray(quantize=True)`` clips to +-0.99 and truncates ``2**15 * x`` to int16
   (``astype``: towards zero), and ffmpeg writes those int16 pairs into a 16 kHz stereo wav;
5. torchvggish reads the wav as ``int16 / 32768`` and averages the two channels.

:func:`official_16k` replays steps 1-5 in memory: step 1 through PyAV's bundled libav
(decoder and resampler are the ones the ffmpeg command line uses), steps 2-4 as the same
numpy arithmetic as moviepy's source (:class:`_MoviepyReader` mirrors its reader, MIT
licence). tests/test_audio_official.py checks it against moviepy itself when installed.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np

from avvp_pipe.core.errors import ClipError, one_line

#: How decode makes ``audio_16k``: "moviepy" replays the official wavs (the default);
#: "soxr" resamples the channel mean with a proper low-pass filter (soxr HQ).
AUDIO_PATHS = ("moviepy", "soxr")
DEFAULT_AUDIO_PATH = "moviepy"

_READER_FPS = 44100  # moviepy's AudioFileClip(fps=44100) default
_READER_BUFFER = 200000  # VideoFileClip(audio_buffersize=200000) default
_WRITER_CHUNK = 2000  # write_audiofile(buffersize=2000) default
_AV_TIME_BASE = 1_000_000


@dataclass(frozen=True)
class ReaderStream:
    """What moviepy's reader gets from ffmpeg: the int16 frames and the header duration."""

    frames: np.ndarray  # (N, 2) int16, 44.1 kHz stereo
    duration: float  # seconds, as moviepy parses ffmpeg's "Duration:" line


def header_duration(duration_us: int) -> float:
    """The container length as moviepy reads it from ffmpeg's ``Duration: HH:MM:SS.cc`` line.

    av_dump_format adds 5000 us and truncates to centiseconds; moviepy's ``cvsecs`` sums
    the float fields (seconds first), which is reproduced here for identical rounding.
    """
    total = duration_us + 5000
    secs, us = divmod(total, _AV_TIME_BASE)
    mins, secs = divmod(secs, 60)
    hours, mins = divmod(mins, 60)
    text = f"{hours:02d}:{mins:02d}:{secs:02d}.{(100 * us) // _AV_TIME_BASE:02d}"
    parts = [float(f) for f in text.split(":")]
    return sum(mult * part for mult, part in zip((1, 60, 3600), reversed(parts)))


def open_av(path: str):
    """``av.open(path)``; a file PyAV cannot open is one ClipError naming it (decode and audio share it)."""
    import av

    try:
        return av.open(path)
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise ClipError(f"{path}: expected a readable video file but could not open it ({one_line(err)})") from err


def read_stream(path: str) -> ReaderStream:
    """Decode the first audio stream to 44.1 kHz stereo int16, as moviepy's ffmpeg pipe does.

    Like the ffmpeg command line (9.0.2 checked), the last decoded frame is cut where the
    last packet ends (the padding of the final AAC frame is dropped) before resampling;
    older ffmpeg builds may have kept it, which changes only samples past the audio's end.
    """
    import av

    with open_av(path) as container:
        if not container.streams.audio:
            raise ClipError(f"{path}: expected an audio stream but found none")
        if container.duration is None:
            raise ClipError(f"{path}: expected a container duration (moviepy needs one) but found none")
        frames = _decoded_frames(container, path)
        resampler = av.AudioResampler(format="s16", layout="stereo", rate=_READER_FPS)
        chunks = [_packed(f) for frame in frames for f in resampler.resample(frame)]
        chunks.extend(_packed(f) for f in resampler.resample(None))
        data = np.concatenate(chunks) if chunks else np.zeros((0, 2), np.int16)
        return ReaderStream(data, header_duration(int(container.duration)))




def _decoded_frames(container, path: str) -> list:
    """The audio stream's decoded frames, the last cut at the end of the last packet."""
    import av

    stream = container.streams.audio[0]
    frames, end_pts = [], None
    try:
        for packet in container.demux(stream):
            if packet.pts is not None and packet.duration:
                end_pts = max(end_pts or packet.pts, packet.pts + packet.duration)
            frames.extend(packet.decode())
    except av.FFmpegError as err:
        raise ClipError(f"{path}: corrupt audio stream ({one_line(err)})") from err
    if frames and end_pts is not None and frames[-1].pts is not None:
        frames[-1] = _cut(frames[-1], end_pts, stream.time_base)
    return frames


def _cut(frame, end_pts: int, time_base) -> object:
    """``frame`` without its samples at or after ``end_pts`` (the same frame if none are)."""
    import av

    keep = int(round(float((end_pts - frame.pts) * time_base) * frame.sample_rate))
    if not 0 < keep < frame.samples:
        return frame
    data = frame.to_ndarray()  # (channels, n) planar or (1, n * channels) packed
    channels = len(frame.layout.channels)
    data = data[:, :keep] if frame.format.is_planar else data[:, : keep * channels]
    cut = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=frame.format.name,
                                     layout=frame.layout.name)
    cut.sample_rate, cut.pts, cut.time_base = frame.sample_rate, frame.pts, frame.time_base
    return cut


def _packed(frame) -> np.ndarray:
    """One s16 stereo AudioFrame as (n, 2) int16 (packed interleaved)."""
    return frame.to_ndarray().reshape(-1, 2)


class _MoviepyReader:
    """moviepy 1.0.3 ``FFMPEG_AudioReader`` over an in-memory stream: same buffer arithmetic.

    Kept line for line with the original (readers.py), including its off-by-one refill and
    its end-of-file fallbacks, because those decide which sample lands where.
    """

    def __init__(self, stream: ReaderStream, fps: int = _READER_FPS, buffersize: int = _READER_BUFFER) -> None:
        self.data = stream.frames.astype(np.float64) / 2**15  # (N, 2), as read_chunk scales
        self.fps = fps
        self.duration = stream.duration
        self.nchannels = 2
        self.nframes = int(self.fps * self.duration)
        self.buffersize = min(self.nframes + 1, buffersize)
        self.buffer: np.ndarray | None = None
        self.buffer_startframe = 1
        self.pos = 0  # frames handed out so far (moviepy's bookkeeping)
        self.pipe = 0  # frames actually consumed from ffmpeg's pipe
        self.buffer_around(1)

    def read_chunk(self, chunksize: float) -> np.ndarray:
        chunksize = int(round(chunksize))
        out = self.data[self.pipe : self.pipe + max(chunksize, 0)]
        self.pipe = min(self.pipe + max(chunksize, 0), len(self.data))
        self.pos = self.pos + chunksize
        return out

    def seek(self, pos: int) -> None:
        if pos < self.pos or pos > self.pos + 1000000:
            self.pipe = int(np.round(self.fps * (1.0 * pos / self.fps)))  # ffmpeg restarted with -ss
        elif pos > self.pos:
            self.pipe = min(self.pipe + (pos - self.pos), len(self.data))  # skip_chunk
        self.pos = pos

    def buffer_around(self, framenumber: int) -> None:
        new_bufferstart = max(0, framenumber - self.buffersize // 2)
        if self.buffer is not None:
            current_f_end = self.buffer_startframe + self.buffersize
            if new_bufferstart < current_f_end < new_bufferstart + self.buffersize:
                conserved = current_f_end - new_bufferstart + 1  # sic: one frame too many
                array = self.read_chunk(self.buffersize - conserved)
                self.buffer = np.vstack([self.buffer[-conserved:], array])
            else:
                self.seek(new_bufferstart)
                self.buffer = self.read_chunk(self.buffersize)
        else:
            self.seek(new_bufferstart)
            self.buffer = self.read_chunk(self.buffersize)
        self.buffer_startframe = new_bufferstart

    def get_frame(self, tt: np.ndarray) -> np.ndarray:
        in_time = (tt >= 0) & (tt < self.duration)
        if not in_time.any():
            raise ClipError(f"moviepy replay: times {tt[0]:.2f}-{tt[-1]:.2f}s lie outside the clip")
        frames = np.round((self.fps * tt)).astype(int)[in_time]
        fr_min, fr_max = frames.min(), frames.max()
        if not (0 <= (fr_min - self.buffer_startframe) < len(self.buffer)):
            self.buffer_around(fr_min)
        elif not (0 <= (fr_max - self.buffer_startframe) < len(self.buffer)):
            self.buffer_around(fr_max)
        result = np.zeros((len(tt), self.nchannels))
        indices = frames - self.buffer_startframe
        if len(self.buffer) < self.buffersize // 2:
            indices = indices - (self.buffersize // 2 - len(self.buffer) + 1)
        try:
            result[in_time] = self.buffer[indices]
        except IndexError:  # moviepy warns and repeats the last frame
            indices[indices >= len(self.buffer)] = len(self.buffer) - 1
            result[in_time] = self.buffer[indices]
        return result


def moviepy_wav(stream: ReaderStream, fps: int = 16000) -> np.ndarray:
    """The int16 (n, 2) samples ``write_audiofile(wav, fps=fps)`` writes (moviepy 1.0.3)."""
    reader = _MoviepyReader(stream)
    totalsize = int(fps * reader.duration)
    nchunks = totalsize // _WRITER_CHUNK + 1
    pospos = np.linspace(0, totalsize, nchunks + 1, endpoint=True, dtype=int)
    parts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for i in range(nchunks):
            tt = (1.0 / fps) * np.arange(pospos[i], pospos[i + 1])
            if len(tt) == 0:
                continue
            snd = reader.get_frame(tt)
            snd = np.maximum(-0.99, np.minimum(0.99, snd))
            parts.append((2**15 * snd).astype(np.int16))  # truncation towards zero, as astype
    return np.concatenate(parts) if parts else np.zeros((0, 2), np.int16)


def wav_mono(wav: np.ndarray) -> np.ndarray:
    """torchvggish's reading of a wav: int16 / 32768, mean of the channels (exact in float32)."""
    return (wav.astype(np.float64) / 32768.0).mean(axis=1).astype(np.float32)


def official_16k(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """The mono 16 kHz samples VGGish read for this clip, and the source audio's seconds."""
    stream = read_stream(os.fspath(path))
    return wav_mono(moviepy_wav(stream)), len(stream.frames) / _READER_FPS


def soxr_16k(mono: np.ndarray, native_rate: int) -> np.ndarray:
    """The channel mean resampled to 16 kHz with soxr HQ (a proper anti-alias filter)."""
    import soxr

    if native_rate == 16000:
        return mono.astype(np.float32, copy=False)
    return np.asarray(soxr.resample(mono, native_rate, 16000, quality="HQ"), dtype=np.float32)


def check_audio_path(audio_path: str) -> str:
    """``audio_path`` if known; ValueError naming the choices otherwise."""
    if audio_path not in AUDIO_PATHS:
        raise ValueError(f"Expected audio_path in {AUDIO_PATHS} but got {audio_path!r}")
    return audio_path

