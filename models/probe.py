"""Linear probes: how much of a modality's per-second labels one store's features carry alone.

The seed paper (Table 3) contrasts how well an extractor classifies its own modality with
how well its features fuse with the other modality. Here the probe is a multi-label
logistic regression (one linear layer, sigmoid per class, L2 penalty) fitted full-batch
with L-BFGS on standardised features.

Why these choices:

* **Multi-label**: a second can carry several events (LLP: speech over music...), so a
  softmax over 25 classes would misstate the task.
* **Mean average precision** is the headline: per-second labels are sparse and dominated
  by a few classes (Speech), so accuracy would reward predicting the common class or
  background, and a threshold would add a free parameter. mAP averages, over classes with
  at least one positive scored second, the precision of the ranking of all scored seconds
  (background included). ``top1_accuracy`` (is the best-scoring class one of a labelled
  second's labels) is reported too, as the nearest analogue of the paper's accuracy.
* **Split by clip, not by second**: adjacent seconds of one clip are nearly identical, so a
  per-second split would score memorisation. ``clip_split`` keeps each clip on one side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from avvp_pipe.core.errors import AvvpError


@dataclass(frozen=True)
class ProbeConfig:
    """Fitting settings; the defaults fit a 2048-d, 6,000-second probe in a few CPU seconds."""

    weight_decay: float = 1e-3  # L2 on the weights (not the bias), per mean loss
    max_iter: int = 100  # L-BFGS iterations, full batch
    train_fraction: float = 0.5  # share of clips the probe is fitted on
    seed: int = 0  # which clips go to the fitting side


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one class: mean over positives of the precision at each positive's rank.

    scores, targets (N,). Ties are broken by order after a stable sort on -score. NaN when
    there is no positive.
    """
    positives = np.asarray(targets) > 0
    n_pos = int(positives.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")  # (N,)
    hit = positives[order]  # (N,)
    ranks = np.flatnonzero(hit) + 1  # 1-based ranks of the positives
    return float((np.arange(1, n_pos + 1) / ranks).mean())


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """(mAP over classes with a positive, per-class AP (K,) with NaN for the others)."""
    per_class = np.array([average_precision(scores[:, k], targets[:, k]) for k in range(scores.shape[1])])
    scored = ~np.isnan(per_class)
    return (float(per_class[scored].mean()) if scored.any() else float("nan")), per_class


def clip_split(n_clips: int, train_fraction: float, seed: int) -> np.ndarray:
    """(n_clips,) bool: True for clips the probe is fitted on (at least one on each side)."""
    if n_clips < 2:
        raise AvvpError(f"probe: expected at least 2 clips to split into fit and score parts but got {n_clips}")
    if not 0.0 < train_fraction < 1.0:
        raise AvvpError(f"probe train fraction: expected a value in (0, 1) but got {train_fraction}")
    n_fit = min(n_clips - 1, max(1, round(train_fraction * n_clips)))
    fit = np.zeros(n_clips, dtype=bool)
    fit[np.random.default_rng(seed).permutation(n_clips)[:n_fit]] = True
    return fit


def fit_logistic(x: np.ndarray, y: np.ndarray, config: ProbeConfig = ProbeConfig(),
                 device: str = "cpu") -> tuple[np.ndarray, np.ndarray, torch.nn.Linear]:
    """Fit a multi-label logistic regression; returns (mean (D,), std (D,), linear layer).

    x (N, D) features, y (N, K) 0/1 targets. Features are standardised with the fitting
    part's statistics, so the L2 penalty treats every dimension alike.
    """
    x = np.asarray(x, dtype=np.float32)
    mean = x.mean(0)  # (D,)
    std = x.std(0) + 1e-6  # (D,) dead ReLU units stay finite
    xt = torch.as_tensor((x - mean) / std, device=device)  # (N, D)
    yt = torch.as_tensor(np.asarray(y, dtype=np.float32), device=device)  # (N, K)
    torch.manual_seed(config.seed)
    layer = torch.nn.Linear(x.shape[1], y.shape[1]).to(device)
    optimizer = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=config.max_iter,
                                  line_search_fn="strong_wolfe")
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn(layer(xt), yt) + config.weight_decay * layer.weight.pow(2).sum() / 2  # scalar
        loss.backward()
        return loss

    optimizer.step(closure)
    return mean, std, layer


def probe(features: np.ndarray, labels: np.ndarray, config: ProbeConfig = ProbeConfig(),
          device: str = "cpu") -> dict:
    """Fit on some clips' seconds, score on the other clips' seconds.

    features (N, T, D) per-second features of N clips; labels (N, T, K) 0/1 truth of the
    same modality. Returns mAP, per-class AP, top-1 accuracy and the sizes involved.
    """
    if features.shape[:2] != labels.shape[:2]:
        raise AvvpError(f"probe: expected features and labels over the same (clips, seconds) but got "
                        f"{features.shape[:2]} and {labels.shape[:2]}")
    n, t, d = features.shape
    fit = clip_split(n, config.train_fraction, config.seed)  # (N,)
    x_fit, y_fit = features[fit].reshape(-1, d), labels[fit].reshape(-1, labels.shape[2])  # (Nf*T, D), (Nf*T, K)
    x_eval, y_eval = features[~fit].reshape(-1, d), labels[~fit].reshape(-1, labels.shape[2])
    mean, std, layer = fit_logistic(x_fit, y_fit, config, device)
    with torch.no_grad():
        scores = layer(torch.as_tensor((x_eval - mean) / std, device=device, dtype=torch.float32)).cpu().numpy()
    mean_ap, per_class = mean_average_precision(scores, y_eval)  # (K,)
    labelled = y_eval.any(1)  # (Ne*T,)
    best = scores.argmax(1)  # (Ne*T,)
    top1 = y_eval[np.arange(len(best)), best][labelled] > 0
    return {
        "map": mean_ap,
        "top1_accuracy": float(top1.mean()) if labelled.any() else float("nan"),
        "per_class_ap": [None if np.isnan(v) else float(v) for v in per_class],
        "classes_scored": int((~np.isnan(per_class)).sum()),
        "fit_clips": int(fit.sum()),
        "score_clips": int((~fit).sum()),
        "score_seconds": int(len(y_eval)),
        "score_labelled_seconds": int(labelled.sum()),
    }
