"""``clap[checkpoint=630k-...]``: LAION's original laion_clap checkpoints, converted by our own
key table, against laion_clap 1.1.7's own HTSAT and projection on the same random weights.

The reference is laion_clap's audio code only: ``laion_clap/__init__`` loads RoBERTa/BERT/BART
tokenizers from the hub at import (training/data.py), so its ``clap_module`` folder is
imported under a private package name (htsat.py and its relative imports, nothing else),
the audio projection is built as its ``CLAP.__init__`` builds it, and ``get_audio_features``
/ ``get_mel`` are its own source, compiled out of training/data.py. laion_clap pins
numpy<2 and pulls in wandb and webdataset, so it is not in the test extra; these tests skip
without it (``pip install --no-deps laion_clap==1.1.7 torchlibrosa==0.1.0`` runs them).

Two levels, because the front ends differ (torchlibrosa / torchaudio in torch vs HF's numpy
``ClapFeatureExtractor``): encoder + projection on the identical log-mel, and end to end
from the waveform, where the log-mels themselves are compared first.
"""

from __future__ import annotations

import ast
import copy
import importlib
import importlib.util
import json
import math
import sys
import types
from contextlib import suppress
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import avvp_pipe.extractors  # noqa: F401  (registers the families)
from avvp_pipe.core.errors import AvvpError, WeightsError
from avvp_pipe.extractors import clap, registry, weights
from tests.test_extractors import make_clip
from tests.tolerance import float32_atol, log_domain_atol

FUSED, UNFUSED = "630k-audioset-fusion-best", "630k-audioset-best"
#: The longest float32 sum in HTSAT-tiny's last stage: its MLP's second Linear (4 x 768 inputs).
REDUCTION = 4 * 768
#: One STFT frame is a float32 sum over the 1024-sample window (then 513 bins into each mel band).
FFT_REDUCTION = 1024
DB_PER_NEPER = 10 / math.log(10)  # 10 log10(x) = 4.34 ln(x): a log-domain bound in dB
WINDOWS = (0, 7)  # the seconds embedded (the model is the slow part; two windows test the batch)
pytestmark = pytest.mark.filterwarnings("ignore:torch.meshgrid:UserWarning")  # laion_clap's Swin code


# ----------------------------------------------------------------------------------------
# laion_clap's audio parts


@pytest.fixture(scope="module")
def laion():
    """laion_clap's clap_module (htsat and what it imports) and its audio_cfg, or skip."""
    spec = importlib.util.find_spec("laion_clap")
    if spec is None or importlib.util.find_spec("torchlibrosa") is None:
        pytest.skip("laion_clap and torchlibrosa are not installed "
                    "(pip install --no-deps laion_clap==1.1.7 torchlibrosa==0.1.0)")
    root = Path(spec.submodule_search_locations[0])
    package = types.ModuleType("_laion_clap_audio")  # not laion_clap: its __init__ needs the hub
    package.__path__ = [str(root / "clap_module")]
    sys.modules.setdefault("_laion_clap_audio", package)
    htsat = importlib.import_module("_laion_clap_audio.htsat")
    model_cfg = json.loads((root / "clap_module" / "model_configs" / "HTSAT-tiny.json").read_text())
    return types.SimpleNamespace(htsat=htsat, root=root, audio_cfg=model_cfg["audio_cfg"],
                                 embed_dim=model_cfg["embed_dim"])


