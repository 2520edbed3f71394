"""HAN: shapes, frames vs per-second means, sizes, and equality with the released MMIL_Net.

The reference below re-implements the released ``MMIL_Net.forward``
(github.com/YapengTian/AVVP-ECCV20, nets/net_audiovisual.py) from raw weights, in the
release's (T, B, C) attention layout and with attention written out by hand, so it shares
no code with models/han.py (not even nn.MultiheadAttention).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from avvp_pipe.models.han import HAN, HANConfig, load_official_han, per_second_mean
from avvp_pipe.core.errors import AvvpError, WeightsError
from tests.tolerance import float32_atol

B, T, FPS, K = 2, 10, 8, 25
# llp-facts.md section 3: present in the release, never used by forward.
UNUSED = ("hat_encoder.norm1.", "hat_encoder.norm2.", "audio_encoder.", "visual_encoder.", "cmt_encoder.")

# ---------------------------------------------------------------- reference (the release)


def _lin(sd: dict[str, Tensor], name: str, x: Tensor) -> Tensor:
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def _ref_attention(sd: dict[str, Tensor], p: str, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Single-head scaled dot-product attention on (T, B, C), weights packed as in_proj."""
    wq, wk, wv = sd[f"{p}.in_proj_weight"].chunk(3)
    bq, bk, bv = sd[f"{p}.in_proj_bias"].chunk(3)
    qq, kk, vv = q @ wq.T + bq, k @ wk.T + bk, v @ wv.T + bv
    scores = torch.einsum("tbc,sbc->bts", qq, kk) / math.sqrt(qq.shape[-1])
    out = torch.einsum("bts,sbc->tbc", scores.softmax(-1), vv)
    return out @ sd[f"{p}.out_proj.weight"].T + sd[f"{p}.out_proj.bias"]


def _ref_layer_norm(sd: dict[str, Tensor], p: str, x: Tensor) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * sd[f"{p}.weight"] + sd[f"{p}.bias"]


def _ref_han_layer(sd: dict[str, Tensor], src_q: Tensor, src_v: Tensor) -> Tensor:
    p = "hat_encoder.layers.0"
    q, o = src_q.permute(1, 0, 2), src_v.permute(1, 0, 2)  # the release works in (T, B, C)
    q = q + _ref_attention(sd, f"{p}.cm_attn", q, o, o) + _ref_attention(sd, f"{p}.self_attn", q, q, q)
    q = _ref_layer_norm(sd, f"{p}.norm1", q)
    q = q + _lin(sd, f"{p}.linear2", F.relu(_lin(sd, f"{p}.linear1", q)))
    q = _ref_layer_norm(sd, f"{p}.norm2", q)
    return q.permute(1, 0, 2)


def reference_mmil_net(sd: dict[str, Tensor], audio: Tensor, visual: Tensor, visual_st: Tensor):
    x1 = _lin(sd, "fc_a", audio)
    vid_s = _lin(sd, "fc_v", visual).permute(0, 2, 1).unsqueeze(-1)
    vid_s = F.avg_pool2d(vid_s, (8, 1)).squeeze(-1).permute(0, 2, 1)
    vid_st = _lin(sd, "fc_st", visual_st)
    x2 = _lin(sd, "fc_fusion", torch.cat((vid_s, vid_st), dim=-1))
    x1, x2 = _ref_han_layer(sd, x1, x2), _ref_han_layer(sd, x2, x1)
    x = torch.cat([x1.unsqueeze(-2), x2.unsqueeze(-2)], dim=-2)
    frame_prob = torch.sigmoid(_lin(sd, "fc_prob", x))
    frame_att = torch.softmax(_lin(sd, "fc_frame_att", x), dim=1)
    av_att = torch.softmax(_lin(sd, "fc_av_att", x), dim=2)
    temporal_prob = frame_att * frame_prob
    global_prob = (temporal_prob * av_att).sum(dim=2).sum(dim=1)
    return global_prob, temporal_prob[:, :, 0, :].sum(dim=1), temporal_prob[:, :, 1, :].sum(dim=1), frame_prob


def _encoder_layer_shapes(prefix: str, with_encoder_norms: bool) -> dict[str, tuple[int, ...]]:
    """Keys of one nn.TransformerEncoderLayer / CMTLayer under ``prefix``.layers.0."""
    layer = f"{prefix}.layers.0"
    shapes = {}
    for name, shape in [
        ("self_attn.in_proj_weight", (1536, 512)),
        ("self_attn.in_proj_bias", (1536,)),
        ("self_attn.out_proj.weight", (512, 512)),
        ("self_attn.out_proj.bias", (512,)),
        ("linear1.weight", (512, 512)),
        ("linear1.bias", (512,)),
        ("linear2.weight", (512, 512)),
        ("linear2.bias", (512,)),
        ("norm1.weight", (512,)),
        ("norm1.bias", (512,)),
        ("norm2.weight", (512,)),
        ("norm2.bias", (512,)),
    ]:
        shapes[f"{layer}.{name}"] = shape
    if with_encoder_norms:
        for name in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"):
            shapes[f"{prefix}.{name}"] = (512,)
    return shapes


