"""``avvp-pipe train``: HAN (+ MTSC) on one extractor pairing, the official recipe, resumable.

Why it is built this way:

- Features are read once (:mod:`pipeline.pairing`) and moved to the device once as tensors;
  a step only gathers its rows with ``index_select``. The epoch's batch order is one tensor
  copied once per epoch, and the loss is summed on the device and read once per epoch, so
  nothing in the step waits on the host (``benchmarks/train.py`` checks the loop costs
  little more than the model alone).
- The batch order of epoch ``e`` comes from ``np.random.default_rng((seed, e))``, not from a
  running generator, so it does not depend on where a run was resumed.
- ``checkpoint.pt`` holds everything the next epoch depends on (weights, optimizer, scheduler,
  RNG states, best weights so far, history), written atomically after every epoch. A resumed
  run therefore ends bit-identical to an uninterrupted one in deterministic CPU mode (tested).
- A run dir is keyed by its ``config.json``: resuming with another config or other stores is an
  error naming the first differing key, never a silent mix of two runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.han import HAN, HANConfig
from models.metrics import LEVELS, SCORE_KEYS
from models.mtsc import ANCHORS, mtsc_loss
from models.objective import han_bce_loss
from pipeline.errors import AvvpError
from pipeline.evaluate import evaluate_predictions, format_table, load_predictions, save_predictions
from pipeline.llp import CLASSES, SPLITS, Annotations
from pipeline.pairing import PairingData, SplitArrays
from pipeline.report import atomic_write_json, human_seconds, save_figure

log = logging.getLogger(__name__)

MTSC_MODES = ("off", "part", "entire")
PRECISIONS = ("fp32", "bf16", "fp16")
#: Files a run dir holds; --overwrite removes exactly these (never the whole folder).
RUN_FILES = ("config.json", "checkpoint.pt", "best.pt", "metrics.json", "predictions.npz",
             "curve.png", "per_class_f1.png")
#: ``train`` keys that may change on --resume: where a run executes, not what it computes.
RESUMABLE_KEYS = ("device",)


def metric_names() -> list[str]:
    """Every value --select-metric accepts: ``average`` and ``<level>.<score>``."""
    return ["average"] + [f"{level}.{key}" for level in LEVELS for key in SCORE_KEYS]


@dataclass
class TrainConfig:
    """One training run; the defaults are the official recipe (llp-facts.md section 4)."""

    epochs: int = 40
    batch_size: int = 16
    lr: float = 3e-4  # Adam, no weight decay
    step_size: int = 10  # StepLR, stepped once per epoch
    gamma: float = 0.1
    seed: int = 1
    mtsc: str = "off"  # off | part | entire
    mtsc_weight: float = 1.0
    mtsc_decay: float = 5.0
    mtsc_anchor: str = "audio"  # audio | visual | both
    keep_visual_head: bool | None = None  # None -> on iff mtsc != "off"
    dropout: float = 0.1
    train_split: str = "train"
    select_split: str = "val"
    eval_split: str = "test"
    select_metric: str = "segment.type_at_av"  # dotted key into evaluate's JSON, or "average"
    device: str = "cpu"
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast on cuda; bf16 autocast on cpu)
    deterministic: bool = True

    def __post_init__(self) -> None:
        def need(ok: bool, option: str, expected: str, got: Any) -> None:
            if not ok:
                raise AvvpError(f"--{option}: expected {expected} but got {got!r}")

        need(isinstance(self.epochs, int) and self.epochs >= 1, "epochs", "an integer >= 1", self.epochs)
        need(isinstance(self.batch_size, int) and self.batch_size >= 1, "batch-size", "an integer >= 1",
             self.batch_size)
        need(self.lr > 0, "lr", "a number > 0", self.lr)
        need(isinstance(self.step_size, int) and self.step_size >= 1, "step-size", "an integer >= 1",
             self.step_size)
        need(self.mtsc in MTSC_MODES, "mtsc", f"one of {', '.join(MTSC_MODES)}", self.mtsc)
        need(self.mtsc_anchor in ANCHORS, "mtsc-anchor", f"one of {', '.join(ANCHORS)}", self.mtsc_anchor)
        need(self.mtsc_weight >= 0, "mtsc-weight", "a number >= 0", self.mtsc_weight)
        need(self.mtsc_decay >= 0, "mtsc-decay", "a number >= 0", self.mtsc_decay)
        need(0 <= self.dropout < 1, "dropout", "a number in [0, 1)", self.dropout)
        for option in ("train_split", "select_split", "eval_split"):
            value = getattr(self, option)
            need(value in SPLITS, option.replace("_", "-"), f"one of {', '.join(SPLITS)}", value)
        need(self.select_metric in metric_names(), "select-metric", f"one of {', '.join(metric_names())}",
             self.select_metric)
        need(self.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}", self.precision)
        device = torch.device(self.device)  # raises on nonsense like "gpu"
        need(not (device.type == "cpu" and self.precision == "fp16"), "precision",
             "fp32 or bf16 on cpu (fp16 autocast needs cuda)", self.precision)

    def resolved(self) -> TrainConfig:
        """A copy with ``keep_visual_head`` decided (on iff MTSC is on, unless set)."""
        if self.keep_visual_head is not None:
            return self
        return replace(self, keep_visual_head=self.mtsc != "off")


@dataclass
class TrainResult:
    best_epoch: int
    best_score: float
    history: list[dict]
    scores: dict  # evaluate JSON on eval_split for the best epoch
    predictions: dict  # evaluate's P.npz format, eval_split, best epoch
    seconds: float  # training time summed over epochs (over all sessions of a resumed run)
    out_dir: Path | None
    already_finished: bool = False  # --resume found the run complete and did not retrain


# ---------------------------------------------------------------------- model and data


def han_config(dims: Mapping[str, int | None], config: TrainConfig) -> HANConfig:
    """HAN's sizes from the pairing's feature widths; d_model etc. stay the release's."""
    return HANConfig(audio_dim=int(dims["audio"]), visual_dim=int(dims["visual"]),
                     visual_3d_dim=dims.get("visual_3d"), dropout=config.dropout,
                     keep_visual_head=bool(config.resolved().keep_visual_head))


