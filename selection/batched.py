"""Train several pairings at once: one grouped HAN over zero-padded input projections.

Why this design: pairings differ only in their input widths (fc_a, fc_v, fc_st). Padding
those weights with zero columns to the widest pairing, and each batch's features with zeros
to the same width, gives every pairing the same parameter shapes without changing what it
computes (W_pad @ [x; 0] = W @ x); the padded columns get zero gradients, so Adam leaves
them at zero. The pairings' parameters are stacked on a leading axis (the layout of
torch.func.stack_module_state) and :mod:`selection.grouped` runs HAN for all of them with
one batched matmul per Linear (why not vmap: see that module).

Each pairing follows ``train_pairing``'s recipe step for step: ``init_model`` (seeded),
``batch_order`` (the same mini-batches, since all pairings share the split),
``han_bce_loss`` + weight x ``mtsc_loss``, Adam (elementwise, so one Adam over stacked
tensors equals one Adam per pairing) with StepLR, the select score after every epoch with
ties keeping the earlier epoch, and the best epoch's weights scored on eval_split by
train.py's own ``predict_on_device`` on the pairing's own (unpadded) model. With dropout 0 the
result equals ``train_pairing`` within float tolerance (tests/test_select.py). With dropout
> 0 each pairing draws its own masks from one generator, so a batched run is an equally
valid run but not the same random draw as training alone.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.han import HAN, HANConfig
from models.mtsc import mtsc_loss
from models.objective import han_bce_loss
from pipeline.errors import AvvpError
from pipeline.evaluate import evaluate_predictions
from pipeline.llp import Annotations
from pipeline.pairing import PairingData
from pipeline.train import (TrainConfig, TrainResult, autocast_for, determinism, predict_on_device, batch_order,
                            init_model, metric_value, to_device)
from selection import grouped



class _Objective(nn.Module):
    """HAN plus a separate MTSC head: only a container, so parameter names match across pairings."""

    def __init__(self, model: HAN, head: nn.Module | None) -> None:
        super().__init__()
        self.model, self.head = model, head


@dataclass
class _Member:
    """One pairing of the group: its own (real-width) model, used for eval and results."""

    data: PairingData
    model: HAN
    head: nn.Linear | None
    best_epoch: int = 0
    best_score: float = float("-inf")
    best_model: dict | None = None
    best_head: dict | None = None
    last_select: float = float("nan")
    history: list[dict] = field(default_factory=list)


def can_batch(config: TrainConfig) -> str | None:
    """Why the group cannot be batched (None if it can): fp16 needs one GradScaler per pairing."""
    if config.precision == "fp16":
        return "fp16 uses a GradScaler whose skipped steps would couple the pairings"
    return None


def padded_dims(datas: Sequence[PairingData]) -> dict[str, int | None]:
    """The widest width per role; all pairings must agree on having a 3D stream."""
    has_3d = {d.dims["visual_3d"] is not None for d in datas}
    if len(has_3d) > 1:
        raise AvvpError("batched training: expected all pairings with or all without --visual-3d")
    return {role: (max(int(d.dims[role]) for d in datas) if datas[0].dims[role] is not None else None)
            for role in ("audio", "visual", "visual_3d")}


def _pad_to(t: Tensor, shape: torch.Size) -> Tensor:
    """Zero-pad every axis at its end up to ``shape``."""
    out = t.new_zeros(shape)
    out[tuple(slice(0, s) for s in t.shape)] = t
    return out


def _stack(members: Sequence[_Member], template: _Objective) -> dict[str, Tensor]:
    """Padded parameters of every pairing stacked on a leading axis: name -> (P, *shape) leaf."""
    shapes = {name: p.shape for name, p in template.named_parameters()}
    per = [dict(_Objective(m.model, m.head).named_parameters()) for m in members]
    return {name: torch.stack([_pad_to(p[name].detach(), shape) for p in per]).requires_grad_(True)
            for name, shape in shapes.items()}


def _unstack(stacked: Mapping[str, Tensor], members: Sequence[_Member]) -> None:
    """Copy each pairing's slice (cut back to its real widths) into its own model."""
    with torch.no_grad():
        for i, member in enumerate(members):
            for name, param in _Objective(member.model, member.head).named_parameters():
                param.copy_(stacked[name][i][tuple(slice(0, s) for s in param.shape)])


