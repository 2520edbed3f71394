"""One zarr v3 feature store per (dataset, extractor configuration).

Layout of a store (``ROOT/<dataset>/<extractor>/<key>.zarr``)::

    zarr.json            group attributes: provenance, config, clip list, shape, dtype
    features/            (N, T, D) array, chunk (1, T, D): one clip is one chunk, one write
    status/              (N,) uint8, chunk (1,): 0 pending, 1 done, 2 failed
    clip/, split/        (N,) strings: clip ids and splits, so ``xr.open_zarr`` indexes by clip
                         (dimension names and consolidated metadata: see cache/layout.py)
    records/<id>.json    optional per-clip notes (padding, trimming) and failure reasons

Why this shape:

- A clip is one chunk, so a reader loads one clip, a split, or everything (as a dask array)
  without touching the rest, and no two writers ever share a chunk.
- A clip counts as done only once its ``status`` chunk says so, and that chunk is written
  after the feature chunk. zarr >= 3.1.3 writes local chunks atomically (temp file, then
  rename), so ``kill -9`` at any moment loses at most the clips in flight, and a half-written
  clip is never read as done. Two processes that compute the same clip write identical
  bytes to the same chunk through atomic renames: work is repeated, never corrupted.
- The key hashes everything that changes the numbers (extractor config and storage dtype),
  so two configurations never share a store and a rerun finds its own store again.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import platform
import socket
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import zarr

from avvp_pipe.cache import layout
from avvp_pipe.cache.layout import array_options, consolidate, write_coordinates
from avvp_pipe.core.errors import AvvpError, PartialFailure, StoreError, one_line
from avvp_pipe.core.io import atomic_write_bytes, atomic_write_url

log = logging.getLogger(__name__)

STORE_FORMAT = 1
_READ_THREADS = 4  # chunk reads in flight: zstd decoding and file reads release the GIL
PENDING, DONE, FAILED = 0, 1, 2
#: Codec chain of the features array (see ``_create`` for why level 1).
#: zstd with its content checksum (XXH64 of each chunk's bytes, checked on every decode): a
#: bit flip on disk then fails the read of that clip instead of decoding to wrong numbers
#: (measured: 0 of 151,376 single-bit flips of a chunk went unnoticed; without the
#: checksum, 150,826 decoded to other finite values). Stores made before keep their codec.
FEATURE_COMPRESSORS = (zarr.codecs.ZstdCodec(level=1, checksum=True),)
STATUS_COMPRESSORS = (zarr.codecs.ZstdCodec(level=0, checksum=True),)
#: How a store's numbers came to be. Only "extracted" with pretrained weights is real.
KINDS = ("extracted", "random-init", "simulated", "imported")
DTYPES = ("float32", "float16")


class UnrealFeaturesWarning(UserWarning):
    """Features from random weights or a simulation are being read."""


def store_key(config: Mapping[str, Any], dtype: str) -> str:
    """A 16-hex key over everything that changes a store's numbers."""
    canonical = json.dumps({"config": config, "dtype": dtype}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def clips_digest(clip_ids: Sequence[str]) -> str:
    """A short hash of a clip list: stores of one dataset share it."""
    return hashlib.sha256("\n".join(clip_ids).encode()).hexdigest()[:16]


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the numbers, for provenance."""
    import importlib.metadata as md

    versions = {}
    for name in ("torch", "torchvision", "timm", "pretrainedmodels", "torchvggish", "numpy", "zarr", "decord",
                 "torchcodec", "librosa"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return versions


@dataclass(frozen=True)
class StoreSpec:
    """What a new store holds: the caller's extractor identity and provenance."""

    dataset: str
    extractor: str  # registry name, e.g. "resnet152" (or a simulated/imported name)
    modality: str  # "audio" | "visual-2d" | "visual-3d"
    shape: tuple[int, int]  # (T, D) per clip
    config: Mapping[str, Any]  # everything that changes the numbers (hashed into the key)
    kind: str = "extracted"  # one of KINDS
    dtype: str = "float32"
    provenance: Mapping[str, Any] | None = None  # extra readable facts (weights file, source dir...)

    def key(self) -> str:
        return store_key(self.config, self.dtype)


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts))


