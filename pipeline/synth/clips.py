"""Synthetic LLP-like clips: realistic label structure, class-specific sounds and sprites.

Real LLP videos cannot be downloaded here, yet extractors, training and evaluation need
clips whose truth is known second by second. Each synthetic clip is a 10-s H.264 + AAC mp4
in which every one of the 25 classes has its own sound (a timbre family x a frequency
register x a modulation rate) and its own sprite (a shape x a colour x a motion, with
class-oriented stripes). An event is heard only in its dense audio seconds and seen only in
its dense visual seconds, so audio-only, visual-only and audio-visual events occur as in
LLP, over low background noise and a plain textured background.

Label structure comes either from a built-in distribution measured on the real files
(labels per clip, class frequencies, how often each class is audio-only or visual-only,
event lengths), or, with ``annotations``, from the real rows themselves: val/test clips copy
a real val/test clip's dense grids with a small time warp, train clips take a real train
label set and borrow the dense pattern of a val/test clip with the same labels (else the
same label count).

Everything is seeded from (seed, clip index), so the output does not depend on the number
of workers: a rerun with the same options rebuilds byte-identical truth and annotation
files and identical rendered signals. The mp4 bytes usually match too, but libx264's
mb-tree rate control is not bit-reproducible on every run (seen on tiny frames), so decoded
frames may differ by a level or two.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import json
import os
import time
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avvp_pipe.core.errors import AvvpError
from avvp_pipe.core.io import atomic_path
from avvp_pipe.pipeline.llp.annotations import NUM_CLASSES, SECONDS, SPLITS, Clip, load_annotations, write_annotations

#: Bump when rendering changes, so an old output folder is not silently mixed with new clips.
SYNTH_VERSION = 1
DEFAULT_SAMPLE_RATE = 44100
MANIFEST = "synth.json"
TRUTH = "truth.npz"

# ------------------------------------------------------------------ built-in distribution
# Rounded from the real LLP files (load_annotations("../shared/llp")): train weak label
# counts per class, labels per clip, and per class how often it is only heard / only seen
# in the val+test dense truth. They make the built-in structure LLP-like without the files.
_TRAIN_CLASS_COUNTS = np.array([
    4988, 624, 528, 761, 192, 343, 455, 218, 299, 602, 186, 1172, 437, 1457, 495, 146, 445,
    224, 411, 587, 503, 99, 430, 291, 164,
], dtype=np.float64)  # fmt: skip
_AUDIO_ONLY = np.array([
    0.77, 0.01, 0.59, 0.08, 0.05, 0.06, 0.05, 0.17, 0.02, 0.19, 0.18, 0.31, 0.07, 0.17, 0.06,
    0.22, 0.25, 0.07, 0.05, 0.09, 0.08, 0.42, 0.17, 0.00, 0.43,
])  # fmt: skip
_VISUAL_ONLY = np.array([
    0.00, 0.21, 0.04, 0.13, 0.31, 0.02, 0.19, 0.00, 0.00, 0.06, 0.05, 0.00, 0.05, 0.03, 0.01,
    0.00, 0.01, 0.02, 0.11, 0.02, 0.11, 0.00, 0.01, 0.02, 0.04,
])  # fmt: skip
#: Labels per clip: train from the facts (40/59/1 %), val/test measured on the dense truth.
_LABEL_COUNTS = {"train": ((1, 2, 3), (0.40, 0.59, 0.01)),
                 "eval": ((1, 2, 3, 4), (0.33, 0.55, 0.09, 0.03))}  # fmt: skip
#: Share of events lasting the whole clip: the main event (one per clip) and the others.
#: Tuned so the built-in structure matches LLP val/test: about 50 % of audio and 65 % of
#: visual events span the clip, and 4-5 % of seconds have no event at all (LLP: 42 %, 65 %, 4 %).
_P_FULL = {"main": {"audio": 0.75, "visual": 0.9}, "other": {"audio": 0.2, "visual": 0.6}}
_P_SAME_EXTENT = 0.45  # AV events seen exactly when heard (plus full/full draws: ~65 %, LLP 60 %)
_RUNS = ((1, 2, 3), (0.80, 0.16, 0.04))  # runs per partial event
CLASS_PRIORS = ("llp", "uniform")

# ------------------------------------------------------------------ class signatures
SOUND_FAMILIES = ("harmonic", "bell", "noise", "bursts", "sweep")
SHAPES = ("disk", "square", "triangle", "ring", "cross")
MOTIONS = ("horizontal", "vertical", "diagonal", "circle", "bounce")
_HUES = (0.0, 0.15, 0.33, 0.58, 0.83)  # red, yellow, green, blue, magenta
_RATES = (2.0, 3.0, 4.5, 6.5, 9.0)  # modulation rate (Hz), by c // 5


@dataclass(frozen=True)
class SoundSpec:
    """What a class sounds like: a timbre family, a centre frequency and a modulation rate."""

    family: str
    freq: float  # Hz
    rate: float  # Hz


@dataclass(frozen=True)
class SpriteSpec:
    """What a class looks like: shape, colour, motion and stripe orientation."""

    shape: str
    hue: float  # 0..1
    motion: str
    stripe_angle: float  # radians
    period: float  # seconds per motion cycle


def _mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


def _hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)


def _class_specs() -> tuple[tuple[SoundSpec, ...], tuple[SpriteSpec, ...]]:
    """Fixed per-class signatures; every class differs from every other in >= 2 attributes.

    Registers are evenly spaced on the mel scale inside VGGish's 125-7500 Hz band; the
    register index (7c mod 25) puts classes of one family 5 registers apart.
    """
    registers = _hz(np.linspace(_mel(160.0), _mel(3800.0), NUM_CLASSES))
    sounds, sprites = [], []
    for c in range(NUM_CLASSES):
        sounds.append(SoundSpec(SOUND_FAMILIES[c % 5], float(registers[(7 * c) % NUM_CLASSES]), _RATES[c // 5]))
        sprites.append(SpriteSpec(
            shape=SHAPES[c % 5], hue=_HUES[c // 5], motion=MOTIONS[(c + c // 5) % 5],
            stripe_angle=float(np.deg2rad((37 * c) % 180)), period=1.5 + 0.25 * ((3 * c) % 7),
        ))  # fmt: skip
    return tuple(sounds), tuple(sprites)


SOUNDS, SPRITES = _class_specs()


# ------------------------------------------------------------------ label structure
@dataclass(frozen=True)
class RealStructures:
    """Label structures from a real LLP annotation folder, ready to sample from.

    ``audio``/``visual`` hold the dense grids of every val/test clip with at least one marked
    second; ``label_sets`` the weak label sets of the train clips.
    """

    audio: np.ndarray  # (M, 25, 10) uint8
    visual: np.ndarray  # (M, 25, 10) uint8
    label_sets: tuple[tuple[int, ...], ...]
    digest: str  # sha256 of the files read, recorded in the manifest
    by_set: dict[frozenset, list[int]] = field(default_factory=dict)
    by_count: dict[int, list[int]] = field(default_factory=dict)

    @classmethod
    def from_folder(cls, directory: str | os.PathLike) -> RealStructures:
        ann = load_annotations(directory)
        ids = ann.split_ids("val") + ann.split_ids("test")
        audio, visual = ann.dense(ids, "audio"), ann.dense(ids, "visual")  # (M, 25, 10)
        keep = (audio | visual).reshape(len(ids), -1).any(1)
        audio, visual = audio[keep], visual[keep]
        label_sets = tuple(ann.clips[c].labels for c in ann.split_ids("train"))
        if not len(audio) or not label_sets:
            raise AvvpError(f"{directory}: expected train clips and val/test dense rows to sample from but found none")
        by_set: dict[frozenset, list[int]] = {}
        by_count: dict[int, list[int]] = {}
        for j, present in enumerate((audio | visual).any(2)):  # (25,)
            classes = frozenset(np.flatnonzero(present).tolist())
            by_set.setdefault(classes, []).append(j)
            by_count.setdefault(len(classes), []).append(j)
        return cls(audio, visual, label_sets, _digest(ann.files.values()), by_set, by_count)


def _digest(paths) -> str:
    sha = hashlib.sha256()
    for path in sorted(paths):
        sha.update(Path(path).name.encode())
        sha.update(Path(path).read_bytes())
    return sha.hexdigest()


def sample_label_structure(
    rng: np.random.Generator,
    split: str,
    real: RealStructures | None = None,
    class_prior: str = "llp",
) -> tuple[np.ndarray, np.ndarray]:
    """Dense (audio, visual) truth for one clip, each (25, 10) uint8; never empty.

    ``split`` picks the distribution: val/test clips have more labels per clip in LLP, and
    with ``real`` they copy real val/test grids while train clips start from real weak sets.
    """
    if split not in SPLITS:
        raise AvvpError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    if real is None:
        audio, visual = _builtin_structure(rng, split, class_prior)
    elif split == "train":
        audio, visual = _train_from_real(rng, real)
    else:
        j = int(rng.integers(len(real.audio)))
        audio, visual = _time_warp(rng, real.audio[j], real.visual[j])
    return audio.astype(np.uint8), visual.astype(np.uint8)


def _class_weights(class_prior: str) -> np.ndarray:
    if class_prior not in CLASS_PRIORS:
        raise AvvpError(f"class prior {class_prior!r}: expected one of {', '.join(CLASS_PRIORS)}")
    weights = _TRAIN_CLASS_COUNTS if class_prior == "llp" else np.ones(NUM_CLASSES)
    return weights / weights.sum()


def _builtin_structure(rng: np.random.Generator, split: str, class_prior: str) -> tuple[np.ndarray, np.ndarray]:
    counts, probs = _LABEL_COUNTS["train" if split == "train" else "eval"]
    k = int(rng.choice(counts, p=probs))
    classes = rng.choice(NUM_CLASSES, size=k, replace=False, p=_class_weights(class_prior))
    return _builtin_events(rng, sorted(int(c) for c in classes))


def _builtin_events(rng: np.random.Generator, classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """One event per class: audio-only, visual-only or audio-visual, with LLP-like extents.

    The first class (in random order) is the clip's main event and usually lasts the whole
    clip; in LLP, partial events mostly sit on top of such a main event, which is why only
    about 4 % of its seconds are background.
    """
    audio = np.zeros((NUM_CLASSES, SECONDS), dtype=bool)
    visual = np.zeros((NUM_CLASSES, SECONDS), dtype=bool)
    for rank, c in enumerate(rng.permutation(np.asarray(classes, dtype=int))):
        p_full = _P_FULL["main" if rank == 0 else "other"]
        draw = rng.random()
        if draw < _AUDIO_ONLY[c]:
            audio[c] = _extent(rng, p_full["audio"])
        elif draw < _AUDIO_ONLY[c] + _VISUAL_ONLY[c]:
            visual[c] = _extent(rng, p_full["visual"])
        else:
            audio[c] = _extent(rng, p_full["audio"])
            visual[c] = audio[c]
            if rng.random() > _P_SAME_EXTENT:  # seen for another stretch, mostly longer than heard
                visual[c] = _extent(rng, p_full["visual"])
                if not (audio[c] & visual[c]).any():  # real AV events overlap in time (99.6 %)
                    visual[c, rng.choice(np.flatnonzero(audio[c]))] = True
    return audio, visual


def _extent(rng: np.random.Generator, p_full: float) -> np.ndarray:
    """(10,) bool: the whole clip, or 1-3 separate runs covering 1-9 seconds in total."""
    if rng.random() < p_full:
        return np.ones(SECONDS, dtype=bool)
    length = int(rng.integers(1, SECONDS))  # 1..9 active seconds
    n_runs = min(int(rng.choice(_RUNS[0], p=_RUNS[1])), length, SECONDS - length + 1)
    runs = _composition(rng, length, n_runs, minimum=1)
    gaps = _composition(rng, SECONDS - length - (n_runs - 1), n_runs + 1, minimum=0)
    gaps[1:-1] += 1  # inner gaps separate the runs
    row = np.zeros(SECONDS, dtype=bool)
    pos = 0
    for run, gap in zip(runs, gaps[:-1]):
        pos += gap
        row[pos : pos + run] = True
        pos += run
    return row


def _composition(rng: np.random.Generator, total: int, parts: int, minimum: int) -> np.ndarray:
    """Random split of ``total`` into ``parts`` integers, each >= ``minimum``."""
    free = total - parts * minimum
    cuts = np.sort(rng.integers(0, free + 1, size=parts - 1))
    return np.diff(np.concatenate([[0], cuts, [free]])) + minimum


def _train_from_real(rng: np.random.Generator, real: RealStructures) -> tuple[np.ndarray, np.ndarray]:
    """A real train label set with the dense pattern of a val/test clip with the same labels.

    Falls back to a val/test clip with the same label count (its classes renamed), then to
    built-in events, so the weak set is kept exactly.
    """
    labels = real.label_sets[int(rng.integers(len(real.label_sets)))]
    exact = real.by_set.get(frozenset(labels))
    pool = exact or real.by_count.get(len(labels))
    if not pool:
        return _builtin_events(rng, sorted(labels))
    j = pool[int(rng.integers(len(pool)))]
    source = np.flatnonzero((real.audio[j] | real.visual[j]).any(1))
    target = np.array(sorted(labels)) if exact else rng.permutation(np.array(labels))
    audio = np.zeros((NUM_CLASSES, SECONDS), dtype=np.uint8)
    visual = np.zeros((NUM_CLASSES, SECONDS), dtype=np.uint8)
    audio[target], visual[target] = real.audio[j][source], real.visual[j][source]
    return _time_warp(rng, audio, visual)


def _time_warp(rng: np.random.Generator, audio: np.ndarray, visual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Perturb a real structure in time, the same way for both modalities and all classes.

    Up to two 'repeat second i, drop second j' moves shift the content between i and j by a
    second (whole-clip events stay whole), then maybe a reversal. A warp that would erase a
    class from a modality is not applied, so the clip keeps what is heard and what is seen.
    """
    order = list(range(SECONDS))
    for _ in range(int(rng.integers(0, 3))):
        i, j = sorted(rng.choice(SECONDS, size=2, replace=False).tolist())
        del order[j]
        order.insert(i, order[i])
    if rng.random() < 0.5:
        order = order[::-1]
    warped_a, warped_v = audio[:, order], visual[:, order]
    if (warped_a.any(1) != audio.any(1)).any() or (warped_v.any(1) != visual.any(1)).any():
        return audio.copy(), visual.copy()
    return warped_a, warped_v


