"""Extractor registry, preprocessing parity, weights handling and the `extractors` CLI.

Everything runs on CPU with random-init models (no weights can be downloaded here) and
never touches the network. Heavy 2D/3D nets are built once per module and run on a couple
of items only; the full per-clip path (prepare -> embed -> finalize) is exercised in full
for VGGish, where it is cheap.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import math
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import avvp_pipe.extractors  # noqa: F401  (its __init__ registers the families, once wired)
import avvp_pipe.extractors.imagenet
import avvp_pipe.extractors.video3d
import avvp_pipe.extractors.vggish
from avvp_pipe.extractors import base, preprocess, registry, weights
from tests.tolerance import log_domain_atol
from avvp_pipe.core.errors import AvvpError, ClipError, WeightsError

if importlib.util.find_spec("avvp_pipe.extractors.openl3") is not None:  # another family, when present
    importlib.import_module("avvp_pipe.extractors.openl3")

NAMES = sorted(registry.REGISTRY)
OURS = ("vggish", "resnet152", "vgg19_bn", "senet154", "polynet", "r2plus1d_18")
#: Cheap enough on one CPU thread to embed every item of a clip; others embed 2 items.
FULL_CLIP = {"vggish"}


# ----------------------------------------------------------------------------------------
# fixtures: a DecodedClip-like object and a cache of built random-init extractors


def _smooth_frames(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """Natural-ish frames: a blocky colour field, bicubic-upscaled, plus noise (uint8)."""
    out = []
    for _ in range(n):
        base_ = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(base_).resize((w, h), Image.BICUBIC), dtype=np.int16)
        out.append(np.clip(img + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8))
    return np.stack(out)  # (n, h, w, 3)


def make_clip(frames: np.ndarray | None = None, *, seed: int = 0, audio: bool = True) -> types.SimpleNamespace:
    """A DecodedClip stand-in with the same fields (small frames, random audio)."""
    rng = np.random.default_rng(seed)
    if frames is None:
        frames = rng.integers(0, 256, (80, 72, 96, 3), dtype=np.uint8)
    t = np.arange(80) / 8.0
    return types.SimpleNamespace(
        clip_id="synthetic00", path="synthetic00.mp4", frames=frames,
        frame_index=np.arange(80, dtype=np.int64), frame_time=t,
        audio_16k=(0.1 * rng.standard_normal(160_000)).astype(np.float32) if audio else None,
        audio_48k=(0.1 * rng.standard_normal(480_000)).astype(np.float32) if audio else None,
        source_fps=8.0, n_source_frames=80, duration=10.0, has_audio=audio, notes=())


@pytest.fixture(scope="module")
def clip() -> types.SimpleNamespace:
    return make_clip()


_BUILT: dict[str, base.Extractor] = {}


@pytest.fixture(scope="module")
def built():
    """name -> random-init extractor, built once per module (building is the slow part)."""

    def get(name: str) -> base.Extractor:
        missing = registry.missing_packages(registry.get_spec(name))
        if missing:
            pytest.skip(f"{name}: packages not installed: {missing}")
        if name not in _BUILT:
            _BUILT[name] = registry.create(name, random_init=True)
        return _BUILT[name]

    yield get
    _BUILT.clear()


# ----------------------------------------------------------------------------------------
# contract over the whole registry


def test_registry_holds_every_family():
    assert set(OURS) <= set(NAMES)
    for name in OURS:
        spec = registry.get_spec(name)
        assert spec.out_frames == (80 if spec.modality == "visual-2d" else 10)


@pytest.mark.parametrize("name", NAMES)
def test_contract_prepare_embed_finalize(name, clip, built):
    ex = built(name)
    spec = ex.spec
    assert not ex.model.training and ex.random_init and ex.weights_identity.startswith("random-init")
    assert not any(p.requires_grad for p in ex.model.parameters())

    items = ex.prepare(clip)
    assert items.dtype == torch.float32 and items.device.type == "cpu"
    assert items.shape[0] == ex.items_per_clip

    n = ex.items_per_clip if name in FULL_CLIP else 2
    emb = ex.embed(items[:n].to(ex.device))
    assert emb.dtype == torch.float32 and tuple(emb.shape) == (n, ex.embed_dim)
    assert torch.isfinite(emb).all()
    assert not torch.allclose(emb[0], emb[1]), "different inputs gave identical embeddings"

    # finalize needs one whole clip; rows past n repeat the computed ones (heavy nets, CPU)
    rows = emb if n == ex.items_per_clip else emb[torch.arange(ex.items_per_clip) % n]
    out = ex.finalize(rows)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert out.shape == ex.out_shape == (spec.out_frames, spec.out_dim)
    assert np.isfinite(out).all()
    with pytest.raises(AvvpError, match="expected embeddings of shape"):
        ex.finalize(emb[:1])


@pytest.mark.parametrize("name", NAMES)
def test_config_is_json_and_stable(name, built):
    ex = built(name)
    first, second = ex.config(), ex.config()
    assert first == second and list(first) == list(second)
    assert json.loads(json.dumps(first)) == first
    assert first["name"] == name and first["weights"]["identity"] == ex.weights_identity
    assert first["out_shape"] == list(ex.out_shape) and first["sampling"]


def test_random_init_is_seeded_and_leaves_global_rng_alone(built):
    first = built("r2plus1d_18")
    state = torch.get_rng_state()
    again = registry.create("r2plus1d_18", random_init=True)
    assert torch.equal(torch.get_rng_state(), state)
    a, b = first.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------
# specs agree with the libraries they were copied from


def test_vggish_spec_matches_torchvggish():
    from torchvggish import torchvggish as tv, vggish_params as p

    inp = registry.get_spec("vggish").input
    assert (inp["sample_rate"], inp["window_s"], inp["hop_s"]) == (p.SAMPLE_RATE, p.STFT_WINDOW_LENGTH_SECONDS,
                                                                   p.STFT_HOP_LENGTH_SECONDS)
    assert (inp["n_mels"], inp["fmin"], inp["fmax"]) == (p.NUM_MEL_BINS, p.MEL_MIN_HZ, p.MEL_MAX_HZ)
    assert (inp["log_offset"], inp["example_s"]) == (p.LOG_OFFSET, p.EXAMPLE_WINDOW_SECONDS)
    w = registry.get_spec("vggish").weights
    assert w["url"] == tv.VGGISH_WEIGHTS and w["extra"]["pca"]["url"] == tv.PCA_PARAMS


@pytest.mark.parametrize("name", ["resnet152", "senet154", "polynet"])
def test_pretrainedmodels_specs_match_settings(name):
    import pretrainedmodels

    spec = registry.get_spec(name)
    settings = pretrainedmodels.pretrained_settings[name]["imagenet"]
    assert spec.weights["url"] == settings["url"]
    assert tuple(spec.input["mean"]) == tuple(settings["mean"]) and tuple(spec.input["std"]) == tuple(settings["std"])
    assert tuple(spec.input["range"]) == tuple(settings["input_range"]) and spec.input["space"] == settings["input_space"]
    assert spec.input["crop"] == max(settings["input_size"])
    assert spec.input["resize"] == math.floor(max(settings["input_size"]) / 0.875)  # TransformImage scale


@pytest.mark.parametrize("name", ["vgg19_bn", "r2plus1d_18"])
def test_torchvision_specs_match_weights_transforms(name):
    from torchvision.models import get_weight

    spec = registry.get_spec(name)
    w = get_weight(spec.weights["id"])
    tf = w.transforms()
    assert spec.weights["url"] == w.url
    assert tuple(spec.input["mean"]) == tuple(tf.mean) and tuple(spec.input["std"]) == tuple(tf.std)
    assert spec.input["interpolation"] == tf.interpolation.value
    if name == "vgg19_bn":
        assert [spec.input["resize"]] == list(tf.resize_size) and [spec.input["crop"]] == list(tf.crop_size)
    else:  # the LLP 3D recipe: straight to the model's 112x112 crop size, no crop
        assert list(spec.input["resize"]) == list(tf.crop_size) and spec.input["crop"] is None


@pytest.mark.parametrize("name", NAMES)
def test_weights_entry_names_its_file(name):
    w = registry.get_spec(name).weights
    if w.get("url"):
        assert w["url"].rsplit("/", 1)[-1] == w["file"]
    if w.get("sha256_prefix"):
        assert f"-{w['sha256_prefix']}." in w["file"]


# ----------------------------------------------------------------------------------------
# preprocessing parity with the reference pipelines


def _official_resnet152(img: Image.Image) -> torch.Tensor:
    """The official LLP recipe, written out: PIL Resize(256)/CenterCrop(224)/ToTensor/Normalize."""
    import torchvision.transforms as T

    return T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                      T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])(img)


def _reference(name: str):
    """The source library's own preprocessing for each 2D extractor, on one PIL image."""
    if name == "resnet152":
        return _official_resnet152
    if name == "vgg19_bn":
        from torchvision.models import get_weight

        return get_weight(registry.get_spec(name).weights["id"]).transforms()
    import pretrainedmodels
    import pretrainedmodels.utils

    return pretrainedmodels.utils.TransformImage(pretrainedmodels.pretrained_settings[name]["imagenet"])


