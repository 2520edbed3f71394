"""OpenL3 audio and image embeddings (Cramer et al., ICASSP 2019) in PyTorch.

OpenL3 is the open re-training of the L3-Net audio-visual correspondence model
(Arandjelovic & Zisserman, ICCV 2017). Both subnetworks are four VGG-like blocks of two
3x3 convolutions; the published models are Keras ``.h5`` files that cannot be fetched here
(the ``openl3`` package downloads them at install time and needs TensorFlow), so this
module rebuilds both networks in torch and imports the official Keras weights with
:func:`import_keras_weights` (CLI: ``avvp-pipe weights import-openl3 FILE.h5``).

What follows openl3 >= 0.4 (``openl3/models.py`` and ``openl3/core.py``):

* Audio: 48 kHz mono, 1-s windows at a 0.1-s hop, ``center=True`` (24 000 zeros in front,
  so window k is centred on k * 0.1 s; a 10-s clip gives 96 windows). The Kapre front-end
  is recomputed in torch as preprocessing (never inside the network): magnitude STFT with a
  periodic Hann window, then a Slaney mel filterbank for the mel inputs, then
  ``10 log10(max(x, 1e-10))`` minus the window's maximum, floored at -80 dB.
* Image: one 224x224 RGB frame; the final 'same' max-pool size picks the embedding size.
* Embedding = last conv (no BN/ReLU) -> MaxPool(pool = stride = size) -> Flatten in Keras
  channels-last order (h, w, c), so the 6144/8192-d vectors match openl3 element by element.

Where openl3's own code and the L3 training code disagree, :data:`DEVIATIONS` says which
side is followed and why (image pixel range; the Kapre version of the audio front-end).
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avvp_pipe.extractors import weights as _weights
from avvp_pipe.extractors.base import Extractor
from avvp_pipe.extractors.registry import ExtractorSpec, register
from avvp_pipe.core.errors import AvvpError, ClipError, WeightsError
from avvp_pipe.core.io import atomic_torch_save

# --------------------------------------------------------------------------------------
# Constants (the numbers openl3 uses; everything that changes features is here, as data)
# --------------------------------------------------------------------------------------

SAMPLE_RATE = 48_000  # openl3 resamples everything to 48 kHz
WINDOW_SAMPLES = 48_000  # 1-s analysis window
HOP_SAMPLES = 4_800  # openl3 hop_size=0.1 s
CENTER_PAD = WINDOW_SAMPLES // 2  # center=True: zeros in front so window k is centred on k*hop
CLIP_SECONDS = 10
IMAGE_SIZE = 224  # network input
IMAGE_RESIZE = 256  # shorter side before the centre crop (L3 / openl3 training)

INPUT_REPRS = ("mel256", "mel128", "linear")
CONTENT_TYPES = ("music", "env")
AUDIO_EMBEDDING_SIZES = (512, 6144)
IMAGE_EMBEDDING_SIZES = (512, 8192)

#: Keras BatchNormalization's default epsilon (torch's is 1e-5; the weights assume 1e-3).
KERAS_BN_EPS = 1e-3

#: Final MaxPooling2D pool sizes (= strides, padding 'same') that turn the last 512-channel
#: map into the embedding: audio map is 32x24 (mel256, linear) or 16x24 (mel128), image 28x28.
AUDIO_FINAL_POOL: dict[str, dict[int, tuple[int, int]]] = {
    "linear": {6144: (8, 8), 512: (32, 24)},
    "mel128": {6144: (4, 8), 512: (16, 24)},
    "mel256": {6144: (8, 8), 512: (32, 24)},
}
IMAGE_FINAL_POOL: dict[int, tuple[int, int]] = {8192: (7, 7), 512: (28, 28)}

DEVIATIONS = (
    "image: pixels scaled to [-1, 1] after resizing the shorter side to 256 and a centre "
    "224 crop, as in L3 training (l3embedding train.py) and openl3's docstring; openl3's "
    "_preprocess_image_batch feeds [0, 1] for frames that are not already 224x224 "
    "(a float64 buffer skips its [-1, 1] branch) and resizes only frames larger than 256",
    "audio: the front-end is openl3>=0.4's Kapre 0.3 one (mel of |STFT|, zero padding at the "
    "end); the weights were trained with Kapre 0.1.4 (sqrt of mel-filtered power, centred "
    "'same' padding), which openl3>=0.4 itself no longer reproduces",
)


@dataclass(frozen=True)
class FrontEnd:
    """One Kapre-equivalent log-spectrogram front-end (``openl3.models``' parameters)."""

    n_fft: int
    n_mels: int | None  # None: linear-frequency magnitude (n_fft // 2 + 1 bins)
    pad_end: bool  # tf.signal.stft(pad_end=True): zeros at the end so frames = ceil(len / hop)
    hop: int = 242
    amin: float = 1e-10  # openl3's kapre_v0_1_4_magnitude_to_decibel
    top_db: float = 80.0
    sample_rate: int = SAMPLE_RATE

    @property
    def n_bins(self) -> int:
        return self.n_mels if self.n_mels is not None else self.n_fft // 2 + 1

    def n_frames(self, n_samples: int = WINDOW_SAMPLES) -> int:
        if self.pad_end:
            return -(-n_samples // self.hop)
        return 1 + (n_samples - self.n_fft) // self.hop


#: mel256: 256 x 199, mel128: 128 x 199, linear: 257 x 197 per 1-s window.
FRONT_ENDS: dict[str, FrontEnd] = {
    "mel256": FrontEnd(n_fft=2048, n_mels=256, pad_end=True),
    "mel128": FrontEnd(n_fft=2048, n_mels=128, pad_end=True),
    "linear": FrontEnd(n_fft=512, n_mels=None, pad_end=False),
}

# --------------------------------------------------------------------------------------
# Preprocessing: audio windows, log spectrograms, image frames
# --------------------------------------------------------------------------------------


def frame_audio(audio: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Cut 48 kHz mono audio into openl3's 1-s windows (``center=True``, hop 0.1 s).

    Window k holds samples ``[k*4800 - 24000, k*4800 + 24000)`` with zeros outside the
    signal, i.e. it is centred on ``k * 0.1`` s; the end is zero-padded so every sample is
    covered (openl3 ``_pad_audio``). 480 000 samples -> 96 windows.
    """
    wave = torch.as_tensor(np.asarray(audio, dtype=np.float32)).reshape(-1)  # (L,)
    if wave.numel() == 0:
        raise ClipError("Expected non-empty 48 kHz audio but got 0 samples")
    wave = F.pad(wave, (CENTER_PAD, 0))  # (L + 24000,)
    length = wave.numel()
    needed = (n_windows(length - CENTER_PAD) - 1) * HOP_SAMPLES + WINDOW_SAMPLES
    wave = F.pad(wave, (0, needed - length))  # (needed,)
    return wave.unfold(0, WINDOW_SAMPLES, HOP_SAMPLES).contiguous()  # (n_windows, 48000)


def n_windows(n_samples: int) -> int:
    """How many windows openl3 (center=True) cuts from ``n_samples``: 480 000 -> 96."""
    length = n_samples + CENTER_PAD
    if length <= WINDOW_SAMPLES:
        return 1
    return 1 + -(-(length - WINDOW_SAMPLES) // HOP_SAMPLES)


def window_seconds(n_windows: int) -> np.ndarray:
    """The second (0..9) each window's centre falls in: window k is centred on k * 0.1 s."""
    return (np.arange(n_windows) * HOP_SAMPLES) // SAMPLE_RATE


@lru_cache(maxsize=8)
def _mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """Slaney-normalised mel filterbank, (n_mels, n_fft//2+1), as kapre's ``filterbank_mel``."""
    import librosa

    fb = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=0.0, fmax=None,
                             htk=False, norm="slaney")
    return torch.from_numpy(fb.astype(np.float32))


def log_spectrogram(windows: torch.Tensor, front_end: FrontEnd) -> torch.Tensor:
    """Kapre-equivalent decibel spectrograms of 1-s windows: (N, L) -> (N, 1, F, T).

    Runs on whatever device ``windows`` is on. Each window is normalised on its own
    (its maximum becomes 0 dB), exactly as openl3's ``kapre_v0_1_4_magnitude_to_decibel``.
    """
    n_samples = windows.shape[-1]
    n_frames = front_end.n_frames(n_samples)
    needed = (n_frames - 1) * front_end.hop + front_end.n_fft
    if needed > n_samples:
        windows = F.pad(windows, (0, needed - n_samples))  # tf.signal.stft pad_end
    window = torch.hann_window(front_end.n_fft, periodic=True, dtype=windows.dtype,
                               device=windows.device)
    spec = torch.stft(windows, n_fft=front_end.n_fft, hop_length=front_end.hop, window=window,
                      center=False, return_complex=True)  # (N, n_fft//2+1, T)
    mag = spec.abs()[..., :n_frames]  # (N, K, T)
    if front_end.n_mels is not None:
        fb = _mel_filterbank(front_end.sample_rate, front_end.n_fft, front_end.n_mels)
        mag = torch.einsum("mk,nkt->nmt", fb.to(mag.device, mag.dtype), mag)  # (N, M, T)
    db = 10.0 * torch.log10(mag.clamp_min(front_end.amin))  # (N, F, T)
    db = db - db.amax(dim=(1, 2), keepdim=True)  # 0 dB at each window's maximum
    return db.clamp_min(-front_end.top_db).unsqueeze(1)  # (N, 1, F, T)


def preprocess_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 RGB frames (N, 3, H, W) -> (N, 3, 224, 224) float32 in [-1, 1].

    Shorter side resized to 256 (bilinear, antialiased, on uint8 as L3's ffmpeg scaling),
    then the centre 224x224 crop at openl3's offsets (``h//2 - 112``), then
    ``2 * x / 255 - 1`` as in L3 training (l3embedding ``data_generator``).
    """
    from torchvision.transforms.v2 import functional as TF

    if frames.ndim != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
        raise ClipError(f"Expected uint8 RGB frames of shape (N, 3, H, W) but got "
                        f"{tuple(frames.shape)} {frames.dtype}")
    height, width = frames.shape[-2:]
    scale = IMAGE_RESIZE / min(height, width)
    size = [max(IMAGE_RESIZE, round(height * scale)), max(IMAGE_RESIZE, round(width * scale))]
    x = frames
    if size != [height, width]:
        x = TF.resize(x, size, antialias=True)  # (N, 3, >=256, >=256) uint8
    top = size[0] // 2 - IMAGE_SIZE // 2
    left = size[1] // 2 - IMAGE_SIZE // 2
    x = x[..., top:top + IMAGE_SIZE, left:left + IMAGE_SIZE]  # (N, 3, 224, 224)
    return x.float().mul_(2.0 / 255.0).sub_(1.0).contiguous()  # [-1, 1]


# --------------------------------------------------------------------------------------
# The networks
# --------------------------------------------------------------------------------------

#: (block, conv out-channels) for the four blocks; both subnetworks share it.
_WIDTHS = (64, 128, 256, 512)


def _conv(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1)  # Keras padding='same'


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=KERAS_BN_EPS)


class L3Subnetwork(nn.Module):
    """One L3 subnetwork: input BN, four blocks of two 3x3 convs, embedding max-pool.

    Layer order, names and quirks mirror ``openl3.models._construct_*_network`` so the
    Keras weights map one to one (see :meth:`keras_layers`):
    blocks 1-3 are conv-BN-ReLU, conv-BN-ReLU, 2x2 max-pool; block 4 is conv-BN-ReLU then
    the embedding conv with neither BN nor ReLU. In the image network the second conv of
    block 1 is followed by ReLU *then* BN (as in the released model), and its block pools
    are Keras 'same' (ceil) where the audio ones are 'valid' (floor: 257 -> 128 bins).
    """

    def __init__(self, in_channels: int, final_pool: tuple[int, int], *,
                 relu_before_bn_1b: bool = False, same_pooling: bool = False) -> None:
        super().__init__()
        self.relu_before_bn_1b = relu_before_bn_1b
        self.same_pooling = same_pooling  # Keras 'same' (ceil) block pools; audio uses 'valid'
        self.final_pool = tuple(final_pool)
        self.input_bn = _bn(in_channels)
        widths = (in_channels, *_WIDTHS)
        for i in range(1, 5):
            setattr(self, f"conv{i}a", _conv(widths[i - 1], widths[i]))
            setattr(self, f"bn{i}a", _bn(widths[i]))
            if i < 4:
                setattr(self, f"conv{i}b", _conv(widths[i], widths[i]))
                setattr(self, f"bn{i}b", _bn(widths[i]))
        self.embedding_conv = _conv(512, 512)

    def keras_layers(self) -> list[tuple[str, str]]:
        """(module name, 'conv' | 'bn') in the order Keras saves the weighted layers."""
        order = [("input_bn", "bn")]
        for i in range(1, 5):
            order += [(f"conv{i}a", "conv"), (f"bn{i}a", "bn")]
            if i < 4:
                order += [(f"conv{i}b", "conv"), (f"bn{i}b", "bn")]
        return order + [("embedding_conv", "conv")]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """Input BN then the first conv-BN-ReLU: (B, C, H, W) -> (B, 64, H, W)."""
        return F.relu(self.bn1a(self.conv1a(self.input_bn(x))))

    def block1(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`stem` then the second conv of block 1, before its pool: (B, 64, H, W)."""
        x = self.stem(x)  # (B, 64, H, W)
        if self.relu_before_bn_1b:
            return self.bn1b(F.relu(self.conv1b(x)))
        return F.relu(self.bn1b(self.conv1b(x)))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding conv's output before pooling: (B, C, H, W) -> (B, 512, H/8, W/8)."""
        x = F.max_pool2d(self.block1(x), 2, 2, ceil_mode=self.same_pooling)  # (B, 64, H/2, W/2)
        for i in (2, 3):
            x = F.relu(getattr(self, f"bn{i}a")(getattr(self, f"conv{i}a")(x)))
            x = F.relu(getattr(self, f"bn{i}b")(getattr(self, f"conv{i}b")(x)))
            x = F.max_pool2d(x, 2, 2, ceil_mode=self.same_pooling)  # (B, C, H/2^i, W/2^i)
        x = F.relu(self.bn4a(self.conv4a(x)))  # (B, 512, h, w)
        return self.embedding_conv(x)  # (B, 512, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, D) with D = 512 * (h / pool_h) * (w / pool_w)."""
        fmap = self.feature_map(x)  # (B, 512, h, w)
        ph, pw = self.final_pool
        if fmap.shape[-2] % ph or fmap.shape[-1] % pw:
            raise ValueError(f"Expected a feature map divisible by the pool {self.final_pool} "
                             f"but got {tuple(fmap.shape[-2:])}; wrong input size?")
        pooled = F.max_pool2d(fmap, kernel_size=(ph, pw), stride=(ph, pw))  # (B, 512, h', w')
        return pooled.permute(0, 2, 3, 1).flatten(1)  # (B, h'*w'*512), Keras channels-last order


def build_audio_network(input_repr: str = "mel256", embedding_size: int = 512) -> L3Subnetwork:
    """The audio subnetwork taking (B, 1, F, T) log spectrograms from :func:`log_spectrogram`."""
    _check_choice("input_repr", input_repr, INPUT_REPRS)
    _check_choice("embedding_size", embedding_size, AUDIO_EMBEDDING_SIZES)
    return L3Subnetwork(1, AUDIO_FINAL_POOL[input_repr][embedding_size])


def build_image_network(embedding_size: int = 512) -> L3Subnetwork:
    """The image subnetwork taking (B, 3, 224, 224) frames from :func:`preprocess_frames`."""
    _check_choice("embedding_size", embedding_size, IMAGE_EMBEDDING_SIZES)
    return L3Subnetwork(3, IMAGE_FINAL_POOL[embedding_size], relu_before_bn_1b=True,
                        same_pooling=True)


def _check_choice(option: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise AvvpError(f"Expected OpenL3 {option} in {choices} but got {value!r}")


# --------------------------------------------------------------------------------------
# Weights: file names and the Keras .h5 importer
# --------------------------------------------------------------------------------------

_KERAS_NAME = re.compile(r"openl3_(audio|image)_(linear|mel128|mel256)_(music|env)")
_EMBEDDING_LAYER = {"audio": "audio_embedding_layer", "image": "vision_embedding_layer"}
_RELEASE_URL = "https://github.com/marl/openl3/raw/models/"
_RELEASE_VERSION = "v0_4_0"


def weights_filename(net: str, input_repr: str, content_type: str) -> str:
    """``openl3_{audio|image}_{input_repr}_{content_type}.pt`` (the converted state dict)."""
    return f"openl3_{net}_{input_repr}_{content_type}.pt"


def keras_filename(net: str, input_repr: str, content_type: str) -> str:
    """The official release file, e.g. ``openl3_audio_mel256_music-v0_4_0.h5.gz``."""
    return f"openl3_{net}_{input_repr}_{content_type}-{_RELEASE_VERSION}.h5.gz"


def how_to_get(net: str, input_repr: str, content_type: str) -> str:
    """The one-line recipe a missing-weights error ends with."""
    keras = keras_filename(net, input_repr, content_type)
    return (f"download the official Keras weights {keras} from {_RELEASE_URL}{keras} "
            f"(the openl3 package's release) and run `avvp-pipe weights import-openl3 {keras}`")


@dataclass(frozen=True)
class KerasLayer:
    """One weighted layer of a Keras weights file, arrays by short name (kernel, gamma, ...)."""

    name: str
    arrays: Mapping[str, np.ndarray]

    @property
    def kind(self) -> str:
        keys = set(self.arrays)
        if keys == {"kernel", "bias"} and self.arrays["kernel"].ndim == 4:
            return "conv"
        if keys == {"gamma", "beta", "moving_mean", "moving_variance"}:
            return "bn"
        return "other"


def read_keras_layers(h5_path: str | Path) -> tuple[list[KerasLayer], list[str]]:
    """Weighted layers of a Keras h5 file in saved order, and the names of skipped ones.

    Reads either layout: ``model.save_weights`` (layer groups at the root) or ``model.save``
    (under ``model_weights``). Kapre spectrogram layers (pre-0.4 files hold their fixed
    DFT/mel kernels) are skipped, since the front-end is recomputed as preprocessing.
    """
    import h5py

    path = Path(h5_path)
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in root.attrs:
            raise WeightsError(f"{path.name}: expected a Keras weights file (an HDF5 with a "
                               f"'layer_names' attribute) but found none")
        layers, skipped = [], []
        for name in (_text(n) for n in root.attrs["layer_names"]):
            group = root[name]
            weight_names = [_text(w) for w in group.attrs.get("weight_names", [])]
            if not weight_names:
                continue
            if "spectrogram" in name.lower():
                skipped.append(name)
                continue
            try:
                arrays = {_short(w): np.asarray(group[w], dtype=np.float32) for w in weight_names}
            except (KeyError, TypeError, ValueError) as err:
                raise WeightsError(f"{path.name}: layer {name!r} lists weights {weight_names} "
                                   f"that cannot be read as float arrays ({err})") from err
            layers.append(KerasLayer(name, arrays))
    return layers, skipped


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _short(weight_name: str) -> str:
    """'conv2d_1/kernel:0' -> 'kernel'."""
    return weight_name.rsplit("/", 1)[-1].split(":", 1)[0]


def identify_keras_file(path: Path, layers: list[KerasLayer], *, input_repr: str | None = None,
                        content_type: str | None = None) -> tuple[str, str, str]:
    """(net, input_repr, content_type) from the file name, checked against the layers.

    The network (audio/image) also follows from the embedding layer's name; input_repr
    and content_type only from the name (the conv shapes do not depend on them), unless
    given explicitly.
    """
    match = _KERAS_NAME.search(path.name)
    names = {layer.name for layer in layers}
    by_layers = [net for net, layer in _EMBEDDING_LAYER.items() if layer in names]
    net = match.group(1) if match else (by_layers[0] if by_layers else None)
    if net is None:
        raise WeightsError(f"{path.name}: cannot tell audio from image weights; expected a name "
                           f"like openl3_audio_mel256_music.h5 or an audio_embedding_layer/"
                           f"vision_embedding_layer layer")
    if by_layers and by_layers[0] != net:
        raise WeightsError(f"{path.name}: the name says {net} but the layers hold "
                           f"{_EMBEDDING_LAYER[by_layers[0]]}")
    repr_ = input_repr or (match.group(2) if match else None)
    content = content_type or (match.group(3) if match else None)
    if repr_ is None or content is None:
        raise WeightsError(f"{path.name}: expected a name like openl3_{net}_mel256_music.h5 to "
                           f"tell input_repr and content_type; rename it or pass "
                           f"--input-repr and --content-type")
    _check_choice("input_repr", repr_, INPUT_REPRS)
    _check_choice("content_type", content, CONTENT_TYPES)
    return net, repr_, content


def keras_state_dict(model: L3Subnetwork, layers: list[KerasLayer], source: str) -> dict[str, torch.Tensor]:
    """Map Keras layers (in saved order) onto ``model``: HWIO kernels -> OIHW, BN by name."""
    slots = model.keras_layers()
    if len(layers) != len(slots):
        found = ", ".join(layer.name for layer in layers)
        raise WeightsError(f"{source}: expected {len(slots)} weighted layers (8 Conv2D + 8 "
                           f"BatchNormalization) but found {len(layers)}: {found}")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for (module_name, kind), layer in zip(slots, layers):
        if layer.kind != kind:
            raise WeightsError(f"{source}: layer {layer.name!r} holds {sorted(layer.arrays)}; "
                               f"expected a {'Conv2D' if kind == 'conv' else 'BatchNormalization'} "
                               f"layer at this position ({module_name})")
        for key, keras_key, value in _convert(layer, kind):
            target = state[f"{module_name}.{key}"]
            if tuple(value.shape) != tuple(target.shape):
                raise WeightsError(f"{source}: layer {layer.name!r} {keras_key} has shape "
                                   f"{_keras_shape(value, key)}; expected {_keras_shape(target, key)}")
            state[f"{module_name}.{key}"] = value
    return state


#: torch parameter/buffer name <- Keras variable name, per layer kind.
_KERAS_TO_TORCH = {
    "conv": (("weight", "kernel"), ("bias", "bias")),
    "bn": (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
           ("running_var", "moving_variance")),
}


def _convert(layer: KerasLayer, kind: str) -> list[tuple[str, str, torch.Tensor]]:
    """(torch key, Keras key, tensor); conv kernels go HWIO -> OIHW."""
    out = []
    for key, keras_key in _KERAS_TO_TORCH[kind]:
        array = layer.arrays[keras_key]
        if keras_key == "kernel":
            array = array.transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
        out.append((key, keras_key, torch.from_numpy(np.ascontiguousarray(array))))
    return out


def _keras_shape(tensor: torch.Tensor, key: str) -> str:
    """A shape as Keras would print it (HWIO for kernels), for error messages."""
    shape = tuple(tensor.shape)
    if key == "weight" and len(shape) == 4:
        return f"{(shape[2], shape[3], shape[1], shape[0])} (HWIO)"
    return str(shape)


def import_keras_weights(h5_path: str | Path, weights_dir: str | Path | None = None, *,
                         input_repr: str | None = None, content_type: str | None = None,
                         log: Callable[[str], None] | None = None) -> Path:
    """Convert an official OpenL3 Keras weights file to ``<dir>/openl3/openl3_*.pt``.

    Accepts ``.h5`` or the released ``.h5.gz``. The state dict is checked by loading it
    into the torch network (strict), then written atomically. ``log`` receives one line per
    imported layer. Returns the written path.
    """
    path = Path(h5_path).expanduser()
    if not path.is_file():
        raise WeightsError(f"Expected an OpenL3 Keras weights file but {path} does not exist")
    with _plain_h5(path) as h5:
        layers, skipped = read_keras_layers(h5)
    net, repr_, content = identify_keras_file(path, layers, input_repr=input_repr,
                                              content_type=content_type)
    model = build_audio_network(repr_) if net == "audio" else build_image_network()
    state = keras_state_dict(model, layers, path.name)
    model.load_state_dict(state, strict=True)
    out = openl3_weights_dir(weights_dir) / weights_filename(net, repr_, content)
    replaced = out.exists()
    _atomic_torch_save(state, out)
    if log is not None:
        for (module_name, _), layer in zip(model.keras_layers(), layers):
            shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in layer.arrays.items())
            log(f"  {layer.name:<28} -> {module_name:<15} {shapes}")
        for name in skipped:
            log(f"  {name:<28} skipped (Kapre front-end; recomputed as preprocessing)")
        note = " (replaced the previous file)" if replaced else ""
        log(f"imported {len(layers)} layers of {path.name} ({net}, {repr_}, {content}) -> {out}"
            f"{note}; weights identity {_weights.file_identity(out)}")
    return out


@contextmanager
def _plain_h5(path: Path) -> Iterator[Path]:
    """Yield a readable .h5 path for ``path``; a .h5.gz (the release format) is gunzipped
    to a temp file that is removed afterwards."""
    import h5py

    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    tmp: Path | None = None
    try:
        source = path
        if gzipped:
            fd, name = tempfile.mkstemp(suffix=".h5")
            tmp = Path(name)
            try:
                with gzip.open(path, "rb") as src, os.fdopen(fd, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except (OSError, EOFError) as err:
                raise WeightsError(f"{path.name}: expected a gzip-compressed .h5 but "
                                   f"decompressing failed ({err})") from err
            source = tmp
        if not h5py.is_hdf5(source):
            raise WeightsError(f"{path.name}: expected an HDF5 (.h5) Keras weights file "
                               f"but it is not HDF5")
        yield source
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _atomic_torch_save(state: Mapping[str, torch.Tensor], out: Path) -> None:
    atomic_torch_save(dict(state), out)


def openl3_weights_dir(weights_dir: str | Path | None = None) -> Path:
    """Where converted state dicts live: ``<weights_dir>/openl3``, or, without one, the
    ``openl3`` folder of the shared weights cache (``avvp_pipe.extractors.weights``: torch hub's
    ``checkpoints``), so ``extractors list`` and the builders look where the importer wrote."""
    root = Path(weights_dir).expanduser() if weights_dir is not None else _weights.hub_checkpoints_dir()
    return root / "openl3"


# --------------------------------------------------------------------------------------
# Extractors
# --------------------------------------------------------------------------------------

_LICENCE = "MIT (openl3 code and released model weights, MARL / NYU)"
_COMMON_OPTIONS = {"input_repr": "mel256", "content_type": "music", "embedding_size": 512}


def _weights_entry(net: str, input_repr: str, content_type: str) -> dict[str, Any]:
    """A weights entry (extractors.weights format) for the converted state dict."""
    return {
        "library": "openl3 (Keras weights converted by avvp-pipe weights import-openl3)",
        "id": f"openl3 {_RELEASE_VERSION} {net} {input_repr} {content_type}",
        "file": f"openl3/{weights_filename(net, input_repr, content_type)}",
        "keras_file": keras_filename(net, input_repr, content_type),
        "url": None,  # never downloaded: the Keras file must be converted first
    }


AUDIO_SPEC = ExtractorSpec(
    name="openl3_audio",
    modality="audio",
    family="openl3",
    out_frames=CLIP_SECONDS,
    out_dim=512,
    input={
        "sample_rate": SAMPLE_RATE,
        "mono": True,
        "window_s": WINDOW_SAMPLES / SAMPLE_RATE,
        "hop_s": HOP_SAMPLES / SAMPLE_RATE,
        "center": True,
        "stft_hop": 242,
        "db_amin": 1e-10,
        "db_top": 80.0,
    },
    weights=_weights_entry("audio", "mel256", "music"),
    output_layer="audio_embedding_layer (last conv, no BN/ReLU) -> max-pool -> flatten "
                 "(512: global max; 6144: 4x3 grid, channels-last order)",
    requires=("librosa",),  # the mel filterbank; h5py only for import-openl3
    licence=_LICENCE,
    options=dict(_COMMON_OPTIONS),
    description="OpenL3 audio subnetwork (L3-Net, Cramer et al. 2019); 1-s windows every 0.1 s "
                "averaged per second.",
)

IMAGE_SPEC = ExtractorSpec(
    name="openl3_image",
    modality="visual-2d",
    family="openl3",
    out_frames=80,
    out_dim=512,
    input={
        "frames": 80,
        "resize": IMAGE_RESIZE,
        "resize_mode": "shorter_side",
        "crop": IMAGE_SIZE,
        "interpolation": "bilinear",
        "antialias": True,
        "range": (-1.0, 1.0),
    },
    weights=_weights_entry("image", "mel256", "music"),
    output_layer="vision_embedding_layer (last conv, no BN/ReLU) -> max-pool -> flatten "
                 "(512: global max; 8192: 4x4 grid, channels-last order)",
    requires=("torchvision",),
    licence=_LICENCE,
    options=dict(_COMMON_OPTIONS),
    description="OpenL3 image subnetwork (co-trained with the audio net of input_repr); "
                "one embedding per frame.",
)


class _OpenL3Extractor(Extractor):
    """Shared by both nets: the option-dependent output size and config."""

    _net: str  # "audio" | "image": which converted weights file the options name

    def __init__(self, spec: ExtractorSpec, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(spec, model, **kwargs)
        self.embedding_size = int(self.options["embedding_size"])

    @property
    def out_shape(self) -> tuple[int, int]:
        """(T, D): T follows the frame rate (openl3_image at fps=1: 10), D the embedding_size option."""
        return (self.out_frames, self.embedding_size)

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["weights"]["file"] = None if self.random_init else _weights_entry(
            self._net, self.options["input_repr"], self.options["content_type"])["file"]
        return cfg


class OpenL3AudioExtractor(_OpenL3Extractor):
    """Log spectrograms of 96 windows in prepare, the audio net in embed, per-second mean."""

    _net = "audio"
    sampling_rule = ("audio_48k in 1-s windows every 0.1 s, window k centred on k*0.1 s "
                     "(openl3 center=True: 96 windows per 10-s clip, zeros outside the clip); "
                     "each second = mean of the windows centred in it (10, 10, ..., 10, 6)")

    def __init__(self, spec: ExtractorSpec, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(spec, model, **kwargs)
        self.front_end = FRONT_ENDS[self.options["input_repr"]]

    @property
    def items_per_clip(self) -> int:
        return n_windows(CLIP_SECONDS * SAMPLE_RATE)  # 96

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["frontend"] = {**asdict(self.front_end), "window": "hann (periodic)",
                           "mel_norm": "slaney", "fmin": 0.0, "fmax": "sr/2",
                           "db": "10*log10(max(x, amin)) - window max, floor -top_db",
                           "kapre": "0.3 (openl3>=0.4)"}
        return cfg

    def prepare(self, clip: Any) -> torch.Tensor:
        audio = self._clip_audio(clip, "audio_48k", CLIP_SECONDS * SAMPLE_RATE)  # (480000,)
        windows = frame_audio(audio)  # (96, 48000)
        return log_spectrogram(windows, self.front_end)  # (96, 1, F, T)

    def finalize(self, emb: torch.Tensor) -> np.ndarray:
        rows = self._check_emb(emb)  # (96, D)
        second = window_seconds(rows.shape[0])  # (96,) in 0..9
        out = np.stack([rows[second == s].mean(axis=0) for s in range(CLIP_SECONDS)])  # (10, D)
        return out.astype(np.float32)


class OpenL3ImageExtractor(_OpenL3Extractor):
    """Resize/crop/scale in prepare, the image net in embed, one row per frame (base finalize).

    Takes ``fps=1`` like every 2D extractor (decoded frames ``round(linspace(0, 79, 10))``,
    one inside each second). It fits OpenL3's design: the image subnetwork embeds one frame
    on its own (no temporal context, unlike the audio net's 1-s windows), and L3 was trained
    on one frame paired with a 1-s audio window of the same moment (Arandjelovic & Zisserman
    2017; Cramer et al. 2019), so one frame a second is a feature of the kind the network
    learnt, with 1 frame in place of 8 per second. The 80-frame store keeps its key (fps is
    named in config() only away from 8).
    """

    _net = "image"
    sampling_rule = "the 80 decoded frames, one embedding each"
    takes_frame_rate = True  # prepare embeds _clip_frames row by row

    def prepare(self, clip: Any) -> torch.Tensor:
        return preprocess_frames(self._clip_frames(clip))  # (80 | 10, 3, 224, 224)


def _check_options(input_repr: str, content_type: str) -> None:
    _check_choice("input_repr", input_repr, INPUT_REPRS)
    _check_choice("content_type", content_type, CONTENT_TYPES)


def _build_model(spec: ExtractorSpec, net: str, factory: Callable[[], nn.Module], *,
                 weights_dir: Path | None, random_init: bool, input_repr: str,
                 content_type: str) -> tuple[nn.Module, str]:
    """The network with its converted weights (or seeded random ones) and their identity."""
    entry = _weights_entry(net, input_repr, content_type)
    if not random_init:
        status, path = _weights.locate(entry, weights_dir)
        if status != "present":
            raise WeightsError(f"OpenL3 weights {path} are missing (extractor {spec.name!r}); "
                               f"{how_to_get(net, input_repr, content_type)}")
    return _weights.build_model(replace(spec, weights=entry), factory, weights_dir=weights_dir,
                                random_init=random_init)


def build_audio(spec: ExtractorSpec, *, device: torch.device, weights_dir: Path | None,
                random_init: bool, input_repr: str = "mel256", content_type: str = "music",
                embedding_size: int = 512) -> OpenL3AudioExtractor:
    """The ``openl3_audio`` extractor (registry builder)."""
    _check_options(input_repr, content_type)
    _check_choice("embedding_size", embedding_size, AUDIO_EMBEDDING_SIZES)
    model, identity = _build_model(
        spec, "audio", lambda: build_audio_network(input_repr, embedding_size),
        weights_dir=weights_dir, random_init=random_init, input_repr=input_repr,
        content_type=content_type)
    options = {"input_repr": input_repr, "content_type": content_type, "embedding_size": embedding_size}
    return OpenL3AudioExtractor(spec, model, device=device, options=options,
                                random_init=random_init, weights_identity=identity)


def build_image(spec: ExtractorSpec, *, device: torch.device, weights_dir: Path | None,
                random_init: bool, input_repr: str = "mel256", content_type: str = "music",
                embedding_size: int = 512) -> OpenL3ImageExtractor:
    """The ``openl3_image`` extractor (registry builder)."""
    _check_options(input_repr, content_type)
    _check_choice("embedding_size", embedding_size, IMAGE_EMBEDDING_SIZES)
    model, identity = _build_model(
        spec, "image", lambda: build_image_network(embedding_size),
        weights_dir=weights_dir, random_init=random_init, input_repr=input_repr,
        content_type=content_type)
    options = {"input_repr": input_repr, "content_type": content_type, "embedding_size": embedding_size}
    return OpenL3ImageExtractor(spec, model, device=device, options=options,
                                random_init=random_init, weights_identity=identity)


register(AUDIO_SPEC, build_audio)
register(IMAGE_SPEC, build_image)
