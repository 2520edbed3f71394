"""A training run on disk: the run folder of ``avvp-pipe train`` (config.json, checkpoints, results).

The training itself is :mod:`avvp_pipe.pipeline.train.engine` with one member; this module
decides what a folder holds and writes it:

- ``checkpoint.pt`` holds everything the next epoch depends on (weights, optimizer, scheduler,
  RNG states, best weights so far, history), written atomically after every epoch. A resumed
  run therefore ends bit-identical to an uninterrupted one in deterministic CPU mode (tested).
- A run dir is keyed by its ``config.json``: resuming with another config or other stores is an
  error naming the first differing key, never a silent mix of two runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from avvp_pipe.core.device import describe_device, require_device
from avvp_pipe.core.errors import AvvpError, one_line
from avvp_pipe.core.fmt import human_seconds
from avvp_pipe.core.io import atomic_torch_save, atomic_write_json, load_torch, read_json, save_figure
from avvp_pipe.models.han import HAN, HANConfig
from avvp_pipe.pipeline.evaluate.scores import format_table, load_predictions, save_predictions
from avvp_pipe.pipeline.llp.annotations import CLASSES, Annotations
from avvp_pipe.pipeline.train import engine
from avvp_pipe.pipeline.train.config import TrainConfig, comparable, han_config
from avvp_pipe.pipeline.train.engine import GroupState, Member, TrainResult
from avvp_pipe.pipeline.train.pairing import PairingData

log = logging.getLogger(__name__)

#: Files a run dir holds; --overwrite removes exactly these (never the whole folder).
RUN_FILES = ("config.json", "checkpoint.pt", "best.pt", "metrics.json", "predictions.npz",
             "curve.png", "per_class_f1.png")

#: In a run dir trained as one member of a group (``train --seeds``): names the group's folder.
#: Why: the members share one checkpoint in the group's folder, so a member dir has no
#: checkpoint.pt; resumed alone it would silently start over, outside its group.
MEMBER_FILE = "member.json"


# ---------------------------------------------------------------------- run dir


def run_identity(data: PairingData, annotations: Annotations, config: TrainConfig) -> dict:
    """The config.json of a run: what it computes, on which stores (compared on --resume)."""
    from avvp_pipe.cache.store import library_versions

    config = config.resolved()
    audio_url = str(data.stores["audio"].url).rstrip("/")
    cache = audio_url.rsplit("/", 3)[0]  # <cache>/<dataset>/<extractor>/<key>.zarr
    return {"train": asdict(config), "han": asdict(han_config(data.dims, config)), "cache": cache,
            "dataset": data.dataset, "annotations": str(annotations.root), "stores": data.store_keys(),
            "pairing": data.name, "versions": library_versions()}


def _refuse_member(out_dir: Path) -> None:
    path = out_dir / MEMBER_FILE
    if not path.is_file():
        return
    marker, group = _read_json(path), out_dir.parent  # a member dir is always OUT/seed-<s>
    raise AvvpError(f"{out_dir} is seed {marker.get('seed')} of the train --seeds group in {group} (its checkpoint "
                    f"is the group's): resume or extend the group with --out {group} --seeds K --resume, or choose "
                    f"another --out")


def _first_difference(old: Any, new: Any, path: str = "") -> str | None:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in [*new, *(k for k in old if k not in new)]:  # the user's order: train options first
            where = f"{path}.{key}" if path else str(key)
            if key not in old or key not in new:
                return where
            found = _first_difference(old[key], new[key], where)
            if found:
                return found
        return None
    return None if old == new else path


def _comparable(identity: Mapping) -> dict:
    train = comparable(identity["train"])
    return {"train": train, "stores": identity["stores"], "dataset": identity["dataset"], "han": identity["han"]}


def prepare_out_dir(out_dir: Path, identity: Mapping, *, resume: bool, overwrite: bool, member: bool = False) -> str:
    """Decide what to do with ``out_dir``: 'fresh', 'resume' or 'finished'; refuse a different run.

    ``member``: the caller is the group that owns ``out_dir`` (else a group member is refused).
    """
    if not member:
        _refuse_member(out_dir)
    config_path = out_dir / "config.json"
    if not config_path.is_file():
        return "fresh"
    if overwrite:
        for name in RUN_FILES:
            (out_dir / name).unlink(missing_ok=True)
        return "fresh"
    old = _read_config(config_path)
    if not isinstance(old.get("train"), Mapping) or not isinstance(old.get("stores"), Mapping):
        raise AvvpError(f"{config_path}: expected a train config.json with 'train' and 'stores' but it has "
                        f"{', '.join(map(str, old)) or 'nothing'}; pass --overwrite to start over")
    key = _first_difference(_comparable(old), _comparable(identity))
    if key is not None:
        old_v = _dig(old, key)
        new_v = _dig(identity, key)
        raise AvvpError(f"{out_dir} holds a different run: {key} is {old_v!r} there but {new_v!r} now; "
                        f"choose another --out or pass --overwrite")
    if not resume:
        raise AvvpError(f"{out_dir} already holds this run; pass --resume to continue it or --overwrite to restart")
    if not (out_dir / "checkpoint.pt").is_file():
        return "fresh"  # killed before the first epoch ended: nothing to resume from
    return "finished" if _read_json(out_dir / "metrics.json").get("eval") else "resume"


def _dig(data: Mapping, dotted: str) -> Any:
    value: Any = data
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _read_json(path: Path) -> dict:
    return read_json(path) if path.is_file() else {}


# ---------------------------------------------------------------------- training


def train_pairing(data: PairingData, annotations: Annotations, config: TrainConfig,
                  out_dir: str | Path | None = None, *, resume: bool = False, progress: bool = True,
                  overwrite: bool = False, on_epoch: Callable[[dict], None] | None = None) -> TrainResult:
    """Train HAN on ``data``, keep the best epoch by ``select_metric``, score it on ``eval_split``.

    ``on_epoch`` is called with each epoch's record after its checkpoint is written (tests
    raise from it to simulate a kill).
    """
    config = config.resolved()
    member = Member(data, config.seed)
    engine.check_members([member], annotations, config)
    identity = run_identity(data, annotations, config)
    out = Path(out_dir) if out_dir is not None else None
    mode = "fresh"
    if out is not None:
        mode = prepare_out_dir(out, identity, resume=resume, overwrite=overwrite)
        if mode == "finished":
            return finished_result(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "config.json", identity)
    with engine.determinism(config):
        state = engine.new_state([member], config)
        note = None
        if mode == "resume":
            engine.load_checkpoint(state, out / "checkpoint.pt", config)
            log.info("resuming %s after epoch %d", out, state.epoch)
            run = state.runs[0]
            note = (f"resumed after epoch {state.epoch}/{config.epochs} (best {run.best_score:.2f} "
                    f"at epoch {run.best_epoch})")

        def after_epoch(state: GroupState, records: list[dict]) -> None:
            if out is not None:
                _write_epoch(state, out, identity, config)
            if on_epoch is not None:
                on_epoch(records[0])

        results, _ = engine.fit(state, annotations, config, progress=progress, after_epoch=after_epoch,
                                describe=lambda s, r: _epoch_line(r[0], s, config), note=note)
    result = results[0]
    if out is not None:
        write_results(out, state, result, config)
    return result


def _write_epoch(state: GroupState, out: Path, identity: Mapping, config: TrainConfig) -> None:
    """best.pt when improved, then checkpoint.pt (which alone decides resume), then metrics.json."""
    write_best(state, out, identity["han"])
    engine.save_checkpoint(state, out / "checkpoint.pt",
                           {"stores": dict(identity["stores"]), "config": dict(identity["train"])})
    write_metrics(out, state, config, None)


def write_best(state: GroupState, out: Path, han: Mapping, member: int = 0) -> None:
    """best.pt of one member, when the epoch just trained is its best so far (a tie keeps the later)."""
    run = state.runs[member]
    if run.best_epoch == state.epoch:
        atomic_torch_save({"model": run.best_model, "head": run.best_head, "han": dict(han),
                           "epoch": run.best_epoch}, out / "best.pt")


def write_metrics(out: Path, state: GroupState, config: TrainConfig, scores: dict | None, member: int = 0) -> None:
    """metrics.json of one member: its epochs so far, its best epoch and (once scored) its eval scores."""
    run = state.runs[member]
    atomic_write_json(out / "metrics.json", {
        "epochs": run.history, "best_epoch": run.best_epoch, "select_metric": config.select_metric,
        "select_split": config.select_split, "eval_split": config.eval_split, "eval": scores,
    })


def write_results(out: Path, state: GroupState, result: TrainResult, config: TrainConfig, member: int = 0) -> None:
    """The eval split's predictions, the final metrics.json and the plots of one member."""
    pred = result.predictions
    save_predictions(out / "predictions.npz", pred["video_ids"], pred["frame_prob"], pred["global_prob"],
                     pred["a_prob"], pred["v_prob"])
    write_metrics(out, state, config, result.scores, member)
    write_plots(out, result.history, result.scores, config)
    result.out_dir = out