class FeatureStore:
    """A handle on one store: write clips, read clips, report progress."""

    def __init__(self, url: str, group: zarr.Group):
        self.url = url
        self.group = group
        attrs = dict(group.attrs)
        if attrs.get("avvp_store_format") != STORE_FORMAT:
            raise StoreError(f"{url}: not an avvp-pipe feature store (expected avvp_store_format {STORE_FORMAT})")
        self.attrs: dict[str, Any] = attrs
        self.clip_ids: list[str] = list(attrs["clip_ids"])
        self.index: dict[str, int] = {cid: i for i, cid in enumerate(self.clip_ids)}
        self.splits: dict[str, str] = dict(attrs.get("splits", {}))
        self._status_cache: np.ndarray | None = None

    # ---------------------------------------------------------------- identity
    @property
    def dataset(self) -> str:
        return self.attrs["dataset"]

    @property
    def extractor(self) -> str:
        return self.attrs["extractor"]

    @property
    def modality(self) -> str:
        return self.attrs["modality"]

    @property
    def key(self) -> str:
        return self.attrs["key"]

    @property
    def kind(self) -> str:
        return self.attrs["kind"]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.attrs["shape"])  # type: ignore[return-value]

    @property
    def dtype(self) -> str:
        return self.attrs["dtype"]

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.attrs["config"])

    @property
    def name(self) -> str:
        """``<extractor>@<key>``: how a user names this store on the command line."""
        return f"{self.extractor}@{self.key}"

    @property
    def is_real(self) -> bool:
        """Whether the numbers come from pretrained weights (extracted or imported)."""
        return self.kind in ("extracted", "imported")

    def __repr__(self) -> str:
        return f"FeatureStore({self.url!r}, {self.name}, {self.kind}, shape={self.shape})"

    # ---------------------------------------------------------------- status
    def status(self, refresh: bool = True) -> np.ndarray:
        """(N,) uint8 per-clip status: PENDING, DONE or FAILED."""
        if refresh or self._status_cache is None:
            fast = self._read_local_status()
            self._status_cache = fast if fast is not None else np.asarray(self.group["status"][:])
        return self._status_cache

    def _read_local_status(self) -> np.ndarray | None:
        """The status array read file by file from a local store, or None to ask zarr.

        Why: one (1,) chunk per clip keeps writers apart, but zarr spends ~0.4 ms of
        CPU per chunk, 5 s for LLP's 11,849 clips on every ``status()``, while reading
        the chunk files directly takes ~0.2 s. Only the default layout (see
        :func:`_local_row_chunks`) is read this way.
        """
        layout = _local_row_chunks(self.group["status"], writing=False)
        if layout is None:
            return None
        folder, zstd = layout
        folder = os.path.join(folder, "c")
        out = np.full(len(self.clip_ids), PENDING, dtype=np.uint8)
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return out  # nothing written yet
        for name in names:
            if not name.isdigit():  # "<i>.<uuid>.partial": a write in flight or killed
                continue
            try:
                with open(os.path.join(folder, name), "rb") as handle:
                    raw = handle.read()
            except FileNotFoundError:  # cleared (deleted) between listing and reading
                continue
            try:
                out[int(name)] = np.frombuffer(zstd.decode(raw), dtype=np.uint8)[0]
            except Exception as err:  # noqa: BLE001 - any decode failure names the clip
                cid = self.clip_ids[int(name)] if int(name) < len(self.clip_ids) else name
                raise StoreError(f"{self.url}: status chunk of clip {cid} is unreadable "
                                 f"({type(err).__name__}); delete {folder}/{name} to recompute it") from None
        return out

    def done_ids(self) -> list[str]:
        status = self.status()
        return [cid for cid, s in zip(self.clip_ids, status) if s == DONE]

    def pending(self, ids: Sequence[str] | None = None) -> list[str]:
        """Clips not yet done (pending or failed), in the given order."""
        status = self.status()
        ids = self.clip_ids if ids is None else ids
        return [cid for cid in ids if status[self._idx(cid)] != DONE]

    def missing(self, ids: Sequence[str]) -> list[str]:
        """Clips of ``ids`` whose features are not complete (or not in the store at all)."""
        status = self.status()
        return [cid for cid in ids if cid not in self.index or status[self.index[cid]] != DONE]

    def progress(self) -> dict[str, dict[str, int]]:
        """Done/failed/total per split (and overall)."""
        status = self.status()
        report: dict[str, dict[str, int]] = {}
        for cid, st in zip(self.clip_ids, status):
            for split in (self.splits.get(cid, "unsplit"), "all"):
                row = report.setdefault(split, {"done": 0, "failed": 0, "total": 0})
                row["total"] += 1
                row["done"] += int(st == DONE)
                row["failed"] += int(st == FAILED)
        return report

    def _idx(self, cid: str) -> int:
        try:
            return self.index[cid]
        except KeyError:
            raise StoreError(
                f"{self.url}: clip {cid!r} is not in this store's clip list "
                f"({len(self.clip_ids)} clips of dataset {self.dataset!r})"
            ) from None

    # ---------------------------------------------------------------- writing
    def write_clips(self, ids: Sequence[str], features: np.ndarray | Sequence[np.ndarray],
                    records: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """Write a batch of clips, data first, then their completion records.

        ``features`` is (n, T, D) or a list of (T, D). The status chunks are written only
        after every feature chunk of the batch is on storage.
        """
        if len(ids) == 0:
            return
        data = np.stack([np.asarray(f) for f in features]) if not isinstance(features, np.ndarray) else features
        expected = (len(ids), *self.shape)
        if data.shape != expected:
            raise StoreError(f"{self.url}: expected features of shape {expected} but got {data.shape}")
        # Check after the cast: a float32 value above 65504 becomes inf in a float16 store.
        with np.errstate(over="ignore"):  # overflow is reported below, naming the clips
            stored = data.astype(self.dtype, copy=False)
        finite = np.isfinite(stored).reshape(len(ids), -1).all(1)  # (n,)
        if not finite.all():
            bad = [ids[i] for i in np.flatnonzero(~finite)]
            raise StoreError(f"{self.url}: non-finite features (as {self.dtype}) for clips {bad[:5]}")
        idx = [self._idx(cid) for cid in ids]
        if records:
            for cid, record in records.items():
                self._write_record(cid, record)
        _write_rows(self._features_for_writing(), idx, stored)
        _write_rows(self.group["status"], idx, np.full(len(idx), DONE, np.uint8))
        self._status_cache = None

    def _features_for_writing(self) -> zarr.Array:
        """The features array, set to write every chunk, even an all-zero one.

        zarr skips chunks equal to the fill value by default; then a done clip whose chunk
        file was lost would read back as zeros and `verify` could not tell it from data.
        Writing every chunk makes "done but no chunk file" a detectable fault.
        """
        return self.group["features"].with_config({"write_empty_chunks": True})

    def add_provenance(self, facts: Mapping[str, Any]) -> None:
        """Merge facts learnt after creation (an import's content hash) into the provenance.

        Provenance is outside the key, so this never changes which store this is.
        """
        provenance = {**self.attrs.get("provenance", {}), **facts}
        self.group.attrs.update({"provenance": provenance})
        self.attrs["provenance"] = provenance

    def write_clip(self, cid: str, features: np.ndarray, record: Mapping[str, Any] | None = None) -> None:
        self.write_clips([cid], features[None], {cid: record} if record else None)

    def mark_failed(self, cid: str, reason: str) -> None:
        """Record a clip that cannot be computed; a rerun tries it again."""
        self._write_record(cid, {"status": "failed", "reason": reason, "time": time.time()})
        self.group["status"][self._idx(cid)] = FAILED
        self._status_cache = None

    def clear(self, ids: Sequence[str] | None = None) -> int:
        """Mark clips pending again (``--overwrite``); their data is rewritten later."""
        ids = self.clip_ids if ids is None else list(ids)
        idx = [self._idx(cid) for cid in ids]
        if idx:
            _write_rows(self.group["status"], idx, np.zeros(len(idx), np.uint8))
        self._status_cache = None
        return len(idx)

    def _record_path(self, cid: str) -> str:
        return _join(self.url, "records", f"{cid}.json")

    def _write_record(self, cid: str, record: Mapping[str, Any]) -> None:
        atomic_write_url(self._record_path(cid), json.dumps(record, default=str).encode())

    def record(self, cid: str) -> dict[str, Any] | None:
        """The per-clip note or failure reason, if any was written."""
        fs, path = fsspec.core.url_to_fs(self._record_path(cid))
        if not fs.exists(path):
            return None
        return json.loads(fs.cat_file(path))

    def failures(self) -> dict[str, str]:
        status = self.status()
        out = {}
        for cid, st in zip(self.clip_ids, status):
            if st == FAILED:
                rec = self.record(cid) or {}
                out[cid] = rec.get("reason", "unknown")
        return out

    # ---------------------------------------------------------------- reading
    def _check_readable(self, ids: Sequence[str]) -> list[int]:
        missing = self.missing(ids)
        if missing:
            raise StoreError(
                f"{self.url}: {len(missing)} of {len(ids)} requested clips are not extracted "
                f"(e.g. {', '.join(missing[:5])}); run `avvp-pipe extract` for them first"
            )
        if not self.is_real:
            warnings.warn(f"{self.name} holds {self.kind} features, not pretrained ones", UnrealFeaturesWarning, stacklevel=3)
        return [self.index[cid] for cid in ids]

    def read(self, ids: Sequence[str] | None = None) -> np.ndarray:
        """(n, T, D) float32 for complete clips; an incomplete clip is an error."""
        ids = self.done_ids() if ids is None else list(ids)
        idx = self._check_readable(ids)
        return self._read_rows(idx)

    def iter_blocks(self, ids: Sequence[str], block: int = 256) -> Iterator[tuple[list[str], np.ndarray]]:
        """Read a long clip list block by block, for reductions that must not hold it all."""
        ids = list(ids)
        self._check_readable(ids)
        for start in range(0, len(ids), block):
            part = ids[start : start + block]
            yield part, self._read_rows([self.index[c] for c in part])

    def _read_rows(self, idx: Sequence[int]) -> np.ndarray:
        """(n, T, D) float32 of the given clip rows: chunk files directly when local, else zarr.

        Why: zarr's per-chunk overhead made reading LLP-sized stores (train, select,
        export) cost ~2.5x the CPU of decoding the chunks (measured 16.4 s against 6.7 s
        for 3,000 res152 clips). Unlike zarr, a done clip whose chunk file is missing is an
        error here, not a block of zeros.
        """
        features = self.group["features"]
        layout = _local_row_chunks(features, writing=False)
        if layout is None:
            return np.asarray(features.get_orthogonal_selection((list(idx),)), dtype=np.float32)
        folder, zstd = layout
        out = np.empty((len(idx), *features.shape[1:]), dtype=np.float32)  # (n, T, D)
        inner = os.sep.join("0" * (features.ndim - 1))

        def read_one(k: int) -> None:
            path = os.path.join(folder, "c", str(int(idx[k])), inner)
            try:
                raw = _read_chunk_file(path)
            except FileNotFoundError:
                raise StoreError(f"{self.url}: clip {self.clip_ids[idx[k]]} is marked done but its chunk "
                                 f"{path} is missing; run `avvp-pipe cache verify {self.url}`") from None
            try:
                row = np.frombuffer(zstd.decode(raw), dtype=features.dtype).reshape(features.shape[1:])
            except Exception as err:  # noqa: BLE001 - any decode failure names the clip
                raise StoreError(f"{self.url}: chunk of clip {self.clip_ids[idx[k]]} is unreadable "
                                 f"({type(err).__name__}: {err}); run `avvp-pipe cache verify {self.url}`") from None
            out[k] = row

        if len(idx) < 2 * _READ_THREADS:
            for k in range(len(idx)):
                read_one(k)
        else:
            with ThreadPoolExecutor(_READ_THREADS) as pool:
                list(pool.map(read_one, range(len(idx))))
        return out

    def to_dask(self, ids: Sequence[str] | None = None):
        """A lazy (n, T, D) dask array over complete clips, one chunk per clip."""
        import dask.array as da

        ids = self.done_ids() if ids is None else list(ids)
        idx = self._check_readable(ids)
        return da.from_zarr(self.group["features"])[np.asarray(idx, dtype=np.int64)]

    def to_xarray(self, **kwargs: Any) -> Any:
        """The store as a lazy ``xarray.Dataset`` (``xr.open_zarr``; needs the xarray extra)."""
        return layout.open_xarray(self, **kwargs)

    def size_bytes(self) -> int:
        fs, path = fsspec.core.url_to_fs(self.url)
        try:
            return int(fs.du(path, total=True))
        except (FileNotFoundError, NotImplementedError):
            return 0

    def summary(self) -> dict[str, Any]:
        """A plain-data view for `cache ls`."""
        prov = self.attrs.get("provenance", {})
        return {
            "url": self.url,
            "name": self.name,
            "dataset": self.dataset,
            "extractor": self.extractor,
            "modality": self.modality,
            "kind": self.kind,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "progress": self.progress(),
            "size_bytes": self.size_bytes(),
            "created": prov.get("created"),
            "host": prov.get("host"),
            "weights": prov.get("weights_identity", self.config.get("weights_identity")),
        }


def _write_rows(array: zarr.Array, idx: Sequence[int], values: np.ndarray) -> None:
    """Write ``values[k]`` to row ``idx[k]`` (every row is one chunk), each chunk whole.

    Local stores of the default layout are written chunk file by chunk file (see
    :func:`_write_local_rows`); others through zarr, one slice per run of consecutive rows.
    Why not ``set_orthogonal_selection``: zarr treats an index list as a partial update
    and reads every existing chunk first, which costs a decode per clip and fails on a
    corrupt chunk, so a clip that `verify` reset could never be rewritten. A slice that
    covers whole chunks is written without reading them.
    """
    layout = _local_row_chunks(array)
    if layout is not None:
        _write_local_rows(array, layout, idx, values)
        return
    idx_arr = np.asarray(idx, dtype=np.int64)
    if len(idx_arr) and (np.diff(idx_arr) == 1).all():  # the common case: one run, no copy
        array[int(idx_arr[0]) : int(idx_arr[-1]) + 1] = values
        return
    order = np.argsort(idx_arr, kind="stable")
    rows = idx_arr[order]
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for run in np.split(np.arange(len(rows)), breaks):
        start, stop = int(rows[run[0]]), int(rows[run[-1]]) + 1
        array[start:stop] = values[order[run]]


def _read_chunk_file(path: str) -> bytes:
    """One chunk file's bytes (the one place local reads touch chunks; tests spy on it)."""
    with open(path, "rb") as handle:
        return handle.read()


def _local_row_chunks(array: zarr.Array, writing: bool = True) -> tuple[str, Any] | None:
    """(folder, numcodecs Zstd) of a local array stored one row per chunk, else None.

    Both arrays of a store (features, status) have this layout: chunk keys ``c/<i>/0/..``,
    codecs bytes (little-endian) + zstd, fill value 0. For it, a chunk file is exactly
    ``zstd(row.tobytes())``, which lets :meth:`FeatureStore.status` and
    :func:`_write_rows` skip zarr's per-chunk overhead. Any other layout (another codec,
    sharding, fsspec URLs, a read-only handle when ``writing``) returns None and goes through zarr.
    """
    from zarr.codecs import BytesCodec, ZstdCodec
    from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding

    meta = array.metadata
    store = array.store
    codecs = getattr(meta, "codecs", ())
    if not (isinstance(store, zarr.storage.LocalStore) and not (writing and store.read_only)
            and isinstance(getattr(meta, "chunk_key_encoding", None), DefaultChunkKeyEncoding)
            and meta.chunk_key_encoding.separator == "/"
            and [type(c) for c in codecs] == [BytesCodec, ZstdCodec]
            and _endian(codecs[0]) in (None, sys.byteorder) and _endian(codecs[0]) in (None, "little")
            and tuple(array.chunks) == (1, *array.shape[1:])
            and not np.any(np.asarray(meta.fill_value))):
        return None
    import numcodecs

    return (os.path.join(str(store.root), array.path),
            numcodecs.Zstd(level=codecs[1].level, checksum=codecs[1].checksum))


def _endian(codec: Any) -> str | None:
    """A BytesCodec's byte order as text: an enum up to zarr 3.1, a plain string from zarr 3.2 on."""
    endian = codec.endian
    return None if endian is None else str(getattr(endian, "value", endian))


def _write_local_rows(array: zarr.Array, layout: tuple[str, Any], idx: Sequence[int], values: np.ndarray) -> None:
    """Write each row as its chunk file: zstd-encode, temp file, then ``os.replace``.

    Why: through zarr a chunk costs ~1.5 ms of CPU beyond its encoding (asyncio, buffer
    copies), which made an LLP-sized import spend ~13 s on the 11,849 one-byte status
    chunks alone. The bytes are the ones zarr writes (tests compare them), and the
    rename keeps zarr's guarantee that a chunk is whole or absent.
    """
    folder, zstd = layout
    inner = os.sep.join("0" * (array.ndim - 1))  # chunk key c/<i>/0/0 for (N, T, D)
    rows = np.ascontiguousarray(values, dtype=array.dtype)
    for k, row in enumerate(idx):
        path = os.path.join(folder, "c", str(int(row)), inner) if inner else os.path.join(folder, "c", str(int(row)))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_bytes(path, zstd.encode(rows[k : k + 1]))  # (1, ...): exactly one chunk


def store_url(root: str, dataset: str, extractor: str, key: str) -> str:
    return _join(str(root), dataset, extractor, f"{key}.zarr")


def _provenance(spec: StoreSpec) -> dict[str, Any]:
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "user": getpass.getuser() if hasattr(os, "getuid") else "",
        "python": platform.python_version(),
        "libraries": library_versions(),
        "random_init": spec.kind == "random-init",
        "simulated": spec.kind == "simulated",
        **dict(spec.provenance or {}),
    }


