"""CLIP's ``output=pre_projection``: the tower's pooled output before the visual projection.

Checked against HF ``CLIPVisionModel.pooler_output`` on the timm tower's own random weights
(the same weight sharing as the projected-embedding test in test_modern_extractors.py),
the width in the spec and in requests, the store key (new for the option, unchanged for
the default), ``extractors show``, and the real extract path. CPU only, no network; L/14
runs only with AVVP_SLOW_TESTS=1.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import avvp_pipe.extractors  # noqa: F401  (registers the families)
from avvp_pipe.core.errors import AvvpError
from avvp_pipe.extractors import clip, registry
from tests.test_extractors import _smooth_frames, make_clip
from tests.test_modern_extractors import _hf_clip_from_timm, built
from tests.tolerance import float32_atol

SLOW = os.environ.get("AVVP_SLOW_TESTS") == "1"
pytestmark = pytest.mark.filterwarnings("ignore::avvp_pipe.cache.store.UnrealFeaturesWarning")
#: clip_vit_b16's store key at default options (random init, fp32, float32), recorded before
#: the output option existed: stores written then must still be found.
B16_DEFAULT_KEY = "9a2a4c91cfbc7c5b"


def _hf_vision_model(ex) -> torch.nn.Module:
    """HF CLIPVisionModel (no projection) holding the timm tower's weights."""
    from transformers import CLIPVisionModel

    with_projection = _hf_clip_from_timm(ex.model, clip.TOWERS[ex.spec.name][1], ex.model.patch_embed.patch_size[0])
    hf = CLIPVisionModel(with_projection.config).eval()
    state = {k.removeprefix("vision_model."): v for k, v in with_projection.state_dict().items()
             if not k.startswith("visual_projection.")}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    return hf


def _check_pre_projection_equals_hf_pooler_output(name: str) -> None:
    ex = built(name, fps=1, output="pre_projection")
    items = ex.prepare(make_clip(_smooth_frames(np.random.default_rng(9), 80, 120, 160)))[:2]  # (2, 3, 224, 224)
    ours = ex.embed(items)
    with torch.inference_mode():
        out = _hf_vision_model(ex)(pixel_values=items)
    ref = out.pooler_output  # post_layernorm(class token)
    width, depth = clip.TOWERS[name][2], len(ex.model.blocks)
    assert ours.shape == ref.shape == (2, width) == (2, ex.out_shape[1])
    # float32 sums of length 4*width (the MLP's second matmul), compounded over the blocks
    atol = float32_atol(ref, reduction=4 * width * depth)
    torch.testing.assert_close(ours, ref, rtol=0, atol=atol)
    # the tolerance separates the right layer from its neighbours: before post_layernorm, after the projection
    assert (out.last_hidden_state[:, 0] - ref).abs().max().item() > 10 * atol
    projected = built(name, fps=1).embed(items)
    assert projected.shape == (2, clip.TOWERS[name][1])
    torch.testing.assert_close(projected, ours @ ex.model.head.weight.T, rtol=0,  # head = the projection
                               atol=float32_atol(projected, reduction=width))
    normed = registry.create(name, random_init=True, fps=1, output="pre_projection", normalize=True).embed(items)
    torch.testing.assert_close(normed, torch.nn.functional.normalize(ref, dim=-1), rtol=0, atol=1e-5)


def test_b16_pre_projection_equals_hf_clip_vision_model_pooler_output():
    _check_pre_projection_equals_hf_pooler_output("clip_vit_b16")


@pytest.mark.skipif(not SLOW, reason="CLIP L/14 (300M parameters) runs with AVVP_SLOW_TESTS=1")
def test_l14_pre_projection_equals_hf_clip_vision_model_pooler_output():
    _check_pre_projection_equals_hf_pooler_output("clip_vit_l14")


