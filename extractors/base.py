"""The :class:`Extractor` contract shared by every family.

An extractor is split in three so the pipeline can overlap work:

- ``prepare(clip)`` runs in decode workers on CPU: all preprocessing (resize, crop,
  normalise, log-mel), returning ``(n_items, *item_shape)`` float32. Models never normalise
  their own inputs (timm's rule), so the exact recipe is visible and testable.
- ``embed(items)`` runs the network on a batch that may mix items from several clips.
- ``finalize(emb)`` turns one clip's ``(n_items, D)`` into its ``(T, D)`` float32 array.

``config()`` lists everything that changes the numbers; the cache hashes it into the store
key, so a new option, weights file or preprocessing rule never reuses stale features.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from avvp_pipe.core.io import jsonable
from avvp_pipe.extractors.registry import ExtractorSpec
from avvp_pipe.extractors.weights import RANDOM_INIT
from avvp_pipe.core.errors import AvvpError, ClipError

#: Bump when the meaning of config() fields changes, so old store keys stop matching.
CONFIG_VERSION = 1
#: Frames per second a 2D extractor embeds: 8, the 80 decoded frames (the official features,
#: LSLD), or 1, one frame a second (VALOR); see preprocess.frame_positions for which frame.
FRAME_RATES = (8, 1)
DECODED_FPS = 8
#: Seconds in an LLP clip: the rows of every audio and 3D store.
SECONDS_PER_CLIP = 10


def resolve_options(spec: ExtractorSpec, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults from ``spec.options`` updated by ``overrides``; unknown names or types raise.

    Type checks follow the default's type (a bool option wants a bool, not 1) because the
    resolved options go into the cache key: ``pca=1`` and ``pca=True`` must not be two keys.
    """
    resolved = dict(spec.options)
    frame_rate = spec.modality == "visual-2d" and "fps" in overrides
    for key, value in overrides.items():
        if key == "fps" and frame_rate:
            resolved["fps"] = check_frame_rate(spec, value)
            continue
        if key not in resolved:
            known = ", ".join(sorted(resolved)) or "none"
            also = "; every 2D extractor also takes fps (8 or 1)" if spec.modality == "visual-2d" else ""
            raise AvvpError(f"Unknown option {key!r} for extractor {spec.name!r}; expected one of: {known}{also}")
        default = resolved[key]
        if default is not None and not _same_kind(default, value):
            raise AvvpError(f"Option {key!r} of extractor {spec.name!r}: expected "
                            f"{type(default).__name__} but got {value!r}")
        resolved[key] = value
    return resolved


def check_frame_rate(spec: ExtractorSpec, fps: Any) -> int:
    """``fps`` of a 2D extractor: 8 (the 80 decoded frames) or 1 (one frame a second, VALOR)."""
    if isinstance(fps, bool) or fps not in FRAME_RATES:
        raise AvvpError(f"Option 'fps' of extractor {spec.name!r}: expected one of "
                        f"{', '.join(map(str, FRAME_RATES))} but got {fps!r}")
    return int(fps)