def _epoch_line(record: dict, state: GroupState, config: TrainConfig) -> str:
    run = state.runs[0]
    done = [r["seconds"] for r in run.history]
    per_epoch = sum(done) / len(done)
    eta = per_epoch * (config.epochs - record["epoch"])
    mtsc = "" if record["mtsc"] is None else f" (bce {record['bce']:.4f} mtsc {record['mtsc']:.4f})"
    return (f"epoch {record['epoch']}/{config.epochs} loss {record['loss']:.4f}{mtsc} lr {record['lr']:.2e} "
            f"{config.select_split} {config.select_metric} {record['select']:.2f} "
            f"(best {run.best_score:.2f} @ {run.best_epoch}) {record['seconds']:.1f} s/epoch "
            f"ETA {human_seconds(eta)}")


def finished_result(out: Path) -> TrainResult:
    """The result of a finished run, read back from its files (no retraining)."""
    metrics = _read_json(out / "metrics.json")
    best = metrics["best_epoch"]
    history = metrics["epochs"]
    return TrainResult(best_epoch=best, best_score=history[best - 1]["select"], history=history,
                       scores=metrics["eval"], predictions=load_predictions(out / "predictions.npz"),
                       seconds=sum(r["seconds"] for r in history), out_dir=out, already_finished=True)


