"""Decode an LLP clip into exactly the 80 frames and the audio the official features saw.

Frame choice. The official features ran ``ffmpeg -i clip.mp4 -r 8 %06d.jpg`` (80-82 JPEGs
for 10 s; fewer for a clip whose source ended early, more for a longer one) and kept the
JPEGs at ``np.round(np.linspace(0, n_jpegs - 1, 80))`` over ALL of them, whatever their
number. That is ``frame_rule="official"``, the default, for every clip length: a short
clip repeats some JPEGs spread over its length, a long one spreads the 80 over all of it.
``frame_rule="aligned"`` instead keeps only frames starting before ``seconds`` (10 s) and
repeats the last JPEG up to 80, so frame k lies in second k // 8 (per-second alignment with
the dense labels); on clips of about 10 s the two rules pick the same frames. With ``-r``
as an output option and an image2 output, ffmpeg converts the rate with its CFR "vsync"
logic (``do_video_out`` in 3.x-6.0, ``video_sync_process`` later; no fps filter is used):

* each decoded frame's timestamp, relative to the file's start time, is rescaled to the
  output time base 1/8 s (``float_pts``, with 16 extra bits of precision, then nudged by
  2**-17 away from zero; a frame at exactly 0 becomes -2**-17);
* ``delta0 = float_pts - next_output_slot``, ``delta = delta0 + duration`` where
  ``duration`` is one source frame in output slots (``8 / fps``); ffmpeg 3.x/4.x (read
  in their sources; probably up to 6.0) replace it by the packet duration rounded with
  ``lrintf`` when that is > 0, i.e. by 1 for sources under 16 fps, while 6.1.1 (read in a
  port of its code) and 9.0.2 (run here) keep the fraction. ``legacy_ffmpeg`` picks the
  former (the LLP features date from 2020); the two differ only under 16 fps;
* the frame is dropped when ``delta < -1.1``, written once when ``-1.1 <= delta <= 1.1``,
  and written ``lrintf(delta)`` times when ``delta > 1.1`` (the first ``lrintf(delta0 - 0.6)``
  of those repeat the previous frame).

That is why JPEGs 0 and 1 are source frames 0 and 1 and later JPEGs lag k/8 s by about
1.1-1.4 output slots instead of being the frames nearest k/8 s. :func:`ffmpeg_rate_jpegs`
replays this logic on the stream's real timestamps (read by demuxing, no decoding). It
reproduces all 82 official JPEGs of the real clip, and matched a real ffmpeg 9.0.2 binary
frame for frame on synthetic clips at 8.5-30 fps (legacy_ffmpeg=False there). libavfilter's
``fps`` filter (nearest-frame rounding) picks different frames, so it is no substitute.

Decoding. Frames come from decord or torchcodec (:mod:`avvp_pipe.pipeline.decode.readers`,
``decoder``; both decode only the chosen indices, which this module picks, and give the same
frames on CPU; the reader's frame count must equal the container's packet count, or the
indices would name other frames). Audio comes from PyAV (4x faster than decord's AudioReader here, and decord's mono
downmix sums channels at 0.707 each, which can exceed [-1, 1]). ``audio_16k`` follows
``audio_path``: "moviepy" (default) replays the official wavs sample for sample
(:mod:`avvp_pipe.pipeline.decode.audio`: 44.1 kHz stereo, nearest sample per 16 kHz time,
no anti-alias filter); "soxr" resamples the channel mean with soxr HQ. ``audio_48k`` is
always the channel mean resampled with soxr HQ.
Decord is unmaintained and can hang or leak, so by default all decoding runs in a
persistent worker process (one per calling thread, living until that thread calls
:func:`shutdown_worker` or Python exits) that is killed when a clip takes longer than
``timeout_s`` and recycled every :data:`_RECYCLE_AFTER` clips.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from avvp_pipe.core.errors import AvvpError, ClipError, one_line
from avvp_pipe.core.io import atomic_path
from avvp_pipe.pipeline.decode.audio import DEFAULT_AUDIO_PATH, check_audio_path, official_16k, open_av, soxr_16k
from avvp_pipe.pipeline.decode.readers import DEFAULT_DECODER, read_frames, resolve_decoder

#: Audio rates a DecodedClip carries (VGGish-style 16 kHz, PANNs/CLAP-style 48 kHz).
AUDIO_RATES = (16000, 48000)
#: Padding or trimming shorter than this is not recorded in ``notes`` (AAC frames end up to
#: ~23 ms past the nominal length in every clip; that is not worth a note).
_NOTE_TOLERANCE_S = 0.05
#: A worker process decodes at most this many clips before it is replaced (bounds leaks).
_RECYCLE_AFTER = 200
#: Seconds a fresh worker may take to import numpy/decord/av before it counts as broken.
_STARTUP_TIMEOUT_S = 120.0

AV_TIME_BASE = 1_000_000
#: How the 80 frames are chosen: "official" (linspace over every JPEG ffmpeg -r 8 writes, any
#: clip length) or "aligned" (JPEGs of the first ``seconds`` only, the last one repeated to 80).
FRAME_RULES = ("official", "aligned")
DEFAULT_FRAME_RULE = "official"


@dataclass(frozen=True)
class DecodedClip:
    """One clip as the extractors see it (shapes for the defaults: 80 frames, 10 s)."""

    clip_id: str  # 11-char YouTube id (first 11 chars of the file stem)
    path: str
    frames: np.ndarray | None  # (80, H, W, 3) uint8 RGB at source resolution; None: no video stream
    frame_index: np.ndarray  # (80,) int64 source frame indices (presentation order)
    frame_time: np.ndarray  # (80,) float64 seconds from the file's start
    audio_16k: np.ndarray | None  # (160000,) float32 mono; None if not requested / no audio
    audio_48k: np.ndarray | None  # (480000,) float32 mono; likewise
    source_fps: float
    n_source_frames: int
    duration: float  # seconds of the source video stream
    has_audio: bool
    notes: tuple[str, ...]  # defined-behaviour records ("video padded 9.50s->10s", ...)

    def describe(self) -> str:
        """One line: what was decoded and what had to be adjusted (the ``decode`` command prints it)."""
        frames = "no video" if self.frames is None else (f"frames {tuple(self.frames.shape)} from "
                                                         f"{self.n_source_frames} at {self.source_fps:.3f} fps")
        audio = "no audio" if self.audio_16k is None else f"audio {self.audio_16k.shape[0]}@16k"
        return f"{self.clip_id}: {frames}, {audio}, notes: {'; '.join(self.notes) or 'none'}"


# ----------------------------------------------------------------------------------------
# Frame selection: ffmpeg's `-r` CFR logic, replayed on timestamps.


def _rescale(a: int, b: Fraction, c: Fraction) -> int:
    """``av_rescale_q(a, b, c)``: a * b / c rounded to nearest, halves away from zero."""
    num = a * b.numerator * c.denominator
    den = b.denominator * c.numerator
    q, r = divmod(abs(num), den)
    if 2 * r >= den:
        q += 1
    return q if num >= 0 else -q


def _lrintf(x: float) -> int:
    """C ``lrintf``: round a float32 to nearest, ties to even (the default FP mode)."""
    return int(np.rint(np.float32(x)))


def _float_pts(pts: int, time_base: Fraction, enc_tb: Fraction) -> float:
    """ffmpeg's ``float_pts``: pts in output slots with 16 extra bits, nudged off midpoints."""
    extra_bits = min(max(29 - (enc_tb.denominator.bit_length() - 1), 0), 16)
    fine_tb = Fraction(enc_tb.numerator, enc_tb.denominator << extra_bits)
    value = _rescale(pts, time_base, fine_tb) / (1 << extra_bits)
    return value + (1.0 if value > 0 else -1.0) / (1 << 17)


