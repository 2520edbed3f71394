"""Training-free scores of a pairing: H-score, TransRate, leave-one-out k-NN and held-out CCA.

The transferability literature scores one model's features against a task (LogME, H-score,
TransRate, k-NN probes). A pairing is two feature spaces, so each score here sees them
through one fixed feature map per stream (:class:`PanelFeatures`):

- each stream's clip features (the 10 seconds averaged; 2D frames are per-second means
  already) are centred and projected on their top ``dims`` principal components, fitted
  on the scored split's clips without labels. Why: a 2048-wide stream would otherwise
  outweigh a 128-wide one by width alone, and every score then costs a (dims x dims)
  problem instead of a 4096-wide one, so a bootstrap can recompute it hundreds of times;
- each projected stream is scaled to unit total variance before the streams are joined,
  so both modalities weigh the same in the joint space.

The label-based scores (hscore, transrate, knn) read the joint clip features against the
25 multi-hot clip labels; a multi-label task is scored as 25 binary tasks and averaged,
the natural reading of each single-label formula. ``cca`` is our own and uses no labels:
the seed paper argues a pairing fuses well when its modalities understand each other, so
it measures how well time-aligned audio and visual seconds can be linearly predicted from
each other *on clips it was not fitted on* (canonical correlation fitted on half the clips,
measured on the other half). Why CCA and not CKA: CKA is an in-sample similarity of two
Gram matrices, dominated by the top principal components and silent on whether the shared
structure generalises; held-out canonical correlations reward exactly the linearly shared,
reproducible part that cross-modal attention and MTSC can exploit.

Every score takes ``rows`` (row indices into the split, repeats allowed) so the bootstrap
recomputes it on a resample of clips with the feature map held fixed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from avvp_pipe.core.errors import AvvpError
from avvp_pipe.pipeline.train.pairing import SplitArrays

#: Defaults of the panel (each is part of a result's key).
DIMS = 128  # principal components kept per stream
KNN_K = 10  # neighbours of the k-NN score
CCA_COMPONENTS = 16  # canonical pairs averaged by the cca score
CCA_RIDGE = 1e-3  # relative ridge of the CCA covariances (as a fraction of their mean eigenvalue)
TRANSRATE_EPS2 = 1.0  # epsilon^2 of TransRate's coding rate (features have unit total variance)
SPLIT_SEED = 0  # the seeded halves of cca


@dataclass
class PanelFeatures:
    """A pairing's streams after the fixed feature map: per-second (N, 10, r_b) and labels (N, 25)."""

    seconds: list[np.ndarray]  # one per stream: audio, visual[, visual_3d]
    labels: np.ndarray  # (N, 25)

    @property
    def clips(self) -> list[np.ndarray]:
        """Each stream's clip features (N, r_b): the mean over the 10 seconds."""
        return [s.mean(axis=1) for s in self.seconds]


def _basis(clips: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), basis (D, r)): the top-r principal directions of (N, D) clip features."""
    x = np.asarray(clips, dtype=np.float64)
    mean = x.mean(axis=0)
    xc = x - mean  # (N, D)
    r = max(1, min(dims, xc.shape[0] - 1, xc.shape[1]))
    if xc.shape[1] <= xc.shape[0]:
        values, vectors = np.linalg.eigh(xc.T @ xc)  # (D,), (D, D) ascending
        return mean, vectors[:, ::-1][:, :r]
    values, u = np.linalg.eigh(xc @ xc.T)  # (N,), (N, N): the Gram side is smaller when D > N
    values, u = values[::-1][:r], u[:, ::-1][:, :r]
    return mean, xc.T @ u / np.sqrt(np.maximum(values, 1e-300))  # (D, r) orthonormal right vectors


def panel_features(arrays: SplitArrays, dims: int = DIMS) -> PanelFeatures:
    """Project every stream of a pairing on its top ``dims`` clip-level principal components."""
    streams = [arrays.audio, arrays.visual] + ([arrays.visual_3d] if arrays.visual_3d is not None else [])
    seconds = []
    for stream in streams:  # (N, 10, D)
        mean, basis = _basis(stream.mean(axis=1), dims)
        seconds.append((np.asarray(stream, dtype=np.float64) - mean) @ basis)  # (N, 10, r)
    return PanelFeatures(seconds, np.asarray(arrays.labels, dtype=np.float64))


def balanced(blocks: Sequence[np.ndarray]) -> np.ndarray:
    """Centre each (n, r_b) block, scale it to unit total variance, join them: (n, sum r_b)."""
    out = []
    for block in blocks:
        centred = block - block.mean(axis=0)
        total = float((centred**2).sum()) / max(len(block), 1)
        out.append(centred / math.sqrt(total) if total > 0 else centred)
    return np.concatenate(out, axis=1)


def _binary_tasks(labels: np.ndarray) -> list[int]:
    """Label columns with both values present (a constant column scores nothing)."""
    positives = labels.sum(axis=0)
    return [c for c in range(labels.shape[1]) if 0 < positives[c] < len(labels)]


def _need_tasks(labels: np.ndarray, score: str) -> list[int]:
    tasks = _binary_tasks(labels)
    if not tasks:
        raise AvvpError(f"{score}: expected a label that some clips have and others lack but got none")
    return tasks


# ---------------------------------------------------------------------- H-score


def ledoit_wolf(xc: np.ndarray) -> float:
    """Ledoit and Wolf's (2004) shrinkage intensity of centred (n, d) samples towards mu I."""
    n, d = xc.shape
    gram = xc @ xc.T  # (n, n): every term below is a Gram quantity, cheap when d > n
    frob = float((gram**2).sum()) / n**2  # ||S||_F^2
    mu = float(np.trace(gram)) / (n * d)
    delta = (frob - d * mu**2) / d  # ||S - mu I||_F^2 / d
    beta = (float((np.diag(gram) ** 2).sum()) - float((gram**2).sum()) / n) / (n**2 * d)
    return 0.0 if delta <= 0 else min(beta, delta) / delta


