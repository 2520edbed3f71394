"""``avvp-pipe train --seeds K``: one pairing trained K times, as one grouped run of the engine.

Why: two seeds of one pairing can differ by more than two pairings do, so one run's score
says little without its spread. The K runs (seeds ``--seed``, ``--seed`` + 1, ...) are K
members of one group of :mod:`avvp_pipe.pipeline.train.engine`, so on a GPU they share every
kernel launch; with dropout 0 each member equals its seed trained alone (tests/test_train_seeds.py).

What ``--out OUT`` holds:

- ``OUT/seed-<s>/``: one run folder per seed, as ``train`` writes it (config.json keyed by that
  seed, best.pt, metrics.json, predictions.npz, the plots); select's results name a run by
  its seed value the same way (``"seed": s``), so seed 3 is ``seed-3`` whatever K is.
- ``OUT/seeds-checkpoint.pt``: the group's state after its last epoch (one file: the members
  share one optimizer and one RNG stream, so their states cannot be resumed apart). It alone
  decides where ``--resume`` continues; the seed folders hold no checkpoint.pt of their own,
  and their ``member.json`` makes a plain ``train --out OUT/seed-<s>`` refuse them (it would
  start that seed over outside its group).
- ``OUT/seeds.json``: per reported metric the mean, sd, the K values and a 95% Student-t
  interval of the mean (:func:`seed_summary`, which ``select --seeds`` uses too).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from scipy import stats as sps

from avvp_pipe.core.errors import EXIT_USAGE, AvvpError
from avvp_pipe.core.fmt import human_seconds, table
from avvp_pipe.core.io import atomic_write_json, load_torch, read_json
from avvp_pipe.models.metrics import metric_names
from avvp_pipe.pipeline.llp.annotations import Annotations
from avvp_pipe.pipeline.train import engine, run
from avvp_pipe.pipeline.train.config import TrainConfig, comparable
from avvp_pipe.pipeline.train.engine import GroupState, Member, TrainResult
from avvp_pipe.pipeline.train.pairing import PairingData

log = logging.getLogger(__name__)

LEVEL = 0.95
SUMMARY = "seeds.json"
CHECKPOINT = "seeds-checkpoint.pt"


class SeedsUsageError(AvvpError):
    """A bad ``--seeds``: one line and click's usage exit code."""

    exit_code = EXIT_USAGE


# ---------------------------------------------------------------------- statistics


def seed_summary(values: Sequence[float]) -> dict:
    """mean, sd (None for one run), the runs and a t-interval of the mean (None for one run)."""
    runs = [float(v) for v in values]
    mean = float(np.mean(runs))
    if len(runs) < 2:
        return {"mean": mean, "sd": None, "runs": runs, "ci95": None}
    sd = float(np.std(runs, ddof=1))
    half = float(sps.t.ppf(0.5 + LEVEL / 2, len(runs) - 1)) * sd / np.sqrt(len(runs))
    return {"mean": mean, "sd": sd, "runs": runs, "ci95": [mean - half, mean + half]}


def seeds_summary(seeds: Sequence[int], results: Sequence[TrainResult], config: TrainConfig) -> dict:
    """What seeds.json holds: every metric of evaluate's JSON summarised over the K runs."""
    metrics = {name: seed_summary([engine.metric_value(r.scores, name) for r in results]) for name in metric_names()}
    return {"seeds": list(seeds), "runs": [seed_dir(Path("."), s).name for s in seeds], "level": LEVEL,
            "eval_split": config.eval_split, "select_metric": config.select_metric,
            "best_epochs": [r.best_epoch for r in results], "train_seconds": [r.seconds for r in results],
            "metrics": metrics}


def format_seeds(summary: Mapping) -> str:
    """The printed table: a row per metric with its mean, sd, 95% interval and each seed's value."""
    seeds = summary["seeds"]
    headers = ["metric", "mean", "sd", "95% CI", *(f"seed {s}" for s in seeds)]
    rows = [[name, _num(m["mean"]), _num(m["sd"]), _ci(m["ci95"]), *map(_num, m["runs"])]
            for name, m in summary["metrics"].items()]
    head = (f"{summary['eval_split']} split, {len(seeds)} seeds, best epochs "
            f"{', '.join(map(str, summary['best_epochs']))}, "
            f"{human_seconds(float(np.mean(summary['train_seconds'])))} of training per seed")
    return "\n".join([head, table(headers, rows)])


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _ci(ci: Sequence[float] | None) -> str:
    return "n/a" if not ci else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


# ---------------------------------------------------------------------- the folder