# ------------------------------------------------------------------ audio
def render_audio(
    audio_grid: np.ndarray, rng: np.random.Generator, sample_rate: int = DEFAULT_SAMPLE_RATE
) -> np.ndarray:
    """A 10-s mono waveform (n,) float32 in [-1, 1]: each class heard only in its seconds.

    Background is low pink noise (about -48 dBFS), each event about -20 dBFS; overlapping
    events add up, and the mix is scaled down if it would clip.
    """
    grid = _check_grid(audio_grid, "audio_grid")
    n = SECONDS * sample_rate
    t = np.arange(n, dtype=np.float64) / sample_rate  # (n,)
    out = (_pink_noise(rng, n, sample_rate) * (0.004 * rng.uniform(0.6, 1.4))).astype(np.float32)
    for c in np.flatnonzero(grid.any(1)):
        gain = 0.1 * rng.uniform(0.7, 1.3)
        out += gain * _class_sound(int(c), t, rng, sample_rate) * _gate(grid[c], sample_rate)
    peak = np.abs(out).max()
    if peak > 0.95:
        out *= 0.95 / peak
    return out


def _check_grid(grid: np.ndarray, name: str) -> np.ndarray:
    grid = np.asarray(grid)
    if grid.shape != (NUM_CLASSES, SECONDS):
        raise AvvpError(f"{name}: expected shape ({NUM_CLASSES}, {SECONDS}) but got {grid.shape}")
    return grid.astype(bool)