def _cpu_state(module: nn.Module | None) -> dict | None:
    return None if module is None else {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _batch(splits: Sequence, idx: Tensor, dims: Mapping[str, int | None]
           ) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """Every pairing's batch, zero-padded to the group's widths: (P, B, 10, D) each; labels (B, 25)."""
    def padded(role: str) -> Tensor | None:
        if dims[role] is None:
            return None
        rows = [getattr(s, role).index_select(0, idx) for s in splits]  # (B, 10, D_i)
        return torch.stack([F.pad(r, (0, int(dims[role]) - r.shape[-1])) for r in rows])  # (P, B, 10, D)

    return padded("audio"), padded("visual"), padded("visual_3d"), splits[0].labels.index_select(0, idx)


def train_group(datas: Sequence[PairingData], annotations: Annotations, config: TrainConfig, *,
                progress: bool = False) -> list[TrainResult]:
    """Train every pairing of ``datas`` on the same split at once; one TrainResult each, in order."""
    config = config.resolved()
    reason = can_batch(config)
    if reason:
        raise AvvpError(f"batched training: {reason}")
    for data in datas:
        for split in (config.train_split, config.select_split, config.eval_split):
            if split not in data.splits:
                raise AvvpError(f"{data.name}: split {split!r} not loaded (loaded: {', '.join(data.splits)})")
            if data.splits[split].ids != datas[0].splits[split].ids:  # one batch order and label set for all
                raise AvvpError(f"batched training: {data.name} and {datas[0].name} hold different {split} clips")
    with determinism(config):
        return _train_group(datas, annotations, config, progress)


def _train_group(datas: Sequence[PairingData], annotations: Annotations, config: TrainConfig,
                 progress: bool) -> list[TrainResult]:
    from pipeline.progress import Progress

    members = [_Member(d, *init_model(d.dims, config)) for d in datas]
    dims = padded_dims(datas)
    with torch.device("meta"):  # shapes only: no memory, and no draw from the global RNG
        template = _Objective(*init_model_meta(members[0].model.config, dims, config))
    stacked = _stack(members, template)
    optimizer = torch.optim.Adam(list(stacked.values()), lr=config.lr)  # official: no weight decay
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    han = members[0].model.config  # sizes past the projections, dropout, heads: the same for all

    def loss_fn(params: dict[str, Tensor], a: Tensor, v: Tensor, v3: Tensor | None, y: Tensor) -> Tensor:
        return group_loss(params, a, v, v3, y, han, config)

    splits = {name: [to_device(d.splits[name], config.device) for d in datas]
              for name in dict.fromkeys((config.train_split, config.select_split, config.eval_split))}
    names = " ".join(d.name for d in datas)
    bar = Progress(config.epochs, f"train x{len(datas)} ({names})", unit="epochs", enabled=progress)
    with bar:
        for epoch in range(1, config.epochs + 1):
            started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            means = _train_epoch(stacked, optimizer, loss_fn, splits[config.train_split], dims, config, epoch)
            scheduler.step()
            _unstack(stacked, members)
            _select(members, splits[config.select_split], annotations, config, epoch)
            seconds = (time.perf_counter() - started) / len(members)  # each pairing's share
            for member, parts in zip(members, means):
                member.history.append({"epoch": epoch, **parts, "lr": lr,
                                       "select": member.last_select, "seconds": seconds})
            bar.update(1, best=" ".join(f"{m.best_score:.1f}" for m in members))
    return [_finish(m, s, annotations, config) for m, s in zip(members, splits[config.eval_split])]


def group_loss(params: Mapping[str, Tensor], audio: Tensor, visual: Tensor, visual_3d: Tensor | None,
               labels: Tensor, han: HANConfig, config: TrainConfig) -> Tensor:
    """(P, 3) loss, bce, mtsc per pairing: train.py's _loss_terms for P pairings at once.

    The forward is grouped; the losses are the shared functions, called per pairing on
    (B, K) slices, so the objective cannot drift from train.py's.
    """
    with autocast_for(config):
        a, v = grouped.project(audio, visual, visual_3d, params)  # (P, B, T, d) each
        global_prob, a_prob, v_prob, _ = grouped.forward_projected(a, v, params, han, training=True)
    rows = []
    for i in range(a.shape[0]):
        bce = han_bce_loss(global_prob[i].float(), a_prob[i].float(), v_prob[i].float(), labels)
        if config.mtsc == "off":
            rows.append(torch.stack([bce, bce, torch.zeros_like(bce)]))
            continue
        name = "head" if "head.weight" in params else "model.visual_head"
        g = grouped.SliceLinear(params[f"{name}.weight"][i], params[f"{name}.bias"][i])
        mtsc = mtsc_loss(a[i].float(), v[i].float(), g, variant=config.mtsc, decay=config.mtsc_decay,
                         anchor=config.mtsc_anchor)
        rows.append(torch.stack([bce + config.mtsc_weight * mtsc, bce, mtsc]))
    return torch.stack(rows)  # (P, 3)


def init_model_meta(han: HANConfig, dims: Mapping[str, int | None], config: TrainConfig
                    ) -> tuple[HAN, nn.Linear | None]:
    """The padded template (model, head): a member's HAN config at the group's widths, unseeded."""
    model = HAN(replace(han, audio_dim=int(dims["audio"]), visual_dim=int(dims["visual"]),
                        visual_3d_dim=dims["visual_3d"]))
    head = None
    if config.mtsc != "off" and not config.keep_visual_head:
        d = model.config.d_model
        head = nn.Linear(d, d)
    return model, head


def _train_epoch(stacked: dict[str, Tensor], optimizer: torch.optim.Optimizer, loss_fn, splits: Sequence,
                 dims: Mapping[str, int | None], config: TrainConfig, epoch: int) -> list[dict]:
    """One pass over the shared train split for all pairings; mean loss parts per pairing."""
    device = splits[0].audio.device
    batches = batch_order(len(splits[0]), config, epoch)
    order = torch.from_numpy(np.concatenate(batches)).to(device)
    sums = torch.zeros(len(splits), 3, device=device)  # (P, 3) loss, bce, mtsc weighted by batch size
    start = 0
    for rows in batches:
        idx = order[start : start + len(rows)]
        start += len(rows)
        audio, visual, v3, labels = _batch(splits, idx, dims)  # (P, B, 10, D) ..., (B, 25)
        parts = loss_fn(stacked, audio, visual, v3, labels)  # (P, 3)
        optimizer.zero_grad(set_to_none=True)
        parts[:, 0].sum().backward()  # pairings share no parameter: each gets its own gradient
        optimizer.step()
        sums += parts.detach() * len(rows)
    means = (sums / len(splits[0])).tolist()  # the epoch's only host sync
    if not np.all(np.isfinite([m[0] for m in means])):
        raise AvvpError(f"training diverged at epoch {epoch}: losses {[m[0] for m in means]} (try a lower --lr)")
    return [{"loss": m[0], "bce": m[1], "mtsc": m[2] if config.mtsc != "off" else None} for m in means]


def _select(members: Sequence[_Member], splits: Sequence, annotations: Annotations, config: TrainConfig,
            epoch: int) -> None:
    """Score each pairing on select_split; keep the best epoch's weights (ties keep the earlier)."""
    for member, split in zip(members, splits):
        pred = predict_on_device(member.model, split, config)
        score = metric_value(evaluate_predictions(pred, annotations, config.select_split), config.select_metric)
        member.last_select = score
        if score > member.best_score:
            member.best_epoch, member.best_score = epoch, score
            member.best_model, member.best_head = _cpu_state(member.model), _cpu_state(member.head)


def _finish(member: _Member, split, annotations: Annotations, config: TrainConfig) -> TrainResult:
    """Best epoch's weights scored on eval_split, as train_pairing's _finish does (no files)."""
    member.model.load_state_dict(member.best_model)
    if member.head is not None:
        member.head.load_state_dict(member.best_head)
    pred = predict_on_device(member.model, split, config)
    scores = evaluate_predictions(pred, annotations, config.eval_split)
    return TrainResult(best_epoch=member.best_epoch, best_score=member.best_score, history=member.history,
                       scores=scores, predictions=pred, seconds=sum(r["seconds"] for r in member.history),
                       out_dir=None)