def open_or_create(root: str, spec: StoreSpec, clip_ids: Sequence[str],
                   splits: Mapping[str, str] | None = None) -> FeatureStore:
    """Open the store for ``spec`` under ``root``, creating it if needed.

    Safe when several processes call it at once: creation is idempotent, and a store that
    exists must have been made for the same clip list (else it is an error, since clips are
    addressed by position).
    """
    if spec.kind not in KINDS:
        raise AvvpError(f"store kind {spec.kind!r}: expected one of {', '.join(KINDS)}")
    if spec.dtype not in DTYPES:
        raise AvvpError(f"--dtype {spec.dtype!r}: expected one of {', '.join(DTYPES)}")
    if len(set(clip_ids)) != len(clip_ids):
        raise AvvpError(f"clip list for {spec.extractor} has duplicate ids")
    key = spec.key()
    url = store_url(root, spec.dataset, spec.extractor, key)
    attrs = {
        "avvp_store_format": STORE_FORMAT,
        "dataset": spec.dataset,
        "extractor": spec.extractor,
        "modality": spec.modality,
        "key": key,
        "kind": spec.kind,
        "shape": list(spec.shape),
        "dtype": spec.dtype,
        "config": dict(spec.config),
        "provenance": _provenance(spec),
        "clips_digest": clips_digest(clip_ids),
        "clip_ids": list(clip_ids),
        "splits": dict(splits or {}),
    }
    # Two processes that start together both find no store and both create it. zarr's
    # group creation is check-then-write, so the loser gets ContainsGroupError, or its
    # empty group document briefly replaces the winner's attributes. Retrying converges:
    # every round either finds a complete store or (re)writes the same arrays and attributes.
    for attempt in range(_CREATE_ATTEMPTS):
        try:
            existing = open_store(url)
        except StoreError:
            existing = None
        if existing is not None:
            _check_matches(existing, spec, clip_ids)
            return existing
        try:
            _create(url, spec, len(clip_ids), attrs)
        except (zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError) as err:
            log.debug("concurrent creation of %s (%s); retrying", url, err)
            time.sleep(0.05 * (attempt + 1))
    raise StoreError(f"{url}: could not create or open the store after {_CREATE_ATTEMPTS} attempts "
                     "(another process keeps replacing it?)")