def _assert_close_to_pil(ours: torch.Tensor, ref: torch.Tensor, std, *, levels: int, frac: float) -> None:
    """Tolerance in uint8 levels: torchvision's uint8 antialiased resize and PIL's use
    different fixed-point rounding, so a pixel may differ by a level or two (one level is
    1 / (255 std_c) after normalisation, 0.0175 for std 0.224). Downscales (LLP's usual
    case at 224/256) differ by at most 1 level on < 1% of values; some upscale ratios (e.g.
    360 -> 378 for polynet) reach 2 levels on up to ~8%. Any real recipe error (wrong size,
    crop offset, mean/std, channel order, [0, 255] range) is tens of levels off."""
    assert ours.shape == ref.shape
    diff = (ours - ref).abs() * torch.tensor(std)[:, None, None] * 255  # (N, 3, S, S) in levels
    assert diff.max().item() <= levels + 1e-3
    assert (diff > 0.5).float().mean().item() < frac
    assert diff.mean().item() < 0.1


def test_resnet152_prepare_matches_official_pil_recipe(built):
    """Whole clip through prepare: 80 frames at 360x480 (a downscale, where antialias matters)."""
    frames = _smooth_frames(np.random.default_rng(1), 80, 360, 480)
    ours = built("resnet152").prepare(make_clip(frames))  # (80, 3, 224, 224)
    ref = torch.stack([_official_resnet152(Image.fromarray(f)) for f in frames])
    _assert_close_to_pil(ours, ref, (0.229, 0.224, 0.225), levels=1, frac=0.01)


