"""Hugging Face ``transformers`` audio encoders: ``hf_audio:<repo>`` (like ``timm:<name>`` for
vision), one embedding per second of 16 kHz mono audio (``DecodedClip.audio_16k``, the
decode path of every 16 kHz extractor).

Which repos: :data:`REPOS` lists each known repo with its architecture and its feature
extractor settings (the repo's ``preprocessor_config.json`` values, as data), e.g.
``hf_audio:MIT/ast-finetuned-audioset-10-10-0.4593`` (AST) and
``hf_audio:facebook/hubert-base-ls960`` (HuBERT); :func:`register_hf_audio` adds another.
Stores, ``extractors list`` and ``train --audio`` use the one-folder spelling
``hf_audio:MIT--ast-finetuned-audioset-10-10-0.4593`` (see :func:`spec_name`); requests
take either.

What is built:

- ``--random-init``: the library's default config class for the architecture
  (``transformers.ASTConfig()``, ``HubertConfig()``, ``Wav2Vec2Config()``) plus the repo's
  ``config_overrides`` (none for the listed repos, whose configs are those defaults), seeded
  with 0. No file is read, so this works offline.
- pretrained: ``model.safetensors``, ``config.json`` and ``preprocessor_config.json`` of the
  repo at option ``revision`` (default ``main``), found by the HF-cache / ``--weights-dir``
  helper (:mod:`avvp_pipe.extractors.hub`: ``DIR/<repo>/<file>``; a missing file is one
  line naming it). The model is loaded by transformers' own ``from_pretrained`` on that
  folder (its checkpoint key conversions, safetensors only); a missing or mismatched tensor
  is an error, never a random init. The repo's config must agree with the spec on the
  fields that fix the width and the time grid, and its preprocessor config with the spec's
  feature extractor settings; either disagreement is a one-line error naming the field.

How a second is embedded (option ``mode``; what is natural for each architecture):

- ``clip`` (default, every architecture): the whole 10-s clip goes through the feature
  extractor and the model once; the last hidden state's time steps are averaged per second.
  A time step belongs to the second its receptive field is centred in (integer sample
  arithmetic, :func:`second_weights`). AST: the 1024 x 128 log-mel (998 real frames, padded
  as AST pads) gives 12 x 101 patch tokens; token column c is centred at 1600 c + 1400
  samples, so second k averages columns 10k..10k+9 over all 12 frequency rows (column 100,
  frames 1000..1015, all padding, is dropped; the CLS and distillation tokens are not used).
  HuBERT / wav2vec2: 499 frames, frame i centred at 320 i + 200 samples (50 per second,
  49 in the last).
- ``windows`` (HuBERT / wav2vec2 only): second k alone through the feature extractor
  (normalised on its own) and the model, its 49 frames averaged; ten passes per clip, like
  the ``clap`` extractor's default. Not offered for AST: its input is a fixed 1024-frame
  (10.24-s) spectrogram, so a 1-s window would be 90 % padding.

The output is ``last_hidden_state`` (AST: after its final LayerNorm), ``hidden_size`` wide.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from avvp_pipe.core.errors import AvvpError, WeightsError, one_line
from avvp_pipe.extractors import hub, weights
from avvp_pipe.extractors.base import Extractor, PerSecondModes
from avvp_pipe.extractors.registry import ExtractorSpec, register, register_alias, register_resolver

log = logging.getLogger(__name__)

PREFIX = "hf_audio:"
SECONDS = 10
SAMPLE_RATE = 16_000
MODES = ("clip", "windows")
WEIGHTS_FILE, CONFIG_FILE, PREPROCESSOR_FILE = "model.safetensors", "config.json", "preprocessor_config.json"


@dataclass(frozen=True)
class Architecture:
    """How one transformers architecture is built, fed and pooled, as data."""

    config_class: str  # transformers class building the default config (random init)
    model_class: str  # the headless encoder whose last_hidden_state is the feature
    feature_extractor_class: str
    modes: tuple[str, ...]  # the values option ``mode`` may take
    input_key: str  # what the feature extractor returns and the model takes
    grid_fields: tuple[str, ...]  # config fields fixing the width and the time grid (checked on load)
    special_tokens: int = 0  # leading tokens of last_hidden_state that are not time steps
    unused_at_inference: tuple[str, ...] = ()  # parameters a checkpoint may lack (training-only)
    licence: str = ""


ARCHITECTURES: dict[str, Architecture] = {
    "ast": Architecture(
        "ASTConfig", "ASTModel", "ASTFeatureExtractor", ("clip",), "input_values",
        ("hidden_size", "num_mel_bins", "max_length", "patch_size", "frequency_stride", "time_stride"),
        special_tokens=2),  # CLS and distillation tokens
    "hubert": Architecture(
        "HubertConfig", "HubertModel", "Wav2Vec2FeatureExtractor", MODES, "input_values",
        ("hidden_size", "conv_kernel", "conv_stride"), unused_at_inference=("masked_spec_embed",)),
    "wav2vec2": Architecture(
        "Wav2Vec2Config", "Wav2Vec2Model", "Wav2Vec2FeatureExtractor", MODES, "input_values",
        ("hidden_size", "conv_kernel", "conv_stride"), unused_at_inference=("masked_spec_embed",)),
}


@dataclass(frozen=True)
class Repo:
    """One known hub repo: its architecture, feature extractor settings and config differences."""

    architecture: str
    feature_extractor: Mapping[str, Any]  # the repo's preprocessor_config.json values
    licence: str
    config_overrides: Mapping[str, Any] = field(default_factory=dict)  # fields differing from the defaults


#: AST's AudioSet recipe (the repo's preprocessor config = ASTFeatureExtractor's defaults).
AST_AUDIOSET = {"sampling_rate": SAMPLE_RATE, "feature_size": 1, "num_mel_bins": 128, "max_length": 1024,
                "do_normalize": True, "mean": -4.2677393, "std": 4.5689974, "padding_value": 0.0}
#: Raw-waveform models: 16 kHz, zero-mean unit-variance per input, no attention mask (group-norm base models).
WAVEFORM_NORMALISED = {"sampling_rate": SAMPLE_RATE, "feature_size": 1, "do_normalize": True,
                       "padding_value": 0.0, "return_attention_mask": False}

#: The settings below are what these repos are believed to hold; the hub was not reachable
#: when they were written, so a pretrained build compares them with the repo's own
#: preprocessor_config.json and refuses any difference (check_repo_files) rather than trust them.
REPOS: dict[str, Repo] = {
    "MIT/ast-finetuned-audioset-10-10-0.4593": Repo("ast", AST_AUDIOSET, "BSD-3-Clause (MIT's AST weights)"),
    "facebook/hubert-base-ls960": Repo("hubert", WAVEFORM_NORMALISED, "Apache-2.0 (facebook/hubert-base-ls960)"),
    "facebook/wav2vec2-base-960h": Repo("wav2vec2", WAVEFORM_NORMALISED, "Apache-2.0 (facebook/wav2vec2-base-960h)"),
}


def _transformers(name: str) -> Any:
    """A class of the transformers package by name (the tables hold names: no import at load)."""
    import transformers

    return getattr(transformers, name)


def model_config(repo: str) -> Any:
    """The config random init builds: the architecture's default config class plus the repo's overrides."""
    entry = REPOS[repo]
    return _transformers(ARCHITECTURES[entry.architecture].config_class)(**dict(entry.config_overrides))


def token_grid(architecture: str, config: Any) -> dict[str, Any]:
    """The time grid of last_hidden_state for a 10-s clip, in samples at 16 kHz (integers: exact).

    ``hop``: samples between consecutive time steps; ``centre``: the first one's receptive
    field centre; ``steps``: time steps per clip; ``rows``: tokens per time step (AST's
    frequency rows, else 1).
    """
    if architecture == "ast":  # kaldi fbank: 400-sample frames every 160 samples
        frame_hop, frame_len = 160, 400
        rows = (config.num_mel_bins - config.patch_size) // config.frequency_stride + 1
        steps = (config.max_length - config.patch_size) // config.time_stride + 1
        centre = frame_hop * (config.patch_size - 1) // 2 + frame_len // 2  # patch frames 0..15: 1400 (exact: 160 even)
        return {"hop": frame_hop * config.time_stride, "centre": centre, "steps": steps, "rows": rows}
    hop, receptive = 1, 1
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        receptive += (kernel - 1) * hop
        hop *= stride
    steps = SECONDS * SAMPLE_RATE
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):  # transformers' _get_feat_extract_output_lengths
        steps = (steps - kernel) // stride + 1
    return {"hop": hop, "centre": receptive // 2, "steps": steps, "rows": 1}


def second_weights(grid: Mapping[str, int], seconds: int = SECONDS) -> torch.Tensor:
    """(seconds, steps) averaging weights: each row the mean of the time steps centred in that second.

    Steps centred at or after ``seconds`` (AST's padded last column) get no weight.
    """
    centres = grid["centre"] + grid["hop"] * np.arange(grid["steps"])  # samples
    which = centres // SAMPLE_RATE  # the second each step is centred in
    onehot = torch.from_numpy((which[None, :] == np.arange(seconds)[:, None]).astype(np.float32))
    counts = onehot.sum(1, keepdim=True)
    if bool((counts == 0).any()):
        raise AvvpError(f"Time grid {dict(grid)}: expected every second to hold a time step")
    return onehot / counts  # (seconds, steps), rows sum to 1


def hf_audio_spec(repo: str) -> ExtractorSpec:
    """The spec of ``hf_audio:<repo>``: sizes and grid from the library's default config class."""
    if repo not in REPOS:
        raise AvvpError(f"Unknown hf_audio repo {repo!r}; expected one of: {', '.join(sorted(REPOS))} "
                        f"(or register it with avvp_pipe.extractors.hf_audio.register_hf_audio)")
    entry = REPOS[repo]
    arch = ARCHITECTURES[entry.architecture]
    config = model_config(repo)
    grid = token_grid(entry.architecture, config)
    overrides = f" with {dict(entry.config_overrides)}" if entry.config_overrides else " defaults"
    return ExtractorSpec(
        name=spec_name(repo), modality="audio", family="hf_audio", out_frames=SECONDS,
        out_dim=int(config.hidden_size),
        input={"sample_rate": SAMPLE_RATE, "pieces": SECONDS, "piece_s": 1.0, "mono": True,
               "feature_extractor_class": arch.feature_extractor_class,
               "feature_extractor": dict(entry.feature_extractor),
               "grid": grid, "special_tokens": arch.special_tokens},
        weights={**hub.entry(repo, WEIGHTS_FILE, "transformers"), "architecture": arch.model_class,
                 "random_init_config": f"transformers.{arch.config_class}(){overrides}",
                 "extra": {"config": hub.entry(repo, CONFIG_FILE, "transformers"),
                           "preprocessor": hub.entry(repo, PREPROCESSOR_FILE, "transformers")}},
        output_layer=f"{arch.model_class}.last_hidden_state ({int(config.hidden_size)}-d), the time steps "
                     f"centred in each second averaged" + (" over all frequency rows" if grid["rows"] > 1 else ""),
        requires=("transformers",), licence=f"{entry.licence}; Apache-2.0 (transformers)",
        options={"mode": "clip", "revision": "main"},
        description=f"{repo} through transformers' {arch.model_class}, 16 kHz mono, one embedding per second "
                    f"(mode: {' or '.join(arch.modes)}); --random-init builds transformers.{arch.config_class}()"
                    f"{overrides}.",
    )


def register_hf_audio(repo: str, architecture: str, feature_extractor: Mapping[str, Any], *, licence: str,
                      config_overrides: Mapping[str, Any] | None = None) -> ExtractorSpec:
    """Make ``hf_audio:<repo>`` known: its architecture (a key of :data:`ARCHITECTURES`), its
    preprocessor_config.json values and the config fields that differ from the defaults."""
    if architecture not in ARCHITECTURES:
        raise AvvpError(f"hf_audio architecture {architecture!r}: expected one of {', '.join(ARCHITECTURES)}")
    if repo.count("/") != 1 or "--" in repo:  # the hub's own rule; spec_name relies on it
        raise AvvpError(f"hf_audio repo {repo!r}: expected a hub id ORG/NAME without '--'")
    REPOS[repo] = Repo(architecture, dict(feature_extractor), licence, dict(config_overrides or {}))
    spec = hf_audio_spec(repo)
    register(spec, build)
    return spec


def spec_name(repo: str) -> str:
    """The registered (store) name of ``repo``: ``hf_audio:MIT--ast-...`` for ``MIT/ast-...``.

    Why not the repo id itself: a store lives at ``<cache>/<dataset>/<extractor>/<key>.zarr``,
    one folder per name, so a name holds no "/". "--" is how the HF cache writes it
    (``models--MIT--ast-...``) and the hub forbids "--" in repo ids, so the spelling is
    reversible; ``hf_audio:<org>/<name>`` is accepted everywhere as another spelling.
    """
    return f"{PREFIX}{repo.replace('/', '--')}"


def resolve(name: str) -> None:
    """Registry resolver for ``hf_audio:<repo>`` (``org/name``) and its store name (``org--name``)."""
    rest = name[len(PREFIX):]
    repo = rest if "/" in rest else rest.replace("--", "/", 1)
    spec = hf_audio_spec(repo)
    register(spec, build)
    if name != spec.name:
        register_alias(name, spec.name)


# -- the extractor ------------------------------------------------------------------------
@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' load report and its mel-filter warning (kaldi's 128 bins on a 257-bin FFT,
    as AST was trained) are not the user's business; errors still raise."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="At least one mel filter has all zero values")
            yield
    finally:
        hf_logging.set_verbosity(level)


