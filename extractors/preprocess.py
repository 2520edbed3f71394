"""Preprocessing recipes, driven by the data in ``ExtractorSpec.input``.

Images: torchvision.transforms.v2.functional on the whole uint8 ``(N, 3, H, W)`` batch (no
PIL per frame). Resizing uint8 with ``antialias=True`` follows PIL's bilinear filter, so it
reproduces the official ``Resize(256)/CenterCrop(224)/ToTensor/Normalize`` on PIL images to
within one uint8 level on a small fraction of pixels (tests/test_extractors.py measures it).

Audio: the VGGish log-mel recipe, computed by torchvggish's own ``mel_features`` (the port
of the reference implementation) so the numbers are the reference ones by construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def _interpolation(name: str):
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(name.lower())


def image_batch(frames: torch.Tensor, spec_input: Mapping[str, Any]) -> torch.Tensor:
    """uint8 ``(N, 3, H, W)`` -> float32 ``(N, 3, h, w)``: resize, centre-crop, [0, 1], normalise.

    ``resize_mode`` "shorter_side" scales the shorter side to ``resize`` keeping the aspect
    (torchvision ``Resize(int)``); "exact" resizes to ``resize`` = (h, w), aspect not kept.
    ``crop`` None means no crop.
    """
    import torchvision.transforms.v2.functional as F

    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"Expected uint8 frames of shape (N, 3, H, W) but got {frames.dtype} {tuple(frames.shape)}")
    mode = spec_input["resize_mode"]
    if mode == "shorter_side":
        size = [int(spec_input["resize"])]
    elif mode == "exact":
        size = [int(s) for s in spec_input["resize"]]
    else:
        raise ValueError(f"Expected resize_mode 'shorter_side' or 'exact' but got {mode!r}")
    x = F.resize(frames, size, interpolation=_interpolation(spec_input["interpolation"]),
                 antialias=bool(spec_input.get("antialias", True)))  # (N, 3, h', w') uint8
    if spec_input.get("crop"):
        x = F.center_crop(x, [int(spec_input["crop"])] * 2)  # (N, 3, S, S)
    x = F.to_dtype(x, torch.float32, scale=True)  # [0, 1], as ToTensor
    lo, hi = spec_input.get("range", (0.0, 1.0))
    if (lo, hi) != (0.0, 1.0):  # e.g. caffe-style models that expect [0, 255]
        x = x * (hi - lo) + lo
    return F.normalize(x, list(spec_input["mean"]), list(spec_input["std"]))  # (N, 3, S, S)


def frame_positions(fps: int, n_frames: int = 80, seconds: int = 10) -> np.ndarray:
    """Which of the ``n_frames`` decoded frames (8 fps) a 2D extractor embeds at ``fps``.

    8: all of them. 1: ``np.round(np.linspace(0, n_frames - 1, seconds))`` = frames 0, 9, 18,
    26, 35, 44, 53, 61, 70, 79. That is VALOR's rule (utils/clip_preprocess.py: 10 of the
    ``ffmpeg -r 8`` JPEGs, equally spaced), so 1-fps features reproduce the CLIP features
    VALOR, MM-CSE and others train on: the same images whenever a clip has 80 JPEGs, at most
    one JPEG (1/8 s) apart when it has 81-82. Each kept frame lies inside its own second k
    (frames 8k..8k+7), drifting from the start of second 0 to the end of second 9.
    """
    if fps == n_frames // seconds:
        return np.arange(n_frames)
    if fps != 1:
        raise ValueError(f"Expected fps {n_frames // seconds} or 1 but got {fps}")
    return np.round(np.linspace(0, n_frames - 1, seconds)).astype(np.int64)


def vggish_examples(audio: np.ndarray, spec_input: Mapping[str, Any]) -> torch.Tensor:
    """16 kHz mono ``(pieces * sr,)`` -> float32 ``(pieces, 1, 96, 64)`` log-mel examples.

    The official LLP features cut the clip into 1-s pieces and take each piece's single
    0.96-s example (frames 0..95 of the piece's 98). That is NOT torchvggish's whole-clip
    framing, whose examples start every 0.96 s and drift 0.04 s per second against the
    labels' seconds.
    """
    from torchvggish import mel_features

    sr = int(spec_input["sample_rate"])
    pieces = int(spec_input["pieces"])
    piece_len = int(round(spec_input["piece_s"] * sr))
    n_frames = int(round(spec_input["example_s"] / spec_input["hop_s"]))  # 96
    if audio.shape != (pieces * piece_len,):
        raise ValueError(f"Expected audio of shape ({pieces * piece_len},) but got {audio.shape}")
    examples = []
    for piece in audio.astype(np.float64).reshape(pieces, piece_len):  # (10, 16000)
        log_mel = mel_features.log_mel_spectrogram(
            piece,
            audio_sample_rate=sr,
            log_offset=spec_input["log_offset"],
            window_length_secs=spec_input["window_s"],
            hop_length_secs=spec_input["hop_s"],
            num_mel_bins=int(spec_input["n_mels"]),
            lower_edge_hertz=spec_input["fmin"],
            upper_edge_hertz=spec_input["fmax"],
        )  # (98, 64)
        if log_mel.shape[0] < n_frames:
            raise ValueError(f"Expected at least {n_frames} STFT frames per piece but got {log_mel.shape[0]}")
        examples.append(log_mel[:n_frames])  # (96, 64)
    return torch.from_numpy(np.stack(examples)).float()[:, None]  # (10, 1, 96, 64)
