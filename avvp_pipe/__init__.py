"""avvp-pipe: feature extraction, HAN (+MTSC) training and extractor-pairing selection for AVVP.

The one installed package. Its subpackages live in the repository's top-level folders
(``pipeline/``, ``extractors/``, ``models/``, ``selection/``, ``cache/``; see ``package-dir``
in pyproject.toml) and the ground they all stand on in ``avvp_pipe/core``.

For notebooks, one call per stage (``avvp_pipe/api.py``), loaded on first use so that
``import avvp_pipe`` stays light (no torch)::

    import avvp_pipe
    summary = avvp_pipe.extract("llp/videos", "cache/", "vggish,resnet152", annotations="llp/", split="test")
    result = avvp_pipe.train("cache/", "llp", "llp/", "vggish", "resnet152", "runs/a", epochs=40)
    ranking = avvp_pipe.select("cache/", "llp", "llp/", "vggish,openl3_audio", "resnet152,vgg19_bn", "sel/")
    ds = avvp_pipe.open_store("cache/", "vggish", dataset="llp").to_xarray()
"""

from avvp_pipe.core.lazy import lazy_exports
from avvp_pipe.core.version import __version__

__getattr__, _API = lazy_exports(__name__, {"extract": "api", "train": "api", "select": "api", "open_store": "api"})
__all__ = ["__version__", *_API]
