"""The training-free scores of every pairing, and the bootstrap samples of every score.

Each (pairing, method) is a resumable result like a trained run (:mod:`avvp_pipe.selection.results`),
keyed by the stores, the method's settings and the labels; its bootstrap samples are a
result of their own (keyed by the resamples too), so a plain run's keys never change.
A pairing's features are read once for all its missing methods.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from avvp_pipe.core.errors import AvvpError
from avvp_pipe.pipeline.llp.annotations import Annotations
from avvp_pipe.selection import logme as logme_mod
from avvp_pipe.selection import panel
from avvp_pipe.selection.bootstrap import free_samples, recentred, trained_samples
from avvp_pipe.selection.candidates import Candidates, Pairing, load
from avvp_pipe.selection.clip_scores import clip_scores
from avvp_pipe.selection.results import (SUBDIR, labels_digest, load_result, load_run_predictions, result_key,
                                       result_path, save_result)

log = logging.getLogger(__name__)

Notify = Callable[[str], None]

_PANEL_FEATURES = f"per stream the top {panel.DIMS} clip-level PCs, unit total variance, joined"
#: method -> what its result depends on besides stores and labels (LogME's is the key of earlier versions)
SETTINGS: dict[str, dict] = {
    "logme": {"features": "time-mean audio ++ visual [++ visual_3d]", "targets": "weak labels"},
    "hscore": {"features": _PANEL_FEATURES, "targets": "weak labels, one binary task each",
               "shrinkage": "ledoit-wolf"},
    "transrate": {"features": _PANEL_FEATURES, "targets": "weak labels, one binary task each",
                  "eps2": panel.TRANSRATE_EPS2},
    "knn": {"features": _PANEL_FEATURES, "targets": "weak labels", "k": panel.KNN_K, "metric": "cosine",
            "score": "mean per-clip F1 of the majority vote"},
    "cca": {"features": f"per-second, per stream the top {panel.DIMS} clip-level PCs", "targets": None,
            "components": panel.CCA_COMPONENTS, "ridge": panel.CCA_RIDGE, "halves_seed": panel.SPLIT_SEED},
}


class _Pairing:
    """A pairing's split features and panel feature map, read and computed on first use."""

    def __init__(self, cands: Candidates, annotations: Annotations, pairing: Pairing, split: str) -> None:
        self.cands, self.annotations, self.pairing, self.split = cands, annotations, pairing, split
        self._arrays = self._panel = None
        self.panel_seconds = 0.0

    @property
    def arrays(self):
        if self._arrays is None:
            self._arrays = load(self.cands, self.annotations, self.pairing.audio, self.pairing.visual,
                                [self.split]).splits[self.split]
        return self._arrays

    @property
    def panel(self) -> panel.PanelFeatures:
        if self._panel is None:
            began = time.perf_counter()
            self._panel = panel.panel_features(self.arrays)
            self.panel_seconds = time.perf_counter() - began  # charged to every panel method: its cost alone
        return self._panel

    def scorer(self, method: str) -> Callable[[np.ndarray], float]:
        """The method's score on resampled rows of this pairing's split."""
        if method == "logme":
            features, labels = logme_mod.pairing_features(self.arrays), self.arrays.labels
            return lambda rows: logme_mod.logme(features[rows], labels[rows])[0]
        data, half = self.panel, panel.halves(len(self.arrays))
        return lambda rows: panel.score_rows(method, data, rows, half)

    def point(self, method: str) -> float:
        """The method on the whole split (LogME through logme_pairing, as earlier versions)."""
        if method == "logme":
            return logme_mod.logme_pairing(self.arrays)
        return self.scorer(method)(np.arange(len(self.arrays)))


def _saved(path, overwrite: bool) -> dict | None:
    return None if overwrite else load_result(path)


def run_free(cands: Candidates, annotations: Annotations, pairings: Sequence[Pairing], out: str,
             methods: Sequence[str], *, split: str = "test", overwrite: bool = False, rows: np.ndarray | None = None,
             bootstrap_seed: int = 0, notify: Notify = log.warning) -> tuple[dict[str, list[dict]], dict]:
    """(method -> one result per pairing, method -> (B, P) bootstrap samples when ``rows`` is given)."""
    labels = labels_digest(annotations, [split])
    results: dict[str, list[dict]] = {m: [] for m in methods}
    samples: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    for pairing in pairings:
        lazy = _Pairing(cands, annotations, pairing, split)
        for method in methods:
            settings = {"split": split, **SETTINGS[method]}
            results[method].append(_point(lazy, method, settings, labels, out, overwrite))
            if rows is not None:
                boot = {**settings, "resamples": int(len(rows)), "bootstrap_seed": bootstrap_seed}
                raw = _samples(lazy, method, boot, labels, out, overwrite, rows)  # saved raw: keys unchanged
                samples[method].append(recentred(raw, results[method][-1]["score"], rows))
    return results, ({m: np.stack(s, axis=1) for m, s in samples.items()} if rows is not None else {})


def _point(lazy: _Pairing, method: str, settings: Mapping, labels: str, out: str, overwrite: bool) -> dict:
    pairing = lazy.pairing
    path = result_path(out, pairing.name, method, result_key(pairing.store_keys(), method, settings, labels))
    saved = _saved(path, overwrite)
    if saved is None:
        began = time.perf_counter()
        value = lazy.point(method)
        seconds = time.perf_counter() - began + (lazy.panel_seconds if method != "logme" else 0.0)
        saved = {"pairing": pairing.name, "audio": pairing.audio, "visual": pairing.visual,
                 "store_keys": pairing.store_keys(), "protocol": method, "key": path.stem,
                 "split": settings["split"], "score": value, "seconds": seconds, "settings": dict(settings)}
        save_result(path, saved)
    return saved


def _samples(lazy: _Pairing, method: str, settings: Mapping, labels: str, out: str, overwrite: bool,
             rows: np.ndarray) -> np.ndarray:
    pairing = lazy.pairing
    protocol = f"{method}-bootstrap"
    path = result_path(out, pairing.name, protocol, result_key(pairing.store_keys(), protocol, settings, labels))
    saved = _saved(path, overwrite)
    if saved is None:
        began = time.perf_counter()
        values = free_samples(lazy.scorer(method), rows)
        saved = {"pairing": pairing.name, "protocol": protocol, "key": path.stem, "samples": values.tolist(),
                 "seconds": time.perf_counter() - began, "settings": dict(settings)}
        save_result(path, saved)
    return np.asarray(saved["samples"], dtype=np.float64)


def trained_bootstrap(out: str, annotations: Annotations, results: Mapping[str, Sequence | None], score: str,
                      rows: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """protocol -> (B, P) resampled seed-mean scores, from every run's saved test predictions."""
    samples = {}
    for protocol, per_pairing in results.items():
        if per_pairing is None or not per_pairing or not isinstance(per_pairing[0], list):
            continue  # a free method: sampled by run_free
        columns = []
        for i, runs in enumerate(per_pairing):
            clips = [clip_scores(_predictions(out, SUBDIR, run), annotations, "test", score) for run in runs]
            columns.append(trained_samples(clips, rows, seed=(seed, i)))
        samples[protocol] = np.stack(columns, axis=1)
    return samples


def _predictions(out: str, subdir: str, run: Mapping) -> dict:
    name = run.get("predictions")
    if name is None:
        raise AvvpError(f"{run['pairing']} ({run['protocol']}): result {run['key']} was saved without predictions "
                        f"(before --bootstrap existed); rerun with --overwrite to retrain it")
    return load_run_predictions(Path(out) / subdir / name)
