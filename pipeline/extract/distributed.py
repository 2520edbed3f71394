"""Extraction spread over dask workers: units of clips, each worker building each model once.

The client creates every store, then submits units (batches of clips); a unit owns its clips
across all stores and a store has one chunk per clip, so no two workers write the same chunk.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from avvp_pipe.core.errors import AvvpError
from avvp_pipe.pipeline.extract.engine import Engine, failure_reason
from avvp_pipe.pipeline.extract.plan import (ClipTask, ExtractOptions, ExtractUsageError, RunResult, create_extractor,
                                             store_config)

if TYPE_CHECKING:  # torch stays out of `avvp-pipe --help`
    from avvp_pipe.cache.store import FeatureStore
    from avvp_pipe.extractors.base import Extractor


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


def worker_device(device: str) -> str:
    """'cuda' on a LocalCluster worker named i uses GPU i (modulo the count); 'auto' (a client
    on another host leaves it to each worker) is resolved by this worker; anything else as given."""
    from avvp_pipe.core.device import resolve_device

    device = resolve_device(device)
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
    device = worker_device(opts.device)
    out = {}
    with _WORKER_LOCK:
        for name in names:
            key = (name, device, opts.weights_dir, opts.random_init, opts.trust_weights)
            if key not in _WORKER_MODELS:
                _WORKER_MODELS[key] = create_extractor(name, opts, device)
            out[name] = _WORKER_MODELS[key]
    return out


def run_unit(unit: Unit) -> RunResult:
    """A dask task: extract one unit on this worker and write its clips into the stores."""
    from avvp_pipe.cache.store import open_store, store_key

    names = sorted({n for task in unit.tasks for n in task.names})
    extractors = _worker_extractors(unit.opts, names)
    stores = {}
    for name in names:
        key = store_key(store_config(extractors[name], unit.opts.precision, unit.opts.frame_rule), unit.opts.dtype)
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


def run_dask(client: Any, tasks: Sequence[ClipTask], stores: Mapping[str, FeatureStore], opts: ExtractOptions,
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
            raise AvvpError(f"--scheduler {scheduler}: could not connect ({failure_reason(err)})") from err
    if workers < 0:
        raise ExtractUsageError(f"--workers: expected 0 (auto) or a positive integer but got {workers}")
    workers = workers or auto_workers()
    # distributed logs at INFO by its own config; follow avvp-pipe's -v level instead.
    logging.getLogger("distributed").setLevel(max(logging.getLogger().getEffectiveLevel(), logging.INFO))
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, silence_logs=logging.getLogger().getEffectiveLevel())
    return Client(cluster), cluster


