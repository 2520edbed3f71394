"""Score saved model outputs on an LLP split with the official evaluation.

The prediction file (``P.npz``, written by ``train`` and read by ``evaluate``) holds raw
model outputs rather than binary grids, so the gate and thresholds stay a choice made at
evaluation time:

==============  =================  ==========================================================
key             shape              meaning
==============  =================  ==========================================================
video_ids       (N,) str           11-char YouTube ids or full ``<id>_<start>_<end>`` names
frame_prob      (N, 10, 2, 25)     per-second class probabilities, modality 0 audio, 1 visual
global_prob     (N, 25)            fused video-level probabilities (the official gate)
a_prob, v_prob  (N, 25)            per-modality video-level probabilities (optional)
==============  =================  ==========================================================
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from avvp_pipe.models.metrics import GATES, LEVELS, llp_per_class, llp_scores, predictions_to_binary
from avvp_pipe.core.errors import AvvpError
from avvp_pipe.core.io import atomic_path, atomic_write_json
from avvp_pipe.pipeline.llp.annotations import CLASSES, NUM_CLASSES, SECONDS, Annotations

REQUIRED_KEYS: tuple[str, ...] = ("video_ids", "frame_prob", "global_prob")
OPTIONAL_KEYS: tuple[str, ...] = ("a_prob", "v_prob")
#: Expected shape of each array key after the clip axis N.
SHAPES: dict[str, tuple[int, ...]] = {
    "frame_prob": (SECONDS, 2, NUM_CLASSES),
    "global_prob": (NUM_CLASSES,),
    "a_prob": (NUM_CLASSES,),
    "v_prob": (NUM_CLASSES,),
}
#: Largest value each array may hold. frame_prob, a_prob and v_prob are sigmoids, or
#: attention-weighted means of them, so at most 1. HAN's global_prob sums its attentive
#: pooling over seconds AND modalities (softmax over seconds per modality, times softmax
#: over modalities per second), which bounds it by 2, not 1 (the release clamps it only
#: inside its BCE); trained models reach ~1.01.
UPPER = {"frame_prob": 1.0, "a_prob": 1.0, "v_prob": 1.0, "global_prob": 2.0}
RANGE_TOLERANCE = 1e-5  # float32 rounding of sums of ~20 terms of magnitude <= 1
_EXAMPLES = 5  # missing clips named in an error message


# ---------------------------------------------------------------------- P.npz


def save_predictions(
    path: str | os.PathLike,
    video_ids: Sequence[str],
    frame_prob: np.ndarray,
    global_prob: np.ndarray,
    a_prob: np.ndarray | None = None,
    v_prob: np.ndarray | None = None,
) -> Path:
    """Write a ``P.npz`` atomically (temp file in the same folder, then ``os.replace``).

    Shapes are checked before writing so a bad file is never produced. ``a_prob`` and
    ``v_prob`` are optional; without them only the official (fused) gate can be used.
    """
    arrays = {"video_ids": np.asarray([str(v) for v in video_ids], dtype=str)}
    named = {"frame_prob": frame_prob, "global_prob": global_prob, "a_prob": a_prob, "v_prob": v_prob}
    arrays.update({k: np.asarray(v, dtype=np.float32) for k, v in named.items() if v is not None})
    _check_shapes(arrays, f"save_predictions({path})")
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # a file object: numpy appends no ".npz"
        np.savez(handle, **arrays)
    return path


def load_predictions(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``P.npz`` into a dict of arrays; unreadable files and missing keys raise."""
    path = Path(path)
    if not path.is_file():
        raise AvvpError(f"{path}: predictions file not found (expected a P.npz from avvp-pipe train)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise AvvpError(f"{path}: expected an .npz predictions file but could not read it ({err})") from None
    _check_shapes(arrays, str(path))
    return arrays


def _check_shapes(pred: Mapping[str, np.ndarray], source: str) -> int:
    """Check keys and shapes against the P.npz format; returns N. Errors name the key."""
    missing = [k for k in REQUIRED_KEYS if k not in pred]
    if missing:
        raise AvvpError(f"{source}: expected keys {', '.join(REQUIRED_KEYS)} but '{missing[0]}' is missing")
    ids = np.asarray(pred["video_ids"])
    if ids.ndim != 1:
        raise AvvpError(f"{source}: 'video_ids' expected shape (N,) but got {ids.shape}")
    n = len(ids)
    for key, tail in SHAPES.items():
        if key not in pred:
            continue
        value = np.asarray(pred[key])
        if value.shape != (n, *tail):
            expected = ", ".join(str(d) for d in (n, *tail))
            raise AvvpError(
                f"{source}: '{key}' expected shape ({expected}) (N = number of video_ids) but got {value.shape}"
            )
        if not np.issubdtype(value.dtype, np.number) or not np.isfinite(value).all():
            raise AvvpError(f"{source}: '{key}' expected finite probabilities but got NaN, inf or non-numbers")
        low, high = (float(value.min()), float(value.max())) if value.size else (0.0, 0.0)
        top = UPPER[key]
        if low < -RANGE_TOLERANCE or high > top + RANGE_TOLERANCE:  # logits would be thresholded silently
            raise AvvpError(f"{source}: '{key}' expected probabilities in [0, {top:g}] but values range over "
                            f"[{low:.3g}, {high:.3g}] (logits? apply a sigmoid first)")
    return n


# ---------------------------------------------------------------------- scoring


def evaluate_predictions(
    pred: Mapping[str, np.ndarray],
    ann: Annotations,
    split: str,
    *,
    gate: str = "fused",
    threshold: float = 0.5,
    gate_threshold: float = 0.5,
) -> dict:
    """Official LLP scores of ``pred`` (a P.npz dict) on ``split`` ('val' or 'test').

    Every clip of the split must be predicted (a missing clip would silently change the
    denominator); clips outside the split are ignored and counted in ``ignored_clips``.
    The result is :func:`avvp_pipe.models.metrics.llp_scores` plus the settings used and per-class
    diagnostics (see :func:`avvp_pipe.models.metrics.per_class_f1`).
    """
    if gate not in GATES:
        raise AvvpError(f"gate {gate!r}: expected one of {', '.join(GATES)}")
    _check_shapes(pred, "predictions")
    if gate == "modality" and any(k not in pred for k in OPTIONAL_KEYS):
        raise AvvpError("predictions: gate 'modality' expected keys 'a_prob' and 'v_prob' but they are missing")
    if split not in ann.dense_splits():
        raise AvvpError(f"split {split!r}: expected a split with dense labels ({', '.join(ann.dense_splits())})")
    split_ids = ann.split_ids(split)
    rows = _rows_for_split(pred["video_ids"], ann, split_ids, split)
    audio, visual = predictions_to_binary(
        np.asarray(pred["frame_prob"])[rows],
        np.asarray(pred["global_prob"])[rows],
        *(np.asarray(pred[k])[rows] if k in pred else None for k in OPTIONAL_KEYS),
        gate=gate,
        threshold=threshold,
        gate_threshold=gate_threshold,
    )  # (S, 25, 10) each, in split order
    truth_a, truth_v = ann.dense(split_ids, "audio"), ann.dense(split_ids, "visual")
    result = llp_scores(audio, visual, truth_a, truth_v)
    result.update(
        split=split,
        gate=gate,
        threshold=threshold,
        gate_threshold=gate_threshold,
        ignored_clips=len(pred["video_ids"]) - len(split_ids),
        annotation_files={m: ann.files.get(m) for m in ("audio", "visual")},
        per_class=_per_class_json(llp_per_class(audio, visual, truth_a, truth_v)),
    )
    return result


def _rows_for_split(video_ids: np.ndarray, ann: Annotations, split_ids: list[str], split: str) -> np.ndarray:
    """Row of each split clip in the predictions, in split order; missing clips raise."""
    index: dict[str, int] = {}
    for row, name in enumerate(np.asarray(video_ids).tolist()):
        cid = ann.resolve(str(name))
        if cid in index:
            raise AvvpError(f"predictions: clip {name!r} appears twice in video_ids (rows {index[cid]} and {row})")
        index[cid] = row
    missing = [cid for cid in split_ids if cid not in index]
    if missing:
        raise AvvpError(
            f"predictions: expected all {len(split_ids)} {split} clips but {len(missing)} are missing "
            f"(e.g. {', '.join(ann.clips[c].filename for c in missing[:_EXAMPLES])})"
        )
    return np.asarray([index[cid] for cid in split_ids], dtype=np.int64)


def _per_class_json(per_class: Mapping[str, Mapping[str, np.ndarray]]) -> dict:
    """``[level][modality][class name] -> percent`` with None (JSON null) for absent classes."""
    return {
        level: {
            key: {name: (None if math.isnan(v) else float(v)) for name, v in zip(CLASSES, values.tolist())}
            for key, values in per_class[level].items()
        }
        for level in LEVELS
    }


def save_scores(path: str | os.PathLike, result: Mapping) -> Path:
    """Write the scores JSON atomically."""
    return atomic_write_json(path, result)


def format_table(result: Mapping) -> str:
    """A small text table: segment/event rows x A, V, AV, Type@AV, Event@AV, then Average."""
    header = f"{'level':<8}" + "".join(f"{h:>10}" for h in ("A", "V", "AV", "Type@AV", "Event@AV"))
    lines = [header]
    for level in LEVELS:
        scores = result[level]
        cells = (scores[k] for k in ("audio", "visual", "audio_visual", "type_at_av", "event_at_av"))
        lines.append(f"{level:<8}" + "".join(f"{v:>10.2f}" for v in cells))
    lines.append(f"Average (segment and event Type@AV): {result['average']:.2f}")
    return "\n".join(lines)
