"""LAION-CLAP audio embeddings (HTSAT-tiny audio tower): ``clap``, 48 kHz mono, 10 x 512.

Why HF ``transformers``: its ``ClapAudioModelWithProjection`` is the maintained port of
LAION-CLAP's audio branch and projection, builds offline from a ``ClapAudioConfig`` alone
(``--random-init``), and its ``ClapFeatureExtractor`` is the port of CLAP's log-mel
front end; ``laion-clap`` itself pins numpy 1.23 and pulls in training-only packages.
Weights are LAION's HF repos: ``laion/clap-htsat-fused`` (the default, fusion) or
``laion/clap-htsat-unfused`` (option ``checkpoint``), file ``model.safetensors`` of the
whole CLAP model, of which the audio tower and its projection are loaded.

How each second is fed (option ``mode``):

- ``windows`` (default, VALOR's recipe, utils/clap_preprocess.py): second k alone
  (``audio_48k[48000 k : 48000 (k + 1)]``) goes through CLAP's own 10-s framing, which
  repeat-pads it to 10 copies; one embedding per window. Ten forward passes per clip.
- ``clip``: the whole 10-s clip goes through once; HTSAT's last feature map (2 mel bands x
  32 time columns, about 0.31 s each) is averaged per second (each column weighted by its
  overlap with the second) and projected. The mean of the ten pooled vectors is exactly
  the clip's own pooled vector, so the clip-level embedding is the projection of their mean.

Fusion: an LLP clip is exactly 10 s, never longer than CLAP's window, so the fusion branch
(for longer audio) is idle and ``is_longer`` is False for every item, as in LAION-CLAP and
VALOR. HF's feature extractor marks one item of each batch "longer" at random when none is
(``feature_extraction_clap.py``); that flag is overridden here so features are deterministic.

``normalize`` (default true) L2-normalises each embedding, as LAION-CLAP's
``get_audio_embedding_from_data`` returns it and VALOR stores it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from avvp_pipe.core.errors import AvvpError
from avvp_pipe.extractors import hub, weights
from avvp_pipe.extractors.base import Extractor
from avvp_pipe.extractors.registry import ExtractorSpec, register

SECONDS = 10
SAMPLE_RATE = 48_000
MODES = ("windows", "clip")
#: checkpoint option -> (ClapAudioConfig fields that differ from its defaults, feature-extractor truncation).
CHECKPOINTS: dict[str, tuple[dict[str, Any], str]] = {
    "laion/clap-htsat-fused": ({"enable_fusion": True}, "fusion"),
    "laion/clap-htsat-unfused": ({"enable_fusion": False}, "rand_trunc"),
}
DEFAULT_CHECKPOINT = "laion/clap-htsat-fused"
#: Keys of the whole CLAP checkpoint that are not the audio tower (text tower, logit scales).
TEXT_PREFIXES = ("text_model.", "text_projection.", "logit_scale")

#: CLAP's front end as data (LAION-CLAP's HTSAT-tiny audio_cfg; the ClapFeatureExtractor fields).
CLAP_INPUT = {
    "sample_rate": SAMPLE_RATE,
    "pieces": SECONDS,
    "piece_s": 1.0,
    "max_length_s": 10,
    "feature_size": 64,  # mel bins
    "fft_window_size": 1024,
    "hop_length": 480,
    "frequency_min": 50,  # LAION-CLAP's audio_cfg fmin (HF's constructor default is 0)
    "frequency_max": 14000,
    "padding": "repeatpad",
    "top_db": None,
}


def audio_config(checkpoint: str) -> Any:
    """The ``ClapAudioConfig`` of ``checkpoint`` (offline: defaults plus the fusion switch)."""
    from transformers import ClapAudioConfig

    if checkpoint not in CHECKPOINTS:
        raise AvvpError(f"Option 'checkpoint' of extractor 'clap': expected one of {', '.join(CHECKPOINTS)} "
                        f"but got {checkpoint!r}")
    return ClapAudioConfig(**CHECKPOINTS[checkpoint][0])


def feature_extractor(checkpoint: str) -> Any:
    """HF's CLAP log-mel front end configured from :data:`CLAP_INPUT` and the checkpoint's truncation."""
    from transformers import ClapFeatureExtractor

    inp = CLAP_INPUT
    return ClapFeatureExtractor(
        feature_size=inp["feature_size"], sampling_rate=inp["sample_rate"], hop_length=inp["hop_length"],
        max_length_s=inp["max_length_s"], fft_window_size=inp["fft_window_size"],
        frequency_min=inp["frequency_min"], frequency_max=inp["frequency_max"], top_db=inp["top_db"],
        truncation=CHECKPOINTS[checkpoint][1], padding=inp["padding"])


SPEC = ExtractorSpec(
    name="clap", modality="audio", family="clap", out_frames=SECONDS, out_dim=512,
    input=CLAP_INPUT, weights=hub.entry(DEFAULT_CHECKPOINT, "model.safetensors", "transformers"),
    output_layer="audio_projection (768 -> 512 -> 512 MLP) of HTSAT's pooled last feature map, "
                 "L2-normalised (normalize=true), one per second",
    requires=("transformers",), licence="Apache-2.0 (transformers; LAION's CLAP weights on the HF hub)",
    options={"mode": "windows", "checkpoint": DEFAULT_CHECKPOINT, "normalize": True},
    description="LAION-CLAP audio embedding (HTSAT, fusion checkpoint by default), 48 kHz mono, 10 x 512.",
)


def second_weights(n_columns: int, seconds: int = SECONDS) -> torch.Tensor:
    """(seconds, n_columns) weights: each row averages the time columns over one second.

    Column c spans [c, c + 1) * seconds / n_columns s; its weight in second s is the overlap,
    so each row sums to 1 and each column's weights sum to seconds / n_columns.
    """
    edges = torch.arange(n_columns + 1, dtype=torch.float64) * seconds / n_columns  # (n_columns + 1,)
    lo, hi = edges[:-1], edges[1:]
    s = torch.arange(seconds, dtype=torch.float64)[:, None]  # (seconds, 1)
    overlap = (torch.minimum(hi, s + 1) - torch.maximum(lo, s)).clamp(min=0)  # (seconds, n_columns)
    return overlap.float()


class ClapExtractor(Extractor):
    """10 items (windows) or 1 item (clip) per clip of log-mel inputs; 10 x 512 out."""

    sampling_rule = ("DecodedClip.audio_48k: windows: each 1-s piece through CLAP's 10-s repeat-pad framing; "
                     "clip: the whole 10 s once, HTSAT's time columns averaged per second")

    def __init__(self, spec: ExtractorSpec, model: torch.nn.Module, **kwargs: Any) -> None:
        super().__init__(spec, model, **kwargs)
        if self.options["mode"] not in MODES:
            raise AvvpError(f"Option 'mode' of extractor 'clap': expected one of {', '.join(MODES)} "
                            f"but got {self.options['mode']!r}")
        self.front_end = feature_extractor(self.options["checkpoint"])

    @property
    def items_per_clip(self) -> int:
        return SECONDS if self.options["mode"] == "windows" else 1

    @property
    def embed_dim(self) -> int:
        return self.spec.out_dim * (1 if self.options["mode"] == "windows" else SECONDS)

    def prepare(self, clip: Any) -> torch.Tensor:
        """float32 (10 | 1, channels, 1001, 64) log-mels: channels 4 (fusion: the global mel 4x) or 1."""
        audio = self._clip_audio(clip, "audio_48k", SECONDS * SAMPLE_RATE)  # (480000,)
        pieces = list(audio.reshape(SECONDS, SAMPLE_RATE)) if self.options["mode"] == "windows" else [audio]
        mel = self.front_end(pieces, sampling_rate=SAMPLE_RATE, return_tensors="np")["input_features"]
        return torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32))  # is_longer dropped: always False

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        is_longer = torch.zeros(items.shape[0], 1, dtype=torch.bool, device=items.device)  # 10-s clips never are
        if self.options["mode"] == "windows":
            emb = self.model(input_features=items, is_longer=is_longer).audio_embeds  # (n, 512)
        else:
            fmap = self.model.audio_model(input_features=items, is_longer=is_longer).last_hidden_state  # (n, 768, 2, 32)
            columns = fmap.mean(dim=2)  # (n, 768, 32): the two mel bands, as HTSAT's own average pool
            w = second_weights(columns.shape[-1]).to(columns)  # (10, 32)
            per_second = torch.einsum("nct,st->nsc", columns, w)  # (n, 10, 768)
            emb = self.model.audio_projection(per_second)  # (n, 10, 512)
        return F.normalize(emb.float(), dim=-1) if self.options["normalize"] else emb

    def finalize(self, emb: torch.Tensor) -> np.ndarray:
        return self._check_emb(emb).reshape(SECONDS, self.spec.out_dim)  # (10, 512)


def checkpoint_entry(checkpoint: str) -> dict[str, Any]:
    """The weights entry of a checkpoint option (the spec holds the default one)."""
    return hub.entry(checkpoint, "model.safetensors", "transformers")


def build_model(checkpoint: str, *, weights_dir: Path | None, random_init: bool) -> tuple[torch.nn.Module, str]:
    """(ClapAudioModelWithProjection, weights identity), built from its config; weights from the HF file."""
    from transformers import ClapAudioModelWithProjection

    config = audio_config(checkpoint)
    if random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return ClapAudioModelWithProjection(config), weights.RANDOM_INIT
    entry = checkpoint_entry(checkpoint)
    path = hub.fetch("clap", entry, weights_dir)
    identity = weights.file_identity(path)
    state = hub.load_safetensors(path, "clap")
    model = ClapAudioModelWithProjection(config)
    weights.load_into(model, state, source=path, name="clap", ignore_prefixes=TEXT_PREFIXES)
    return model, identity


def build(spec: ExtractorSpec, *, device: torch.device, weights_dir: Path | None, random_init: bool,
          mode: str, checkpoint: str, normalize: bool) -> ClapExtractor:
    """``clap`` with its options (the checkpoint option keys the store with them)."""
    model, identity = build_model(checkpoint, weights_dir=weights_dir, random_init=random_init)
    return ClapExtractor(spec, model, device=device, random_init=random_init, weights_identity=identity,
                         options={"mode": mode, "checkpoint": checkpoint, "normalize": normalize})


register(SPEC, build)