@pytest.mark.parametrize("name, dim, width", [("clip_vit_b16", 512, 768), ("clip_vit_l14", 768, 1024)])
def test_spec_width_follows_the_output_option(name, dim, width):
    import timm

    spec = registry.get_spec(name)
    with torch.device("meta"):
        tower = timm.create_model(clip.TOWERS[name][0], pretrained=False)
    assert (spec.out_dim, spec.options["output"]) == (dim, "projection")
    assert dict(spec.out_dims["output"]) == {"projection": dim, "pre_projection": width}
    assert width == tower.embed_dim == tower.head.in_features and dim == tower.head.out_features
    shown = registry.get_spec(f"{name}[output=pre_projection]")
    assert (shown.name, shown.out_frames, shown.out_dim, shown.options["output"]) == (name, 80, width, "pre_projection")
    assert registry.get_spec(f"{name}[output=pre_projection,fps=1]").out_frames == 10
    assert registry.get_spec(name) is spec and registry.REGISTRY[name].out_dim == dim  # the request is a view
    with pytest.raises(AvvpError, match="Option 'output' of extractor .*expected one of projection, "
                                        "pre_projection but got 'features'") as info:
        registry.create(name, random_init=True, output="features")
    assert "\n" not in str(info.value)
    with pytest.raises(AvvpError, match="expected one of projection, pre_projection"):
        registry.get_spec(f"{name}[output=features]")


def test_store_key_changes_with_the_option_and_not_for_the_default():
    from avvp_pipe.cache.store import store_key
    from avvp_pipe.pipeline.extract.plan import store_config

    default, pre = built("clip_vit_b16"), built("clip_vit_b16", output="pre_projection")
    assert "output" not in default.config()["options"]  # the default is not named: old keys stay
    assert default.config()["output_layer"] == registry.get_spec("clip_vit_b16").output_layer
    assert store_key(store_config(default, "fp32"), "float32") == B16_DEFAULT_KEY
    cfg = pre.config()
    assert cfg["options"]["output"] == "pre_projection" and cfg["out_shape"] == [80, 768]
    assert "pooler_output" in cfg["output_layer"] and pre.out_shape == (80, 768)
    keys = {store_key(store_config(ex, "fp32"), "float32") for ex in (default, pre)}
    assert len(keys) == 2


def test_extractors_show_displays_the_option():
    from avvp_pipe.pipeline.cli import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["extractors", "show", "clip_vit_b16"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["options"]["output"] == "projection" and shown["out_dim"] == 512
    assert shown["out_dims"] == {"output": {"projection": 512, "pre_projection": 768}}
    result = runner.invoke(cli, ["extractors", "show", "clip_vit_l14[output=pre_projection,fps=1]"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert (shown["out_frames"], shown["out_dim"], shown["options"]["output"]) == (10, 1024, "pre_projection")


def test_pre_projection_through_the_real_extract_path(tmp_path):
    """Two stores of one tower side by side: the option writes its own, of its own width."""
    from avvp_pipe.cache.store import list_stores
    from avvp_pipe.pipeline.extract import ExtractOptions, find_clips, run_extract
    from tests import clips

    videos = tmp_path / "s" / "videos"
    videos.mkdir(parents=True)
    clips.make_clip(videos / "clip0000000.mp4", seed=0)
    requests = ("clip_vit_b16[fps=1,output=pre_projection]", "clip_vit_b16[fps=1]")
    opts = ExtractOptions(extractors=requests, random_init=True, batch_size=10)
    summary = run_extract(videos, tmp_path / "cache", find_clips(videos), opts, progress=False)
    assert summary["failures"] == [] and all(summary["per_extractor"][r]["done"] == 1 for r in requests)
    stores = sorted(list_stores(str(tmp_path / "cache")), key=lambda s: s.shape[1])
    assert [s.extractor for s in stores] == ["clip_vit_b16"] * 2
    assert [tuple(s.shape) for s in stores] == [(10, 512), (10, 768)]
    assert stores[1].config["options"]["output"] == "pre_projection" and "output" not in stores[0].config["options"]
    feats = stores[1].read(["clip0000000"])
    assert feats.shape == (1, 10, 768) and np.isfinite(feats).all()
