"""Package ``__init__`` files that name their public API without importing it (PEP 562).

Why: ``import avvp_pipe.pipeline.train.config`` (the CLI's option choices) must not pull in
torch through ``avvp_pipe.pipeline.train``'s ``__init__``; a name loads its module on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, names: Mapping[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """``(__getattr__, __all__)`` for ``package``: ``names`` maps each public name to its submodule."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{names[name]}"), name)

    return __getattr__, list(names)
