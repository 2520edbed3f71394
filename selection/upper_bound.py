"""The two protocols of the seed paper (section 3.2) and LogME, over M x K pairings, resumably.

- upper bound (F1): train on test, pick the epoch on test, score on test. Over-fitted on
  purpose: the paper's claim is that it ranks pairings as the traditional protocol does, at
  the cost of training on the (LLP: 8x smaller) test split only.
- traditional (F2, ``--validate``): train on train, pick the epoch on val, score on test.
- LogME (``--method logme|both``): no training at all (:mod:`avvp_pipe.selection.logme`).

Every store of every pairing is checked before any training starts (missing clips, datasets,
random-init and simulated features), so a bad candidate fails the run at once rather than
after hours. Each pairing's result is a file of its own (:mod:`avvp_pipe.selection.results`).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

from avvp_pipe.cache.store import FeatureStore, check_usable
from avvp_pipe.core.errors import AvvpError
from avvp_pipe.pipeline.llp.annotations import Annotations
from avvp_pipe.pipeline.train.pairing import ROLES, check_complete, load_pairing, open_pairing_stores
from avvp_pipe.pipeline.train.config import TrainConfig
from avvp_pipe.pipeline.train.engine import Member, TrainResult, can_group, metric_value, train_group
from avvp_pipe.selection import logme as logme_mod
from avvp_pipe.selection.methods import METHODS, PROTOCOLS
from avvp_pipe.selection.results import labels_digest, load_result, result_key, result_path, save_result

log = logging.getLogger(__name__)

LOGME_SPLIT = "test"

Notify = Callable[[str], None]


@dataclass(frozen=True)
class Candidates:
    """The extractors to pair: every audio store with every 2D visual store (and the one 3D store)."""

    cache: str
    dataset: str
    audio: tuple[str, ...]
    visual: tuple[str, ...]
    visual_3d: str | None = None
    allow_random_init: bool = False
    allow_simulated: bool = False

    def pairs(self) -> list[tuple[str, str]]:
        """(audio, visual) names, audio-major, as given."""
        if not self.audio or not self.visual:
            raise AvvpError("select: expected at least one --audio and one --visual extractor but got none")
        return list(itertools.product(self.audio, self.visual))


@dataclass
class Pairing:
    """A checked pairing: its stores, its name and store keys (what results are keyed by)."""

    audio: str
    visual: str
    stores: dict[str, FeatureStore]

    @property
    def name(self) -> str:
        return "+".join(self.stores[r].extractor for r in ROLES if r in self.stores)

    def store_keys(self) -> dict[str, str]:
        return {role: f"{s.extractor}@{s.key}" for role, s in self.stores.items()}


def check_candidates(cands: Candidates, annotations: Annotations, splits: Sequence[str]) -> list[Pairing]:
    """Open and check every pairing's stores for ``splits`` before any work: errors come at once."""
    pairings = []
    for audio, visual in cands.pairs():
        stores = open_pairing_stores(cands.cache, cands.dataset, audio, visual, cands.visual_3d,
                                     allow_random_init=cands.allow_random_init,
                                     allow_simulated=cands.allow_simulated)
        for split in dict.fromkeys(splits):
            ids = annotations.split_ids(split)
            if not ids:
                raise AvvpError(f"split {split!r} has no clips in the annotations at {annotations.root}")
            check_complete(stores, ids, split)
        pairings.append(Pairing(audio, visual, stores))
    unique = {s.url: s for p in pairings for s in p.stores.values()}
    check_usable(list(unique.values()), allow_random_init=cands.allow_random_init,
                 allow_simulated=cands.allow_simulated)  # one dataset across ALL pairings
    names = [p.name for p in pairings]
    if len(set(names)) != len(names):
        raise AvvpError(f"select: expected distinct pairings but got duplicates in {', '.join(names)}")
    return pairings


def protocol_config(config: TrainConfig, protocol: str, score: str) -> TrainConfig:
    """The training config of a protocol: its splits, and the epoch picked by the ranking score."""
    train, select, evaluate = PROTOCOLS[protocol]
    return replace(config, train_split=train, select_split=select, eval_split=evaluate,
                   select_metric=score).resolved()


def _load(cands: Candidates, annotations: Annotations, pairing: Pairing, splits: Sequence[str]):
    return load_pairing(cands.cache, cands.dataset, annotations, list(splits), audio=pairing.audio,
                        visual=pairing.visual, visual_3d=cands.visual_3d,
                        allow_random_init=cands.allow_random_init, allow_simulated=cands.allow_simulated)


def auto_parallel(config: TrainConfig) -> int:
    """Pairings per group when --parallel is 0: grouped on GPUs, one at a time on CPUs.

    On CPU the work is compute-bound and grouping measured about neutral (benchmarks/select_pairings.py:
    10 pairings took 0.87x the time of 10 separate runs both grouped and one at a time), so the
    default there keeps plain train_pairing; on GPUs kernel launches dominate small HANs.
    """
    return 10 if config.device.startswith("cuda") else 1


def train_datas(datas: list, annotations: Annotations, config: TrainConfig, parallel: int, progress: bool,
                notify: Notify) -> tuple[list[TrainResult], str]:
    """Train a group in one grouped run when possible, else one at a time; says which it did."""
    members = [Member(d, config.seed) for d in datas]
    reason = can_group(config) if len(datas) > 1 and parallel > 1 else None
    if len(datas) > 1 and parallel > 1 and reason is None:
        try:
            return train_group(members, annotations, config, progress=progress), f"batched x{len(datas)}"
        except RuntimeError as err:  # e.g. out of memory for the group: the pairings still train alone
            reason = f"batched training failed ({str(err).splitlines()[0]})"
    if reason:
        notify(f"training {', '.join(d.name for d in datas)} one at a time: {reason}")
    return [train_group([m], annotations, config, progress=progress)[0] for m in members], "alone"