# ---------------------------------------------------------------------- plots


def write_plots(out: Path, history: list[dict], scores: Mapping, config: TrainConfig) -> None:
    """curve.png (loss and select score per epoch) and per_class_f1.png (eval split, segment level)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(epochs, [r["loss"] for r in history], "o-", color="tab:blue", label="loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(epochs, [r["select"] for r in history], "s-", color="tab:red")
    ax2.set_ylabel(f"{config.select_split} {config.select_metric}", color="tab:red")
    ax.set_title("training curve")
    save_figure(fig, out / "curve.png")
    plt.close(fig)

    per_class = scores["per_class"]["segment"]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.27
    x = np.arange(len(CLASSES))
    for i, key in enumerate(("audio", "visual", "audio_visual")):
        values = [np.nan if per_class[key][c] is None else per_class[key][c] for c in CLASSES]
        ax.bar(x + (i - 1) * width, values, width, label=key)
    ax.set_xticks(x, CLASSES, rotation=70, ha="right", fontsize=8)
    ax.set_ylabel("segment F1 (%)")
    ax.set_title(f"{config.eval_split}: per-class segment-level F1 (best epoch)")
    ax.legend()
    save_figure(fig, out / "per_class_f1.png")
    plt.close(fig)


# ---------------------------------------------------------------------- entry points


def train_run(cache: str, dataset: str, annotations_dir: str | Path, audio: str, visual: str,
              visual_3d: str | None, config: TrainConfig, out_dir: str | Path, *, resume: bool = False,
              allow_random_init: bool = False, allow_simulated: bool = False, progress: bool = True,
              overwrite: bool = False) -> TrainResult:
    """Load the pairing for the splits the run needs (checking the run dir first), then train."""
    config = config.resolved()
    annotations, stores = open_identity(cache, dataset, annotations_dir, audio, visual, visual_3d, config,
                                        allow_random_init=allow_random_init, allow_simulated=allow_simulated)
    identity = run_identity(stores, annotations, config)
    out = Path(out_dir)
    mode = prepare_out_dir(out, identity, resume=resume, overwrite=overwrite)  # before reading features
    if mode == "finished":
        return finished_result(out)
    data = read_features(cache, dataset, annotations, audio, visual, visual_3d, config,
                         allow_random_init=allow_random_init, allow_simulated=allow_simulated)
    return train_pairing(data, annotations, config, out, resume=resume, progress=progress)


def open_identity(cache: str, dataset: str, annotations_dir: str | Path, audio: str, visual: str,
                  visual_3d: str | None, config: TrainConfig, *, allow_random_init: bool = False,
                  allow_simulated: bool = False) -> tuple[Annotations, PairingData]:
    """The annotations and the pairing's stores, no features yet: enough to key run dirs, so a
    refused or finished run costs no feature read."""
    from avvp_pipe.pipeline.llp.annotations import load_annotations
    from avvp_pipe.pipeline.train.pairing import open_pairing_stores

    require_device(config.device)  # `--device cuda` without a GPU: one line now, not a torch error later
    annotations = load_annotations(annotations_dir)
    stores = open_pairing_stores(cache, dataset, audio, visual, visual_3d, allow_random_init=allow_random_init,
                                 allow_simulated=allow_simulated)
    return annotations, PairingData(dataset=dataset, stores=stores)


def read_features(cache: str, dataset: str, annotations: Annotations, audio: str, visual: str,
                  visual_3d: str | None, config: TrainConfig, *, allow_random_init: bool = False,
                  allow_simulated: bool = False) -> PairingData:
    """The pairing's features for the splits a run trains, selects and is scored on."""
    from avvp_pipe.pipeline.train.pairing import load_pairing

    return load_pairing(cache, dataset, annotations, [config.train_split, config.select_split, config.eval_split],
                        audio=audio, visual=visual, visual_3d=visual_3d, allow_random_init=allow_random_init,
                        allow_simulated=allow_simulated)