def laion_data_functions(root: Path) -> dict:
    """laion_clap's own get_audio_features / get_mel, compiled from training/data.py alone."""
    path = root / "training" / "data.py"
    wanted = {"get_audio_features", "get_mel"}
    body = [node for node in ast.parse(path.read_text()).body
            if isinstance(node, ast.FunctionDef) and node.name in wanted]
    if {node.name for node in body} != wanted:
        raise RuntimeError(f"{path} no longer defines {sorted(wanted)}")
    namespace = {"torch": torch, "F": F, "np": np, "suppress": suppress}
    for name in ("torchaudio", "torchvision"):  # get_mel's and the > 10 s path's; imported lazily
        with suppress(ImportError):
            namespace[name] = importlib.import_module(name)
    exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), namespace)
    return namespace


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Seeded weights of realistic scale: matrices N(0, 1/fan_in), norms around 1, biases and
    BatchNorm statistics non-zero, relative position biases O(1). Default inits (LayerNorm 1/0,
    BatchNorm 0/1, zero biases) would hide a swapped norm or a dropped bias."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point() or "extractor" in name or name.endswith("attn_mask"):
                continue  # torchlibrosa's fixed STFT/mel constants, derived masks
            r = torch.randn(t.shape, generator=g)
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("relative_position_bias_table"):
                t.copy_(r)
            elif t.ndim >= 2:
                t.copy_(r / math.sqrt(t[0].numel()))
            elif name.endswith("weight"):
                t.copy_(1 + 0.2 * r)
            else:
                t.copy_(0.1 * r)


def laion_model(laion, fusion: bool, seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(HTSAT-tiny audio branch, audio projection) as laion_clap's CLAP builds them, seeded."""
    torch.manual_seed(seed)
    cfg = types.SimpleNamespace(**laion.audio_cfg)  # the CLAPAudioCfp fields create_htsat_model reads
    branch = laion.htsat.create_htsat_model(cfg, enable_fusion=fusion, fusion_type="aff_2d" if fusion else "None")
    joint = 512  # CLAP(joint_embed_shape=512, mlp_act="relu"): Sequential(Linear, ReLU, Linear)
    projection = torch.nn.Sequential(torch.nn.Linear(laion.embed_dim, joint), torch.nn.ReLU(),
                                     torch.nn.Linear(joint, joint))
    randomize(branch, seed + 1)
    randomize(projection, seed + 2)
    return branch.eval(), projection.eval()


def save_original(branch, projection, path: Path, edit=None, **extra_state) -> Path:
    """The layout of LAION's training checkpoints: {'epoch', 'name', 'state_dict'} with DDP's
    ``module.`` prefix, the whole CLAP (here three non-audio keys the converter must drop);
    ``edit(state)`` damages it on purpose."""
    state = {f"module.audio_branch.{k}": v for k, v in branch.state_dict().items()}
    state.update({f"module.audio_projection.{k}": v for k, v in projection.state_dict().items()})
    state["module.text_branch.embeddings.word_embeddings.weight"] = torch.zeros(4, 8)
    state["module.text_projection.0.weight"] = torch.zeros(2, 2)
    state["module.logit_scale_a"] = torch.tensor(math.log(1 / 0.07))
    state.update(extra_state)
    if edit is not None:
        edit(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 45, "name": "synthetic", "best": np.float64(0.5), "state_dict": state}, path)
    weights._SHA_CACHE.clear()
    return path


def original_path(weights_dir: Path, checkpoint: str) -> Path:
    return weights_dir / clap.ORIGINAL_REPO / f"{checkpoint}.pt"


@pytest.fixture(scope="module", params=[UNFUSED, FUSED])
def pair(request, laion, tmp_path_factory):
    """(checkpoint, laion branch, projection, our extractor loaded from the saved .pt)."""
    checkpoint = request.param
    branch, projection = laion_model(laion, clap.ORIGINAL_CHECKPOINTS[checkpoint], seed=0)
    wdir = tmp_path_factory.mktemp("weights")
    save_original(branch, projection, original_path(wdir, checkpoint))
    ours = registry.create("clap", weights_dir=wdir, checkpoint=checkpoint)
    return types.SimpleNamespace(checkpoint=checkpoint, branch=branch, projection=projection, ours=ours,
                                 wdir=wdir, fusion=clap.ORIGINAL_CHECKPOINTS[checkpoint])


