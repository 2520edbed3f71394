"""LAION-CLAP audio embeddings (HTSAT-tiny audio tower): ``clap``, 48 kHz mono, 10 x 512.

Why HF ``transformers``: its ``ClapAudioModelWithProjection`` is the maintained port of
LAION-CLAP's audio branch and projection, builds offline from a ``ClapAudioConfig`` alone
(``--random-init``), and its ``ClapFeatureExtractor`` is the port of CLAP's log-mel
front end; ``laion-clap`` itself pins numpy 1.23 and pulls in training-only packages.
Weights are LAION's HF repos: ``laion/clap-htsat-fused`` (the default, fusion) or
``laion/clap-htsat-unfused`` (option ``checkpoint``), file ``model.safetensors`` of the
whole CLAP model, of which the audio tower and its projection are loaded.

LAION's original laion_clap checkpoints load too (``checkpoint=630k-audioset-fusion-best``,
``630k-fusion-best``, ``630k-audioset-best``, ``630k-best``): file ``<name>.pt`` of HF repo
``lukewys/laion_clap`` (``--weights-dir DIR`` wants ``DIR/lukewys/laion_clap/<name>.pt``).
Why: published AVVP work used them, and nobody here can show that the HF repos hold the
same numbers. The file is read with ``torch.load(weights_only=True)`` (tensors and numpy
scalars only, see :func:`avvp_pipe.extractors.weights.load_state_dict`); its audio branch and
audio projection are renamed to transformers' names by :func:`convert_original` (our own
table, checked key by key in both directions); fusion follows the name (``*-fusion-*``).
No sha256 is published for these files, so, as for every HF-hub file here, the file's own
hash is the weights identity that keys the store (``--trust-weights`` is not involved).

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

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from avvp_pipe.core.errors import AvvpError, WeightsError
from avvp_pipe.extractors import hub, weights
from avvp_pipe.extractors.base import Extractor, PerSecondModes
from avvp_pipe.extractors.registry import ExtractorSpec, register

SECONDS = 10
SAMPLE_RATE = 48_000
MODES = ("windows", "clip")
#: HF repo of LAION's original laion_clap checkpoints (what ``laion_clap.CLAP_Module.load_ckpt`` downloads).
ORIGINAL_REPO = "lukewys/laion_clap"
#: Original HTSAT-tiny checkpoints (file ``<name>.pt`` in ORIGINAL_REPO) -> enable_fusion; load_ckpt's
#: model_id 0..3 in this order. The music/speech ones are HTSAT-base, another network.
ORIGINAL_CHECKPOINTS: dict[str, bool] = {
    "630k-best": False, "630k-audioset-best": False, "630k-fusion-best": True, "630k-audioset-fusion-best": True,
}
#: checkpoint option -> (ClapAudioConfig fields that differ from its defaults, feature-extractor truncation).
#: The truncation is laion_clap's own choice (``get_audio_embedding_from_data``): fusion models get
#: the 4-channel htk log-mel, the others the slaney one; HF's feature extractor follows the same rule.
CHECKPOINTS: dict[str, tuple[dict[str, Any], str]] = {
    "laion/clap-htsat-fused": ({"enable_fusion": True}, "fusion"),
    "laion/clap-htsat-unfused": ({"enable_fusion": False}, "rand_trunc"),
    **{name: ({"enable_fusion": fusion}, "fusion" if fusion else "rand_trunc")
       for name, fusion in ORIGINAL_CHECKPOINTS.items()},
}
DEFAULT_CHECKPOINT = "laion/clap-htsat-fused"
#: Keys of the whole CLAP checkpoint that are not the audio tower (text tower, logit scales).
TEXT_PREFIXES = ("text_model.", "text_projection.", "logit_scale")
#: Keys of an original laion_clap checkpoint outside the audio tower: the text branch and its heads
#: (roberta, or the CLIP-style transformer's embeddings), the audio branch's training-only MLP
#: (``audio_transform``: not on the embedding path) and the logit scales. Read and dropped.
ORIGINAL_OTHER_PREFIXES = ("text_branch.", "text_transform.", "text_projection.", "audio_transform.",
                           "logit_scale_a", "logit_scale_t", "token_embedding.", "positional_embedding",
                           "ln_final.")
#: Audio-branch keys with no counterpart in transformers' encoder, dropped: torchlibrosa's front end
#: (HF computes the log-mel in numpy; the mel filters are checked against it, see check_front_end),
#: the AudioSet tagging head (tscam_conv, head: not on the embedding path) and the shifted-window
#: masks (transformers recomputes them from the window layout).
ORIGINAL_AUDIO_DROPPED = re.compile(
    r"(spectrogram_extractor|logmel_extractor|tscam_conv|head)\..+|layers\.\d+\.blocks\.\d+\.attn_mask")
#: Audio-branch modules whose names transformers kept (the patch embedding with its fusion
#: convolution and AFF block, the final LayerNorm, each stage's patch merging).
ORIGINAL_AUDIO_KEPT = re.compile(r"(patch_embed|norm|layers\.\d+\.downsample)\..+")
#: Inside a Swin block: laion_clap's module -> transformers' (``attn.qkv`` is split, see convert_original).
ORIGINAL_BLOCK_MODULES = {
    "norm1": "layernorm_before", "norm2": "layernorm_after",
    "attn": "attention.self",  # relative_position_bias_table, relative_position_index
    "attn.proj": "attention.output.dense", "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense",
}
#: audio_projection = Sequential(Linear, ReLU, Linear) in laion_clap's CLAP; ClapProjectionLayer's names.
ORIGINAL_PROJECTION = {"0": "linear1", "2": "linear2"}
HF_ENCODER = "audio_model.audio_encoder."

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


def checkpoint_entry(checkpoint: str) -> dict[str, Any]:
    """The weights entry of a checkpoint option (the spec holds the default one)."""
    if checkpoint in ORIGINAL_CHECKPOINTS:
        return hub.entry(ORIGINAL_REPO, f"{checkpoint}.pt", "laion_clap")
    return hub.entry(checkpoint, "model.safetensors", "transformers")


SPEC = ExtractorSpec(
    name="clap", modality="audio", family="clap", out_frames=SECONDS, out_dim=512,
    input=CLAP_INPUT, weights=hub.entry(DEFAULT_CHECKPOINT, "model.safetensors", "transformers"),
    output_layer="audio_projection (768 -> 512 -> 512 MLP) of HTSAT's pooled last feature map, "
                 "L2-normalised (normalize=true), one per second",
    requires=("transformers",), licence="Apache-2.0 (transformers; LAION's CLAP weights on the HF hub)",
    options={"mode": "windows", "checkpoint": DEFAULT_CHECKPOINT, "normalize": True},
    description="LAION-CLAP audio embedding (HTSAT, fusion checkpoint by default), 48 kHz mono, 10 x 512.",
    option_weights={"checkpoint": {c: checkpoint_entry(c) for c in CHECKPOINTS if c != DEFAULT_CHECKPOINT}},
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


class ClapExtractor(PerSecondModes, Extractor):
    """10 items (windows) or 1 item (clip) per clip of log-mel inputs; 10 x 512 out."""

    sampling_rule = ("DecodedClip.audio_48k: windows: each 1-s piece through CLAP's 10-s repeat-pad framing; "
                     "clip: the whole 10 s once, HTSAT's time columns averaged per second")

    def __init__(self, spec: ExtractorSpec, model: torch.nn.Module, **kwargs: Any) -> None:
        super().__init__(spec, model, **kwargs)
        if self.options["mode"] not in MODES:
            raise AvvpError(f"Option 'mode' of extractor 'clap': expected one of {', '.join(MODES)} "
                            f"but got {self.options['mode']!r}")
        self.front_end = feature_extractor(self.options["checkpoint"])

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

    def config(self) -> dict[str, Any]:
        """The base config, naming the file actually loaded: the spec names the default checkpoint's
        ``model.safetensors``, which is also right for the other HF repo, so only original
        checkpoints change this field (and the keys of existing stores stay as they were)."""
        cfg = super().config()
        if cfg["weights"]["file"] is not None:
            cfg["weights"]["file"] = checkpoint_entry(self.options["checkpoint"])["file"]
        return cfg


def _original_key(key: str, value: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """transformers' name(s) and tensor(s) for one original key: {} to drop it, None if unknown."""
    if key.startswith(ORIGINAL_OTHER_PREFIXES):
        return {}
    head, _, rest = key.partition(".")
    if head == "audio_projection":
        index, _, param = rest.partition(".")
        return {f"audio_projection.{ORIGINAL_PROJECTION[index]}.{param}": value} \
            if index in ORIGINAL_PROJECTION and param in ("weight", "bias") else None
    if head != "audio_branch":
        return None
    if ORIGINAL_AUDIO_DROPPED.fullmatch(rest):
        return {}
    if rest.startswith("bn0."):
        return {f"{HF_ENCODER}batch_norm.{rest[4:]}": value}
    block = re.fullmatch(r"(layers\.\d+\.blocks\.\d+)\.(.+)\.([a-z_]+)", rest)
    if block:
        return _block_key(*block.groups(), value)
    return {HF_ENCODER + rest: value} if ORIGINAL_AUDIO_KEPT.fullmatch(rest) else None


