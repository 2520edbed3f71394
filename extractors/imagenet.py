"""ImageNet 2D CNNs applied to each of the 80 frames (8 fps): the seed paper's visual candidates.

``resnet152`` is the official LLP 2D stream (pretrainedmodels' ResNet-152 = torchvision's
architecture and its original ImageNet file, last linear removed). ``vgg19_bn``,
``senet154`` and ``polynet`` are the other candidates. Input specs are copied, as data, from
each library's data config (pretrainedmodels.pretrained_settings with its TransformImage
scale 0.875, torchvision's ``weights.transforms()``); tests check them against the libraries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from avvp_pipe.extractors import preprocess, weights
from avvp_pipe.extractors.base import Extractor
from avvp_pipe.extractors.registry import ExtractorSpec, register

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CADENE = "http://data.lip6.fr/cadene/pretrainedmodels/"
_TORCHVISION = "https://download.pytorch.org/models/"
_PM_REQUIRES = ("pretrainedmodels", "six", "munch", "torchvision")
_PM_LICENCE = ("BSD-3-Clause (pretrainedmodels code); weights converted from the authors' "
               "ImageNet release: research use, see the original repository")


def _image_input(resize: int, crop: int) -> dict[str, Any]:
    """Shorter side to ``resize``, centre crop ``crop``, [0, 1], ImageNet mean/std, RGB."""
    return {
        "fps": 8,
        "frames": 80,
        "resize": resize,
        "crop": crop,
        "resize_mode": "shorter_side",
        "interpolation": "bilinear",
        "antialias": True,  # PIL's bilinear filter, as the reference PIL pipelines
        "range": (0.0, 1.0),
        "space": "RGB",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
    }


def _spec(name: str, out_dim: int, inp: dict, weights_: dict, output_layer: str, requires: tuple,
          licence: str, description: str) -> ExtractorSpec:
    return ExtractorSpec(name=name, modality="visual-2d", family="imagenet", out_frames=80, out_dim=out_dim,
                         input=inp, weights=weights_, output_layer=output_layer, requires=requires,
                         licence=licence, description=description)


SPECS = (
    _spec("resnet152", 2048, _image_input(256, 224),
          {"library": "pretrainedmodels", "id": "resnet152/imagenet (torchvision's original file)",
           "file": "resnet152-b121ed2d.pth", "url": _TORCHVISION + "resnet152-b121ed2d.pth",
           "sha256_prefix": "b121ed2d"},
          "avgpool: 2048-d global average pool (last linear removed)", ("torchvision",),
          "BSD-3-Clause (torchvision); ImageNet-trained weights: research use",
          "ResNet-152 ImageNet; the official LLP 2D features (res152)."),
    _spec("vgg19_bn", 4096, _image_input(256, 224),
          {"library": "torchvision", "id": "VGG19_BN_Weights.IMAGENET1K_V1",
           "file": "vgg19_bn-c79401a0.pth", "url": _TORCHVISION + "vgg19_bn-c79401a0.pth",
           "sha256_prefix": "c79401a0"},
          "classifier.4: fc7 (penultimate fc) after ReLU, i.e. classifier[:-1] in eval mode "
          "(its trailing Dropout is the identity in eval, so it is dropped)", ("torchvision",),
          "BSD-3-Clause (torchvision); ImageNet-trained weights: research use",
          "VGG-19 with batch norm, ImageNet; 4096-d fc7 features."),
    _spec("senet154", 2048, _image_input(256, 224),
          {"library": "pretrainedmodels", "id": "senet154/imagenet",
           "file": "senet154-c7b49a05.pth", "url": _CADENE + "senet154-c7b49a05.pth",
           "sha256_prefix": "c7b49a05"},
          "avg_pool: 2048-d 7x7 average pool (last_linear removed; Dropout(0.2) inactive in eval)",
          _PM_REQUIRES, _PM_LICENCE, "SENet-154, ImageNet (pretrainedmodels)."),
    _spec("polynet", 2048, _image_input(378, 331),
          {"library": "pretrainedmodels", "id": "polynet/imagenet",
           "file": "polynet-f71d82a5.pth", "url": _CADENE + "polynet-f71d82a5.pth",
           "sha256_prefix": "f71d82a5"},
          "avg_pool: 2048-d 9x9 average pool (last_linear removed; Dropout(0.2) inactive in eval)",
          _PM_REQUIRES, _PM_LICENCE, "PolyNet, ImageNet, 331x331 input (pretrainedmodels)."),
)


# -- headless architectures (no weights; the classifier replaced by Identity) ---------------
def _resnet152() -> nn.Module:
    import torchvision

    # zero_init_residual only matters for random_init (pretrained weights overwrite it): with
    # the default init and eval-mode BN, 50 residual blocks grow activations to ~1e7 (inf under
    # fp16 autocast); zeroed last BN per block keeps random-init features at a sane scale.
    model = torchvision.models.resnet152(weights=None, zero_init_residual=True)
    model.fc = nn.Identity()
    return model


def _vgg19_bn() -> nn.Module:
    import torchvision

    model = torchvision.models.vgg19_bn(weights=None)
    model.classifier = model.classifier[:5]  # Linear, ReLU, Dropout, Linear, ReLU -> (n, 4096)
    return model


def _senet154() -> nn.Module:
    from pretrainedmodels.models.senet import senet154

    model = senet154(pretrained=None)
    model.last_linear = nn.Identity()
    return model


def _polynet() -> nn.Module:
    from pretrainedmodels.models.polynet import polynet

    model = polynet(pretrained=None)
    model.last_linear = nn.Identity()
    return model


#: name -> (headless factory, state-dict prefixes of the removed classifier)
ARCHITECTURES = {
    "resnet152": (_resnet152, ("fc.",)),
    "vgg19_bn": (_vgg19_bn, ("classifier.6.",)),
    "senet154": (_senet154, ("last_linear.",)),
    "polynet": (_polynet, ("last_linear.",)),
}


class ImageExtractor(Extractor):
    """One item per decoded frame; channels_last memory layout for the 2D CNN."""

    sampling_rule = "DecodedClip.frames: the 80 decoded frames (8 fps), one item per frame"
    takes_frame_rate = True  # prepare embeds _clip_frames row by row
    #: NHWC lets cuDNN (tensor cores, under autocast) and oneDNN pick faster conv kernels.
    channels_last = True

    def __init__(self, spec: ExtractorSpec, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(spec, model, **kwargs)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def prepare(self, clip: Any) -> torch.Tensor:
        frames = self._clip_frames(clip)  # (80, 3, H, W) uint8
        return preprocess.image_batch(frames, self.spec.input)  # (80, 3, S, S) float32

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            items = items.contiguous(memory_format=torch.channels_last)  # layout only, same values
        return self.model(items)  # (n, D)


def build(spec: ExtractorSpec, *, device: torch.device, weights_dir: Path | None,
          random_init: bool) -> ImageExtractor:
    """Any of the four ImageNet extractors; the architecture comes from ARCHITECTURES."""
    factory, head = ARCHITECTURES[spec.name]
    model, identity = weights.build_model(spec, factory, weights_dir=weights_dir, random_init=random_init,
                                          ignore_prefixes=head)
    return ImageExtractor(spec, model, device=device, random_init=random_init, weights_identity=identity)


for _spec_ in SPECS:
    register(_spec_, build)
