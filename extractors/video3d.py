"""R(2+1)D-18 on Kinetics-400: HAN's 3D (spatio-temporal) visual stream.

The same 80 decoded frames as the 2D stream, resized to 112x112 without crop (aspect not
kept, as the official features), Kinetics mean/std, cut into 10 consecutive groups of 8
frames (one per second); each group gives the 512-d pooled feature before ``fc``.

``protocol="kinetics"`` uses the Kinetics evaluation transform instead (short side 128,
aspect kept, centre crop 112x112, as video_features and torchvision's R(2+1)D recipe): the
model's own training view, at the cost of the image borders. The default "llp" is the
official LLP recipe and is left out of config(), so stores made before the option keep their keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from avvp_pipe.core.errors import AvvpError
from avvp_pipe.extractors import preprocess, weights
from avvp_pipe.extractors.base import Extractor
from avvp_pipe.extractors.registry import ExtractorSpec, register

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
#: What protocol="kinetics" changes in the spec's input (short side 128, centre crop 112).
PROTOCOLS = {"llp": {}, "kinetics": {"resize": 128, "resize_mode": "shorter_side", "crop": 112}}

SPEC = ExtractorSpec(
    name="r2plus1d_18",
    modality="visual-3d",
    family="video3d",
    out_frames=10,
    out_dim=512,
    input={
        "fps": 8,
        "frames": 80,
        "group": 8,  # frames per item: 10 items of 8 consecutive frames
        "resize": (112, 112),
        "crop": None,
        "resize_mode": "exact",
        "interpolation": "bilinear",
        "antialias": True,
        "range": (0.0, 1.0),
        "space": "RGB",
        "mean": KINETICS_MEAN,
        "std": KINETICS_STD,
    },
    weights={
        "library": "torchvision",
        "id": "R2Plus1D_18_Weights.KINETICS400_V1",
        "file": "r2plus1d_18-91a641e6.pth",
        "url": "https://download.pytorch.org/models/r2plus1d_18-91a641e6.pth",
        "sha256_prefix": "91a641e6",
    },
    output_layer="avgpool: 512-d spatio-temporal average pool (fc removed)",
    requires=("torchvision",),
    licence="BSD-3-Clause (torchvision); Kinetics-400-trained weights: research use",
    options={"protocol": "llp"},
    description="R(2+1)D-18, Kinetics-400; the official LLP 3D features (visual_st).",
)


class Video3dExtractor(Extractor):
    """Items are (3, 8, 112, 112) clips of 8 consecutive frames; 10 per clip."""

    sampling_rule = "DecodedClip.frames: the 80 decoded frames (8 fps) in 10 consecutive groups of 8"

    @property
    def items_per_clip(self) -> int:
        return int(self.spec.input["frames"]) // int(self.spec.input["group"])

    @property
    def input(self) -> dict[str, Any]:
        """The spec's input with the protocol's resize and crop."""
        return {**self.spec.input, **PROTOCOLS[self.options.get("protocol", "llp")]}

    def config(self) -> dict[str, Any]:
        """Extractor.config() with the effective input; the default protocol is not named."""
        cfg = super().config()
        if cfg["options"].get("protocol") == "llp":
            del cfg["options"]["protocol"]
        else:
            cfg["input"] = dict(sorted(self.input.items()))
        return cfg

    def prepare(self, clip: Any) -> torch.Tensor:
        frames = self._clip_frames(clip)  # (80, 3, H, W) uint8
        x = preprocess.image_batch(frames, self.input)  # (80, 3, 112, 112)
        group = int(self.spec.input["group"])
        x = x.reshape(-1, group, *x.shape[1:])  # (10, 8, 3, 112, 112)
        return x.permute(0, 2, 1, 3, 4).contiguous()  # (10, 3, 8, 112, 112): (C, T, H, W) items


def _r2plus1d_18() -> nn.Module:
    from torchvision.models.video import r2plus1d_18

    model = r2plus1d_18(weights=None)
    model.fc = nn.Identity()
    return model


def build(spec: ExtractorSpec, *, device: torch.device, weights_dir: Path | None,
          random_init: bool, protocol: str = "llp") -> Video3dExtractor:
    if protocol not in PROTOCOLS:
        raise AvvpError(f"Option 'protocol' of extractor {spec.name!r}: expected one of "
                        f"{', '.join(PROTOCOLS)} but got {protocol!r}")
    model, identity = weights.build_model(spec, _r2plus1d_18, weights_dir=weights_dir, random_init=random_init,
                                          ignore_prefixes=("fc.",))
    return Video3dExtractor(spec, model, device=device, random_init=random_init, weights_identity=identity,
                            options={"protocol": protocol})


register(SPEC, build)
