"""Simulated feature stores at LLP scale, without video (``avvp-pipe synth-features``).

Training, selection and their benchmarks need stores for 11,849 clips; real features cannot
be made here. A simulated extractor turns each clip's per-second truth into features:

    x_t = W_e @ sum_{c active at t} (q * z_c + (1 - q) * u_{e,c})  +  clip offset  +  noise / snr

- ``z_c`` are class prototypes in a latent space shared by ALL extractors of BOTH modalities,
  ``u_{e,c}`` prototypes private to extractor ``e``. The weight ``q`` (alignment) says how much
  of an extractor's class signal lives in the shared space, i.e. how well its space aligns with
  the other modality's, which is what fusion needs (the seed paper's "collocation").
- ``snr`` scales the class signal against per-second noise.
- ``W_e`` is a fixed random map into the extractor's own D dimensions; features go through a
  ReLU, like CNN embeddings.

One ``QUALITY`` knob in [0, 1] sets both (alignment = quality, snr grows with quality), so a
set of simulated extractors has a quality order known by construction: stage three must
recover it. Everything is seeded per (seed, clip) so stores of one dataset share their truth,
and per (seed, extractor) for the extractor's own randomness.

Train clips get per-second truth consistent with their weak labels (each label is active in
at least one modality); val/test clips use their dense annotations. The truth of every clip
is written beside the stores (``simulated_truth.npz``) for diagnostics.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cache.store import StoreSpec, open_or_create
from pipeline.errors import AvvpError
from pipeline.llp import NUM_CLASSES, SECONDS, Annotations
from pipeline.progress import Progress

log = logging.getLogger(__name__)

MODALITY_FRAMES = {"audio": 10, "visual-2d": 80, "visual-3d": 10}
LATENT_DIM = 64
#: How a train clip's weak label shows up: audio-visual, audio only, visual only.
#: Proportions in the spirit of LLP's test split (audio-visual most common).
TRAIN_MODALITY_P = (0.6, 0.25, 0.15)


@dataclass(frozen=True)
class SimulatedExtractor:
    """``NAME:MODALITY:DIM:QUALITY`` from the command line."""

    name: str
    modality: str
    dim: int
    quality: float

    @classmethod
    def parse(cls, text: str) -> SimulatedExtractor:
        parts = text.split(":")
        if len(parts) != 4:
            raise AvvpError(f"--extractor {text!r}: expected NAME:MODALITY:DIM:QUALITY, e.g. sim_vggish:audio:128:0.8")
        name, modality, dim, quality = parts
        if modality not in MODALITY_FRAMES:
            raise AvvpError(f"--extractor {text!r}: modality must be one of {', '.join(MODALITY_FRAMES)}")
        try:
            dim_i, quality_f = int(dim), float(quality)
        except ValueError:
            raise AvvpError(f"--extractor {text!r}: DIM must be an integer and QUALITY a number") from None
        if dim_i < 1 or not 0.0 <= quality_f <= 1.0:
            raise AvvpError(f"--extractor {text!r}: expected DIM >= 1 and 0 <= QUALITY <= 1")
        return cls(name, modality, dim_i, quality_f)

    @property
    def frames(self) -> int:
        return MODALITY_FRAMES[self.modality]

    @property
    def snr(self) -> float:
        """Signal-to-noise of the class signal; 0.5 at quality 0, 4.5 at quality 1."""
        return 0.5 + 4.0 * self.quality


def _seed(*parts: object) -> int:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def train_truth(labels: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Plausible (2, 25, 10) audio/visual truth for a clip known only by its weak labels."""
    truth = np.zeros((2, NUM_CLASSES, SECONDS), dtype=np.uint8)
    for cls in labels:
        which = rng.choice(3, p=TRAIN_MODALITY_P)
        modalities = (0, 1) if which == 0 else (0,) if which == 1 else (1,)
        for m in modalities:
            if rng.random() < 0.5:
                truth[m, cls, :] = 1  # LLP events often span the whole clip
            else:
                length = int(rng.integers(2, SECONDS + 1))
                start = int(rng.integers(0, SECONDS - length + 1))
                truth[m, cls, start : start + length] = 1
    return truth


def clip_truth(ann: Annotations, seed: int) -> tuple[list[str], np.ndarray]:
    """(ids, (N, 2, 25, 10) uint8): dense truth for val/test, simulated truth for train."""
    ids = ann.split_ids("all")
    audio = ann.dense(ids, "audio")
    visual = ann.dense(ids, "visual")
    truth = np.stack([audio, visual], axis=1)  # (N, 2, 25, 10)
    for row, cid in enumerate(ids):
        clip = ann.clips[cid]
        if clip.split == "train" or not truth[row].any():
            truth[row] = train_truth(clip.labels, np.random.default_rng(_seed(seed, "truth", cid)))
    return ids, truth


