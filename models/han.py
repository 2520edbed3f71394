"""HAN, the official AVVP baseline (``MMIL_Net`` of Tian, Li and Xu, ECCV 2020), read top-down.

Why a rewrite: the release mixes (T, B, C) and (B, T, C) layouts and keeps three encoders
that forward never calls. This module computes exactly what the released forward computes
(checked against an independent re-implementation in tests/test_han.py) with batch-first
tensors throughout, and keeps the release's parameter names so its ``MMIL_Net.pt`` loads
unchanged through :func:`load_official_han`.

Data flow (B clips, T = 10 seconds, K = 25 classes, d = 512):

    project   audio (B, T, 128) -> a (B, T, d)
              visual (B, 8T, 2048) frames or (B, T, 2048) per-second means,
              visual_3d (B, T, 512) -> v (B, T, d)          "features before HAN"
    [MTSC]    v <- g(v), the projection head kept in the visual branch
    encode    one HAN layer, same weights for both modalities -> (a, v)
    heads     attentive MMIL pooling -> global_prob, a_prob, v_prob (B, K), frame_prob (B, T, 2, K)

Preprocessing (feature extraction, normalisation, the per-second mean of stored frames) is
not done here: the model takes features as stored, so the same code runs on the released
features and on ours.

Initial weights (issue 14, point 4). ``HAN(config)`` draws its parameters in this module's
order. The release's ``MMIL_Net.__init__`` (nets/net_audiovisual.py of YapengTian/AVVP-ECCV20)
draws them in another, and also builds three encoders that forward never calls, each of
which consumes draws from the global RNG. :func:`official_init_` re-draws every parameter
in the release's order, unused encoders included (built and dropped), so that
``torch.manual_seed(1)`` then ``official_init_(HAN())`` equals the release's
``torch.manual_seed(1); MMIL_Net()`` on every shared key, and leaves the global RNG where the
release leaves it (``train --init-order official``; tested against an independent reading
of that file in tests/test_han.py). The release builds its model on the CPU and then
moves it to CUDA, so the CPU generator decides; what happens after initialisation (CUDA
dropout masks, DataLoader shuffling) is not reproduced: our batch order comes from
``np.random.default_rng((seed, epoch))`` and dropout runs on the device's generator.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avvp_pipe.core.errors import AvvpError, WeightsError

log = logging.getLogger(__name__)

#: Parts of the released state dict that ``MMIL_Net.forward`` never reads: the encoder-level
#: norms of ``hat_encoder`` (its ``norm`` is None) and three encoders built but not called.
UNUSED_OFFICIAL_PREFIXES = (
    "hat_encoder.norm1.",
    "hat_encoder.norm2.",
    "audio_encoder.",
    "visual_encoder.",
    "cmt_encoder.",
)

ArrayOrTensor = TypeVar("ArrayOrTensor", Tensor, np.ndarray)


@dataclass(frozen=True)
class HANConfig:
    """Sizes of HAN; the defaults are the release's (VGGish audio, ResNet-152 + R(2+1)D visual)."""

    audio_dim: int = 128  # VGGish embedding per second
    visual_dim: int = 2048  # ResNet-152 pooled feature per frame (2D stream)
    visual_3d_dim: int | None = 512  # R(2+1)D-18 feature per second; None = no 3D stream
    d_model: int = 512  # width of every projection and of the HAN layer
    ffn: int = 512  # hidden width of the HAN feed-forward block
    heads: int = 1  # attention heads (the release uses 1; not recoverable from the weights)
    dropout: float = 0.1  # residual, feed-forward and attention-weight dropout, as released
    num_classes: int = 25  # LLP event classes
    frames_per_second: int = 8  # 2D frames per second (80 frames per 10-s clip)
    keep_visual_head: bool = False  # MTSC: own the head g and feed g(v) to HAN (seed paper)

    def __post_init__(self) -> None:
        sizes = {
            "audio_dim": self.audio_dim,
            "visual_dim": self.visual_dim,
            "d_model": self.d_model,
            "ffn": self.ffn,
            "heads": self.heads,
            "num_classes": self.num_classes,
            "frames_per_second": self.frames_per_second,
        }
        if self.visual_3d_dim is not None:
            sizes["visual_3d_dim"] = self.visual_3d_dim
        for name, value in sizes.items():
            if not isinstance(value, int) or value < 1:
                raise AvvpError(f"HANConfig.{name}: expected a positive int but got {value!r}")
        if self.d_model % self.heads:
            raise AvvpError(
                f"HANConfig.heads: expected a divisor of d_model={self.d_model} but got {self.heads}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise AvvpError(f"HANConfig.dropout: expected a value in [0, 1) but got {self.dropout}")


def per_second_mean(frames: ArrayOrTensor, frames_per_second: int = 8) -> ArrayOrTensor:
    """Average each second's frames: (..., N, D) -> (..., N / fps, D), same array type.

    fc_v is linear, so HAN on per-second means equals HAN on the frames (the release
    projects 80 frames, then averages runs of 8). Training keeps the 2D stream as
    (10, 2048) per clip instead of (80, 2048): 8x less memory and fc_v work.
    """
    if frames.ndim < 2:
        raise AvvpError(f"per_second_mean: expected frames shaped (..., N, D) but got {tuple(frames.shape)}")
    n, dim = frames.shape[-2], frames.shape[-1]
    if n % frames_per_second:
        raise AvvpError(
            f"per_second_mean: expected a frame count divisible by {frames_per_second} but got {n}"
        )
    grouped = (*frames.shape[:-2], n // frames_per_second, frames_per_second, dim)
    if isinstance(frames, np.ndarray):
        return frames.reshape(grouped).mean(axis=-2)  # (..., N/fps, D)
    return frames.reshape(grouped).mean(dim=-2)  # (..., N/fps, D)


class HANLayer(nn.Module):
    """The release's HANLayer, batch-first: self- and cross-modal attention, then a feed-forward block.

    Module names (self_attn, cm_attn, linear1, linear2, norm1, norm2) are the release's, so
    its keys load as they are. Dropout sits where the release has it: dropout11 on the
    cross-modal attention, dropout12 on self-attention, ``dropout`` inside the feed-forward
    block, dropout2 after linear2, and attention-weight dropout inside both attentions.
    """

    def __init__(self, d_model: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        # batch_first changes only the layout the module expects, not its parameters or keys.
        self.self_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.cm_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.dropout11 = nn.Dropout(dropout)
        self.dropout12 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn, d_model)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, query: Tensor, other: Tensor) -> Tensor:
        """Update ``query`` (B, T, d) from itself and from the ``other`` modality (B, T, d)."""
        cross = self.cm_attn(query, other, other, need_weights=False)[0]  # (B, T, d)
        own = self.self_attn(query, query, query, need_weights=False)[0]  # (B, T, d)
        x = self.norm1(query + self.dropout11(cross) + self.dropout12(own))  # (B, T, d)
        hidden = self.dropout(F.relu(self.linear1(x)))  # (B, T, ffn)
        return self.norm2(x + self.dropout2(self.linear2(hidden)))  # (B, T, d)


class HANEncoder(nn.Module):
    """Holds the single HAN layer at ``layers.0``, where the release keeps it."""

    def __init__(self, layer: HANLayer) -> None:
        super().__init__()
        self.layers = nn.ModuleList([layer])


class HAN(nn.Module):
    """Hybrid Attention Network with attentive MMIL pooling (the release's ``MMIL_Net``)."""

    def __init__(self, config: HANConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or HANConfig()
        d = config.d_model
        # Input projections, no activations (as released).
        self.fc_a = nn.Linear(config.audio_dim, d)
        self.fc_v = nn.Linear(config.visual_dim, d)
        self.fc_st: nn.Linear | None = None
        self.fc_fusion: nn.Linear | None = None
        if config.visual_3d_dim is not None:
            self.fc_st = nn.Linear(config.visual_3d_dim, d)
            self.fc_fusion = nn.Linear(2 * d, d)
        # MTSC's projection head g; the seed paper keeps it in the visual branch after training.
        self.visual_head: nn.Linear | None = nn.Linear(d, d) if config.keep_visual_head else None
        self.hat_encoder = HANEncoder(HANLayer(d, config.heads, config.ffn, config.dropout))
        # Attentive MMIL pooling heads.
        self.fc_prob = nn.Linear(d, config.num_classes)
        self.fc_frame_att = nn.Linear(d, config.num_classes)
        self.fc_av_att = nn.Linear(d, config.num_classes)

    @property
    def mtsc_head(self) -> nn.Linear | None:
        """The head g that the MTSC loss uses: the same module as ``visual_head`` (None without MTSC).

        A property, not a second registered module, so g has one set of weights and one
        state-dict entry (``visual_head.*``).
        """
        return self.visual_head

    def forward(
        self, audio: Tensor, visual: Tensor, visual_3d: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Return (global_prob (B, K), a_prob (B, K), v_prob (B, K), frame_prob (B, T, 2, K)).

        audio (B, T, audio_dim); visual (B, T * fps, visual_dim) frames or (B, T, visual_dim)
        per-second means; visual_3d (B, T, visual_3d_dim), or None when the config has no 3D stream.
        """
        a, v = self.project(audio, visual, visual_3d)  # (B, T, d) each
        return self.forward_projected(a, v)

    def project(
        self, audio: Tensor, visual: Tensor, visual_3d: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Input projections: the features before HAN, a and v, each (B, T, d). MTSC reads these."""
        self._check_inputs(audio, visual, visual_3d)
        seconds = audio.shape[1]
        a = self.fc_a(audio)  # (B, T, d)
        v = self.fc_v(visual)  # (B, T * fps, d) or (B, T, d)
        if v.shape[1] != seconds:
            # Project, then average, in the release's order (equal to the reverse: fc_v is linear).
            v = per_second_mean(v, self.config.frames_per_second)  # (B, T, d)
        if self.fc_st is not None and self.fc_fusion is not None:
            v3 = self.fc_st(visual_3d)  # (B, T, d)
            v = self.fc_fusion(torch.cat([v, v3], dim=-1))  # (B, T, 2d) -> (B, T, d)
        return a, v

    def forward_projected(self, a: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Everything after :meth:`project`; lets training reuse a and v for the MTSC loss."""
        if self.visual_head is not None:
            v = self.visual_head(v)  # (B, T, d): g(v) enters HAN
        a, v = self.encode(a, v)  # (B, T, d) each
        return self.heads(a, v)

    def encode(self, a: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """One HAN layer, the same weights for both modalities; each attends to the other's input."""
        layer = self.hat_encoder.layers[0]
        return layer(a, v), layer(v, a)  # (B, T, d) each

    def heads(self, a: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Attentive MMIL pooling over seconds and modalities."""
        x = torch.stack([a, v], dim=2)  # (B, T, 2, d)
        frame_prob = torch.sigmoid(self.fc_prob(x))  # (B, T, 2, K)
        frame_att = torch.softmax(self.fc_frame_att(x), dim=1)  # (B, T, 2, K), over seconds
        av_att = torch.softmax(self.fc_av_att(x), dim=2)  # (B, T, 2, K), over modalities
        temporal = frame_att * frame_prob  # (B, T, 2, K)
        global_prob = (temporal * av_att).sum(dim=(1, 2))  # (B, K)
        a_prob = temporal[:, :, 0].sum(dim=1)  # (B, K)
        v_prob = temporal[:, :, 1].sum(dim=1)  # (B, K)
        return global_prob, a_prob, v_prob, frame_prob

    def _check_inputs(self, audio: Tensor, visual: Tensor, visual_3d: Tensor | None) -> None:
        """Raise on wrong feature shapes: a store built with other extractors shows up here."""
        cfg = self.config
        if audio.ndim != 3 or audio.shape[-1] != cfg.audio_dim:
            raise AvvpError(f"HAN audio: expected (B, T, {cfg.audio_dim}) but got {tuple(audio.shape)}")
        batch, seconds = audio.shape[:2]
        frames = seconds * cfg.frames_per_second
        if (
            visual.ndim != 3
            or visual.shape[0] != batch
            or visual.shape[1] not in (seconds, frames)
            or visual.shape[-1] != cfg.visual_dim
        ):
            raise AvvpError(
                f"HAN visual: expected ({batch}, {frames} or {seconds}, {cfg.visual_dim}) "
                f"but got {tuple(visual.shape)}"
            )
        if cfg.visual_3d_dim is None:
            if visual_3d is not None:
                raise AvvpError("HAN visual_3d: expected None (config has no 3D stream) but got a tensor")
            return
        expected = (batch, seconds, cfg.visual_3d_dim)
        if visual_3d is None or tuple(visual_3d.shape) != expected:
            got = None if visual_3d is None else tuple(visual_3d.shape)
            raise AvvpError(f"HAN visual_3d: expected {expected} but got {got}")


def official_init_(model: HAN) -> HAN:
    """Re-draw ``model``'s parameters from the global RNG in ``MMIL_Net.__init__``'s order; returns it.

    The release's order: fc_prob, fc_frame_att, fc_av_att, fc_a, fc_v, fc_st, fc_fusion, then
    audio_encoder and visual_encoder (one nn.TransformerEncoderLayer each, 1 head, FFN 512),
    cmt_encoder (a CMTLayer: one attention, linear1, linear2) and hat_encoder (the HAN
    layer: self_attn, cm_attn, linear1, linear2). The three middle encoders are never used
    by forward; they are built here only for their draws. Deep copies (``_get_clones``) and
    LayerNorms draw nothing. Parts the release lacks come last: fc_st/fc_fusion are skipped
    without a 3D stream, and MTSC's visual_head is drawn after everything.
    """
    cfg = model.config
    with torch.no_grad():
        for linear in (model.fc_prob, model.fc_frame_att, model.fc_av_att, model.fc_a, model.fc_v):
            linear.reset_parameters()
        if model.fc_st is not None and model.fc_fusion is not None:
            model.fc_st.reset_parameters()
            model.fc_fusion.reset_parameters()
        _draw_unused_encoders(cfg)
        layer = model.hat_encoder.layers[0]
        _redraw_attention(layer.self_attn)
        _redraw_attention(layer.cm_attn)
        layer.linear1.reset_parameters()
        layer.linear2.reset_parameters()
        if model.visual_head is not None:
            model.visual_head.reset_parameters()
    return model


def _draw_unused_encoders(cfg: HANConfig) -> None:
    """Build (and drop) audio_encoder, visual_encoder and cmt_encoder for their RNG draws only."""
    for _ in ("audio_encoder", "visual_encoder"):
        nn.TransformerEncoderLayer(cfg.d_model, nhead=1, dim_feedforward=cfg.ffn)
    nn.MultiheadAttention(cfg.d_model, 1)  # cmt_encoder's CMTLayer: self_attn, linear1, linear2
    nn.Linear(cfg.d_model, cfg.ffn)
    nn.Linear(cfg.ffn, cfg.d_model)


def _redraw_attention(attention: nn.MultiheadAttention) -> None:
    """Draw as nn.MultiheadAttention's constructor does: out_proj (weight, bias), then in_proj.

    The constructor builds out_proj as a Linear (two draws), then xavier-initialises the packed
    in-projection and zeroes both biases: the out_proj bias draw is made and then overwritten.
    """
    attention.out_proj.reset_parameters()
    nn.init.xavier_uniform_(attention.in_proj_weight)
    nn.init.zeros_(attention.in_proj_bias)
    nn.init.zeros_(attention.out_proj.bias)


def load_official_han(
    path_or_state_dict: str | PathLike[str] | Mapping[str, Tensor], *, strict: bool = True
) -> HAN:
    """Build a HAN from the released ``MMIL_Net.pt`` (or a state dict in its layout), in eval mode.

    Sizes are read from the weights (fc_a, fc_v, fc_st, linear1, fc_prob); heads=1 as released.
    A ``module.`` prefix (DataParallel) is stripped. Keys forward never reads
    (:data:`UNUSED_OFFICIAL_PREFIXES`) are dropped with a log note. ``visual_head.*`` keys
    (our MTSC checkpoints) turn on ``keep_visual_head``. Any other unexpected or missing key
    raises :class:`AvvpError` naming it; with ``strict=False`` they are logged as warnings
    instead and missing parameters keep their random initialisation. A shape mismatch
    always raises.
    """
    source, state = _read_state_dict(path_or_state_dict)
    state = _drop_unused(_strip_prefix(state, "module."), source)
    model = HAN(_infer_config(state, source))
    _check_keys(model, state, source, strict=strict)
    model.load_state_dict(state, strict=False)  # key sets already checked above
    return model.eval()


def _read_state_dict(
    path_or_state_dict: str | PathLike[str] | Mapping[str, Tensor],
) -> tuple[str, dict[str, Tensor]]:
    """Return (a name for messages, the state dict); reject anything that is not name -> tensor."""
    if isinstance(path_or_state_dict, Mapping):
        source, state = "state dict", path_or_state_dict
    else:
        path = Path(path_or_state_dict)
        source = str(path)
        if not path.is_file():
            raise WeightsError(f"{path}: expected a HAN checkpoint file but none exists")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for a bad file
            raise AvvpError(
                f"{path}: expected a torch.save'd state dict but it cannot be read ({err})"
            ) from err
        if not isinstance(state, Mapping):
            raise AvvpError(f"{path}: expected a state dict (name -> tensor) but got {type(state).__name__}")
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise AvvpError(f"{source}: expected a tensor at key '{key}' but got {type(value).__name__}")
    return source, dict(state)


def _strip_prefix(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Strip a DataParallel prefix when every key carries it."""
    if state and all(key.startswith(prefix) for key in state):
        return {key[len(prefix):]: value for key, value in state.items()}
    return state


def _drop_unused(state: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """Drop the released keys that forward never reads, saying which prefixes were dropped."""
    dropped = [p for p in UNUSED_OFFICIAL_PREFIXES if any(k.startswith(p) for k in state)]
    if dropped:
        prefixes = ", ".join(f"{p}*" for p in dropped)
        log.info("%s: ignoring keys never used by MMIL_Net.forward: %s", source, prefixes)
    return {k: v for k, v in state.items() if not k.startswith(UNUSED_OFFICIAL_PREFIXES)}


def _infer_config(state: dict[str, Tensor], source: str) -> HANConfig:
    """Read the sizes from weight shapes, so non-default extractors' checkpoints load too."""

    def shape(key: str) -> torch.Size:
        if key not in state:
            raise AvvpError(f"{source}: missing key '{key}', needed to infer HAN's sizes")
        if state[key].ndim != 2:
            got = tuple(state[key].shape)
            raise AvvpError(f"{source}: expected a 2-d weight at '{key}' but got shape {got}")
        return state[key].shape

    d_model, audio_dim = shape("fc_a.weight")
    return HANConfig(
        audio_dim=audio_dim,
        visual_dim=shape("fc_v.weight")[1],
        visual_3d_dim=shape("fc_st.weight")[1] if "fc_st.weight" in state else None,
        d_model=d_model,
        ffn=shape("hat_encoder.layers.0.linear1.weight")[0],
        num_classes=shape("fc_prob.weight")[0],
        keep_visual_head="visual_head.weight" in state,
    )


def _check_keys(model: HAN, state: dict[str, Tensor], source: str, *, strict: bool) -> None:
    """Raise (strict) or warn on unexpected / missing keys; always raise on a shape mismatch."""
    expected = model.state_dict()
    for key in state.keys() & expected.keys():
        if state[key].shape != expected[key].shape:
            raise AvvpError(
                f"{source}: expected shape {tuple(expected[key].shape)} at key '{key}' "
                f"but got {tuple(state[key].shape)}"
            )
    unexpected = sorted(state.keys() - expected.keys())
    missing = sorted(expected.keys() - state.keys())
    problems = [f"unexpected key '{k}'" for k in unexpected] + [f"missing key '{k}'" for k in missing]
    if not problems:
        return
    message = f"{source}: not a HAN (MMIL_Net) state dict: " + "; ".join(problems)
    if strict:
        raise AvvpError(message)
    log.warning("%s (strict=False: unexpected keys ignored, missing ones left at random init)", message)