def init_model(dims: Mapping[str, int | None], config: TrainConfig) -> tuple[HAN, nn.Linear | None]:
    """Seeded HAN (and a separate MTSC head g when MTSC is on but g is not kept), on config.device.

    Built on the CPU, then moved, so the initial weights do not depend on the device. HAN is
    built before the head, so HAN's weights are the same with or without a separate head.
    """
    config = config.resolved()
    torch.manual_seed(config.seed)
    model = HAN(han_config(dims, config))
    head = None
    if config.mtsc != "off" and not config.keep_visual_head:
        d = model.config.d_model
        head = nn.Linear(d, d)  # trained by the MTSC loss only; never fed to HAN
    return model.to(config.device), (head.to(config.device) if head is not None else None)


def batch_order(n: int, config: TrainConfig, epoch: int) -> list[np.ndarray]:
    """The epoch's shuffled mini-batches (the last may be short, as DataLoader's drop_last=False)."""
    order = np.random.default_rng((config.seed, epoch)).permutation(n)
    return [order[i : i + config.batch_size] for i in range(0, n, config.batch_size)]


@dataclass
class _DeviceSplit:
    """A split's features as tensors on the training device (moved once)."""

    ids: list[str]
    audio: Tensor  # (N, 10, Da)
    visual: Tensor  # (N, 10, Dv)
    visual_3d: Tensor | None  # (N, 10, D3)
    labels: Tensor  # (N, 25)

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, idx: Tensor) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        """Gather a batch on the device: (B, 10, Da), (B, 10, Dv), (B, 10, D3) | None, (B, 25)."""
        v3 = self.visual_3d.index_select(0, idx) if self.visual_3d is not None else None
        return (self.audio.index_select(0, idx), self.visual.index_select(0, idx), v3,
                self.labels.index_select(0, idx))