def laion_on_mel(pair, mel: torch.Tensor, longer: torch.Tensor) -> torch.Tensor:
    """laion_clap's HTSAT forward + projection on a given log-mel (n, C, 1001, 64), unnormalised.

    Fusion models take the log-mel as input (``mel_fusion``). Non-fusion ones compute it from
    ``waveform`` inside; their torchlibrosa front end is swapped for the identity so the same
    forward (bn0 onwards) runs on the given log-mel.
    """
    branch = pair.branch
    with torch.inference_mode():
        if pair.fusion:
            out = branch({"mel_fusion": mel.clone(), "longer": longer.clone()}, device="cpu")
        else:
            front = (branch.spectrogram_extractor, branch.logmel_extractor)
            branch.spectrogram_extractor = branch.logmel_extractor = torch.nn.Identity()
            try:
                out = branch({"waveform": mel.clone()}, device="cpu")
            finally:
                branch.spectrogram_extractor, branch.logmel_extractor = front
        return pair.projection(out["embedding"])


def assert_float32_close(ours: torch.Tensor, ref: torch.Tensor, reduction: int = REDUCTION) -> float:
    """tests/tolerance's float32 bound at the reference's scale; returns the max difference."""
    err = (ours - ref).abs().max().item()
    tol = float32_atol(ref.numpy(), reduction)
    assert err <= tol, f"max |ours - laion_clap| = {err:.3g} > {tol:.3g}"
    return err


# ----------------------------------------------------------------------------------------
# level 1: encoder + projection on the identical log-mel


def test_original_checkpoint_equals_laion_clap_on_the_same_log_mel(pair):
    items = pair.ours.prepare(make_clip(seed=3))[list(WINDOWS)]  # (2, 1 | 4, 1001, 64), HF's front end
    assert tuple(items.shape[1:]) == ((4 if pair.fusion else 1), 1001, 64)
    ours = pair.ours.embed(items)  # (2, 512), L2-normalised
    ref = F.normalize(laion_on_mel(pair, items, torch.zeros(len(items), dtype=torch.bool)), dim=-1)
    assert ours.shape == ref.shape == (2, 512)
    assert_float32_close(ours, ref)  # measured: 6e-8 (both checkpoints), bound 1.9e-4


@pytest.mark.parametrize("pair", [FUSED], indirect=True)
def test_fusion_branch_equals_laion_clap_on_a_longer_item(pair):
    """An item marked longer goes through mel_conv2d and the AFF block, idle for 10-s clips: the
    only way to test that their keys are mapped (laion_clap and HF both honour ``longer``)."""
    items = pair.ours.prepare(make_clip(seed=6))[list(WINDOWS)]
    longer = torch.tensor([False, True])
    with torch.inference_mode():
        ours = pair.ours.model(input_features=items, is_longer=longer[:, None]).audio_embeds
    ref = laion_on_mel(pair, items, longer)
    err = assert_float32_close(ours, ref)  # measured: 1.1e-6 at scale 2.3, bound 3.3e-3
    plain = laion_on_mel(pair, items, torch.zeros(2, dtype=torch.bool))
    assert (ref[1] - plain[1]).abs().max().item() > 100 * float32_atol(ref.numpy(), REDUCTION) > err


def test_a_wrong_table_entry_is_caught_by_the_tolerance(pair):
    """A wrong entry of the key table is wrong in every block: query/key swapped, key/value
    swapped (the qkv split's order), or the two LayerNorms swapped change the embeddings by
    6.6e-3 to 1.7e-1 (measured), 30x to 900x the bound of 1.9e-4 the right table meets."""
    items = pair.ours.prepare(make_clip(seed=3))[list(WINDOWS)]
    ref = F.normalize(laion_on_mel(pair, items, torch.zeros(len(items), dtype=torch.bool)), dim=-1)
    for a, b in (("attention.self.query.", "attention.self.key."), ("attention.self.key.", "attention.self.value."),
                 ("layernorm_before.", "layernorm_after.")):
        state = dict(pair.ours.model.state_dict())
        for key in [k for k in state if a in k]:
            state[key], state[key.replace(a, b)] = state[key.replace(a, b)], state[key]
        wrong = copy.deepcopy(pair.ours.model)
        wrong.load_state_dict(state)
        with torch.inference_mode():
            out = wrong(input_features=items, is_longer=torch.zeros(len(items), 1, dtype=torch.bool)).audio_embeds
        with pytest.raises(AssertionError, match="max \\|ours - laion_clap\\|"):
            assert_float32_close(F.normalize(out, dim=-1), ref)