_CREATE_ATTEMPTS = 8


def _create(url: str, spec: StoreSpec, n: int, attrs: Mapping[str, Any]) -> None:
    """Write the arrays, then the group attributes that make the store exist."""
    T, D = spec.shape
    # Arrays first, group attributes last: a store whose creation was killed has no
    # avvp_store_format attribute and is simply created again.
    group = zarr.open_group(url, mode="a")
    # zstd level 1: on float features it compresses as well as the default level (3) at
    # twice the encode speed (measured: ratio 1.75 vs 1.81, 207 vs 112 MB/s per core), and
    # encoding is what bounds import-npy and synth-features.
    _ensure_array(group, "features", (n, T, D), (1, T, D), spec.dtype, compressors=FEATURE_COMPRESSORS,
                  **array_options("features"))
    _ensure_array(group, "status", (n,), (1,), "uint8", compressors=STATUS_COMPRESSORS, **array_options("status"))
    write_coordinates(group, attrs["clip_ids"], attrs["splits"])  # xarray's clip index and split coordinate
    group.attrs.put(dict(attrs))
    consolidate(url)  # after the attributes: consolidation rewrites the group document with them
    log.info("created store %s", url)


def _check_matches(existing: FeatureStore, spec: StoreSpec, clip_ids: Sequence[str]) -> None:
    """An existing store must hold what ``spec`` and ``clip_ids`` describe.

    The key hashes config and dtype only, so a caller whose config omits the shape or the
    kind could otherwise append to a store of another shape or kind.
    """
    url = existing.url
    if existing.attrs.get("clips_digest") != clips_digest(clip_ids):
        raise StoreError(
            f"{url}: store exists for a different clip list of dataset {spec.dataset!r} "
            f"({len(existing.clip_ids)} clips, now {len(clip_ids)}); use another --dataset name"
        )
    if existing.shape != tuple(spec.shape):
        raise StoreError(f"{url}: expected clips of shape {tuple(spec.shape)} but the store holds {existing.shape}")
    if existing.kind != spec.kind:
        raise StoreError(f"{url}: expected a {spec.kind} store but this one holds {existing.kind} features")


