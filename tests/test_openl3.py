"""OpenL3 in torch: front-ends, networks, the Keras weight importer, the two extractors.

The reference for the importer is a synthetic Keras-layout .h5 file written here with h5py
(layer names, HWIO kernels, BN variables as Keras 2 saves them) and an independent numpy
re-implementation of the first conv block; for the front-end, numpy/librosa formulas of
Kapre's tf.signal.stft path. The real openl3 package (TensorFlow) is compared only where it
is installed.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from avvp_pipe.extractors import openl3 as ol3
from avvp_pipe.extractors.registry import create
from avvp_pipe.core.errors import ClipError, WeightsError
from tests.tolerance import float32_atol

SR = 48_000
AUDIO_WEIGHTED = 16  # 8 Conv2D + 8 BatchNormalization


# ------------------------------------------------------------------------------------------
# A synthetic Keras weights file (the layout of keras 2 `save_weights` / `save`)
# ------------------------------------------------------------------------------------------

def _keras_layer_plan(net: str) -> list[tuple[str, str, int, int]]:
    """(name, kind, in_ch, out_ch) for every layer, in model order, Keras 2 auto-names.

    Written out from openl3/models.py, independently of extractors.openl3.
    """
    in_ch = 1 if net == "audio" else 3
    plan = [("input_1", "input", 0, 0), ("batch_normalization_1", "bn", in_ch, in_ch)]
    counters = {"conv": 0, "bn": 1, "act": 0, "pool": 0}

    def add(kind: str, cin: int, cout: int, name: str | None = None) -> None:
        key = {"conv": "conv", "bn": "bn", "relu": "act", "pool": "pool"}[kind]
        counters[key] += 1
        base = {"conv": "conv2d", "bn": "batch_normalization", "act": "activation",
                "pool": "max_pooling2d"}[key]
        plan.append((name or f"{base}_{counters[key]}", kind, cin, cout))

    cin = in_ch
    for block, width in enumerate((64, 128, 256, 512), start=1):
        add("conv", cin, width)
        add("bn", width, width)
        add("relu", width, width)
        if block < 4:
            add("conv", width, width)
            if net == "image" and block == 1:  # ReLU before BN in the image net's block 1
                add("relu", width, width)
                add("bn", width, width)
            else:
                add("bn", width, width)
                add("relu", width, width)
            add("pool", width, width)
        cin = width
    add("conv", 512, 512, name=f"{net if net == 'audio' else 'vision'}_embedding_layer")
    return plan


def _random_arrays(kind: str, cin: int, cout: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    if kind == "conv":
        return {"kernel": rng.normal(0, (2.0 / (9 * cin)) ** 0.5, (3, 3, cin, cout)).astype(np.float32),
                "bias": rng.normal(0, 0.1, cout).astype(np.float32)}
    return {"gamma": rng.uniform(0.5, 1.5, cout).astype(np.float32),
            "beta": rng.normal(0, 0.2, cout).astype(np.float32),
            "moving_mean": rng.normal(0, 0.3, cout).astype(np.float32),
            # small variances, so Keras' eps (1e-3) vs torch's (1e-5) changes the numbers
            "moving_variance": rng.uniform(0.002, 0.02, cout).astype(np.float32)}


def write_keras_h5(path: Path, net: str = "audio", *, seed: int = 0, layout: str = "save_weights",
                   extra_layers: tuple[str, ...] = (), drop: str | None = None,
                   reshape: dict[str, tuple[int, ...]] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Write a Keras-layout weights file; return {layer name: {short name: array}}."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, dict[str, np.ndarray]] = {}
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if layout == "save" else f
        names = []
        for name in extra_layers:  # e.g. a kapre 0.1.4 "melspectrogram_1" layer
            g = root.create_group(name)
            g.attrs["weight_names"] = np.array([f"{name}/real_kernels:0".encode()])
            g.create_dataset(f"{name}/real_kernels:0", data=rng.normal(size=(8, 1, 1, 5)).astype(np.float32))
            names.append(name)
        for name, kind, cin, cout in _keras_layer_plan(net):
            names.append(name)
            g = root.create_group(name)
            if kind not in ("conv", "bn") or name == drop:
                g.attrs["weight_names"] = np.array([], dtype="S1")
                continue
            layer = _random_arrays(kind, cin, cout, rng)
            if reshape and name in reshape:
                layer["kernel"] = rng.normal(size=reshape[name]).astype(np.float32)
            arrays[name] = layer
            g.attrs["weight_names"] = np.array([f"{name}/{k}:0".encode() for k in layer])
            for k, v in layer.items():
                g.create_dataset(f"{name}/{k}:0", data=v)
        root.attrs["layer_names"] = np.array([n.encode() for n in names])
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"2.2.4"
    return arrays


# ------------------------------------------------------------------------------------------
# Independent numpy reference of the first block (input BN, conv 3x3 'same', BN, ReLU)
# ------------------------------------------------------------------------------------------

def _np_bn(x: np.ndarray, bn: dict[str, np.ndarray]) -> np.ndarray:
    """Keras BatchNormalization at inference, channels first here: x (C, H, W)."""
    shape = (-1, 1, 1)
    scale = bn["gamma"].reshape(shape) / np.sqrt(bn["moving_variance"].reshape(shape) + 1e-3)
    return (x - bn["moving_mean"].reshape(shape)) * scale + bn["beta"].reshape(shape)


def _np_conv_same(x: np.ndarray, kernel_hwio: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Keras Conv2D (cross-correlation, 'same', stride 1) with an HWIO kernel; x (C, H, W)."""
    c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    out = np.zeros((kernel_hwio.shape[3], h, w))
    for dy in range(3):
        for dx in range(3):
            patch = padded[:, dy:dy + h, dx:dx + w]  # (C, H, W)
            out += np.einsum("chw,co->ohw", patch, kernel_hwio[dy, dx])
    return out + bias.reshape(-1, 1, 1)