# ----------------------------------------------------------------------------------------
# level 2: end to end from the waveform


def test_original_checkpoint_equals_laion_clap_from_the_waveform(pair, laion):
    """laion_clap's get_audio_features (repeat-pad each 1-s window to 10 s; fusion: torchaudio
    htk log-mel x4) or HTSAT's own torchlibrosa (non-fusion) against HF's numpy front end.

    The log-mels are compared first: an STFT frame is a float32 sum over 1024 samples, so in
    dB they may differ by 4.34 x tests/tolerance.log_domain_atol(1024) = 2.1e-3 dB (measured
    1.7e-5 dB non-fusion, 6.5e-5 dB fusion, on log-mels spanning about 40 dB). That is float32
    rounding of the input, so the embeddings must meet the same float32 bound as on identical
    log-mels (measured 6e-8, bound 1.9e-4): the difference end to end is not the front ends'.
    """
    functions = laion_data_functions(laion.root)
    if pair.fusion and "torchaudio" not in functions:
        pytest.skip("laion_clap's fusion front end (get_mel) is torchaudio's MelSpectrogram; torchaudio is "
                    "not installed here")
    c = make_clip(seed=3)
    truncation = "fusion" if pair.fusion else "rand_trunc"  # laion_clap's get_audio_embedding_from_data rule
    features = [functions["get_audio_features"]({}, torch.from_numpy(c.audio_48k[48_000 * k: 48_000 * (k + 1)].copy()),
                                                480_000, data_truncating=truncation, data_filling="repeatpad",
                                                audio_cfg=laion.audio_cfg) for k in WINDOWS]
    batch = {key: torch.cat([f[key].unsqueeze(0) for f in features]) for key in features[0]}
    assert not batch["longer"].any()  # a 1-s window is never "longer": no random fusion crop
    items = pair.ours.prepare(c)[list(WINDOWS)]
    with torch.inference_mode():
        ref_mel = batch["mel_fusion"] if pair.fusion else \
            pair.branch.logmel_extractor(pair.branch.spectrogram_extractor(batch["waveform"]))
        ref = F.normalize(pair.projection(pair.branch(batch, device="cpu")["embedding"]), dim=-1)
    assert ref_mel.shape == items.shape
    mel_err = (items - ref_mel).abs().max().item()
    assert mel_err <= DB_PER_NEPER * log_domain_atol(FFT_REDUCTION), f"log-mel max |d| = {mel_err:.3g} dB"
    assert_float32_close(pair.ours.embed(items), ref)


# ----------------------------------------------------------------------------------------
# the option: fusion follows the name, store keys, one-line errors


def test_original_checkpoints_key_the_store_and_set_fusion(pair):
    cfg = pair.ours.config()
    assert cfg["options"]["checkpoint"] == pair.checkpoint and cfg["weights"]["file"] == f"{pair.checkpoint}.pt"
    path = original_path(pair.wdir, pair.checkpoint)
    assert pair.ours.weights_identity == weights.file_sha256(path)[:16]  # no published hash: the file's own
    assert pair.ours.model.config.enable_fusion is pair.fusion
    assert pair.ours.front_end.truncation == ("fusion" if pair.fusion else "rand_trunc")
    hf_default = registry.create("clap", random_init=True).config()
    random_original = registry.create("clap", random_init=True, checkpoint=pair.checkpoint).config()
    assert hf_default["weights"]["file"] is None and random_original["options"]["checkpoint"] == pair.checkpoint
    assert len({json.dumps(c, sort_keys=True) for c in (cfg, hf_default, random_original)}) == 3


def test_missing_original_checkpoint_is_one_line_naming_the_path(tmp_path):
    with pytest.raises(WeightsError) as info:
        registry.create("clap", weights_dir=tmp_path, checkpoint=FUSED)
    msg = str(info.value)
    assert "\n" not in msg and str(original_path(tmp_path, FUSED)) in msg and "lukewys/laion_clap" in msg


