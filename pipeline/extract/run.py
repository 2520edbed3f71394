"""``run_extract``: plan, then run in-process or on dask, then summarise."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from avvp_pipe.core.device import require_device
from avvp_pipe.pipeline.extract.distributed import connect, run_dask
from avvp_pipe.pipeline.extract.engine import Engine
from avvp_pipe.pipeline.extract.plan import (ClipSet, ExtractOptions, RunResult, build_extractors, check_weights,
                                             open_stores, plan_tasks, resolve_names)
from avvp_pipe.pipeline.extract.summary import FrameMeter, summarise


# ----------------------------------------------------------------------------------------
# The run


def run_extract(videos: str | os.PathLike, cache_root: str | os.PathLike, clips: ClipSet, opts: ExtractOptions, *,
                workers: int | None = None, scheduler: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Extract ``clips`` with ``opts``; returns the summary (see :func:`summarise`).

    Weights and packages are checked for every extractor, and every model is built, before
    the first clip is decoded, so a missing file stops the run at once.
    """
    from avvp_pipe.core.progress import Progress

    names = resolve_names(opts.extractors)
    check_weights(names, opts.weights_dir, opts.random_init)
    if scheduler is None:  # this machine's GPUs run it (in-process or a LocalCluster): decide here
        opts = replace(opts, device=require_device(opts.device))
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
            on_clip = FrameMeter(bar)
            if client is None:
                result = Engine(extractors, stores, opts, on_clip).run(tasks)
            else:
                del extractors  # workers build their own
                run_dask(client, tasks, stores, opts, on_clip, result)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    return summarise(clips, stores, tasks, cached, result, opts, time.perf_counter() - started,
                     videos=str(videos), cache_root=str(cache_root))


