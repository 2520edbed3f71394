"""The one training engine: a group of K runs of HAN (+ MTSC) trained at once; a plain run is K = 1.

A run is a :class:`Member`: a pairing's features and a seed. A group may hold K pairings,
K seeds of one pairing, or both; ``train`` trains one member, ``select`` groups of them.
Every member follows the same recipe (:class:`~avvp_pipe.pipeline.train.config.TrainConfig`,
the official one by default), step for step:

- ``init_model`` seeded by the member's seed (HAN first, then a separate MTSC head, so HAN's
  initial weights do not depend on the head), built on the CPU and then moved;
- the epoch's mini-batches from ``np.random.default_rng((seed, epoch))``: they do not depend
  on where a run was resumed, nor on which other members share its group;
- BCE on the fused, audio and visual outputs (+ weight x MTSC), Adam (no weight decay),
  StepLR stepped once per epoch; the select score after every epoch, ties keeping the
  earlier epoch; the kept epoch's weights scored on the eval split.

How a group computes (its "backend"): K = 1 runs the HAN module itself. K > 1 stacks the
members' parameters on a leading axis, zero-padding the input projections to the widest
member (W_pad @ [x; 0] = W @ x, and padded columns get zero gradients, so Adam keeps them
at zero), and runs :mod:`avvp_pipe.models.grouped` (one batched matmul per Linear). Adam is
elementwise, so one Adam over stacked tensors is K Adams. With dropout 0 a grouped member
equals the same member trained alone (tests/test_select.py); with dropout > 0 the members
draw their masks from one generator, an equally valid but different draw.

Why features are moved once: a step only gathers its rows with ``index_select`` on the
device, the epoch's batch order is one tensor copy per epoch and the loss is summed on the
device and read once per epoch, so nothing in the step waits on the host
(``benchmarks/train.py`` checks the loop costs little more than the model alone).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avvp_pipe.core.errors import AvvpError, one_line
from avvp_pipe.core.io import atomic_torch_save, load_torch
from avvp_pipe.core.progress import Progress
from avvp_pipe.models import grouped
from avvp_pipe.models.han import HAN, HANConfig, official_init_
from avvp_pipe.models.mtsc import mtsc_loss, raw_features
from avvp_pipe.models.objective import han_bce_loss
from avvp_pipe.pipeline.evaluate.scores import evaluate_predictions
from avvp_pipe.pipeline.llp.annotations import Annotations
from avvp_pipe.pipeline.train.config import TrainConfig, han_config, metric_names
from avvp_pipe.pipeline.train.pairing import PairingData, SplitArrays


@dataclass(frozen=True)
class Member:
    """One run of a group: whose features, and the seed of its weights and batch order."""

    data: PairingData
    seed: int

    @property
    def name(self) -> str:
        return self.data.name


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


def init_model(dims: Mapping[str, int | None], config: TrainConfig) -> tuple[HAN, nn.Linear | None]:
    """Seeded HAN (and a separate MTSC head g when MTSC is on but g is not kept), on config.device."""
    config = config.resolved()
    torch.manual_seed(config.seed)
    model = HAN(han_config(dims, config))
    if config.init_order == "official":
        torch.manual_seed(config.seed)  # start over: the release draws from a freshly seeded RNG
        official_init_(model)
    head = _head(model.config, config)
    return model.to(config.device), (head.to(config.device) if head is not None else None)


def _head(han: HANConfig, config: TrainConfig) -> nn.Linear | None:
    """The separate MTSC head: trained by the MTSC loss only, never fed to HAN."""
    if config.mtsc != "off" and not config.keep_visual_head:
        return nn.Linear(han.d_model, han.d_model)
    return None


def batch_order(n: int, config: TrainConfig, epoch: int) -> list[np.ndarray]:
    """The epoch's shuffled mini-batches (the last may be short, as DataLoader's drop_last=False)."""
    order = np.random.default_rng((config.seed, epoch)).permutation(n)
    return [order[i : i + config.batch_size] for i in range(0, n, config.batch_size)]


@dataclass
class DeviceSplit:
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


def to_device(arrays: SplitArrays, device: str | torch.device) -> DeviceSplit:
    def put(x: np.ndarray | None) -> Tensor | None:
        return None if x is None else torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)

    return DeviceSplit(list(arrays.ids), put(arrays.audio), put(arrays.visual), put(arrays.visual_3d),
                       put(arrays.labels))


def autocast_for(config: TrainConfig) -> contextlib.AbstractContextManager:
    """Mixed precision for the model's forward; fp32 is a no-op context."""
    if config.precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(config.device).type, dtype=dtype)


