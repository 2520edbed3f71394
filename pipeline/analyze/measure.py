"""``avvp-pipe analyze``: the seed paper's similarity diagnostics and unimodal probes.

Three sources of per-second features are analysed over the seconds of one split with
dense truth (val or test):

* **stores** (``analyze features``): raw extractor features, visual 2D frames averaged per
  second. Cosine across modalities needs one space: two stores of different widths (or
  of unrelated extractors) have none, so across-modality metrics are either left out with
  a note, or computed after ``align="cca"``: a CCA fitted, without labels, on the
  same-time audio/visual seconds of another split (train by default).
* **a trained run** (``analyze run``): the features entering HAN, i.e. the input
  projections' outputs, and for the visual stream g(v) when MTSC kept its head g.
* **several runs** (``analyze compare``): the paper's Table 2 layout, one row per run
  labelled by its MTSC reading (:func:`reading_label`: raw, part, entire and any non-default
  reading option), columns recall (top-1, audio->visual), distinguish, precision and
  Type@AV from the run's metrics.json (:func:`table2_rows`).

Metric definitions and which seconds are queries and candidates: models/similarity.py.
Probes (``analyze probe``): models/probe.py.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avvp_pipe.core.device import require_device
from avvp_pipe.core.errors import AnnotationError, AvvpError, StoreError
from avvp_pipe.core.io import save_figure
from avvp_pipe.pipeline.llp.annotations import CLASSES, SECONDS, Annotations

ALIGNS = ("none", "cca")
#: Headline metrics shown in tables and bar charts, in the paper's order.
TABLE_METRICS = ("recall_within", "recall_across", "distinguish", "precision")
#: The seed paper's Table 2 columns, and the headline key each reads (Type@AV: metrics.json).
TABLE2_COLUMNS = {"recall": "recall_across", "distinguish": "distinguish", "precision": "precision",
                  "Type@AV": "type_at_av"}
#: How a non-default reading option shows in a row label (TrainConfig field -> text of its value).
_READING_TEXT: dict[str, Callable[[Any], str]] = {
    "mtsc_form": str, "mtsc_temperature": lambda v: f"tau {v:g}", "mtsc_pull": lambda v: f"{v} pull",
    "mtsc_error": lambda v: f"{v} error", "mtsc_simdetach": lambda v: f"simdetach {v}",
    "mtsc_negatives": lambda v: f"{v} negatives", "mtsc_anchor": lambda v: f"anchor {v}",
    "mtsc_decay": lambda v: f"decay {v:g}", "mtsc_weight": lambda v: f"weight {v:g}",
}


# ---------------------------------------------------------------------- seconds of a split


@dataclass
class SplitSeconds:
    """The clips of one split and their per-second truth; row ``c * 10 + t`` is clip c, second t."""

    split: str
    ids: list[str]
    audio_truth: np.ndarray  # (N, 25, 10) uint8
    visual_truth: np.ndarray  # (N, 25, 10) uint8

    def labels(self, modality: str) -> np.ndarray:
        """(N * 10, 25) bool per-second labels of one modality."""
        truth = self.audio_truth if modality == "audio" else self.visual_truth
        return truth.transpose(0, 2, 1).reshape(-1, truth.shape[1]) > 0  # (N, 10, 25) -> (N*10, 25)

    def counts(self) -> dict[str, int]:
        return {"clips": len(self.ids), "seconds": len(self.ids) * SECONDS,
                "audio_labelled": int(self.labels("audio").any(1).sum()),
                "visual_labelled": int(self.labels("visual").any(1).sum())}


def split_seconds(ann: Annotations, split: str) -> SplitSeconds:
    """The split's clips and dense truth; a split without dense truth is an error."""
    dense = ann.dense_splits()
    if split not in dense:
        raise AnnotationError(f"split {split!r}: expected a split with dense per-second truth "
                              f"({', '.join(dense) or 'none in ' + str(ann.root)}) but it has none")
    ids = ann.split_ids(split)
    return SplitSeconds(split, ids, ann.dense(ids, "audio"), ann.dense(ids, "visual"))


