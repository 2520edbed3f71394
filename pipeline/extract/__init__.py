"""Stage 1: decode clips once, run every candidate extractor, write the feature cache.

- :mod:`.plan`: options, the clip list, extractors and their stores, the tasks (plain data);
- :mod:`.engine`: decode threads -> bounded queue -> per-extractor batches -> stores;
- :mod:`.distributed`: the same over dask workers (units of clips, models cached per worker);
- :mod:`.run`: ``run_extract``, in-process or distributed;
- :mod:`.summary`: what a run did, as JSON and text.

Names load on first use (PEP 562): the CLI imports this package without numpy or torch.
"""

from avvp_pipe.core.lazy import lazy_exports

_EXPORTS = {
    "ExtractOptions": "plan", "ClipSet": "plan", "ClipTask": "plan", "DEFAULT_BATCH": "plan",
    "find_clips": "plan", "resolve_names": "plan", "build_extractors": "plan", "open_stores": "plan",
    "plan_tasks": "plan", "Engine": "engine", "audio_rates": "engine", "auto_workers": "distributed",
    "run_extract": "run", "format_summary": "summary", "raise_if_failed": "summary",
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