def ffmpeg_rate_jpegs(
    pts: Sequence[int] | np.ndarray,
    time_base: Fraction,
    frame_rate: Fraction | float,
    *,
    out_fps: float = 8.0,
    pkt_durations: Sequence[int] | np.ndarray | None = None,
    single_stream: bool = False,
    legacy_ffmpeg: bool = True,
) -> np.ndarray:
    """Source frame index of each image ``ffmpeg -i clip -r out_fps %06d.jpg`` writes.

    ``pts`` are the video frames' presentation timestamps in ``time_base`` units, already
    shifted so the file starts at 0 (ffmpeg subtracts the input's start time), in
    presentation order. ``frame_rate`` is the stream's guessed rate (what ffmpeg gives the
    filter graph). ``single_stream`` selects ffmpeg's VSCFR variant (input with one stream).
    ``legacy_ffmpeg`` rounds each packet's duration to whole output slots as ffmpeg 3.x/4.x
    did (the LLP features date from 2020); it only matters for sources under 16 fps.
    """
    enc_tb = 1 / Fraction(out_fps).limit_denominator(1001)  # -r 8 -> encoder time base 1/8
    rate = Fraction(frame_rate).limit_denominator(1_000_000)
    # One source frame in output slots, capped at one slot because -r is set.
    base_duration = min(1.0 / (float(rate) * float(enc_tb)), 1.0)
    out: list[int] = []
    sync_opts, frame_number, last = 0, 0, -1
    last_nb0 = [0, 0, 0]
    for i, p in enumerate(pts):
        duration = base_duration
        if legacy_ffmpeg and pkt_durations is not None:
            pkt = _lrintf(float(pkt_durations[i]) * float(time_base) / float(enc_tb))
            duration = float(pkt) if pkt > 0 else duration
        sync_ipts = _float_pts(int(p), time_base, enc_tb)
        delta0 = sync_ipts - sync_opts  # drift of this frame from the next output slot
        delta = delta0 + duration
        nb0, nb = 0, 1
        if delta0 < 0 < delta:  # frame straddles the slot: clip it (delta is NOT recomputed)
            sync_ipts = float(sync_opts)
            duration += delta0
            delta0 = 0.0
        if single_stream and frame_number == 0 and delta0 >= 0.5:  # VSCFR: no initial dups
            delta, delta0 = duration, 0.0
            sync_opts = int(np.rint(sync_ipts))
        if delta < -1.1:
            nb = 0
        elif delta > 1.1:
            nb = _lrintf(delta)
            if delta0 > 1.1:
                nb0 = _lrintf(delta0 - 0.6)
        nb0 = min(nb0, nb)
        last_nb0 = [nb0] + last_nb0[:2]
        for k in range(nb):
            out.append(last if (k < nb0 and last >= 0) else i)
            sync_opts += 1
            frame_number += 1
        last = i
    flush = sorted(last_nb0)[1]  # mid_pred: at EOF ffmpeg repeats the median recent dup count
    out.extend([last] * flush if last >= 0 else [])
    return np.asarray(out, dtype=np.int64)