def flatten(features: np.ndarray) -> np.ndarray:
    """(N, 10, D) -> (N * 10, D), rows in SplitSeconds order."""
    return features.reshape(-1, features.shape[-1])


# ---------------------------------------------------------------------- feature sources


@dataclass
class FeatureSet:
    """Per-second features of one split from one source, ready for the metrics."""

    name: str  # row label in tables and charts
    audio: np.ndarray  # (N, 10, Da)
    visual: np.ndarray  # (N, 10, Dv)
    space: str  # "raw", "cca" or "run": where the cosine is taken
    source: dict[str, Any] = field(default_factory=dict)  # provenance for the JSON
    note: str | None = None  # shown under the table (e.g. why across metrics are missing)

    @property
    def shared_space(self) -> bool:
        return self.audio.shape[-1] == self.visual.shape[-1]


def open_store(cache: str, dataset: str, name: str, modalities: Sequence[str], option: str, *,
               allow_random_init: bool = False, allow_simulated: bool = False):
    """``find_store`` plus the checks analysis needs: modality and real-or-allowed features."""
    from avvp_pipe.cache.store import check_usable, find_store

    store = find_store(cache, dataset, name)
    if store.modality not in modalities:
        raise StoreError(f"{option} {store.name}: expected a {' or '.join(modalities)} store "
                         f"but it holds {store.modality} features")
    check_usable([store], allow_random_init=allow_random_init, allow_simulated=allow_simulated)
    return store


def _read_split(store, ids: Sequence[str], split: str) -> np.ndarray:
    """(N, 10, D) per-second features of every clip of the split, refusing missing clips."""
    from avvp_pipe.pipeline.train.pairing import check_complete, read_per_second

    check_complete({store.modality: store}, ids, split)
    return read_per_second(store, ids)


def store_features(cache: str, dataset: str, ann: Annotations, seconds: SplitSeconds, audio: str, visual: str,
                   *, align: str = "none", align_split: str = "train", align_clips: int = 2000,
                   allow_random_init: bool = False, allow_simulated: bool = False) -> FeatureSet:
    """Raw features of an audio and a visual store (2D or 3D) for the split's clips."""
    if align not in ALIGNS:
        raise AvvpError(f"--align {align!r}: expected one of {', '.join(ALIGNS)}")
    flags = {"allow_random_init": allow_random_init, "allow_simulated": allow_simulated}
    a_store = open_store(cache, dataset, audio, ("audio",), "--audio", **flags)
    v_store = open_store(cache, dataset, visual, ("visual-2d", "visual-3d"), "--visual", **flags)
    if a_store.attrs.get("clips_digest") != v_store.attrs.get("clips_digest"):
        raise StoreError(f"--audio {a_store.name} and --visual {v_store.name} were built for different clip lists")
    a = _read_split(a_store, seconds.ids, seconds.split)  # (N, 10, Da)
    v = _read_split(v_store, seconds.ids, seconds.split)  # (N, 10, Dv)
    source = {"audio": a_store.name, "visual": v_store.name, "audio_kind": a_store.kind, "visual_kind": v_store.kind}
    name = f"{a_store.extractor}+{v_store.extractor}"
    if align == "cca":
        fit_ids = _align_ids(ann, align_split, align_clips, seconds.split)
        cca = fit_cca(flatten(_read_split(a_store, fit_ids, align_split)),
                      flatten(_read_split(v_store, fit_ids, align_split)))
        source["cca"] = {"split": align_split, "clips": len(fit_ids), "dims": int(cca.dims),
                         "top_correlations": [round(float(c), 4) for c in cca.correlations[:5]]}
        return FeatureSet(f"{name} (cca)", cca.audio(a), cca.visual(v), "cca", source)
    note = None
    if a.shape[-1] != v.shape[-1]:
        note = (f"across-modality metrics left out: {a_store.name} has {a.shape[-1]} dims and {v_store.name} "
                f"{v.shape[-1]}, so there is no common space for a cosine; use --align cca or a trained run")
    elif a_store.extractor != v_store.extractor:
        note = ("across-modality cosine taken in the raw spaces of two extractors: meaningful only if they "
                "were trained into one embedding space")
    return FeatureSet(name, a, v, "raw", source, note)