def _np_stem(x: np.ndarray, arrays: dict[str, dict[str, np.ndarray]]) -> np.ndarray:
    y = _np_bn(x, arrays["batch_normalization_1"])
    y = _np_conv_same(y, arrays["conv2d_1"]["kernel"], arrays["conv2d_1"]["bias"])
    return np.maximum(_np_bn(y, arrays["batch_normalization_2"]), 0.0)


def _np_block1(x: np.ndarray, arrays: dict[str, dict[str, np.ndarray]], net: str) -> np.ndarray:
    """Block 1 before its pool; openl3's image net applies ReLU before the second BN."""
    y = _np_conv_same(_np_stem(x, arrays), arrays["conv2d_2"]["kernel"], arrays["conv2d_2"]["bias"])
    if net == "image":
        return _np_bn(np.maximum(y, 0.0), arrays["batch_normalization_3"])
    return np.maximum(_np_bn(y, arrays["batch_normalization_3"]), 0.0)


# ------------------------------------------------------------------------------------------
# Importer
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["save_weights", "save"])
def test_import_maps_every_layer_transposed(tmp_path: Path, layout: str) -> None:
    h5 = tmp_path / "openl3_audio_mel256_music.h5"
    arrays = write_keras_h5(h5, "audio", seed=1, layout=layout)
    lines: list[str] = []
    out = ol3.import_keras_weights(h5, tmp_path / "w", log=lines.append)
    assert out == tmp_path / "w" / "openl3" / "openl3_audio_mel256_music.pt"
    assert not list(out.parent.glob(".*.tmp")), "atomic write left a temp file"
    state = torch.load(out, weights_only=True)
    # single elements, indexed by hand: torch (out, in, kh, kw) <- Keras (kh, kw, in, out)
    k = arrays["conv2d_2"]["kernel"]  # block 1, second conv: (3, 3, 64, 64)
    assert state["conv1b.weight"][5, 3, 0, 2].item() == pytest.approx(float(k[0, 2, 3, 5]))
    assert state["conv1b.weight"][3, 5, 2, 0].item() == pytest.approx(float(k[2, 0, 5, 3]))
    k = arrays["conv2d_3"]["kernel"]  # block 2, first conv: (3, 3, 64, 128)
    assert state["conv2a.weight"][100, 7, 1, 2].item() == pytest.approx(float(k[1, 2, 7, 100]))
    emb = arrays["audio_embedding_layer"]
    assert state["embedding_conv.weight"][511, 0, 2, 1].item() == pytest.approx(
        float(emb["kernel"][2, 1, 0, 511]))
    np.testing.assert_array_equal(state["embedding_conv.bias"].numpy(), emb["bias"])
    bn = arrays["batch_normalization_3"]  # after conv2d_2
    np.testing.assert_array_equal(state["bn1b.weight"].numpy(), bn["gamma"])
    np.testing.assert_array_equal(state["bn1b.bias"].numpy(), bn["beta"])
    np.testing.assert_array_equal(state["bn1b.running_mean"].numpy(), bn["moving_mean"])
    np.testing.assert_array_equal(state["bn1b.running_var"].numpy(), bn["moving_variance"])
    np.testing.assert_array_equal(state["input_bn.running_var"].numpy(),
                                  arrays["batch_normalization_1"]["moving_variance"])
    assert any(f"imported {AUDIO_WEIGHTED} layers" in line and "replaced" not in line for line in lines)
    ol3.import_keras_weights(h5, tmp_path / "w", log=lines.append)  # again: says it replaced
    assert "replaced the previous file" in lines[-1]
    assert any("conv2d_2" in line and "conv1b" in line for line in lines)