# ---------------------------------------------------------------------- loss and prediction


def loss_terms(model: HAN, head: nn.Module | None, audio: Tensor, visual: Tensor, visual_3d: Tensor | None,
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
    mtsc = member_mtsc(a, v, g, (audio, visual, visual_3d), config)
    return bce + config.mtsc_weight * mtsc, bce, mtsc


def member_mtsc(a: Tensor, v: Tensor, head: nn.Module, inputs: tuple[Tensor, Tensor, Tensor | None],
                config: TrainConfig) -> Tensor:
    """One member's MTSC loss in fp32: a, v (B, T, d) before HAN, ``inputs`` the batch's stored
    features (B, T, D) (read only by simdetach "raw"). loss_terms (K = 1) and group_loss (K > 1)
    both call this, so the readings cannot drift between a run alone and a grouped one."""
    reading = config.mtsc_reading()
    raw = raw_features(*inputs) if reading.simdetach == "raw" else None  # (B, T, Da), (B, T, Dv [+ D3])
    return mtsc_loss(a.float(), v.float(), head, reading, raw=raw)


def training_loss(model: HAN, head: nn.Module | None, audio: Tensor, visual: Tensor, visual_3d: Tensor | None,
                  labels: Tensor, config: TrainConfig) -> tuple[Tensor, dict]:
    """BCE (han_bce_loss) + mtsc_weight * MTSC, and its parts as floats (mtsc None when off)."""
    loss, bce, mtsc = loss_terms(model, head, audio, visual, visual_3d, labels, config)
    parts = {"loss": float(loss.detach()), "bce": float(bce.detach()),
             "mtsc": None if mtsc is None else float(mtsc.detach())}
    return loss, parts


@torch.no_grad()
def predict_on_device(model: HAN, split: DeviceSplit, config: TrainConfig, batch: int = 256) -> dict[str, np.ndarray]:
    """Eval mode, no grad: video_ids, frame_prob (N, 10, 2, 25), global_prob, a_prob, v_prob (N, 25)."""
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
    """:func:`predict_on_device` on host arrays (moved to the model's device first)."""
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


# ---------------------------------------------------------------------- how a group computes


class _Container(nn.Module):
    """HAN plus a separate MTSC head: only a container, so parameter names match across members."""

    def __init__(self, model: HAN, head: nn.Module | None) -> None:
        super().__init__()
        self.model, self.head = model, head


class _Single:
    """K = 1: the HAN module itself (and its separate head), exactly as a user's model runs."""

    def __init__(self, model: HAN, head: nn.Linear | None, config: TrainConfig) -> None:
        self.model, self.head, self.config = model, head, config

    def parameters(self) -> list[Tensor]:
        return list(_Container(self.model, self.head).parameters())

    def losses(self, splits: Sequence[DeviceSplit], idx: Sequence[Tensor]) -> Tensor:
        """(1, 3): loss, bce, mtsc (0 when off) of the member's batch."""
        self.model.train()
        if self.head is not None:
            self.head.train()
        audio, visual, v3, labels = splits[0].rows(idx[0])  # (B, 10, D) ... (B, 25)
        loss, bce, mtsc = loss_terms(self.model, self.head, audio, visual, v3, labels, self.config)
        return torch.stack([loss, bce, mtsc if mtsc is not None else torch.zeros_like(bce)])[None]

    def sync(self) -> None:
        """The member's model is the trained module: nothing to copy."""

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "head": None if self.head is None else self.head.state_dict()}

    def load_state_dict(self, state: Mapping) -> None:
        self.model.load_state_dict(state["model"])
        if self.head is not None:
            self.head.load_state_dict(state["head"])