def select_jpeg_positions(n_jpegs: int, n_out: int = 80) -> np.ndarray:
    """The official choice of ``n_out`` of ``n_jpegs`` images (np.round: ties to even)."""
    return np.round(np.linspace(0, n_jpegs - 1, n_out)).astype(np.int64)


def _pad_jpegs(jpegs: np.ndarray, n_out: int) -> np.ndarray:
    """Repeat the last image until there are ``n_out`` (a clip shorter than 10 s)."""
    if len(jpegs) >= n_out:
        return jpegs
    return np.concatenate([jpegs, np.full(n_out - len(jpegs), jpegs[-1], dtype=np.int64)])


def check_frame_rule(frame_rule: str) -> str:
    """``frame_rule`` if known; ValueError naming the choices otherwise."""
    if frame_rule not in FRAME_RULES:
        raise ValueError(f"Expected frame_rule in {FRAME_RULES} but got {frame_rule!r}")
    return frame_rule


def choose_jpegs(jpegs: np.ndarray, n_out: int, frame_rule: str) -> np.ndarray:
    """The ``n_out`` images kept of the JPEG sequence: linspace over all of them (official),
    or over the sequence padded with its last image to ``n_out`` (aligned)."""
    if check_frame_rule(frame_rule) == "aligned":
        jpegs = _pad_jpegs(jpegs, n_out)
    return jpegs[select_jpeg_positions(len(jpegs), n_out)]


def official_frame_indices(
    n_source_frames: int, source_fps: float, *, out_fps: float = 8.0, n_out: int = 80,
    legacy_ffmpeg: bool = True, frame_rule: str = DEFAULT_FRAME_RULE, seconds: float = 10.0,
) -> np.ndarray:
    """Source frame indices of the official features for a constant-rate clip.

    Assumes frame k is at k / source_fps from the file start (an MP4 from ffmpeg with the
    video starting at 0). For real files :func:`decode_clip` uses the stream's actual
    timestamps instead. ``frame_rule="aligned"`` keeps frames starting before ``seconds``
    and repeats the last image when there are fewer than ``n_out``.
    """
    if n_source_frames < 1:
        raise ValueError(f"Expected n_source_frames >= 1 but got {n_source_frames}")
    rate = Fraction(source_fps).limit_denominator(1001)
    ticks = np.arange(n_source_frames)  # pts in time base 1/rate; each frame lasts 1 tick
    if check_frame_rule(frame_rule) == "aligned":
        ticks = ticks[ticks < seconds * rate]  # frame k starts at k / rate
    jpegs = ffmpeg_rate_jpegs(ticks, 1 / rate, rate, out_fps=out_fps, pkt_durations=np.ones_like(ticks),
                              legacy_ffmpeg=legacy_ffmpeg)
    return choose_jpegs(jpegs, n_out, frame_rule)