@pytest.mark.parametrize("net", ["audio", "image"])
def test_imported_first_block_matches_numpy(tmp_path: Path, net: str) -> None:
    """A wrong transpose (HWIO->OIHW), a flipped kernel or torch's BN eps all fail here."""
    h5 = tmp_path / f"openl3_{net}_mel128_env.h5"
    arrays = write_keras_h5(h5, net, seed=2)
    out = ol3.import_keras_weights(h5, tmp_path)
    model = ol3.build_audio_network("mel128") if net == "audio" else ol3.build_image_network()
    model.load_state_dict(torch.load(out, weights_only=True))
    model.eval()
    channels = 1 if net == "audio" else 3
    x = np.random.default_rng(3).normal(size=(channels, 7, 5)).astype(np.float32)  # non-square
    with torch.no_grad():
        got = model.stem(torch.from_numpy(x)[None])[0].numpy()  # (64, 7, 5)
        block = model.block1(torch.from_numpy(x)[None])[0].numpy()  # (64, 7, 5)
    # float64 references; float32 sums over 3x3 x C_in (stem) and then 3x3 x 64 (block1's second conv)
    stem_ref, block_ref = _np_stem(x.astype(np.float64), arrays), _np_block1(x.astype(np.float64), arrays, net)
    np.testing.assert_allclose(got, stem_ref, rtol=0, atol=float32_atol(stem_ref, 9 * channels))
    np.testing.assert_allclose(block, block_ref, rtol=0, atol=float32_atol(block_ref, 9 * 64 + 9 * channels))


def test_embedding_pool_and_flatten_follow_keras() -> None:
    """6144 = max over 4x3 cells of the 16x24 (mel128) map, flattened as (h, w, c)."""
    torch.manual_seed(0)
    model = ol3.build_audio_network("mel128", 6144).eval()
    x = torch.randn(1, 1, 128, 199)
    with torch.no_grad():
        fmap = model.feature_map(x)[0].numpy()  # (512, 16, 24)
        got = model(x)[0].numpy()  # (6144,)
    assert fmap.shape == (512, 16, 24)
    cells = fmap.reshape(512, 4, 4, 3, 8).max(axis=(2, 4))  # (c, h', w'): pool 4x8
    np.testing.assert_allclose(got, cells.transpose(1, 2, 0).reshape(-1), rtol=1e-6)