def fbank_backend() -> str:
    """Which log-mel implementation ASTFeatureExtractor runs here (they differ in the last bits)."""
    from transformers.utils import is_speech_available

    return "torchaudio.compliance.kaldi.fbank" if is_speech_available() else "transformers.audio_utils.spectrogram (numpy)"


class HfAudioExtractor(PerSecondModes, Extractor):
    """1 item (``mode=clip``) or 10 items (``windows``) of feature-extractor output per clip; 10 x D out."""

    sampling_rule = ("DecodedClip.audio_16k: clip: the whole 10 s once, the last hidden state's time steps "
                     "averaged per second (each step in the second its receptive field is centred in); "
                     "windows: each 1-s piece alone, its time steps averaged")

    def __init__(self, spec: ExtractorSpec, model: torch.nn.Module, *, config_identity: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(spec, model, **kwargs)
        self.architecture = ARCHITECTURES[REPOS[spec.weights["repo"]].architecture]
        check_mode(spec, self.architecture, self.options["mode"])
        with _quiet_transformers():
            self.front_end = _transformers(self.architecture.feature_extractor_class)(**spec.input["feature_extractor"])
        self.grid = dict(spec.input["grid"])
        self.config_identity = config_identity  # sha256 prefix of the repo's config.json (pretrained)

    def config(self) -> dict[str, Any]:
        """Extractor.config() plus the repo, revision, config.json identity and, for AST, the fbank code."""
        cfg = super().config()
        cfg["weights"].update(repo=self.spec.weights["repo"], revision=self.options["revision"],
                              config=self.config_identity)
        cfg["frontend"] = {"class": self.architecture.feature_extractor_class}
        if self.architecture.feature_extractor_class == "ASTFeatureExtractor":
            cfg["frontend"]["fbank"] = fbank_backend()
        return cfg

    def prepare(self, clip: Any) -> torch.Tensor:
        """float32 (1, 1024, 128) AST log-mels, or raw (1, 160000) / (10, 16000) normalised waveforms."""
        audio = self._clip_audio(clip, "audio_16k", SECONDS * SAMPLE_RATE)  # (160000,)
        pieces = list(audio.reshape(SECONDS, SAMPLE_RATE)) if self.options["mode"] == "windows" else [audio]
        out = self.front_end(pieces, sampling_rate=SAMPLE_RATE, return_tensors="np")[self.architecture.input_key]
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        hidden = self.model(**{self.architecture.input_key: items}).last_hidden_state  # (n, tokens, D)
        steps = hidden[:, self.architecture.special_tokens:]  # (n, rows * steps, D), rows-major
        steps = steps.reshape(steps.shape[0], self.grid["rows"], -1, steps.shape[-1]).mean(1)  # (n, steps, D)
        if self.options["mode"] == "windows":
            return steps.mean(1)  # (n, D): one window's time steps
        w = second_weights(self.grid).to(steps)  # (10, steps)
        return torch.einsum("st,ntd->nsd", w, steps).reshape(steps.shape[0], -1)  # (n, 10 * D)

    def finalize(self, emb: torch.Tensor) -> np.ndarray:
        return self._check_emb(emb).reshape(SECONDS, self.spec.out_dim)  # (10, D)


def check_mode(spec: ExtractorSpec, arch: Architecture, mode: str) -> None:
    """``mode`` must be one the architecture offers (AST: clip only; see the module docstring)."""
    if mode not in arch.modes:
        why = (" (AST's input is a fixed 1024-frame, 10.24-s spectrogram: a 1-s window would be 90% padding)"
               if arch.model_class == "ASTModel" and mode == "windows" else "")
        raise AvvpError(f"Option 'mode' of extractor {spec.name!r}: expected one of {', '.join(arch.modes)} "
                        f"but got {mode!r}{why}")


# -- building -----------------------------------------------------------------------------
def _entries(spec: ExtractorSpec, revision: str) -> dict[str, dict[str, Any]]:
    """The weights, config and preprocessor entries of the spec's repo at ``revision``."""
    repo = spec.weights["repo"]
    return {file: hub.entry(repo, file, "transformers", revision=revision)
            for file in (WEIGHTS_FILE, CONFIG_FILE, PREPROCESSOR_FILE)}


def check_repo_files(spec: ExtractorSpec, config_path: Path, preprocessor_path: Path) -> None:
    """The repo's config.json and preprocessor_config.json against the spec; a difference is one line."""
    arch = ARCHITECTURES[REPOS[spec.weights["repo"]].architecture]
    expected = model_config(spec.weights["repo"])
    found = _read_json(config_path, spec.name)
    for key in arch.grid_fields:
        ours, theirs = getattr(expected, key), found.get(key, getattr(expected, key))
        if _plain(ours) != _plain(theirs):
            raise WeightsError(f"{config_path} of extractor {spec.name!r} has {key}={theirs!r} but the spec expects "
                               f"{ours!r}; register the repo with its config_overrides (hf_audio.register_hf_audio)")
    found = _read_json(preprocessor_path, spec.name)
    for key, ours in spec.input["feature_extractor"].items():
        if key in found and _plain(found[key]) != _plain(ours):
            raise WeightsError(f"{preprocessor_path} of extractor {spec.name!r} has {key}={found[key]!r} but the "
                               f"spec's feature extractor uses {ours!r}; register the repo with its own settings "
                               f"(hf_audio.register_hf_audio)")


def _plain(value: Any) -> Any:
    """Tuples as lists and ints as floats, so JSON and config values compare by value."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _read_json(path: Path, name: str) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise WeightsError(f"{path} of extractor {name!r} cannot be read as JSON ({one_line(err)})") from err


def build_model(spec: ExtractorSpec, *, weights_dir: Path | None, random_init: bool,
                revision: str) -> tuple[torch.nn.Module, str, str | None]:
    """(model, weights identity, config.json identity): the default config seeded, or the repo's files."""
    arch = ARCHITECTURES[REPOS[spec.weights["repo"]].architecture]
    model_class = _transformers(arch.model_class)
    if random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return model_class(model_config(spec.weights["repo"])), weights.RANDOM_INIT, None
    paths = {file: hub.fetch(spec.name, entry, weights_dir) for file, entry in _entries(spec, revision).items()}
    folder = paths[WEIGHTS_FILE].parent
    if paths[CONFIG_FILE].parent != folder:
        raise WeightsError(f"{paths[CONFIG_FILE]} and {paths[WEIGHTS_FILE]} of extractor {spec.name!r} are in different "
                           f"folders; expected one snapshot of {spec.weights['repo']} holding both")
    check_repo_files(spec, paths[CONFIG_FILE], paths[PREPROCESSOR_FILE])
    identity = weights.file_identity(paths[WEIGHTS_FILE])
    try:
        with _quiet_transformers():
            model, info = model_class.from_pretrained(str(folder), local_files_only=True, use_safetensors=True,
                                                      output_loading_info=True, dtype=torch.float32)
    except Exception as err:  # unreadable file, config the class cannot take
        raise WeightsError(f"Weights file {paths[WEIGHTS_FILE]} does not fit extractor {spec.name!r} "
                           f"({type(err).__name__}: {one_line(err)})") from err
    missing = sorted(set(info["missing_keys"]) - set(arch.unused_at_inference))
    mismatched = sorted(str(k) for k in info["mismatched_keys"])
    if missing or mismatched:
        raise WeightsError(f"Weights file {paths[WEIGHTS_FILE]} does not fit extractor {spec.name!r}: "
                           f"{len(missing)} missing tensors {missing[:3]}, {len(mismatched)} of another shape "
                           f"{mismatched[:3]} (they would be random)")
    if info["unexpected_keys"]:
        log.info("%s: %d tensors of the checkpoint are not the encoder (heads), unused", spec.name,
                 len(info["unexpected_keys"]))
    return model, identity, weights.file_identity(paths[CONFIG_FILE])


def build(spec: ExtractorSpec, *, device: torch.device, weights_dir: Path | None, random_init: bool,
          mode: str, revision: str) -> HfAudioExtractor:
    """``hf_audio:<repo>`` with its options (mode and revision key the store with the weights)."""
    check_mode(spec, ARCHITECTURES[REPOS[spec.weights["repo"]].architecture], mode)
    model, identity, config_identity = build_model(spec, weights_dir=weights_dir, random_init=random_init,
                                                   revision=revision)
    return HfAudioExtractor(spec, model, device=device, random_init=random_init, weights_identity=identity,
                            options={"mode": mode, "revision": revision}, config_identity=config_identity)


register_resolver(PREFIX, resolve, "<repo>", listed=lambda: [spec_name(repo) for repo in sorted(REPOS)])