def to_device(arrays: SplitArrays, device: str | torch.device) -> _DeviceSplit:
    def put(x: np.ndarray | None) -> Tensor | None:
        return None if x is None else torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)

    return _DeviceSplit(list(arrays.ids), put(arrays.audio), put(arrays.visual), put(arrays.visual_3d),
                        put(arrays.labels))


def autocast_for(config: TrainConfig) -> contextlib.AbstractContextManager:
    """Mixed precision for the model's forward; fp32 is a no-op context."""
    if config.precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(config.device).type, dtype=dtype)


# ---------------------------------------------------------------------- loss and prediction


def _loss_terms(model: HAN, head: nn.Module | None, audio: Tensor, visual: Tensor, visual_3d: Tensor | None,
                labels: Tensor, config: TrainConfig) -> tuple[Tensor, Tensor, Tensor | None]:
    """(loss, bce, mtsc | None) as device tensors; no host sync, so the loop can stay asynchronous."""
    with autocast_for(config):
        a, v = model.project(audio, visual, visual_3d)  # (B, 10, 512) each: the features before HAN
        global_prob, a_prob, v_prob, _ = model.forward_projected(a, v)  # (B, 25) x3
    # BCE is unsafe under autocast (fp16 log); the loss is computed in fp32 on the outputs.
    bce = han_bce_loss(global_prob.float(), a_prob.float(), v_prob.float(), labels)
    if config.mtsc == "off":
        return bce, bce, None
    g = head if head is not None else model.mtsc_head
    mtsc = mtsc_loss(a.float(), v.float(), g, variant=config.mtsc, decay=config.mtsc_decay,
                     anchor=config.mtsc_anchor)
    return bce + config.mtsc_weight * mtsc, bce, mtsc


def training_loss(model: HAN, head: nn.Module | None, audio: Tensor, visual: Tensor, visual_3d: Tensor | None,
                  labels: Tensor, config: TrainConfig) -> tuple[Tensor, dict]:
    """BCE (han_bce_loss) + mtsc_weight * MTSC, and its parts as floats (mtsc None when off)."""
    loss, bce, mtsc = _loss_terms(model, head, audio, visual, visual_3d, labels, config)
    parts = {"loss": float(loss.detach()), "bce": float(bce.detach()),
             "mtsc": None if mtsc is None else float(mtsc.detach())}
    return loss, parts


@torch.no_grad()
def predict_on_device(model: HAN, split: _DeviceSplit, config: TrainConfig, batch: int = 256) -> dict[str, np.ndarray]:
    was_training = model.training
    model.eval()
    outs: list[list[Tensor]] = [[], [], [], []]
    device = split.audio.device
    for start in range(0, len(split), batch):
        idx = torch.arange(start, min(start + batch, len(split)), device=device)
        audio, visual, v3, _ = split.rows(idx)
        with autocast_for(config):
            result = model(audio, visual, v3)  # global (B, 25), a, v (B, 25), frame (B, 10, 2, 25)
        for store, value in zip(outs, result):
            store.append(value.float())
    model.train(was_training)
    global_prob, a_prob, v_prob, frame_prob = (torch.cat(x).cpu().numpy() for x in outs)
    return {"video_ids": np.asarray(split.ids), "frame_prob": frame_prob, "global_prob": global_prob,
            "a_prob": a_prob, "v_prob": v_prob}


def predict(model: HAN, arrays: SplitArrays, config: TrainConfig, batch: int = 256) -> dict[str, np.ndarray]:
    """Eval mode, no grad: video_ids, frame_prob (N, 10, 2, 25), global_prob, a_prob, v_prob (N, 25)."""
    device = next(model.parameters()).device
    return predict_on_device(model, to_device(arrays, device), config, batch)