def _ensure_array(group: zarr.Group, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str,
                  **codecs: Any) -> None:
    """Create an array unless a concurrent creator already made the same one.

    Never ``overwrite=True`` on a matching array: another process may already be writing
    clips into it. A leftover of a killed creation with another shape is replaced.
    """
    if name in group:
        existing = group[name]
        if existing.shape == shape and existing.chunks == chunks and str(existing.dtype) == dtype:
            return
        group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0, overwrite=True, **codecs)
        return
    try:
        group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0, **codecs)
    except zarr.errors.ContainsArrayError:
        pass  # created by a concurrent process between the check and here


def open_store(url: str, mode: str = "r+") -> FeatureStore:
    """Open an existing store by URL (local path or fsspec URL); its metadata is checked here,
    so a damaged ``zarr.json`` is one error naming that file, not a failure later."""
    try:
        group = zarr.open_group(url, mode=mode)
    except (FileNotFoundError, NotADirectoryError, zarr.errors.GroupNotFoundError,
            zarr.errors.NodeTypeValidationError) as err:
        raise StoreError(f"{url}: no feature store here ({type(err).__name__})") from None
    except (ValueError, UnicodeDecodeError, TypeError, KeyError) as err:  # json.JSONDecodeError is a ValueError
        raise StoreError(_metadata_error(url, "zarr.json", err)) from None
    if "avvp_store_format" not in group.attrs:
        raise StoreError(f"{url}: not an avvp-pipe feature store (incomplete creation or another zarr group)")
    for name in ("features", "status"):
        try:
            group[name]
        except KeyError:
            raise StoreError(f"{url}: the store has no {name} array ({_join(url, name)} is missing)") from None
        except (ValueError, UnicodeDecodeError, TypeError) as err:
            raise StoreError(_metadata_error(url, f"{name}/zarr.json", err)) from None
        _check_array_document(url, name)
    return FeatureStore(url, group)