def _align_ids(ann: Annotations, split: str, limit: int, analysed: str) -> list[str]:
    """Up to ``limit`` clips of the alignment split (seeded sample), never the analysed split."""
    if split == analysed:
        raise AvvpError(f"--align-split {split}: expected a split other than the analysed one ({analysed}), "
                        "so the alignment is not fitted on the seconds it is judged on")
    ids = ann.split_ids(split)
    if len(ids) < 2:
        raise AvvpError(f"--align-split {split}: expected clips to fit the alignment on but found {len(ids)}")
    if len(ids) > limit:
        pick = np.sort(np.random.default_rng(0).choice(len(ids), size=limit, replace=False))
        ids = [ids[i] for i in pick]
    return ids


@dataclass
class CCA:
    """A fitted CCA: centred features times ``w_*`` give canonical variates, weighted by correlation."""

    mean_a: np.ndarray  # (Da,)
    mean_v: np.ndarray  # (Dv,)
    w_a: np.ndarray  # (Da, k)
    w_v: np.ndarray  # (Dv, k)
    correlations: np.ndarray  # (k,) descending

    @property
    def dims(self) -> int:
        return len(self.correlations)

    def audio(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean_a) @ self.w_a).astype(np.float32)  # (..., k)

    def visual(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean_v) @ self.w_v).astype(np.float32)  # (..., k)


def fit_cca(a: np.ndarray, v: np.ndarray, dims: int = 64, ridge: float = 1e-3) -> CCA:
    """Regularised CCA of paired seconds a (S, Da) and v (S, Dv); uses no labels.

    Each canonical direction is scaled by its correlation, so weakly shared directions
    (mostly noise) count little in the cosine and ``dims`` is not a sensitive choice.
    ``ridge`` (relative to the mean variance) keeps the whitening finite for dead units.
    """
    a64, v64 = a.astype(np.float64), v.astype(np.float64)
    mean_a, mean_v = a64.mean(0), v64.mean(0)
    a64, v64 = a64 - mean_a, v64 - mean_v
    n = len(a64)
    c_aa, c_vv, c_av = a64.T @ a64 / n, v64.T @ v64 / n, a64.T @ v64 / n  # (Da, Da), (Dv, Dv), (Da, Dv)
    wa, wv = _inv_sqrt(c_aa, ridge), _inv_sqrt(c_vv, ridge)
    u, s, vt = np.linalg.svd(wa @ c_av @ wv, full_matrices=False)  # whitened cross-covariance
    k = min(dims, len(s))
    return CCA(mean_a, mean_v, wa @ u[:, :k] * s[:k], wv @ vt[:k].T * s[:k], s[:k])


def _inv_sqrt(cov: np.ndarray, ridge: float) -> np.ndarray:
    vals, vecs = np.linalg.eigh(cov + ridge * np.trace(cov) / len(cov) * np.eye(len(cov)))
    return (vecs / np.sqrt(np.maximum(vals, 1e-12))) @ vecs.T


