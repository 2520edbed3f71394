"""Stage 3: ranking audio x visual extractor pairings (the seed paper's upper bound, traversal,
training-free scores, rank statistics with intervals).

Names load on first use (PEP 562): ``from avvp_pipe.selection import run_select``.
"""

from avvp_pipe.core.lazy import lazy_exports

_EXPORTS = {
    "Candidates": "candidates", "SelectOptions": "upper_bound", "run_select": "upper_bound",
    "METHODS": "methods", "PROTOCOLS": "methods",
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