def metric_value(scores: Mapping, metric: str) -> float:
    """Read a dotted key (``segment.type_at_av``) or ``average`` from evaluate's JSON."""
    value: Any = scores
    for part in metric.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise AvvpError(f"--select-metric {metric!r}: expected one of {', '.join(metric_names())}")
        value = value[part]
    return float(value)


# ---------------------------------------------------------------------- run dir


def run_identity(data: PairingData, annotations: Annotations, config: TrainConfig) -> dict:
    """The config.json of a run: what it computes, on which stores (compared on --resume)."""
    from cache.store import library_versions

    config = config.resolved()
    audio_url = str(data.stores["audio"].url).rstrip("/")
    cache = audio_url.rsplit("/", 3)[0]  # <cache>/<dataset>/<extractor>/<key>.zarr
    return {"train": asdict(config), "han": asdict(han_config(data.dims, config)), "cache": cache,
            "dataset": data.dataset, "annotations": str(annotations.root), "stores": data.store_keys(),
            "pairing": data.name, "versions": library_versions()}


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
    train = {k: v for k, v in identity["train"].items() if k not in RESUMABLE_KEYS}
    return {"train": train, "stores": identity["stores"], "dataset": identity["dataset"], "han": identity["han"]}


def prepare_out_dir(out_dir: Path, identity: Mapping, *, resume: bool, overwrite: bool) -> str:
    """Decide what to do with ``out_dir``: 'fresh', 'resume' or 'finished'; refuse a different run."""
    config_path = out_dir / "config.json"
    if not config_path.is_file():
        return "fresh"
    if overwrite:
        for name in RUN_FILES:
            (out_dir / name).unlink(missing_ok=True)
        return "fresh"
    try:
        old = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise AvvpError(f"{config_path}: expected a train config.json but it is not JSON ({err}); "
                        f"pass --overwrite to start over") from None
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
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _cpu_state(module: nn.Module | None) -> dict | None:
    return None if module is None else {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _numpy_rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _set_numpy_rng_state(state: Mapping) -> None:
    np.random.set_state((state["name"], state["keys"].numpy().astype(np.uint32), state["pos"],
                         state["has_gauss"], state["cached_gaussian"]))


# ---------------------------------------------------------------------- training


@contextlib.contextmanager
def determinism(config: TrainConfig) -> Iterator[None]:
    """Deterministic kernels, and denormals flushed to zero, for the run only.

    Why flush: HAN's softmax attention and sigmoids produce subnormal floats once a model
    fits its data, and x86 CPUs compute on subnormals ~100x slower. Measured with
    benchmarks/train.py (10,000 clips, 1 thread): the full loop ran at 0.47x the model-alone
    rate without flushing and 0.89x with it. Flushing only drops values below 1.2e-38.
    """
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.set_flush_denormal(True)
    if config.deterministic:
        cuda = torch.device(config.device).type == "cuda"
        if cuda:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
        # On CUDA some attention backward kernels have no deterministic version: warn, don't abort a run.
        torch.use_deterministic_algorithms(True, warn_only=cuda)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.set_flush_denormal(False)  # torch's default; it has no getter to restore from


@dataclass
class _State:
    """Everything an epoch changes; checkpoint.pt is this, serialised."""

    model: HAN
    head: nn.Linear | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.StepLR
    scaler: torch.amp.GradScaler
    epoch: int = 0
    best_epoch: int = 0
    best_score: float = float("-inf")
    best_model: dict | None = None
    best_head: dict | None = None
    history: list[dict] = field(default_factory=list)


def _new_state(dims: Mapping, config: TrainConfig) -> _State:
    model, head = init_model(dims, config)
    params = list(model.parameters()) + (list(head.parameters()) if head is not None else [])
    optimizer = torch.optim.Adam(params, lr=config.lr)  # official: no weight decay
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    scaler = torch.amp.GradScaler(torch.device(config.device).type, enabled=config.precision == "fp16")
    return _State(model, head, optimizer, scheduler, scaler)


def _save_checkpoint(state: _State, out_dir: Path, identity: Mapping) -> None:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    _atomic_torch_save({
        "model": state.model.state_dict(), "head": None if state.head is None else state.head.state_dict(),
        "optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(), "torch_rng": torch.get_rng_state(), "cuda_rng": cuda,
        "numpy_rng": _numpy_rng_state(), "epoch": state.epoch, "best_epoch": state.best_epoch,
        "best_score": state.best_score, "best_model": state.best_model, "best_head": state.best_head,
        "history": state.history, "stores": dict(identity["stores"]), "config": dict(identity["train"]),
    }, out_dir / "checkpoint.pt")


def _load_checkpoint(state: _State, out_dir: Path, config: TrainConfig) -> None:
    ckpt = torch.load(out_dir / "checkpoint.pt", map_location=config.device, weights_only=True)
    state.model.load_state_dict(ckpt["model"])
    if state.head is not None:
        state.head.load_state_dict(ckpt["head"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    state.scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["torch_rng"].cpu())
    if ckpt["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in ckpt["cuda_rng"]])
    _set_numpy_rng_state(ckpt["numpy_rng"])
    state.epoch, state.best_epoch, state.best_score = ckpt["epoch"], ckpt["best_epoch"], ckpt["best_score"]
    state.best_model, state.best_head, state.history = ckpt["best_model"], ckpt["best_head"], ckpt["history"]


def _train_epoch(state: _State, split: _DeviceSplit, config: TrainConfig, epoch: int) -> dict:
    """One pass over the train split; returns mean loss parts (one host sync, at the end)."""
    model, device = state.model, split.audio.device
    model.train()
    if state.head is not None:
        state.head.train()
    batches = batch_order(len(split), config, epoch)
    order = torch.from_numpy(np.concatenate(batches)).to(device)  # one copy per epoch
    sums = torch.zeros(3, device=device)  # loss, bce, mtsc (weighted by batch size)
    start = 0
    for rows in batches:
        idx = order[start : start + len(rows)]
        start += len(rows)
        audio, visual, v3, labels = split.rows(idx)  # (B, 10, D) ... (B, 25)
        loss, bce, mtsc = _loss_terms(model, state.head, audio, visual, v3, labels, config)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        parts = torch.stack([loss.detach(), bce.detach(), mtsc.detach() if mtsc is not None else bce.new_zeros(())])
        sums += parts * len(rows)
    means = (sums / len(split)).tolist()  # the epoch's only host sync
    if not np.isfinite(means[0]):
        raise AvvpError(f"training diverged at epoch {epoch}: loss is {means[0]} (try a lower --lr or --precision fp32)")
    return {"loss": means[0], "bce": means[1], "mtsc": means[2] if config.mtsc != "off" else None}


def train_pairing(data: PairingData, annotations: Annotations, config: TrainConfig,
                  out_dir: str | Path | None = None, *, resume: bool = False, progress: bool = True,
                  overwrite: bool = False, on_epoch: Callable[[dict], None] | None = None) -> TrainResult:
    """Train HAN on ``data``, keep the best epoch by ``select_metric``, score it on ``eval_split``.

    ``on_epoch`` is called with each epoch's record after its checkpoint is written (tests
    raise from it to simulate a kill; ``select`` may use it for progress).
    """
    config = config.resolved()
    _check_splits(data, annotations, config)
    identity = run_identity(data, annotations, config)
    out = Path(out_dir) if out_dir is not None else None
    mode = "fresh"
    if out is not None:
        mode = prepare_out_dir(out, identity, resume=resume, overwrite=overwrite)
        if mode == "finished":
            return finished_result(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "config.json", identity)
    with determinism(config):
        return _train(data, annotations, config, identity, out, mode == "resume", progress, on_epoch)


def _check_splits(data: PairingData, annotations: Annotations, config: TrainConfig) -> None:
    dense = annotations.dense_splits()
    for option, split in (("select-split", config.select_split), ("eval-split", config.eval_split)):
        if split not in dense:
            raise AvvpError(f"--{option} {split}: expected a split with dense labels ({', '.join(dense)})")
    for split in (config.train_split, config.select_split, config.eval_split):
        if split not in data.splits:
            raise AvvpError(f"split {split!r}: not loaded in the pairing (loaded: {', '.join(data.splits)})")


def _train(data: PairingData, annotations: Annotations, config: TrainConfig, identity: Mapping,
           out: Path | None, resume: bool, progress: bool, on_epoch: Callable[[dict], None] | None) -> TrainResult:
    from pipeline.progress import Progress

    state = _new_state(data.dims, config)
    if resume and out is not None:
        _load_checkpoint(state, out, config)
        log.info("resuming %s after epoch %d", out, state.epoch)
    splits = {name: to_device(data.splits[name], config.device)
              for name in dict.fromkeys((config.train_split, config.select_split, config.eval_split))}
    bar = Progress(config.epochs, f"train {data.name}", unit="epochs", enabled=progress)
    bar.update(state.epoch)
    with bar:
        if state.epoch and progress:
            bar.write(f"resumed after epoch {state.epoch}/{config.epochs} (best {state.best_score:.2f} "
                      f"at epoch {state.best_epoch})")
        for epoch in range(state.epoch + 1, config.epochs + 1):
            record = _run_epoch(state, splits, annotations, config, epoch)
            if out is not None:
                _write_epoch(state, out, identity, config)
            bar.update(1, loss=f"{record['loss']:.4f}", select=f"{record['select']:.2f}")
            if progress:
                bar.write(_epoch_line(record, state, config))
            if on_epoch is not None:
                on_epoch(record)
    return _finish(state, splits[config.eval_split], annotations, config, out)


def _run_epoch(state: _State, splits: Mapping[str, _DeviceSplit], annotations: Annotations,
               config: TrainConfig, epoch: int) -> dict:
    started = time.perf_counter()
    lr = state.optimizer.param_groups[0]["lr"]
    parts = _train_epoch(state, splits[config.train_split], config, epoch)
    state.scheduler.step()
    pred = predict_on_device(state.model, splits[config.select_split], config)
    score = metric_value(evaluate_predictions(pred, annotations, config.select_split), config.select_metric)
    if score > state.best_score:  # ties keep the earlier epoch
        state.best_epoch, state.best_score = epoch, score
        state.best_model, state.best_head = _cpu_state(state.model), _cpu_state(state.head)
    state.epoch = epoch
    record = {"epoch": epoch, **parts, "lr": lr, "select": score, "seconds": time.perf_counter() - started}
    state.history.append(record)
    return record


def _write_epoch(state: _State, out: Path, identity: Mapping, config: TrainConfig) -> None:
    """best.pt when improved, then checkpoint.pt (which alone decides resume), then metrics.json."""
    if state.best_epoch == state.epoch:
        _atomic_torch_save({"model": state.best_model, "head": state.best_head, "han": identity["han"],
                            "epoch": state.best_epoch}, out / "best.pt")
    _save_checkpoint(state, out, identity)
    _write_metrics(out, state, config, None)


def _write_metrics(out: Path, state: _State, config: TrainConfig, scores: dict | None) -> None:
    atomic_write_json(out / "metrics.json", {
        "epochs": state.history, "best_epoch": state.best_epoch, "select_metric": config.select_metric,
        "select_split": config.select_split, "eval_split": config.eval_split, "eval": scores,
    })


def _epoch_line(record: dict, state: _State, config: TrainConfig) -> str:
    done = [r["seconds"] for r in state.history]
    per_epoch = sum(done) / len(done)
    eta = per_epoch * (config.epochs - record["epoch"])
    mtsc = "" if record["mtsc"] is None else f" (bce {record['bce']:.4f} mtsc {record['mtsc']:.4f})"
    return (f"epoch {record['epoch']}/{config.epochs} loss {record['loss']:.4f}{mtsc} lr {record['lr']:.2e} "
            f"{config.select_split} {config.select_metric} {record['select']:.2f} "
            f"(best {state.best_score:.2f} @ {state.best_epoch}) {record['seconds']:.1f} s/epoch "
            f"ETA {human_seconds(eta)}")


def _finish(state: _State, eval_split: _DeviceSplit, annotations: Annotations, config: TrainConfig,
            out: Path | None) -> TrainResult:
    """Score the best epoch on eval_split; write predictions, metrics and plots."""
    state.model.load_state_dict(state.best_model)
    if state.head is not None:
        state.head.load_state_dict(state.best_head)
    pred = predict_on_device(state.model, eval_split, config)
    scores = evaluate_predictions(pred, annotations, config.eval_split)
    if out is not None:
        save_predictions(out / "predictions.npz", pred["video_ids"], pred["frame_prob"], pred["global_prob"],
                         pred["a_prob"], pred["v_prob"])
        _write_metrics(out, state, config, scores)
        write_plots(out, state.history, scores, config)
    return TrainResult(best_epoch=state.best_epoch, best_score=state.best_score, history=state.history,
                       scores=scores, predictions=pred, seconds=sum(r["seconds"] for r in state.history),
                       out_dir=out)


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
    from pipeline.llp import load_annotations
    from pipeline.pairing import load_pairing, open_pairing_stores

    config = config.resolved()
    annotations = load_annotations(annotations_dir)
    stores = open_pairing_stores(cache, dataset, audio, visual, visual_3d, allow_random_init=allow_random_init,
                                 allow_simulated=allow_simulated)
    identity = run_identity(PairingData(dataset=dataset, stores=stores), annotations, config)
    out = Path(out_dir)
    mode = prepare_out_dir(out, identity, resume=resume, overwrite=overwrite)  # before reading features
    if mode == "finished":
        return finished_result(out)
    data = load_pairing(cache, dataset, annotations,
                        [config.train_split, config.select_split, config.eval_split], audio=audio,
                        visual=visual, visual_3d=visual_3d, allow_random_init=allow_random_init,
                        allow_simulated=allow_simulated)
    return train_pairing(data, annotations, config, out, resume=resume, progress=progress)


def load_run(run_dir: str | Path) -> tuple[HAN, nn.Linear | None, dict]:
    """The best model of a run (eval mode, CPU), its separate MTSC head if any, and config.json."""
    run = Path(run_dir)
    for name in ("config.json", "best.pt"):
        if not (run / name).is_file():
            raise AvvpError(f"{run}: expected a train run dir with {name} but it is missing")
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    best = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    model = HAN(HANConfig(**best["han"]))
    model.load_state_dict(best["model"])
    head = None
    if best["head"] is not None:
        d = model.config.d_model
        head = nn.Linear(d, d)
        head.load_state_dict(best["head"])
        head.eval()
    return model.eval(), head, config


def summary(result: TrainResult) -> str:
    """The final table: eval scores of the best epoch, the best epoch and the time."""
    split = result.scores.get("split", "eval")
    lines = [f"{split} split, best epoch {result.best_epoch} (select score {result.best_score:.2f}), "
             f"{len(result.history)} epochs in {human_seconds(result.seconds)}",
             format_table(result.scores)]
    if result.out_dir is not None:
        lines.append(f"run dir: {result.out_dir}")
    return "\n".join(lines)


__all__ = ["TrainConfig", "TrainResult", "init_model", "batch_order", "training_loss", "predict",
           "train_pairing", "train_run", "load_run", "metric_names", "metric_value", "summary",
           "prepare_out_dir", "run_identity", "MTSC_MODES", "PRECISIONS"]