# ----------------------------------------------------------------------------------------
# Reading the stream's timestamps (demux only) and the audio (PyAV).


@dataclass(frozen=True)
class _Timeline:
    """What ffmpeg's rate conversion needs to know about the video stream."""

    pts: np.ndarray  # (N,) int64, presentation order, shifted so the file starts at 0
    durations: np.ndarray  # (N,) int64 packet durations (0 when unknown)
    time_base: Fraction
    frame_rate: Fraction
    n_streams: int
    duration: float  # seconds of the video stream
    has_audio: bool




def _read_timeline(path: str) -> _Timeline | None:
    """Demux (no decoding) the video packets' timestamps, as ffmpeg's input side sees them;
    None for a file without a video stream (audio only)."""
    import av

    with open_av(path) as container:
        if not container.streams.video:
            if not container.streams.audio:
                raise ClipError(f"{path}: expected a video or an audio stream but found neither")
            return None
        stream = container.streams.video[0]
        tb = Fraction(stream.time_base)
        start_us = container.start_time or 0
        # ffmpeg shifts every input timestamp by -start_time (rounded to the stream's base).
        offset = _rescale(-start_us, Fraction(1, AV_TIME_BASE), tb)
        packets = []
        try:
            for pkt in container.demux(stream):
                if pkt.pts is not None and pkt.size > 0:
                    packets.append((pkt.pts + offset, pkt.duration or 0))
        except av.FFmpegError as err:
            raise ClipError(f"{path}: corrupt video stream ({one_line(err)})") from err
        if not packets:
            raise ClipError(f"{path}: expected video frames but the stream has none")
        packets.sort()
        pts = np.array([p for p, _ in packets], dtype=np.int64)
        durations = np.array([d for _, d in packets], dtype=np.int64)
        rate = stream.guessed_rate or stream.average_rate or _rate_from_pts(pts, tb)
        if stream.duration:
            duration = float(stream.duration * tb)
        else:
            duration = float((pts[-1] - pts[0] + max(int(durations[-1]), 0)) * tb)
        return _Timeline(pts, durations, tb, Fraction(rate), len(container.streams),
                         duration, bool(container.streams.audio))


def _rate_from_pts(pts: np.ndarray, tb: Fraction) -> Fraction:
    """Median frame spacing as a rate, for streams that declare none."""
    step = float(np.median(np.diff(pts))) if len(pts) > 1 else 0.0
    if step <= 0:
        return Fraction(25)  # ffmpeg's own default when a rate cannot be guessed
    return Fraction(1 / (step * float(tb))).limit_denominator(1001)


def _read_audio(path: str, seconds: float, rates: Sequence[int],
                audio_path: str = DEFAULT_AUDIO_PATH) -> tuple[dict[int, np.ndarray], float]:
    """Decode the first audio stream to mono at each rate, padded/trimmed to ``seconds``.

    Samples are concatenated in decode order (what ``ffmpeg -i clip.mp4 out.wav`` does;
    LLP packet timestamps jitter by +-45 samples around contiguous 1024-sample frames).
    16 kHz follows ``audio_path`` (module docstring). Returns the per-rate arrays and the
    source audio length in seconds.
    """
    rates = tuple(rates)
    out: dict[int, np.ndarray] = {}
    source_seconds = None
    if 16000 in rates and audio_path == "moviepy":
        official, source_seconds = official_16k(path)  # (n,) float32, the official wav's mono
        out[16000] = _fit_length(official, int(round(seconds * 16000)))
        rates = tuple(r for r in rates if r != 16000)
    if rates:
        resampled, source_seconds = _read_resampled(path, seconds, rates)
        out.update(resampled)
    return out, float(source_seconds or 0.0)


