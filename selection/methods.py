"""The ways ``select`` scores a pairing, as data (the CLI takes its choices from here)."""

from __future__ import annotations

from avvp_pipe.core.errors import EXIT_USAGE, AvvpError


class SelectUsageError(AvvpError):
    """A bad option value or combination of select: one line and click's usage exit code."""

    exit_code = EXIT_USAGE

#: protocol -> (train_split, select_split, eval_split)
PROTOCOLS = {"upper-bound": ("test", "test", "test"), "traditional": ("train", "val", "test")}
#: Training-free scores, each one ranking column of its own name (selection/logme.py, selection/panel.py).
FREE = ("logme", "hscore", "transrate", "knn", "cca")
#: --method values: the trained upper bound F1, a training-free score, or "both" (upper bound and LogME).
METHODS = ("upper-bound", *FREE, "both")
ALIASES = {"both": ("upper-bound", "logme")}
#: What each free method costs, for the results table.
COST = {"logme": "one Gram eigendecomposition per pairing", "hscore": "one d x d eigh per pairing",
        "transrate": "51 small eighs per pairing", "knn": "one N x N similarity per pairing",
        "cca": "one CCA on half the clips per pairing"}


def parse_methods(text: str) -> tuple[str, ...]:
    """``--method`` as a comma list (``upper-bound,logme,cca``); aliases expanded, order kept, no repeats."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if not names or unknown:
        raise SelectUsageError(f"--method: expected a comma list of {', '.join(METHODS)} but got {text!r}")
    expanded = [m for n in names for m in ALIASES.get(n, (n,))]
    return tuple(dict.fromkeys(expanded))
