"""The official LLP (AVVP) evaluation as a vectorised functional core.

Follows the official AVVP-ECCV20 code (``utils/eval_metrics.py`` and ``main_avvp.py``),
checked against a loop-based transcription of it in ``tests/test_metrics.py``:

* Truth and prediction are ``(N, 25, 10)`` {0, 1} grids (clip, class, second) per modality;
  audio-visual grids are the per-second product of the audio and visual grids.
* Per clip and class we count TP/FP/FN, either over seconds (segment level) or over events
  (event level: maximal runs of positive seconds, matched at IoU >= 0.5).
* F1_c = 2TP / (2TP + FP + FN) for the classes present in truth or prediction; a clip scores
  the mean over those classes, or 1.0 when there is none ("all true negatives").
* A dataset score is the mean of per-clip scores (not pooled counts). Type@AV is the mean of
  the A, V and AV scores; Event@AV pools the audio and visual counts per class before F1.

Everything is plain numpy over whole splits at once, because training scores the
validation split every epoch and the official per-clip Python loops take seconds.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from avvp_pipe.core.errors import AvvpError
from avvp_pipe.pipeline.llp.annotations import NUM_CLASSES, SECONDS

GATES: tuple[str, ...] = ("fused", "modality")
LEVELS: tuple[str, ...] = ("segment", "event")
#: Keys of one level in :func:`llp_scores`, in the order papers print them.
SCORE_KEYS: tuple[str, ...] = ("audio", "visual", "audio_visual", "type_at_av", "event_at_av")


def metric_names() -> list[str]:
    """Every score a run can be selected or ranked by: ``average`` and ``<level>.<score>``."""
    return ["average"] + [f"{level}.{key}" for level in LEVELS for key in SCORE_KEYS]


class Counts(NamedTuple):
    """Per-clip, per-class counts; each field is an ``(N, 25)`` int64 array."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray


def pool(a: Counts, b: Counts) -> Counts:
    """Sum two modalities' counts class by class, as Event@AV does before F1."""
    return Counts(a.tp + b.tp, a.fp + b.fp, a.fn + b.fn)


# ---------------------------------------------------------------------- input checks


def check_grid(x: np.ndarray, name: str = "grid") -> np.ndarray:
    """``x`` as a bool ``(N, 25, 10)`` array; anything else (shape, non-binary values) raises."""
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[1:] != (NUM_CLASSES, SECONDS):
        raise AvvpError(f"{name}: expected (N, {NUM_CLASSES}, {SECONDS}) but got {x.shape}")
    if x.dtype != bool and not np.array_equal(x, x.astype(bool)):
        raise AvvpError(f"{name}: expected values in {{0, 1}} but got others (threshold probabilities first)")
    return x.astype(bool, copy=False)


def _check_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = check_grid(pred, "pred"), check_grid(truth, "truth")
    if pred.shape != truth.shape:
        raise AvvpError(f"pred: expected the truth's shape {truth.shape} but got {pred.shape}")
    return pred, truth


# ---------------------------------------------------------------------- counts


def segment_counts(pred: np.ndarray, truth: np.ndarray) -> Counts:
    """TP/FP/FN per clip and class, counted over the 10 one-second segments."""
    pred, truth = _check_pair(pred, truth)  # (N, 25, 10) bool each
    tp = (pred & truth).sum(-1)  # (N, 25)
    fp = (pred & ~truth).sum(-1)
    fn = (~pred & truth).sum(-1)
    return Counts(tp, fp, fn)