@pytest.mark.parametrize("name", ["resnet152", "vgg19_bn", "senet154", "polynet"])
@pytest.mark.parametrize("size", [(72, 96), (480, 640), (720, 406)], ids=["up", "down", "portrait"])
def test_2d_preprocessing_matches_library_transform(name, size):
    spec = registry.get_spec(name)
    frames = _smooth_frames(np.random.default_rng(2), 3, *size)
    ours = preprocess.image_batch(torch.from_numpy(frames).permute(0, 3, 1, 2), spec.input)
    ref_tf = _reference(name)
    ref = torch.stack([ref_tf(Image.fromarray(f)) for f in frames])
    _assert_close_to_pil(ours, ref, spec.input["std"], levels=2, frac=0.1)


def test_r2plus1d_prepare_resizes_without_crop_and_groups_by_8(built):
    import torchvision.transforms as T

    frames = _smooth_frames(np.random.default_rng(3), 80, 90, 160)  # 16:9, aspect must not be kept
    items = built("r2plus1d_18").prepare(make_clip(frames))
    assert tuple(items.shape) == (10, 3, 8, 112, 112)
    tf = T.Compose([T.Resize((112, 112)), T.ToTensor(),
                    T.Normalize(avvp_pipe.extractors.video3d.KINETICS_MEAN, avvp_pipe.extractors.video3d.KINETICS_STD)])
    for k in (0, 13, 79):  # frame k is item k // 8, time step k % 8
        ref = tf(Image.fromarray(frames[k]))
        _assert_close_to_pil(items[k // 8, :, k % 8][None], ref[None], avvp_pipe.extractors.video3d.KINETICS_STD,
                             levels=2, frac=0.1)


def test_vggish_log_mel_matches_torchvggish_per_second(built):
    from torchvggish.vggish_input import waveform_to_examples

    rng = np.random.default_rng(4)
    t = np.arange(160_000) / 16_000
    audio = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    clip_ = make_clip()
    clip_.audio_16k = audio
    ours = built("vggish").prepare(clip_)  # (10, 1, 96, 64)
    assert tuple(ours.shape) == (10, 1, 96, 64) and ours.dtype == torch.float32
    for s in range(10):  # the LLP recipe: one example per 1-s piece
        ref = waveform_to_examples(audio[s * 16_000:(s + 1) * 16_000], 16_000)
        assert tuple(ref.shape) == (1, 1, 96, 64)
        torch.testing.assert_close(ours[s], ref[0].detach(), rtol=0, atol=log_domain_atol(512))  # log of 512-pt FFT sums
    whole = waveform_to_examples(audio, 16_000).detach()  # torchvggish's own framing: 0.96-s hops
    assert whole.shape[0] == 10 and not torch.allclose(ours[5], whole[5], atol=1e-3)


def test_audio_and_frame_problems_raise_clip_error(built):
    with pytest.raises(ClipError, match="needs audio"):
        built("vggish").prepare(make_clip(audio=False))
    short = make_clip()
    short.audio_16k = short.audio_16k[:150_000]
    with pytest.raises(ClipError, match=r"expected audio_16k of shape \(160000,\)"):
        built("vggish").prepare(short)
    with pytest.raises(ClipError, match=r"expected frames of shape \(80, H, W, 3\)"):
        built("resnet152").prepare(make_clip(np.zeros((79, 8, 8, 3), np.uint8)))
    with pytest.raises(ClipError, match="uint8"):
        built("resnet152").prepare(make_clip(np.zeros((80, 8, 8, 3), np.float32)))


# ----------------------------------------------------------------------------------------
# options and names


def test_unknown_name_and_options_are_avvp_errors():
    with pytest.raises(AvvpError, match="Unknown extractor 'resnet15'.*resnet152"):
        registry.create("resnet15")
    with pytest.raises(AvvpError, match="Unknown option 'pcaa'.*pca"):
        registry.create("vggish", pcaa=True)
    with pytest.raises(AvvpError, match="Unknown option 'pca'.*none"):
        registry.create("resnet152", pca=True)
    with pytest.raises(AvvpError, match="expected bool"):
        registry.create("vggish", pca=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on CPU-only torch")
def test_cuda_without_cuda_is_an_avvp_error():
    with pytest.raises(AvvpError, match="cuda"):
        registry.create("vggish", device="cuda", random_init=True)


def _fake_pca_file(folder: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A PCA params file shaped like torchvggish's (numpy arrays inside a torch pickle)."""
    rng = np.random.default_rng(5)
    matrix, means = rng.standard_normal((128, 128)) / 8, rng.standard_normal(128)
    path = folder / registry.get_spec("vggish").weights["extra"]["pca"]["file"]
    torch.save({"pca_eigen_vectors": matrix, "pca_means": means}, path)
    return path, matrix, means


def test_vggish_pca_option_matches_torchvggish_postprocessor(tmp_path, built):
    from torchvggish.torchvggish import Postprocessor

    path, matrix, means = _fake_pca_file(tmp_path)
    plain = built("vggish")
    with pytest.raises(WeightsError, match="not the published"):  # our fake params are not torchvggish's
        registry.create("vggish", random_init=True, weights_dir=tmp_path, pca=True)
    with weights.trust_weights():
        ex = registry.create("vggish", random_init=True, weights_dir=tmp_path, pca=True)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert ex.options == {"pca": True, "audio_path": "moviepy"} and ex.weights_identity == f"random-init+pca:{sha}"
    assert ex.config() != plain.config() and ex.config()["options"] == {"pca": True, "audio_path": "moviepy"}

    emb = plain.embed(plain.prepare(make_clip()))  # (10, 128)
    ref = Postprocessor.__new__(Postprocessor)  # its __init__ would download the params
    ref._pca_matrix = torch.as_tensor(matrix).float()
    ref._pca_means = torch.as_tensor(means.reshape(-1, 1)).float()
    expected = ref.postprocess(emb).numpy()
    got = ex.finalize(emb)
    assert got.dtype == np.float32 and got.shape == (10, 128)
    assert np.abs(got - expected).max() <= 1.0  # float32 vs float64 PCA: a rounding edge at most
    assert (got == expected).mean() > 0.99
    assert not np.array_equal(got, plain.finalize(emb))


def test_vggish_pca_without_params_file_is_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="vggish_pca_params-970ea276.pth"):
        registry.create("vggish", random_init=True, weights_dir=tmp_path, pca=True)


# ----------------------------------------------------------------------------------------
# weights: offline folder, hub cache, bounded download, identity


@pytest.mark.parametrize("name", NAMES)
def test_missing_weights_in_weights_dir(name, tmp_path):
    spec = registry.get_spec(name)
    if registry.missing_packages(spec):
        pytest.skip(f"{name}: packages not installed")
    if not spec.weights.get("file"):
        pytest.skip(f"{name}: weights come with the package")
    with pytest.raises(WeightsError) as info:
        registry.create(name, weights_dir=tmp_path)
    msg = str(info.value)
    assert "\n" not in msg and spec.weights["file"] in msg and str(tmp_path) in msg
    assert (spec.weights.get("url") or "") in msg
    assert registry.availability(name, tmp_path)["weights"] == "missing"


@pytest.fixture()
def empty_hub(tmp_path, monkeypatch):
    """TORCH_HOME pointing at an empty folder and a downloader that records and fails."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    calls = []

    def refuse(url, dst, *, hash_prefix, timeout_s=weights.DOWNLOAD_TIMEOUT_S):
        calls.append((url, Path(dst), hash_prefix, timeout_s))
        raise OSError("network disabled in tests")

    monkeypatch.setattr(weights, "download", refuse)
    return calls


def test_default_path_download_failure_is_one_line_weights_error(empty_hub, tmp_path):
    spec = registry.get_spec("r2plus1d_18")
    assert registry.availability("r2plus1d_18")["weights"] == "downloadable"
    with pytest.raises(WeightsError) as info:
        registry.create("r2plus1d_18")
    msg = str(info.value)
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    assert "\n" not in msg and spec.weights["file"] in msg and spec.weights["url"] in msg
    assert str(hub) in msg and "--weights-dir" in msg and "network disabled" in msg
    [(url, dst, prefix, timeout)] = empty_hub
    assert url == spec.weights["url"] and dst == hub / spec.weights["file"]
    assert prefix == spec.weights["sha256_prefix"] and 0 < timeout <= 60
    assert not dst.exists()


def test_weights_dir_never_downloads(empty_hub, tmp_path):
    with pytest.raises(WeightsError, match="offline"):
        registry.create("vggish", weights_dir=tmp_path)
    assert empty_hub == []


def test_hub_cache_file_is_used_without_download(empty_hub, tmp_path, built):
    """A file torch.hub (any library) already cached is found; nothing is downloaded."""
    ref = built("r2plus1d_18")
    path = tmp_path / "torch_home" / "hub" / "checkpoints" / "r2plus1d_18-91a641e6.pth"
    path.parent.mkdir(parents=True)
    torch.save(ref.model.state_dict(), path)
    assert registry.availability("r2plus1d_18")["weights"] == "present"
    with weights.trust_weights():  # our re-saved file is not torchvision's: trusted explicitly
        ex = registry.create("r2plus1d_18")
    assert empty_hub == [] and ex.weights_identity == weights.file_sha256(path)[:16]


def test_weights_file_in_weights_dir_is_loaded_and_hashed(tmp_path, built, caplog):
    ref = built("r2plus1d_18")
    state = dict(ref.model.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(400, 512), torch.zeros(400)  # the full torchvision file
    path = tmp_path / registry.get_spec("r2plus1d_18").weights["file"]
    torch.save(state, path)
    assert registry.availability("r2plus1d_18", tmp_path) == {
        "packages": True, "missing_packages": [], "weights": "present", "weights_path": str(path)}

    with pytest.raises(WeightsError, match="not the published .*--trust-weights"):  # not torchvision's file
        registry.create("r2plus1d_18", weights_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="avvp_pipe.extractors.weights"), weights.trust_weights():
        ex = registry.create("r2plus1d_18", weights_dir=tmp_path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert ex.weights_identity == sha[:16] and not ex.random_init
    assert "not the published" in caplog.text  # our file is not torchvision's, and it says so
    cfg = ex.config()
    assert cfg["weights"] == {"identity": sha[:16], "file": path.name} and cfg != ref.config()

    x = torch.randn(1, 3, 8, 32, 32, generator=torch.Generator().manual_seed(0))  # tiny: speed
    torch.testing.assert_close(ex.embed(x), ref.embed(x), rtol=0, atol=0)


def test_weights_file_of_the_wrong_network_is_weights_error(tmp_path):
    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "vggish-10086976.pth")
    with pytest.raises(WeightsError, match="does not fit extractor 'vggish'.*missing keys"), weights.trust_weights():
        registry.create("vggish", weights_dir=tmp_path)


def test_unreadable_weights_file_is_weights_error(tmp_path):
    (tmp_path / "vggish-10086976.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot be read"), weights.trust_weights():
        registry.create("vggish", weights_dir=tmp_path)


# ----------------------------------------------------------------------------------------
# CLI


def _cli(args):
    from avvp_pipe.pipeline import cli as cli_mod

    return CliRunner().invoke(cli_mod.cli, args)


def test_cli_list_table_and_json(tmp_path):
    result = _cli(["extractors", "list", "--weights-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:2] == ["name", "modality"]
    for name in NAMES:
        assert any(line.split()[0] == name for line in lines[1:])
    row = next(line for line in lines if line.startswith("vggish "))
    assert "10 x 128" in row and "16 kHz" in row and "missing" in row
    assert "80 x 2048" in next(line for line in lines if line.startswith("resnet152 "))

    result = _cli(["extractors", "list", "--weights-dir", str(tmp_path), "--json"])
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert set(rows) == set(registry.listed_names()) >= set(NAMES)  # plus listed members such as hf_audio's repos
    assert rows["polynet"]["input"] == "331x331" and rows["r2plus1d_18"]["input"] == "112x112 x8"
    assert rows["r2plus1d_18"]["out_shape"] == [10, 512] and rows["r2plus1d_18"]["weights"] == "missing"


def test_cli_show_prints_spec_json_and_rejects_unknown():
    result = _cli(["extractors", "show", "resnet152"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == registry.get_spec("resnet152").to_dict()
    result = _cli(["extractors", "show", "resnet15"])
    assert result.exit_code == 3 and "Unknown extractor 'resnet15'" in result.output
