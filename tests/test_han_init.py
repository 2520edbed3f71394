"""``--init-order official``: HAN's initial weights equal the release's under the same seed.

The reference is our own reading of ``MMIL_Net.__init__`` (YapengTian/AVVP-ECCV20,
nets/net_audiovisual.py): every module the release builds, in the order it builds them,
from stock torch modules, with the release's key names. It shares no code with
models/han.py: HAN builds its modules in another order, and ``official_init_`` re-draws
them from hand-written init calls, so a wrong order, a missing unused encoder or a wrong
reading of nn.MultiheadAttention's draws shows up as unequal weights.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

from avvp_pipe.models.han import HAN, HANConfig, load_official_han, official_init_
from avvp_pipe.pipeline.train.config import TrainConfig
from avvp_pipe.pipeline.train.engine import init_model
from tests.test_han import official_shapes


class _EncoderReading(nn.Module):
    """The release's ``Encoder``: deep copies of one layer, then two 512-wide LayerNorms."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer)])
        self.norm1 = nn.LayerNorm(512)
        self.norm2 = nn.LayerNorm(512)


class _CMTLayerReading(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(512, 1, dropout=0.1)
        self.linear1 = nn.Linear(512, 512)
        self.dropout = nn.Dropout(0.1)
        self.linear2 = nn.Linear(512, 512)
        self.norm1 = nn.LayerNorm(512)
        self.norm2 = nn.LayerNorm(512)


class _HANLayerReading(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(512, 1, dropout=0.1)
        self.cm_attn = nn.MultiheadAttention(512, 1, dropout=0.1)
        self.linear1 = nn.Linear(512, 512)
        self.dropout = nn.Dropout(0.1)
        self.linear2 = nn.Linear(512, 512)
        self.norm1 = nn.LayerNorm(512)
        self.norm2 = nn.LayerNorm(512)


class ReleaseReading(nn.Module):
    """``MMIL_Net()`` as the release constructs it: heads first, then projections, then encoders."""

    def __init__(self) -> None:
        super().__init__()
        self.fc_prob = nn.Linear(512, 25)
        self.fc_frame_att = nn.Linear(512, 25)
        self.fc_av_att = nn.Linear(512, 25)
        self.fc_a = nn.Linear(128, 512)
        self.fc_v = nn.Linear(2048, 512)
        self.fc_st = nn.Linear(512, 512)
        self.fc_fusion = nn.Linear(1024, 512)
        with warnings.catch_warnings():  # torch notes that nested tensors need batch_first
            warnings.simplefilter("ignore", UserWarning)
            self.audio_encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(512, 1, 512), num_layers=1)
            self.visual_encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(512, 1, 512), num_layers=1)
        self.cmt_encoder = _EncoderReading(_CMTLayerReading())
        self.hat_encoder = _EncoderReading(_HANLayerReading())


