"""Synthetic data with known truth: LLP-like clips (``clips``) and simulated feature stores (``features``)."""

from avvp_pipe.pipeline.synth.clips import synthesize, synthesize_annotations
from avvp_pipe.pipeline.synth.features import synthesize_features

__all__ = ["synthesize", "synthesize_annotations", "synthesize_features"]