class _Stacked:
    """K > 1: the members' parameters stacked (and zero-padded) on a leading axis, grouped forward."""

    def __init__(self, runs: Sequence[_Run], config: TrainConfig) -> None:
        self.runs, self.config = list(runs), config
        self.dims = padded_dims([r.data for r in runs])
        han = runs[0].model.config
        with torch.device("meta"):  # shapes only: no memory, and no draw from the global RNG
            padded = replace(han, audio_dim=int(self.dims["audio"]), visual_dim=int(self.dims["visual"]),
                             visual_3d_dim=self.dims["visual_3d"])
            template = _Container(HAN(padded), _head(padded, config))
        shapes = {name: p.shape for name, p in template.named_parameters()}
        per = [dict(_Container(r.model, r.head).named_parameters()) for r in runs]
        self.params = {name: torch.stack([_pad_to(p[name].detach(), shape) for p in per]).requires_grad_(True)
                       for name, shape in shapes.items()}
        self.han = han  # sizes past the projections, dropout, heads: the same for all

    def parameters(self) -> list[Tensor]:
        return list(self.params.values())

    def losses(self, splits: Sequence[DeviceSplit], idx: Sequence[Tensor]) -> Tensor:
        """(K, 3): every member's loss, bce, mtsc on its own batch."""
        audio, visual, v3, labels = _stacked_batch(splits, idx, self.dims)  # (K, B, 10, D) ..., (K, B, 25)
        return group_loss(self.params, audio, visual, v3, labels, self.han, self.config)

    def sync(self) -> None:
        """Copy each member's slice (cut back to its real widths) into its own model."""
        with torch.no_grad():
            for i, run in enumerate(self.runs):
                for name, param in _Container(run.model, run.head).named_parameters():
                    param.copy_(self.params[name][i][tuple(slice(0, s) for s in param.shape)])

    def state_dict(self) -> dict:
        return {"stacked": {k: v.detach() for k, v in self.params.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        with torch.no_grad():
            for name, value in state["stacked"].items():
                self.params[name].copy_(value)
        self.sync()


def padded_dims(datas: Sequence[PairingData]) -> dict[str, int | None]:
    """The widest width per role; all members must agree on having a 3D stream."""
    has_3d = {d.dims["visual_3d"] is not None for d in datas}
    if len(has_3d) > 1:
        raise AvvpError("grouped training: expected all pairings with or all without --visual-3d")
    return {role: (max(int(d.dims[role]) for d in datas) if datas[0].dims[role] is not None else None)
            for role in ("audio", "visual", "visual_3d")}


def _pad_to(t: Tensor, shape: torch.Size) -> Tensor:
    """Zero-pad every axis at its end up to ``shape``."""
    out = t.new_zeros(shape)
    out[tuple(slice(0, s) for s in t.shape)] = t
    return out


def _stacked_batch(splits: Sequence[DeviceSplit], idx: Sequence[Tensor], dims: Mapping[str, int | None]
                   ) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """Each member's batch (its own rows), zero-padded to the group's widths: (K, B, 10, D) each."""
    def padded(role: str) -> Tensor | None:
        if dims[role] is None:
            return None
        rows = [getattr(s, role).index_select(0, i) for s, i in zip(splits, idx)]  # (B, 10, D_k)
        return torch.stack([F.pad(r, (0, int(dims[role]) - r.shape[-1])) for r in rows])  # (K, B, 10, D)

    labels = torch.stack([s.labels.index_select(0, i) for s, i in zip(splits, idx)])  # (K, B, 25)
    return padded("audio"), padded("visual"), padded("visual_3d"), labels


def group_loss(params: Mapping[str, Tensor], audio: Tensor, visual: Tensor, visual_3d: Tensor | None,
               labels: Tensor, han: HANConfig, config: TrainConfig) -> Tensor:
    """(K, 3) loss, bce, mtsc per member: :func:`loss_terms` for K members at once.

    The forward is grouped; the losses are the shared functions, called per member on
    (B, ...) slices, so the objective cannot drift from the single run's.
    """
    with autocast_for(config):
        a, v = grouped.project(audio, visual, visual_3d, params)  # (K, B, T, d) each
        global_prob, a_prob, v_prob, _ = grouped.forward_projected(a, v, params, han, training=True)
    rows = []
    for i in range(a.shape[0]):
        bce = han_bce_loss(global_prob[i].float(), a_prob[i].float(), v_prob[i].float(), labels[i])
        if config.mtsc == "off":
            rows.append(torch.stack([bce, bce, torch.zeros_like(bce)]))
            continue
        name = "head" if "head.weight" in params else "model.visual_head"
        g = grouped.SliceLinear(params[f"{name}.weight"][i], params[f"{name}.bias"][i])
        inputs = (audio[i], visual[i], None if visual_3d is None else visual_3d[i])  # zero-padded (B, T, D)
        mtsc = member_mtsc(a[i], v[i], g, inputs, config)
        rows.append(torch.stack([bce + config.mtsc_weight * mtsc, bce, mtsc]))
    return torch.stack(rows)  # (K, 3)


def can_group(config: TrainConfig) -> str | None:
    """Why members cannot share a group (None if they can): fp16 needs one GradScaler per member."""
    if config.precision == "fp16":
        return "fp16 uses a GradScaler whose skipped steps would couple the pairings"
    return None


# ---------------------------------------------------------------------- the state of a group


@dataclass
class _Run:
    """One member's live state: its own (real-width) model, used for eval, results and best.pt."""

    data: PairingData
    config: TrainConfig  # the group's config with this member's seed
    model: HAN
    head: nn.Linear | None
    best_epoch: int = 0
    best_score: float = float("-inf")
    best_model: dict | None = None
    best_head: dict | None = None
    history: list[dict] = field(default_factory=list)


@dataclass
class GroupState:
    """Everything an epoch changes; checkpoint.pt is this, serialised."""

    runs: list[_Run]
    backend: _Single | _Stacked
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.StepLR
    scaler: torch.amp.GradScaler
    epoch: int = 0


def new_state(members: Sequence[Member], config: TrainConfig) -> GroupState:
    """Seeded models for every member, the group's backend, Adam, StepLR and the fp16 scaler."""
    config = config.resolved()
    if not members:
        raise AvvpError("training: expected at least one pairing but got none")
    reason = can_group(config) if len(members) > 1 else None
    if reason:
        raise AvvpError(f"grouped training: {reason}")
    runs = []
    for member in members:
        own = replace(config, seed=member.seed)
        runs.append(_Run(member.data, own, *init_model(member.data.dims, own)))
    backend = _Single(runs[0].model, runs[0].head, config) if len(runs) == 1 else _Stacked(runs, config)
    optimizer = adam(backend.parameters(), config)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    scaler = torch.amp.GradScaler(torch.device(config.device).type, enabled=config.precision == "fp16")
    return GroupState(runs, backend, optimizer, scheduler, scaler)


def adam(params: Sequence[Tensor], config: TrainConfig) -> torch.optim.Adam:
    """The official optimiser (Adam, no weight decay), in torch's fused implementation.

    Why fused: one kernel per parameter instead of a dozen elementwise ops; measured with
    benchmarks/adam.py on CPU it made a whole training step 3.7% faster (foreach was 2.6%
    slower) and moved the weights by a relative 4e-6 after 40 steps (rounding, not a
    different update). It is deterministic, so resumed runs stay bit-identical.
    """
    return torch.optim.Adam(params, lr=config.lr, fused=True)


def _cpu_state(module: nn.Module | None) -> dict | None:
    return None if module is None else {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _run_fields(run: _Run) -> dict:
    return {"best_epoch": run.best_epoch, "best_score": run.best_score, "best_model": run.best_model,
            "best_head": run.best_head, "history": run.history}


def save_checkpoint(state: GroupState, path: Path, extra: Mapping[str, Any]) -> None:
    """Write the group's state atomically; a single run keeps the flat layout of earlier versions."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    ckpt = {**state.backend.state_dict(), "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(), "scaler": state.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(), "cuda_rng": cuda, "numpy_rng": _numpy_rng_state(),
            "epoch": state.epoch, **extra}
    if len(state.runs) == 1:
        ckpt.update(_run_fields(state.runs[0]))
    else:
        ckpt["runs"] = [_run_fields(r) for r in state.runs]
    atomic_torch_save(ckpt, path)


def load_checkpoint(state: GroupState, path: Path, config: TrainConfig) -> None:
    """Restore what :func:`save_checkpoint` wrote (plain tensors and containers only)."""
    ckpt = load_torch(path, "a training checkpoint", map_location=config.device)
    try:
        _restore(state, ckpt)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise AvvpError(f"{path}: expected a checkpoint of this run but it does not fit ({type(err).__name__}: "
                        f"{one_line(err, 160)}); rerun with --overwrite to start over") from None


def _restore(state: GroupState, ckpt: Mapping) -> None:
    state.backend.load_state_dict(ckpt)
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    state.scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["torch_rng"].cpu())
    if ckpt["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in ckpt["cuda_rng"]])
    _set_numpy_rng_state(ckpt["numpy_rng"])
    state.epoch = ckpt["epoch"]
    for run, saved in zip(state.runs, ckpt.get("runs", [ckpt])):
        run.best_epoch, run.best_score = saved["best_epoch"], saved["best_score"]
        run.best_model, run.best_head, run.history = saved["best_model"], saved["best_head"], saved["history"]


def _numpy_rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _set_numpy_rng_state(state: Mapping) -> None:
    np.random.set_state((state["name"], state["keys"].numpy().astype(np.uint32), state["pos"],
                         state["has_gauss"], state["cached_gaussian"]))


# ---------------------------------------------------------------------- training


Splits = Mapping[str, list[DeviceSplit]]  # split name -> one DeviceSplit per member


def device_splits(state: GroupState, config: TrainConfig) -> Splits:
    """The train, select and eval splits of every member, moved to the device once."""
    names = dict.fromkeys((config.train_split, config.select_split, config.eval_split))
    return {name: [to_device(run.data.splits[name], config.device) for run in state.runs] for name in names}


def train_epoch(state: GroupState, splits: Sequence[DeviceSplit], epoch: int) -> list[dict]:
    """One pass over the train split for every member; mean loss parts per member (one host sync)."""
    device = splits[0].audio.device
    orders = [batch_order(len(s), run.config, epoch) for s, run in zip(splits, state.runs)]
    flat = torch.from_numpy(np.stack([np.concatenate(o) for o in orders])).to(device)  # (K, N): one copy
    sums = torch.zeros(len(splits), 3, device=device)  # (K, 3) loss, bce, mtsc weighted by batch size
    start = 0
    for size in (len(rows) for rows in orders[0]):  # every member has the same batch sizes
        idx = flat[:, start : start + size]  # (K, B)
        start += size
        parts = state.backend.losses(splits, idx)  # (K, 3)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(parts[:, 0].sum()).backward()  # members share no parameter
        state.scaler.step(state.optimizer)
        state.scaler.update()
        sums += parts.detach() * size
    means = (sums / len(splits[0])).tolist()  # the epoch's only host sync
    if not np.all(np.isfinite([m[0] for m in means])):
        raise AvvpError(f"training diverged at epoch {epoch}: loss {[m[0] for m in means]} "
                        f"(try a lower --lr or --precision fp32)")
    mtsc_on = state.runs[0].config.mtsc != "off"
    return [{"loss": m[0], "bce": m[1], "mtsc": m[2] if mtsc_on else None} for m in means]


def run_epoch(state: GroupState, splits: Splits, annotations: Annotations, config: TrainConfig,
              epoch: int) -> list[dict]:
    """Train one epoch, step the scheduler, score every member on select_split, keep its best."""
    started = time.perf_counter()
    lr = state.optimizer.param_groups[0]["lr"]
    parts = train_epoch(state, splits[config.train_split], epoch)
    state.scheduler.step()
    state.backend.sync()
    scores = [_select(run, split, annotations, config, epoch)
              for run, split in zip(state.runs, splits[config.select_split])]
    state.epoch = epoch
    seconds = (time.perf_counter() - started) / len(state.runs)  # each member's share
    records = []
    for run, part, score in zip(state.runs, parts, scores):
        record = {"epoch": epoch, **part, "lr": lr, "select": score, "seconds": seconds}
        run.history.append(record)
        records.append(record)
    return records


def _select(run: _Run, split: DeviceSplit, annotations: Annotations, config: TrainConfig, epoch: int) -> float:
    """The member's select score; a better or equal one keeps this epoch's weights (a tie keeps
    the later epoch, as the official ``main()``'s ``if F >= best_F``)."""
    pred = predict_on_device(run.model, split, config)
    score = metric_value(evaluate_predictions(pred, annotations, config.select_split), config.select_metric)
    if score >= run.best_score:
        run.best_epoch, run.best_score = epoch, score
        run.best_model, run.best_head = _cpu_state(run.model), _cpu_state(run.head)
    return score


def finish(state: GroupState, splits: Splits, annotations: Annotations, config: TrainConfig,
           out_dir: Path | None = None) -> list[TrainResult]:
    """Each member's kept epoch, loaded into its model and scored on eval_split."""
    results = []
    for run, split in zip(state.runs, splits[config.eval_split]):
        run.model.load_state_dict(run.best_model)
        if run.head is not None:
            run.head.load_state_dict(run.best_head)
        pred = predict_on_device(run.model, split, config)
        scores = evaluate_predictions(pred, annotations, config.eval_split)
        results.append(TrainResult(best_epoch=run.best_epoch, best_score=run.best_score, history=run.history,
                                   scores=scores, predictions=pred,
                                   seconds=sum(r["seconds"] for r in run.history), out_dir=out_dir))
    return results


def fit(state: GroupState, annotations: Annotations, config: TrainConfig, *, progress: bool = True,
        after_epoch: Callable[[GroupState, list[dict]], None] | None = None,
        describe: Callable[[GroupState, list[dict]], str] | None = None,
        note: str | None = None) -> tuple[list[TrainResult], Splits]:
    """Train ``state`` from its epoch to ``config.epochs``; results of every member, in order.

    ``after_epoch`` runs after each epoch (run folders write their checkpoint there; tests
    raise from it to simulate a kill); ``describe`` gives the line printed per epoch and
    ``note`` one printed before the first (e.g. where a resumed run starts).
    """
    splits = device_splits(state, config)
    names = " ".join(r.data.name for r in state.runs)
    label = f"train {names}" if len(state.runs) == 1 else f"train x{len(state.runs)} ({names})"
    bar = Progress(config.epochs, label, unit="epochs", enabled=progress)
    bar.update(state.epoch)
    with bar:
        if progress and note:
            bar.write(note)
        for epoch in range(state.epoch + 1, config.epochs + 1):
            records = run_epoch(state, splits, annotations, config, epoch)
            if after_epoch is not None:
                after_epoch(state, records)
            bar.update(1, best=" ".join(f"{r.best_score:.1f}" for r in state.runs))
            if progress and describe is not None:
                bar.write(describe(state, records))
    return finish(state, splits, annotations, config), splits


def check_members(members: Sequence[Member], annotations: Annotations, config: TrainConfig) -> None:
    """Every member holds the run's splits, with the same clips (one label set, one batch shape)."""
    dense = annotations.dense_splits()
    for option, split in (("select-split", config.select_split), ("eval-split", config.eval_split)):
        if split not in dense:
            raise AvvpError(f"--{option} {split}: expected a split with dense labels ({', '.join(dense)})")
    first = members[0].data
    for member in members:
        for split in (config.train_split, config.select_split, config.eval_split):
            if split not in member.data.splits:
                raise AvvpError(f"{member.name}: split {split!r} not loaded in the pairing "
                                f"(loaded: {', '.join(member.data.splits)})")
            if member.data.splits[split].ids != first.splits[split].ids:
                raise AvvpError(f"grouped training: {member.name} and {first.name} hold different {split} clips")


def train_group(members: Sequence[Member], annotations: Annotations, config: TrainConfig, *,
                progress: bool = False) -> list[TrainResult]:
    """Train every member at once (no run folder); one TrainResult each, in order."""
    config = config.resolved()
    check_members(members, annotations, config)
    with determinism(config):
        state = new_state(members, config)
        return fit(state, annotations, config, progress=progress)[0]


__all__ = ["Member", "TrainResult", "GroupState", "init_model", "batch_order", "to_device", "DeviceSplit",
           "autocast_for", "loss_terms", "member_mtsc", "training_loss", "predict_on_device", "predict", "metric_value",
           "determinism", "new_state", "save_checkpoint", "load_checkpoint", "train_epoch", "run_epoch",
           "finish", "fit", "check_members", "train_group", "can_group", "padded_dims", "group_loss"]
