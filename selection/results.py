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
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import AvvpError
from pipeline.report import atomic_write_text
from pipeline.llp import Annotations

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


def save_result(path: Path, result: Mapping[str, Any]) -> Path:
    """Write atomically (temp file in the same folder, then os.replace)."""
    return atomic_write_text(path, json.dumps(_jsonable(result), indent=2) + "\n")


def _jsonable(value: Any) -> Any:
    """numpy scalars/arrays and tuples to plain JSON types."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no NaN; null reads as "undefined" (e.g. tau of a constant ranking)
    return value