def run_features(run_dir: str, seconds: SplitSeconds, *, device: str | None = None, batch: int = 256,
                 allow_random_init: bool = False, allow_simulated: bool = False) -> FeatureSet:
    """The features entering HAN of a trained run: fc_a(audio) and fc_v/fusion(visual), then g if kept."""
    import torch

    from avvp_pipe.pipeline.train.run import load_run

    model, _head, config = load_run(run_dir)
    dev = torch.device(require_device(device))
    model = model.to(dev).eval()
    stores = config.get("stores", {})
    flags = {"allow_random_init": allow_random_init, "allow_simulated": allow_simulated}
    roles = {"audio": ("audio",), "visual": ("visual-2d",), "visual_3d": ("visual-3d",)}
    arrays = {}
    for role, name in stores.items():
        if role not in roles or not name:
            continue
        store = open_store(config["cache"], config["dataset"], name, roles[role], f"run {run_dir} store {role}",
                           **flags)
        arrays[role] = _read_split(store, seconds.ids, seconds.split)  # (N, 10, D)
    a_out, v_out = [], []
    with torch.no_grad():
        for start in range(0, len(seconds.ids), batch):
            part = {r: torch.as_tensor(x[start:start + batch], device=dev) for r, x in arrays.items()}
            a, v = model.project(part["audio"], part["visual"], part.get("visual_3d"))  # (B, 10, d) each
            if model.visual_head is not None:
                v = model.visual_head(v)  # (B, 10, d): g(v) is what enters HAN
            a_out.append(a.float().cpu().numpy())
            v_out.append(v.float().cpu().numpy())
    train = config.get("train", {})
    mtsc = train.get("mtsc", "off")
    source = {"run": str(run_dir), "stores": stores, "mtsc": mtsc, "reading": reading_label(train),
              "visual_head": model.visual_head is not None, "pairing": config.get("pairing")}
    return FeatureSet(f"{Path(run_dir).name} (mtsc {mtsc})", np.concatenate(a_out), np.concatenate(v_out),
                      "run", source)


def reading_label(train: Mapping[str, Any]) -> str:
    """A run's MTSC reading as Table 2 names its columns: "raw" without MTSC, else "part" or
    "entire", followed by every reading option away from its default, e.g.
    "entire (infonce, tau 0.5, batch negatives)". A config saved before an option existed
    ran at its default, so a missing field reads as the default."""
    from avvp_pipe.pipeline.train.config import TrainConfig

    mtsc = train.get("mtsc", "off")
    if mtsc == "off":
        return "raw"
    changed = [text(train[f]) for f, text in _READING_TEXT.items()
               if f in train and train[f] != getattr(TrainConfig, f)]
    return f"{mtsc} ({', '.join(changed)})" if changed else mtsc


def table2_rows(rows: Sequence[dict]) -> list[dict]:
    """The paper's Table 2, one row per run: its reading, recall, distinguish, precision, Type@AV.

    Type@AV is a fraction, as the paper prints it (evaluate's JSON has percentages); two runs
    with the same reading get their folder names added, so each row says which run it is.
    """
    labels = [r["source"].get("reading") or r["name"] for r in rows]
    out = []
    for row, label in zip(rows, labels):
        if labels.count(label) > 1:
            label = f"{label} [{Path(row['source']['run']).name}]"
        percent = row.get("type_at_av")
        values = {**row["headline"], "type_at_av": None if percent is None else percent / 100}
        out.append({"reading": label, "run": row["source"].get("run"), "type_at_av_split": row.get("type_at_av_split"),
                    **{column: values.get(key) for column, key in TABLE2_COLUMNS.items()}})
    return out


def format_table2(rows: Sequence[dict]) -> str:
    """:func:`table2_rows` as text; a note when the runs' Type@AV come from different splits."""
    from avvp_pipe.core.fmt import table

    body = table(["MTSC reading", *TABLE2_COLUMNS], [[r["reading"], *(_fmt(r[c]) for c in TABLE2_COLUMNS)]
                                                     for r in rows])
    splits = sorted({str(r["type_at_av_split"]) for r in rows if r["Type@AV"] is not None})
    note = [f"note: Type@AV (segment level) from different eval splits: {', '.join(splits)}"] if len(splits) > 1 else []
    return "\n".join([body, *note])


