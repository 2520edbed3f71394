"""A run's ranking score clip by clip, so that a bootstrap over test clips costs a weighted mean.

Every official LLP score is a mean over clips of a per-clip value (models/metrics.py: the
per-clip F1 averaged over the classes present, Type@AV the mean of the A, V and AV clip
scores, Event@AV on pooled counts, ``average`` the mean of segment and event Type@AV). So
the score of a resample of clips is the mean of the resampled clips' values: the bootstrap
needs these N numbers per run, not B re-evaluations of the predictions.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from avvp_pipe.core.errors import AvvpError
from avvp_pipe.models.metrics import event_counts, f1_from_counts, pool, predictions_to_binary, segment_counts
from avvp_pipe.pipeline.llp.annotations import Annotations


def _level_scores(pred_a: np.ndarray, pred_v: np.ndarray, truth_a: np.ndarray, truth_v: np.ndarray,
                  level: str) -> dict[str, np.ndarray]:
    """Per-clip scores (N,) in percent of one level: audio, visual, audio_visual, type_at_av, event_at_av."""
    count = segment_counts if level == "segment" else event_counts
    counts = {"audio": count(pred_a, truth_a), "visual": count(pred_v, truth_v),
              "audio_visual": count(pred_a & pred_v, truth_a & truth_v)}
    out = {key: 100.0 * f1_from_counts(c) for key, c in counts.items()}
    out["type_at_av"] = (out["audio"] + out["visual"] + out["audio_visual"]) / 3.0
    out["event_at_av"] = 100.0 * f1_from_counts(pool(counts["audio"], counts["visual"]))
    return out


def clip_scores(pred: Mapping[str, np.ndarray], annotations: Annotations, split: str, metric: str) -> np.ndarray:
    """``metric`` (``average`` or ``LEVEL.KEY``) per clip, (N,) in the split's order; its mean is the score.

    The predictions must hold the split's clips in the split's order (the engine writes them so).
    """
    ids = annotations.split_ids(split)
    got = [annotations.resolve(str(v)) for v in np.asarray(pred["video_ids"]).tolist()]
    if got != ids:
        raise AvvpError(f"clip scores: expected predictions of the {len(ids)} {split} clips in split order "
                        f"but got {len(got)} clips in another order")
    audio, visual = predictions_to_binary(pred["frame_prob"], pred["global_prob"])  # (N, 25, 10) each
    audio, visual = audio.astype(bool), visual.astype(bool)
    truth_a = annotations.dense(ids, "audio").astype(bool)
    truth_v = annotations.dense(ids, "visual").astype(bool)
    if metric == "average":
        seg = _level_scores(audio, visual, truth_a, truth_v, "segment")["type_at_av"]
        return (seg + _level_scores(audio, visual, truth_a, truth_v, "event")["type_at_av"]) / 2.0
    level, _, key = metric.partition(".")
    if level not in ("segment", "event"):
        raise AvvpError(f"clip scores: expected 'average' or LEVEL.KEY but got {metric!r}")
    return _level_scores(audio, visual, truth_a, truth_v, level)[key]
