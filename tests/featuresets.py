"""Small simulated feature sets for tests of train, select and analyze (no video, CPU-fast).

``make_annotations`` writes an official-format annotation folder for a synthetic label
structure (the generator ``avvp-pipe synth`` uses); ``make_cache`` writes simulated stores
for it with ``avvp_pipe.pipeline.synth.features``, whose extractor quality is known by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from avvp_pipe.pipeline.llp.annotations import Annotations, load_annotations
from avvp_pipe.pipeline.synth.clips import synthesize_annotations
from avvp_pipe.pipeline.synth.features import SimulatedExtractor, synthesize_features

DATASET = "tiny"


def make_annotations(folder: str | Path, n_clips: int = 160, seed: int = 0,
                     fractions: Sequence[float] = (0.5, 0.25, 0.25)) -> Annotations:
    """Annotation files for ``n_clips`` synthetic clips split train/val/test by ``fractions``."""
    synthesize_annotations(folder, n_clips, seed, fractions)
    return load_annotations(folder)


def make_cache(root: str | Path, ann: Annotations, extractors: Sequence[str], dataset: str = DATASET,
               seed: int = 0) -> str:
    """Simulated stores, one per ``NAME:MODALITY:DIM:QUALITY``; returns the cache root."""
    specs = [SimulatedExtractor.parse(text) for text in extractors]
    synthesize_features(str(root), dataset, ann, specs, seed=seed, progress=False)
    return str(root)


#: Simulated extractors of known quality: pairing (a_i, v_j) should rank by QUALITY[i] + QUALITY[j].
QUALITY = {"0": 0.1, "1": 0.5, "2": 0.9}
QUALITY_AUDIO = [f"a{i}:audio:{24 + 8 * int(i)}:{q}" for i, q in QUALITY.items()]  # widths 24, 32, 40
QUALITY_VISUAL = [f"v{i}:visual-2d:{40 + 8 * int(i)}:{q}" for i, q in QUALITY.items()]  # widths 40, 48, 56


def make_quality_world(root: Path, extra: Sequence[str] = ()) -> dict:
    """200 clips (80 train / 40 val / 80 test) and the 3 x 3 quality-ordered stores (+ ``extra``)."""
    ann = make_annotations(root / "ann", n_clips=200, fractions=(0.4, 0.2, 0.4))
    cache = make_cache(root / "cache", ann, QUALITY_AUDIO + QUALITY_VISUAL + list(extra))
    return {"root": root, "ann": ann, "ann_dir": str(root / "ann"), "cache": cache}