def official_shapes() -> dict[str, tuple[int, ...]]:
    """The released MMIL_Net.pt key layout, written from llp-facts.md section 3."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, (out_dim, in_dim) in {
        "fc_prob": (25, 512),
        "fc_frame_att": (25, 512),
        "fc_av_att": (25, 512),
        "fc_a": (512, 128),
        "fc_v": (512, 2048),
        "fc_st": (512, 512),
        "fc_fusion": (512, 1024),
    }.items():
        shapes[f"{name}.weight"] = (out_dim, in_dim)
        shapes[f"{name}.bias"] = (out_dim,)
    for prefix in ("audio_encoder", "visual_encoder"):
        shapes.update(_encoder_layer_shapes(prefix, with_encoder_norms=False))
    shapes.update(_encoder_layer_shapes("cmt_encoder", with_encoder_norms=True))
    shapes.update(_encoder_layer_shapes("hat_encoder", with_encoder_norms=True))
    hat = "hat_encoder.layers.0"
    for key in [k for k in shapes if k.startswith(f"{hat}.self_attn.")]:
        shapes[key.replace("self_attn", "cm_attn")] = shapes[key]
    return shapes


def official_state_dict(seed: int = 0) -> dict[str, Tensor]:
    """Random weights in the released layout; scaled so no softmax or sigmoid saturates."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in official_shapes().items():
        noise = torch.randn(shape, generator=gen)
        is_norm_gain = key.endswith(("norm1.weight", "norm2.weight"))
        sd[key] = 1.0 + 0.1 * noise if is_norm_gain else 0.03 * noise
    return sd


def _inputs(seed: int = 1, *, audio_dim=128, visual_dim=2048, d3: int | None = 512, frames=True):
    gen = torch.Generator().manual_seed(seed)
    audio = torch.randn(B, T, audio_dim, generator=gen)
    visual = torch.randn(B, T * FPS if frames else T, visual_dim, generator=gen)
    visual_3d = None if d3 is None else torch.randn(B, T, d3, generator=gen)
    return audio, visual, visual_3d


# ---------------------------------------------------------------- official checkpoint


def test_official_layout_has_the_released_parameter_count():
    # llp-facts.md section 3: 9,307,723 parameters in the whole released state dict.
    assert sum(math.prod(s) for s in official_shapes().values()) == 9_307_723


def test_matches_the_released_forward_on_an_official_state_dict():
    sd = official_state_dict()
    model = load_official_han(sd)
    assert not model.training
    audio, visual, visual_3d = _inputs()
    with torch.no_grad():
        ours = model(audio, visual, visual_3d)
        ref = reference_mmil_net(sd, audio, visual, visual_3d)
    for name, got, want in zip(("global", "a", "v", "frame"), ours, ref):
        assert got.shape == want.shape, name
        # float32 sums of up to 2048 terms (fc_v) ahead of each sigmoid/softmax: tests/tolerance.py
        torch.testing.assert_close(got, want, atol=float32_atol(want, 2048), rtol=0, msg=name)
    # The check has teeth: outputs vary across clips and classes, away from 0 and 1.
    assert ours[0].std() > 1e-3 and 0.01 < ours[3].mean() < 0.99


def test_loads_from_a_file_with_a_dataparallel_prefix(tmp_path):
    sd = official_state_dict()
    path = tmp_path / "MMIL_Net.pt"
    torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    model = load_official_han(path)
    audio, visual, visual_3d = _inputs()
    with torch.no_grad():
        got = model(audio, visual, visual_3d)
        want = reference_mmil_net(sd, audio, visual, visual_3d)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=float32_atol(w, 2048), rtol=0)


def test_unused_official_keys_are_ignored_with_a_note(caplog):
    sd = official_state_dict()
    used_only = {k: v for k, v in sd.items() if not k.startswith(UNUSED)}
    with caplog.at_level(logging.INFO, logger="avvp_pipe.models.han"):
        full = load_official_han(sd)
    note = caplog.text
    for prefix in UNUSED:
        assert prefix in note
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="avvp_pipe.models.han"):
        lean = load_official_han(used_only)
    assert "ignoring" not in caplog.text
    for key, value in full.state_dict().items():
        torch.testing.assert_close(value, lean.state_dict()[key], rtol=0, atol=0)


