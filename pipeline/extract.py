"""Stage one: decode each clip once and feed every requested extractor from memory.

The official pipeline wrote every frame to JPEG and read it back once per network; decoding
dominated. Here one decode feeds all extractors:

    decode threads (each drives a watchdog decode process, ``pipeline.decode``)
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

import logging
import os
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import EXIT_USAGE, AvvpError, PartialFailure, WeightsError

if TYPE_CHECKING:  # torch stays out of `avvp-pipe --help`
    import torch

    from cache.store import FeatureStore
    from extractors.base import Extractor

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16")
VIDEO_SUFFIX = ".mp4"
#: Target rows per ``embed`` call when ``--batch-size`` is not given, by modality. A 2D
#: batch of 128 frames at 224x224 is 77 MB of float32; a 3D item is 8 frames at 112x112.
DEFAULT_BATCH = {"visual-2d": 128, "visual-3d": 16, "audio": 64}
#: How the 80 frames are chosen (recorded in provenance; pipeline.decode's defaults).
DECODE_RULE = {"n_frames": 80, "out_fps": 8.0, "seconds": 10.0, "legacy_ffmpeg": True,
               "rule": "ffmpeg -r 8 JPEG sequence replayed on timestamps, then "
                       "np.round(np.linspace(0, n - 1, 80)) (pipeline.decode)"}
MISSING_VIDEO = "video file missing"


class ExtractUsageError(AvvpError):
    """A bad combination of options: one line on stderr and click's usage exit code."""

    exit_code = EXIT_USAGE


# ----------------------------------------------------------------------------------------
# Options and the clip list


@dataclass(frozen=True)
class ExtractOptions:
    """Everything that steers a run except which clips (see :class:`ClipSet`)."""

    extractors: tuple[str, ...]
    batch_size: int | None = None  # rows per embed call for every extractor; None: DEFAULT_BATCH
    decode_workers: int = 2  # decode threads, each with its own watchdog decode process
    queue: int = 4  # prepared clips waiting for the models (bounds memory)
    device: str = "cpu"
    precision: str = "fp32"
    weights_dir: str | None = None
    random_init: bool = False
    decode_timeout: float | None = 60.0  # seconds per clip; None decodes in-process, no limit
    dtype: str = "float32"  # storage dtype of the stores
    unit_clips: int = 8  # clips per dask work unit

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ExtractUsageError(f"--precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if not self.extractors:
            raise ExtractUsageError("--extractors: expected at least one extractor name")
        for name, value in (("--decode-workers", self.decode_workers), ("--queue", self.queue),
                            ("--unit-clips", self.unit_clips), ("--batch-size", self.batch_size or 1)):
            if value < 1:
                raise ExtractUsageError(f"{name}: expected a positive integer but got {value}")


@dataclass(frozen=True)
class ClipSet:
    """Which clips a store holds, which of them this run works on, and their files."""

    dataset: str
    store_ids: list[str]  # every store of the dataset is made for this list, in this order
    work_ids: list[str]  # the clips this run extracts (a subset of store_ids)
    paths: dict[str, str]  # id -> video file; ids without a file are "video file missing"
    splits: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)  # .mp4 files whose name is not an LLP id


def default_dataset(videos: str | os.PathLike) -> str:
    """The videos folder's parent name (``avvp-pipe synth OUT`` writes ``OUT/videos``), else 'llp'."""
    return Path(videos).resolve().parent.name or "llp"


def scan_videos(videos: str | os.PathLike) -> tuple[dict[str, str], list[str]]:
    """id -> path for every ``*.mp4`` in ``videos``; names that are not LLP ids are returned apart."""
    from pipeline.llp import clip_id

    folder = Path(videos).resolve()  # absolute: dask workers may run in another folder
    if not folder.is_dir():
        raise ExtractUsageError(f"--videos {folder}: expected a folder of <id>.mp4 clips but it does not exist")
    paths: dict[str, str] = {}
    ignored: list[str] = []
    for path in sorted(folder.glob(f"*{VIDEO_SUFFIX}")):
        try:
            cid = clip_id(path.name)
        except AvvpError:
            ignored.append(path.name)
            continue
        if cid in paths:
            raise AvvpError(f"{folder}: clip {cid} has two files ({Path(paths[cid]).name}, {path.name}); "
                            "expected one file per clip")
        paths[cid] = str(path)
    return paths, ignored


