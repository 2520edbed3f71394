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


def resolve_options(spec: ExtractorSpec, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults from ``spec.options`` updated by ``overrides``; unknown names or types raise.

    Type checks follow the default's type (a bool option wants a bool, not 1) because the
    resolved options go into the cache key: ``pca=1`` and ``pca=True`` must not be two keys.
    """
    resolved = dict(spec.options)
    for key, value in overrides.items():
        if key not in resolved:
            known = ", ".join(sorted(resolved)) or "none"
            raise AvvpError(f"Unknown option {key!r} for extractor {spec.name!r}; expected one of: {known}")
        default = resolved[key]
        if default is not None and not _same_kind(default, value):
            raise AvvpError(f"Option {key!r} of extractor {spec.name!r}: expected "
                            f"{type(default).__name__} but got {value!r}")
        resolved[key] = value
    return resolved


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
    def items_per_clip(self) -> int:
        """Rows ``prepare`` returns per clip (and ``embed`` returns for them)."""
        return self.spec.out_frames

    @property
    def out_shape(self) -> tuple[int, int]:
        """(T, D) of ``finalize`` for these options."""
        return (self.spec.out_frames, self.spec.out_dim)

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
            "sampling": self.sampling_rule,
            "weights": {
                "identity": self.weights_identity,
                "file": None if self.random_init else self.spec.weights.get("file"),
            },
            "output_layer": self.spec.output_layer,
            "out_shape": list(self.out_shape),
        }
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