def run_type_at_av(run_dir: str) -> tuple[float | None, str | None]:
    """(segment Type@AV, its split) from a run's metrics.json, or (None, None) if not evaluated."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return None, None
    metrics = json.loads(path.read_text(encoding="utf-8"))
    evaluation = metrics.get("eval") or {}
    value = (evaluation.get("segment") or {}).get("type_at_av")
    return (float(value) if value is not None else None), metrics.get("eval_split", evaluation.get("split"))


# ---------------------------------------------------------------------- metrics


def analyze_runs(run_dirs: Sequence[str], annotations: str | None, split: str, *, match: str = "any",
                 block: int | None = None, device: str | None = None, allow_simulated: bool = False,
                 allow_random_init: bool = False, progress: bool = True
                 ) -> tuple[Annotations, SplitSeconds, list[dict], list[FeatureSet]]:
    """Each run's features before HAN, analysed on ``split``, with its Type@AV from metrics.json.

    ``annotations`` defaults to the folder recorded in the first run's config.json.
    """
    from avvp_pipe.core.io import read_json
    from avvp_pipe.pipeline.llp.annotations import load_annotations

    if annotations is None:
        config_path = Path(run_dirs[0]) / "config.json"
        if not config_path.is_file():
            raise AvvpError(f"{run_dirs[0]}: expected a run folder with config.json (from avvp-pipe train)")
        annotations = read_json(config_path).get("annotations")
    ann = load_annotations(annotations)
    seconds = split_seconds(ann, split)
    rows, fsets = [], []
    for run_dir in run_dirs:
        fs = run_features(run_dir, seconds, device=device, allow_simulated=allow_simulated,
                          allow_random_init=allow_random_init)
        row = analyze_set(fs, seconds, match=match, block=block, device=device, progress=progress)
        row["type_at_av"], row["type_at_av_split"] = run_type_at_av(run_dir)
        rows.append(row)
        fsets.append(fs)
    return ann, seconds, rows, fsets


def analyze_set(fs: FeatureSet, seconds: SplitSeconds, *, match: str = "any", block: int | None = None,
                device: str | None = None, progress: bool = True) -> dict:
    """All retrieval passes the feature set allows, plus the paper's headline numbers."""
    from avvp_pipe.models.similarity import headline, modality_metrics
    from avvp_pipe.core.progress import Progress

    device = require_device(device)  # "auto" resolved once; the row says which device ran
    directions = ("audio->audio", "visual->visual")
    if fs.shared_space:
        directions += ("audio->visual", "visual->audio")
    bars: list[Progress] = []

    def factory(name: str, total: int) -> Callable[[int], None]:
        if bars:
            bars[-1].close()  # one bar at a time: the previous pass is finished
        bars.append(Progress(total, f"similarity {fs.name} {name}", unit="seconds", enabled=progress))
        return bars[-1].update

    try:
        passes = modality_metrics(flatten(fs.audio), flatten(fs.visual), seconds.labels("audio"),
                                  seconds.labels("visual"), directions=directions, match=match, block=block,
                                  device=device, progress_factory=factory)
    finally:
        for bar in bars:
            bar.close()
    return {"name": fs.name, "space": fs.space, "source": fs.source, "note": fs.note,
            "dims": {"audio": int(fs.audio.shape[-1]), "visual": int(fs.visual.shape[-1])},
            "headline": headline(passes), "passes": passes, "device": device}


def pick_clip(seconds: SplitSeconds, clip: str | None, ann: Annotations) -> int:
    """Row of the clip to draw: the one asked for, else the first labelled in both modalities."""
    if clip is not None:
        cid = ann.resolve(clip)
        if cid not in seconds.ids:
            raise AvvpError(f"--clip {clip}: expected a clip of the {seconds.split} split but it is in "
                            f"{ann.clips[cid].split}")
        return seconds.ids.index(cid)
    audio = seconds.audio_truth.any(axis=(1, 2))  # (N,)
    visual = seconds.visual_truth.any(axis=(1, 2))  # (N,)
    for mask in (audio & visual, audio | visual):
        if mask.any():
            return int(np.flatnonzero(mask)[0])
    raise AvvpError(f"split {seconds.split}: no clip has a labelled second to draw")


def second_labels(truth: np.ndarray) -> list[list[str]]:
    """(25, 10) truth -> per second, the class names active then."""
    return [[CLASSES[k] for k in np.flatnonzero(truth[:, t])] for t in range(truth.shape[1])]