def _read_resampled(path: str, seconds: float, rates: Sequence[int]) -> tuple[dict[int, np.ndarray], float]:
    """The channel mean at each rate, resampled with soxr HQ, padded/trimmed to ``seconds``."""
    import av
    import soxr

    with open_av(path) as container:
        stream = container.streams.audio[0]
        native = stream.codec_context.sample_rate
        need = int(math.ceil(seconds * native)) + 1024  # a little beyond, for the resampler
        chunks, total = [], 0
        try:
            for frame in container.decode(stream):
                x = frame.to_ndarray()  # (channels, n) planar or (1, n*channels) packed
                x = x.reshape(-1, frame.samples) if frame.format.is_planar else x.reshape(frame.samples, -1).T
                chunks.append(_to_float(x).mean(axis=0))  # (n,) mono: mean of channels
                total += frame.samples
        except av.FFmpegError as err:
            raise ClipError(f"{path}: corrupt audio stream ({one_line(err)})") from err
    mono = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)  # (total,)
    source_seconds = total / native
    mono = mono[:need]
    out = {}
    for rate in rates:
        y = soxr_16k(mono, native) if rate == 16000 else (
            soxr.resample(mono, native, rate, quality="HQ") if rate != native else mono)
        out[rate] = _fit_length(np.asarray(y, dtype=np.float32), int(round(seconds * rate)))
    return out, source_seconds


