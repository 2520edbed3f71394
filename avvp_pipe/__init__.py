"""avvp-pipe: feature extraction, HAN (+MTSC) training and extractor-pairing selection for AVVP.

The one installed package. Its subpackages live in the repository's top-level folders
(``pipeline/``, ``extractors/``, ``models/``, ``selection/``, ``cache/``; see ``package-dir``
in pyproject.toml) and the ground they all stand on in ``avvp_pipe/core``.
"""

from avvp_pipe.core.version import __version__

__all__ = ["__version__"]
