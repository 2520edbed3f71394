"""CLIP (timm), CLAP (transformers) and ``timm:<model_name>``: specs against the libraries'
own configs, outputs against the libraries' own model classes on shared random weights,
the fps option, option requests, HF-hub weights handling, and the real extract path.

CPU only, random-init weights, no network. Heavy models embed a few items; CLIP L/14 runs
only with AVVP_SLOW_TESTS=1.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import avvp_pipe.extractors  # noqa: F401  (registers the families)
from avvp_pipe.core.errors import AvvpError, WeightsError
from avvp_pipe.extractors import clap, clip, hub, preprocess, registry, timm_family
from tests.test_extractors import _assert_close_to_pil, _smooth_frames, make_clip

SLOW = os.environ.get("AVVP_SLOW_TESTS") == "1"
EPS32 = float(torch.finfo(torch.float32).eps)
pytestmark = pytest.mark.filterwarnings("ignore::avvp_pipe.cache.store.UnrealFeaturesWarning")

_BUILT: dict[tuple, object] = {}


def built(name: str, **options):
    """Random-init extractors, built once per session (building is the slow part)."""
    key = (name, tuple(sorted(options.items())))
    if key not in _BUILT:
        _BUILT[key] = registry.create(name, random_init=True, **options)
    return _BUILT[key]


def assert_close_scaled(ours: torch.Tensor, ref: torch.Tensor, *, reduction: int, depth: int) -> None:
    """float32 agreement: two correct implementations that sum in different orders differ by
    about eps * sqrt(reduction length) per layer, relative to the output's magnitude; allow
    4x that over ``depth`` layers. A real difference (GELU vs QuickGELU, a missing LayerNorm,
    a wrong pooling) is orders of magnitude larger."""
    scale = ref.abs().max().item()
    tol = 4 * EPS32 * math.sqrt(reduction) * depth * scale
    err = (ours - ref).abs().max().item()
    assert err <= tol, f"max |ours - ref| = {err:.3g} > {tol:.3g} (scale {scale:.3g})"


# ----------------------------------------------------------------------------------------
# specs agree with the libraries


@pytest.mark.parametrize("name", sorted(clip.TOWERS))
def test_clip_spec_matches_timm_and_hf_clip_processor(name):
    import timm
    from transformers import CLIPImageProcessor

    spec = registry.get_spec(name)
    model_name, dim, _ = clip.TOWERS[name]
    cfg = timm.models.get_pretrained_cfg(model_name)
    assert spec.out_dim == dim == cfg.num_classes  # timm's head is CLIP's visual projection
    assert tuple(spec.input["mean"]) == tuple(cfg.mean) and tuple(spec.input["std"]) == tuple(cfg.std)
    assert spec.input["interpolation"] == cfg.interpolation == "bicubic"
    assert "quickgelu" in model_name and cfg.tag == "openai"  # OpenAI's activation and weights
    assert spec.weights["repo"] == cfg.hf_hub_id and spec.weights["source"] == "hf_hub"
    proc = CLIPImageProcessor()  # CLIP's own recipe: shortest edge 224, centre crop 224, bicubic
    assert spec.input["resize"] == proc.size["shortest_edge"] and spec.input["resize_mode"] == "shorter_side"
    assert spec.input["crop"] == proc.crop_size["height"] == proc.crop_size["width"]
    assert tuple(spec.input["mean"]) == tuple(proc.image_mean) and tuple(spec.input["std"]) == tuple(proc.image_std)
    assert int(proc.resample) == int(Image.BICUBIC)


def test_clap_spec_matches_transformers_config():
    from transformers import ClapAudioConfig, ClapFeatureExtractor

    spec = registry.get_spec("clap")
    cfg = ClapAudioConfig()
    assert spec.out_dim == cfg.projection_dim == 512 and spec.out_frames == 10
    fe = clap.feature_extractor(clap.DEFAULT_CHECKPOINT)
    default = ClapFeatureExtractor()
    for ours, theirs in (("sample_rate", "sampling_rate"), ("feature_size", "feature_size"),
                         ("hop_length", "hop_length"), ("fft_window_size", "fft_window_size"),
                         ("frequency_max", "frequency_max"), ("padding", "padding")):
        assert spec.input[ours] == getattr(fe, theirs) == getattr(default, theirs), ours
    assert fe.frequency_min == spec.input["frequency_min"] == 50 and fe.truncation == default.truncation == "fusion"
    assert clap.audio_config(clap.DEFAULT_CHECKPOINT).enable_fusion is True
    assert clap.audio_config("laion/clap-htsat-unfused").enable_fusion is False
    assert spec.weights["repo"] == clap.DEFAULT_CHECKPOINT and spec.options["mode"] == "windows"


def test_timm_spec_is_resolved_from_timm_data_config():
    import timm
    import torchvision.transforms as T

    spec = registry.get_spec("timm:convnext_tiny")
    assert spec.family == "timm" and spec.weights["id"] == "convnext_tiny.in12k_ft_in1k"  # default tag recorded
    model = timm.create_model("convnext_tiny.in12k_ft_in1k", pretrained=False)
    data = timm.data.resolve_data_config({}, model=model)
    steps = timm.data.create_transform(**data).transforms
    resize = next(t for t in steps if isinstance(t, T.Resize))
    crop = next(t for t in steps if isinstance(t, T.CenterCrop))
    norm = next(t for t in steps if isinstance(t, T.Normalize))
    assert [spec.input["resize"]] == list(np.atleast_1d(resize.size)) and [spec.input["crop"]] * 2 == list(crop.size)
    assert spec.input["interpolation"] == resize.interpolation.value == data["interpolation"]
    assert tuple(spec.input["mean"]) == tuple(norm.mean) and tuple(spec.input["std"]) == tuple(norm.std)
    assert spec.out_dim == model.num_features == 768
    x = torch.randn(1, 3, 64, 64)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (1, spec.out_dim)


def test_unknown_timm_names_are_one_line_errors():
    with pytest.raises(AvvpError, match="Unknown timm model 'convnext_tinyy'"):
        registry.get_spec("timm:convnext_tinyy")
    with pytest.raises(AvvpError, match="no pretrained tag 'nope'.*in12k_ft_in1k"):
        registry.get_spec("timm:convnext_tiny.nope")
    with pytest.raises(AvvpError, match="Unknown extractor 'clip_vit_b15'.*timm:<model_name>"):
        registry.get_spec("clip_vit_b15")


def test_register_timm_under_a_short_name():
    spec = timm_family.register_timm("resnet18.a1_in1k", "my_resnet18")
    assert registry.get_spec("my_resnet18") is spec and spec.out_dim == 512
    assert spec.weights["id"] == "resnet18.a1_in1k"


# ----------------------------------------------------------------------------------------
# preprocessing parity


def test_clip_prepare_matches_hf_clip_image_processor():
    from transformers import CLIPImageProcessor

    frames = _smooth_frames(np.random.default_rng(7), 80, 360, 480)  # a downscale, LLP's usual case
    ours = built("clip_vit_b16", fps=1).prepare(make_clip(frames))  # (10, 3, 224, 224)
    kept = preprocess.frame_positions(1)
    ref = CLIPImageProcessor()([Image.fromarray(frames[k]) for k in kept], return_tensors="pt")["pixel_values"]
    _assert_close_to_pil(ours, ref.float(), clip.CLIP_STD, levels=2, frac=0.1)


def test_timm_prepare_matches_timm_eval_transform():
    import timm

    spec = registry.get_spec("timm:convnext_tiny")
    tf = timm.data.create_transform(**timm.data.resolve_data_config({}, model=timm.create_model(
        "convnext_tiny.in12k_ft_in1k", pretrained=False)))
    frames = _smooth_frames(np.random.default_rng(8), 3, 480, 640)
    ours = preprocess.image_batch(torch.from_numpy(frames).permute(0, 3, 1, 2), spec.input)
    ref = torch.stack([tf(Image.fromarray(f)) for f in frames])
    _assert_close_to_pil(ours, ref, spec.input["std"], levels=2, frac=0.1)


# ----------------------------------------------------------------------------------------
# outputs equal the libraries' own model classes on the same random weights


def _hf_clip_from_timm(model: torch.nn.Module, dim: int, patch: int) -> torch.nn.Module:
    """HF CLIPVisionModelWithProjection holding the timm tower's weights (OpenAI layout)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    width, depth = model.embed_dim, len(model.blocks)
    hf = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=width, intermediate_size=4 * width, num_hidden_layers=depth,
        num_attention_heads=model.blocks[0].attn.num_heads, image_size=224, patch_size=patch,
        projection_dim=dim, hidden_act="quick_gelu", layer_norm_eps=1e-5)).eval()
    sd = model.state_dict()
    assert torch.count_nonzero(sd["head.bias"]) == 0  # CLIP's projection has no bias
    out = {"visual_projection.weight": sd["head.weight"],
           "vision_model.embeddings.class_embedding": sd["cls_token"].reshape(-1),
           "vision_model.embeddings.position_embedding.weight": sd["pos_embed"][0],
           "vision_model.embeddings.patch_embedding.weight": sd["patch_embed.proj.weight"]}
    for ours, theirs in (("norm_pre", "pre_layrnorm"), ("norm", "post_layernorm")):
        for p in ("weight", "bias"):
            out[f"vision_model.{theirs}.{p}"] = sd[f"{ours}.{p}"]
    for i in range(depth):
        src, dst = f"blocks.{i}.", f"vision_model.encoder.layers.{i}."
        for p in ("weight", "bias"):
            for q, name in zip(sd[src + f"attn.qkv.{p}"].chunk(3), ("q_proj", "k_proj", "v_proj")):
                out[dst + f"self_attn.{name}.{p}"] = q
            out[dst + f"self_attn.out_proj.{p}"] = sd[src + f"attn.proj.{p}"]
            for a, b in (("norm1", "layer_norm1"), ("norm2", "layer_norm2"), ("mlp.fc1", "mlp.fc1"),
                         ("mlp.fc2", "mlp.fc2")):
                out[dst + f"{b}.{p}"] = sd[src + f"{a}.{p}"]
    missing, unexpected = hf.load_state_dict(out, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    return hf


def _check_clip_equals_hf(name: str, patch: int) -> None:
    ex = built(name, fps=1)
    items = ex.prepare(make_clip(_smooth_frames(np.random.default_rng(9), 80, 120, 160)))[:2]  # (2, 3, 224, 224)
    ours = ex.embed(items)
    hf = _hf_clip_from_timm(ex.model, ex.spec.out_dim, patch)
    with torch.inference_mode():
        ref = hf(pixel_values=items).image_embeds  # = CLIPModel.get_image_features
    assert ours.shape == ref.shape == (2, ex.spec.out_dim)
    assert_close_scaled(ours, ref, reduction=4 * ex.model.embed_dim, depth=len(ex.model.blocks))
    normed = registry.create(name, random_init=True, fps=1, normalize=True).embed(items)
    torch.testing.assert_close(normed, torch.nn.functional.normalize(ref, dim=-1), rtol=0, atol=1e-5)


def test_clip_b16_equals_hf_get_image_features():
    _check_clip_equals_hf("clip_vit_b16", 16)


@pytest.mark.skipif(not SLOW, reason="CLIP L/14 (300M parameters) runs with AVVP_SLOW_TESTS=1")
def test_clip_l14_equals_hf_get_image_features():
    _check_clip_equals_hf("clip_vit_l14", 14)


def test_timm_embedding_is_timms_own_headless_forward():
    ex = built("timm:convnext_tiny", fps=1)
    items = ex.prepare(make_clip())[:2]
    ours = ex.embed(items)
    import copy

    headless = copy.deepcopy(ex.model)
    headless.reset_classifier(0)  # timm's own way to drop the classifier
    with torch.inference_mode():
        ref = headless(items)
    assert ours.shape == ref.shape == (2, 768)
    assert_close_scaled(ours, ref, reduction=4 * 768, depth=18)


def test_clap_windows_equal_transformers_on_each_second():
    """Each second alone through HF's own feature extractor (its repeat-pad) and model class."""
    ex = built("clap")
    c = make_clip(seed=3)
    ours = ex.finalize(ex.embed(ex.prepare(c)))  # (10, 512)
    fe = clap.feature_extractor(clap.DEFAULT_CHECKPOINT)
    refs = []
    for k in (0, 7):
        inp = fe(c.audio_48k[48_000 * k: 48_000 * (k + 1)], sampling_rate=48_000, return_tensors="pt")
        assert bool(inp["is_longer"].all())  # HF marks a lone short item "longer" (random pick): we do not
        with torch.inference_mode():
            emb = ex.model(input_features=inp["input_features"], is_longer=torch.zeros(1, 1, dtype=torch.bool))
        refs.append(torch.nn.functional.normalize(emb.audio_embeds, dim=-1)[0])
    ref = torch.stack(refs)
    assert ours.shape == (10, 512)
    assert_close_scaled(torch.from_numpy(ours[[0, 7]]), ref, reduction=4 * 768, depth=12)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_clap_clip_mode_pools_per_second_and_averages_to_the_clip_vector():
    w = clap.second_weights(32)
    torch.testing.assert_close(w.sum(1), torch.ones(10))
    torch.testing.assert_close(w.sum(0), torch.full((32,), 10 / 32))
    ex = built("clap", mode="clip", normalize=False)
    items = ex.prepare(make_clip(seed=4))  # (1, 4, 1001, 64): the whole clip once
    assert tuple(items.shape) == (1, 4, 1001, 64) and ex.items_per_clip == 1
    with torch.inference_mode():
        out = ex.model.audio_model(input_features=items, is_longer=torch.zeros(1, 1, dtype=torch.bool))
        per_second = torch.einsum("nct,st->nsc", out.last_hidden_state.mean(2), w)  # (1, 10, 768)
        ref = ex.model.audio_projection(per_second)[0]  # (10, 512)
    torch.testing.assert_close(per_second.mean(1), out.pooler_output, rtol=0, atol=1e-5 * out.pooler_output.abs().max().item())
    got = ex.finalize(ex.embed(items))
    assert got.shape == (10, 512)
    assert_close_scaled(torch.from_numpy(got), ref, reduction=768, depth=2)


# ----------------------------------------------------------------------------------------
# fps, requests, config keys


def test_frame_positions_one_per_second():
    kept = preprocess.frame_positions(1)
    assert kept.tolist() == [0, 9, 18, 26, 35, 44, 53, 61, 70, 79]
    assert (kept // 8 == np.arange(10)).all()  # each inside its own second
    assert preprocess.frame_positions(8).tolist() == list(range(80))


def test_fps_option_changes_shape_and_key_but_not_default_keys():
    default = built("resnet152")
    assert "fps" not in default.config() and default.out_shape == (80, 2048)
    one = built("resnet152", fps=1)
    assert one.out_shape == (10, 2048) and one.items_per_clip == 10 and one.config()["fps"] == 1
    assert one.config() != default.config() and "[0, 9, 18" in one.config()["sampling"]
    assert tuple(one.prepare(make_clip()).shape) == (10, 3, 224, 224)
    with pytest.raises(AvvpError, match="Option 'fps'.*expected one of 8, 1 but got 2"):
        registry.create("resnet152", random_init=True, fps=2)
    with pytest.raises(AvvpError, match="Unknown option 'fps' for extractor 'vggish'"):
        registry.create("vggish", random_init=True, fps=1)
    from avvp_pipe.extractors.base import Extractor

    grouped = object.__new__(type("GroupedItems", (Extractor,), {}))  # items that are not single frames
    grouped.spec = one.spec
    with pytest.raises(AvvpError, match="does not take the fps option"):
        grouped.use_frame_rate(1)


def test_requests_parse_and_resolve():
    from avvp_pipe.pipeline.extract import resolve_names

    assert registry.parse_request("clip_vit_l14[fps=1,normalize=true]") == ("clip_vit_l14", {"fps": 1, "normalize": True})
    assert registry.parse_request("clap[mode=clip,checkpoint=laion/clap-htsat-unfused]") == (
        "clap", {"mode": "clip", "checkpoint": "laion/clap-htsat-unfused"})
    assert registry.split_requests("vggish,clap[mode=clip,normalize=false],timm:convnext_tiny") == [
        "vggish", "clap[mode=clip,normalize=false]", "timm:convnext_tiny"]
    names = "vggish,clip_vit_b16[fps=1],clap[mode=clip,normalize=false]".split(",")  # as the CLI splits
    assert resolve_names(names) == ["vggish", "clip_vit_b16[fps=1]", "clap[mode=clip,normalize=false]"]
    for bad, match in (("clip_vit_b16[fps=3]", "expected one of 8, 1"), ("clap[fps]", "expected key=value"),
                       ("clap[mode=clip", "expected NAME or NAME"), ("clip_vit_b16[nrm=1]", "Unknown option 'nrm'")):
        with pytest.raises(AvvpError, match=match) as info:
            resolve_names([bad])
        assert "\n" not in str(info.value)
    with pytest.raises(AvvpError, match="Option 'mode'.*windows, clip"):
        registry.create("clap", random_init=True, mode="frames")


# ----------------------------------------------------------------------------------------
# weights from the HF hub: offline folder, cache, one-line errors


@pytest.mark.parametrize("name", ["clip_vit_b16", "clap", "timm:convnext_tiny"])
def test_missing_hub_weights_are_one_line_errors(name, tmp_path, monkeypatch):
    spec = registry.get_spec(name)
    with pytest.raises(WeightsError) as info:
        registry.create(name, weights_dir=tmp_path)
    msg = str(info.value)
    assert "\n" not in msg and spec.weights["repo"] in msg and spec.weights["file"] in msg and str(tmp_path) in msg
    assert registry.availability(name, tmp_path)["weights"] == "missing"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert registry.availability(name)["weights"] == "missing"
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE") as info:
        registry.create(name)
    assert "\n" not in str(info.value)


def test_hub_weights_in_weights_dir_load_through_timm_and_key_the_store(tmp_path):
    from safetensors.torch import save_file

    ref = built("timm:convnext_tiny", fps=1)
    spec = ref.spec
    path = hub.local_dir_path(spec.weights, tmp_path)
    path.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in ref.model.state_dict().items()}, str(path))
    assert registry.availability(spec.name, tmp_path)["weights"] == "present"
    ex = registry.create(spec.name, weights_dir=tmp_path, fps=1)
    assert not ex.random_init and ex.weights_identity == avvp_pipe.extractors.weights.file_sha256(path)[:16]
    assert ex.config()["weights"]["file"] == "model.safetensors" and ex.config() != ref.config()
    items = ref.prepare(make_clip())[:2]
    torch.testing.assert_close(ex.embed(items), ref.embed(items), rtol=0, atol=0)
    path.write_bytes(b"not safetensors")
    avvp_pipe.extractors.weights._SHA_CACHE.clear()
    with pytest.raises(WeightsError, match="does not fit extractor"):
        registry.create(spec.name, weights_dir=tmp_path)