def run_protocol(cands: Candidates, annotations: Annotations, pairings: Sequence[Pairing], config: TrainConfig,
                 protocol: str, score: str, out: str, *, parallel: int = 0, overwrite: bool = False,
                 progress: bool = False, notify: Notify = log.warning) -> list[dict]:
    """One result dict per pairing (in order): saved ones are reused, the rest trained in groups."""
    cfg = protocol_config(config, protocol, score)
    splits = list(dict.fromkeys(PROTOCOLS[protocol]))
    settings = cfg.keyed()
    labels = labels_digest(annotations, splits)
    paths = [result_path(out, p.name, protocol, result_key(p.store_keys(), protocol, settings, labels))
             for p in pairings]
    results = [None if overwrite else load_result(path) for path in paths]
    todo = [i for i, r in enumerate(results) if r is None]
    if len(todo) < len(pairings):
        notify(f"{protocol}: {len(pairings) - len(todo)} of {len(pairings)} pairings already done in {out}; "
               f"skipping them (--overwrite redoes them)")
    size = max(1, parallel or auto_parallel(cfg))
    for start in range(0, len(todo), size):
        group = todo[start : start + size]
        began = time.perf_counter()
        datas = [_load(cands, annotations, pairings[i], splits) for i in group]
        trained, mode = train_datas(datas, annotations, cfg, size, progress, notify)
        wall = (time.perf_counter() - began) / len(group)  # each pairing's share, loading included
        for i, result in zip(group, trained):
            results[i] = _record(pairings[i], protocol, cfg, score, result, mode, wall, paths[i].stem)
            save_result(paths[i], results[i])
    return results


def _record(pairing: Pairing, protocol: str, cfg: TrainConfig, score: str, result: TrainResult, mode: str,
            wall: float, key: str) -> dict:
    return {
        "pairing": pairing.name, "audio": pairing.audio, "visual": pairing.visual,
        "store_keys": pairing.store_keys(), "protocol": protocol, "key": key, "score_key": score,
        "score": metric_value(result.scores, score), "best_epoch": result.best_epoch,
        "best_select": result.best_score, "train_seconds": result.seconds, "seconds": wall, "trained": mode,
        "config": asdict(cfg), "history": result.history, "scores": result.scores,
    }


def run_logme(cands: Candidates, annotations: Annotations, pairings: Sequence[Pairing], out: str, *,
              split: str = LOGME_SPLIT, overwrite: bool = False, notify: Notify = log.warning) -> list[dict]:
    """LogME of every pairing on ``split`` (resumable like the trained protocols)."""
    settings = {"split": split, "features": "time-mean audio ++ visual [++ visual_3d]", "targets": "weak labels"}
    labels = labels_digest(annotations, [split])
    results = []
    for pairing in pairings:
        path = result_path(out, pairing.name, "logme", result_key(pairing.store_keys(), "logme", settings, labels))
        saved = None if overwrite else load_result(path)
        if saved is None:
            began = time.perf_counter()
            arrays = _load(cands, annotations, pairing, [split]).splits[split]
            value = logme_mod.logme_pairing(arrays)
            saved = {"pairing": pairing.name, "audio": pairing.audio, "visual": pairing.visual,
                     "store_keys": pairing.store_keys(), "protocol": "logme", "key": path.stem, "split": split,
                     "score": value, "seconds": time.perf_counter() - began, "settings": settings}
            save_result(path, saved)
        results.append(saved)
    return results


@dataclass(frozen=True)
class SelectOptions:
    """What ``avvp-pipe select`` runs, besides the candidates and the training config."""

    score: str = "segment.type_at_av"
    method: str = "upper-bound"  # upper-bound | logme | both
    validate: bool = False
    parallel: int = 0  # pairings per group; 0 = auto (grouped on cuda, one at a time on cpu)
    overwrite: bool = False
    progress: bool = False


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


def run_select(cands: Candidates, annotations: Annotations, config: TrainConfig, out: str,
               options: SelectOptions, notify: Notify = log.warning) -> dict:
    """Check every pairing, run the chosen protocols, write and return the ranking record."""
    from avvp_pipe.selection.report import build_ranking, write_outputs

    if options.method not in METHODS:
        raise AvvpError(f"--method: expected one of {', '.join(METHODS)} but got {options.method!r}")
    pairings = check_candidates(cands, annotations, needed_splits(options))
    _warm_up()
    results: dict[str, list[dict] | None] = {}
    wall: dict[str, float] = {}
    protocols = (["upper-bound"] if options.method != "logme" else []) + (["traditional"] if options.validate else [])
    for protocol in protocols:
        began = time.perf_counter()
        results[protocol] = run_protocol(cands, annotations, pairings, config, protocol, options.score, out,
                                         parallel=options.parallel, overwrite=options.overwrite,
                                         progress=options.progress, notify=notify)
        wall[protocol] = time.perf_counter() - began
    if options.method in ("logme", "both"):
        began = time.perf_counter()
        results["logme"] = run_logme(cands, annotations, pairings, out, overwrite=options.overwrite, notify=notify)
        wall["logme"] = time.perf_counter() - began
    ranking = build_ranking([p.name for p in pairings], results, options.score, wall)
    ranking["files"] = [str(p) for p in write_outputs(out, ranking)]
    return ranking