@pytest.mark.parametrize("bad", ["fc_extra.weight", "hat_encoder.layers.0.cm_attn.extra"])
def test_an_unexpected_key_raises_naming_it(bad):
    sd = official_state_dict()
    sd[bad] = torch.zeros(3)
    with pytest.raises(AvvpError, match=bad.replace(".", r"\.")):
        load_official_han(sd)


def test_a_missing_key_raises_naming_it_unless_not_strict(caplog):
    sd = official_state_dict()
    del sd["hat_encoder.layers.0.norm2.bias"]
    with pytest.raises(AvvpError, match=r"missing key 'hat_encoder\.layers\.0\.norm2\.bias'"):
        load_official_han(sd)
    with caplog.at_level(logging.WARNING, logger="avvp_pipe.models.han"):
        model = load_official_han(sd, strict=False)
    assert "hat_encoder.layers.0.norm2.bias" in caplog.text
    torch.testing.assert_close(model.fc_a.weight, sd["fc_a.weight"], rtol=0, atol=0)


def test_a_shape_mismatch_raises_even_when_not_strict():
    sd = official_state_dict()
    sd["fc_fusion.weight"] = torch.zeros(512, 1000)
    with pytest.raises(AvvpError, match=r"\(512, 1024\) at key .fc_fusion\.weight. but got \(512, 1000\)"):
        load_official_han(sd, strict=False)