def _block_key(block: str, module: str, param: str, value: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """One Swin block parameter; laion_clap's fused ``attn.qkv`` (rows q, k, v) becomes three Linears."""
    prefix = f"{HF_ENCODER}{block}."
    if module == "attn.qkv":
        q, k, v = value.chunk(3, dim=0)
        return {f"{prefix}attention.self.{name}.{param}": t for name, t in zip(("query", "key", "value"), (q, k, v))}
    return {f"{prefix}{ORIGINAL_BLOCK_MODULES[module]}.{param}": value} if module in ORIGINAL_BLOCK_MODULES else None


def original_state_dict(checkpoint: Any, source: Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a laion_clap training checkpoint (or a bare one), ``module.`` (DDP) stripped."""
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise WeightsError(f"Weights file {source} is not a laion_clap checkpoint: expected a dict with a "
                           f"'state_dict' but got {type(checkpoint).__name__}")
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def convert_original(state: Mapping[str, Any], expected: Mapping[str, torch.Tensor],
                     source: Path) -> dict[str, torch.Tensor]:
    """laion_clap CLAP keys -> ClapAudioModelWithProjection keys (``expected``: the model's state_dict).

    Every key is accounted for: mapped, or dropped by name (text tower, front end, tagging
    head, masks); an unknown key, a non-tensor, or a model key left unfilled raises, so a file
    of another layout (HTSAT-base, PANN, a renamed fusion file) never half-loads.
    """
    out: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, value in state.items():
        mapped = _original_key(key, value) if isinstance(value, torch.Tensor) else None
        if mapped is None:
            unmapped.append(key)
        else:
            out.update(mapped)
    if unmapped:
        raise WeightsError(f"Weights file {source} is not a laion_clap HTSAT-tiny checkpoint: {len(unmapped)} "
                           f"keys the converter does not map, e.g. {unmapped[:3]}")
    missing = sorted(set(expected) - set(out))
    unexpected = sorted(set(out) - set(expected))
    if missing or unexpected:
        hint = fusion_hint(missing + unexpected)
        raise WeightsError(f"Weights file {source} does not fit extractor 'clap': {len(missing)} missing keys "
                           f"{missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}{hint}")
    return out


def fusion_hint(keys: list[str]) -> str:
    """When only the fusion layers differ, the file's name and its content disagree: say so."""
    if keys and all("mel_conv2d" in k or "fusion_model" in k for k in keys):
        fused = ", ".join(name for name, fusion in ORIGINAL_CHECKPOINTS.items() if fusion)
        return f" (the fusion layers: only {fused} have them)"
    return ""


def check_front_end(state: Mapping[str, Any], front_end: Any, source: Path) -> None:
    """The checkpoint's own mel filters (torchlibrosa's, from its audio_cfg) equal HF's slaney filters.

    Why: the log-mel is computed by HF's feature extractor from :data:`CLAP_INPUT`, not from
    the file; a checkpoint trained on another sample rate, FFT size or band would otherwise
    load silently and embed the wrong spectrogram. The file holds librosa's float64 filters
    rounded to float32 (measured 6e-8 of the largest weight off HF's float64 ones), so 32 float32
    eps of the largest weight is the bound; 50 Hz more at the top band moves them by 2e-2.
    """
    melw = state.get("audio_branch.logmel_extractor.melW")
    if melw is None:
        return
    ours = np.asarray(front_end.mel_filters_slaney, dtype=np.float64)  # (513, 64)
    theirs = melw.detach().double().cpu().numpy()
    bound = 32 * float(np.finfo(np.float32).eps) * float(np.abs(ours).max())
    if theirs.shape != ours.shape or float(np.abs(theirs - ours).max()) > bound:
        raise WeightsError(f"Weights file {source}: its mel filter bank (audio_branch.logmel_extractor.melW, "
                           f"{tuple(theirs.shape)}) is not CLAP's 48 kHz, 1024-point, 64-band 50-14000 Hz one "
                           f"{tuple(ours.shape)}; this extractor's front end would not match it")


def load_original(model: torch.nn.Module, path: Path, checkpoint: str) -> None:
    """An original laion_clap ``.pt`` into ``model`` (tensors only: weights_only=True)."""
    state = original_state_dict(weights.load_state_dict(path), path)
    check_front_end(state, feature_extractor(checkpoint), path)
    converted = convert_original(state, model.state_dict(), path)
    weights.load_into(model, converted, source=path, name="clap")


def build_model(checkpoint: str, *, weights_dir: Path | None, random_init: bool) -> tuple[torch.nn.Module, str]:
    """(ClapAudioModelWithProjection, weights identity), built from its config; weights from the file:
    HF's safetensors of the whole CLAP model, or an original laion_clap ``.pt`` converted here."""
    from transformers import ClapAudioModelWithProjection

    config = audio_config(checkpoint)
    if random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return ClapAudioModelWithProjection(config), weights.RANDOM_INIT
    entry = checkpoint_entry(checkpoint)
    path = hub.fetch("clap", entry, weights_dir)
    identity = weights.file_identity(path)  # no published sha256 for these files: their own hash keys the store
    model = ClapAudioModelWithProjection(config)
    if checkpoint in ORIGINAL_CHECKPOINTS:
        load_original(model, path, checkpoint)
        return model, identity
    state = hub.load_safetensors(path, "clap")
    weights.load_into(model, state, source=path, name="clap", ignore_prefixes=TEXT_PREFIXES)
    return model, identity


def build(spec: ExtractorSpec, *, device: torch.device, weights_dir: Path | None, random_init: bool,
          mode: str, checkpoint: str, normalize: bool) -> ClapExtractor:
    """``clap`` with its options (the checkpoint option keys the store with them)."""
    model, identity = build_model(checkpoint, weights_dir=weights_dir, random_init=random_init)
    return ClapExtractor(spec, model, device=device, random_init=random_init, weights_identity=identity,
                         options={"mode": mode, "checkpoint": checkpoint, "normalize": normalize})


register(SPEC, build)
