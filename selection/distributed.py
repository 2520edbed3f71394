"""Training groups of a selection, in this process or spread over dask workers.

Pairings and seeds are independent, so a selection is a list of groups (up to ``--parallel``
runs trained at once by the one training engine). :func:`execute` trains them here, or
submits each as a dask task to the workers of ``--workers N`` (a LocalCluster, one worker
per GPU with 0) or ``--scheduler ADDR``, the way ``extract`` spreads its units. A worker
reads the pairing's features from the cache itself (an fsspec URL when workers run on other
hosts) and returns its results; the client writes each one into ``OUT/pairings`` as its
group finishes, so a killed run keeps every finished group and resumes from there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from avvp_pipe.core.errors import AvvpError
from avvp_pipe.pipeline.extract.distributed import worker_device
from avvp_pipe.pipeline.llp.annotations import Annotations
from avvp_pipe.pipeline.train.config import TrainConfig
from avvp_pipe.pipeline.train.engine import TrainResult
from avvp_pipe.selection.candidates import Candidates, load

log = logging.getLogger(__name__)

#: (audio, visual, sorted store keys the client checked, seed): one run of a group
RunSpec = tuple[str, str, tuple[tuple[str, str], ...], int]
#: what a group returns: the runs' results, how they were trained, seconds per run
Outcome = tuple[list[TrainResult], str, float]


@dataclass(frozen=True)
class GroupUnit:
    """One group of runs: everything a worker needs to train it, and nothing it must share."""

    cands: Candidates
    annotations: Annotations
    runs: tuple[RunSpec, ...]
    splits: tuple[str, ...]
    config: TrainConfig
    parallel: int
    progress: bool


def _datas(unit: GroupUnit) -> list:
    """Each run's pairing features, every distinct pairing read once; store keys checked."""
    loaded: dict[tuple[str, str], Any] = {}
    datas = []
    for audio, visual, keys, _ in unit.runs:
        if (audio, visual) not in loaded:
            data = load(unit.cands, unit.annotations, audio, visual, unit.splits)
            if tuple(sorted(data.store_keys().items())) != keys:
                raise AvvpError(f"{data.name}: this worker reads stores {data.store_keys()} but the client "
                                f"checked {dict(keys)} (another cache on this worker?)")
            loaded[(audio, visual)] = data
        datas.append(loaded[(audio, visual)])
    return datas


def train_unit(unit: GroupUnit, notify: Callable[[str], None] = log.warning) -> Outcome:
    """Train one group (a dask task, or called in-process): results in ``unit.runs`` order."""
    from avvp_pipe.selection import upper_bound  # train_datas is looked up at call time (tests spy on it)

    began = time.perf_counter()
    config = replace(unit.config, device=worker_device(unit.config.device))  # device is not keyed
    datas = _datas(unit)
    trained, mode = upper_bound.train_datas(datas, unit.annotations, config, unit.parallel, unit.progress,
                                            notify, seeds=[r[3] for r in unit.runs])
    return trained, mode, (time.perf_counter() - began) / len(unit.runs)  # each run's share, loading included


def execute(units: Sequence[GroupUnit], client: Any, notify: Callable[[str], None]) -> Iterator[tuple[int, Outcome]]:
    """(index of the unit, its outcome) as each group finishes: in order here, as completed on dask."""
    if client is None:
        for index, unit in enumerate(units):
            yield index, train_unit(unit, notify)
        return
    from distributed import as_completed

    futures = {client.submit(train_unit, unit, pure=False): index for index, unit in enumerate(units)}
    for future in as_completed(list(futures)):
        yield futures[future], future.result()