def clip_similarity(fs: FeatureSet, seconds: SplitSeconds, row: int) -> dict:
    """The clip's 10 x 10 cosine similarity, audio seconds (rows) against visual seconds (columns)."""
    if not fs.shared_space:
        raise AvvpError(f"{fs.name}: no common audio/visual space for a cross-modal heatmap ({fs.note})")
    a = fs.audio[row] / np.maximum(np.linalg.norm(fs.audio[row], axis=1, keepdims=True), 1e-12)  # (10, D)
    v = fs.visual[row] / np.maximum(np.linalg.norm(fs.visual[row], axis=1, keepdims=True), 1e-12)  # (10, D)
    return {"clip": seconds.ids[row], "features": fs.name, "similarity": (a @ v.T).round(4).tolist(),
            "audio_labels": second_labels(seconds.audio_truth[row]),
            "visual_labels": second_labels(seconds.visual_truth[row])}


# ---------------------------------------------------------------------- probes


def probe_stores(cache: str, dataset: str, names: Sequence[str] | None, seconds: SplitSeconds, *,
                 config=None, device: str | None = "auto", allow_random_init: bool = False,
                 allow_simulated: bool = False, progress: bool = True) -> list[dict]:
    """One linear probe per store against its own modality's truth; ``names=None``: every store."""
    from avvp_pipe.cache.store import list_stores
    from avvp_pipe.models.probe import ProbeConfig, probe
    from avvp_pipe.core.progress import Progress

    flags = {"allow_random_init": allow_random_init, "allow_simulated": allow_simulated}
    device = require_device(device)
    modalities = ("audio", "visual-2d", "visual-3d")
    if names is None:
        names = [s.name for s in list_stores(cache) if s.dataset == dataset]
    if not names:
        raise StoreError(f"--stores: expected at least one store of dataset {dataset!r} under {cache} but got none")
    rows = []
    with Progress(len(names), "probe", unit="stores", enabled=progress) as bar:
        for name in names:
            store = open_store(cache, dataset, name, modalities, "--stores", **flags)
            feats = _read_split(store, seconds.ids, seconds.split)  # (N, 10, D)
            modality = "audio" if store.modality == "audio" else "visual"
            truth = (seconds.audio_truth if modality == "audio" else seconds.visual_truth).transpose(0, 2, 1)
            score = probe(feats, truth, config or ProbeConfig(), device)  # truth (N, 10, 25)
            rows.append({"name": store.name, "extractor": store.extractor, "modality": store.modality,
                         "truth": modality, "kind": store.kind, "dims": int(store.shape[1]), "device": device,
                         **score})
            bar.update(1)
    return rows


# ---------------------------------------------------------------------- output


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_similarity_table(rows: Sequence[dict]) -> str:
    """One line per feature set: within/across recall-top1, distinguish, precision (+ Type@AV)."""
    from avvp_pipe.core.fmt import table

    extra = any("type_at_av" in r for r in rows)
    headers = ["features", "recall within (a / v)", "recall a->v", "recall v->a", "distinguish", "precision"]
    headers += ["Type@AV"] if extra else []
    lines = []
    for r in rows:
        h = r["headline"]
        cells = [r["name"], f"{_fmt(h['recall_within'])} ({_fmt(h['recall_within_audio'])} / "
                 f"{_fmt(h['recall_within_visual'])})", _fmt(h["recall_across"]),
                 _fmt(h["recall_across_visual_audio"]), _fmt(h["distinguish"]), _fmt(h["precision"])]
        lines.append(cells + ([_fmt(r.get("type_at_av"))] if extra else []))
    notes = [f"note ({r['name']}): {r['note']}" for r in rows if r.get("note")]
    return "\n".join([table(headers, lines), *notes])


def format_probe_table(rows: Sequence[dict]) -> str:
    from avvp_pipe.core.fmt import table

    return table(["store", "modality", "kind", "dims", "mAP", "top-1 acc", "classes", "scored seconds"],
                 [[r["name"], r["modality"], r["kind"], r["dims"], _fmt(r["map"]), _fmt(r["top1_accuracy"]),
                   r["classes_scored"], r["score_seconds"]] for r in rows])