def load_run(run_dir: str | Path) -> tuple[HAN, nn.Linear | None, dict]:
    """The best model of a run (eval mode, CPU), its separate MTSC head if any, and config.json."""
    run = Path(run_dir)
    for name in ("config.json", "best.pt"):
        if not (run / name).is_file():
            raise AvvpError(f"{run}: expected a train run dir with {name} but it is missing")
    config = _read_config(run / "config.json")
    best = load_torch(run / "best.pt", "the best epoch's weights of a train run")
    try:
        model = HAN(HANConfig(**best["han"]))
        model.load_state_dict(best["model"])
        head = None
        if best["head"] is not None:
            d = model.config.d_model
            head = nn.Linear(d, d)
            head.load_state_dict(best["head"])
            head.eval()
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise AvvpError(f"{run / 'best.pt'}: expected the weights of a train run but they do not fit HAN "
                        f"({type(err).__name__}: {one_line(err, 160)})") from None
    return model.eval(), head, config


def _read_config(path: Path) -> dict:
    try:
        config = read_json(path)
    except (ValueError, UnicodeDecodeError) as err:
        raise AvvpError(f"{path}: expected a train config.json but it is not JSON ({err}); "
                        f"pass --overwrite to start over") from None
    if not isinstance(config, dict):
        raise AvvpError(f"{path}: expected a train config.json (an object) but got {type(config).__name__}; "
                        f"pass --overwrite to start over")
    return config


def summary(result: TrainResult, device: str | None = None) -> str:
    """The final table: eval scores of the best epoch, the best epoch, the time and the device."""
    split = result.scores.get("split", "eval")
    on = f" on {describe_device(device)}" if device else ""
    lines = [f"{split} split, best epoch {result.best_epoch} (select score {result.best_score:.2f}), "
             f"{len(result.history)} epochs in {human_seconds(result.seconds)}{on}",
             format_table(result.scores)]
    if result.out_dir is not None:
        lines.append(f"run dir: {result.out_dir}")
    return "\n".join(lines)


__all__ = ["RUN_FILES", "run_identity", "prepare_out_dir", "train_pairing", "finished_result", "write_plots",
           "write_best", "write_metrics", "write_results", "open_identity", "read_features",
           "train_run", "load_run", "summary"]
