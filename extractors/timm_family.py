"""Any timm model as a 2D visual extractor: ``timm:<model_name>`` (e.g. ``timm:convnext_tiny``,
``timm:vit_small_patch16_224.augreg_in21k``), one embedding per decoded frame.

Everything comes from timm itself, as data: the weights tag and HF repo from the model's
``pretrained_cfg``, the preprocessing from ``timm.data.resolve_data_config`` (input size,
interpolation, mean/std, crop_pct, crop_mode), the width from the model's pooled feature
size (``head_hidden_size``, else ``num_features``: what ``forward_head(pre_logits=True)``
returns). The feature is the model's own pooling without its classifier:
``forward_head(forward_features(x), pre_logits=True)``. The timm name with its pretrained
tag is in the spec, hence in the store key, so two tags never share a store.

A name without a tag means timm's default tag for that architecture (resolved once and
recorded); ``timm:convnext_tiny`` and ``timm:convnext_tiny.in12k_ft_in1k`` are the same
weights but different store names, like any two names.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from avvp_pipe.core.errors import AvvpError, WeightsError, one_line
from avvp_pipe.extractors import hub, preprocess, weights
from avvp_pipe.extractors.base import Extractor
from avvp_pipe.extractors.registry import ExtractorSpec, register, register_resolver

PREFIX = "timm:"
#: timm's crop modes we reproduce: "center" (shorter side to size / crop_pct, centre crop)
#: and "squash" (both sides to size / crop_pct, centre crop).
_RESIZE_MODE = {"center": "shorter_side", "squash": "exact"}


def data_input(data_config: dict[str, Any], fps: int = 8) -> dict[str, Any]:
    """timm's resolved data config as our ``spec.input``, exactly as timm's eval transform applies it.

    timm (transforms_factory.transforms_imagenet_eval) resizes to ``floor(size / crop_pct)``
    then centre-crops ``size``.
    """
    mode = data_config.get("crop_mode", "center")
    if mode not in _RESIZE_MODE:
        raise AvvpError(f"timm crop_mode {mode!r} is not supported; expected one of {', '.join(_RESIZE_MODE)}")
    size = int(data_config["input_size"][-1])
    if int(data_config["input_size"][-2]) != size:
        raise AvvpError(f"timm input_size {data_config['input_size']} is not square; only square inputs are supported")
    scale = math.floor(size / float(data_config.get("crop_pct") or 1.0))
    return {
        "fps": fps,
        "frames": 80,
        "resize": scale if mode == "center" else (scale, scale),
        "crop": size,
        "resize_mode": _RESIZE_MODE[mode],
        "interpolation": str(data_config["interpolation"]),
        "antialias": True,  # PIL's filters, as timm's eval transform on PIL images
        "range": (0.0, 1.0),
        "space": "RGB",
        "mean": tuple(float(m) for m in data_config["mean"]),
        "std": tuple(float(s) for s in data_config["std"]),
        "crop_pct": float(data_config.get("crop_pct") or 1.0),
        "crop_mode": mode,
    }


def weights_entry(pretrained_cfg: dict[str, Any], model_name: str) -> dict[str, Any]:
    """Where timm would load ``model_name``'s weights from: its HF repo, else its URL (torch hub cache)."""
    repo = pretrained_cfg.get("hf_hub_id")
    if repo:
        file = pretrained_cfg.get("hf_hub_filename") or "model.safetensors"  # timm's first choice
        out = hub.entry(repo, file, "timm")
        out["id"] = model_name
        return out
    url = pretrained_cfg.get("url")
    if url:
        return {"library": "timm", "id": model_name, "file": url.rsplit("/", 1)[-1], "url": url}
    raise AvvpError(f"timm model {model_name!r} has no pretrained weights (no hf_hub_id or url in its "
                    "pretrained_cfg); use --random-init for a test, or another tag")


def resolve_model_name(model_name: str) -> tuple[str, dict[str, Any]]:
    """``arch[.tag]`` -> (``arch.tag`` with timm's default tag filled in, its pretrained_cfg)."""
    import timm

    arch, tag = timm.models.split_model_name_tag(model_name)
    if not timm.is_model(arch):
        raise AvvpError(f"Unknown timm model {arch!r}; expected a name from timm.list_models() "
                        f"(timm {timm.__version__}), e.g. convnext_tiny")
    try:
        cfg = timm.models.get_pretrained_cfg(f"{arch}.{tag}" if tag else arch, allow_unregistered=False)
    except RuntimeError:  # timm's "Invalid pretrained tag" / "no pretrained cfg"
        cfg = None
    if cfg is None:
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")]
        raise AvvpError(f"timm model {arch!r} has no pretrained tag {tag!r}; expected one of: "
                        f"{', '.join(tags) or '(none)'}")
    return f"{arch}.{cfg.tag}" if cfg.tag else arch, cfg.to_dict()