def _gate(row: np.ndarray, sample_rate: int, fade_s: float = 0.02) -> np.ndarray:
    """(n,) envelope: 1 inside the active seconds, 0 outside, 20 ms fades inside the run ends.

    Fades sit inside the active seconds so no energy leaks into a silent second, and they
    avoid the clicks a hard gate would add (which would be heard as broadband events).
    """
    prev = np.r_[False, row[:-1]]
    nxt = np.r_[row[1:], False]
    nf = int(fade_s * sample_rate)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(nf) / nf)  # (nf,)
    env = np.ones((SECONDS, sample_rate), dtype=np.float32)  # (10, sr)
    env[row & ~prev, :nf] *= ramp
    env[row & ~nxt, -nf:] *= ramp[::-1]
    env[~row] = 0.0
    return env.reshape(-1)  # (n,)


def _shaped_noise(
    rng: np.random.Generator, n: int, sample_rate: int, gain: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """(n,) unit-RMS noise with magnitude spectrum ``gain(f)``.

    White noise's spectrum is complex Gaussian, so it is drawn directly in the frequency
    domain: one inverse FFT instead of a forward and an inverse one.
    """
    m = n // 2 + 1
    f = np.fft.rfftfreq(n, 1.0 / sample_rate)  # (m,)
    spectrum = (rng.standard_normal(m, dtype=np.float32) + 1j * rng.standard_normal(m, dtype=np.float32)) * gain(f)
    noise = np.fft.irfft(spectrum, n)
    return noise / (noise.std() + 1e-12)


def _band_noise(rng: np.random.Generator, n: int, sample_rate: int, freq: float, octaves: float) -> np.ndarray:
    """Noise in a Gaussian band in log frequency (centre ``freq``, sd ``octaves``)."""

    def band(f: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.exp(-0.5 * (np.log2(f / freq) / octaves) ** 2)

    return _shaped_noise(rng, n, sample_rate, band)


def _pink_noise(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    """1/f noise above 40 Hz: a room-tone-like background."""
    return _shaped_noise(rng, n, sample_rate, lambda f: np.where(f > 40.0, 1.0 / np.sqrt(np.maximum(f, 1.0)), 0.0))


def _sin(angle: np.ndarray) -> np.ndarray:
    """sin of a float64 angle, evaluated in float32 after wrapping to one turn.

    float32 sin is vectorised (about 10x faster than float64); wrapping first keeps the
    phase exact over 10 s, which a float32 angle alone would not.
    """
    turns = np.asarray(angle) * (1.0 / (2 * np.pi))
    wrapped = (turns - np.floor(turns)).astype(np.float32)
    wrapped *= np.float32(2 * np.pi)
    return np.sin(wrapped, out=wrapped)


def _class_sound(c: int, t: np.ndarray, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """(n,) unit-RMS sound of class ``c``; per-event jitter keeps clips of a class varied."""
    spec = SOUNDS[c]
    f = spec.freq * rng.uniform(0.97, 1.03)
    rate = spec.rate * rng.uniform(0.95, 1.05)
    fmax = min(0.45 * sample_rate, 7500.0)
    phase0 = rng.uniform(0, 2 * np.pi)
    if spec.family == "harmonic":  # a voiced tone with vibrato, like a bowed string or a voice
        inst = f * (1 + 0.01 * _sin(2 * np.pi * 5.0 * t + phase0))
        phase = 2 * np.pi * np.cumsum(inst, dtype=np.float64) / sample_rate
        sig = sum(_sin(k * phase + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 6) if k * f < fmax)
        sig = sig * (1 + 0.3 * _sin(2 * np.pi * rate * t))
    elif spec.family == "bell":  # inharmonic partials struck ``rate`` times a second
        ratios, amps = (1.0, 2.76, 5.40, 8.93), (1.0, 0.6, 0.4, 0.25)
        sig = sum(a * _sin(2 * np.pi * r * f * t + rng.uniform(0, 2 * np.pi))
                  for r, a in zip(ratios, amps) if r * f < fmax)  # fmt: skip
        strike = ((t * rate + phase0 / (2 * np.pi)) % 1.0).astype(np.float32)  # time since strike, in periods
        sig = sig * np.exp(-4.0 * strike)  # decays to 2 % before the next strike
    elif spec.family == "noise":  # a steady band of noise, like an engine or a blender
        sig = _band_noise(rng, len(t), sample_rate, f, 0.15) * (1 + 0.4 * _sin(2 * np.pi * rate * t + phase0))
    elif spec.family == "bursts":  # wide-band bursts, like barks, bounces or claps
        sig = _band_noise(rng, len(t), sample_rate, f, 0.4) * _sin(np.pi * rate * t + phase0) ** 4
    else:  # "sweep": a siren-like tone gliding +-20 % at rate / 3
        inst = f * (1 + 0.2 * _sin(2 * np.pi * rate / 3 * t + phase0))
        phase = 2 * np.pi * np.cumsum(inst, dtype=np.float64) / sample_rate
        sig = _sin(phase) + (0.3 * _sin(2 * phase) if 2 * f * 1.2 < fmax else 0.0)
    return (sig / (np.std(sig) + 1e-12)).astype(np.float32)


# ------------------------------------------------------------------ video
def render_video(
    visual_grid: np.ndarray,
    rng: np.random.Generator,
    size: tuple[int, int] = (320, 240),
    fps: float = 30.0,
) -> np.ndarray:
    """10 s of RGB frames (n, H, W, 3) uint8: each class's sprite drawn only in its seconds.

    Frame k (time k / fps) belongs to second floor(k / fps). The background is a static,
    low-contrast texture in a muted colour, so background seconds barely change.
    """
    grid = _check_grid(visual_grid, "visual_grid")
    width, height = size
    n = int(round(SECONDS * fps))
    second = np.minimum(np.floor(np.arange(n) / fps).astype(int), SECONDS - 1)  # (n,)
    frames = np.broadcast_to(_background(rng, height, width), (n, height, width, 3)).copy()  # (n, H, W, 3)
    classes = np.flatnonzero(grid.any(1))
    slots = rng.permutation(len(classes))  # horizontal slot per sprite, so they rarely cover each other
    crowd = max(1, len(classes))
    for c, slot in zip(classes, slots):
        scale = 0.2 if crowd <= 2 else 0.16
        radius = max(3, int(round(min(width, height) * scale * rng.uniform(0.85, 1.1))))
        rgb, alpha = _sprite(int(c), radius, rng)
        premultiplied, keep = rgb * alpha[..., None], 1.0 - alpha[..., None]  # (s, s, 3), (s, s, 1)
        xs, ys = _path(int(c), n, fps, radius, (slot + 0.5) / crowd, width / crowd, width, height, rng)  # (n,) each
        for k in np.flatnonzero(grid[c, second]):
            _paste(frames[k], premultiplied, keep, int(xs[k]), int(ys[k]))
    return frames


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8: a muted colour, smooth blotches and fine static grain."""
    base = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.1, 0.3), rng.uniform(0.35, 0.6))) * 255
    coarse = rng.normal(0.0, 18.0, size=(5, 6, 3))  # (5, 6, 3) blotches
    ys = np.linspace(0, coarse.shape[0] - 1, height)
    xs = np.linspace(0, coarse.shape[1] - 1, width)
    y0, x0 = np.minimum(ys.astype(int), coarse.shape[0] - 2), np.minimum(xs.astype(int), coarse.shape[1] - 2)
    wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    smooth = ((1 - wy) * (1 - wx) * coarse[y0][:, x0] + (1 - wy) * wx * coarse[y0][:, x0 + 1]
              + wy * (1 - wx) * coarse[y0 + 1][:, x0] + wy * wx * coarse[y0 + 1][:, x0 + 1])  # (H, W, 3)
    grain = rng.normal(0.0, 3.0, size=(height, width, 1))
    return np.clip(base + smooth + grain, 0, 255).astype(np.uint8)


def _sprite(c: int, radius: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Class ``c``'s sprite: rgb (s, s, 3) float32 and alpha (s, s) float32, s = 2 radius + 3."""
    spec = SPRITES[c]
    half = radius + 1
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)  # (s, s)
    r = float(radius)
    dist = np.hypot(x, y)
    if spec.shape == "disk":
        inside = r - dist
    elif spec.shape == "square":
        inside = 0.85 * r - np.maximum(np.abs(x), np.abs(y))
    elif spec.shape == "triangle":  # apex up; edges at r / 2 from the centre
        normals = ((0.0, 1.0), (-0.866, -0.5), (0.866, -0.5))
        inside = np.min([0.5 * r - (nx * x + ny * y) for nx, ny in normals], axis=0)
    elif spec.shape == "ring":
        inside = np.minimum(dist - 0.55 * r, r - dist)
    else:  # cross
        bar = 0.3 * r
        inside = np.maximum(np.minimum(bar - np.abs(x), r - np.abs(y)), np.minimum(bar - np.abs(y), r - np.abs(x)))
    alpha = np.clip(inside + 0.5, 0.0, 1.0)  # 1-px antialiased edge
    hue = (spec.hue + rng.uniform(-0.02, 0.02)) % 1.0
    colour = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.8, 1.0), rng.uniform(0.85, 1.0)), dtype=np.float32)
    period = max(3.0, r / 2)
    along = x * np.cos(spec.stripe_angle) + y * np.sin(spec.stripe_angle)
    stripes = 0.7 + 0.3 * (0.5 + 0.5 * np.sin(2 * np.pi * along / period))  # (s, s)
    rgb = 255.0 * colour[None, None, :] * stripes[..., None]  # (s, s, 3)
    return rgb.astype(np.float32), alpha.astype(np.float32)


