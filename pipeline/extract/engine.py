"""Stage one: decode each clip once and feed every requested extractor from memory.

The official pipeline wrote every frame to JPEG and read it back once per network; decoding
dominated. Here one decode feeds all extractors:

    decode threads (each drives a watchdog decode process, ``avvp_pipe.pipeline.decode.clip``)
      -> ``prepare`` per extractor on CPU (resize, crop, log-mel)
      -> bounded queue (decoding runs ahead of the models, memory stays bounded)
      -> per-extractor batcher: rows from several clips until the target batch
      -> ``embed`` (pinned memory + non_blocking copy on CUDA, autocast per precision)
      -> ``finalize`` per clip -> ``FeatureStore.write_clips`` per store.

Resume is the stores' business: a clip is skipped by a store once its status chunk says
done, so only pending clips of each store are computed, and a clip done in every store is
not decoded at all. A clip that fails in one extractor (no audio for an audio network) is
recorded with ``mark_failed`` and the others go on.

With dask (``--workers``/``--scheduler``) the client creates every store, then submits work
units (batches of clips); a unit owns its clips across all stores and a store has one chunk
per clip, so no two workers write the same chunk. Each worker process builds each model
once and keeps it for all its units.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from avvp_pipe.core.errors import AvvpError, one_line
from avvp_pipe.pipeline.extract.plan import (ClipTask, DEFAULT_BATCH, ExtractOptions, MISSING_VIDEO, RunResult,
                                             audio_path_16k)

if TYPE_CHECKING:  # torch stays out of `avvp-pipe --help`
    import torch
    from avvp_pipe.cache.store import FeatureStore
    from avvp_pipe.extractors.base import Extractor


# ----------------------------------------------------------------------------------------
# The engine: decode threads -> bounded queue -> per-extractor batches -> stores


@dataclass
class _Prepared:
    """A decoded clip's items per extractor (CPU tensors), or why it failed."""

    task: ClipTask
    items: dict[str, Any] = field(default_factory=dict)  # name -> (n_items, *item_shape) float32
    errors: dict[str, str] = field(default_factory=dict)  # name -> reason
    notes: tuple[str, ...] = ()
    frames: int = 0
    decoded: bool = False


def audio_rates(extractors: Mapping[str, Extractor]) -> tuple[int, ...]:
    """The sample rates the audio extractors read (none: the decoder skips audio)."""
    return tuple(sorted({int(ex.spec.input["sample_rate"]) for ex in extractors.values()
                         if ex.spec.modality == "audio"}))


def failure_reason(err: BaseException) -> str:
    """One line: the error's own text (ClipError texts name the file) or its type and text."""
    text = one_line(err, limit=10_000)
    return text if isinstance(err, AvvpError) else f"{type(err).__name__}: {text}"


def decode_and_prepare(task: ClipTask, extractors: Mapping[str, Extractor], opts: ExtractOptions,
                       rates: tuple[int, ...]) -> _Prepared:
    """Decode one clip once and prepare it for each extractor that needs it; never raises
    for a clip's own problems (they become per-extractor failure reasons)."""
    from avvp_pipe.pipeline.decode.clip import decode_clip

    out = _Prepared(task)
    if not task.path:
        out.errors = {name: MISSING_VIDEO for name in task.names}
        return out
    try:
        clip = decode_clip(task.path, audio_rates=rates, timeout_s=opts.decode_timeout, frame_rule=opts.frame_rule,
                           audio_path=audio_path_16k(extractors), decoder=opts.decoder, decode_device=opts.device)
    except Exception as err:  # noqa: BLE001 - ClipError and decoder surprises alike fail this clip only
        out.errors = {name: failure_reason(err) for name in task.names}
        return out
    out.decoded, out.notes = True, tuple(clip.notes)
    out.frames = 0 if clip.frames is None else int(clip.frames.shape[0])  # audio-only files have none
    for name in task.names:
        try:
            out.items[name] = extractors[name].prepare(clip)  # (n_items, *item_shape) float32 CPU
        except Exception as err:  # noqa: BLE001 - e.g. no audio: this extractor fails, others go on
            out.errors[name] = failure_reason(err)
    return out


