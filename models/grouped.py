"""HAN's forward for P pairings at once, on stacked weights: grouped matmuls (torch.baddbmm).

Why not ``vmap(functional_call(HAN))``: it computes the same numbers, but vmap's batching
rule for a Linear whose weight is batched falls back to a broadcast matmul when the input is
not contiguous (nn.MultiheadAttention's batch_first transposes), which expands the weight
over the time axis and materialises a weight gradient per second: measured 17x slower than
training the pairings one by one on CPU. Written out with one ``baddbmm`` per Linear, the
pairing axis becomes the bmm batch axis and the work is exactly P models' worth.

Parameters are a dict ``name -> (P, *shape)`` keyed as ``HAN.named_parameters()`` (prefixed
``model.``, plus ``head.`` for a separate MTSC head). The math is models/han.py's, line for
line; tests/test_select.py checks the two agree (forward and a whole training run).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avvp_pipe.models.han import HANConfig

Params = Mapping[str, Tensor]


def linear(x: Tensor, params: Params, name: str) -> Tensor:
    """Per-pairing Linear: x (P, ..., in) with weight (P, out, in), bias (P, out) -> (P, ..., out)."""
    weight, bias = params[f"{name}.weight"], params[f"{name}.bias"]
    flat = x.reshape(x.shape[0], -1, x.shape[-1])  # (P, N, in)
    out = torch.baddbmm(bias.unsqueeze(1), flat, weight.transpose(1, 2))  # (P, N, out)
    return out.reshape(*x.shape[:-1], weight.shape[1])


def layer_norm(x: Tensor, params: Params, name: str, eps: float = 1e-5) -> Tensor:
    """Per-pairing LayerNorm over the last axis: x (P, ..., d)."""
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
    normed = F.layer_norm(x, x.shape[-1:], eps=eps)  # (P, ..., d)
    return normed * params[f"{name}.weight"].reshape(shape) + params[f"{name}.bias"].reshape(shape)


def attention(query: Tensor, other: Tensor, params: Params, name: str, heads: int, dropout: float,
              training: bool) -> Tensor:
    """nn.MultiheadAttention(query, other, other) with batch_first: (P, B, T, d) -> (P, B, T, d)."""
    p, b, t, d = query.shape
    weight, bias = params[f"{name}.in_proj_weight"], params[f"{name}.in_proj_bias"]  # (P, 3d, d), (P, 3d)
    q = torch.baddbmm(bias[:, None, :d], query.reshape(p, b * t, d), weight[:, :d].transpose(1, 2))
    kv = torch.baddbmm(bias[:, None, d:], other.reshape(p, b * t, d), weight[:, d:].transpose(1, 2))
    k, v = kv.chunk(2, dim=-1)  # (P, B*T, d) each

    def split(x: Tensor) -> Tensor:
        return x.reshape(p * b, t, heads, d // heads).transpose(1, 2)  # (P*B, h, T, d/h)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v), dropout_p=dropout if training else 0.0)
    out = out.transpose(1, 2).reshape(p, b, t, d)  # (P, B, T, d)
    return linear(out, params, f"{name}.out_proj")


def han_layer(query: Tensor, other: Tensor, params: Params, prefix: str, config: HANConfig,
              training: bool) -> Tensor:
    """avvp_pipe.models.han.HANLayer.forward for P pairings: (P, B, T, d) x2 -> (P, B, T, d)."""
    def drop(x: Tensor) -> Tensor:
        return F.dropout(x, config.dropout, training)

    attend = {"heads": config.heads, "dropout": config.dropout, "training": training}
    cross = attention(query, other, params, f"{prefix}.cm_attn", **attend)  # (P, B, T, d)
    own = attention(query, query, params, f"{prefix}.self_attn", **attend)  # (P, B, T, d)
    x = layer_norm(query + drop(cross) + drop(own), params, f"{prefix}.norm1")
    hidden = drop(F.relu(linear(x, params, f"{prefix}.linear1")))  # (P, B, T, ffn)
    return layer_norm(x + drop(linear(hidden, params, f"{prefix}.linear2")), params, f"{prefix}.norm2")


def project(audio: Tensor, visual: Tensor, visual_3d: Tensor | None, params: Params) -> tuple[Tensor, Tensor]:
    """HAN.project on per-second features (P, B, T, D): a, v (P, B, T, d), the features before HAN."""
    a = linear(audio, params, "model.fc_a")
    v = linear(visual, params, "model.fc_v")
    if visual_3d is not None:
        v3 = linear(visual_3d, params, "model.fc_st")
        v = linear(torch.cat([v, v3], dim=-1), params, "model.fc_fusion")  # (P, B, T, 2d) -> (P, B, T, d)
    return a, v


def forward_projected(a: Tensor, v: Tensor, params: Params, config: HANConfig,
                      training: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """HAN.forward_projected: global, a_prob, v_prob (P, B, K), frame_prob (P, B, T, 2, K)."""
    if config.keep_visual_head:
        v = linear(v, params, "model.visual_head")  # g(v) enters HAN
    layer = "model.hat_encoder.layers.0"
    a, v = han_layer(a, v, params, layer, config, training), han_layer(v, a, params, layer, config, training)
    x = torch.stack([a, v], dim=3)  # (P, B, T, 2, d)
    frame_prob = torch.sigmoid(linear(x, params, "model.fc_prob"))  # (P, B, T, 2, K)
    frame_att = torch.softmax(linear(x, params, "model.fc_frame_att"), dim=2)  # over seconds
    av_att = torch.softmax(linear(x, params, "model.fc_av_att"), dim=3)  # over modalities
    temporal = frame_att * frame_prob  # (P, B, T, 2, K)
    global_prob = (temporal * av_att).sum(dim=(2, 3))  # (P, B, K)
    return global_prob, temporal[:, :, :, 0].sum(dim=2), temporal[:, :, :, 1].sum(dim=2), frame_prob


class SliceLinear(nn.Module):
    """Pairing i's Linear from stacked weights, as an nn.Module (mtsc_loss takes a module as g)."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.weight, self.bias = weight, bias  # plain tensors: gradients flow to the stacked leaves

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)
