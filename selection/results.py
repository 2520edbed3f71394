"""Resumable per-pairing results: one small JSON file per (pairing, protocol, config).

Selection runs are long (M x K trainings) and get interrupted; a result is the unit of
work, so each one is written atomically the moment it is known and keyed by everything
that changes it: the stores (extractor@key), the protocol, the training (or LogME)
settings and a digest of the labels of the splits used. A rerun with the same inputs finds
the file and skips the pairing; any change gives another key, so stale results are never
reused silently.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from avvp_pipe.core.errors import AvvpError
from avvp_pipe.core.io import atomic_path, atomic_write_json
from avvp_pipe.pipeline.llp.annotations import Annotations

SUBDIR = "pairings"


def labels_digest(annotations: Annotations, splits: Sequence[str]) -> str:
    """sha256 of the splits' clip ids and weak labels: other annotations, other results."""
    digest = hashlib.sha256()
    for split in dict.fromkeys(splits):
        ids = annotations.split_ids(split)
        digest.update(f"{split}:{','.join(ids)}".encode())
        digest.update(np.ascontiguousarray(annotations.weak_labels(ids), dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def result_key(store_keys: Mapping[str, str], protocol: str, settings: Mapping[str, Any], labels: str) -> str:
    """A 12-hex key of what determines a pairing's result (not how it was computed)."""
    payload = json.dumps({"stores": dict(sorted(store_keys.items())), "protocol": protocol,
                          "settings": dict(settings), "labels": labels}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def result_path(out: str | Path, name: str, protocol: str, key: str) -> Path:
    """``OUT/pairings/<name>-<protocol>-<key>.json``."""
    return Path(out) / SUBDIR / f"{name}-{protocol}-{key}.json"


def load_result(path: Path) -> dict | None:
    """The saved result, or None when absent; an unreadable file is an error, not a silent redo."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise AvvpError(f"{path}: expected a pairing result JSON but cannot read it ({err}); "
                        f"delete it or pass --overwrite") from None


def save_run_predictions(path: Path, predictions: Mapping[str, np.ndarray]) -> Path:
    """A run's eval-split outputs as an .npz in evaluate's P.npz layout, atomically.

    Written as the engine returned them, unchecked: the bootstrap must rescore exactly what the
    run was scored on (HAN's fused probability can exceed 1 by rounding, which a P.npz check refuses).
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # a file object: numpy appends no ".npz"
        np.savez(handle, **{k: np.asarray(v) for k, v in predictions.items()})
    return path


def load_run_predictions(path: Path) -> dict[str, np.ndarray]:
    """What :func:`save_run_predictions` wrote; a missing or unreadable file is an error naming it."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError) as err:
        raise AvvpError(f"{path}: expected a run's predictions (.npz) but cannot read it ({err}); "
                        f"rerun with --overwrite") from None


def save_result(path: Path, result: Mapping[str, Any]) -> Path:
    """Write atomically (temp file in the same folder, then os.replace), as strict JSON."""
    return atomic_write_json(path, result)