def headless_width(model: nn.Module) -> int:
    """What ``forward_head(pre_logits=True)`` returns: the head's hidden size where the head has
    one (NormMlp heads), else ``num_features``."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def model_facts(full_name: str) -> tuple[int, dict[str, Any]]:
    """(pooled width, resolved data config) from the architecture built on the meta device (no memory)."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(full_name, pretrained=False)
    return headless_width(model), timm.data.resolve_data_config({}, model=model)


def timm_spec(model_name: str, *, name: str | None = None) -> ExtractorSpec:
    """The spec of timm model ``model_name`` under ``name`` (default ``timm:<model_name>``)."""
    full, cfg = resolve_model_name(model_name)
    width, data_config = model_facts(full)
    return ExtractorSpec(
        name=name or f"{PREFIX}{model_name}", modality="visual-2d", family="timm", out_frames=80, out_dim=width,
        input=data_input(data_config), weights=weights_entry(cfg, full),
        output_layer=f"forward_head(forward_features(x), pre_logits=True): the model's own pooling, "
                     f"{width}-d, classifier removed",
        requires=("timm",), licence=str(cfg.get("license") or "see the timm model card"),
        options={}, description=f"timm {full} (timm's pretrained_cfg and data config), one embedding per frame.",
    )


def resolve(name: str) -> None:
    """Registry resolver for ``timm:<model_name>``."""
    register(timm_spec(name[len(PREFIX):], name=name), build)


def register_timm(model_name: str, name: str) -> ExtractorSpec:
    """Register timm model ``model_name`` under a short ``name`` (a user's own candidate)."""
    spec = timm_spec(model_name, name=name)
    register(spec, build)
    return spec


# -- the extractor ------------------------------------------------------------------------
class TimmImageExtractor(Extractor):
    """One item per decoded frame (or per second at fps 1); timm's eval preprocessing as data."""

    sampling_rule = "DecodedClip.frames: the 80 decoded frames (8 fps), one item per frame"
    takes_frame_rate = True

    def prepare(self, clip: Any) -> torch.Tensor:
        frames = self._clip_frames(clip)  # (80 or 10, 3, H, W) uint8
        return preprocess.image_batch(frames, self.spec.input)  # (n, 3, S, S) float32

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        feats = self.model.forward_features(items)  # (n, tokens, C) or (n, C, h, w)
        return self.model.forward_head(feats, pre_logits=True)  # (n, D)


def timm_name(spec: ExtractorSpec) -> str:
    """The timm model name (with tag) a spec builds."""
    return str(spec.weights["id"])


def build_timm_model(spec: ExtractorSpec, *, weights_dir: Path | None, random_init: bool,
                     **create_kwargs: Any) -> tuple[nn.Module, str]:
    """(model, weights_identity): timm builds the architecture; weights through timm's own loader.

    random_init: seeded with 0 in a forked RNG (the caller's RNG untouched). Pretrained: the
    file is found first (HF cache or --weights-dir, one-line errors), then handed to timm as
    ``pretrained_cfg_overlay={"file": ...}`` so timm applies its own checkpoint filter and a
    strict load; its sha256 prefix keys the features.
    """
    import timm

    if random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return timm.create_model(timm_name(spec), pretrained=False, **create_kwargs), weights.RANDOM_INIT
    if spec.weights.get("source") == "hf_hub":
        path = hub.fetch(spec.name, spec.weights, weights_dir)
    else:
        path = weights.fetch(spec.name, spec.weights, weights_dir)
    identity = weights.file_identity(path, spec.weights.get("sha256_prefix"))
    try:
        model = timm.create_model(timm_name(spec), pretrained=True, pretrained_cfg_overlay={"file": str(path)},
                                  **create_kwargs)
    except Exception as err:  # unreadable file or keys/shapes that do not fit
        raise WeightsError(f"Weights file {path} does not fit extractor {spec.name!r} "
                           f"({type(err).__name__}: {one_line(err)})") from err
    return model, identity


def build(spec: ExtractorSpec, *, device: torch.device, weights_dir: Path | None,
          random_init: bool) -> TimmImageExtractor:
    """Any timm model; its classifier stays in the module but forward never reaches it."""
    model, identity = build_timm_model(spec, weights_dir=weights_dir, random_init=random_init)
    return TimmImageExtractor(spec, model, device=device, random_init=random_init, weights_identity=identity)


register_resolver(PREFIX, resolve)
