"""Frame readers: decord or torchcodec fetch the frames that :mod:`.clip` chose.

Why two: decord, the reader the official features were made with, had its last release in
2021 (hangs, leaks and wrong-frame reports stay open); PyTorch's video I/O moved to
torchcodec, which is maintained, a little faster on CPU, and decodes on the GPU (NVDEC). The
frame *choice* is not theirs: :mod:`avvp_pipe.pipeline.decode.clip` replays ffmpeg's ``-r 8``
rule on the container's timestamps and passes source frame indices; a reader only decodes
those indices. Both count frames the same way (decord's index i and torchcodec's exact-mode
index i are the i-th frame in presentation order), and both convert with FFmpeg's swscale,
so on CPU they return identical frames (tests/test_readers.py, synthetic clips at several
rates and the real LLP clip).

``auto`` takes torchcodec when it loads (its wheel needs the system's FFmpeg 4-8 shared
libraries), else decord. NVDEC (``torchcodec`` on ``cuda``) decodes and converts to RGB on
the GPU; its colour conversion is not swscale's, so its frames may differ from the CPU ones
by a few levels: it is not the official path and is never chosen by ``auto``.
"""

from __future__ import annotations

import functools

import numpy as np

from avvp_pipe.core.errors import AvvpError, ClipError, one_line

DECODERS = ("auto", "decord", "torchcodec")
DEFAULT_DECODER = "auto"


@functools.cache
def torchcodec_problem() -> str | None:
    """Why torchcodec cannot decode here (not installed, no FFmpeg libraries), or None if it can."""
    try:
        import torchcodec._core as core
        from torchcodec.decoders import VideoDecoder  # noqa: F401
    except Exception as err:  # noqa: BLE001 - an ImportError, or a broken install's own error
        return f"torchcodec does not import ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
    if getattr(core, "ffmpeg_major_version", 0) is None:  # torchcodec loads FFmpeg at import, quietly
        return "torchcodec found no FFmpeg 4-8 shared libraries (install ffmpeg, e.g. apt-get install ffmpeg)"
    return None


def resolve_decoder(decoder: str = DEFAULT_DECODER, device: str = "cpu") -> tuple[str, str]:
    """(reader, decode device) for ``--decoder`` and the run's ``--device``; a one-line error
    when that reader cannot run here.

    The frames are decoded on the GPU (NVDEC) only for an explicit ``torchcodec`` on a CUDA
    device: ``auto`` keeps the CPU path, whose frames are the official ones.
    """
    if decoder not in DECODERS:
        raise AvvpError(f"--decoder {decoder!r}: expected one of {', '.join(DECODERS)}")
    on_gpu = decoder == "torchcodec" and str(device).startswith("cuda")
    if decoder == "auto":
        decoder = "torchcodec" if torchcodec_problem() is None else "decord"
    if decoder == "torchcodec":
        problem = torchcodec_problem()
        if problem is not None:
            raise AvvpError(f"--decoder torchcodec: {problem}; or use --decoder decord")
        if on_gpu:
            _check_cuda()
    return decoder, (str(device) if on_gpu else "cpu")


def _check_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise AvvpError("--decoder torchcodec on cuda (NVDEC): no CUDA device is visible here; "
                        "decode on the CPU (the default) or run on a GPU machine")


def read_frames(path: str, indices: np.ndarray, n_expected: int, decoder: str = "decord",
                device: str = "cpu") -> np.ndarray:
    """(len(indices), H, W, 3) uint8 RGB: the source frames at ``indices`` (presentation order).

    ``n_expected`` is the container's frame count; a reader that counts otherwise would
    number other frames, so that is an error, not a silent shift.
    """
    unique, inverse = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)
    read = _read_torchcodec if decoder == "torchcodec" else _read_decord
    return read(path, unique, n_expected, device)[inverse]  # (n_frames, H, W, 3)


def _read_decord(path: str, unique: np.ndarray, n_expected: int, device: str) -> np.ndarray:
    """decord's ``get_batch`` on the unique indices; the reader is released at once (it leaks)."""
    import decord

    reader = None
    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0))
        _check_count(path, "decord", len(reader), n_expected)
        return reader.get_batch(unique.tolist()).asnumpy()  # (U, H, W, 3) uint8 RGB
    except decord.DECORDError as err:
        raise ClipError(f"{path}: decord could not decode the video ({one_line(err)})") from err
    finally:
        del reader


def _read_torchcodec(path: str, unique: np.ndarray, n_expected: int, device: str) -> np.ndarray:
    """torchcodec in exact seek mode (it scans the file, so index i is the i-th frame)."""
    from torchcodec.decoders import VideoDecoder

    try:
        reader = VideoDecoder(path, seek_mode="exact", dimension_order="NHWC", device=device)
        _check_count(path, "torchcodec", int(reader.metadata.num_frames or 0), n_expected)
        frames = reader.get_frames_at(unique.tolist()).data  # (U, H, W, 3) uint8 RGB, on `device`
    except (RuntimeError, ValueError, IndexError) as err:
        raise ClipError(f"{path}: torchcodec could not decode the video ({one_line(err)})") from err
    return frames.cpu().numpy()


def _check_count(path: str, reader: str, found: int, expected: int) -> None:
    if found != expected:
        raise ClipError(f"{path}: expected {expected} video frames (the container's packets) but {reader} "
                        f"found {found}")