class _Simulator:
    """The fixed randomness of one simulated extractor."""

    def __init__(self, ext: SimulatedExtractor, shared: np.ndarray, seed: int):
        rng = np.random.default_rng(_seed(seed, "extractor", ext.name))
        self.ext = ext
        private = rng.standard_normal((NUM_CLASSES, LATENT_DIM))
        q = ext.quality
        self.prototypes = q * shared + (1.0 - q) * private  # (25, L)
        self.projection = rng.standard_normal((LATENT_DIM, ext.dim)) / np.sqrt(LATENT_DIM)  # (L, D)
        self.seed = seed

    def clip_features(self, cid: str, active: np.ndarray) -> np.ndarray:
        """active: (25, 10) truth of this extractor's modality -> (T, D) float32."""
        ext = self.ext
        rng = np.random.default_rng(_seed(self.seed, "features", ext.name, cid))
        signal = active.T.astype(np.float64) @ self.prototypes  # (10, L)
        signal = np.repeat(signal, ext.frames // SECONDS, axis=0)  # (T, L)
        offset = rng.standard_normal((1, LATENT_DIM)) * 0.5  # clip-level nuisance
        noise = rng.standard_normal((ext.frames, LATENT_DIM)) / ext.snr * 2.0
        latent = ext.snr * signal / 2.0 + offset + noise  # (T, L)
        return np.maximum(latent @ self.projection, 0.0).astype(np.float32)  # (T, D), ReLU like CNNs


def synthesize_features(
    root: str,
    dataset: str,
    ann: Annotations,
    extractors: Sequence[SimulatedExtractor],
    *,
    seed: int = 0,
    dtype: str = "float32",
    block: int = 256,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Write one simulated store per extractor for every clip of ``ann``; resumable."""
    if not extractors:
        raise AvvpError("synth-features needs at least one --extractor NAME:MODALITY:DIM:QUALITY")
    names = [e.name for e in extractors]
    if len(set(names)) != len(names):
        raise AvvpError(f"--extractor names must be unique, got {names}")
    ids, truth = clip_truth(ann, seed)
    splits = {cid: ann.clips[cid].split for cid in ids}
    shared = np.random.default_rng(_seed(seed, "shared")).standard_normal((NUM_CLASSES, LATENT_DIM))
    _write_truth(root, dataset, ids, truth)
    summary = {"dataset": dataset, "clips": len(ids), "stores": []}
    for ext in extractors:
        spec = StoreSpec(
            dataset=dataset, extractor=ext.name, modality=ext.modality, shape=(ext.frames, ext.dim),
            config={"simulated": asdict(ext), "seed": seed, "latent_dim": LATENT_DIM, "model": "v1"},
            kind="simulated", dtype=dtype, provenance={"simulated_by": "avvp-pipe synth-features"},
        )
        store = open_or_create(root, spec, ids, splits)
        if overwrite:
            store.clear()
        todo = set(store.pending())
        sim = _Simulator(ext, shared, seed)
        modality_row = 0 if ext.modality == "audio" else 1
        started = time.perf_counter()
        bar = Progress(len(todo), f"synth-features {ext.name}", unit="clips", enabled=progress)
        rows = [i for i, cid in enumerate(ids) if cid in todo]
        for start in range(0, len(rows), block):
            part = rows[start : start + block]
            feats = np.stack([sim.clip_features(ids[i], truth[i, modality_row]) for i in part])
            store.write_clips([ids[i] for i in part], feats)
            bar.update(len(part))
        bar.close()
        summary["stores"].append({"name": store.name, "url": store.url, "written": len(rows),
                                  "already_done": len(ids) - len(rows),
                                  "seconds": round(time.perf_counter() - started, 2)})
    return summary


def truth_path(root: str, dataset: str) -> str:
    return f"{str(root).rstrip('/')}/{dataset}/simulated_truth.npz"


def _write_truth(root: str, dataset: str, ids: list[str], truth: np.ndarray) -> None:
    """Per-second truth of every clip (train included), atomically, for diagnostics."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(truth_path(root, dataset))
    fs.makedirs(os.path.dirname(path), exist_ok=True)
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, video_ids=np.array(ids), audio=truth[:, 0], visual=truth[:, 1])
    if fs.__class__.__name__ == "LocalFileSystem":
        tmp = f"{path}.tmp{os.getpid()}"
        Path(tmp).write_bytes(buf.getvalue())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, buf.getvalue())
