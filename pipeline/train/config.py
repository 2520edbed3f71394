"""What a training run computes: :class:`TrainConfig` (the official recipe by default) and HAN's sizes.

This module imports neither torch nor the models at import time, so the command line can
take its option choices from it and still start in a fraction of a second.

Why the HAN sizes live here: a run (and a group of runs) is fully described by this one
object, so tests and ``--d-model`` shrink HAN without patching module globals, and the
sizes are part of every run's identity (config.json, select's result keys).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from avvp_pipe.core.device import resolve_device
from avvp_pipe.core.errors import AvvpError
from avvp_pipe.models.metrics import metric_names
from avvp_pipe.models.mtsc_reading import ANCHORS as MTSC_ANCHORS
from avvp_pipe.models.mtsc_reading import ERRORS as MTSC_ERRORS
from avvp_pipe.models.mtsc_reading import FORMS as MTSC_FORMS
from avvp_pipe.models.mtsc_reading import NEGATIVES as MTSC_NEGATIVES
from avvp_pipe.models.mtsc_reading import PULLS as MTSC_PULLS
from avvp_pipe.models.mtsc_reading import SIMDETACH as MTSC_SIMDETACH
from avvp_pipe.pipeline.llp.annotations import SPLITS

if TYPE_CHECKING:
    from avvp_pipe.models.han import HANConfig
    from avvp_pipe.models.mtsc_reading import MTSCReading

MTSC_MODES = ("off", "part", "entire")
PRECISIONS = ("fp32", "bf16", "fp16")
#: How HAN's initial weights are drawn (models/han.py owns the official order).
INIT_ORDERS = ("ours", "official")
#: Fields added after run folders and select results were first keyed: a saved config without
#: one of them ran at its default, so keys leave them out while they hold that default.
LATER_FIELDS = ("d_model", "ffn", "heads", "mtsc_form", "mtsc_temperature", "mtsc_pull", "mtsc_error",
                "mtsc_simdetach", "mtsc_negatives", "init_order")
#: The MTSC readings' option choices (models/mtsc_reading.py owns them; the CLI reads them here).
MTSC_CHOICES = {"mtsc_anchor": MTSC_ANCHORS, "mtsc_form": MTSC_FORMS, "mtsc_pull": MTSC_PULLS,
                "mtsc_error": MTSC_ERRORS, "mtsc_simdetach": MTSC_SIMDETACH, "mtsc_negatives": MTSC_NEGATIVES}
#: Fields that change where a run executes, not what it computes: never part of a key.
NOT_KEYED = ("device",)


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
    mtsc_form: str = "regression"  # regression (Eq. 6, our reading) | infonce (Eq. 5)
    mtsc_temperature: float = 0.1  # InfoNCE's temperature
    mtsc_pull: str = "squared"  # same-second terms: squared (s_ii - 1)^2 | linear 1 - s_ii
    mtsc_error: str = "squared"  # other seconds against their target: squared | absolute
    mtsc_simdetach: str = "head"  # simdetach on: head (g's outputs) | projected (before g) | raw (stored)
    mtsc_negatives: str = "clip"  # contrast within each clip | across the batch's clips
    keep_visual_head: bool | None = None  # None -> on iff mtsc != "off"
    dropout: float = 0.1
    train_split: str = "train"
    select_split: str = "val"
    eval_split: str = "test"
    select_metric: str = "segment.type_at_av"  # dotted key into evaluate's JSON, or "average"
    device: str = "auto"  # resolved in __post_init__: the first visible CUDA device, else cpu
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast on cuda; bf16 autocast on cpu)
    deterministic: bool = True
    d_model: int = 512  # HAN width (the release's); input widths come from the stores
    ffn: int = 512  # HAN feed-forward width (the release's)
    heads: int = 1  # HAN attention heads (the release's)
    init_order: str = "ours"  # ours | official: MMIL_Net.__init__'s draw order (--seed 1 = release's init)

    def __post_init__(self) -> None:
        import torch  # here, not at import: the CLI reads this module's choices without torch

        need = _need
        need(isinstance(self.epochs, int) and self.epochs >= 1, "epochs", "an integer >= 1", self.epochs)
        for option in ("batch_size", "step_size", "d_model", "ffn", "heads"):
            value = getattr(self, option)
            need(isinstance(value, int) and value >= 1, option.replace("_", "-"), "an integer >= 1", value)
        need(self.d_model % self.heads == 0, "heads", f"a divisor of --d-model {self.d_model}", self.heads)
        need(self.lr > 0, "lr", "a number > 0", self.lr)
        need(self.mtsc in MTSC_MODES, "mtsc", f"one of {', '.join(MTSC_MODES)}", self.mtsc)
        for option, choices in MTSC_CHOICES.items():
            value = getattr(self, option)
            need(value in choices, option.replace("_", "-"), f"one of {', '.join(choices)}", value)
        need(isinstance(self.mtsc_temperature, (int, float)) and 0 < self.mtsc_temperature < float("inf"),
             "mtsc-temperature", "a finite number > 0", self.mtsc_temperature)
        if self.mtsc != "off":
            self.mtsc_reading()  # raises on an option this reading ignores (e.g. --mtsc-pull with infonce)
        changed = [f for f in LATER_FIELDS if f.startswith("mtsc_") and getattr(self, f) != _DEFAULTS[f]]
        need(self.mtsc != "off" or not changed, "mtsc", f"part or entire for --{changed[0].replace('_', '-')}"
             if changed else "", self.mtsc)
        need(self.mtsc_weight >= 0, "mtsc-weight", "a number >= 0", self.mtsc_weight)
        need(self.mtsc_decay >= 0, "mtsc-decay", "a number >= 0", self.mtsc_decay)
        need(0 <= self.dropout < 1, "dropout", "a number in [0, 1)", self.dropout)
        for option in ("train_split", "select_split", "eval_split"):
            value = getattr(self, option)
            need(value in SPLITS, option.replace("_", "-"), f"one of {', '.join(SPLITS)}", value)
        need(self.select_metric in metric_names(), "select-metric", f"one of {', '.join(metric_names())}",
             self.select_metric)
        need(self.init_order in INIT_ORDERS, "init-order", f"one of {', '.join(INIT_ORDERS)}", self.init_order)
        need(self.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}", self.precision)
        # Resolved once, here: config.json and select's results then say which device ran.
        self.device = resolve_device(self.device)
        device = torch.device(self.device)
        need(not (device.type == "cpu" and self.precision == "fp16"), "precision",
             "fp32 or bf16 on cpu (fp16 autocast needs cuda)", self.precision)

    def mtsc_reading(self) -> MTSCReading:
        """The MTSC reading this run trains with (``mtsc`` must not be off)."""
        from avvp_pipe.models.mtsc_reading import MTSCReading

        if self.mtsc == "off":
            raise AvvpError("--mtsc off: expected part or entire for an MTSC reading but got off")
        return MTSCReading(variant=self.mtsc, decay=self.mtsc_decay, anchor=self.mtsc_anchor, form=self.mtsc_form,
                           temperature=self.mtsc_temperature, pull=self.mtsc_pull, error=self.mtsc_error,
                           simdetach=self.mtsc_simdetach, negatives=self.mtsc_negatives)

    def resolved(self) -> TrainConfig:
        """A copy with ``keep_visual_head`` decided (on iff MTSC is on, unless set)."""
        if self.keep_visual_head is not None:
            return self
        return replace(self, keep_visual_head=self.mtsc != "off")

    def keyed(self) -> dict[str, Any]:
        """The fields that decide a run's result, as keys compare them (see LATER_FIELDS)."""
        return comparable(asdict(self.resolved()))


def _need(ok: bool, option: str, expected: str, got: Any) -> None:
    if not ok:
        raise AvvpError(f"--{option}: expected {expected} but got {got!r}")


_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


def comparable(train: Mapping[str, Any]) -> dict[str, Any]:
    """A saved or current ``train`` config as keys compare it: without NOT_KEYED fields, and
    without LATER_FIELDS at their default (so results saved before they existed stay valid)."""
    return {k: v for k, v in train.items()
            if k not in NOT_KEYED and not (k in LATER_FIELDS and v == _DEFAULTS[k])}


def han_config(dims: Mapping[str, int | None], config: TrainConfig) -> HANConfig:
    """HAN's sizes: input widths from the pairing's stores, the rest from the config."""
    from avvp_pipe.models.han import HANConfig

    return HANConfig(audio_dim=int(dims["audio"]), visual_dim=int(dims["visual"]),
                     visual_3d_dim=dims.get("visual_3d"), d_model=config.d_model, ffn=config.ffn,
                     heads=config.heads, dropout=config.dropout,
                     keep_visual_head=bool(config.resolved().keep_visual_head))
