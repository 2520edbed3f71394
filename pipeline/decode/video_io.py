"""Write and probe small MP4 clips with PyAV (which bundles libav*; there is no ffmpeg binary).

Used to make synthetic LLP-like clips for tests and benchmarks: H.264 (yuv420p) video and
mono or stereo AAC audio, the codecs LLP clips were cut with. Frame rates may be fractional (LLP has
clips at 19.62 or 29.97 fps), so the stream time base is the exact rational inverse of the
rate: frame k then has pts k and time k / fps with no drift.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from avvp_pipe.core.io import atomic_path

#: Largest rate denominator kept when turning a float fps into a Fraction; 1001 keeps
#: NTSC rates (30000/1001) exact and short decimals (19.62 -> 981/50) exact too.
_MAX_RATE_DENOMINATOR = 1001


def fps_fraction(fps: float | Fraction) -> Fraction:
    """The exact rational frame rate for ``fps`` (29.97 -> 2997/100, 30000/1001 stays)."""
    if isinstance(fps, Fraction):
        rate = fps
    else:
        rate = Fraction(float(fps)).limit_denominator(_MAX_RATE_DENOMINATOR)
    if rate <= 0:
        raise ValueError(f"Expected fps > 0 but got {fps}")
    return rate


def _iter_frames(frames: np.ndarray | Iterable[np.ndarray]) -> Iterable[np.ndarray]:
    """Yield HxWx3 uint8 frames from an (N, H, W, 3) array or any iterable of frames."""
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"Expected frames of shape (N, H, W, 3) but got {frames.shape}")
    for frame in frames:
        yield frame


def _check_frame(frame: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Validate one RGB frame; H.264 yuv420p needs even width and height."""
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"Expected an HxWx3 uint8 frame but got {frame.shape} {frame.dtype}")
    height, width = frame.shape[:2]
    if height % 2 or width % 2:
        raise ValueError(f"Expected even frame width and height (yuv420p) but got {width}x{height}")
    if size is not None and (width, height) != size:
        raise ValueError(f"Expected every frame to be {size[0]}x{size[1]} but got {width}x{height}")
    return np.ascontiguousarray(frame)


_LAYOUTS = {1: "mono", 2: "stereo"}


def _audio_channels(audio: np.ndarray) -> np.ndarray:
    """Audio as planar (channels, n) float32: (n,) is mono, (n, 2) stereo."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        return audio[None, :]
    if audio.ndim != 2 or audio.shape[1] not in _LAYOUTS:
        raise ValueError(f"Expected audio of shape (n,) or (n, 2) but got {audio.shape}")
    return np.ascontiguousarray(audio.T)


def _add_audio_stream(container: av.container.OutputContainer, sample_rate: int, channels: int = 1):
    stream = container.add_stream("aac", rate=sample_rate, layout=_LAYOUTS[channels])
    stream.time_base = Fraction(1, sample_rate)
    return stream


def _encode_audio(container, stream, audio: np.ndarray, sample_rate: int) -> None:
    """Encode float audio ((n,) mono or (n, 2) stereo) in 1024-sample frames (AAC's), then flush."""
    planar = np.clip(_audio_channels(audio), -1.0, 1.0)  # (channels, n)
    layout = _LAYOUTS[planar.shape[0]]
    chunk = 1024
    for start in range(0, planar.shape[1], chunk):
        piece = planar[:, start : start + chunk]  # (channels, <=1024) planar
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece), format="fltp", layout=layout)
        frame.sample_rate = sample_rate
        frame.pts = start
        frame.time_base = Fraction(1, sample_rate)
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def write_mp4(
    path: str | os.PathLike,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = 44100,
    *,
    crf: int = 23,
    preset: str = "veryfast",
) -> None:
    """Write RGB ``frames`` (each HxWx3 uint8) and optional ``audio`` ((n,) mono or (n, 2)) as an MP4.

    The file appears atomically (temp file in the same folder, then ``os.replace``), so a
    reader never sees a half-written clip. Frame k gets pts k in time base 1/fps (exact
    rational), so ``n`` frames last exactly ``n / fps`` seconds. ``preset`` is x264's; the
    default keeps B-frames (as real LLP clips have) while writing a 10 s 320x240 clip in
    well under a second.
    """
    path = Path(path)
    rate = fps_fraction(fps)
    with atomic_path(path) as tmp:
        _write(str(tmp), frames, rate, audio, sample_rate, crf, preset)


def _write(tmp: str, frames, rate: Fraction, audio, sample_rate: int, crf: int, preset: str) -> None:
    with av.open(tmp, mode="w", format="mp4") as container:
        video = None
        size = None
        n_written = 0
        audio_stream = (_add_audio_stream(container, sample_rate, _audio_channels(audio).shape[0])
                        if audio is not None else None)
        for frame in _iter_frames(frames):
            frame = _check_frame(frame, size)
            if video is None:
                size = (frame.shape[1], frame.shape[0])
                video = container.add_stream("libx264", rate=rate)
                video.width, video.height = size
                video.pix_fmt = "yuv420p"
                video.time_base = 1 / rate
                video.codec_context.time_base = 1 / rate
                video.options = {"crf": str(crf), "preset": preset}
            vframe = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vframe.pts = n_written
            vframe.time_base = 1 / rate
            container.mux(video.encode(vframe))
            n_written += 1
        if video is None:
            raise ValueError("Expected at least one video frame but got none")
        container.mux(video.encode(None))
        if audio_stream is not None:
            _encode_audio(container, audio_stream, audio, sample_rate)


def probe(path: str | os.PathLike) -> dict:
    """Describe a clip's streams: duration (s, video stream), fps, n_frames, size, audio.

    ``n_frames`` is the container's count when it has one (MP4 does), else a decode count.
    """
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path}: expected a video stream but found none")
        stream = container.streams.video[0]
        rate = stream.guessed_rate or stream.average_rate
        n_frames = stream.frames or sum(1 for _ in container.decode(stream))
        if stream.duration is not None:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = n_frames / float(rate) if rate else float(container.duration or 0) / av.time_base
        audio = container.streams.audio[0] if container.streams.audio else None
        return {
            "duration": duration,
            "fps": float(rate) if rate else float("nan"),
            "n_frames": int(n_frames),
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "has_audio": audio is not None,
            "sample_rate": audio.codec_context.sample_rate if audio is not None else None,
        }