def _check_array_document(url: str, name: str) -> None:
    """The array's own ``zarr.json`` parses: consolidated metadata in the group document would
    hide a damaged one from zarr, but not from every other reader (xarray, zarr without
    consolidation), so it is refused here too."""
    try:
        with fsspec.open(_join(url, name, "zarr.json"), "rb") as handle:
            json.loads(handle.read().decode("utf-8"))
    except FileNotFoundError:
        raise StoreError(f"{url}: the store has no {name} array ({_join(url, name, 'zarr.json')} is missing)") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise StoreError(_metadata_error(url, f"{name}/zarr.json", err)) from None


def _metadata_error(url: str, file: str, err: BaseException) -> str:
    reason = one_line(err, 160)
    return (f"{_join(url, file)}: expected zarr metadata JSON but cannot read it ({reason}); "
            f"the feature chunks are untouched: restore that file or re-create the store")


def scan_stores(root: str) -> tuple[list[FeatureStore], dict[str, str]]:
    """Every store under ``root`` (``ROOT/<dataset>/<extractor>/<key>.zarr``), and the ones
    that cannot be opened with the reason (so one broken store does not hide the others)."""
    fs, path = fsspec.core.url_to_fs(str(root))
    if not fs.exists(path):
        raise StoreError(f"{root}: cache folder not found")
    if not fs.isdir(path):
        raise StoreError(f"{root}: expected a cache folder but it is a file")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    stores, broken = [], {}
    for found in sorted(fs.glob(_join(path, "*", "*", "*.zarr"))):
        url = found if protocol in ("file", "local") else f"{protocol}://{found.lstrip('/')}"
        try:
            stores.append(open_store(url, mode="r+"))
        except StoreError as err:
            broken[url] = str(err)
    return stores, broken


