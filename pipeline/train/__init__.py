"""Stage 2: HAN (+MTSC) on stored pairings.

- :mod:`.config`: what a run computes (:class:`TrainConfig`, the official recipe by default);
- :mod:`.pairing`: a pairing's features read from the cache;
- :mod:`.engine`: the one training engine (a group of K runs at once; a plain run is K = 1);
- :mod:`.run`: the run folder of ``avvp-pipe train`` (config.json, checkpoints, resume, plots);
- :mod:`.seeds`: ``train --seeds K``, K seeds of one pairing as one group, with their spread.

The names below load on first use (PEP 562), so ``import avvp_pipe.pipeline.train.config``
(the CLI's option choices) does not import torch.
"""

from avvp_pipe.core.lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "config", "metric_names": "config",
    "Member": "engine", "TrainResult": "engine", "train_group": "engine",
    "PairingData": "pairing", "load_pairing": "pairing",
    "load_run": "run", "summary": "run", "train_pairing": "run", "train_run": "run",
    "SeedsResult": "seeds", "train_seeds_run": "seeds", "format_seeds": "seeds",
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