def _same_kind(default: Any, value: Any) -> bool:
    """bool is not int here; an int is accepted where a float is the default."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


class Extractor:
    """One built extractor: a spec, resolved options and a frozen eval-mode model on a device.

    Subclasses implement :meth:`prepare` and, when the network's output is not already the
    feature, :meth:`forward`; :meth:`finalize` defaults to "one item per output frame".
    """

    #: Which decoded frames/samples become items, in words; part of config().
    sampling_rule: ClassVar[str] = ""
    #: Whether this class honours the ``fps`` option (its items are ``_clip_frames`` rows).
    takes_frame_rate: ClassVar[bool] = False
    #: Frames per second embedded; only 2D extractors that take a frame rate change it.
    fps: int = DECODED_FPS

    def __init__(
        self,
        spec: ExtractorSpec,
        model: torch.nn.Module,
        *,
        device: str | torch.device = "cpu",
        options: Mapping[str, Any] | None = None,
        random_init: bool = False,
        weights_identity: str,
    ) -> None:
        if random_init != weights_identity.startswith(RANDOM_INIT):
            raise ValueError(f"{spec.name}: random_init={random_init} but weights_identity={weights_identity!r}")
        self.spec = spec
        self.options = resolve_options(spec, options or {})
        self.device = torch.device(device)
        self.random_init = random_init
        self.weights_identity = weights_identity  # builders pass RANDOM_INIT (+ extras) when random
        self.model = model.eval().requires_grad_(False).to(self.device)

    # -- shape -------------------------------------------------------------------------
    @property
    def out_frames(self) -> int:
        """T of ``finalize``: the spec's, or 10 for a 2D extractor at one frame a second."""
        return self.spec.out_frames * self.fps // DECODED_FPS

    @property
    def items_per_clip(self) -> int:
        """Rows ``prepare`` returns per clip (and ``embed`` returns for them)."""
        return self.out_frames

    @property
    def out_shape(self) -> tuple[int, int]:
        """(T, D) of ``finalize`` for these options."""
        return (self.out_frames, self.spec.out_dim)

    @property
    def sampling(self) -> str:
        """The sampling rule in words (config()); at 1 fps it names the frames kept."""
        if self.fps == DECODED_FPS:
            return self.sampling_rule
        from avvp_pipe.extractors.preprocess import frame_positions

        kept = frame_positions(self.fps, int(self.spec.input["frames"]))
        return (f"{self.sampling_rule}; at {self.fps} fps only decoded frames {kept.tolist()} "
                "(np.round(np.linspace(0, 79, 10)): one frame inside each second, VALOR's choice)")

    def use_frame_rate(self, fps: int) -> None:
        """Embed ``fps`` frames a second (registry.create calls it for the ``fps`` option).

        Refused for a class whose items are not the decoded frames one by one: its shapes
        would no longer follow the rate.
        """
        fps = check_frame_rate(self.spec, fps)
        if fps != DECODED_FPS and not self.takes_frame_rate:
            raise AvvpError(f"Extractor {self.spec.name!r} does not take the fps option "
                            f"(only {DECODED_FPS}); its items are not single decoded frames")
        self.fps = fps

    @property
    def embed_dim(self) -> int:
        """Width of ``embed``'s rows (D of out_shape unless finalize changes it)."""
        return self.out_shape[1]

    # -- identity ----------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Everything that changes the numbers, JSON-serialisable, in a fixed key order."""
        cfg = {
            "config_version": CONFIG_VERSION,
            "name": self.spec.name,
            "family": self.spec.family,
            "modality": self.spec.modality,
            "options": dict(sorted(self.options.items())),
            "input": dict(sorted(self.spec.input.items())),
            "sampling": self.sampling,
            "weights": {
                "identity": self.weights_identity,
                "file": None if self.random_init else self.spec.weights.get("file"),
            },
            "output_layer": self.spec.output_layer,
            "out_shape": list(self.out_shape),
        }
        if self.fps != DECODED_FPS:  # absent at 8 fps, so 80-frame stores keep the keys they had
            cfg["fps"] = self.fps
        cfg = jsonable(cfg)
        json.dumps(cfg)  # fail here, not in the cache, if a spec holds something odd
        return cfg

    # -- the three stages --------------------------------------------------------------
    def prepare(self, clip: Any) -> torch.Tensor:
        """CPU float32 ``(n_items, *item_shape)`` for one DecodedClip; all preprocessing here."""
        raise NotImplementedError

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """The network on prepared items; subclasses change memory layout or pick outputs."""
        return self.model(items)

    def embed(self, items: torch.Tensor) -> torch.Tensor:
        """``(n, *item_shape)`` on device -> ``(n, D)`` float32; no preprocessing, no grad."""
        with torch.inference_mode():
            out = self.forward(items)  # (n, D), bf16/fp16 under the caller's autocast
        return out.reshape(out.shape[0], -1).float()

    def finalize(self, emb: torch.Tensor) -> np.ndarray:
        """One clip's ``(items_per_clip, D)`` -> ``(T, D)`` float32 numpy (here: unchanged)."""
        return self._check_emb(emb)

    # -- helpers for subclasses ----------------------------------------------------------
    def _check_emb(self, emb: torch.Tensor) -> np.ndarray:
        """``emb`` as a float32 numpy array, after checking it is one whole clip's rows."""
        expected = (self.items_per_clip, self.embed_dim)
        if tuple(emb.shape) != expected:
            raise AvvpError(f"{self.spec.name}.finalize: expected embeddings of shape {expected} "
                            f"(one clip) but got {tuple(emb.shape)}")
        return emb.detach().float().cpu().numpy()

    def _clip_frames(self, clip: Any) -> torch.Tensor:
        """``clip.frames`` as a uint8 ``(N, 3, H, W)`` tensor, checking the frame count."""
        frames = clip.frames
        if frames is None:
            raise ClipError(f"Clip {getattr(clip, 'clip_id', '?')}: {self.spec.name} needs video frames but the "
                            f"clip has no video stream")
        n_expected = int(self.spec.input["frames"])
        shape = tuple(getattr(frames, "shape", ()))
        if len(shape) != 4 or shape[0] != n_expected or shape[-1] != 3:
            raise ClipError(f"Clip {getattr(clip, 'clip_id', '?')}: {self.spec.name} expected frames "
                            f"of shape ({n_expected}, H, W, 3) but got {shape}")
        with warnings.catch_warnings():  # read-only decoder arrays are fine: nothing writes to them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            tensor = torch.as_tensor(np.asarray(frames))
        if tensor.dtype != torch.uint8:
            raise ClipError(f"Clip {getattr(clip, 'clip_id', '?')}: {self.spec.name} expected uint8 "
                            f"RGB frames but got {tensor.dtype}")
        if self.fps != DECODED_FPS:
            from avvp_pipe.extractors.preprocess import frame_positions

            tensor = tensor[torch.from_numpy(frame_positions(self.fps, n_expected))]  # (10, H, W, 3)
        return tensor.permute(0, 3, 1, 2)  # (N, 3, H, W), a view: no copy

    def _clip_audio(self, clip: Any, attr: str, n_samples: int) -> np.ndarray:
        """``clip.<attr>`` as float32 ``(n_samples,)``; ClipError when absent or the wrong length."""
        audio = getattr(clip, attr, None)
        clip_id = getattr(clip, "clip_id", "?")
        if audio is None:
            raise ClipError(f"Clip {clip_id}: {self.spec.name} needs audio but the clip has none ({attr} is None)")
        audio = np.asarray(audio, dtype=np.float32)
        if audio.shape != (n_samples,):
            raise ClipError(f"Clip {clip_id}: {self.spec.name} expected {attr} of shape ({n_samples},) "
                            f"but got {audio.shape}")
        return audio

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.spec.name!r}, device={self.device}, "
                f"weights={self.weights_identity!r}, options={self.options})")


class PerSecondModes:
    """Mixin for audio extractors with ``mode=windows`` (each second alone: 10 items a clip)
    or ``mode=clip`` (the whole clip as one item whose embedding holds all 10 seconds)."""

    @property
    def items_per_clip(self) -> int:
        return SECONDS_PER_CLIP if self.options["mode"] == "windows" else 1

    @property
    def embed_dim(self) -> int:
        return self.spec.out_dim * (1 if self.options["mode"] == "windows" else SECONDS_PER_CLIP)

