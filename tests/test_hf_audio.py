"""``hf_audio:<repo>``: transformers audio encoders (AST, HuBERT, wav2vec2), one embedding a second.

Specs against the library's default config and feature extractor classes, our per-second
output against the transformers model run directly (its own feature extractor, the same
module's weights), the store key, the weights path through ``from_pretrained`` (a tiny
registered repo, written by transformers' own ``save_pretrained``), one-line errors, the
CLI and the real extract path. CPU, random init, no network.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import avvp_pipe.extractors  # noqa: F401  (registers the families)
from avvp_pipe.core.errors import AvvpError, WeightsError
from tests.test_modern_extractors import built  # one cache of built extractors
from avvp_pipe.extractors import hf_audio, hub, registry
from tests.test_extractors import make_clip
from tests.tolerance import float32_atol

pytestmark = [pytest.mark.filterwarnings("ignore::avvp_pipe.cache.store.UnrealFeaturesWarning"),
              pytest.mark.filterwarnings("ignore:At least one mel filter has all zero values")]  # AST's own 128 bins
AST = "hf_audio:MIT/ast-finetuned-audioset-10-10-0.4593"
HUBERT = "hf_audio:facebook/hubert-base-ls960"
WAV2VEC2 = "hf_audio:facebook/wav2vec2-base-960h"
#: the registered (store) spelling: a store folder name holds no "/"
STORED = {name: name.replace("/", "--") for name in (AST, HUBERT, WAV2VEC2)}
#: a HuBERT small enough to save and load in a test; registered like a user's own repo
TINY = "avvp-test/tiny-hubert"
TINY_CONFIG = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
               "conv_dim": (32,) * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2}


# ----------------------------------------------------------------------------------------
# specs agree with the library


@pytest.mark.parametrize("name, config_class, fe_class, model_class", [
    (AST, "ASTConfig", "ASTFeatureExtractor", "ASTModel"),
    (HUBERT, "HubertConfig", "Wav2Vec2FeatureExtractor", "HubertModel"),
    (WAV2VEC2, "Wav2Vec2Config", "Wav2Vec2FeatureExtractor", "Wav2Vec2Model")])
def test_spec_sizes_and_front_end_are_the_library_defaults(name, config_class, fe_class, model_class):
    import transformers

    spec = registry.get_spec(name)
    config = getattr(transformers, config_class)()
    fe = getattr(transformers, fe_class)()
    assert (spec.family, spec.modality, spec.out_frames, spec.out_dim) == ("hf_audio", "audio", 10, config.hidden_size)
    assert spec.input["sample_rate"] == fe.sampling_rate == 16_000  # audio_16k, the 16 kHz decode path
    for key, value in spec.input["feature_extractor"].items():
        assert getattr(fe, key) == pytest.approx(value), key
    assert spec.input["feature_extractor_class"] == fe_class and spec.weights["architecture"] == model_class
    assert spec.weights["random_init_config"] == f"transformers.{config_class}() defaults"
    assert (spec.weights["repo"], spec.weights["file"], spec.weights["revision"]) == (
        name.split(":", 1)[1], "model.safetensors", "main")
    assert spec.options == {"mode": "clip", "revision": "main"}
    ex = built(name, **({"mode": "windows"} if name == WAV2VEC2 else {}))  # the built model is that config
    assert type(ex.model).__name__ == model_class and ex.model.config.hidden_size == spec.out_dim
    assert ex.out_shape == (10, spec.out_dim)


def test_both_spellings_name_one_spec():
    spec = registry.get_spec(AST)
    assert spec.name == STORED[AST] == "hf_audio:MIT--ast-finetuned-audioset-10-10-0.4593"
    assert registry.get_spec(STORED[AST]) is spec and spec.weights["repo"] == "MIT/ast-finetuned-audioset-10-10-0.4593"
    assert "/" not in spec.name and registry.get_spec("hf_audio:facebook--hubert-base-ls960").name == STORED[HUBERT]


def test_time_grids_follow_the_configs():
    ast, hubert = registry.get_spec(AST).input["grid"], registry.get_spec(HUBERT).input["grid"]
    # AST: 12 x 101 patches of 16 frames every 10 (kaldi frames: 400 samples every 160)
    assert ast == {"hop": 1600, "centre": 1400, "steps": 101, "rows": 12}
    w = hf_audio.second_weights(ast)  # (10, 101)
    assert w.shape == (10, 101) and (w[:, 100] == 0).all()  # the padded last column is dropped
    assert [torch.nonzero(row).flatten().tolist() for row in w] == [list(range(10 * k, 10 * k + 10)) for k in range(10)]
    # HuBERT: 320-sample hop, 400-sample receptive field; 499 frames in 10 s
    assert hubert == {"hop": 320, "centre": 200, "steps": 499, "rows": 1}
    counts = (hf_audio.second_weights(hubert) > 0).sum(1).tolist()
    assert counts == [50] * 9 + [49]
    torch.testing.assert_close(hf_audio.second_weights(hubert).sum(1), torch.ones(10))


# ----------------------------------------------------------------------------------------
# our per-second output equals the transformers model run directly


def _per_second_ref(hidden: torch.Tensor, starts: list[int], ends: list[int]) -> torch.Tensor:
    """(steps, D) -> (10, D): the mean of steps[starts[k]:ends[k]] (the ranges written out)."""
    return torch.stack([hidden[a:b].mean(0) for a, b in zip(starts, ends)])


def test_ast_per_second_equals_ast_model_on_the_clip():
    from transformers import ASTFeatureExtractor, ASTModel

    ex = built(AST)
    clip = make_clip(seed=3)
    ours = torch.from_numpy(ex.finalize(ex.embed(ex.prepare(clip))))  # (10, 768)
    assert isinstance(ex.model, ASTModel)
    inputs = ASTFeatureExtractor()(clip.audio_16k, sampling_rate=16_000, return_tensors="pt")
    assert tuple(inputs["input_values"].shape) == (1, 1024, 128)
    with torch.inference_mode():
        hidden = ex.model(**inputs).last_hidden_state[0]  # (2 + 12 * 101, 768)
    patches = hidden[2:].reshape(12, 101, -1).mean(0)  # (101, 768): frequency rows averaged per column
    ref = _per_second_ref(patches, list(range(0, 100, 10)), list(range(10, 101, 10)))
    atol = float32_atol(ref, reduction=12 * 10)
    torch.testing.assert_close(ours, ref, rtol=0, atol=atol)
    shifted = _per_second_ref(patches, list(range(1, 101, 10)), list(range(11, 102, 10)))  # one column late
    assert (shifted - ref).abs().max().item() > 100 * atol


def test_hubert_clip_and_windows_equal_hubert_model():
    from transformers import HubertModel, Wav2Vec2FeatureExtractor

    clip = make_clip(seed=4)
    ex = built(HUBERT)
    assert isinstance(ex.model, HubertModel) and ex.items_per_clip == 1
    ours = torch.from_numpy(ex.finalize(ex.embed(ex.prepare(clip))))  # (10, 768)
    fe = Wav2Vec2FeatureExtractor()
    with torch.inference_mode():
        hidden = ex.model(**fe(clip.audio_16k, sampling_rate=16_000, return_tensors="pt")).last_hidden_state[0]
    assert hidden.shape == (499, 768)
    ref = _per_second_ref(hidden, [50 * k for k in range(10)], [50 * k for k in range(1, 10)] + [499])
    atol = float32_atol(ref, reduction=50)
    torch.testing.assert_close(ours, ref, rtol=0, atol=atol)
    late = _per_second_ref(hidden, [50 * k + 1 for k in range(10)], [50 * k + 1 for k in range(1, 10)] + [499])
    assert (late - ref).abs().max().item() > 10 * atol  # one frame off is outside the tolerance

    win = built(HUBERT, mode="windows")
    assert win.items_per_clip == 10
    ours = torch.from_numpy(win.finalize(win.embed(win.prepare(clip))))
    refs = []
    for k in (0, 6):  # each second alone: its own normalisation, its own 49 frames
        inputs = fe(clip.audio_16k[16_000 * k: 16_000 * (k + 1)], sampling_rate=16_000, return_tensors="pt")
        with torch.inference_mode():
            frames = win.model(**inputs).last_hidden_state[0]
        assert frames.shape == (49, 768)
        refs.append(frames.mean(0))
    ref = torch.stack(refs)
    torch.testing.assert_close(ours[[0, 6]], ref, rtol=0, atol=float32_atol(ref, reduction=49))


# ----------------------------------------------------------------------------------------
# options and store keys


def test_options_key_the_store_and_bad_modes_are_one_line_errors():
    from avvp_pipe.cache.store import store_key
    from avvp_pipe.pipeline.extract.plan import store_config

    cfg = built(HUBERT).config()
    assert cfg["weights"]["repo"] == "facebook/hubert-base-ls960" and cfg["weights"]["revision"] == "main"
    assert cfg["name"] == STORED[HUBERT] and cfg["options"] == {"mode": "clip", "revision": "main"}
    assert cfg["frontend"] == {"class": "Wav2Vec2FeatureExtractor"}
    assert "fbank" in built(AST).config()["frontend"]  # which log-mel code ran keys AST's stores
    keys = {store_key(store_config(ex, "fp32"), "float32") for ex in (
        built(HUBERT), built(HUBERT, mode="windows"), built(HUBERT, revision="abc123"), built(WAV2VEC2, mode="windows"))}
    assert len(keys) == 4
    with pytest.raises(AvvpError, match="expected one of clip but got 'windows'.*90% padding") as info:
        registry.create(AST, random_init=True, mode="windows")
    assert "\n" not in str(info.value)
    with pytest.raises(AvvpError, match="expected one of clip, windows but got 'frames'"):
        registry.create(HUBERT, random_init=True, mode="frames")
    with pytest.raises(AvvpError, match="Unknown hf_audio repo 'facebook/hubert-xxl'.*register_hf_audio"):
        registry.get_spec("hf_audio:facebook/hubert-xxl")
    with pytest.raises(AvvpError, match=r"hf_audio:<repo>"):
        registry.get_spec("hf_audi")


# ----------------------------------------------------------------------------------------
# pretrained weights: the HF cache / --weights-dir helper, transformers' own loader


def test_missing_hub_files_are_one_line_errors(tmp_path, monkeypatch):
    spec = registry.get_spec(AST)
    with pytest.raises(WeightsError) as info:
        registry.create(AST, weights_dir=tmp_path)
    msg = str(info.value)
    assert "\n" not in msg and spec.weights["repo"] in msg and "model.safetensors" in msg and str(tmp_path) in msg
    assert registry.availability(AST, tmp_path)["weights"] == "missing"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE") as info:
        registry.create(HUBERT)
    assert "\n" not in str(info.value)


def _tiny_repo(tmp_path):
    """A registered tiny HuBERT and its files under tmp_path/<repo>, written by transformers."""
    from transformers import Wav2Vec2FeatureExtractor

    name = hf_audio.spec_name(TINY)
    if name not in registry.REGISTRY:
        hf_audio.register_hf_audio(TINY, "hubert", hf_audio.WAVEFORM_NORMALISED, licence="test only",
                                   config_overrides=TINY_CONFIG)
    ref = registry.create(name, random_init=True)
    folder = hub.local_dir_path(registry.get_spec(name).weights, tmp_path).parent
    ref.model.save_pretrained(str(folder))  # safetensors in transformers' checkpoint layout, config.json
    Wav2Vec2FeatureExtractor(**hf_audio.WAVEFORM_NORMALISED).save_pretrained(str(folder))
    return name, ref, folder


def test_weights_dir_loads_through_from_pretrained_and_keys_the_store(tmp_path):
    name, ref, folder = _tiny_repo(tmp_path)
    assert {p.name for p in folder.iterdir()} >= {"model.safetensors", "config.json", "preprocessor_config.json"}
    assert registry.get_spec(name).out_dim == 32
    ex = registry.create(name, weights_dir=tmp_path)
    assert not ex.random_init
    assert ex.weights_identity == avvp_pipe.extractors.weights.file_sha256(folder / "model.safetensors")[:16]
    cfg = ex.config()
    assert cfg["weights"]["file"] == "model.safetensors" and cfg["weights"]["config"] and cfg != ref.config()
    items = ref.prepare(make_clip(seed=6))
    torch.testing.assert_close(ex.embed(items), ref.embed(items), rtol=0, atol=0)


def test_bad_repo_files_are_refused_not_randomised(tmp_path):
    from safetensors.torch import load_file, save_file

    name, _, folder = _tiny_repo(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": 64}))
    with pytest.raises(WeightsError, match="hidden_size=64 but the spec expects 32") as info:
        registry.create(name, weights_dir=tmp_path)
    assert "\n" not in str(info.value)
    (folder / "config.json").write_text(json.dumps(config))
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps({**pre, "do_normalize": False}))
    with pytest.raises(WeightsError, match="do_normalize=False but the spec's feature extractor uses True"):
        registry.create(name, weights_dir=tmp_path)
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    state = load_file(str(folder / "model.safetensors"))
    dropped = next(k for k in state if k.endswith("layer_norm.weight"))
    save_file({k: v for k, v in state.items() if k != dropped}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    with pytest.raises(WeightsError, match="1 missing tensors.*would be random") as info:
        registry.create(name, weights_dir=tmp_path)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------
# CLI and the real extract path


def test_cli_lists_and_shows_hf_audio():
    from avvp_pipe.pipeline.cli import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["extractors", "show", AST])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert (shown["name"], shown["out_dim"], shown["family"]) == (STORED[AST], 768, "hf_audio")
    assert shown["input"]["feature_extractor"]["num_mel_bins"] == 128
    result = runner.invoke(cli, ["extractors", "list"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    assert "10 x 768" in rows[STORED[AST]] and "16 kHz" in rows[STORED[HUBERT]] and "hf_audio:<repo>" in result.output


def test_hf_audio_through_the_real_extract_path(tmp_path):
    from avvp_pipe.cache.store import list_stores
    from avvp_pipe.pipeline.extract import ExtractOptions, find_clips, run_extract
    from avvp_pipe.pipeline.train.pairing import read_per_second
    from tests import clips

    videos = tmp_path / "s" / "videos"
    videos.mkdir(parents=True)
    clips.make_clip(videos / "clip0000000.mp4", seed=0)
    requests = (AST, f"{HUBERT}[mode=windows]")
    opts = ExtractOptions(extractors=requests, random_init=True, batch_size=1)  # AST: one item a clip
    summary = run_extract(videos, tmp_path / "cache", find_clips(videos), opts, progress=False)
    assert summary["failures"] == [] and all(summary["per_extractor"][r]["done"] == 1 for r in requests)
    stores = {s.extractor: s for s in list_stores(str(tmp_path / "cache"))}
    assert sorted(stores) == [STORED[AST], STORED[HUBERT]]  # one folder per name
    for name in stores:
        assert tuple(stores[name].shape) == (10, 768)
        feats = read_per_second(stores[name], ["clip0000000"])
        assert feats.shape == (1, 10, 768) and np.isfinite(feats).all()
    assert stores[STORED[HUBERT]].config["options"]["mode"] == "windows"
    assert stores[STORED[AST]].config["weights"]["repo"] == "MIT/ast-finetuned-audioset-10-10-0.4593"
