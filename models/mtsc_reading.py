"""Which reading of the seed paper's MTSC loss a run uses: the choices, as data, without torch.

Why a module of its own: the command line and the training config take their option
choices from here (through ``pipeline/train/config.py``) and must start without importing
torch; ``models/mtsc.py`` computes the loss a :class:`MTSCReading` describes. The formulas
of every reading are in models/mtsc.py's docstring and README's MTSC section.

The defaults are our reading of Eq. 6 (squared regression per clip, diagonal target 1,
off-diagonal target T_ij * simdetach of the head's outputs); each other value is one
alternative reading of an ambiguity in the paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from avvp_pipe.core.errors import AvvpError

#: "part" keeps the same-second terms only (the paper's ablation); "entire" all of them.
VARIANTS: tuple[str, ...] = ("part", "entire")
#: Whose detached within-modality similarity is the off-diagonal target (the paper's phi1 is audio).
ANCHORS: tuple[str, ...] = ("audio", "visual", "both")
#: regression: Eq. 6 read as a regression to a target; infonce: Eq. 5, lag-weighted negatives.
FORMS: tuple[str, ...] = ("regression", "infonce")
#: How the same-second pairs are pulled together: (s_ii - 1)^2, or the linear 1 - s_ii.
PULLS: tuple[str, ...] = ("squared", "linear")
#: The error of the other seconds against their target: squared, or absolute.
ERRORS: tuple[str, ...] = ("squared", "absolute")
#: Features simdetach is measured on: g's outputs, the projections before g, or the stored features.
SIMDETACH: tuple[str, ...] = ("head", "projected", "raw")
#: Which visual seconds an audio second is contrasted with: its clip's, or every clip's of the batch.
NEGATIVES: tuple[str, ...] = ("clip", "batch")


@dataclass(frozen=True)
class MTSCReading:
    """One reading of MTSC; construction raises on an unknown choice or a choice that has no effect."""

    variant: str = "entire"
    decay: float = 5.0  # T_ij = 1 / |i - j| ** decay
    anchor: str = "audio"
    form: str = "regression"
    temperature: float = 0.1  # InfoNCE only (SimCLR's usual 0.1)
    pull: str = "squared"
    error: str = "squared"
    simdetach: str = "head"
    negatives: str = "clip"

    def __post_init__(self) -> None:
        for name, choices in (("variant", VARIANTS), ("anchor", ANCHORS), ("form", FORMS), ("pull", PULLS),
                              ("error", ERRORS), ("simdetach", SIMDETACH), ("negatives", NEGATIVES)):
            if getattr(self, name) not in choices:
                raise AvvpError(f"mtsc {name}: expected one of {choices} but got {getattr(self, name)!r}")
        if not (isinstance(self.decay, (int, float)) and self.decay >= 0):  # NaN fails too
            raise AvvpError(f"mtsc decay: expected a number >= 0 but got {self.decay!r}")
        if not (isinstance(self.temperature, (int, float)) and 0 < self.temperature < math.inf):
            raise AvvpError(f"mtsc temperature: expected a finite number > 0 but got {self.temperature!r}")
        if self.form == "infonce" and self.variant == "part":
            raise AvvpError("mtsc form 'infonce': expected variant entire (InfoNCE needs the other seconds "
                            "as negatives; part keeps only the same-second terms) but got 'part'")
        unused = self.unused()
        if unused:
            name, why = unused
            raise AvvpError(f"mtsc {name} {getattr(self, name)!r}: has no effect with {why}; "
                            f"leave it at {_DEFAULTS[name]!r}")

    def unused(self) -> tuple[str, str] | None:
        """(field, why) for the first field set away from its default that this reading ignores.

        Why refuse rather than ignore: a run folder records its options, and a config that
        says "absolute error" for a loss without that term would mislabel a comparison.
        ``anchor`` is exempt (earlier runs set it with --mtsc part, where it has no effect).
        """
        reasons: list[tuple[str, str]] = []
        if self.form == "regression":
            reasons.append(("temperature", "form regression (only InfoNCE has a temperature)"))
        else:
            reasons += [(n, "form infonce (Eq. 5 has no regression target)") for n in ("pull", "error", "simdetach")]
        if self.variant == "part":
            reasons += [(n, "variant part (same-second terms only)") for n in ("error", "simdetach", "negatives")]
        return next(((n, why) for n, why in reasons if getattr(self, n) != _DEFAULTS[n]), None)


_DEFAULTS = {f.name: f.default for f in fields(MTSCReading)}