def read_clip_list(path: str | os.PathLike) -> list[str]:
    """Clip ids from a file with one clip name per line (# comments and blank lines skipped)."""
    from pipeline.llp import clip_id

    file = Path(path)
    if not file.is_file():
        raise ExtractUsageError(f"--clips {file}: expected a file with one clip name per line but it does not exist")
    ids: list[str] = []
    for line in file.read_text(encoding="utf-8").splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            ids.append(clip_id(name))
    return list(dict.fromkeys(ids))  # file order, duplicates once


def find_clips(videos: str | os.PathLike, *, dataset: str | None = None, annotations: str | os.PathLike | None = None,
               split: str | None = None, clips_file: str | os.PathLike | None = None) -> ClipSet:
    """The clip set of a run.

    With annotations, stores hold every annotated clip (so train/val/test runs share the
    dataset's stores) and the run works on ``split`` (default all). Without, stores hold
    every clip in ``videos`` plus any named in ``clips_file``. ``clips_file`` narrows the work.
    """
    if split is not None and annotations is None:
        raise ExtractUsageError("--split needs --annotations DIR (the official LLP CSV files)")
    paths, ignored = scan_videos(videos)
    wanted = read_clip_list(clips_file) if clips_file is not None else None
    splits: dict[str, str] = {}
    if annotations is not None:
        from pipeline.llp import load_annotations

        ann = load_annotations(annotations, require_dense=False)
        store_ids = list(ann.clips)
        splits = {cid: clip.split for cid, clip in ann.clips.items()}
        work = ann.split_ids(split or "all")
        if wanted is not None:
            for cid in wanted:
                ann.resolve(cid)  # an unknown clip is an error naming the annotations
            chosen = set(wanted)
            work = [cid for cid in work if cid in chosen]
    else:
        store_ids = sorted(set(paths) | set(wanted or ()))
        work = list(wanted) if wanted is not None else sorted(paths)
    return ClipSet(dataset=dataset or default_dataset(videos), store_ids=store_ids, work_ids=work,
                   paths={cid: paths[cid] for cid in store_ids if cid in paths}, splits=splits, ignored=ignored)


# ----------------------------------------------------------------------------------------
# Extractors, weights and stores


def resolve_names(names: Iterable[str] | None) -> list[str]:
    """Requested extractor names (all registered ones when None), checked against the registry."""
    import extractors  # noqa: F401  (registers the families)
    from extractors.registry import REGISTRY

    if names is None:
        return sorted(REGISTRY)
    out = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    unknown = [n for n in out if n not in REGISTRY]
    if unknown:
        raise ExtractUsageError(f"--extractors: unknown extractor(s) {', '.join(unknown)}; "
                                f"expected names from: {', '.join(sorted(REGISTRY))}")
    if not out:
        raise ExtractUsageError("--extractors: expected at least one extractor name")
    return out


def check_weights(names: Sequence[str], weights_dir: str | None, random_init: bool) -> None:
    """Fail before any decoding when a package or weights file is missing, naming every one.

    "downloadable" weights pass here; they are fetched when the model is built, which also
    happens before decoding starts.
    """
    from extractors import registry, weights

    problems: list[str] = []
    for name in names:
        spec = registry.get_spec(name)
        avail = registry.availability(name, weights_dir)
        if avail["missing_packages"]:
            problems.append(f"{name} needs the Python package(s) {', '.join(avail['missing_packages'])} "
                            f"(pip install {' '.join(avail['missing_packages'])})")
        elif not random_init and avail["weights"] == "missing":
            problems.append(_missing_weights_text(spec, weights_dir, weights))
    if problems:
        tail = "" if random_init else " (or pass --random-init for a test run with untrained weights)"
        raise WeightsError("; ".join(problems) + tail)


def _missing_weights_text(spec: Any, weights_dir: str | None, weights: Any) -> str:
    """The weights module's own message (file, folder, how to get it); OpenL3's converter hint."""
    if spec.family == "openl3":
        from extractors import openl3

        opts = dict(spec.options)
        net = "audio" if spec.modality == "audio" else "image"
        _, path = weights.locate(spec.weights, weights_dir)
        return (f"OpenL3 weights {path} are missing (extractor {spec.name!r}); "
                f"{openl3.how_to_get(net, opts['input_repr'], opts['content_type'])}")
    try:
        weights.fetch(spec.name, spec.weights, weights_dir)
    except WeightsError as err:
        return str(err)
    return f"weights for {spec.name} are missing"  # pragma: no cover - fetch raises when missing


