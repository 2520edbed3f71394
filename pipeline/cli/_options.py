"""Options shared by commands that train HAN (``train``, ``select``): one definition, one help text.

A module without ``COMMANDS``, so the CLI package imports it without registering anything.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from avvp_pipe.core.device import AUTO, DEVICE_HELP
from avvp_pipe.pipeline.train.config import INIT_ORDERS, MTSC_CHOICES, MTSC_MODES, PRECISIONS, TrainConfig

#: TrainConfig fields these options set, by the parameter name click passes.
RECIPE_FIELDS = ("epochs", "batch_size", "lr", "seed", "mtsc", "mtsc_weight", "mtsc_decay", "mtsc_anchor",
                 "mtsc_form", "mtsc_temperature", "mtsc_pull", "mtsc_error", "mtsc_simdetach", "mtsc_negatives",
                 "device", "precision", "d_model", "ffn", "heads", "init_order")

_STORES = [
    click.option("--cache", required=True, help="Feature cache root (local path or fsspec URL)."),
    click.option("--dataset", required=True, help="Dataset name inside the cache, e.g. llp."),
    click.option("--annotations", required=True, type=click.Path(file_okay=False, path_type=Path),
                 help="Folder with the official LLP CSV files."),
]

_RECIPE = [
    click.option("--epochs", type=int, default=40, show_default=True, help="Training epochs."),
    click.option("--batch-size", type=int, default=16, show_default=True, help="Clips per step."),
    click.option("--lr", type=float, default=3e-4, show_default=True, help="Adam learning rate (StepLR 10, 0.1)."),
    click.option("--seed", type=int, default=1, show_default=True, help="Seed of init, batch order and dropout."),
    click.option("--mtsc", type=click.Choice(MTSC_MODES), default="off", show_default=True,
                 help="MTSC contrastive loss on the features before HAN (seed paper)."),
    click.option("--mtsc-weight", type=float, default=1.0, show_default=True, help="Weight of the MTSC loss."),
    click.option("--mtsc-decay", type=float, default=5.0, show_default=True,
                 help="Time-lag exponent T_ij = 1/|i-j|^d."),
    click.option("--mtsc-anchor", type=click.Choice(MTSC_CHOICES["mtsc_anchor"]), default=TrainConfig.mtsc_anchor,
                 show_default=True, help="Modality whose detached self-similarity is the off-diagonal target."),
    click.option("--mtsc-form", type=click.Choice(MTSC_CHOICES["mtsc_form"]), default=TrainConfig.mtsc_form,
                 show_default=True, help="regression: Eq. 6 as a regression to T_ij * simdetach; infonce: Eq. 5 "
                                         "(lag-weighted negatives, --mtsc-temperature)."),
    click.option("--mtsc-temperature", type=float, default=TrainConfig.mtsc_temperature, show_default=True,
                 help="InfoNCE temperature (--mtsc-form infonce only)."),
    click.option("--mtsc-pull", type=click.Choice(MTSC_CHOICES["mtsc_pull"]), default=TrainConfig.mtsc_pull,
                 show_default=True, help="Same-second pull: squared (s_ii - 1)^2 or linear 1 - s_ii."),
    click.option("--mtsc-error", type=click.Choice(MTSC_CHOICES["mtsc_error"]), default=TrainConfig.mtsc_error,
                 show_default=True, help="Other seconds against their target: squared or absolute error."),
    click.option("--mtsc-simdetach", type=click.Choice(MTSC_CHOICES["mtsc_simdetach"]),
                 default=TrainConfig.mtsc_simdetach, show_default=True,
                 help="simdetach measured on: head (g's outputs), projected (before g) or raw (stored features)."),
    click.option("--mtsc-negatives", type=click.Choice(MTSC_CHOICES["mtsc_negatives"]),
                 default=TrainConfig.mtsc_negatives, show_default=True,
                 help="Contrast seconds within each clip, or across all clips of the batch ((B*T)^2 matrix)."),
    click.option("--device", default=AUTO, show_default=True, help=f"Torch device: {DEVICE_HELP}."),
    click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
                 help="Autocast precision of the model (fp16 on cuda only)."),
    click.option("--d-model", type=int, default=512, show_default=True,
                 help="HAN width (the release's 512); input widths come from the stores."),
    click.option("--ffn", type=int, default=512, show_default=True, help="HAN feed-forward width (the release's)."),
    click.option("--heads", type=int, default=1, show_default=True, help="HAN attention heads (the release's)."),
    click.option("--init-order", type=click.Choice(INIT_ORDERS), default=TrainConfig.init_order, show_default=True,
                 help="official: draw HAN's initial weights in MMIL_Net.__init__'s order, unused encoders "
                      "included, so --seed 1 gives the release's initial weights."),
]

_PERMISSIONS = [
    click.option("--allow-random-init", is_flag=True, help="Accept stores of random-init (not pretrained) features."),
    click.option("--allow-simulated", is_flag=True, help="Accept stores of simulated features (synth-features)."),
]


def _apply(options: list[Callable]) -> Callable[[Callable], Callable]:
    def decorate(command: Callable) -> Callable:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


store_options = _apply(_STORES)
recipe_options = _apply(_RECIPE)
permission_options = _apply(_PERMISSIONS)


def recipe(params: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig keyword arguments among a command's parameters."""
    return {name: params[name] for name in RECIPE_FIELDS}


def optional_store(text: str) -> str | None:
    """``--visual-3d none`` means no 3D stream."""
    return None if text.lower() == "none" else text