def _to_float(x: np.ndarray) -> np.ndarray:
    """Samples as float32 in [-1, 1] whatever the codec's sample format (AAC gives float)."""
    if x.dtype == np.uint8:
        return (x.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(x.dtype, np.integer):
        return x.astype(np.float32) / float(np.iinfo(x.dtype).max + 1)
    return x.astype(np.float32, copy=False)


def _fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """Trim to the first ``n`` samples or pad with zeros to ``n``."""
    if len(x) >= n:
        return np.ascontiguousarray(x[:n])
    return np.concatenate([x, np.zeros(n - len(x), dtype=x.dtype)])


# ----------------------------------------------------------------------------------------
# The decode itself (runs in the worker process unless timeout_s is None).


def _select(tl: _Timeline, path: str, n_frames: int, out_fps: float, seconds: float,
            legacy_ffmpeg: bool = True, frame_rule: str = DEFAULT_FRAME_RULE) -> tuple[np.ndarray, list[str]]:
    """Source indices of the ``n_frames`` frames, plus notes on trimming/padding."""
    notes = []
    kept = len(tl.pts)
    if frame_rule == "aligned":
        limit = _rescale(int(round(seconds * AV_TIME_BASE)), Fraction(1, AV_TIME_BASE), tl.time_base)
        kept = int(np.searchsorted(tl.pts, limit, side="left"))  # frames starting before `seconds`
        if kept == 0:
            raise ClipError(f"{path}: expected video frames in the first {seconds:g}s but the first starts later")
        if kept < len(tl.pts):
            notes.append(f"video trimmed {tl.duration:.2f}s->{seconds:g}s")
    jpegs = ffmpeg_rate_jpegs(tl.pts[:kept], tl.time_base, tl.frame_rate, out_fps=out_fps,
                              pkt_durations=tl.durations[:kept], single_stream=tl.n_streams == 1,
                              legacy_ffmpeg=legacy_ffmpeg)
    if frame_rule == "aligned" and len(jpegs) < n_frames:
        notes.append(f"video padded {tl.duration:.2f}s->{seconds:g}s "
                     f"({n_frames - len(jpegs)} of {n_frames} frames repeat the last)")
    elif frame_rule == "official" and abs(tl.duration - seconds) > _NOTE_TOLERANCE_S:
        notes.append(f"video {tl.duration:.2f}s: {n_frames} frames spread over its {len(jpegs)} JPEGs "
                     f"(official rule{', some repeat' if len(jpegs) < n_frames else ''})")
    vfr = variable_frame_rate(tl.pts, tl.time_base)
    if vfr:
        notes.append(vfr)
    return choose_jpegs(jpegs, n_frames, frame_rule), notes


def variable_frame_rate(pts: np.ndarray, time_base: Fraction, tolerance: float = 0.1) -> str | None:
    """A note when the frame steps vary by more than ``tolerance`` of the typical step, else None.

    Why a note and not a fix: ffmpeg's ``-r 8`` is replayed on the packet timestamps, which
    matches it on constant-rate clips; on variable-rate ones its choice can differ by one
    8-fps slot near a rate change, and the last frame's pixels may be another frame's.
    The clip's record then says so, and a user comparing with released features knows why.
    """
    steps = np.diff(np.sort(pts))  # presentation order: B-frame reordering is not a rate change
    steps = steps[steps > 0]
    if len(steps) < 2:
        return None
    typical = float(np.median(steps))
    low, high = float(steps.min()), float(steps.max())
    if high - low <= max(1.0, tolerance * typical):
        return None
    ms = 1000.0 * float(time_base)
    return (f"variable frame rate: frame steps {low * ms:.1f}-{high * ms:.1f} ms (typical {typical * ms:.1f}); "
            f"the 8-fps choice may differ from ffmpeg's by one slot near rate changes")


def _decode_frames(path: str, indices: np.ndarray, n_expected: int, decoder: str = "decord",
                   decode_device: str = "cpu") -> np.ndarray:
    """Decode only the chosen frames with ``decoder`` (decord or torchcodec, :mod:`.readers`)."""
    return read_frames(path, indices, n_expected, decoder, decode_device)  # (n_frames, H, W, 3)


def _decode_local(path: str, n_frames: int, out_fps: float, seconds: float,
                  audio_rates: tuple[int, ...], legacy_ffmpeg: bool = True,
                  frame_rule: str = DEFAULT_FRAME_RULE, audio_path: str = DEFAULT_AUDIO_PATH,
                  decoder: str = "decord", decode_device: str = "cpu") -> DecodedClip:
    """Decode in this process (no time limit)."""
    tl = _read_timeline(path)
    if tl is None:
        return _decode_audio_only(path, seconds, audio_rates, audio_path)
    indices, notes = _select(tl, path, n_frames, out_fps, seconds, legacy_ffmpeg, frame_rule)
    frames = _decode_frames(path, indices, len(tl.pts), decoder, decode_device)
    frame_time = tl.pts[indices].astype(np.float64) * float(tl.time_base)  # (n_frames,)
    audio: dict[int, np.ndarray] = {}
    if not tl.has_audio:
        notes.append("no audio stream")
    elif audio_rates:
        audio, source_seconds = _read_audio(path, seconds, audio_rates, audio_path)
        if source_seconds < seconds - _NOTE_TOLERANCE_S:
            notes.append(f"audio padded {source_seconds:.2f}s->{seconds:g}s")
        elif source_seconds > seconds + _NOTE_TOLERANCE_S:
            notes.append(f"audio trimmed {source_seconds:.2f}s->{seconds:g}s")
    return DecodedClip(
        clip_id=Path(path).stem[:11], path=path, frames=frames, frame_index=indices,
        frame_time=frame_time, audio_16k=audio.get(16000), audio_48k=audio.get(48000),
        source_fps=float(tl.frame_rate), n_source_frames=len(tl.pts), duration=tl.duration,
        has_audio=tl.has_audio, notes=tuple(notes),
    )


def _decode_audio_only(path: str, seconds: float, audio_rates: tuple[int, ...],
                       audio_path: str = DEFAULT_AUDIO_PATH) -> DecodedClip:
    """A file with audio and no video: the audio extractors get their input, the visual ones
    fail for this clip with "no video stream" (as audio ones do for a clip without audio)."""
    audio, source_seconds = _read_audio(path, seconds, audio_rates, audio_path) if audio_rates else ({}, 0.0)
    return DecodedClip(
        clip_id=Path(path).stem[:11], path=path, frames=None, frame_index=np.zeros(0, np.int64),
        frame_time=np.zeros(0, np.float64), audio_16k=audio.get(16000), audio_48k=audio.get(48000),
        source_fps=0.0, n_source_frames=0, duration=source_seconds, has_audio=True,
        notes=("no video stream",),
    )


# ----------------------------------------------------------------------------------------
# Watchdog: a persistent worker process per calling thread, killed on timeout.
#
# The worker is a plain ``python -c`` subprocess talking over two OS pipes with
# multiprocessing's Connection framing, not a multiprocessing.Process: spawn would re-run
# the caller's ``__main__`` (breaking scripts without a main guard) and daemonic processes
# (dask workers) may not start multiprocessing children at all.

_WORKER_CODE = (
    "import sys, json; sys.path[:0] = json.loads(sys.argv[3]); "
    "from avvp_pipe.pipeline.decode.clip import _worker_main; "
    "_worker_main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[4] if len(sys.argv) > 4 else 'decord')"
)


def _worker_main(read_fd: int, write_fd: int, reader: str = "decord") -> None:
    """Worker loop: run ``fn(*args)`` per request, answer ("ok"|"err", payload); EOF ends it.

    ``reader`` is the frame reader this worker serves: torchcodec (and so torch, ~1 GB of
    memory and ~10 s) is imported at start-up only by workers that read with it.
    """
    from multiprocessing.connection import Connection

    import av  # noqa: F401 - import now so a clip's time limit does not include imports
    import decord  # noqa: F401
    import soxr  # noqa: F401

    if reader == "torchcodec":
        from avvp_pipe.pipeline.decode.readers import torchcodec_problem

        torchcodec_problem()  # imports torch + torchcodec now: not inside a clip's time limit

    requests, replies = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    replies.send(("ready", None))
    while True:
        try:
            fn, args = requests.recv()
        except EOFError:  # the parent closed its end or exited
            return
        try:
            replies.send(("ok", fn(*args)))
        except AvvpError as err:
            replies.send(("err", err))
        except Exception as err:  # noqa: BLE001 - reported to the parent as a ClipError
            replies.send(("err", ClipError(f"{args[0] if args else '?'}: {type(err).__name__}: {one_line(err)}")))


class _Worker:
    """One worker subprocess and its pipes; ``call`` kills it when a request overruns."""

    def __init__(self, reader: str = "decord") -> None:
        from multiprocessing.connection import Connection

        self.reader = reader
        req_r, req_w = os.pipe()  # parent -> worker
        rep_r, rep_w = os.pipe()  # worker -> parent
        paths = json.dumps([p for p in sys.path if isinstance(p, str)])
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER_CODE, str(req_r), str(rep_w), paths, reader],
                pass_fds=(req_r, rep_w), stdin=subprocess.DEVNULL, close_fds=True,
            )
        except OSError as err:
            os.close(req_w)
            os.close(rep_r)
            raise ClipError(f"could not start a decode worker ({one_line(err)})") from err
        finally:
            os.close(req_r)  # the worker's ends; the parent keeps only its own
            os.close(rep_w)
        self.requests = Connection(req_w, readable=False)
        self.replies = Connection(rep_r, writable=False)
        self.calls = 0
        _ALL_WORKERS.add(self)
        if not self._poll(_STARTUP_TIMEOUT_S):
            self.kill()
            raise ClipError(f"decode worker did not start within {_STARTUP_TIMEOUT_S:g}s")
        try:
            self.replies.recv()  # "ready": imports done; a clip's time limit starts after this
        except EOFError as err:
            code = self.kill()
            raise ClipError(f"decode worker exited while starting (exit code {code})") from err

    def _poll(self, timeout_s: float) -> bool:
        return self.replies.poll(max(timeout_s, 0.0))

    def call(self, fn: Callable, args: tuple, timeout_s: float, what: str) -> Any:
        self.calls += 1
        self.requests.send((fn, args))
        if not self._poll(timeout_s):
            self.kill()
            raise ClipError(f"{what}: decoding timed out after {timeout_s:g}s (worker killed)")
        try:
            status, payload = self.replies.recv()
        except (EOFError, OSError) as err:
            code = self.kill()
            raise ClipError(f"{what}: decoder process died (exit code {code})") from err
        if status == "err":
            raise payload
        return payload

    def kill(self) -> int | None:
        """Stop the process now (a hung decoder ignores polite requests); its exit code."""
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait()
        for conn in (self.requests, self.replies):
            conn.close()
        _ALL_WORKERS.discard(self)
        return code

    @property
    def usable(self) -> bool:
        return self.proc.poll() is None and self.calls < _RECYCLE_AFTER