def list_stores(root: str) -> list[FeatureStore]:
    """The stores under ``root`` that open; broken ones are logged (``cache ls`` shows them)."""
    stores, broken = scan_stores(root)
    for url, reason in broken.items():
        log.warning("skipping %s: %s", url, reason)
    return stores


def find_store(root: str, dataset: str, name: str) -> FeatureStore:
    """The store named ``extractor`` or ``extractor@key`` (key prefix) of ``dataset``."""
    extractor, _, key = name.partition("@")
    stores, broken = scan_stores(root)
    candidates = [s for s in stores if s.dataset == dataset and s.extractor == extractor and s.key.startswith(key)]
    if not candidates:
        mine = [reason for url, reason in broken.items() if _names_store(url, dataset, extractor, key)]
        if mine:  # the store asked for exists but is damaged: say so, not "no store"
            raise StoreError(mine[0])
        known = sorted({f"{s.dataset}/{s.name}" for s in stores})
        raise StoreError(
            f"no store for extractor {name!r} of dataset {dataset!r} under {root}"
            + (f" (found: {', '.join(known)})" if known else "")
        )
    if len(candidates) > 1:
        raise StoreError(
            f"extractor {extractor!r} has {len(candidates)} stores in dataset {dataset!r} "
            f"({', '.join(s.name for s in candidates)}); name one as EXTRACTOR@KEY"
        )
    return candidates[0]


def _names_store(url: str, dataset: str, extractor: str, key: str) -> bool:
    """Whether ``url`` (``.../<dataset>/<extractor>/<key>.zarr``) is the store a name asks for."""
    parts = url.rstrip("/").split("/")
    return parts[-3:-1] == [dataset, extractor] and parts[-1].startswith(key)


def _exists(root: str) -> bool:
    fs, path = fsspec.core.url_to_fs(str(root))
    return fs.exists(path)