def _path(
    c: int, n: int, fps: float, radius: int, slot_x: float, slot_width: float, width: int, height: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners (n,), (n,) of the sprite following class ``c``'s motion, inside the frame.

    The horizontal swing shrinks with the slot width so several sprites rarely cover each other.
    """
    spec = SPRITES[c]
    half = radius + 1
    amp_x = max(0.0, min(0.18 * width, 0.35 * slot_width, width / 2 - half - 1))
    amp_y = max(0.0, min(0.22 * height, height / 2 - half - 1))
    lo_x, hi_x = half + amp_x, width - 1 - half - amp_x
    lo_y, hi_y = half + amp_y, height - 1 - half - amp_y
    cx = np.clip(slot_x * width + rng.uniform(-0.05, 0.05) * width, lo_x, max(lo_x, hi_x))
    cy = np.clip(height / 2 + rng.uniform(-0.1, 0.1) * height, lo_y, max(lo_y, hi_y))
    phase = 2 * np.pi * np.arange(n) / (fps * spec.period * rng.uniform(0.9, 1.1)) + rng.uniform(0, 2 * np.pi)
    dx, dy = {
        "horizontal": (np.sin(phase), 0.0 * phase),
        "vertical": (0.0 * phase, np.sin(phase)),
        "diagonal": (np.sin(phase), np.sin(phase)),
        "circle": (np.cos(phase), np.sin(phase)),
        "bounce": (0.3 * np.sin(0.5 * phase), 1.0 - 2.0 * np.abs(np.sin(phase))),
    }[spec.motion]
    xs = np.round(cx + amp_x * dx) - half
    ys = np.round(cy + amp_y * dy) - half
    return xs.astype(int), ys.astype(int)


def _paste(frame: np.ndarray, premultiplied: np.ndarray, keep: np.ndarray, x: int, y: int) -> None:
    """Alpha-blend a sprite into ``frame`` (H, W, 3) uint8 in place, clipped at the borders.

    ``premultiplied`` is rgb * alpha (s, s, 3) and ``keep`` is 1 - alpha (s, s, 1), computed
    once per event rather than once per frame.
    """
    height, width = frame.shape[:2]
    s = keep.shape[0]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + s, width), min(y + s, height)
    if x0 >= x1 or y0 >= y1:
        return
    sy, sx = slice(y0 - y, y1 - y), slice(x0 - x, x1 - x)
    blended = frame[y0:y1, x0:x1] * keep[sy, sx] + premultiplied[sy, sx]  # (h, w, 3) float32
    frame[y0:y1, x0:x1] = blended + 0.5  # round on the cast to uint8


# ------------------------------------------------------------------ dataset plan
@dataclass(frozen=True)
class ClipPlan:
    """Everything needed to render one clip, fixed before any rendering starts."""

    index: int
    clip: Clip
    audio: np.ndarray  # (25, 10) uint8
    visual: np.ndarray  # (25, 10) uint8


_ID_CHARS = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
_ID_LAST = np.array(list("AEIMQUYcgkosw048"))  # a real YouTube id encodes 64 bits: 10 x 6 + 4


def _rng(seed: int, *stream: int) -> np.random.Generator:
    """Independent streams from (seed, stream...), so clip k never depends on the others."""
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


def make_ids(n: int, seed: int) -> list[str]:
    """``n`` distinct YouTube-like 11-char ids; the first k are the same for any n >= k."""
    rng = _rng(seed, 0)
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < n:
        cid = "".join(rng.choice(_ID_CHARS, 10)) + str(rng.choice(_ID_LAST))
        if cid not in seen:
            seen.add(cid)
            ids.append(cid)
    return ids


def split_counts(n: int, fractions: Sequence[float]) -> dict[str, int]:
    """Clips per split by largest remainder; each split with a share gets >= 1 when n allows."""
    fr = np.asarray(fractions, dtype=np.float64)
    exact = fr * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    wanted = np.flatnonzero(fr > 0)
    if n >= len(wanted):
        for i in wanted:
            if counts[i] == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[i] = 1
    return dict(zip(SPLITS, counts.tolist()))


def plan_dataset(
    n_clips: int,
    seed: int,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    real: RealStructures | None = None,
    class_prior: str = "llp",
) -> list[ClipPlan]:
    """Ids, LLP filenames, splits (train, then val, then test) and dense truth of every clip."""
    ids = make_ids(n_clips, seed)
    splits = [s for s, k in split_counts(n_clips, split_fractions).items() for _ in range(k)]
    plans = []
    for index, (cid, split) in enumerate(zip(ids, splits)):
        rng = _rng(seed, 1, index, 0)
        start = 10 * int(rng.integers(0, 30))
        audio, visual = sample_label_structure(rng, split, real, class_prior)
        labels = tuple(np.flatnonzero((audio | visual).any(1)).tolist())
        plans.append(ClipPlan(index, Clip(cid, f"{cid}_{start}_{start + SECONDS}", split, labels), audio, visual))
    return plans


def render_clip(plan: ClipPlan, path: str | os.PathLike, seed: int, size: tuple[int, int], fps: float,
                sample_rate: int = DEFAULT_SAMPLE_RATE) -> None:  # fmt: skip
    """Render and write one clip atomically (write_mp4 writes a temp file, then renames)."""
    from avvp_pipe.pipeline.decode.video_io import write_mp4

    waveform = render_audio(plan.audio, _rng(seed, 1, plan.index, 1), sample_rate)
    frames = render_video(plan.visual, _rng(seed, 1, plan.index, 2), size, fps)
    write_mp4(path, frames, fps, waveform, sample_rate)


def _render_task(args: tuple) -> int:
    """Process-pool entry point (module level so it pickles)."""
    plan, path, seed, size, fps, sample_rate = args
    render_clip(plan, path, seed, size, fps, sample_rate)
    return plan.index


# ------------------------------------------------------------------ outputs
def write_truth(path: str | os.PathLike, plans: Sequence[ClipPlan]) -> Path:
    """truth.npz with video_ids (N,), splits (N,), audio and visual (N, 25, 10) uint8.

    Written by hand rather than np.savez because savez stamps the current time into the
    zip entries; fixed timestamps make the file byte-identical across runs. Atomic.
    """
    arrays = {
        "video_ids": np.array([p.clip.id for p in plans], dtype="<U11"),
        "splits": np.array([p.clip.split for p in plans], dtype="<U5"),
        "audio": np.stack([p.audio for p in plans]).astype(np.uint8),  # (N, 25, 10)
        "visual": np.stack([p.visual for p in plans]).astype(np.uint8),  # (N, 25, 10)
    }
    path = Path(path)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buf.getvalue())
    return path


def parse_size(text: str) -> tuple[int, int]:
    """'320x240' -> (320, 240); H.264 in yuv420p needs even sides."""
    parts = str(text).lower().split("x")
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise AvvpError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 320x240") from None
    check_size((width, height))
    return width, height


def check_size(size: tuple[int, int]) -> None:
    width, height = size
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise AvvpError(f"--size {width}x{height}: expected even width and height of at least 16, e.g. 320x240")


def parse_fractions(text: str) -> tuple[float, float, float]:
    """'0.8,0.1,0.1' -> train, val, test shares (non-negative, summing to 1)."""
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    check_fractions(values, text)
    return values  # type: ignore[return-value]


def check_fractions(values: Sequence[float], text: object = None) -> None:
    shown = text if text is not None else ",".join(str(v) for v in values)
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1.0) > 1e-6 or values[0] <= 0:
        raise AvvpError(
            f"--splits {shown!r}: expected three shares train,val,test summing to 1 with train > 0, e.g. 0.8,0.1,0.1"
        )


@dataclass
class SynthResult:
    """What a synth run did, for the summary line."""

    out: Path
    n_clips: int
    rendered: int
    kept: int
    replaced: list[str]  # existing clips that failed the check and were rendered again
    seconds: float
    splits: dict[str, int]
    videos: Path
    annotations: Path
    truth: Path

    @property
    def clips_per_s(self) -> float:
        return self.rendered / self.seconds if self.seconds > 0 else float("nan")


def synthesize(
    out: str | os.PathLike,
    n_clips: int,
    seed: int,
    *,
    size: tuple[int, int] = (320, 240),
    fps: float = 30.0,
    annotations: str | os.PathLike | None = None,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    workers: int = 1,
    progress: bool | Callable[[int, int, float], None] = True,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    class_prior: str = "llp",
) -> SynthResult:
    """Write ``n_clips`` synthetic clips, the official annotation files and truth.npz to ``out``.

    Resumable: clips already in ``out/videos`` that pass a probe are kept; the manifest
    ``synth.json`` must match the options, else the run stops rather than mix two datasets.
    ``progress`` True shows a tqdm bar (clips/s, ETA) on stderr; a callable gets
    (done, total, elapsed_s) after each clip.
    """
    out = Path(out)
    _check_options(n_clips, seed, size, fps, split_fractions, workers, sample_rate, class_prior)
    real = RealStructures.from_folder(annotations) if annotations is not None else None
    config = {
        "version": SYNTH_VERSION, "seed": seed, "clips": n_clips, "size": list(size), "fps": fps,
        "sample_rate": sample_rate, "splits": list(split_fractions), "class_prior": class_prior,
        "annotations_sha256": real.digest if real else None,
    }  # fmt: skip
    videos = out / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    _claim_manifest(out / MANIFEST, config)
    plans = plan_dataset(n_clips, seed, split_fractions, real, class_prior)
    todo, replaced = _pending(plans, videos, size, fps)
    started = time.perf_counter()
    _render_all(todo, videos, seed, size, fps, sample_rate, workers, progress)
    seconds = time.perf_counter() - started
    ann_dir = write_annotations(out / "annotations", [p.clip for p in plans], {
        "audio": {p.clip.id: p.audio for p in plans}, "visual": {p.clip.id: p.visual for p in plans},
    })  # fmt: skip
    truth = write_truth(out / TRUTH, plans)
    from avvp_pipe.core.io import atomic_write_json

    atomic_write_json(out / MANIFEST, {"config": config, "complete": True})
    return SynthResult(
        out=out, n_clips=n_clips, rendered=len(todo), kept=n_clips - len(todo), replaced=replaced,
        seconds=seconds, splits=split_counts(n_clips, split_fractions), videos=videos,
        annotations=ann_dir, truth=truth,
    )  # fmt: skip


def _check_options(n_clips, seed, size, fps, split_fractions, workers, sample_rate, class_prior) -> None:
    if n_clips < 1:
        raise AvvpError(f"--clips {n_clips}: expected at least 1")
    if seed < 0:
        raise AvvpError(f"--seed {seed}: expected a non-negative integer")
    check_size(tuple(size))
    if not 1.0 <= fps <= 120.0:
        raise AvvpError(f"--fps {fps}: expected a frame rate between 1 and 120")
    check_fractions(tuple(split_fractions))
    if workers < 1:
        raise AvvpError(f"--workers {workers}: expected at least 1")
    if not 8000 <= sample_rate <= 96000:
        raise AvvpError(f"--sample-rate {sample_rate}: expected 8000..96000 Hz")
    _class_weights(class_prior)


def _claim_manifest(path: Path, config: dict) -> None:
    """Refuse to resume into a folder made with other options (that would mix two datasets)."""
    from avvp_pipe.core.io import atomic_write_json

    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))["config"]
        except (ValueError, KeyError, TypeError):
            raise AvvpError(f"{path}: expected a synth manifest (JSON with 'config') but could not read it") from None
        diff = [k for k in config if previous.get(k) != config[k]]
        if diff:
            k = diff[0]
            raise AvvpError(
                f"{path.parent}: made with {k}={previous.get(k)!r} but this run has {k}={config[k]!r}; "
                f"expected the same options to resume (or use a new OUT folder)"
            )
        return
    if (path.parent / "videos").is_dir() and any((path.parent / "videos").glob("*.mp4")):
        raise AvvpError(f"{path.parent}: has videos but no {MANIFEST}; expected an empty folder or a synth output")
    atomic_write_json(path, {"config": config, "complete": False})


def _pending(
    plans: Sequence[ClipPlan], videos: Path, size: tuple[int, int], fps: float
) -> tuple[list[ClipPlan], list[str]]:
    """Clips still to render; an existing clip that fails the probe is rendered again (and listed)."""
    from avvp_pipe.pipeline.decode.video_io import probe

    todo, replaced = [], []
    for plan in plans:
        path = videos / f"{plan.clip.id}.mp4"
        for stale in videos.glob(f".{plan.clip.id}.*.mp4"):  # temp file of an interrupted write
            stale.unlink(missing_ok=True)
        if not path.is_file():
            todo.append(plan)
            continue
        try:
            info = probe(path)
            ok = (info["width"], info["height"]) == tuple(size) and info["has_audio"] \
                and info["n_frames"] == int(round(SECONDS * fps))  # fmt: skip
        except Exception:  # noqa: BLE001 - any decode failure means "render again"
            ok = False
        if not ok:
            replaced.append(path.name)
            todo.append(plan)
    return todo, replaced


def _render_all(todo, videos: Path, seed, size, fps, sample_rate, workers: int, progress) -> None:
    """Render clips in order (workers == 1) or in a process pool; report progress per clip."""
    tasks = [(plan, videos / f"{plan.clip.id}.mp4", seed, tuple(size), fps, sample_rate) for plan in todo]
    report = _progress_reporter(progress, len(tasks))
    try:
        if workers == 1 or len(tasks) <= 1:
            for task in tasks:
                _render_task(task)
                report()
            return
        with ProcessPoolExecutor(max_workers=workers) as pool:
            pending = {pool.submit(_render_task, task) for task in tasks}
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        future.result()  # re-raise a worker's error here
                        report()
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
    finally:
        report(close=True)


def _progress_reporter(progress, total: int) -> Callable[..., None]:
    """A function to call after each clip: the shared bar (clips/s, ETA), a callback, or nothing."""
    from avvp_pipe.core.progress import Progress

    bar = Progress(total, "synth", enabled=progress is True and total > 0)

    def report(close: bool = False) -> None:
        if close:
            bar.close()
            return
        bar.update()
        if callable(progress):
            progress(bar.count, total, bar.elapsed)

    return report


def synthesize_annotations(
    out: str | os.PathLike,
    n_clips: int,
    seed: int,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    annotations: str | os.PathLike | None = None,
    class_prior: str = "llp",
) -> Path:
    """Only the annotation files of :func:`synthesize`'s dataset, without rendering video.

    Why: feature-level work (``synth-features``, train, select) needs a label structure of
    realistic size, and rendering thousands of clips would take hours for nothing.
    The same (n_clips, seed, fractions) give the same clips and truth as ``synthesize``.
    """
    check_fractions(split_fractions)
    if n_clips < 1:
        raise AvvpError(f"--clips {n_clips}: expected at least 1")
    real = RealStructures.from_folder(annotations) if annotations is not None else None
    plans = plan_dataset(n_clips, seed, split_fractions, real, class_prior)
    return write_annotations(out, [p.clip for p in plans], {
        "audio": {p.clip.id: p.audio for p in plans}, "visual": {p.clip.id: p.visual for p in plans},
    })  # fmt: skip