def _runs_table(t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Events of every possible row of ``t`` seconds, indexed by the row's bit code.

    Returns ``starts``, ``ends`` (2**t, K) int8 (padded with empty [0, 0) slots) and the
    number of runs (2**t,). A row's events are then one table lookup; with t = 10 the tables
    hold 1024 rows, built once, which is much faster than finding runs per call.
    """
    codes = np.arange(2**t)
    rows = (codes[:, None] >> np.arange(t)) & 1  # (2**t, t): bit s is second s
    edges = np.diff(rows, axis=1, prepend=0, append=0)  # (2**t, t + 1): +1 at a start, -1 at an end
    row_s, start = np.nonzero(edges == 1)  # row-major, so the i-th start pairs with the i-th end
    _, end = np.nonzero(edges == -1)
    n_runs = np.bincount(row_s, minlength=len(codes))
    slot = np.arange(len(row_s)) - (np.cumsum(n_runs) - n_runs)[row_s]  # run index within its row
    starts = np.zeros((len(codes), (t + 1) // 2), dtype=np.int8)
    ends = np.zeros_like(starts)
    starts[row_s, slot] = start
    ends[row_s, slot] = end
    return starts, ends, n_runs


_RUN_STARTS, _RUN_ENDS, _RUN_COUNT = _runs_table(SECONDS)
_BIT_WEIGHTS = (1 << np.arange(SECONDS)).astype(np.int16)  # (10,): second s is bit s


def _runs(code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maximal runs of the rows with bit codes ``code`` (M,) as [start, end) arrays ``(K, M)``.

    K is the largest number of runs in any row, so sparse inputs stay small; padding slots
    are empty [0, 0) and never count as an event. Event-major so each slot is contiguous.
    """
    k = max(int(_RUN_COUNT[code].max(initial=0)), 1)
    return _RUN_STARTS[code, :k].T.copy(), _RUN_ENDS[code, :k].T.copy()


def event_counts(pred: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> Counts:
    """TP/FP/FN per clip and class over events (maximal runs of positive seconds).

    As the official ``event_wise_metric``: a predicted event is a TP if its IoU with ANY
    true event of the class is >= ``iou``, else an FP; a true event matched by no
    prediction is an FN. There is no one-to-one assignment: a prediction counts once however
    many true events it matches, and (below iou 0.5) several predictions may match one.
    """
    if not 0.0 < iou <= 1.0:
        raise AvvpError(f"iou: expected a value in (0, 1] but got {iou}")
    pred, truth = _check_pair(pred, truth)
    n = len(pred)
    code_p = pred.reshape(n * NUM_CLASSES, SECONDS) @ _BIT_WEIGHTS  # (M,), M = N * 25
    code_t = truth.reshape(n * NUM_CLASSES, SECONDS) @ _BIT_WEIGHTS
    # Only (clip, class) rows with a positive second can count anything; most rows are empty.
    active = np.flatnonzero(code_p | code_t)
    tp, fp, fn = (np.zeros(n * NUM_CLASSES, dtype=np.int64) for _ in range(3))
    tp[active], fp[active], fn[active] = _match_events(code_p[active], code_t[active], iou)
    shape = (n, NUM_CLASSES)
    return Counts(tp.reshape(shape), fp.reshape(shape), fn.reshape(shape))


def _match_events(code_p: np.ndarray, code_t: np.ndarray, iou: float) -> tuple[np.ndarray, ...]:
    """(TP, FP, FN) per row, ``(M,)`` each, for predicted and true rows given by bit codes."""
    p_start, p_end = _runs(code_p)  # (Kp, M) each
    t_start, t_end = _runs(code_t)  # (Kt, M) each
    p_len, t_len = p_end - p_start, t_end - t_start  # 0 in padding slots
    p_hit = np.zeros(p_start.shape, dtype=bool)  # (Kp, M): matches some true event
    t_hit = np.zeros(t_start.shape, dtype=bool)  # (Kt, M): matched by some prediction
    # Loops over at most 5 x 5 event slots of whole-split vectors: numpy reductions over
    # such tiny axes are several times slower than these few vector operations.
    for i in range(len(p_start)):
        for j in range(len(t_start)):
            inter = np.maximum(np.minimum(p_end[i], t_end[j]) - np.maximum(p_start[i], t_start[j]), 0)  # (M,)
            union = p_len[i] + t_len[j] - inter
            # Same comparison as the official code (intersection >= iou * union); inter > 0
            # excludes two empty padding slots, which would otherwise "match" with 0 >= 0.
            match = (inter >= iou * union) & (inter > 0)
            p_hit[i] |= match
            t_hit[j] |= match
    tp = p_hit.sum(0)  # (M,)
    fp = (p_len > 0).sum(0) - tp
    fn = ((t_len > 0) & ~t_hit).sum(0)
    return tp, fp, fn


# ---------------------------------------------------------------------- F1


def f1_from_counts(counts: Counts) -> np.ndarray:
    """Per-clip score ``(N,)``: mean F1 over classes present in truth or prediction, else 1.0."""
    denom = 2 * counts.tp + counts.fp + counts.fn  # (N, 25); 0 iff absent from both
    present = denom > 0
    f1 = np.divide(2 * counts.tp, denom, out=np.zeros(denom.shape, dtype=np.float64), where=present)
    n_present = present.sum(1)  # (N,)
    mean = np.divide(f1.sum(1), n_present, out=np.ones(len(f1), dtype=np.float64), where=n_present > 0)
    return mean


def segment_f1(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Segment-level per-clip F1 ``(N,)`` of one modality."""
    return f1_from_counts(segment_counts(pred, truth))


def event_f1(pred: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> np.ndarray:
    """Event-level per-clip F1 ``(N,)`` of one modality."""
    return f1_from_counts(event_counts(pred, truth, iou))


def per_class_f1(counts: Counts) -> np.ndarray:
    """Per-class score ``(25,)``: the mean of F1_c over the clips where class c is present
    in truth or prediction (the clips in which it enters the official per-clip mean).

    NaN for a class present in no clip. This is a diagnostic for per-class plots, not an
    official number: the official scores average per clip, not per class.
    """
    denom = 2 * counts.tp + counts.fp + counts.fn  # (N, 25)
    present = denom > 0
    f1 = np.divide(2 * counts.tp, denom, out=np.zeros(denom.shape, dtype=np.float64), where=present)
    n_clips = present.sum(0)  # (25,)
    return np.divide(f1.sum(0), n_clips, out=np.full(NUM_CLASSES, np.nan), where=n_clips > 0)


def per_class_segment_f1(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Segment-level :func:`per_class_f1` ``(25,)`` of one modality."""
    return per_class_f1(segment_counts(pred, truth))


def per_class_event_f1(pred: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> np.ndarray:
    """Event-level :func:`per_class_f1` ``(25,)`` of one modality."""
    return per_class_f1(event_counts(pred, truth, iou))


# ---------------------------------------------------------------------- model outputs


def predictions_to_binary(
    frame_prob: np.ndarray,
    global_prob: np.ndarray,
    a_prob: np.ndarray | None = None,
    v_prob: np.ndarray | None = None,
    *,
    gate: str = "fused",
    threshold: float = 0.5,
    gate_threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Binary audio and visual grids ``(N, 25, 10)`` uint8 from HAN outputs.

    ``frame_prob`` is ``(N, 10, 2, 25)`` (second, modality 0 audio / 1 visual, class).
    gate="fused" is the official rule: the video-level ``global_prob >= gate_threshold``
    gates both modalities. gate="modality" (MA, JoMoLD) gates audio by ``a_prob`` and
    visual by ``v_prob``; its numbers are not strictly comparable with the official ones.
    """
    frame_prob = np.asarray(frame_prob)
    if frame_prob.ndim != 4 or frame_prob.shape[1:] != (SECONDS, 2, NUM_CLASSES):
        raise AvvpError(f"frame_prob: expected (N, {SECONDS}, 2, {NUM_CLASSES}) but got {frame_prob.shape}")
    n = len(frame_prob)
    if gate == "fused":
        gate_a = gate_v = _check_clip_prob(global_prob, "global_prob", n) >= gate_threshold  # (N, 25)
    elif gate == "modality":
        if a_prob is None or v_prob is None:
            raise AvvpError("gate 'modality': expected a_prob and v_prob but got None")
        gate_a = _check_clip_prob(a_prob, "a_prob", n) >= gate_threshold
        gate_v = _check_clip_prob(v_prob, "v_prob", n) >= gate_threshold
    else:
        raise AvvpError(f"gate {gate!r}: expected one of {', '.join(GATES)}")
    frames = (frame_prob >= threshold).transpose(0, 2, 3, 1)  # (N, 2, 25, 10)
    audio = frames[:, 0] & gate_a[:, :, None]  # (N, 25, 10)
    visual = frames[:, 1] & gate_v[:, :, None]
    return audio.astype(np.uint8), visual.astype(np.uint8)


def _check_clip_prob(x: np.ndarray, name: str, n: int) -> np.ndarray:
    x = np.asarray(x)
    if x.shape != (n, NUM_CLASSES):
        raise AvvpError(f"{name}: expected ({n}, {NUM_CLASSES}) but got {x.shape}")
    return x


# ---------------------------------------------------------------------- all scores


def _modality_counts(pred_audio, pred_visual, truth_audio, truth_visual, level: str) -> dict[str, Counts]:
    count = segment_counts if level == "segment" else event_counts
    pa, pv = check_grid(pred_audio, "pred_audio"), check_grid(pred_visual, "pred_visual")
    ta, tv = check_grid(truth_audio, "truth_audio"), check_grid(truth_visual, "truth_visual")
    return {
        "audio": count(pa, ta),
        "visual": count(pv, tv),
        "audio_visual": count(pa & pv, ta & tv),  # AV = per-second product of A and V
    }


def llp_scores(
    pred_audio: np.ndarray, pred_visual: np.ndarray, truth_audio: np.ndarray, truth_visual: np.ndarray
) -> dict:
    """The official LLP scores in percent, as the JSON written by ``avvp-pipe evaluate``.

    ``{"segment": {audio, visual, audio_visual, type_at_av, event_at_av}, "event": {...},
    "average": mean of segment and event Type@AV (the seed paper's "Average"), "clips": N}``.
    """
    n = len(np.asarray(truth_audio))
    if n == 0:
        raise AvvpError("llp_scores: expected at least one clip but got 0")
    out: dict = {}
    for level in LEVELS:
        counts = _modality_counts(pred_audio, pred_visual, truth_audio, truth_visual, level)
        score = {key: 100.0 * float(f1_from_counts(c).mean()) for key, c in counts.items()}
        score["type_at_av"] = (score["audio"] + score["visual"] + score["audio_visual"]) / 3.0
        score["event_at_av"] = 100.0 * float(f1_from_counts(pool(counts["audio"], counts["visual"])).mean())
        out[level] = {key: score[key] for key in SCORE_KEYS}
    out["average"] = (out["segment"]["type_at_av"] + out["event"]["type_at_av"]) / 2.0
    out["clips"] = n
    return out


def llp_per_class(
    pred_audio: np.ndarray, pred_visual: np.ndarray, truth_audio: np.ndarray, truth_visual: np.ndarray
) -> dict[str, dict[str, np.ndarray]]:
    """:func:`per_class_f1` in percent for each level and modality: ``[level][modality] -> (25,)``."""
    return {
        level: {
            key: 100.0 * per_class_f1(c)
            for key, c in _modality_counts(pred_audio, pred_visual, truth_audio, truth_visual, level).items()
        }
        for level in LEVELS
    }