def check_usable(stores: Sequence[FeatureStore], *, allow_random_init: bool = False,
                 allow_simulated: bool = False) -> None:
    """Refuse to mix datasets or to use unreal features unless the user said so."""
    if len({s.dataset for s in stores}) > 1:
        raise StoreError("stores come from different datasets: "
                         + ", ".join(f"{s.name} ({s.dataset})" for s in stores))
    if len({s.attrs.get("clips_digest") for s in stores}) > 1:  # one dataset name, other clip lists
        raise StoreError(f"stores of dataset {stores[0].dataset!r} hold different clip lists: "
                         + ", ".join(f"{s.name} {len(s.clip_ids)} clips" for s in stores)
                         + "; extract or import them for the same annotations")
    for store in stores:
        if store.kind == "random-init" and not allow_random_init:
            raise StoreError(f"{store.name} holds random-init features; pass --allow-random-init to use them")
        if store.kind == "simulated" and not allow_simulated:
            raise StoreError(f"{store.name} holds simulated features; pass --allow-simulated to use them")


def verify(store: FeatureStore, ids: Sequence[str] | None = None, *, upgrade: bool = False) -> dict[str, Any]:
    """Read every done clip; unreadable or non-finite ones go back to pending.

    Returns the ids put back, so the next `extract` recomputes exactly those, and what the
    store's layout lacks for xarray (``layout``); ``upgrade`` adds it in place, metadata only
    (:func:`avvp_pipe.cache.layout.upgrade`), and reports it as ``upgraded``.
    """
    gaps = layout.upgrade(store) if upgrade else layout.layout_gaps(store.group)
    if upgrade and gaps:
        store = open_store(store.url)  # the handle's metadata predates the upgrade
    done = store.done_ids()  # one status read, not one per clip
    if ids is not None:
        done_set = set(done)
        done = [c for c in ids if c in done_set]
    ids = done
    bad: dict[str, str] = {}
    features = store.group["features"]
    present = _chunk_indices(store)
    for cid in ids:
        if present is not None and store.index[cid] not in present:
            bad[cid] = "missing: marked done but its feature chunk is not on storage"
            continue
        try:
            clip = np.asarray(features[store.index[cid]])
        except Exception as err:  # any decode/IO failure of one chunk marks that clip bad
            bad[cid] = f"unreadable: {type(err).__name__}: {err}"
            continue
        if not np.isfinite(clip).all():
            bad[cid] = "non-finite values"
    if bad:
        store.clear(list(bad))
    return {"store": store.url, "checked": len(ids), "reset": bad,
            "layout": [] if upgrade else gaps, "upgraded": gaps if upgrade else []}


def _chunk_indices(store: FeatureStore) -> set[int] | None:
    """Clip indices whose feature chunk exists (``features/c/<i>/0/0``), or None if unknown.

    A done clip without its chunk would read as zeros (zarr's fill value) without error.
    """
    from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding

    encoding = getattr(store.group["features"].metadata, "chunk_key_encoding", None)
    if not (isinstance(encoding, DefaultChunkKeyEncoding) and encoding.separator == "/"):
        return None
    fs, path = fsspec.core.url_to_fs(_join(store.url, "features", "c"))
    try:
        found = fs.find(path)
    except (FileNotFoundError, NotImplementedError):
        return set() if not fs.exists(path) else None
    present = set()
    for item in found:
        parts = item.rstrip("/").split("/")
        if len(parts) >= 3 and parts[-3].isdigit() and parts[-2] == "0" and parts[-1] == "0":
            present.add(int(parts[-3]))
    return present


def stores_at(target: str) -> list[FeatureStore]:
    """One store if ``target`` is a store, else every store under the cache root ``target``."""
    try:
        return [open_store(target)]
    except StoreError:
        if str(target).rstrip("/").endswith(".zarr"):
            raise  # a store that is there but damaged: its own error, not "no stores here"
        stores = list_stores(target)
    if not stores:
        raise StoreError(f"{target}: neither a feature store nor a cache folder with stores")
    return stores


def verify_all(target: str, *, upgrade: bool = False) -> list[dict[str, Any]]:
    """:func:`verify` of one store, or of every store under a cache root."""
    return [verify(store, upgrade=upgrade) for store in stores_at(target)]


def raise_if_reset(reports: Sequence[Mapping[str, Any]]) -> None:
    """PartialFailure (exit 1) when verify sent any clip back to pending."""
    reset = sum(len(r["reset"]) for r in reports)
    if reset:
        raise PartialFailure(f"{reset} clips were reset to pending; rerun extraction or import to recompute them")
