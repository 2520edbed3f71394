"""HAN (and its grouped twin), the MTSC loss, the official LLP metrics, similarity and probes.

Names load on first use (PEP 562): ``from avvp_pipe.models import load_official_han``.
"""

from avvp_pipe.core.lazy import lazy_exports

_EXPORTS = {
    "HAN": "han", "HANConfig": "han", "load_official_han": "han", "official_init_": "han", "per_second_mean": "han",
    "mtsc_loss": "mtsc", "han_bce_loss": "objective",
    "llp_scores": "metrics", "llp_per_class": "metrics", "metric_names": "metrics",
    "modality_metrics": "similarity", "probe": "probe",
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
