"""Extractor registry: specs as data, one module per extractor family (importing registers them)."""

from avvp_pipe.extractors import imagenet, openl3, video3d, vggish  # noqa: F401  (register on import)
from avvp_pipe.extractors import clap, clip, hf_audio, timm_family  # noqa: F401  (CLIP, CLAP, hf_audio:<repo>, timm:<model_name>)
from avvp_pipe.extractors.registry import REGISTRY, create, get_spec

__all__ = ["REGISTRY", "create", "get_spec"]
