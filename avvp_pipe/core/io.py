"""Atomic writes and JSON: the one helper for each, used by every writer of the package.

Why one helper: a reader (or a killed writer's rerun) must never see half a file, and a
failed write must leave nothing behind. Every file avvp-pipe writes goes through
:func:`atomic_path`: a temp file in the same folder (so ``os.replace`` is atomic), named
``.<name>.<random>.partial`` (unique per writer, so threads and processes never share one),
optionally fsynced, moved into place in one step, and removed on any failure.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

#: Every temp file ends so; ``.<name>.<hex>.partial`` (cleaners and tests glob for it).
TEMP_SUFFIX = ".partial"


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh temp name beside ``path``: hidden, unique to this writer, ending in TEMP_SUFFIX."""
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:16]}{TEMP_SUFFIX}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path`` in one step.

    ``fsync`` flushes the file and its folder to disk before and after the rename: for
    files whose loss after a power cut would cost work (checkpoints), not for every chunk.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
        if fsync:
            _fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)  # only still there when writing failed


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, fsync=fsync) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = False) -> Path:
    """Write UTF-8 ``text`` atomically (see :func:`atomic_path`)."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_write_json(path: str | os.PathLike, data: Any, *, fsync: bool = False) -> Path:
    """Write ``data`` as indented strict JSON atomically (values made plain by :func:`jsonable`)."""
    return atomic_write_text(path, dumps(data) + "\n", fsync=fsync)


def atomic_write_url(url: str, data: bytes) -> None:
    """Write a small file at a local path or fsspec URL: atomic on local disks; object
    stores write a key in one request anyway (and memory:// is in-process)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    if fs.__class__.__name__ == "LocalFileSystem":
        atomic_write_bytes(path, data)
        return
    fs.makedirs(fs._parent(path), exist_ok=True)
    fs.pipe_file(path, data)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically and fsynced: checkpoints are what a killed run resumes from."""
    import torch

    with atomic_path(path, fsync=True) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def load_torch(path: str | os.PathLike, what: str, map_location: Any = "cpu") -> Any:
    """``torch.load`` of a file we wrote (checkpoints, best.pt): tensors and plain containers
    only (weights_only), and any failure one error naming the file and what it should be."""
    import pickle

    import torch

    from avvp_pipe.core.errors import AvvpError, one_line

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise AvvpError(f"{path}: expected {what} but the file is missing") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, AttributeError) as err:
        reason = one_line(err, 160).split(". ")[0]
        raise AvvpError(f"{path}: expected {what} (tensors only) but cannot load it ({type(err).__name__}: "
                        f"{reason}); nothing was run from it. Rerun with --overwrite to start over") from None


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return Path(path)


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types: mappings as dicts with str keys, tuples and arrays as
    lists, numpy scalars as Python numbers, paths as str, and NaN/inf as null (strict JSON
    has no NaN; null reads as "undefined", e.g. the tau of a constant ranking)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(data: Any, *, indent: int | None = 2, sort_keys: bool = False) -> str:
    """JSON text of ``jsonable(data)``; refuses anything that is still not JSON."""
    return json.dumps(jsonable(data), indent=indent, sort_keys=sort_keys, allow_nan=False)


def read_json(path: str | os.PathLike) -> Any:
    """Parse a UTF-8 JSON file (errors are the caller's to word: it knows what the file is)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