def test_missing_or_unreadable_files_raise(tmp_path):
    with pytest.raises(WeightsError, match="none.pt"):
        load_official_han(tmp_path / "none.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(AvvpError, match="junk.pt"):
        load_official_han(junk)
    with pytest.raises(AvvpError, match="'fc_a.weight'"):
        load_official_han({"fc_a.weight": [1, 2]})


def test_sizes_are_inferred_from_the_weights():
    model = HAN(HANConfig(audio_dim=64, visual_dim=96, visual_3d_dim=None, d_model=32, ffn=48, num_classes=7))
    loaded = load_official_han(model.state_dict())
    assert loaded.config == model.config
    assert loaded.fc_st is None and loaded.fc_fusion is None


# ---------------------------------------------------------------- our model


def test_parameter_count_at_the_released_sizes():
    count = sum(p.numel() for p in HAN().parameters())
    assert count == 4_569_675  # llp-facts.md section 3, "used by forward"
    # Without the 3D stream: fc_st (512*512 + 512) and fc_fusion (1024*512 + 512) go away.
    no3d = sum(p.numel() for p in HAN(HANConfig(visual_3d_dim=None)).parameters())
    assert no3d == 4_569_675 - (512 * 512 + 512) - (1024 * 512 + 512)
    # The MTSC head g adds one 512x512 linear layer.
    with_g = sum(p.numel() for p in HAN(HANConfig(keep_visual_head=True)).parameters())
    assert with_g == 4_569_675 + 512 * 512 + 512


def test_our_keys_are_the_released_used_keys():
    used = {k for k in official_shapes() if not k.startswith(UNUSED)}
    assert set(HAN().state_dict()) == used


SMALL = dict(audio_dim=12, visual_dim=20, d_model=16, ffn=24, num_classes=5)


@pytest.mark.parametrize("frames", [True, False], ids=["frames", "means"])
@pytest.mark.parametrize("d3", [6, None], ids=["3d", "no3d"])
def test_output_shapes(frames, d3):
    model = HAN(HANConfig(visual_3d_dim=d3, **SMALL)).eval()
    audio, visual, visual_3d = _inputs(audio_dim=12, visual_dim=20, d3=d3, frames=frames)
    global_prob, a_prob, v_prob, frame_prob = model(audio, visual, visual_3d)
    assert global_prob.shape == a_prob.shape == v_prob.shape == (B, 5)
    assert frame_prob.shape == (B, T, 2, 5)
    a, v = model.project(audio, visual, visual_3d)
    assert a.shape == v.shape == (B, T, 16)
    assert ((frame_prob > 0) & (frame_prob < 1)).all()
    # Attention weights sum to 1 over seconds, so a_prob is a weighted mean of frame_prob.
    assert (a_prob <= frame_prob[:, :, 0].max(dim=1).values + 1e-6).all()


@pytest.mark.parametrize("d3", [512, None], ids=["3d", "no3d"])
def test_frames_and_per_second_means_agree(d3):
    model = HAN(HANConfig(visual_3d_dim=d3)).eval()
    audio, frames, visual_3d = _inputs(d3=d3)
    means = frames.reshape(B, T, FPS, -1).mean(dim=2)
    torch.testing.assert_close(per_second_mean(frames), means)
    with torch.no_grad():
        out_frames = model(audio, frames, visual_3d)
        out_means = model(audio, per_second_mean(frames), visual_3d)
    for got, want in zip(out_means, out_frames):  # mean-then-project vs project-then-mean: 8 x 2048 sums
        torch.testing.assert_close(got, want, atol=float32_atol(want, 8 * 2048), rtol=0)


def test_per_second_mean_on_numpy_and_bad_counts():
    frames = np.arange(2 * 16 * 3, dtype=np.float32).reshape(2, 16, 3)
    got = per_second_mean(frames)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (2, 2, 3)
    np.testing.assert_allclose(got[1, 1], frames[1, 8:16].mean(axis=0))
    assert per_second_mean(frames[0]).shape == (2, 3)  # one clip, no batch axis
    with pytest.raises(AvvpError, match="divisible by 8 but got 15"):
        per_second_mean(frames[:, :15])


def test_wrong_input_shapes_raise():
    model = HAN(HANConfig(**SMALL, visual_3d_dim=6))
    audio, visual, visual_3d = _inputs(audio_dim=12, visual_dim=20, d3=6)
    with pytest.raises(AvvpError, match="audio"):
        model(audio[..., :5], visual, visual_3d)
    with pytest.raises(AvvpError, match="visual: expected"):
        model(audio, visual[:, :30], visual_3d)
    with pytest.raises(AvvpError, match="visual_3d"):
        model(audio, visual, None)
    no3d = HAN(HANConfig(**SMALL, visual_3d_dim=None))
    with pytest.raises(AvvpError, match="visual_3d"):
        no3d(audio, visual, visual_3d)


def test_config_rejects_bad_sizes():
    with pytest.raises(AvvpError, match="heads"):
        HANConfig(d_model=10, heads=3)
    with pytest.raises(AvvpError, match="dropout"):
        HANConfig(dropout=1.5)


def test_eval_is_deterministic_and_train_uses_dropout():
    model = HAN(HANConfig(**SMALL, visual_3d_dim=None))
    audio, visual, _ = _inputs(audio_dim=12, visual_dim=20, d3=None)
    torch.manual_seed(0)
    first, second = model(audio, visual)[3], model(audio, visual)[3]
    assert not torch.allclose(first, second)
    model.eval()
    torch.testing.assert_close(model(audio, visual)[3], model(audio, visual)[3], rtol=0, atol=0)


def test_the_mtsc_head_is_the_visual_head_and_feeds_han():
    plain = HAN(HANConfig(**SMALL, visual_3d_dim=6)).eval()
    assert plain.mtsc_head is None and plain.visual_head is None
    assert not any(k.startswith("visual_head") for k in plain.state_dict())

    with_g = HAN(HANConfig(**SMALL, visual_3d_dim=6, keep_visual_head=True)).eval()
    assert with_g.mtsc_head is with_g.visual_head
    assert {k for k in with_g.state_dict() if "head" in k} == {"visual_head.weight", "visual_head.bias"}
    with_g.load_state_dict(plain.state_dict(), strict=False)  # same weights apart from g
    audio, visual, visual_3d = _inputs(audio_dim=12, visual_dim=20, d3=6)

    with torch.no_grad():
        # g = identity: the same outputs as without a head.
        with_g.visual_head.weight.copy_(torch.eye(16))
        with_g.visual_head.bias.zero_()
        for got, want in zip(with_g(audio, visual, visual_3d), plain(audio, visual, visual_3d)):
            torch.testing.assert_close(got, want)
        # Any other g changes what HAN sees in the visual stream, and only there.
        torch.nn.init.normal_(with_g.visual_head.weight, std=0.5)
        out = with_g(audio, visual, visual_3d)
        assert not torch.allclose(out[2], plain(audio, visual, visual_3d)[2])
        a, v = with_g.project(audio, visual, visual_3d)
        torch.testing.assert_close(a, plain.project(audio, visual, visual_3d)[0])
        g_v = v @ with_g.visual_head.weight.T + with_g.visual_head.bias  # (B, T, d)
        by_hand = with_g.heads(*with_g.encode(a, g_v))
        for got, want in zip(out, by_hand):
            torch.testing.assert_close(got, want)


def test_a_checkpoint_with_a_visual_head_reloads_with_it():
    model = HAN(HANConfig(**SMALL, visual_3d_dim=6, keep_visual_head=True))
    loaded = load_official_han(model.state_dict())
    assert loaded.config.keep_visual_head and loaded.mtsc_head is loaded.visual_head
    torch.testing.assert_close(loaded.visual_head.weight, model.visual_head.weight)