def seed_values(config: TrainConfig, seeds: int) -> list[int]:
    """The K seeds: the config's seed, then the next K - 1."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise SeedsUsageError(f"--seeds: expected an integer >= 1 but got {seeds!r}")
    return [config.seed + j for j in range(seeds)]


def seed_dir(out: Path, seed: int) -> Path:
    """``OUT/seed-<s>``: the run folder of one seed."""
    return out / f"seed-{seed}"


def _identities(opened: PairingData, annotations: Annotations, config: TrainConfig,
                seeds: Sequence[int]) -> dict[int, dict]:
    return {s: run.run_identity(opened, annotations, replace(config, seed=s)) for s in seeds}


def _clear(out: Path, overwrite: bool) -> None:
    """Refuse a plain run in OUT itself (its checkpoint.pt is not a group's); --overwrite removes it
    and the group's own files (the seed folders are cleared by prepare_out_dir)."""
    if overwrite:
        for name in (*run.RUN_FILES, SUMMARY, CHECKPOINT):
            (out / name).unlink(missing_ok=True)
    elif (out / "config.json").is_file():
        raise AvvpError(f"{out} holds a train run of one seed (config.json); choose another --out or pass "
                        f"--overwrite")


def _is_finished(folder: Path) -> bool:
    metrics = folder / "metrics.json"
    return metrics.is_file() and bool(read_json(metrics).get("eval")) and (folder / "predictions.npz").is_file()


def seed_states(out: Path, identities: Mapping[int, dict], *, resume: bool, overwrite: bool) -> dict[int, str]:
    """seed -> 'fresh' (nothing there), 'started' (config.json, not finished) or 'finished'.

    Each seed folder is checked as ``train`` checks its run dir: another run there is refused
    naming the key that differs, and this run without --resume asks for it.
    """
    _clear(out, overwrite)
    states = {}
    for seed, identity in identities.items():
        folder = seed_dir(out, seed)
        run.prepare_out_dir(folder, identity, resume=resume, overwrite=overwrite, member=True)
        started = (folder / "config.json").is_file()
        states[seed] = "finished" if started and _is_finished(folder) else ("started" if started else "fresh")
    return states


def _checkpoint_seeds(out: Path, config: TrainConfig) -> list[int]:
    """The seeds of the group OUT's checkpoint holds ([] without one); another config's is refused."""
    path = out / CHECKPOINT
    if not path.is_file():
        return []
    saved = load_torch(path, "a checkpoint of a train --seeds group")
    if not isinstance(saved, Mapping) or "seeds" not in saved or "config" not in saved:
        raise AvvpError(f"{path}: expected a checkpoint of a train --seeds group; pass --overwrite to start over")
    if _unseeded(saved["config"]) != _unseeded(asdict(config)):
        raise AvvpError(f"{path} holds a group of another config; choose another --out or pass --overwrite")
    return [int(s) for s in saved["seeds"]]


def _unseeded(train: Mapping) -> dict:
    return {k: v for k, v in comparable(train).items() if k != "seed"}


def plan_groups(states: Mapping[int, str], saved: Sequence[int], config: TrainConfig) -> list[tuple[list[int], bool]]:
    """(seeds, resumed) per group to train, in order: the checkpoint's group first, if it is one
    of ours and not finished, then every other unfinished seed in one fresh group (one group per
    seed where the engine cannot group, e.g. fp16)."""
    resumed = list(saved) if saved and set(saved) <= set(states) and any(
        states[s] != "finished" for s in saved) else []
    rest = [s for s, state in states.items() if state != "finished" and s not in resumed]
    groups = [(resumed, True)] if resumed else []
    if rest and engine.can_group(config) and len(rest) > 1:
        return groups + [([s], False) for s in rest]
    return groups + ([(rest, False)] if rest else [])


# ---------------------------------------------------------------------- training


@dataclass
class SeedsResult:
    """The K runs of ``train --seeds K`` and their summary (seeds.json)."""

    seeds: list[int]
    results: list[TrainResult]  # in seed order
    summary: dict
    out_dir: Path
    already_finished: bool = False  # every seed was finished before this call: nothing was trained


def train_seeds(data: PairingData, annotations: Annotations, config: TrainConfig, out_dir: str | Path, seeds: int,
                *, resume: bool = False, overwrite: bool = False, progress: bool = True,
                on_epoch: Callable[[list[dict]], None] | None = None) -> SeedsResult:
    """Train ``data`` with K seeds as one grouped run into ``out_dir``; resumable like ``train``.

    ``on_epoch`` is called with each epoch's records (one per member) after the group's
    checkpoint is written (tests raise from it to simulate a kill).
    """
    config = config.resolved()
    values = seed_values(config, seeds)
    engine.check_members([Member(data, s) for s in values], annotations, config)
    out = Path(out_dir)
    identities = _identities(data, annotations, config, values)
    states = seed_states(out, identities, resume=resume, overwrite=overwrite)
    groups = plan_groups(states, _checkpoint_seeds(out, config), config)
    for group, resumed in groups:
        _train_group(data, annotations, config, out, group, identities, resumed, progress, on_epoch)
    return _collect(out, values, config, already_finished=not groups)


def _train_group(data: PairingData, annotations: Annotations, config: TrainConfig, out: Path, seeds: list[int],
                 identities: Mapping[int, dict], resumed: bool, progress: bool,
                 on_epoch: Callable[[list[dict]], None] | None) -> None:
    """One group of the seeds: config.json first, every epoch's files, then each seed's results."""
    for seed in seeds:
        seed_dir(out, seed).mkdir(parents=True, exist_ok=True)
        atomic_write_json(seed_dir(out, seed) / "config.json", identities[seed])
        marker = {"group": "..", "seed": seed, "checkpoint": CHECKPOINT}
        atomic_write_json(seed_dir(out, seed) / run.MEMBER_FILE, marker)
    with engine.determinism(config):
        state = engine.new_state([Member(data, s) for s in seeds], config)
        note = _resume(state, out, config) if resumed else None

        def after_epoch(state: GroupState, records: list[dict]) -> None:
            _write_epoch(state, out, seeds, identities, config)
            if on_epoch is not None:
                on_epoch(records)

        results, _ = engine.fit(state, annotations, config, progress=progress, after_epoch=after_epoch,
                                describe=lambda s, r: _epoch_line(s, r, seeds, config), note=note)
    for i, (seed, result) in enumerate(zip(seeds, results)):
        run.write_results(seed_dir(out, seed), state, result, config, member=i)


def _resume(state: GroupState, out: Path, config: TrainConfig) -> str:
    engine.load_checkpoint(state, out / CHECKPOINT, config)
    log.info("resuming the seeds group in %s after epoch %d", out, state.epoch)
    return f"resumed after epoch {state.epoch}/{config.epochs}"


def _write_epoch(state: GroupState, out: Path, seeds: Sequence[int], identities: Mapping[int, dict],
                 config: TrainConfig) -> None:
    """Each seed's best.pt when improved, then the group's checkpoint (which alone decides resume),
    then each seed's metrics.json: the order ``train`` writes one run in."""
    for i, seed in enumerate(seeds):
        run.write_best(state, seed_dir(out, seed), identities[seed]["han"], member=i)
    first = identities[seeds[0]]
    engine.save_checkpoint(state, out / CHECKPOINT, {"stores": dict(first["stores"]), "seeds": list(seeds),
                                                     "config": dict(first["train"])})
    for i, seed in enumerate(seeds):
        run.write_metrics(seed_dir(out, seed), state, config, None, member=i)


def _epoch_line(state: GroupState, records: Sequence[dict], seeds: Sequence[int], config: TrainConfig) -> str:
    each = "; ".join(f"seed {s} loss {r['loss']:.4f} {config.select_metric} {r['select']:.2f} "
                     f"(best {m.best_score:.2f} @ {m.best_epoch})" for s, r, m in zip(seeds, records, state.runs))
    return f"epoch {records[0]['epoch']}/{config.epochs} {each}"


def _collect(out: Path, seeds: Sequence[int], config: TrainConfig, *, already_finished: bool) -> SeedsResult:
    """Every seed's result read back from its folder, and seeds.json written from them."""
    results = [run.finished_result(seed_dir(out, s)) for s in seeds]
    for result in results:
        result.already_finished = already_finished
    summary = seeds_summary(seeds, results, config)
    atomic_write_json(out / SUMMARY, summary)
    return SeedsResult(list(seeds), results, summary, out, already_finished)


def train_seeds_run(cache: str, dataset: str, annotations_dir: str | Path, audio: str, visual: str,
                    visual_3d: str | None, config: TrainConfig, out_dir: str | Path, seeds: int, *,
                    resume: bool = False, overwrite: bool = False, allow_random_init: bool = False,
                    allow_simulated: bool = False, progress: bool = True) -> SeedsResult:
    """``train --seeds K``: check OUT and every seed folder first, read the features only if a seed needs training."""
    config = config.resolved()
    values = seed_values(config, seeds)
    annotations, opened = run.open_identity(cache, dataset, annotations_dir, audio, visual, visual_3d, config,
                                            allow_random_init=allow_random_init, allow_simulated=allow_simulated)
    out = Path(out_dir)
    states = seed_states(out, _identities(opened, annotations, config, values), resume=resume, overwrite=overwrite)
    if all(state == "finished" for state in states.values()):
        return _collect(out, values, config, already_finished=True)
    data = run.read_features(cache, dataset, annotations, audio, visual, visual_3d, config,
                             allow_random_init=allow_random_init, allow_simulated=allow_simulated)
    return train_seeds(data, annotations, config, out, seeds, resume=resume, progress=progress)


__all__ = ["LEVEL", "SUMMARY", "CHECKPOINT", "SeedsUsageError", "seed_summary", "seeds_summary", "format_seeds",
           "seed_values", "seed_dir", "seed_states", "plan_groups", "SeedsResult", "train_seeds", "train_seeds_run"]
