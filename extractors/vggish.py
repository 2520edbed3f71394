"""VGGish (torchvggish port of the AudioSet VGGish): the official LLP audio stream.

Ten 1-s pieces of 16 kHz mono audio -> ten 96x64 log-mel examples -> the 128-d output of
the last fc after its ReLU (10 x 128), without the PCA/quantisation postprocessing, as the
official features. ``pca=True`` adds torchvggish's PCA + 8-bit quantisation (the AudioSet
release format; values 0..255 as float32) in ``finalize``.

``audio_path`` says how decode makes the 16 kHz input: "moviepy" (default) replays the
official wavs (moviepy 1.0.3's nearest-sample resampling of 44.1 kHz stereo, no anti-alias
filter; avvp_pipe.pipeline.decode.audio), "soxr" resamples with a proper low-pass filter.
They differ most in the upper mel bands (aliasing folds 8-22 kHz content down). "soxr" is
left out of config(), so stores made before the option existed (all soxr) keep their keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from avvp_pipe.core.errors import AvvpError
from avvp_pipe.extractors import preprocess, weights
from avvp_pipe.extractors.base import Extractor
from avvp_pipe.extractors.registry import ExtractorSpec, register
from avvp_pipe.pipeline.decode.audio import AUDIO_PATHS

_RELEASE = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/"

SPEC = ExtractorSpec(
    name="vggish",
    modality="audio",
    family="vggish",
    out_frames=10,
    out_dim=128,
    # torchvggish.vggish_params, plus the LLP cut into 1-s pieces (one example each).
    input={
        "sample_rate": 16000,
        "mono": True,
        "window_s": 0.025,
        "hop_s": 0.010,
        "n_mels": 64,
        "fmin": 125.0,
        "fmax": 7500.0,
        "log_offset": 0.01,
        "example_s": 0.96,
        "piece_s": 1.0,
        "pieces": 10,
    },
    weights={
        "library": "torchvggish",
        "id": "vggish (AudioSet, harritaylor/torchvggish v0.1)",
        "file": "vggish-10086976.pth",
        "url": _RELEASE + "vggish-10086976.pth",
        "sha256_prefix": "10086976",
        "extra": {
            "pca": {
                "library": "torchvggish",
                "file": "vggish_pca_params-970ea276.pth",
                "url": _RELEASE + "vggish_pca_params-970ea276.pth",
                "sha256_prefix": "970ea276",
            },
        },
    },
    output_layer="embeddings.5: 128-d last fc after ReLU (no PCA unless pca=True)",
    requires=("torchvggish", "resampy", "soundfile"),
    licence="Apache-2.0 (VGGish model and weights, Google; torchvggish port)",
    options={"pca": False, "audio_path": "moviepy"},
    description="AudioSet VGGish, 1-s log-mel examples; the official LLP audio features.",
)


class VggishExtractor(Extractor):
    """Log-mel in prepare, the VGG in embed, optional PCA/quantisation in finalize."""

    sampling_rule = "audio_16k cut into 10 non-overlapping 1-s pieces; first 0.96-s example of each"

    def __init__(self, spec: ExtractorSpec, model: torch.nn.Module, *, pca_params: dict | None = None,
                 **kwargs: Any) -> None:
        super().__init__(spec, model, **kwargs)
        self._pca = pca_params  # {"matrix": (128, 128), "means": (128, 1)} float64, or None

    def config(self) -> dict[str, Any]:
        """Extractor.config(); audio_path only when it is not soxr (module docstring says why)."""
        cfg = super().config()
        if cfg["options"].get("audio_path") == "soxr":
            del cfg["options"]["audio_path"]
        return cfg

    def prepare(self, clip: Any) -> torch.Tensor:
        inp = self.spec.input
        n_samples = int(inp["pieces"] * inp["piece_s"] * inp["sample_rate"])
        audio = self._clip_audio(clip, "audio_16k", n_samples)  # (160000,)
        return preprocess.vggish_examples(audio, inp)  # (10, 1, 96, 64)

    def finalize(self, emb: torch.Tensor) -> np.ndarray:
        out = self._check_emb(emb)  # (10, 128)
        if self._pca is None:
            return out
        return pca_quantise(out, self._pca["matrix"], self._pca["means"])


def pca_quantise(emb: np.ndarray, matrix: np.ndarray, means: np.ndarray) -> np.ndarray:
    """torchvggish's Postprocessor: PCA (with whitening), clip to [-2, 2], 8-bit quantise."""
    pca = (matrix @ (emb.T.astype(np.float64) - means)).T  # (n, 128)
    clipped = np.clip(pca, -2.0, 2.0)
    return np.round((clipped + 2.0) * (255.0 / 4.0)).astype(np.float32)  # (n, 128) in 0..255


def _architecture() -> torch.nn.Module:
    from torchvggish.torchvggish import VGG, make_layers

    return VGG(make_layers(), postprocess=False)


def _load_pca(weights_dir: Path | None) -> tuple[dict, str]:
    """torchvggish's PCA params file -> (matrices, identity)."""
    entry = SPEC.weights["extra"]["pca"]
    path = weights.fetch(SPEC.name, entry, weights_dir)
    params = weights.load_state_dict(path)
    matrix = np.asarray(params["pca_eigen_vectors"], dtype=np.float64)
    means = np.asarray(params["pca_means"], dtype=np.float64).reshape(-1, 1)
    return {"matrix": matrix, "means": means}, weights.file_identity(path, entry["sha256_prefix"])


def build(spec: ExtractorSpec, *, device: torch.device, weights_dir: Path | None, random_init: bool,
          pca: bool = False, audio_path: str = "moviepy") -> VggishExtractor:
    """The VGGish extractor; ``pca`` needs the PCA params file even with random weights."""
    if audio_path not in AUDIO_PATHS:
        raise AvvpError(f"Option 'audio_path' of extractor 'vggish': expected one of {', '.join(AUDIO_PATHS)} "
                        f"but got {audio_path!r}")
    model, identity = weights.build_model(spec, _architecture, weights_dir=weights_dir, random_init=random_init)
    pca_params = None
    if pca:
        pca_params, pca_identity = _load_pca(weights_dir)
        identity = f"{identity}+pca:{pca_identity}"
    return VggishExtractor(spec, model, device=device, options={"pca": pca, "audio_path": audio_path},
                           random_init=random_init,
                           weights_identity=identity, pca_params=pca_params)


register(SPEC, build)