_local = threading.local()
_ALL_WORKERS: set[_Worker] = set()


def _run_with_timeout(fn: Callable, args: tuple, timeout_s: float, what: str, reader: str = "decord") -> Any:
    """Run ``fn(*args)`` in this thread's worker process for ``reader``; ClipError if it takes too long."""
    worker: _Worker | None = getattr(_local, "worker", None)
    if worker is None or not worker.usable or worker.reader != reader:
        if worker is not None:
            worker.kill()
        worker = _local.worker = _Worker(reader)
    try:
        return worker.call(fn, args, timeout_s, what)
    finally:
        if worker.proc.poll() is not None:
            _local.worker = None


def shutdown_worker() -> None:
    """Stop this thread's decode worker (all workers are also stopped at exit)."""
    worker = getattr(_local, "worker", None)
    if worker is not None:
        worker.kill()
        _local.worker = None


@atexit.register
def _kill_all_workers() -> None:
    for worker in list(_ALL_WORKERS):
        worker.kill()


# ----------------------------------------------------------------------------------------
# Public entry points.


def _check_file(path: str) -> None:
    """Fail fast, in the caller's process, on paths that cannot be a clip."""
    p = Path(path)
    if not p.exists():
        raise ClipError(f"{path}: expected a video file but it does not exist")
    if not p.is_file():
        raise ClipError(f"{path}: expected a regular video file but got something else")
    if p.stat().st_size == 0:
        raise ClipError(f"{path}: expected a video file but it is empty (0 bytes)")