def test_import_gzip_skips_kapre_layer_and_builds_extractor(tmp_path: Path) -> None:
    h5 = tmp_path / "openl3_image_linear_env-v0_3_0.h5"
    arrays = write_keras_h5(h5, "image", seed=4, extra_layers=("melspectrogram_1",))
    gz = tmp_path / "openl3_image_linear_env-v0_3_0.h5.gz"
    with open(h5, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    lines: list[str] = []
    out = ol3.import_keras_weights(gz, tmp_path / "w", log=lines.append)
    assert out.name == "openl3_image_linear_env.pt"
    assert any("melspectrogram_1" in line and "skipped" in line for line in lines)
    ext = create("openl3_image", weights_dir=tmp_path / "w", input_repr="linear", content_type="env")
    assert len(ext.weights_identity) == 16 and ext.weights_identity != "random-init"
    got = ext.model.conv1a.weight.detach().numpy()  # (64, 3, 3, 3)
    np.testing.assert_array_equal(got[7, 2, 1, 0], arrays["conv2d_1"]["kernel"][1, 0, 2, 7])


def test_import_errors_name_the_problem(tmp_path: Path) -> None:
    text = tmp_path / "openl3_audio_mel256_music.h5"
    text.write_text("not an hdf5 file")
    with pytest.raises(WeightsError, match="not HDF5"):
        ol3.import_keras_weights(text, tmp_path)

    missing = tmp_path / "openl3_audio_mel256_env.h5"
    write_keras_h5(missing, "audio", drop="batch_normalization_5")
    with pytest.raises(WeightsError, match=f"expected {AUDIO_WEIGHTED} weighted layers .* found 15"):
        ol3.import_keras_weights(missing, tmp_path)

    bad_shape = tmp_path / "openl3_audio_linear_music.h5"
    write_keras_h5(bad_shape, "audio", reshape={"conv2d_3": (3, 3, 32, 128)})
    with pytest.raises(WeightsError, match=r"conv2d_3.*\(3, 3, 32, 128\).*expected \(3, 3, 64, 128\)"):
        ol3.import_keras_weights(bad_shape, tmp_path)

    unnamed = tmp_path / "weights.h5"
    write_keras_h5(unnamed, "audio")
    with pytest.raises(WeightsError, match="--input-repr and --content-type"):
        ol3.import_keras_weights(unnamed, tmp_path)
    out = ol3.import_keras_weights(unnamed, tmp_path, input_repr="mel128", content_type="env")
    assert out.name == "openl3_audio_mel128_env.pt"  # the layers said audio

    swapped = tmp_path / "openl3_audio_mel256_music-copy.h5"
    write_keras_h5(swapped, "image")
    with pytest.raises(WeightsError, match="vision_embedding_layer"):
        ol3.import_keras_weights(swapped, tmp_path)
    assert not (tmp_path / "openl3" / "openl3_audio_mel256_music.pt").exists()


def test_cli_import_openl3(tmp_path: Path) -> None:
    from avvp_pipe.pipeline import cli as cli_mod

    h5 = tmp_path / "openl3_audio_mel256_music.h5"
    write_keras_h5(h5, "audio")
    runner = CliRunner()
    result = runner.invoke(cli_mod.cli, ["weights", "import-openl3", str(h5), "--weights-dir",
                                              str(tmp_path / "w")])
    assert result.exit_code == 0, result.output
    assert f"imported {AUDIO_WEIGHTED} layers" in result.output
    assert (tmp_path / "w" / "openl3" / "openl3_audio_mel256_music.pt").is_file()

    junk = tmp_path / "openl3_image_mel256_music.h5"
    junk.write_bytes(b"\x00" * 64)
    result = runner.invoke(cli_mod.cli, ["weights", "import-openl3", str(junk)])
    assert result.exit_code == 4
    assert "not HDF5" in result.output and len(result.output.strip().splitlines()) == 1


def test_missing_weights_name_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"openl3_audio_mel128_env\.pt.*import-openl3 "
                                          r"openl3_audio_mel128_env-v0_4_0\.h5\.gz"):
        create("openl3_audio", weights_dir=tmp_path, input_repr="mel128", content_type="env")
    with pytest.raises(WeightsError, match=r"openl3_image_mel256_music\.pt"):
        create("openl3_image", weights_dir=tmp_path)


# ------------------------------------------------------------------------------------------
# Front-end
# ------------------------------------------------------------------------------------------

def _tone(freq: float, n: int = SR) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(n) / SR)).astype(np.float32)