def hscore(features: np.ndarray, labels: np.ndarray, shrinkage: float | None = None) -> float:
    """H-score (Bao et al., ICIP 2019) with Ledoit-Wolf shrinkage (Ibrahim et al., ICLR 2023).

    H = tr(S_a^-1 (1 - a) cov(E[f | y])), S_a = (1 - a) cov(f) + a mu I, mu = tr(cov f) / d,
    for each binary label column, averaged. ``shrinkage`` None estimates a by Ledoit-Wolf;
    0 gives Bao's original (with a pseudo-inverse where cov(f) is singular).
    """
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    xc = f - f.mean(axis=0)
    a = ledoit_wolf(xc) if shrinkage is None else float(shrinkage)
    values, vectors = np.linalg.eigh(xc.T @ xc / n)  # cov(f) = V diag(values) V^T
    mu = float(values.sum()) / d
    denom = (1 - a) * values + a * mu  # eigenvalues of S_a
    keep = denom > max(float(denom.max()), 1e-300) * 1e-10  # pseudo-inverse when a = 0
    scores = []
    for c in _need_tasks(labels, "hscore"):
        y = labels[:, c] > 0.5
        p = float(y.mean())
        diff = f[y].mean(axis=0) - f[~y].mean(axis=0)  # (d,): cov(E[f|y]) = p(1-p) diff diff^T
        proj = vectors[:, keep].T @ diff
        scores.append((1 - a) * p * (1 - p) * float((proj**2 / denom[keep]).sum()))
    return float(np.mean(scores))


# ---------------------------------------------------------------------- TransRate


def coding_rate(z: np.ndarray, eps2: float) -> float:
    """R(Z, eps) = 1/2 logdet(I_d + d / (n eps^2) Z^T Z) (Huang et al., ICML 2022, Eq. 2)."""
    n, d = z.shape
    small = z @ z.T if n < d else z.T @ z  # Sylvester: the same nonzero eigenvalues
    values = np.clip(np.linalg.eigvalsh(small), 0.0, None)
    return 0.5 * float(np.log1p(d / (n * eps2) * values).sum())


def transrate(features: np.ndarray, labels: np.ndarray, eps2: float = TRANSRATE_EPS2) -> float:
    """TransRate = R(Z) - R(Z | Y) on centred features, R(Z|Y) = sum_v n_v / n R(Z_v), averaged over labels."""
    z = np.asarray(features, dtype=np.float64)
    z = z - z.mean(axis=0)
    whole = coding_rate(z, eps2)
    scores = []
    for c in _need_tasks(labels, "transrate"):
        y = labels[:, c] > 0.5
        within = sum(part.sum() / len(z) * coding_rate(z[part], eps2) for part in (y, ~y))
        scores.append(whole - within)
    return float(np.mean(scores))


# ---------------------------------------------------------------------- k-NN


def knn(features: np.ndarray, labels: np.ndarray, k: int = KNN_K, groups: np.ndarray | None = None) -> float:
    """Leave-one-out k-NN: each clip's labels predicted by a majority of its k nearest other clips.

    Cosine similarity; a label is predicted when at least half the neighbours carry it; the
    score is the mean over clips of the F1 between predicted and true label sets (1 when both
    are empty, as the official per-clip F1). ``groups`` marks rows that are copies of one clip
    (a bootstrap resample): a clip is never its own neighbour.
    """
    x = np.asarray(features, dtype=np.float64)
    n = len(x)
    groups = np.arange(n) if groups is None else np.asarray(groups)
    if not 1 <= k < len(np.unique(groups)):
        raise AvvpError(f"knn: expected 1 <= k < number of clips ({len(np.unique(groups))}) but got k={k}")
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = unit @ unit.T  # (n, n)
    sim[groups[:, None] == groups[None, :]] = -np.inf
    nearest = np.argsort(-sim, axis=1, kind="stable")[:, :k]  # (n, k)
    votes = labels[nearest].mean(axis=1)  # (n, 25)
    return float(np.mean(set_f1(votes >= 0.5, labels > 0.5)))