def build_extractors(names: Sequence[str], opts: ExtractOptions, device: str | None = None) -> dict[str, Extractor]:
    """Each requested model, built once (pretrained unless ``opts.random_init``)."""
    from extractors import create

    dev = device or opts.device
    return {name: create(name, device=dev, weights_dir=opts.weights_dir, random_init=opts.random_init)
            for name in names}


def store_config(extractor: Extractor, precision: str) -> dict[str, Any]:
    """The extractor's config plus the precision: both change the numbers, so both key the store."""
    return {**extractor.config(), "precision": precision}


def store_spec(extractor: Extractor, clips: ClipSet, opts: ExtractOptions, videos: str | None = None):
    """The StoreSpec of one extractor: kind, shape, config and readable provenance."""
    import pipeline
    from cache.store import StoreSpec

    spec = extractor.spec
    provenance = {
        "made_by": f"avvp-pipe {pipeline.__version__} extract",
        "weights_identity": extractor.weights_identity,
        "weights_file": None if opts.random_init else spec.weights.get("file"),
        "weights_source": f"{spec.weights.get('library', '?')}: {spec.weights.get('id', '-')}",
        "random_init": opts.random_init,
        "precision": opts.precision,
        "device": opts.device,
        "decode": dict(DECODE_RULE),
        "videos": str(Path(videos).resolve()) if videos else None,
        "extractor_spec": spec.to_dict(),
    }
    if opts.random_init:
        provenance["warning"] = ("RANDOM-INIT weights (seeded with 0): not pretrained features; "
                                 "for tests and demos only")
    return StoreSpec(dataset=clips.dataset, extractor=spec.name, modality=spec.modality,
                     shape=tuple(extractor.out_shape), config=store_config(extractor, opts.precision),
                     kind="random-init" if opts.random_init else "extracted", dtype=opts.dtype,
                     provenance=provenance)


def open_stores(cache_root: str, clips: ClipSet, extractors: Mapping[str, Extractor], opts: ExtractOptions,
                videos: str | None = None) -> dict[str, FeatureStore]:
    """Open or create one store per extractor for the dataset's clip list."""
    from cache.store import open_or_create

    return {name: open_or_create(str(cache_root), store_spec(ex, clips, opts, videos), clips.store_ids,
                                 clips.splits)
            for name, ex in extractors.items()}


# ----------------------------------------------------------------------------------------
# Work description and results (plain data: they cross process boundaries under dask)


@dataclass(frozen=True)
class ClipTask:
    """One clip to decode and the extractors that still need it."""

    clip_id: str
    path: str
    names: tuple[str, ...]
    retry: tuple[str, ...] = ()  # extractors where this clip failed before (their record is replaced)


@dataclass
class RunResult:
    """What a run (or one dask unit) did: per extractor, clips written and failures."""

    done: dict[str, list[str]] = field(default_factory=dict)  # name -> clip ids written
    failed: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> clip id -> reason
    decoded: int = 0
    frames: int = 0

    def merge(self, other: RunResult) -> None:
        for name, ids in other.done.items():
            self.done.setdefault(name, []).extend(ids)
        for name, reasons in other.failed.items():
            self.failed.setdefault(name, {}).update(reasons)
        self.decoded += other.decoded
        self.frames += other.frames


def plan_tasks(clips: ClipSet, stores: Mapping[str, FeatureStore]) -> tuple[list[ClipTask], dict[str, int]]:
    """Tasks for clips pending in at least one store, and per store how many were already done."""
    from cache.store import FAILED

    pending: dict[str, set[str]] = {}
    cached: dict[str, int] = {}
    failed_before: dict[str, set[str]] = {}
    for name, store in stores.items():
        todo = store.pending(clips.work_ids)
        pending[name] = set(todo)
        cached[name] = len(clips.work_ids) - len(todo)
        status = store.status(refresh=False)
        failed_before[name] = {cid for cid in todo if status[store.index[cid]] == FAILED}
    tasks = []
    for cid in clips.work_ids:
        names = tuple(n for n in stores if cid in pending[n])
        if names:
            retry = tuple(n for n in names if cid in failed_before[n])
            tasks.append(ClipTask(cid, clips.paths.get(cid, ""), names, retry))
    return tasks, cached


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


def _reason(err: BaseException) -> str:
    """One line: the error's own text (ClipError texts name the file) or its type and text."""
    text = " ".join(str(err).split())
    return text if isinstance(err, AvvpError) else f"{type(err).__name__}: {text}"