def test_clap_weights_in_weights_dir_load_the_audio_tower_of_the_whole_model(tmp_path):
    from safetensors.torch import save_file

    ref = built("clap", mode="clip")
    path = hub.local_dir_path(registry.get_spec("clap").weights, tmp_path)
    path.parent.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in ref.model.state_dict().items()}
    state["text_projection.linear1.weight"] = torch.zeros(2, 2)  # the text tower is in the file too
    state["logit_scale_a"] = torch.zeros(())
    save_file(state, str(path))
    ex = registry.create("clap", weights_dir=tmp_path, mode="clip")
    items = ex.prepare(make_clip(seed=5))
    torch.testing.assert_close(ex.embed(items), ref.embed(items), rtol=0, atol=0)
    save_file({"audio_projection.linear1.weight": torch.zeros(2, 2)}, str(path))
    avvp_pipe.extractors.weights._SHA_CACHE.clear()
    with pytest.raises(WeightsError, match="does not fit extractor 'clap'"):
        registry.create("clap", weights_dir=tmp_path)


# ----------------------------------------------------------------------------------------
# CLI and the real extract path


def test_cli_list_and_show_timm():
    from avvp_pipe.pipeline.cli import cli

    result = CliRunner().invoke(cli, ["extractors", "show", "timm:convnext_tiny"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["name"] == "timm:convnext_tiny" and shown["out_dim"] == 768 and shown["family"] == "timm"
    result = CliRunner().invoke(cli, ["extractors", "list"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    assert "10 x 512" in rows["clap"] and "48 kHz" in rows["clap"] and "80 x 768" in rows["clip_vit_l14"]
    assert "timm:<model_name>" in result.output


def test_new_extractors_through_extract_and_pairing(tmp_path):
    """CLIP B/16 and timm:convnext_tiny at 1 fps and CLAP through the real extract path, then
    read as a training pairing (per-second features of the new widths and frame counts)."""
    from avvp_pipe.cache.store import list_stores
    from avvp_pipe.pipeline.extract import ExtractOptions, find_clips, run_extract
    from avvp_pipe.pipeline.train.pairing import read_per_second
    from tests import clips

    videos = tmp_path / "s" / "videos"
    videos.mkdir(parents=True)
    clips.make_clip(videos / "clip0000000.mp4", seed=0)
    requests = ("clip_vit_b16[fps=1]", "clap[mode=clip]", "timm:convnext_tiny[fps=1]")
    opts = ExtractOptions(extractors=requests, random_init=True, batch_size=10)  # the engine pads batches to this
    summary = run_extract(videos, tmp_path / "cache", find_clips(videos), opts, progress=False)
    assert summary["failures"] == [] and all(summary["per_extractor"][r]["done"] == 1 for r in requests)
    stores = {s.extractor: s for s in list_stores(str(tmp_path / "cache"))}
    expected = {"clip_vit_b16": (10, 512), "clap": (10, 512), "timm:convnext_tiny": (10, 768)}
    for name, shape in expected.items():
        feats = stores[name].read(["clip0000000"])
        assert feats.shape == (1, *shape) and np.isfinite(feats).all()
        per_second = read_per_second(stores[name], ["clip0000000"])
        assert per_second.shape == (1, 10, shape[1])
    assert stores["clip_vit_b16"].config["fps"] == 1 and stores["clap"].config["options"]["mode"] == "clip"
    assert stores["timm:convnext_tiny"].config["weights"]["identity"] == "random-init"
    np.testing.assert_allclose(read_per_second(stores["clip_vit_b16"], ["clip0000000"])[0],
                               stores["clip_vit_b16"].read(["clip0000000"])[0], rtol=0, atol=0)


def test_new_stores_export_and_analyze_like_any_other(tmp_path):
    """Downstream takes the new widths and frame counts: export-npy writes (10, D) files, and
    analyze probes a 1-fps CLIP store next to a CLAP store (via the real CLI)."""
    from click.testing import CliRunner

    from avvp_pipe.cache.store import list_stores
    from avvp_pipe.pipeline.cli import cli
    from avvp_pipe.pipeline.synth.clips import synthesize

    synthesize(tmp_path / "s", 6, seed=5, size=(96, 72), split_fractions=(0.2, 0.1, 0.7), workers=1,
               progress=False)  # clips + their annotation files, most in test (the probe splits them)
    runner = CliRunner()
    result = runner.invoke(cli, ["extract", "--videos", str(tmp_path / "s" / "videos"), "--cache", str(tmp_path / "c"),
                                 "--extractors", "clip_vit_b16[fps=1],clap[mode=clip]", "--random-init", "--batch-size", "10",
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    stores = {s.extractor: s for s in list_stores(str(tmp_path / "c"))}
    out = tmp_path / "npy"
    exported = runner.invoke(cli, ["cache", "export-npy", stores["clip_vit_b16"].url, str(out), "--allow-unreal"])
    assert exported.exit_code == 0, exported.output
    files = sorted(out.glob("*.npy"))
    assert len(files) == 6 and all(np.load(f).shape == (10, 512) for f in files)
    probe = runner.invoke(cli, ["analyze", "probe", "--cache", str(tmp_path / "c"), "--dataset", "s",
                                "--stores", "clip_vit_b16,clap", "--annotations", str(tmp_path / "s" / "annotations"),
                                "--allow-random-init", "--out", str(tmp_path / "an"), "--split", "test"])
    assert probe.exit_code == 0, probe.output
    assert "Traceback" not in probe.output
