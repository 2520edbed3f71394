"""OpenAI CLIP image towers: ``clip_vit_b16`` (512-d) and ``clip_vit_l14`` (768-d), one
projected image embedding per decoded frame (or per second with ``fps=1``).

``output=pre_projection`` gives the tower's pooled output before the projection instead
(768-d for B/16, 1024-d for L/14): the final-LayerNorm class token, HF ``CLIPVisionModel``'s
``pooler_output`` (post_layernorm), timm's ``forward_head(pre_logits=True)``. VALOR also
releases such a feature-map variant; the projection is a linear map of it, so the two
carry the same information in a different basis and width.

Why timm: it ships both OpenAI towers with their pretrained_cfg (mean/std, interpolation,
HF repo), builds them offline from code alone (``--random-init``), and is already a
dependency. Its ``*_clip_quickgelu_224.openai`` variants use QuickGELU as OpenAI trained
them (the plain variants use GELU and do not give CLIP's numbers), and their ``head`` is
CLIP's visual projection, so the full forward returns the same vector as HF
``CLIPModel.get_image_features`` / open_clip ``encode_image`` (tests/test_modern_extractors.py
checks it against HF's ``CLIPVisionModelWithProjection`` on shared weights).

Preprocessing is CLIP's own (openai/CLIP ``_transform``, HF ``CLIPImageProcessor``): bicubic
resize of the shorter side to 224, centre crop 224, CLIP mean/std. timm's cfg for the B/16
tower says crop_pct 0.9 (resize 248 then crop), which is not how CLIP was trained or how
VALOR/LSLD ran it, so crop_pct is 1.0 here; mean, std, interpolation and size are timm's.
VALOR itself squashed frames to 224x224 without a crop (torchvision Resize((224, 224)));
``resize=squash`` reproduces that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from avvp_pipe.core.errors import AvvpError
from avvp_pipe.extractors.registry import ExtractorSpec, out_dim, register
from avvp_pipe.extractors.timm_family import TimmImageExtractor, build_timm_model, weights_entry

#: Our name -> (timm model with tag, projected width, pre-projection width).
TOWERS = {
    "clip_vit_b16": ("vit_base_patch16_clip_quickgelu_224.openai", 512, 768),
    "clip_vit_l14": ("vit_large_patch14_clip_quickgelu_224.openai", 768, 1024),
}
#: CLIP's image statistics (openai/CLIP, HF OPENAI_CLIP_MEAN/STD, timm OPENAI_CLIP_MEAN/STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESIZE_MODES = ("clip", "squash")


def output_layer(output: str, width: int, dim: int) -> str:
    """The feature of ``output`` ("projection" or "pre_projection", the keys of the spec's
    out_dims), in words: the spec's output_layer holds the default's, config() the other's."""
    if output == "pre_projection":
        return (f"the final-LN class token before CLIP's visual projection ({width}-d), i.e. CLIPVisionModel's "
                "pooler_output (post_layernorm); normalize=true L2-normalises it")
    return (f"CLIP's visual projection of the final-LN class token ({width} -> {dim}), i.e. "
            "CLIPModel.get_image_features; normalize=true L2-normalises it (VALOR's stored features)")


def clip_input(size: int = 224) -> dict[str, Any]:
    """CLIP's eval transform as data: shorter side to ``size`` (bicubic), centre crop, CLIP mean/std."""
    return {
        "fps": 8, "frames": 80, "resize": size, "crop": size, "resize_mode": "shorter_side",
        "interpolation": "bicubic", "antialias": True, "range": (0.0, 1.0), "space": "RGB",
        "mean": CLIP_MEAN, "std": CLIP_STD, "crop_pct": 1.0, "crop_mode": "center",
    }


def _spec(name: str) -> ExtractorSpec:
    import timm

    model_name, dim, width = TOWERS[name]
    cfg = timm.models.get_pretrained_cfg(model_name).to_dict()
    return ExtractorSpec(
        name=name, modality="visual-2d", family="clip", out_frames=80, out_dim=dim,
        input=clip_input(int(cfg["input_size"][-1])), weights=weights_entry(cfg, model_name),
        output_layer=output_layer("projection", width, dim),
        requires=("timm",), licence="MIT (OpenAI CLIP weights); Apache-2.0 (timm)",
        options={"normalize": False, "resize": "clip", "output": "projection"},
        out_dims={"output": {"projection": dim, "pre_projection": width}},
        description=f"OpenAI CLIP {model_name.split('_clip')[0].replace('vit_', 'ViT-').replace('_patch', '/')} "
                    f"image tower (timm {model_name}); {dim}-d projected embedding per frame "
                    f"(output=pre_projection: the {width}-d pooled output before the projection).",
    )


SPECS = tuple(_spec(name) for name in TOWERS)


class ClipImageExtractor(TimmImageExtractor):
    """The projected image embedding (or the pooled output before it, ``output=pre_projection``);
    ``normalize`` and VALOR's ``resize=squash`` as options."""

    def __init__(self, spec: ExtractorSpec, model: torch.nn.Module, **kwargs: Any) -> None:
        super().__init__(spec, model, **kwargs)
        if self.options["resize"] not in RESIZE_MODES:
            raise AvvpError(f"Option 'resize' of extractor {spec.name!r}: expected one of "
                            f"{', '.join(RESIZE_MODES)} but got {self.options['resize']!r}")
        self.dim = out_dim(spec, self.options)  # refuses an output outside spec.out_dims
        self.input = dict(spec.input)
        if self.options["resize"] == "squash":  # VALOR: Resize((224, 224)), aspect not kept, no crop
            self.input.update(resize=(spec.input["crop"], spec.input["crop"]), resize_mode="exact",
                              crop=None, interpolation="bilinear")

    @property
    def out_shape(self) -> tuple[int, int]:
        """(T, D): D is the projected width, or the tower's width with output=pre_projection."""
        return (self.out_frames, self.dim)

    def config(self) -> dict[str, Any]:
        """Extractor.config(); the default output is not named, so stores made before it keep their keys."""
        cfg = super().config()
        if cfg["options"]["output"] == "projection":
            del cfg["options"]["output"]
        else:
            cfg["output_layer"] = output_layer(cfg["options"]["output"], self.dim, self.spec.out_dim)
        return cfg

    def prepare(self, clip: Any) -> torch.Tensor:
        from avvp_pipe.extractors import preprocess

        return preprocess.image_batch(self._clip_frames(clip), self.input)  # (n, 3, 224, 224)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        feats = self.model.forward_features(items)  # (n, 1 + patches, width), final LN applied
        pre = self.options["output"] == "pre_projection"
        emb = self.model.forward_head(feats, pre_logits=pre)  # (n, width) class token, or (n, dim): head = projection
        return F.normalize(emb.float(), dim=-1) if self.options["normalize"] else emb


def build(spec: ExtractorSpec, *, device: torch.device, weights_dir: Path | None, random_init: bool,
          normalize: bool, resize: str, output: str) -> ClipImageExtractor:
    """A CLIP tower through timm's loader (HF repo timm/<tower>.openai, file model.safetensors)."""
    out_dim(spec, {"output": output})  # a bad output fails before the (slow) build
    model, identity = build_timm_model(spec, weights_dir=weights_dir, random_init=random_init)
    return ClipImageExtractor(spec, model, device=device, random_init=random_init, weights_identity=identity,
                              options={"normalize": normalize, "resize": resize, "output": output})


for _spec_ in SPECS:
    register(_spec_, build)