class _Batcher:
    """Rows of several clips for one extractor, embedded ``batch_size`` rows at a time.

    The last, partial batch is padded with zero rows to ``batch_size``. Why: oneDNN (and
    cuDNN autotuning) pick kernels by batch shape, and a row's result changes in the last
    bits with the batch size; with one shape per run a row's features do not depend on
    which clips shared its batch, so a resumed run writes the same bytes as an
    uninterrupted one. It also spares cuDNN a new autotune for the odd last batch.
    """

    def __init__(self, name: str, extractor: Extractor, batch_size: int, device: torch.device, precision: str):
        self.name, self.ex, self.batch_size = name, extractor, batch_size
        self.device, self.precision = device, precision
        self.waiting: deque[list[Any]] = deque()  # [clip_id, items, next row]
        self.rows = 0
        self.parts: dict[str, list[Any]] = {}  # clip_id -> embedded row blocks so far

    def add(self, cid: str, items: torch.Tensor) -> None:
        if items.shape[0] != self.ex.items_per_clip:
            raise AvvpError(f"{self.name}.prepare returned {items.shape[0]} items for clip {cid}, "
                            f"expected {self.ex.items_per_clip}")
        self.waiting.append([cid, items, 0])
        self.parts[cid] = []
        self.rows += items.shape[0]

    def step(self) -> list[tuple[str, Any]]:
        """Embed up to ``batch_size`` waiting rows; the clips whose rows are now all embedded."""
        take, segments, pieces = min(self.batch_size, self.rows), [], []
        while take > 0:
            entry = self.waiting[0]
            cid, items, start = entry
            n = min(take, items.shape[0] - start)
            pieces.append(items[start:start + n])
            segments.append((cid, n))
            entry[2] += n
            take -= n
            self.rows -= n
            if entry[2] == items.shape[0]:
                self.waiting.popleft()
        emb = self._embed(pieces)  # (rows, D) float32 on CPU
        complete, offset = [], 0
        for cid, n in segments:
            self.parts[cid].append(emb[offset:offset + n])
            offset += n
            if sum(p.shape[0] for p in self.parts[cid]) == self.ex.items_per_clip:
                complete.append((cid, self._cat(self.parts.pop(cid))))
        return complete

    def _embed(self, pieces: list[torch.Tensor]) -> torch.Tensor:
        import torch

        cuda = self.device.type == "cuda"
        rows = sum(p.shape[0] for p in pieces)
        if rows < self.batch_size:  # pad: every call has one shape (see _Batcher docstring)
            pieces = [*pieces, pieces[0].new_zeros((self.batch_size - rows, *pieces[0].shape[1:]))]
        batch = torch.empty((self.batch_size, *pieces[0].shape[1:]), dtype=pieces[0].dtype, pin_memory=cuda)
        torch.cat(pieces, out=batch)  # (B, *item_shape): one host buffer, pinned on CUDA
        x = batch.to(self.device, non_blocking=cuda)
        if x.ndim == 4 and self.ex.spec.modality == "visual-2d":
            x = x.contiguous(memory_format=torch.channels_last)  # layout only, same values
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            emb = self.ex.embed(x)  # (B, D) float32
        return emb[:rows].cpu()  # (rows, D): padding rows dropped

    @staticmethod
    def _cat(blocks: list[torch.Tensor]) -> torch.Tensor:
        import torch

        return blocks[0] if len(blocks) == 1 else torch.cat(blocks)  # (items_per_clip, D)