def test_unknown_checkpoint_names_the_choices():
    with pytest.raises(AvvpError, match="Option 'checkpoint'.*630k-audioset-fusion-best.*but got '630k-fusion'"):
        registry.create("clap", random_init=True, checkpoint="630k-fusion")


def _refused(laion, tmp_path, checkpoint: str, *, fusion: bool, match: str, edit=None, **extra) -> str:
    branch, projection = laion_model(laion, fusion, seed=5)
    save_original(branch, projection, original_path(tmp_path, checkpoint), edit, **extra)
    with pytest.raises(WeightsError, match=match) as info:
        registry.create("clap", weights_dir=tmp_path, checkpoint=checkpoint)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_unmapped_and_missing_keys_are_named(laion, tmp_path):
    msg = _refused(laion, tmp_path, UNFUSED, fusion=False, match="does not map",
                   **{"module.audio_branch.extra_layer.weight": torch.zeros(3)})
    assert "audio_branch.extra_layer.weight" in msg
    drop = "module.audio_branch.layers.1.blocks.0.attn.qkv.bias"
    msg = _refused(laion, tmp_path, UNFUSED, fusion=False, match="missing keys",
                   edit=lambda state: state.pop(drop))
    assert "layers.1.blocks.0.attention.self.key.bias" in msg


def test_fusion_file_under_a_non_fusion_name_is_refused(laion, tmp_path):
    _refused(laion, tmp_path, "630k-best", fusion=True, match="unexpected keys.*only 630k-fusion-best, "
             "630k-audioset-fusion-best have them")
    _refused(laion, tmp_path, "630k-fusion-best", fusion=False, match="missing keys.*fusion_model")


def test_a_checkpoint_for_another_front_end_is_refused(laion, tmp_path):
    def other_band(state):  # the filters of fmin=0 instead of 50 Hz
        from transformers import ClapFeatureExtractor

        filters = ClapFeatureExtractor(frequency_min=0, frequency_max=14000).mel_filters_slaney
        state["module.audio_branch.logmel_extractor.melW"] = torch.from_numpy(filters).float()

    _refused(laion, tmp_path, UNFUSED, fusion=False, match="mel filter bank", edit=other_band)


def test_nothing_but_tensors_is_unpickled(laion, tmp_path):
    import argparse

    _refused(laion, tmp_path, FUSED, fusion=True, match="pickles argparse.Namespace: refused",
             **{"args": argparse.Namespace(lr=1e-4)})


def test_extract_preflight_looks_for_the_checkpoint_options_file(laion, tmp_path):
    from avvp_pipe.pipeline.extract.plan import check_weights

    branch, projection = laion_model(laion, True, seed=7)
    save_original(branch, projection, original_path(tmp_path, FUSED))
    check_weights([f"clap[checkpoint={FUSED}]"], str(tmp_path), False)


def test_preflight_and_provenance_name_the_checkpoint_options_file(tmp_path):
    """Without laion_clap: the request's spec, extract's preflight and provenance name the .pt it loads."""
    from avvp_pipe.extractors import registry
    from avvp_pipe.pipeline.extract.plan import check_weights

    request = "clap[checkpoint=630k-fusion-best]"
    assert registry.get_spec(request).weights["file"] == "630k-fusion-best.pt"
    assert registry.get_spec("clap").weights["file"] == "model.safetensors"
    with pytest.raises(WeightsError, match="lukewys/laion_clap.*630k-fusion-best.pt"):
        check_weights([request], str(tmp_path), False)
    target = tmp_path / "lukewys" / "laion_clap" / "630k-fusion-best.pt"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"present")  # the preflight checks presence; loading checks content
    check_weights([request], str(tmp_path), False)
    entry = registry.weights_entry(registry.get_spec("clap"), {"checkpoint": "630k-fusion-best"})
    assert (entry["id"], entry["file"]) == ("lukewys/laion_clap", "630k-fusion-best.pt")