def _second_ticks(labels: list[list[str]]) -> list[str]:
    return [f"{t}: {'+'.join(names) if names else 'background'}" for t, names in enumerate(labels)]


def plot_heatmap(path: str | os.PathLike, clip: dict) -> Path:
    """The paper's Figure 1: one clip's audio x visual cosine similarity with per-second labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sim = np.asarray(clip["similarity"])  # (10, 10)
    fig, ax = plt.subplots(figsize=(8.5, 7))
    image = ax.imshow(sim, cmap="viridis", vmin=min(-0.0, sim.min()), vmax=max(1e-6, sim.max()))
    for i in range(sim.shape[0]):
        for j in range(sim.shape[1]):
            bright = image.norm(sim[i, j]) > 0.6  # dark text on the light end of viridis
            ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=6,
                    color="black" if bright else "white")
    ax.set_yticks(range(sim.shape[0]), _second_ticks(clip["audio_labels"]), fontsize=7)
    ax.set_xticks(range(sim.shape[1]), _second_ticks(clip["visual_labels"]), fontsize=7, rotation=60, ha="right")
    ax.set_ylabel("audio second")
    ax.set_xlabel("visual second")
    ax.set_title(f"clip {clip['clip']}: cosine similarity, {clip['features']}", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    try:
        return save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)


def plot_bars(path: str | os.PathLike, names: Sequence[str], values: dict[str, Sequence[float | None]],
              title: str) -> Path:
    """Grouped bars: one group per metric, one bar per store/run (missing values left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(values)
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(metrics) + 0.4 * len(names)), 4.5))
    for i, name in enumerate(names):
        ys = [values[m][i] for m in metrics]
        xs = [k + i * width for k, y in enumerate(ys) if y is not None and not math.isnan(y)]
        ax.bar(xs, [y for y in ys if y is not None and not math.isnan(y)], width, label=name)
    ax.set_xticks([k + width * (len(names) - 1) / 2 for k in range(len(metrics))], metrics)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    try:
        return save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)


def similarity_bars(path: str | os.PathLike, rows: Sequence[dict]) -> Path:
    """Headline metrics per row; Type@AV (a percentage in evaluate's JSON) is drawn divided by 100."""
    values = {m: [r["headline"].get(m) for r in rows] for m in TABLE_METRICS}
    if any(r.get("type_at_av") is not None for r in rows):
        values["Type@AV / 100"] = [None if r.get("type_at_av") is None else r["type_at_av"] / 100 for r in rows]
    return plot_bars(path, [r["name"] for r in rows], values, "similarity vs. semantics (seed paper Tables 1-2)")


def probe_bars(path: str | os.PathLike, rows: Sequence[dict]) -> Path:
    values = {"mAP": [r["map"] for r in rows], "top-1 accuracy": [r["top1_accuracy"] for r in rows]}
    return plot_bars(path, [r["name"] for r in rows], values, "linear probe per store (own modality)")


def write_outputs(result: dict, *, out_dir: str | None = None, json_path: str | None = None,
                  figures: Callable[[Path], dict[str, Path]] | None = None,
                  json_name: str = "analysis.json") -> dict[str, str]:
    """Write figures (into ``out_dir``) and the JSON (``json_path`` and/or ``out_dir/json_name``)."""
    from avvp_pipe.core.io import atomic_write_json

    files: dict[str, str] = {}
    if out_dir is not None and figures is not None:
        files.update({k: str(p) for k, p in figures(Path(out_dir)).items()})
    targets = [Path(json_path)] if json_path else []
    if out_dir is not None:
        targets.append(Path(out_dir) / json_name)
    for target in targets:
        files.setdefault("json", str(target))
    result["files"] = files
    for target in targets:
        atomic_write_json(target, _clean(result))
    return files


def _clean(value: Any) -> Any:
    """NaN is not JSON: write null instead."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value
