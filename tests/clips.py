"""Small fixture clips for tests: each frame encodes its own index, so a test can check
which source frame a decoder returned.

The index is written in binary as :data:`N_BITS` vertical bands across the top half of the
frame (black = 0, white = 1), which survives H.264 compression at any size >= 40 px wide;
the bottom half is a seeded random texture so the encoder sees real content. Audio is a
440 Hz sine at amplitude 0.5 plus a little seeded noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avvp_pipe.pipeline.decode.video_io import write_mp4

#: Bands used to encode the frame index (up to 1023 frames: 34 s at 30 fps).
N_BITS = 10
TONE_HZ = 440.0
TONE_AMPLITUDE = 0.5
#: The right channel's tone of a stereo clip (folds to 16000 - 11000 = 5 kHz without a filter).
ALIAS_HZ = 11000.0


def _band_edges(width: int) -> np.ndarray:
    return np.linspace(0, width, N_BITS + 1).astype(int)


def index_frame(index: int, size: tuple[int, int] = (64, 48), texture: np.ndarray | None = None) -> np.ndarray:
    """An (H, W, 3) uint8 frame whose top half spells ``index`` in binary bands."""
    width, height = size
    frame = np.zeros((height, width, 3), np.uint8) if texture is None else texture.copy()
    edges = _band_edges(width)
    top = height // 2
    for bit in range(N_BITS):
        level = 255 if (index >> bit) & 1 else 0
        frame[:top, edges[bit] : edges[bit + 1]] = level
    return frame


def read_index(frame: np.ndarray) -> int:
    """Recover the index written by :func:`index_frame` from a decoded frame."""
    height, width = frame.shape[:2]
    edges = _band_edges(width)
    rows = slice(height // 8, height // 2 - height // 8)  # away from the band/texture border
    value = 0
    for bit in range(N_BITS):
        cols = slice(edges[bit] + 1, max(edges[bit + 1] - 1, edges[bit] + 2))
        if frame[rows, cols].astype(float).mean() > 127.5:
            value |= 1 << bit
    return value


def make_clip(
    path: str | Path,
    seconds: float = 10.0,
    fps: float = 30.0,
    size: tuple[int, int] = (64, 48),
    audio: bool = True,
    sample_rate: int = 44100,
    seed: int = 0,
    channels: int = 1,
) -> Path:
    """Write an index-encoded clip of round(seconds * fps) frames (+ audio of ``seconds``;
    with ``channels=2`` the right channel is an 11 kHz tone: above 16 kHz audio's 8 kHz band
    edge, so a nearest-sample resampler folds it to 5 kHz and a filtering one removes it)."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    width, height = size
    texture = np.zeros((height, width, 3), np.uint8)
    texture[height // 2 :] = rng.integers(40, 216, (height - height // 2, width, 3), dtype=np.uint8)
    n = int(round(seconds * fps))
    frames = (index_frame(i, size, texture) for i in range(n))
    track = None
    if audio:
        t = np.arange(int(round(seconds * sample_rate))) / sample_rate
        noise = 0.01 * rng.standard_normal(len(t))
        track = (TONE_AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * t) + noise).astype(np.float32)
        if channels == 2:
            right = 0.3 * np.sin(2 * np.pi * ALIAS_HZ * t) + noise
            track = np.stack([track, right.astype(np.float32)], axis=1)  # (n, 2)
    write_mp4(path, frames, fps, track, sample_rate)
    return path


def make_short_clip(path: str | Path, seconds: float = 6.0, **kw) -> Path:
    """A clip shorter than 10 s (decoding pads it)."""
    return make_clip(path, seconds=seconds, **kw)


def make_long_clip(path: str | Path, seconds: float = 12.0, **kw) -> Path:
    """A clip longer than 10 s (decoding trims it to the first 10 s)."""
    return make_clip(path, seconds=seconds, **kw)


def make_no_audio_clip(path: str | Path, **kw) -> Path:
    """A video-only clip."""
    return make_clip(path, audio=False, **kw)


def make_odd_fps_clip(path: str | Path, fps: float = 19.62, **kw) -> Path:
    """A clip at a non-integer rate, as some LLP clips have."""
    return make_clip(path, fps=fps, **kw)


def make_empty_clip(path: str | Path) -> Path:
    """A 0-byte .mp4."""
    path = Path(path)
    path.write_bytes(b"")
    return path


def make_garbage_clip(path: str | Path, n_bytes: int = 4096, seed: int = 0) -> Path:
    """Random bytes with an .mp4 name."""
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, n_bytes, dtype=np.uint8).tobytes())
    return path


def make_truncated_clip(path: str | Path, keep: float = 0.4, **kw) -> Path:
    """A real clip cut to its first ``keep`` fraction of bytes (the index, 'moov', is lost)."""
    path = Path(path)
    full = path.with_name(path.stem + ".full.mp4")
    make_clip(full, **kw)
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def make_fixture_set(folder: str | Path) -> dict[str, Path]:
    """One of each fixture in ``folder``, keyed by kind; names look like LLP files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "normal": make_clip(folder / "aaaaaaaaaaa_0_10.mp4"),
        "short": make_short_clip(folder / "bbbbbbbbbbb_0_6.mp4"),
        "long": make_long_clip(folder / "ccccccccccc_0_12.mp4"),
        "no_audio": make_no_audio_clip(folder / "ddddddddddd_0_10.mp4"),
        "odd_fps": make_odd_fps_clip(folder / "eeeeeeeeeee_0_10.mp4"),
        "empty": make_empty_clip(folder / "fffffffffff_0_10.mp4"),
        "garbage": make_garbage_clip(folder / "ggggggggggg_0_10.mp4"),
        "truncated": make_truncated_clip(folder / "hhhhhhhhhhh_0_10.mp4"),
        "corrupt": make_corrupt_clip(folder / "iiiiiiiiiii_0_10.mp4"),
    }


def make_corrupt_clip(path: str | Path, seed: int = 1, **kw) -> Path:
    """A real clip whose middle bytes (inside the video data) are overwritten with garbage;
    the index survives, so the file opens and fails only while decoding."""
    path = Path(path)
    make_clip(path, **kw)
    data = bytearray(path.read_bytes())
    n = len(data)
    rng = np.random.default_rng(seed)
    data[n // 4 : n // 2] = rng.integers(0, 256, n // 2 - n // 4, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path