def _release(seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The release's initial state dict under ``seed`` and the RNG state it leaves behind."""
    torch.manual_seed(seed)
    model = ReleaseReading()
    return model.state_dict(), torch.get_rng_state()


def _ours(seed: int, config: HANConfig | None = None) -> tuple[HAN, torch.Tensor]:
    torch.manual_seed(seed)
    model = HAN(config)
    torch.manual_seed(seed)
    official_init_(model)
    return model, torch.get_rng_state()


def _unequal(ours: dict[str, torch.Tensor], release: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in ours.items() if not torch.equal(v, release[k])]


def test_reading_has_the_released_layout():
    release, _ = _release(1)
    assert {k: tuple(v.shape) for k, v in release.items()} == official_shapes()
    assert sum(math.prod(v.shape) for v in release.values()) == 9_307_723


@pytest.mark.parametrize("seed", [1, 7])
def test_official_init_equals_the_release_under_the_same_seed(seed):
    release, release_rng = _release(seed)
    model, rng = _ours(seed)
    ours = model.state_dict()
    assert _unequal(ours, release) == []  # bit for bit, every key HAN has
    assert torch.equal(rng, release_rng)  # later draws (a separate MTSC head) continue alike


def test_our_own_order_differs_from_the_release():
    """The check above can fail: HAN's constructor order gives other weights under the same seed."""
    release, _ = _release(1)
    torch.manual_seed(1)
    ours = HAN().state_dict()
    drawn = [k for k in ours if not k.endswith("bias") and "norm" not in k]
    assert set(_unequal(ours, release)) >= set(drawn)


def test_leaving_out_an_unused_encoder_breaks_the_match(monkeypatch):
    """The unused encoders' draws matter: skip them and every encoder weight after them moves."""
    import avvp_pipe.models.han as han

    monkeypatch.setattr(han, "_draw_unused_encoders", lambda cfg: None)
    release, _ = _release(1)
    model, _ = _ours(1)
    unequal = _unequal(model.state_dict(), release)
    assert "hat_encoder.layers.0.linear1.weight" in unequal
    assert "fc_a.weight" not in unequal  # drawn before the encoders


def test_the_release_loads_back_unchanged():
    release, _ = _release(1)
    model, _ = _ours(1)
    loaded = load_official_han(release)
    assert _unequal(loaded.state_dict(), model.state_dict()) == []


def test_train_init_order_official_gives_the_release_weights():
    release, _ = _release(1)
    dims = {"audio": 128, "visual": 2048, "visual_3d": 512}
    official, _ = init_model(dims, TrainConfig(seed=1, init_order="official", device="cpu"))
    default, _ = init_model(dims, TrainConfig(seed=1, device="cpu"))
    assert _unequal(official.state_dict(), release) == []
    assert _unequal(default.state_dict(), release) != []


def test_mtsc_head_is_drawn_after_the_release_order():
    """visual_head has no place in the release: it is drawn last, the rest still matches."""
    release, release_rng = _release(1)
    model, _ = _ours(1, HANConfig(keep_visual_head=True))
    ours = model.state_dict()
    head = {k: ours.pop(k) for k in list(ours) if k.startswith("visual_head.")}
    assert _unequal(ours, release) == []
    torch.set_rng_state(release_rng)
    expected = nn.Linear(512, 512)
    assert torch.equal(head["visual_head.weight"], expected.weight.detach())


def test_without_a_3d_stream_the_rest_keeps_the_release_order():
    """No fc_st/fc_fusion: their draws are skipped, so the encoders' weights shift but stay seeded."""
    model, _ = _ours(1, HANConfig(visual_3d_dim=None))
    release, _ = _release(1)
    ours = model.state_dict()
    assert "fc_st.weight" not in ours
    for key in ("fc_prob.weight", "fc_a.weight", "fc_v.weight"):
        assert torch.equal(ours[key], release[key])
    again, _ = _ours(1, HANConfig(visual_3d_dim=None))
    assert _unequal(again.state_dict(), ours) == []


def test_init_order_is_validated():
    from avvp_pipe.core.errors import AvvpError

    with pytest.raises(AvvpError, match="init-order"):
        TrainConfig(init_order="release", device="cpu")


def test_init_order_enters_keys_only_when_official():
    """Old run folders and select results (saved before the option existed) keep their keys."""
    from dataclasses import asdict

    from avvp_pipe.pipeline.train.config import comparable

    assert "init_order" not in comparable(asdict(TrainConfig(device="cpu")))
    assert comparable(asdict(TrainConfig(init_order="official", device="cpu")))["init_order"] == "official"


def test_cli_passes_init_order(tmp_path):
    from click.testing import CliRunner

    from avvp_pipe.pipeline import cli as cli_mod

    result = CliRunner().invoke(cli_mod.cli, ["train", "--help"])
    assert result.exit_code == 0 and "--init-order [ours|official]" in result.output
    bad = CliRunner().invoke(cli_mod.cli, ["train", "--cache", str(tmp_path), "--dataset", "llp", "--annotations",
                                            str(tmp_path), "--audio", "a", "--visual", "v", "--out",
                                            str(tmp_path / "r"), "--init-order", "release"])
    assert bad.exit_code == 2 and "init-order" in bad.output