def test_spectrogram_shapes_match_openl3() -> None:
    windows = ol3.frame_audio(_tone(440.0))[:2]  # (2, 48000)
    expected = {"mel256": (256, 199), "mel128": (128, 199), "linear": (257, 197)}
    for repr_, shape in expected.items():
        spec = ol3.log_spectrogram(windows, ol3.FRONT_ENDS[repr_])
        assert tuple(spec.shape) == (2, 1, *shape), repr_


def test_pure_tone_lands_in_its_bin() -> None:
    import librosa

    window = torch.from_numpy(_tone(11 * SR / 512))[None]  # linear bin 11 exactly (1031.25 Hz)
    lin = ol3.log_spectrogram(window, ol3.FRONT_ENDS["linear"])[0, 0]  # (257, 197)
    assert (lin.argmax(dim=0) == 11).all()
    for n_mels in (256, 128):
        centres = librosa.mel_frequencies(n_mels + 2, fmin=0.0, fmax=SR / 2)[1:-1]
        freq = float(centres[n_mels // 3])  # a filter's centre, far from the ends
        mel = ol3.log_spectrogram(torch.from_numpy(_tone(freq))[None],
                                  ol3.FRONT_ENDS[f"mel{n_mels}"])[0, 0]  # (M, 199)
        assert (mel[:, :190].argmax(dim=0) == n_mels // 3).all(), n_mels  # last frames: zero pad


def test_decibel_scaling_per_window() -> None:
    rng = np.random.default_rng(0)
    audio = rng.normal(0, 0.1, SR).astype(np.float32)
    windows = torch.from_numpy(np.stack([audio, 0.01 * audio, np.zeros_like(audio)]))
    spec = ol3.log_spectrogram(windows, ol3.FRONT_ENDS["mel256"])  # (3, 1, 256, 199)
    assert torch.all(spec.amax(dim=(1, 2, 3)) == 0.0)
    assert spec.min() >= -80.0
    assert torch.allclose(spec[0], spec[1], atol=1e-3)  # gain-invariant: max-normalised
    assert torch.all(spec[2] == 0.0)  # silence: floor == max


@pytest.mark.parametrize("repr_", ["mel256", "linear"])
def test_spectrogram_matches_numpy_tf_stft(repr_: str) -> None:
    """tf.signal.stft semantics (frames from 0, zeros at the end, periodic Hann) in numpy."""
    import librosa

    fe = ol3.FRONT_ENDS[repr_]
    audio = np.random.default_rng(1).normal(0, 0.1, SR)
    n_fft, hop = fe.n_fft, 242
    n_frames = -(-SR // hop) if repr_ != "linear" else 1 + (SR - n_fft) // hop
    padded = np.pad(audio, (0, max(0, (n_frames - 1) * hop + n_fft - SR)))
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.stack([padded[t * hop:t * hop + n_fft] * hann for t in range(n_frames)])
    mag = np.abs(np.fft.rfft(frames, axis=1)).T  # (n_fft//2+1, T)
    if repr_ != "linear":
        mag = librosa.filters.mel(sr=SR, n_fft=n_fft, n_mels=256) @ mag
    db = 10 * np.log10(np.maximum(mag, 1e-10))
    db = np.maximum(db - db.max(), -80.0)
    got = ol3.log_spectrogram(torch.from_numpy(audio.astype(np.float32))[None], fe)[0, 0].numpy()
    assert got.shape == db.shape
    np.testing.assert_allclose(got, db, atol=2e-2)


def test_framing_is_openl3_center_true() -> None:
    ramp = np.arange(1, 10 * SR + 1, dtype=np.float32)  # sample i holds i + 1
    windows = ol3.frame_audio(ramp).numpy()  # (96, 48000)
    assert windows.shape == (96, SR)
    for k in (0, 1, 5, 90, 95):
        idx = k * 4800 - 24000 + np.arange(SR)
        expected = np.where((idx >= 0) & (idx < 10 * SR), idx + 1, 0)
        np.testing.assert_array_equal(windows[k], expected)
    assert np.bincount(ol3.window_seconds(96)).tolist() == [10] * 9 + [6]


# ------------------------------------------------------------------------------------------
# Image preprocessing
# ------------------------------------------------------------------------------------------

def test_image_preprocessing_crop_and_range() -> None:
    half = np.zeros((2, 256, 512, 3), np.uint8)
    half[:, :, 256:] = 255  # right half white
    half[:, :, :, 1] = 128  # green constant
    out = ol3.preprocess_frames(torch.from_numpy(half).permute(0, 3, 1, 2))  # no resize needed
    assert tuple(out.shape) == (2, 3, 224, 224)
    assert torch.all(out[:, 0, :, :112] == -1.0) and torch.all(out[:, 0, :, 112:] == 1.0)
    assert torch.allclose(out[:, 1], torch.tensor(2 * 128 / 255 - 1), atol=1e-6)
    big = np.repeat(np.repeat(half, 2, axis=1), 2, axis=2)  # 512x1024: resized to 256x512
    out_big = ol3.preprocess_frames(torch.from_numpy(big).permute(0, 3, 1, 2))
    assert torch.allclose(out_big[..., :, :108], out[..., :, :108], atol=1e-6)
    assert torch.allclose(out_big[..., :, 116:], out[..., :, 116:], atol=1e-6)
    with pytest.raises(ClipError, match="uint8"):
        ol3.preprocess_frames(torch.zeros(1, 3, 256, 256))


# ------------------------------------------------------------------------------------------
# Extractors: shapes for every option, config, random init, finalize
# ------------------------------------------------------------------------------------------

OPTIONS = [(r, c, e) for r in ol3.INPUT_REPRS for c in ol3.CONTENT_TYPES for e in (512, "big")]


def _clip(seconds: int = 10, with_frames: bool = False) -> SimpleNamespace:
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, (80, 64, 96, 3), dtype=np.uint8) if with_frames else None
    return SimpleNamespace(clip_id="abcdefghijk", frames=frames, has_audio=True,
                           audio_48k=rng.normal(0, 0.1, seconds * SR).astype(np.float32),
                           audio_16k=None)


@pytest.mark.parametrize("net", ["audio", "image"])
@pytest.mark.parametrize("input_repr,content_type,size", OPTIONS)
def test_every_option_builds_with_the_right_shapes(net: str, input_repr: str, content_type: str,
                                                   size: int | str) -> None:
    dim = size if size != "big" else (6144 if net == "audio" else 8192)
    ext = create(f"openl3_{net}", random_init=True, input_repr=input_repr,
                 content_type=content_type, embedding_size=dim)
    assert ext.out_shape == ((10, dim) if net == "audio" else (80, dim))
    assert ext.items_per_clip == (96 if net == "audio" else 80)
    assert ext.weights_identity == "random-init"
    cfg = ext.config()
    assert cfg["options"] == {"content_type": content_type, "embedding_size": dim, "input_repr": input_repr}
    assert cfg["weights"]["file"] is None


# One forward per distinct architecture (content_type and the image's input_repr only pick
# weights), on a single item each: the networks cost ~10 GMAC per window/frame on CPU.
ARCHS = [("audio", r, e) for r in ol3.INPUT_REPRS for e in ol3.AUDIO_EMBEDDING_SIZES] + \
        [("image", "mel256", e) for e in ol3.IMAGE_EMBEDDING_SIZES]


@pytest.mark.parametrize("net,input_repr,dim", ARCHS)
def test_embed_one_item_per_architecture(net: str, input_repr: str, dim: int) -> None:
    ext = create(f"openl3_{net}", random_init=True, input_repr=input_repr, embedding_size=dim)
    if net == "audio":
        items = ext.prepare(_clip())  # (96, 1, F, T)
        assert tuple(items.shape[2:]) == (ol3.FRONT_ENDS[input_repr].n_bins,
                                          ol3.FRONT_ENDS[input_repr].n_frames())
    else:
        items = ext.prepare(_clip(with_frames=True))  # (80, 3, 224, 224)
    assert items.shape[0] == ext.items_per_clip and items.dtype == torch.float32
    emb = ext.embed(items[40:41])
    assert tuple(emb.shape) == (1, dim) and torch.isfinite(emb).all()


def test_audio_finalize_averages_windows_per_second() -> None:
    ext = create("openl3_audio", random_init=True)
    rows = torch.arange(96, dtype=torch.float32)[:, None].repeat(1, 512)  # row k holds k
    out = ext.finalize(rows)
    assert out.shape == (10, 512) and out.dtype == np.float32
    expected = [np.mean(range(10 * s, min(10 * s + 10, 96))) for s in range(10)]
    np.testing.assert_allclose(out[:, 0], expected)
    with pytest.raises(Exception, match=r"expected embeddings of shape \(96, 512\)"):
        ext.finalize(rows[:95])


def test_random_init_is_seeded_and_configs_differ() -> None:
    a = create("openl3_audio", random_init=True)
    b = create("openl3_audio", random_init=True)
    assert torch.equal(a.model.conv2a.weight, b.model.conv2a.weight)
    c = create("openl3_audio", random_init=True, input_repr="mel128")
    assert a.config() != c.config() and a.config()["frontend"]["n_mels"] == 256
    d = create("openl3_audio", random_init=True, content_type="env")
    assert a.config() != d.config()
    with pytest.raises(Exception, match="input_repr"):
        create("openl3_audio", random_init=True, input_repr="mel64")
    with pytest.raises(Exception, match="embedding_size"):
        create("openl3_image", random_init=True, embedding_size=6144)


def test_audio_needs_audio() -> None:
    ext = create("openl3_audio", random_init=True)
    clip = _clip()
    clip.audio_48k = None
    with pytest.raises(ClipError, match="audio"):
        ext.prepare(clip)


@pytest.mark.skipif(os.environ.get("AVVP_SLOW_TESTS") != "1",
                    reason="full 10-s clip through the CPU networks takes minutes; set AVVP_SLOW_TESTS=1")
def test_full_clip_default_configs() -> None:
    clip = _clip(with_frames=True)
    audio = create("openl3_audio", random_init=True)
    items = audio.prepare(clip)
    emb = torch.cat([audio.embed(chunk) for chunk in items.split(16)])  # (96, 512)
    out = audio.finalize(emb)
    assert out.shape == (10, 512)
    np.testing.assert_allclose(out[9], emb[90:].mean(0).numpy(), rtol=1e-5, atol=1e-5)
    image = create("openl3_image", random_init=True)
    items = image.prepare(clip)
    out = image.finalize(torch.cat([image.embed(chunk) for chunk in items.split(16)]))
    assert out.shape == (80, 512) and np.isfinite(out).all()


# ------------------------------------------------------------------------------------------
# The real openl3 package, where installed (needs TensorFlow; not installable here)
# ------------------------------------------------------------------------------------------

def test_matches_the_openl3_package(tmp_path: Path) -> None:
    openl3 = pytest.importorskip("openl3")
    from openl3.models import get_audio_embedding_model_path, get_image_embedding_model_path

    ol3.import_keras_weights(get_audio_embedding_model_path("mel256", "music"), tmp_path)
    ol3.import_keras_weights(get_image_embedding_model_path("mel256", "music"), tmp_path)
    audio = np.random.default_rng(0).normal(0, 0.1, int(1.5 * SR)).astype(np.float32)
    ref, _ = openl3.get_audio_embedding(audio, SR, input_repr="mel256", content_type="music",
                                        embedding_size=6144, center=True, hop_size=0.1, verbose=False)
    ext = create("openl3_audio", weights_dir=tmp_path, embedding_size=6144)
    got = ext.embed(ol3.log_spectrogram(ol3.frame_audio(audio), ext.front_end)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())

    frames = np.random.default_rng(1).integers(0, 256, (4, 224, 224, 3), dtype=np.uint8)
    ref = openl3.get_image_embedding(frames, input_repr="mel256", content_type="music",
                                     embedding_size=8192, verbose=False)
    img = create("openl3_image", weights_dir=tmp_path, embedding_size=8192)
    # 224x224 uint8 is the one input openl3 maps to [-1, 1] without resizing (see DEVIATIONS)
    pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).float() * (2 / 255) - 1
    got = img.embed(pixels).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