class Engine:
    """Runs tasks against built extractors and open stores; commits after every batch."""

    def __init__(self, extractors: Mapping[str, Extractor], stores: Mapping[str, FeatureStore],
                 opts: ExtractOptions, on_clip: Callable[[int], None] | None = None):
        import torch

        self.extractors, self.stores, self.opts = dict(extractors), dict(stores), opts
        self.on_clip = on_clip or (lambda frames: None)
        device = next(iter(self.extractors.values())).device if self.extractors else torch.device("cpu")
        for ex in self.extractors.values():
            _channels_last(ex)
        self.batchers = {name: _Batcher(name, ex, opts.batch_size or DEFAULT_BATCH[ex.spec.modality], device,
                                        opts.precision) for name, ex in self.extractors.items()}
        self.result = RunResult(done={n: [] for n in self.extractors}, failed={n: {} for n in self.extractors})
        self._open: dict[str, set[str]] = {}  # clip id -> extractors still to write or fail
        self._frames: dict[str, int] = {}
        self._notes: dict[str, tuple[str, ...]] = {}
        self._retry: dict[str, tuple[str, ...]] = {}

    def run(self, tasks: Sequence[ClipTask]) -> RunResult:
        """Decode ahead in threads, embed in this thread; returns what was written and failed."""
        rates = audio_rates(self.extractors)
        todo: queue.Queue = queue.Queue()
        for task in tasks:
            todo.put(task)
        ready: queue.Queue = queue.Queue(maxsize=self.opts.queue)
        stop = threading.Event()
        threads = [threading.Thread(target=self._decode_loop, args=(todo, ready, stop, rates),
                                    name=f"avvp-decode-{i}", daemon=True)
                   for i in range(min(self.opts.decode_workers, max(len(tasks), 1)))]
        for thread in threads:
            thread.start()
        try:
            for _ in range(len(tasks)):
                item = ready.get()
                if isinstance(item, BaseException):
                    raise item
                self._accept(item)
                self._embed_full_batches()
            self._flush()
        finally:
            stop.set()
            _drain(ready)
            for thread in threads:
                thread.join(timeout=5)
        return self.result

    def _decode_loop(self, todo: queue.Queue, ready: queue.Queue, stop: threading.Event,
                     rates: tuple[int, ...]) -> None:
        from avvp_pipe.pipeline.decode.clip import shutdown_worker

        try:
            while not stop.is_set():
                try:
                    task = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    prepared: Any = decode_and_prepare(task, self.extractors, self.opts, rates)
                except BaseException as err:  # noqa: BLE001 - handed to the main thread, re-raised there
                    prepared = err
                while not stop.is_set():
                    try:
                        ready.put(prepared, timeout=0.2)
                        break
                    except queue.Full:
                        continue
        finally:
            shutdown_worker()  # this thread's decode process

    def _accept(self, prep: _Prepared) -> None:
        cid = prep.task.clip_id
        self._open[cid] = set(prep.task.names)
        self._frames[cid] = prep.frames
        self._notes[cid] = prep.notes
        self._retry[cid] = prep.task.retry
        self.result.decoded += int(prep.decoded)
        for name, reason in prep.errors.items():
            self._fail(cid, name, reason)
        for name, items in prep.items.items():
            self.batchers[name].add(cid, items)

    def _embed_full_batches(self) -> None:
        for name, batcher in self.batchers.items():
            while batcher.rows >= batcher.batch_size:
                self._commit(name, batcher.step())

    def _flush(self) -> None:
        for name, batcher in self.batchers.items():
            while batcher.rows > 0:
                self._commit(name, batcher.step())

    def _commit(self, name: str, complete: list[tuple[str, Any]]) -> None:
        """finalize each complete clip, write the finite ones as one unit, fail the others."""
        ex, ids, feats, records = self.extractors[name], [], [], {}
        for cid, emb in complete:
            try:
                out = ex.finalize(emb)  # (T, D) float32
            except Exception as err:  # noqa: BLE001 - one clip's bad output fails only that clip
                self._fail(cid, name, failure_reason(err))
                continue
            if not np.isfinite(out).all():
                self._fail(cid, name, f"non-finite features from {name} (precision {self.opts.precision})")
                continue
            ids.append(cid)
            feats.append(out)
            record = self._record(cid, name)
            if record:
                records[cid] = record
        if ids:
            self.stores[name].write_clips(ids, np.stack(feats), records or None)  # (n, T, D)
            self.result.done[name].extend(ids)
            for cid in ids:
                self._close(cid, name)

    def _record(self, cid: str, name: str) -> dict[str, Any] | None:
        """Padding/trimming notes; also replaces an earlier failure record of this clip."""
        notes = self._notes.get(cid, ())
        if not notes and name not in self._retry.get(cid, ()):
            return None
        return {"status": "done", "notes": list(notes), "time": time.time()}

    def _fail(self, cid: str, name: str, reason: str) -> None:
        self.stores[name].mark_failed(cid, reason)
        self.result.failed[name][cid] = reason
        self._close(cid, name)

    def _close(self, cid: str, name: str) -> None:
        waiting = self._open.get(cid)
        if waiting is None:
            return
        waiting.discard(name)
        if not waiting:
            del self._open[cid]
            frames = self._frames.pop(cid, 0)
            self.result.frames += frames
            self._notes.pop(cid, None)
            self._retry.pop(cid, None)
            self.on_clip(frames)


def _channels_last(ex: Extractor) -> None:
    """NHWC weights for 2D CNNs that do not set it themselves (ImageExtractor does): faster
    oneDNN/cuDNN kernels, tensor cores under autocast; the batch is made NHWC in _Batcher."""
    import torch

    if ex.spec.modality == "visual-2d" and not getattr(ex, "channels_last", False):
        ex.model = ex.model.to(memory_format=torch.channels_last)


def _drain(q: queue.Queue) -> None:
    """Empty a queue so producer threads blocked on put() can see the stop flag."""
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return