def decode_clip(
    path: str | os.PathLike,
    *,
    n_frames: int = 80,
    out_fps: float = 8.0,
    seconds: float = 10.0,
    audio_rates: Sequence[int] = AUDIO_RATES,
    timeout_s: float | None = 60.0,
    legacy_ffmpeg: bool = True,
    frame_rule: str = DEFAULT_FRAME_RULE,
    audio_path: str = DEFAULT_AUDIO_PATH,
    decoder: str = DEFAULT_DECODER,
    decode_device: str = "cpu",
) -> DecodedClip:
    """Decode the official ``n_frames`` frames and ``seconds`` of mono audio of one clip.

    ``frame_rule`` "official" spreads the frames over the whole clip, whatever its length;
    "aligned" pads a short clip (last frame repeated) and trims a long one to its first
    ``seconds``. Audio is always padded with zeros or trimmed to ``seconds``; ``audio_path``
    picks how 16 kHz is made (module docstring). Length adjustments go in ``notes``. A missing,
    empty or corrupt file raises ClipError, as does a decode taking over ``timeout_s``
    (the worker process is killed). ``timeout_s=None`` decodes in this process with no
    time limit. ``legacy_ffmpeg=False`` follows newer ffmpeg's (6.1+) frame choice instead
    of the 2020-era one (they differ only for sources under 16 fps). ``decoder`` (decord,
    torchcodec or auto) reads the chosen frames; ``decode_device`` "cuda" with torchcodec
    decodes on NVDEC (:func:`avvp_pipe.pipeline.decode.readers.resolve_decoder`).
    """
    path = os.fspath(path)
    rates = tuple(int(r) for r in audio_rates)
    unknown = sorted(set(rates) - set(AUDIO_RATES))
    if unknown:
        raise ValueError(f"Expected audio_rates from {AUDIO_RATES} but got {unknown}")
    if n_frames < 1 or out_fps <= 0 or seconds <= 0:
        raise ValueError(f"Expected positive n_frames, out_fps, seconds but got {n_frames}, {out_fps}, {seconds}")
    _check_file(path)
    check_frame_rule(frame_rule)
    check_audio_path(audio_path)
    reader, reader_device = resolve_decoder(decoder, decode_device)  # here: a missing reader is one error, not N
    args = (path, int(n_frames), float(out_fps), float(seconds), rates, bool(legacy_ffmpeg), frame_rule, audio_path,
            reader, reader_device)
    if timeout_s is None:
        return _decode_local(*args)
    return _run_with_timeout(_decode_local, args, float(timeout_s), path, reader)


def save_npz(clip: DecodedClip, out: str | os.PathLike) -> None:
    """Write what the extractors see, atomically: frames, frame_index, frame_time, audio_*.

    A missing audio array (not requested, or no audio stream) is stored as an empty
    float32 array so every file has the same five keys.
    """
    out = Path(out)
    empty = np.zeros(0, dtype=np.float32)
    arrays = {
        "frames": clip.frames if clip.frames is not None else np.zeros((0, 0, 0, 3), np.uint8),
        "frame_index": clip.frame_index,
        "frame_time": clip.frame_time,
        "audio_16k": clip.audio_16k if clip.audio_16k is not None else empty,
        "audio_48k": clip.audio_48k if clip.audio_48k is not None else empty,
    }
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:  # a file object: numpy appends no ".npz"
        np.savez(fh, **arrays)
