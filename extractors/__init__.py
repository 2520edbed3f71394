"""Extractor registry: specs as data, one module per extractor family (importing registers them)."""

from extractors import imagenet, openl3, video3d, vggish  # noqa: F401  (register on import)
from extractors.registry import REGISTRY, create, get_spec

__all__ = ["REGISTRY", "create", "get_spec"]