def decode_and_prepare(task: ClipTask, extractors: Mapping[str, Extractor], opts: ExtractOptions,
                       rates: tuple[int, ...]) -> _Prepared:
    """Decode one clip once and prepare it for each extractor that needs it; never raises
    for a clip's own problems (they become per-extractor failure reasons)."""
    from pipeline.decode import decode_clip

    out = _Prepared(task)
    if not task.path:
        out.errors = {name: MISSING_VIDEO for name in task.names}
        return out
    try:
        clip = decode_clip(task.path, audio_rates=rates, timeout_s=opts.decode_timeout)
    except Exception as err:  # noqa: BLE001 - ClipError and decoder surprises alike fail this clip only
        out.errors = {name: _reason(err) for name in task.names}
        return out
    out.decoded, out.notes, out.frames = True, tuple(clip.notes), int(clip.frames.shape[0])
    for name in task.names:
        try:
            out.items[name] = extractors[name].prepare(clip)  # (n_items, *item_shape) float32 CPU
        except Exception as err:  # noqa: BLE001 - e.g. no audio: this extractor fails, others go on
            out.errors[name] = _reason(err)
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
        from pipeline.decode import shutdown_worker

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
                self._fail(cid, name, _reason(err))
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


# ----------------------------------------------------------------------------------------
# Dask: units of clips, models cached per worker process


@dataclass(frozen=True)
class Unit:
    """A batch of clips for one dask task: it owns these clips' chunks in every store."""

    tasks: tuple[ClipTask, ...]
    store_urls: dict[str, str]  # extractor -> store url
    store_keys: dict[str, str]  # extractor -> key the client computed (checked on the worker)
    opts: ExtractOptions
    progress_topic: str | None = None  # dask event topic for per-clip progress (see _worker_progress)


_WORKER_MODELS: dict[tuple, Extractor] = {}
_WORKER_LOCK = threading.Lock()


def _worker_device(device: str) -> str:
    """'cuda' on a LocalCluster worker named i uses GPU i (modulo the count); anything else as given."""
    if device != "cuda":
        return device
    try:
        import torch
        from distributed import get_worker

        name = get_worker().name
        if isinstance(name, int) and torch.cuda.device_count() > 1:
            return f"cuda:{name % torch.cuda.device_count()}"
    except (ImportError, ValueError):
        pass
    return device


def _worker_extractors(opts: ExtractOptions, names: Iterable[str]) -> dict[str, Extractor]:
    """Models of this worker process, each built on its first unit and kept."""
    from extractors import create

    device = _worker_device(opts.device)
    out = {}
    with _WORKER_LOCK:
        for name in names:
            key = (name, device, opts.weights_dir, opts.random_init)
            if key not in _WORKER_MODELS:
                _WORKER_MODELS[key] = create(name, device=device, weights_dir=opts.weights_dir,
                                             random_init=opts.random_init)
            out[name] = _WORKER_MODELS[key]
    return out


def run_unit(unit: Unit) -> RunResult:
    """A dask task: extract one unit on this worker and write its clips into the stores."""
    from cache.store import open_store, store_key

    names = sorted({n for task in unit.tasks for n in task.names})
    extractors = _worker_extractors(unit.opts, names)
    stores = {}
    for name in names:
        key = store_key(store_config(extractors[name], unit.opts.precision), unit.opts.dtype)
        if key != unit.store_keys[name]:
            raise AvvpError(f"worker built {name} with store key {key} but the client created {unit.store_keys[name]} "
                            "(different weights or library versions on this worker?)")
        stores[name] = open_store(unit.store_urls[name])
    return Engine(extractors, stores, unit.opts, _worker_progress(unit.progress_topic)).run(unit.tasks)


def _worker_progress(topic: str | None) -> Callable[[int], None] | None:
    """Per-clip progress from a dask worker: an event on ``topic`` that the client subscribes to.

    Why: a unit holds several clips and can take minutes on a GPU; counting only finished
    units made the bar jump and its ETA useless.
    """
    if topic is None:
        return None
    from distributed import get_worker

    worker = get_worker()
    return lambda frames: worker.log_event(topic, {"frames": int(frames)})


def make_units(tasks: Sequence[ClipTask], stores: Mapping[str, FeatureStore], opts: ExtractOptions,
               progress_topic: str | None = None) -> list[Unit]:
    urls = {n: s.url for n, s in stores.items()}
    keys = {n: s.key for n, s in stores.items()}
    return [Unit(tuple(tasks[i:i + opts.unit_clips]), urls, keys, opts, progress_topic)
            for i in range(0, len(tasks), opts.unit_clips)]


