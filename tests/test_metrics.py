"""The official LLP evaluation: hand-computed rules, a loop-based reference, the real reference rows.

Expected numbers are worked out by hand in comments, or come from a slow transcription of the
official AVVP-ECCV20 ``utils/eval_metrics.py`` written below, or from llp-facts.md section 5;
never from the code under test.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from avvp_pipe.pipeline import cli as cli_mod
from avvp_pipe.models.metrics import (
    event_counts,
    event_f1,
    f1_from_counts,
    llp_scores,
    per_class_segment_f1,
    pool,
    predictions_to_binary,
    segment_counts,
    segment_f1,
)
from avvp_pipe.core.errors import AvvpError
from avvp_pipe.pipeline.evaluate.scores import evaluate_predictions, load_predictions, save_predictions
from avvp_pipe.pipeline.llp.annotations import CLASSES, Clip, load_annotations, write_annotations

C, T = 25, 10


def grid(*clips: dict[int, str]) -> np.ndarray:
    """(N, 25, 10) uint8 from one {class: '0110000000'} dict per clip."""
    out = np.zeros((len(clips), C, T), dtype=np.uint8)
    for n, rows in enumerate(clips):
        for cls, bits in rows.items():
            out[n, cls] = [int(b) for b in bits]
    return out


# ---------------------------------------------------------------------- segment level


def test_segment_f1_of_one_class():
    truth = grid({0: "1111000000"})
    pred = grid({0: "0011110000"})
    # TP = seconds 2,3 -> 2; FP = 4,5 -> 2; FN = 0,1 -> 2; F1 = 2*2 / (2*2 + 2 + 2) = 0.5
    assert segment_f1(pred, truth) == pytest.approx([0.5])
    counts = segment_counts(pred, truth)
    assert (counts.tp[0, 0], counts.fp[0, 0], counts.fn[0, 0]) == (2, 2, 2)


def test_segment_f1_averages_only_classes_present_in_truth_or_prediction():
    truth = grid({0: "1111000000", 1: "1100000000", 3: "0000011111"})
    pred = grid({0: "0011110000", 2: "1000000000", 3: "0000011111"})
    # class 0: 0.5 (above); class 1: truth only -> 0; class 2: prediction only -> 0;
    # class 3: exact -> 1; the 21 absent classes do not count: (0.5 + 0 + 0 + 1) / 4 = 0.375
    assert segment_f1(pred, truth) == pytest.approx([0.375])


def test_clip_with_nothing_in_truth_or_prediction_scores_one():
    empty = grid({})
    truth_only = grid({4: "1000000000"})
    # no class present -> 1.0 ("all true negatives"); a missed class -> 2*0 / (0 + 0 + 1) = 0
    assert segment_f1(empty, empty) == pytest.approx([1.0])
    assert event_f1(empty, empty) == pytest.approx([1.0])
    assert segment_f1(empty, truth_only) == pytest.approx([0.0])
    assert event_f1(empty, truth_only) == pytest.approx([0.0])


# ---------------------------------------------------------------------- event level


def test_events_are_maximal_runs():
    truth = grid({0: "1101100000"})  # two events: [0, 2) and [3, 5)
    pred = grid({0: "1111100000"})  # one event [0, 5)
    # IoU with [0,2) = 2/5 = 0.4, with [3,5) = 2/5 = 0.4: no match -> TP 0, FP 1, FN 2 -> F1 0
    counts = event_counts(pred, truth)
    assert (counts.tp[0, 0], counts.fp[0, 0], counts.fn[0, 0]) == (0, 1, 2)
    assert event_f1(pred, truth) == pytest.approx([0.0])
    # the same seconds at segment level: TP 4, FP 1 (second 2), FN 0 -> 8 / 9
    assert segment_f1(pred, truth) == pytest.approx([8 / 9])


def test_iou_exactly_half_matches_and_just_below_does_not():
    # truth [0, 10), prediction [0, 5): IoU = 5 / 10 = 0.5 -> match: TP 1, FP 0, FN 0 -> 1.0
    assert event_f1(grid({0: "1111100000"}), grid({0: "1111111111"})) == pytest.approx([1.0])
    # truth [0, 4), prediction [2, 4): IoU = 2 / 4 = 0.5 -> match
    assert event_f1(grid({0: "0011000000"}), grid({0: "1111000000"})) == pytest.approx([1.0])
    # truth [0, 9), prediction [0, 4): IoU = 4 / 9 = 0.444 (closest below 0.5 in 10 s)
    # -> TP 0, FP 1, FN 1 -> 0
    counts = event_counts(grid({0: "1111000000"}), grid({0: "1111111110"}))
    assert (counts.tp[0, 0], counts.fp[0, 0], counts.fn[0, 0]) == (0, 1, 1)


def test_one_prediction_overlapping_two_true_events():
    truth = grid({0: "1110100000"})  # [0, 3) and [4, 5)
    pred = grid({0: "1111100000"})  # [0, 5)
    # IoU with [0,3) = 3/5 = 0.6 -> the prediction is one TP; IoU with [4,5) = 1/5 -> that
    # true event is an FN. TP 1, FP 0, FN 1 -> F1 = 2 / (2 + 0 + 1) = 2/3
    counts = event_counts(pred, truth)
    assert (counts.tp[0, 0], counts.fp[0, 0], counts.fn[0, 0]) == (1, 0, 1)
    assert event_f1(pred, truth) == pytest.approx([2 / 3])


def test_many_events_in_one_row():
    truth = grid({7: "1010101010"})  # five one-second events
    pred = grid({7: "1010100001"})  # [0,1) [2,3) [4,5) match; [9,10) does not
    # TP 3, FP 1, FN 2 ([6,7) and [8,9)) -> F1 = 6 / (6 + 1 + 2) = 2/3
    counts = event_counts(pred, truth)
    assert (counts.tp[0, 7], counts.fp[0, 7], counts.fn[0, 7]) == (3, 1, 2)
    assert event_f1(pred, truth) == pytest.approx([2 / 3])


def test_iou_must_be_a_fraction():
    with pytest.raises(AvvpError, match="iou"):
        event_counts(grid({}), grid({}), iou=0.0)


# ---------------------------------------------------------------------- all scores


def test_llp_scores_pools_event_at_av_and_multiplies_av():
    truth_a = grid({0: "1111000000"})
    truth_v = grid({0: "0011110000"})
    pred_a = grid({0: "1111000000"})
    pred_v = grid({0: "0000000011"})
    s = llp_scores(pred_a, pred_v, truth_a, truth_v)
    # segment: A exact -> 100. V: TP 0, FP 2, FN 4 -> 0.
    # AV truth = A*V = seconds 2,3; AV pred = A*V = nothing -> FN 2 -> 0.
    # Type@AV = (100 + 0 + 0) / 3 = 33.333
    # Event@AV pools class 0: TP 4+0, FP 0+2, FN 0+4 -> 8 / (8 + 2 + 4) = 57.142857
    assert s["segment"]["audio"] == pytest.approx(100.0)
    assert s["segment"]["visual"] == pytest.approx(0.0)
    assert s["segment"]["audio_visual"] == pytest.approx(0.0)
    assert s["segment"]["type_at_av"] == pytest.approx(100 / 3)
    assert s["segment"]["event_at_av"] == pytest.approx(100 * 8 / 14)
    # event: A one exact event TP 1; V [8,10) vs [2,6): FP 1, FN 1; AV truth [2,4) FN 1.
    # Event@AV pooled: TP 1, FP 1, FN 1 -> 2 / 4 = 50 (the mean of A and V would be 50 too,
    # so a second case below separates pooling from averaging)
    assert s["event"]["type_at_av"] == pytest.approx(100 / 3)
    assert s["event"]["event_at_av"] == pytest.approx(50.0)
    assert s["average"] == pytest.approx((100 / 3 + 100 / 3) / 2)
    assert s["clips"] == 1


def test_event_at_av_pools_counts_rather_than_averaging_f1():
    # class 0: audio TP 3 of 3 seconds; visual 1 FP second and no truth.
    truth_a, pred_a = grid({0: "1110000000"}), grid({0: "1110000000"})
    truth_v, pred_v = grid({}), grid({0: "0000000001"})
    s = llp_scores(pred_a, pred_v, truth_a, truth_v)
    # pooled: TP 3, FP 1, FN 0 -> 6 / 7 = 85.714; averaging A (100) and V (0) would give 50
    assert s["segment"]["event_at_av"] == pytest.approx(600 / 7)
    # events: A TP 1; V FP 1 -> pooled 2 / 3 = 66.667
    assert s["event"]["event_at_av"] == pytest.approx(200 / 3)


def test_dataset_score_is_the_mean_of_clip_scores():
    truth = grid({}, {0: "1111111111"}, {0: "1111111111"})
    pred = grid({}, {0: "1111111111"}, {0: "1000000000"})
    # clip scores: 1.0 (empty), 1.0 (exact), 2*1/(2+0+9) = 2/11 -> mean = (2 + 2/11) / 3
    # (pooled counts would give TP 11, FN 9 -> 22/31 instead)
    s = llp_scores(pred, pred, truth, truth)
    assert s["segment"]["audio"] == pytest.approx(100 * (2 + 2 / 11) / 3)


def test_per_class_segment_f1_means_over_clips_where_the_class_is_present():
    truth = grid({0: "1111000000"}, {0: "1111000000", 1: "1000000000"}, {})
    pred = grid({0: "0011110000"}, {0: "1111000000"}, {})
    per_class = per_class_segment_f1(pred, truth)
    # class 0: clips 0 (0.5) and 1 (1.0) -> 0.75; class 1: clip 1 only (0) -> 0; others: NaN
    assert per_class[0] == pytest.approx(0.75)
    assert per_class[1] == pytest.approx(0.0)
    assert np.isnan(per_class[2:]).all()


@pytest.mark.parametrize("shape", [(2, 25), (2, 10, 25), (2, 25, 9), (2, 24, 10)])
def test_shapes_are_checked(shape):
    with pytest.raises(AvvpError, match=r"expected \(N, 25, 10\) but got"):
        segment_f1(np.zeros(shape), np.zeros(shape))


def test_non_binary_grids_are_rejected():
    with pytest.raises(AvvpError, match="0, 1"):
        segment_f1(np.full((1, C, T), 0.7), grid({}))


# ---------------------------------------------------------------------- gates


def _frame_prob(audio: dict[int, str], visual: dict[int, str]) -> np.ndarray:
    """(1, 10, 2, 25) probabilities: 0.9 where the bit string has a 1, else 0.1."""
    out = np.full((1, T, 2, C), 0.1)
    for m, rows in enumerate((audio, visual)):
        for cls, bits in rows.items():
            out[0, :, m, cls] = [0.9 if b == "1" else 0.1 for b in bits]
    return out


def test_fused_gate_vs_modality_gate():
    frame = _frame_prob(audio={0: "1100000000", 1: "0011000000"}, visual={0: "0000110000", 1: "0000001100"})
    global_prob = np.zeros((1, C))
    global_prob[0, 0] = 0.7  # the fused gate keeps class 0 in both modalities, drops class 1
    a_prob, v_prob = np.zeros((1, C)), np.zeros((1, C))
    a_prob[0, 1] = 0.6  # the audio gate keeps class 1 only
    v_prob[0, 0] = 0.5  # the visual gate keeps class 0 only (>= 0.5 passes)
    audio, visual = predictions_to_binary(frame, global_prob)
    np.testing.assert_array_equal(audio, grid({0: "1100000000"}))
    np.testing.assert_array_equal(visual, grid({0: "0000110000"}))
    audio, visual = predictions_to_binary(frame, global_prob, a_prob, v_prob, gate="modality")
    np.testing.assert_array_equal(audio, grid({1: "0011000000"}))
    np.testing.assert_array_equal(visual, grid({0: "0000110000"}))


def test_thresholds_are_inclusive_and_configurable():
    frame = np.full((1, T, 2, C), 0.5)
    global_prob = np.full((1, C), 0.5)
    audio, _ = predictions_to_binary(frame, global_prob)
    assert audio.all()  # 0.5 >= 0.5, as the official code
    audio, _ = predictions_to_binary(frame, global_prob, threshold=0.6)
    assert not audio.any()
    audio, _ = predictions_to_binary(frame, global_prob, gate_threshold=0.6)
    assert not audio.any()


def test_gate_errors():
    frame, global_prob = np.zeros((1, T, 2, C)), np.zeros((1, C))
    with pytest.raises(AvvpError, match="a_prob"):
        predictions_to_binary(frame, global_prob, gate="modality")
    with pytest.raises(AvvpError, match="gate"):
        predictions_to_binary(frame, global_prob, gate="max")
    with pytest.raises(AvvpError, match="frame_prob"):
        predictions_to_binary(np.zeros((1, 2, T, C)), global_prob)


# ---------------------------------------------------------------------- reference implementation
# A slow, loop-based transcription of the official utils/eval_metrics.py (AVVP-ECCV20):
# segment_level, event_level, extract_event and event_wise_metric, one clip at a time.


def ref_extract_event(seq: np.ndarray) -> list[np.ndarray]:
    """Official extract_event: maximal runs of ones as 0/1 vectors of length 10."""
    events, i = [], 0
    while i < 10:
        if seq[i] == 1:
            start = i
            if i + 1 == 10:
                events.append(ref_to_vec(start, 10))
                break
            for j in range(i + 1, 10):
                if seq[j] != 1:
                    i = j + 1
                    events.append(ref_to_vec(start, j))
                    break
                i = j + 1
                if i == 10:
                    events.append(ref_to_vec(start, 10))
                    break
        else:
            i += 1
    return events


def ref_to_vec(start: int, end: int) -> np.ndarray:
    x = np.zeros(10)
    for i in range(start, end):
        x[i] = 1
    return x


def ref_event_wise_metric(event_p, event_gt) -> tuple[int, int, int]:
    tp = fp = fn = 0
    if event_p is not None:
        for x1 in event_p:
            if event_gt is None:
                fp += 1
                continue
            if any(np.sum(x1 * x2) >= 0.5 * np.sum(x1 + x2 - x1 * x2) for x2 in event_gt):
                tp += 1
            else:
                fp += 1
    if event_gt is not None:
        for x1 in event_gt:
            if event_p is None or not any(
                np.sum(x1 * x2) >= 0.5 * np.sum(x1 + x2 - x1 * x2) for x2 in event_p
            ):
                fn += 1
    return tp, fp, fn


def ref_f(tp, fp, fn) -> float:
    present = [c for c in range(len(tp)) if tp[c] + fp[c] != 0 or tp[c] + fn[c] != 0]
    scores = [2 * tp[c] / (2 * tp[c] + fn[c] + fp[c]) for c in present]
    return 1.0 if not scores else sum(scores) / len(scores)


def ref_segment_level(so_a, so_v, so_av, gt_a, gt_v, gt_av) -> tuple[float, ...]:
    def counts(so, gt):
        return np.sum(so * gt, axis=1), np.sum(so * (1 - gt), axis=1), np.sum((1 - so) * gt, axis=1)

    (tpa, fpa, fna), (tpv, fpv, fnv), (tpav, fpav, fnav) = counts(so_a, gt_a), counts(so_v, gt_v), counts(so_av, gt_av)
    return ref_f(tpa, fpa, fna), ref_f(tpv, fpv, fnv), ref_f(tpa + tpv, fpa + fpv, fna + fnv), ref_f(tpav, fpav, fnav)


def ref_event_level(so_a, so_v, so_av, gt_a, gt_v, gt_av) -> tuple[float, ...]:
    counts = {}
    for name, so, gt in (("a", so_a, gt_a), ("v", so_v, gt_v), ("av", so_av, gt_av)):
        tp, fp, fn = np.zeros(25), np.zeros(25), np.zeros(25)
        for n in range(25):
            ev_p = ref_extract_event(so[n]) if np.sum(so[n]) != 0 else None
            ev_gt = ref_extract_event(gt[n]) if np.sum(gt[n]) != 0 else None
            tp[n], fp[n], fn[n] = ref_event_wise_metric(ev_p, ev_gt)
        counts[name] = (tp, fp, fn)
    (tpa, fpa, fna), (tpv, fpv, fnv) = counts["a"], counts["v"]
    return ref_f(tpa, fpa, fna), ref_f(tpv, fpv, fnv), ref_f(tpa + tpv, fpa + fpv, fna + fnv), ref_f(*counts["av"])


def random_grids(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    """(n, 25, 10) uint8: 'dense' (i.i.d. seconds) or 'sparse' (1-3 classes per clip, random runs)."""
    if kind.startswith("dense"):
        return (rng.random((n, C, T)) < float(kind.split("-")[1])).astype(np.uint8)
    out = np.zeros((n, C, T), dtype=np.uint8)
    for clip in range(n):
        for cls in rng.choice(C, size=rng.integers(0, 4), replace=False):
            for _ in range(rng.integers(1, 3)):
                start = rng.integers(0, T)
                out[clip, cls, start : rng.integers(start + 1, T + 1)] = 1
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("truth_kind", ["sparse", "dense-0.3"])
@pytest.mark.parametrize("pred_kind", ["sparse", "dense-0.1", "dense-0.5"])
def test_matches_official_loops_on_random_inputs(seed, truth_kind, pred_kind):
    rng = np.random.default_rng(seed)
    n = 40
    ta, tv = random_grids(rng, n, truth_kind), random_grids(rng, n, truth_kind)
    pa, pv = random_grids(rng, n, pred_kind), random_grids(rng, n, pred_kind)
    if pred_kind == "sparse":  # share some truth so matches happen, not only misses
        pa[: n // 2], pv[: n // 3] = ta[: n // 2], tv[: n // 3]
    ref = {"segment": [], "event": []}
    for i in range(n):
        args = (pa[i].astype(float), pv[i].astype(float), (pa[i] * pv[i]).astype(float),
                ta[i].astype(float), tv[i].astype(float), (ta[i] * tv[i]).astype(float))
        ref["segment"].append(ref_segment_level(*args))
        ref["event"].append(ref_event_level(*args))
    for level, f1, count in (("segment", segment_f1, segment_counts), ("event", event_f1, event_counts)):
        expected = np.array(ref[level])  # (n, 4): A, V, Event@AV, AV per clip
        np.testing.assert_allclose(f1(pa, ta), expected[:, 0], atol=1e-12)
        np.testing.assert_allclose(f1(pv, tv), expected[:, 1], atol=1e-12)
        np.testing.assert_allclose(f1_from_counts(pool(count(pa, ta), count(pv, tv))), expected[:, 2], atol=1e-12)
        np.testing.assert_allclose(f1(pa & pv, ta & tv), expected[:, 3], atol=1e-12)
        scores = llp_scores(pa, pv, ta, tv)[level]
        mean = 100 * expected.mean(0)
        assert scores["audio"] == pytest.approx(mean[0], abs=1e-9)
        assert scores["event_at_av"] == pytest.approx(mean[2], abs=1e-9)
        assert scores["type_at_av"] == pytest.approx((mean[0] + mean[1] + mean[3]) / 3, abs=1e-9)


def test_reference_extract_event_on_edge_rows():
    # the transcription itself, checked by hand: runs touching both ends and single seconds
    runs = [tuple(np.flatnonzero(e)) for e in ref_extract_event(np.array([1, 1, 0, 1, 0, 0, 0, 0, 1, 1]))]
    assert runs == [(0, 1), (3,), (8, 9)]
    assert [tuple(np.flatnonzero(e)) for e in ref_extract_event(np.ones(10))] == [tuple(range(10))]
    assert [tuple(np.flatnonzero(e)) for e in ref_extract_event(np.eye(10)[9])] == [(9,)]


# ---------------------------------------------------------------------- real annotation files


@pytest.fixture(scope="module")
def real_ann(real_llp):
    return load_annotations(real_llp)


def _p_npz(ann, split: str, audio: np.ndarray, visual: np.ndarray, gate: np.ndarray, *, filenames: bool) -> dict:
    """A P.npz-style dict whose 0/1 probabilities reproduce the given grids (N, 25, 10)."""
    ids = ann.split_ids(split)
    frame = np.stack([audio, visual], axis=1).transpose(0, 3, 1, 2).astype(np.float32)  # (N, 10, 2, 25)
    names = [ann.clips[c].filename for c in ids] if filenames else ids
    return {"video_ids": np.array(names), "frame_prob": frame, "global_prob": gate.astype(np.float32)}


def _weak_everywhere(ann, split: str) -> dict:
    weak = ann.weak_labels(split)  # (N, 25)
    grid10 = np.repeat(weak[:, :, None], T, axis=2)  # (N, 25, 10): the weak labels on all 10 s
    return _p_npz(ann, split, grid10, grid10, weak, filenames=True)


ROWS = ("audio", "visual", "audio_visual", "type_at_av", "event_at_av")


def _assert_row(result: dict, level: str, expected: tuple[float, ...]) -> None:
    got = tuple(result[level][k] for k in ROWS)
    assert got == pytest.approx(expected, abs=5e-5), f"{level}: {got} vs {expected}"


def test_real_test_truth_itself_scores_100(real_ann):
    ta, tv = real_ann.dense("test", "audio"), real_ann.dense("test", "visual")
    gate = (ta | tv).any(2)  # (N, 25): the fused gate must pass every true class
    result = evaluate_predictions(_p_npz(real_ann, "test", ta, tv, gate, filenames=False), real_ann, "test")
    assert result["clips"] == 1200
    _assert_row(result, "segment", (100.0,) * 5)
    _assert_row(result, "event", (100.0,) * 5)


def test_real_test_nothing(real_ann):
    zeros = np.zeros((1200, C, T))
    result = evaluate_predictions(_p_npz(real_ann, "test", zeros, zeros, zeros[:, :, 0], filenames=False),
                                  real_ann, "test")
    # llp-facts.md section 5
    _assert_row(result, "segment", (0.5000, 10.0833, 14.5000, 8.3611, 0.0000))
    _assert_row(result, "event", (0.5000, 10.0833, 14.5000, 8.3611, 0.0000))


def test_real_test_weak_labels_everywhere(real_ann):
    pred = _weak_everywhere(real_ann, "test")
    # extra clips from another split are ignored and counted, and row order does not matter
    val = _weak_everywhere(real_ann, "val")
    order = np.random.default_rng(0).permutation(1200 + 649)
    pred = {k: np.concatenate([pred[k], val[k]])[order] for k in pred}
    result = evaluate_predictions(pred, real_ann, "test")
    assert result["ignored_clips"] == 649
    # llp-facts.md section 5
    _assert_row(result, "segment", (76.1176, 60.3480, 52.6103, 63.0253, 71.7258))
    _assert_row(result, "event", (63.0272, 55.7527, 44.6921, 54.4907, 61.6011))
    assert result["average"] == pytest.approx((63.0253 + 54.4907) / 2, abs=1e-4)


def test_real_val_rows(real_ann):
    zeros = np.zeros((649, C, T))
    nothing = evaluate_predictions(_p_npz(real_ann, "val", zeros, zeros, zeros[:, :, 0], filenames=True),
                                   real_ann, "val")
    assert nothing["segment"]["type_at_av"] == pytest.approx(8.5773, abs=5e-5)
    assert nothing["event"]["type_at_av"] == pytest.approx(8.5773, abs=5e-5)
    weak = evaluate_predictions(_weak_everywhere(real_ann, "val"), real_ann, "val")
    assert weak["segment"]["type_at_av"] == pytest.approx(62.6005, abs=5e-5)
    assert weak["event"]["type_at_av"] == pytest.approx(53.8244, abs=5e-5)


# ---------------------------------------------------------------------- evaluate_predictions


IDS = [f"clip{i:07d}" for i in range(8)]  # 11-character ids


@pytest.fixture()
def small_ann(tmp_path):
    """2 train, 3 val, 3 test clips; each val/test clip has audio 'Speech' on seconds 0-4."""
    splits = ["train"] * 2 + ["val"] * 3 + ["test"] * 3
    clips = [Clip(cid, f"{cid}_0_10", split, (0,)) for cid, split in zip(IDS, splits)]
    speech = np.zeros((C, T), dtype=np.uint8)
    speech[0, :5] = 1
    dense = {"audio": {c.id: speech for c in clips if c.split != "train"}, "visual": {}}
    return load_annotations(write_annotations(tmp_path / "llp", clips, dense))


def _perfect(ids: list[str]) -> dict:
    frame = np.zeros((len(ids), T, 2, C), dtype=np.float32)
    frame[:, :5, 0, 0] = 1.0  # audio Speech on seconds 0-4
    glob = np.zeros((len(ids), C), dtype=np.float32)
    glob[:, 0] = 1.0
    return {"video_ids": np.array(ids), "frame_prob": frame, "global_prob": glob}


def test_evaluate_accepts_full_filenames_and_ignores_extra_clips(small_ann):
    by_id = evaluate_predictions(_perfect(IDS[5:]), small_ann, "test")
    by_name = evaluate_predictions(_perfect([f"{c}_0_10" for c in IDS]), small_ann, "test")
    assert by_id["clips"] == by_name["clips"] == 3
    assert by_id["ignored_clips"] == 0 and by_name["ignored_clips"] == 5
    # audio exact -> 100; visual: nothing predicted, nothing true -> 1.0 per clip -> 100;
    # AV: truth empty (no visual) and prediction empty -> 100
    assert by_name["segment"] == by_id["segment"] == dict.fromkeys(ROWS, 100.0)
    assert set(by_name["per_class"]["segment"]["audio"]) == set(CLASSES)
    assert by_name["per_class"]["segment"]["audio"]["Speech"] == 100.0
    assert by_name["per_class"]["segment"]["audio"]["Car"] is None


def test_evaluate_missing_clips_is_an_error(small_ann):
    expected = r"all 3 test clips but 2 are missing \(e.g. clip0000006_0_10, clip0000007_0_10\)"
    with pytest.raises(AvvpError, match=expected):
        evaluate_predictions(_perfect(IDS[:6]), small_ann, "test")


@pytest.mark.parametrize(
    "key, shape, expected",
    [
        ("frame_prob", (3, 10, 25, 2), r"'frame_prob' expected shape \(3, 10, 2, 25\)"),
        ("frame_prob", (2, 10, 2, 25), r"'frame_prob' expected shape \(3, 10, 2, 25\)"),
        ("global_prob", (3, 24), r"'global_prob' expected shape \(3, 25\)"),
        ("a_prob", (3,), r"'a_prob' expected shape \(3, 25\)"),
    ],
    ids=["frame-transposed", "frame-rows", "global-classes", "a-prob-1d"],
)
def test_evaluate_wrong_shapes_name_the_key(small_ann, key, shape, expected):
    pred = _perfect(IDS[5:])
    pred[key] = np.zeros(shape, dtype=np.float32)
    with pytest.raises(AvvpError, match=expected):
        evaluate_predictions(pred, small_ann, "test")


def test_evaluate_input_errors(small_ann):
    pred = _perfect(IDS[5:])
    with pytest.raises(AvvpError, match="'global_prob' is missing"):
        evaluate_predictions({k: v for k, v in pred.items() if k != "global_prob"}, small_ann, "test")
    with pytest.raises(AvvpError, match="a_prob"):
        evaluate_predictions(pred, small_ann, "test", gate="modality")
    with pytest.raises(AvvpError, match="appears twice"):
        evaluate_predictions(_perfect(IDS[5:] + IDS[5:6]), small_ann, "test")
    with pytest.raises(AvvpError, match="split 'train'"):
        evaluate_predictions(_perfect(IDS), small_ann, "train")
    bad = dict(pred, frame_prob=np.full((3, T, 2, C), np.nan, dtype=np.float32))
    with pytest.raises(AvvpError, match="finite"):
        evaluate_predictions(bad, small_ann, "test")


def test_evaluate_modality_gate(small_ann):
    pred = _perfect(IDS[5:])
    pred["global_prob"][:] = 0.0  # the fused gate now drops everything ...
    pred["a_prob"] = np.zeros((3, C), dtype=np.float32)
    pred["a_prob"][:, 0] = 0.9  # ... while the audio gate keeps Speech
    pred["v_prob"] = np.zeros((3, C), dtype=np.float32)
    # fused: audio truth in every clip, nothing predicted -> A = 0; modality: A exact -> 100
    assert evaluate_predictions(pred, small_ann, "test")["segment"]["audio"] == 0.0
    assert evaluate_predictions(pred, small_ann, "test", gate="modality")["segment"]["audio"] == 100.0


def test_save_load_round_trip(tmp_path):
    pred = _perfect(IDS[5:])
    path = save_predictions(tmp_path / "P.npz", pred["video_ids"], pred["frame_prob"], pred["global_prob"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["P.npz"]  # no temp file left behind
    loaded = load_predictions(path)
    assert sorted(loaded) == ["frame_prob", "global_prob", "video_ids"]
    assert loaded["video_ids"].tolist() == IDS[5:]
    np.testing.assert_array_equal(loaded["frame_prob"], pred["frame_prob"])
    with pytest.raises(AvvpError, match="'global_prob' expected shape"):
        save_predictions(tmp_path / "Q.npz", IDS[5:], pred["frame_prob"], np.zeros((3, 5)))
    assert not (tmp_path / "Q.npz").exists()
    with pytest.raises(AvvpError, match="not found"):
        load_predictions(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(AvvpError, match="expected an .npz"):
        load_predictions(tmp_path / "junk.npz")


def test_cli_writes_json_and_prints_table(small_ann, tmp_path):
    pred = _perfect(IDS[5:])
    p_path = save_predictions(tmp_path / "P.npz", pred["video_ids"], pred["frame_prob"], pred["global_prob"])
    out = tmp_path / "scores.json"
    args = ["evaluate", "--predictions", str(p_path), "--annotations", str(small_ann.root), "--split", "test",
            "--json", str(out)]
    res = CliRunner().invoke(cli_mod.cli, args)
    assert res.exit_code == 0, res.output
    assert "Type@AV" in res.output and "Average" in res.output
    data = json.loads(out.read_text())
    for level in ("segment", "event"):
        assert set(data[level]) == set(ROWS)
    assert {"average", "clips", "split", "gate", "ignored_clips", "per_class"} <= set(data)
    assert data["clips"] == 3 and data["segment"]["audio"] == 100.0
    assert not any(p.name.startswith(".scores.json") for p in tmp_path.iterdir())


def test_cli_missing_clips_exit_code(small_ann, tmp_path):
    pred = _perfect(IDS[5:6])
    p_path = save_predictions(tmp_path / "P.npz", pred["video_ids"], pred["frame_prob"], pred["global_prob"])
    args = ["evaluate", "--predictions", str(p_path), "--annotations", str(small_ann.root), "--split", "test"]
    res = CliRunner().invoke(cli_mod.cli, args)
    assert res.exit_code == 3
    assert "2 are missing" in res.output
