"""The two protocols of the seed paper (section 3.2) and the training-free panel, over M x K pairings, resumably.

- upper bound (F1): train on test, pick the epoch on test, score on test. Over-fitted on
  purpose: the paper's claim is that it ranks pairings as the traditional protocol does, at
  the cost of training on the (LLP: 8x smaller) test split only.
- traditional (F2, ``--validate``): train on train, pick the epoch on val, score on test.
- training-free scores (``--method logme,hscore,...``): no training (:mod:`avvp_pipe.selection.free`).
- ``--seeds K`` trains every pairing K times, grouped by the one training engine;
  ``--bootstrap B`` adds intervals (:mod:`avvp_pipe.selection.bootstrap`); ``--workers`` and
  ``--scheduler`` spread the groups over dask (:mod:`avvp_pipe.selection.distributed`).

Candidates are checked before any work (:mod:`avvp_pipe.selection.candidates`). Each run's
result is a file of its own (:mod:`avvp_pipe.selection.results`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from avvp_pipe.pipeline.llp.annotations import Annotations
from avvp_pipe.pipeline.train.config import TrainConfig
from avvp_pipe.pipeline.train.engine import Member, TrainResult, can_group, metric_value, train_group
from avvp_pipe.pipeline.extract.distributed import connect
from avvp_pipe.selection.candidates import Candidates, Pairing, check_candidates
from avvp_pipe.selection.bootstrap import LEVEL, resample_rows
from avvp_pipe.selection.distributed import GroupUnit, execute
from avvp_pipe.selection.free import run_free, trained_bootstrap
from avvp_pipe.selection.methods import FREE, PROTOCOLS, SelectUsageError, parse_methods
from avvp_pipe.selection.results import (labels_digest, load_result, result_key, result_path, save_result,
                                       save_run_predictions)

log = logging.getLogger(__name__)

LOGME_SPLIT = "test"

Notify = Callable[[str], None]

__all__ = ["Candidates", "Pairing", "check_candidates", "protocol_config", "auto_parallel", "train_datas",
           "seed_list", "run_protocol", "run_logme", "SelectOptions", "needed_splits", "run_select"]


def protocol_config(config: TrainConfig, protocol: str, score: str) -> TrainConfig:
    """The training config of a protocol: its splits, and the epoch picked by the ranking score."""
    train, select, evaluate = PROTOCOLS[protocol]
    return replace(config, train_split=train, select_split=select, eval_split=evaluate,
                   select_metric=score).resolved()


def auto_parallel(config: TrainConfig) -> int:
    """Pairings per group when --parallel is 0: grouped on GPUs, one at a time on CPUs.

    On CPU the work is compute-bound and grouping measured about neutral (benchmarks/select_pairings.py:
    10 pairings took 0.87x the time of 10 separate runs both grouped and one at a time), so the
    default there keeps plain train_pairing; on GPUs kernel launches dominate small HANs.
    """
    return 10 if config.device.startswith("cuda") else 1


def train_datas(datas: list, annotations: Annotations, config: TrainConfig, parallel: int, progress: bool,
                notify: Notify, seeds: Sequence[int] | None = None) -> tuple[list[TrainResult], str]:
    """Train a group in one grouped run when possible, else one at a time; says which it did.

    ``seeds``: one per data (default: the config's seed for all); K seeds of one pairing are
    the same data listed K times.
    """
    members = [Member(d, s) for d, s in zip(datas, seeds or [config.seed] * len(datas))]
    reason = can_group(config) if len(datas) > 1 and parallel > 1 else None
    if len(datas) > 1 and parallel > 1 and reason is None:
        try:
            return train_group(members, annotations, config, progress=progress), f"batched x{len(datas)}"
        except RuntimeError as err:  # e.g. out of memory for the group: the pairings still train alone
            reason = f"batched training failed ({str(err).splitlines()[0]})"
    if reason:
        notify(f"training {', '.join(d.name for d in datas)} one at a time: {reason}")
    return [train_group([m], annotations, config, progress=progress)[0] for m in members], "alone"


def seed_list(config: TrainConfig, seeds: int) -> list[int]:
    """The K seeds of a pairing: the config's seed, then the next K - 1 (so K = 1 is today's run)."""
    if seeds < 1:
        raise SelectUsageError(f"--seeds: expected an integer >= 1 but got {seeds}")
    return [config.seed + j for j in range(seeds)]


def run_protocol(cands: Candidates, annotations: Annotations, pairings: Sequence[Pairing], config: TrainConfig,
                 protocol: str, score: str, out: str, *, parallel: int = 0, overwrite: bool = False,
                 progress: bool = False, notify: Notify = log.warning, seeds: int = 1,
                 client: Any = None) -> list[list[dict]]:
    """K result dicts per pairing (in order), one per seed: saved ones are reused, the rest trained in groups.

    Each (pairing, seed) is keyed like a one-seed run of that seed, so seed 1 of ``--seeds 3``
    is the result a plain run already saved. Groups go to ``client``'s dask workers when given.
    """
    cfg = protocol_config(config, protocol, score)
    splits = tuple(dict.fromkeys(PROTOCOLS[protocol]))
    labels = labels_digest(annotations, splits)
    seed_values = seed_list(cfg, seeds)
    paths = [[result_path(out, p.name, protocol,
                          result_key(p.store_keys(), protocol, replace(cfg, seed=s).keyed(), labels))
              for s in seed_values] for p in pairings]
    results = [[None if overwrite else load_result(path) for path in row] for row in paths]
    size = max(1, parallel or max(auto_parallel(cfg), seeds))
    groups = _groups(results, paths, size, protocol, out, notify)
    units = [GroupUnit(cands, annotations, tuple((pairings[i].audio, pairings[i].visual,
                                                  tuple(sorted(pairings[i].store_keys().items())),
                                                  seed_values[j]) for i, j in group),
                       splits, cfg, size, progress) for group in groups]
    for unit, (trained, mode, wall) in execute(units, client, notify):
        mates = [paths[i][j].stem for i, j in groups[unit]]
        for (i, j), result in zip(groups[unit], trained):
            if results[i][j] is None:  # a run saved before a kill cut its group short keeps its file
                results[i][j] = _record(pairings[i], protocol, cfg, score, result, mode, wall, paths[i][j],
                                        seed_values[j], mates)
    return results


Runs = list[tuple[int, int]]  # (pairing, seed) indices


def _groups(results: list[list[dict | None]], paths: list[list[Path]], size: int, protocol: str, out: str,
            notify: Notify) -> list[Runs]:
    """The groups still to train: groups a kill left partly saved, whole and as they were, then the
    other missing runs in groups of ``size`` (which, with whole groups saved, are the groups an
    uninterrupted run trains).

    Why whole: a grouped run's dropout masks and float rounding depend on its group mates, so
    its missing mates trained in another group would not be the runs the uninterrupted selection
    has; the saved runs of such a group are trained again but keep their files.
    """
    runs = [(i, j) for i, row in enumerate(results) for j in range(len(row))]
    todo = [(i, j) for i, j in runs if results[i][j] is None]
    if len(todo) < len(runs):
        what = "pairings" if len(results[0]) == 1 else "runs (pairing x seed)"
        notify(f"{protocol}: {len(runs) - len(todo)} of {len(runs)} {what} already done in {out}; "
               f"skipping them (--overwrite redoes them)")
    cut = _cut_groups(results, paths, runs)
    inside = {run for group in cut for run in group}
    rest = [run for run in todo if run not in inside]
    if cut:
        notify(f"{protocol}: {len(inside) - len(todo) + len(rest)} saved run(s) of {len(cut)} group(s) a kill "
               f"left partly saved train again with their mates; their saved results are kept")
    return cut + [rest[start:start + size] for start in range(0, len(rest), size)]


def _cut_groups(results: list[list[dict | None]], paths: list[list[Path]], runs: Runs) -> list[Runs]:
    """Groups (as their saved runs record them) with some runs saved and some missing."""
    where = {paths[i][j].stem: (i, j) for i, j in runs}
    cut: list[Runs] = []
    for i, j in runs:
        members = [where.get(key) for key in (results[i][j] or {}).get("group", [])]
        if members and None not in members and members not in cut and any(results[a][b] is None for a, b in members):
            cut.append(members)
    return cut


def _record(pairing: Pairing, protocol: str, cfg: TrainConfig, score: str, result: TrainResult, mode: str,
            wall: float, path: Path, seed: int, group: Sequence[str]) -> dict:
    """Save one run: its predictions first (for --bootstrap), then the JSON that marks it done.

    ``group``: the result keys of the runs trained with it, in order (a resumed selection trains
    a group a kill cut short again as it was)."""
    save_run_predictions(path.with_suffix(".npz"), result.predictions)
    record = {
        "pairing": pairing.name, "audio": pairing.audio, "visual": pairing.visual,
        "store_keys": pairing.store_keys(), "protocol": protocol, "key": path.stem, "score_key": score,
        "score": metric_value(result.scores, score), "best_epoch": result.best_epoch,
        "best_select": result.best_score, "train_seconds": result.seconds, "seconds": wall, "trained": mode,
        "seed": seed, "group": list(group), "predictions": path.with_suffix(".npz").name,
        "config": asdict(replace(cfg, seed=seed)), "history": result.history, "scores": result.scores,
    }
    save_result(path, record)
    return record


def run_logme(cands: Candidates, annotations: Annotations, pairings: Sequence[Pairing], out: str, *,
              split: str = LOGME_SPLIT, overwrite: bool = False, notify: Notify = log.warning) -> list[dict]:
    """LogME of every pairing on ``split`` (resumable like the trained protocols)."""
    return run_free(cands, annotations, pairings, out, ("logme",), split=split, overwrite=overwrite,
                    notify=notify)[0]["logme"]


@dataclass(frozen=True)
class SelectOptions:
    """What ``avvp-pipe select`` runs, besides the candidates and the training config."""

    score: str = "segment.type_at_av"
    method: str = "upper-bound"  # a comma list of METHODS (selection/methods.py), e.g. upper-bound,logme,cca
    validate: bool = False
    parallel: int = 0  # runs per group; 0 = auto (grouped on cuda, one at a time on cpu; K seeds together)
    overwrite: bool = False
    progress: bool = False
    seeds: int = 1  # K runs per pairing and protocol
    bootstrap: int = 0  # B resamples of the test clips; 0 = none
    bootstrap_seed: int = 0
    workers: int | None = None  # dask LocalCluster workers (0 = one per GPU); None = in-process
    scheduler: str | None = None  # address of a running dask scheduler


def _warm_up() -> None:
    """Pay torch's one-time import for deterministic mode (seconds) before any timing starts.

    Otherwise it lands in the first protocol's time and skews the protocols' time ratio.
    """
    import torch

    torch.use_deterministic_algorithms(torch.are_deterministic_algorithms_enabled())


def needed_splits(options: SelectOptions) -> list[str]:
    """The splits whose features the run reads: test only, unless --validate."""
    splits = ["test"]
    if options.validate:
        splits += ["train", "val"]
    return splits


def _check_options(options: SelectOptions) -> tuple[str, ...]:
    methods = parse_methods(options.method)
    if options.bootstrap < 0:
        raise SelectUsageError(f"--bootstrap: expected 0 (none) or a number of resamples but got {options.bootstrap}")
    if options.workers is not None and options.scheduler is not None:
        raise SelectUsageError("--workers and --scheduler: expected one of them, not both")
    return methods


def run_select(cands: Candidates, annotations: Annotations, config: TrainConfig, out: str,
               options: SelectOptions, notify: Notify = log.warning) -> dict:
    """Check every pairing, run the chosen protocols and scores, write and return the ranking record."""
    from avvp_pipe.selection.report import build_ranking, write_outputs

    methods = _check_options(options)
    pairings = check_candidates(cands, annotations, needed_splits(options))
    _warm_up()
    rows = (resample_rows(len(annotations.split_ids("test")), options.bootstrap, options.bootstrap_seed)
            if options.bootstrap else None)
    client, cluster = connect(options.workers, options.scheduler)
    try:
        results, wall = _run_protocols(cands, annotations, pairings, config, out, options, methods, client, notify)
    finally:
        _close(client, cluster)
    free = [m for m in methods if m in FREE]
    samples: dict = {}
    if free:
        began = time.perf_counter()
        scores, samples = run_free(cands, annotations, pairings, out, free, overwrite=options.overwrite,
                                   rows=rows, bootstrap_seed=options.bootstrap_seed, notify=notify)
        results.update(scores)
        wall.update({m: (time.perf_counter() - began) / len(free) for m in free})
    if rows is not None:
        samples.update(trained_bootstrap(out, annotations, results, options.score, rows, options.bootstrap_seed))
    ranking = build_ranking([p.name for p in pairings], results, options.score, wall, samples=samples,
                            bootstrap=_bootstrap_info(options, rows))
    ranking["files"] = [str(p) for p in write_outputs(out, ranking)]
    return ranking


def _run_protocols(cands: Candidates, annotations: Annotations, pairings: Sequence[Pairing], config: TrainConfig,
                   out: str, options: SelectOptions, methods: Sequence[str], client: Any,
                   notify: Notify) -> tuple[dict, dict]:
    results: dict[str, list | None] = {}
    wall: dict[str, float] = {}
    protocols = (["upper-bound"] if "upper-bound" in methods else []) + (["traditional"] if options.validate else [])
    for protocol in protocols:
        began = time.perf_counter()
        results[protocol] = run_protocol(cands, annotations, pairings, config, protocol, options.score, out,
                                         parallel=options.parallel, overwrite=options.overwrite,
                                         progress=options.progress and client is None, notify=notify,
                                         seeds=options.seeds, client=client)
        wall[protocol] = time.perf_counter() - began
    return results, wall


def _bootstrap_info(options: SelectOptions, rows: np.ndarray | None) -> dict | None:
    if rows is None:
        return None
    return {"resamples": options.bootstrap, "seed": options.bootstrap_seed, "clips": int(rows.shape[1]),
            "level": LEVEL, "combined_with_seeds": options.seeds > 1}


def _close(client: Any, cluster: Any) -> None:
    if client is not None:
        client.close()
    if cluster is not None:
        cluster.close()