def _run_dask(client: Any, tasks: Sequence[ClipTask], stores: Mapping[str, FeatureStore], opts: ExtractOptions,
              on_clip: Callable[[int], None], result: RunResult) -> None:
    from distributed import as_completed

    topic = f"avvp-extract-progress-{uuid.uuid4().hex}"  # one per run: a shared scheduler may serve others
    meter = _EventMeter(on_clip)
    client.subscribe_topic(topic, meter.event)
    try:
        units = make_units(tasks, stores, opts, progress_topic=topic)
        futures = [client.submit(run_unit, unit, pure=False) for unit in units]
        for future in as_completed(futures):
            part: RunResult = future.result()
            result.merge(part)
            n_clips = len({cid for ids in part.done.values() for cid in ids}
                          | {cid for f in part.failed.values() for cid in f})
            meter.unit_finished(n_clips, int(part.frames / max(part.decoded, 1)))
    finally:
        client.unsubscribe_topic(topic)


class _EventMeter:
    """Counts clips from worker events, and tops up from finished units where events lag.

    Events reach the client on its own thread; a lock keeps the two sources from counting
    one clip twice: the bar never runs ahead of the clips that units report done.
    """

    def __init__(self, on_clip: Callable[[int], None]) -> None:
        self.on_clip, self.lock = on_clip, threading.Lock()
        self.from_events = self.finished = self.shown = 0

    def event(self, event: tuple[float, dict]) -> None:
        with self.lock:
            self.from_events += 1
            self._show(event[1]["frames"])

    def unit_finished(self, clips: int, frames_each: int) -> None:
        with self.lock:
            self.finished += clips
            while self.shown < self.finished:
                self.on_clip(frames_each)
                self.shown += 1

    def _show(self, frames: int) -> None:
        if self.shown < max(self.finished, self.from_events):
            self.on_clip(frames)
            self.shown += 1


def auto_workers() -> int:
    """``--workers 0``: one worker per visible GPU (each gets its own device), else one CPU worker."""
    import torch

    return max(1, torch.cuda.device_count())


def connect(workers: int | None, scheduler: str | None) -> tuple[Any, Any]:
    """(client, cluster): a LocalCluster of ``workers`` single-threaded processes, or a
    Client of the cluster at ``scheduler``; (None, None) for an in-process run."""
    if workers is not None and scheduler is not None:
        raise ExtractUsageError("--workers and --scheduler: expected one of them, not both")
    if workers is None and scheduler is None:
        return None, None
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            return Client(scheduler, timeout="30s"), None
        except (OSError, TimeoutError) as err:
            raise AvvpError(f"--scheduler {scheduler}: could not connect ({_reason(err)})") from err
    if workers < 0:
        raise ExtractUsageError(f"--workers: expected 0 (auto) or a positive integer but got {workers}")
    workers = workers or auto_workers()
    # distributed logs at INFO by its own config; follow avvp-pipe's -v level instead.
    logging.getLogger("distributed").setLevel(max(logging.getLogger().getEffectiveLevel(), logging.INFO))
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, silence_logs=logging.getLogger().getEffectiveLevel())
    return Client(cluster), cluster


# ----------------------------------------------------------------------------------------
# The run