def set_f1(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-row F1 of two (n, C) boolean label sets; 1 where both are empty."""
    tp = (pred & truth).sum(axis=1)
    denom = pred.sum(axis=1) + truth.sum(axis=1)
    return np.divide(2 * tp, denom, out=np.ones(len(pred), dtype=np.float64), where=denom > 0)


# ---------------------------------------------------------------------- held-out CCA


def _inv_sqrt(cov: np.ndarray, ridge: float) -> np.ndarray:
    """(C + ridge * mean eigenvalue * I)^(-1/2), symmetric."""
    values, vectors = np.linalg.eigh(cov)
    values = np.clip(values, 0.0, None) + ridge * max(float(values.mean()), 1e-300)
    return (vectors / np.sqrt(values)) @ vectors.T


def cca_fit(x: np.ndarray, y: np.ndarray, components: int, ridge: float) -> tuple[np.ndarray, ...]:
    """(mean_x, mean_y, Wx (dx, c), Wy (dy, c), in-sample correlations (c,)) of ridge CCA."""
    mx, my = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - mx, y - my
    m = len(x)
    wx, wy = _inv_sqrt(xc.T @ xc / m, ridge), _inv_sqrt(yc.T @ yc / m, ridge)
    u, s, vt = np.linalg.svd(wx @ (xc.T @ yc / m) @ wy)  # whitened cross-covariance
    c = min(components, len(s))
    return mx, my, wx @ u[:, :c], wy @ vt[:c].T, s[:c]


def correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of matching columns of (m, c) arrays."""
    a, b = a - a.mean(axis=0), b - b.mean(axis=0)
    norm = np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0)
    return np.divide((a * b).sum(axis=0), norm, out=np.zeros(a.shape[1]), where=norm > 0)


def cca(audio: np.ndarray, visual: np.ndarray, fit: np.ndarray, measure: np.ndarray,
        components: int = CCA_COMPONENTS, ridge: float = CCA_RIDGE) -> float:
    """Mean held-out canonical correlation of time-aligned audio and visual seconds.

    audio (N, 10, da), visual (N, 10, dv); CCA is fitted on the seconds of clips ``fit`` and
    its top ``components`` canonical pairs are correlated on the seconds of clips ``measure``.
    """
    if len(fit) < 2 or len(measure) < 2:
        raise AvvpError(f"cca: expected at least 2 clips to fit and 2 to measure on but got {len(fit)} and "
                        f"{len(measure)}")
    x_fit, y_fit = audio[fit].reshape(-1, audio.shape[-1]), visual[fit].reshape(-1, visual.shape[-1])
    mx, my, wx, wy, _ = cca_fit(x_fit, y_fit, components, ridge)
    x, y = audio[measure].reshape(-1, audio.shape[-1]), visual[measure].reshape(-1, visual.shape[-1])
    return float(correlations((x - mx) @ wx, (y - my) @ wy).mean())


def halves(n: int, seed: int = SPLIT_SEED) -> np.ndarray:
    """(n,) bool: True for the clips CCA is fitted on (a seeded half), False for those it is measured on."""
    out = np.zeros(n, dtype=bool)
    out[np.random.default_rng(seed).permutation(n)[: n // 2]] = True
    return out


# ---------------------------------------------------------------------- a pairing, one resample


def score_rows(method: str, data: PanelFeatures, rows: np.ndarray, fit_half: np.ndarray) -> float:
    """``method`` of a pairing on the clips ``rows`` (repeats allowed: a bootstrap resample)."""
    labels = data.labels[rows]
    if method == "cca":
        visual = np.concatenate(data.seconds[1:], axis=-1) if len(data.seconds) > 2 else data.seconds[1]
        in_fit = fit_half[rows]  # a resampled clip stays in its half: never fitted and measured on
        return cca(data.seconds[0][rows], visual[rows], np.flatnonzero(in_fit), np.flatnonzero(~in_fit))
    joint = balanced([c[rows] for c in data.clips])
    if method == "hscore":
        return hscore(joint, labels)
    if method == "transrate":
        return transrate(joint, labels)
    if method == "knn":
        return knn(joint, labels, groups=rows)
    raise AvvpError(f"panel: expected one of hscore, transrate, knn, cca but got {method!r}")


PANEL = ("hscore", "transrate", "knn", "cca")