def run_extract(videos: str | os.PathLike, cache_root: str | os.PathLike, clips: ClipSet, opts: ExtractOptions, *,
                workers: int | None = None, scheduler: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Extract ``clips`` with ``opts``; returns the summary (see :func:`summarise`).

    Weights and packages are checked for every extractor, and every model is built, before
    the first clip is decoded, so a missing file stops the run at once.
    """
    from pipeline.progress import Progress

    names = resolve_names(opts.extractors)
    check_weights(names, opts.weights_dir, opts.random_init)
    if "://" not in str(cache_root):  # absolute: dask workers may run in another folder
        cache_root = Path(cache_root).resolve()
    started = time.perf_counter()
    client, cluster = connect(workers, scheduler)
    try:
        # Under dask the client builds on CPU only to learn each config (the store key).
        extractors = build_extractors(names, opts, device="cpu" if client is not None else None)
        stores = open_stores(str(cache_root), clips, extractors, opts, str(videos))
        tasks, cached = plan_tasks(clips, stores)
        result = RunResult(done={n: [] for n in names}, failed={n: {} for n in names})
        with Progress(len(tasks), f"extract {len(names)} extractor(s)", enabled=progress) as bar:
            on_clip = _FrameMeter(bar)
            if client is None:
                result = Engine(extractors, stores, opts, on_clip).run(tasks)
            else:
                del extractors  # workers build their own
                _run_dask(client, tasks, stores, opts, on_clip, result)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    return summarise(clips, stores, tasks, cached, result, opts, time.perf_counter() - started,
                     videos=str(videos), cache_root=str(cache_root))


class _FrameMeter:
    """Advances the bar by one clip and shows frames/s next to tqdm's clips/s and ETA."""

    def __init__(self, bar: Any) -> None:
        self.bar, self.frames = bar, 0

    def __call__(self, frames: int) -> None:
        self.frames += frames
        self.bar.update(1, **{"frames/s": f"{self.frames / max(self.bar.elapsed, 1e-9):.1f}"})


def summarise(clips: ClipSet, stores: Mapping[str, FeatureStore], tasks: Sequence[ClipTask],
              cached: Mapping[str, int], result: RunResult, opts: ExtractOptions, seconds: float, *,
              videos: str, cache_root: str) -> dict[str, Any]:
    """Plain-data summary: counts per extractor, every failure with its reason, rates."""
    failures = [{"clip": cid, "extractor": name, "reason": reason}
                for name in stores for cid, reason in sorted(result.failed.get(name, {}).items())]
    failed_clips = {f["clip"] for f in failures}
    per_extractor = {
        name: {"store": store.url, "kind": store.kind, "done": len(result.done.get(name, [])),
               "already_cached": cached[name], "failed": len(result.failed.get(name, {}))}
        for name, store in stores.items()
    }
    return {
        "dataset": clips.dataset,
        "videos": videos,
        "cache": cache_root,
        "extractors": list(stores),
        "options": {k: v for k, v in asdict(opts).items() if k != "extractors"},
        "clips": {
            "requested": len(clips.work_ids),
            "already_cached": len(clips.work_ids) - len(tasks),  # done in every store before the run
            "processed": len(tasks),
            "decoded": result.decoded,
            "done": len(tasks) - len(failed_clips),  # written in every store that needed them
            "failed": len(failed_clips),
        },
        "per_extractor": per_extractor,
        "failures": failures,
        "ignored_files": list(clips.ignored),
        "seconds": round(seconds, 3),
        "clips_per_s": round(len(tasks) / seconds, 4) if seconds > 0 else 0.0,
        "frames_per_s": round(result.frames / seconds, 2) if seconds > 0 else 0.0,
    }


def format_summary(summary: Mapping[str, Any], max_failures: int = 20) -> str:
    """The human view of :func:`summarise`: a table per extractor and the failure reasons."""
    from pipeline.report import human_seconds, table

    c = summary["clips"]
    lines = [f"extract {summary['dataset']}: {c['requested']} clips requested, {c['already_cached']} already cached, "
             f"{c['processed']} processed ({c['decoded']} decoded), {c['done']} done, {c['failed']} failed "
             f"in {human_seconds(summary['seconds'])} ({summary['clips_per_s']:.2f} clips/s, "
             f"{summary['frames_per_s']:.1f} frames/s)", ""]
    rows = [(name, row["kind"], row["done"], row["already_cached"], row["failed"], row["store"])
            for name, row in summary["per_extractor"].items()]
    lines.append(table(("extractor", "kind", "done", "already cached", "failed", "store"), rows))
    failures = summary["failures"]
    if failures:
        lines += ["", f"failures ({len(failures)}):"]
        lines += [f"  {f['clip']}  {f['extractor']}: {f['reason']}" for f in failures[:max_failures]]
        if len(failures) > max_failures:
            lines.append(f"  ... and {len(failures) - max_failures} more (see --summary FILE)")
    if summary["ignored_files"]:
        lines += ["", f"ignored (not <id>.mp4 names): {', '.join(summary['ignored_files'][:10])}"]
    return "\n".join(lines)


def raise_if_failed(summary: Mapping[str, Any]) -> None:
    """PartialFailure (exit 1) when any clip failed in any extractor."""
    failures = summary["failures"]
    if failures:
        clips = summary["clips"]["failed"]
        first = failures[0]
        raise PartialFailure(f"{clips} clip(s) failed ({len(failures)} clip/extractor pairs), e.g. "
                             f"{first['clip']} in {first['extractor']}: {first['reason']}")
