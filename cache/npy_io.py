"""Interop with the AVVP ecosystem: folders of one float32 ``<11-char id>.npy`` per clip.

Every public AVVP codebase (HAN, MA, JoMoLD, CMPAE, ...) reads one folder per stream
(``vggish/`` 10x128, ``res152/`` 80x2048, ``r2plus1d_18/`` 10x512). ``import_npy`` turns
such a folder into a cache store of kind ``imported`` and ``export_npy`` writes a store back
out, so features computed elsewhere can be trained on here and ours can be used there.

Import reads every file's bytes once. A first pass reads only the .npy headers and the
file sizes and modification times: enough to check shapes and dtypes, pick the store
(its key hashes that listing, so a changed file means another store) and report bad
files. The second pass reads each pending file, hashes it (xxh3-128, kept in the clip's
record) and writes it; the folder's content hash is then derived from those per-file
hashes and added to the store's provenance, so a resumed import never rereads a file.
Bad files are reported one line each and marked failed; everything else is imported.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import xxhash

from avvp_pipe.cache.store import DTYPES, FeatureStore, StoreSpec, UnrealFeaturesWarning, open_or_create, open_store
from avvp_pipe.core.errors import AvvpError, PartialFailure, StoreError
from avvp_pipe.core.io import TEMP_SUFFIX, atomic_path
from avvp_pipe.pipeline.llp.annotations import clip_id

log = logging.getLogger(__name__)

#: Modality of the ecosystem's folder names, for names the extractor registry does not know.
KNOWN_MODALITIES: dict[str, str] = {
    "vggish": "audio",
    "res152": "visual-2d",
    "resnet152": "visual-2d",
    "r2plus1d_18": "visual-3d",
}
MODALITIES = ("audio", "visual-2d", "visual-3d")
BATCH = 32  # clips per write_clips call: ~20 MB of res152 features
#: Temp files of a killed export: ours (core.io) and those of versions before it.
_TEMP_GLOBS = (f".*.npy.*{TEMP_SUFFIX}", ".*.npy.tmp*")
_END = object()
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Inspected:
    """What the header pass learns about one file; ``digest`` is filled when it is loaded."""

    name: str
    cid: str | None
    shape: tuple[int, ...] = ()
    dtype: np.dtype | None = None
    fortran_order: bool = False
    data_offset: int = 0  # bytes of magic + header before the array data
    stat: tuple[int, int] = (0, 0)  # size, mtime_ns: a file changed between passes is refused
    digest: str = ""  # xxh3-128 hex of the whole file
    error: str | None = None


# ---------------------------------------------------------------------- import


def import_npy(
    src_dir: str | os.PathLike,
    root: str,
    dataset: str,
    as_extractor: str,
    *,
    annotations: str | os.PathLike | None = None,
    workers: int = 8,
    dtype: str = "float32",
    overwrite: bool = False,
    modality: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Import a folder of per-clip ``.npy`` files into a store of kind ``imported``.

    The clip list is the annotations' full list (all splits) when ``annotations`` is given,
    else the ids of the ``.npy`` files found. Each file's shape must match the extractor
    spec when the registry knows ``as_extractor``, else the files' most common shape, and
    all files must share one float dtype (the most common). ``modality`` is needed only
    when neither the registry nor :data:`KNOWN_MODALITIES` knows ``as_extractor``.
    Clips already done are skipped unless ``overwrite``. Returns a summary; if any file was
    bad, the rest is imported and then :class:`PartialFailure` is raised, carrying the same
    summary as its ``summary`` attribute.
    """
    started = time.perf_counter()
    src = Path(src_dir).expanduser().resolve()
    if not src.is_dir():
        raise AvvpError(f"{src}: folder not found (expected one .npy file per clip)")
    if dtype not in DTYPES:
        raise AvvpError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    registry_spec, registry_note = _registry_spec(as_extractor)
    files, ignored = _list_folder(src)
    inspected = _inspect_all(src, files, workers, progress)

    clip_ids, splits, list_source = _clip_list(inspected, annotations)
    known = set(clip_ids)
    _check_names(inspected, known, annotations)
    shape, shape_source = _expected_shape(inspected, registry_spec, registry_note)
    _check_contents(inspected, shape)
    good = [item for item in inspected if item.error is None]
    if not good:
        examples = "; ".join(f"{i.name}: {i.error}" for i in inspected[:3]) or "the folder has no files"
        raise AvvpError(f"{src}: no importable .npy file ({examples})")
    modality, modality_source = _modality(as_extractor, registry_spec, modality)

    store = open_or_create(root, _spec(dataset, as_extractor, modality, shape, dtype, src, _listing_hash(good),
                                       len(good), shape_source), clip_ids, splits)
    if overwrite:
        store.clear([item.cid for item in good])
    pending = set(store.pending([item.cid for item in good]))
    todo = [item for item in good if item.cid in pending]
    written = _load_and_write(src, store, todo, workers, progress)
    bad = {item.name: item.error for item in inspected if item.error is not None}
    done = set(store.done_ids())
    for item in inspected:  # a bad file of a listed clip leaves a reason in the store
        if item.error is not None and item.cid in known and item.cid not in done:
            store.mark_failed(item.cid, f"import from {src / item.name}: {item.error}")
    imported = [item for item in good if item.error is None]
    content = _content_hash(src, store, imported)
    store.add_provenance({"content_xxh3_128": content, "file_count": len(imported)})
    present = {item.cid for item in inspected}
    summary = {
        "store": store.url,
        "name": store.name,
        "dataset": dataset,
        "source": str(src),
        "content_xxh3_128": content,
        "clip_list": list_source,
        "clips": len(clip_ids),
        "files": len(inspected),
        "imported": written,
        "skipped_done": len(good) - len(todo),
        "bad": bad,
        "missing": [cid for cid in clip_ids if cid not in present],
        "ignored": ignored,
        "shape": list(shape),
        "shape_source": shape_source,
        "modality": modality,
        "modality_source": modality_source,
        "dtype": dtype,
        "seconds": round(time.perf_counter() - started, 2),
    }
    return summary


def raise_if_bad(summary: Mapping[str, Any]) -> None:
    """PartialFailure (exit 1) when some files of an import could not be imported."""
    bad = summary["bad"]
    if bad:
        name, reason = next(iter(bad.items()))
        raise PartialFailure(f"{len(bad)} of {summary['files']} files in {summary['source']} could not be "
                             f"imported (e.g. {name}: {reason}); the other {summary['imported'] + summary['skipped_done']} "
                             f"are in {summary['name']}")


def _registry_spec(name: str) -> tuple[Any | None, str]:
    """The registry's spec for ``name``, or None and why not (the registry is optional here)."""
    try:
        import avvp_pipe.extractors  # noqa: F401  (imports the family modules, which register themselves)
        from avvp_pipe.extractors import registry
    except Exception as err:  # noqa: BLE001 - a broken optional import must not stop an import
        return None, f"the extractor registry is unavailable ({type(err).__name__}: {err})"
    try:
        return registry.get_spec(name), f"the registry spec of {name!r}"
    except AvvpError:
        return None, f"{name!r} is not in the extractor registry"


def _list_folder(src: Path) -> tuple[list[str], list[str]]:
    """Regular files to inspect, and hidden names left alone (``.DS_Store``, temp files)."""
    files, ignored = [], []
    with os.scandir(src) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                ignored.append(entry.name)
            elif entry.is_file():
                files.append(entry.name)
            else:
                ignored.append(entry.name + "/")
    return sorted(files), sorted(ignored)


def _inspect_all(src: Path, names: Sequence[str], workers: int, progress: bool) -> list[_Inspected]:
    """Headers of all files, read by ``workers`` threads in blocks of files.

    Blocks, not one task per file: a header is a ~0.1 ms read and parse, about the cost of
    handing a task to a pool (per-file tasks took 2.9 s for 11,849 cached files, a plain
    loop 1.3 s), while threads still overlap the waits of a cold or network disk.
    """
    from avvp_pipe.core.progress import Progress

    bar = Progress(len(names), "reading headers", unit="files", enabled=progress)
    blocks = [names[i : i + _HEADER_BLOCK] for i in range(0, len(names), _HEADER_BLOCK)]
    out: list[_Inspected] = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for items in pool.map(lambda block: [_inspect(src / name) for name in block], blocks):
            out.extend(items)
            bar.update(len(items))
    bar.close()
    return out


_HEADER_BLOCK = 256


def _inspect(path: Path) -> _Inspected:
    """Read one file's .npy header and size; the data is read (once) when it is imported."""
    name = path.name
    if not name.endswith(".npy"):
        return _Inspected(name, None, error="not a .npy file (expected <11-char id>.npy)")
    try:
        cid = clip_id(name)
    except AvvpError:
        return _Inspected(name, None, error="wrong id: expected <11-char YouTube id>.npy, e.g. BjCEufrlXm4.npy")
    item = _Inspected(name, cid)
    try:
        with open(path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            item.stat = (stat.st_size, stat.st_mtime_ns)
            try:
                item.shape, item.dtype, item.fortran_order = _read_npy_header(handle)
            except (ValueError, EOFError, SyntaxError) as err:
                item.error = f"not a valid .npy file ({err})"
                return item
            item.data_offset = handle.tell()
    except OSError as err:
        item.error = f"unreadable: {err.strerror or err}"
        return item
    item.error = _header_error(item)
    return item


def _read_npy_header(handle: Any) -> tuple[tuple[int, ...], np.dtype, bool]:
    """(shape, dtype, fortran_order) of an open .npy file, leaving ``handle`` at the data."""
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
    elif version == (2, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(handle)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return tuple(shape), dtype, bool(fortran_order)


def _header_error(item: _Inspected) -> str | None:
    """Why the file cannot be loaded, judged from its header and size, if it cannot."""
    shape, dtype, size = item.shape, np.dtype(item.dtype), item.stat[0]
    if dtype.hasobject:
        return "holds Python objects (pickled), expected a float array"
    if not np.issubdtype(dtype, np.floating):
        return f"expected floating-point values but got {dtype}"
    if len(shape) != 2:
        return f"expected a 2-D (T, D) array but got shape {tuple(shape)}"
    expected = item.data_offset + int(np.prod(shape)) * dtype.itemsize
    if size < expected:
        return f"truncated: expected {expected} bytes for shape {tuple(shape)} but the file has {size}"
    if size > expected:
        return f"expected {expected} bytes for shape {tuple(shape)} but the file has {size} (trailing data)"
    return None


def _clip_list(inspected: Sequence[_Inspected], annotations) -> tuple[list[str], dict[str, str], str]:
    """The store's clip list: the annotations' full list, or the ids of the files found."""
    if annotations is not None:
        from avvp_pipe.pipeline.llp.annotations import load_annotations

        ann = load_annotations(annotations, require_dense=False)
        return list(ann.clips), {cid: clip.split for cid, clip in ann.clips.items()}, f"annotations {ann.root}"
    ids = sorted({item.cid for item in inspected if item.cid is not None})
    return ids, {}, "the files found"


def _check_names(inspected: Sequence[_Inspected], known: set[str], annotations) -> None:
    seen: dict[str, str] = {}
    for item in inspected:
        if item.error is not None or item.cid is None:
            continue
        if annotations is not None and item.cid not in known:
            item.error = f"wrong id: {item.cid} is not a clip of the annotations at {annotations}"
        elif item.cid in seen:
            item.error = f"duplicate: clip {item.cid} is also {seen[item.cid]}"
        else:
            seen[item.cid] = item.name


def _expected_shape(inspected: Sequence[_Inspected], registry_spec, registry_note: str
                    ) -> tuple[tuple[int, int], str]:
    """The registry's (T, D) if it knows the extractor, else the files' most common shape.

    The most common rather than the first: one stray file sorted first (``0_test.npy``)
    must not turn every other file into an error.
    """
    if registry_spec is not None:
        return (registry_spec.out_frames, registry_spec.out_dim), registry_note
    shapes = Counter(item.shape for item in inspected if item.error is None)
    if not shapes:
        return (0, 0), "no good file"
    shape, count = shapes.most_common(1)[0]
    return shape, f"the files ({count} of {sum(shapes.values())} readable files; {registry_note})"  # type: ignore[return-value]


def _check_contents(inspected: Sequence[_Inspected], shape: tuple[int, int]) -> None:
    """Every file must have the expected shape, and all of them one dtype (the most common)."""
    for item in inspected:
        if item.error is None and item.shape != tuple(shape):
            item.error = f"expected shape {tuple(shape)} but got {item.shape}"
    dtypes = Counter(item.dtype for item in inspected if item.error is None)
    if not dtypes:
        return
    common = dtypes.most_common(1)[0][0]
    for item in inspected:
        if item.error is None and item.dtype != common:
            item.error = f"expected dtype {common} (as {dtypes[common]} other files) but got {item.dtype}"


def _modality(name: str, registry_spec, given: str | None) -> tuple[str, str]:
    if given is not None:
        if given not in MODALITIES:
            raise AvvpError(f"--modality {given!r}: expected one of {', '.join(MODALITIES)}")
        return given, "--modality"
    if registry_spec is not None:
        return registry_spec.modality, f"the registry spec of {name!r}"
    if name in KNOWN_MODALITIES:
        return KNOWN_MODALITIES[name], f"the usual meaning of a {name!r} folder"
    raise AvvpError(f"--as {name!r}: not a registry extractor nor one of {', '.join(KNOWN_MODALITIES)}; "
                    f"pass --modality ({' | '.join(MODALITIES)})")


def _listing_hash(good: Sequence[_Inspected]) -> str:
    """sha256 over the sorted (name, size, mtime_ns) of the files: the store key's part.

    Why not the content hash: that needs every byte read before the store can be opened,
    a second full read of the folder (21 s of 82 s for LLP's res152 folder). A rewritten
    file changes its modification time, so it still leads to another store; a file
    rewritten with the same size within the file system's timestamp resolution would not,
    the heuristic make and rsync also rely on (``--overwrite`` re-imports regardless).
    """
    digest = hashlib.sha256()
    for item in sorted(good, key=lambda i: i.name):
        digest.update(f"{item.name}\t{item.stat[0]}\t{item.stat[1]}\n".encode())
    return digest.hexdigest()


def _content_hash(src: Path, store: FeatureStore, imported: Sequence[_Inspected]) -> str:
    """xxh3-128 over the sorted ``"<file name>\\t<file xxh3-128>\\n"`` lines of the imported files.

    Files loaded by this run carry their hash; those imported by an earlier run have it in
    their clip record; a file with neither is read and hashed now. Why xxh3-128 and not
    sha256: it identifies content just as well (this is provenance, not a defence against
    forgery) at ~8 GB/s, while sha256 ran at 362 MB/s on the CPU box (no SHA extensions)
    and cost 17 of 44 s importing LLP's res152 folder. ``xxh128sum`` recomputes it.
    """
    digest = xxhash.xxh3_128()
    for item in sorted(imported, key=lambda i: i.name):
        file_hash = item.digest or (store.record(item.cid) or {}).get("xxh3_128") or _file_hash(src / item.name)
        digest.update(f"{item.name}\t{file_hash}\n".encode())
    return digest.hexdigest()


def _file_hash(path: Path) -> str:
    digest = xxhash.xxh3_128()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _spec(dataset: str, name: str, modality: str, shape: tuple[int, int], dtype: str, src: Path,
          listing: str, count: int, shape_source: str) -> StoreSpec:
    config = {"source": "npy-folder", "listing_sha256": listing, "shape": list(shape), "as": name}
    provenance = {
        "note": f"imported from {src}",
        "imported_from": str(src),
        "file_count": count,
        "listing_sha256": listing,
        "shape_source": shape_source,
        "weights_identity": f"unknown: imported .npy files, assumed to be {name}",
    }
    return StoreSpec(dataset, name, modality, shape, config, kind="imported", dtype=dtype, provenance=provenance)


def _load_and_write(src: Path, store: FeatureStore, todo: Sequence[_Inspected], workers: int,
                    progress: bool) -> int:
    """Load files in a thread pool and write them in batches; returns clips written.

    Two batches are written at once (disjoint chunks, so no conflict) while the pool
    loads the next ones: reading, hashing and compressing all release the GIL, so this
    keeps every core busy.
    """
    from avvp_pipe.core.progress import Progress

    bar = Progress(len(todo), f"importing into {store.name}", enabled=progress)
    written = 0
    in_flight: list[Future] = []

    def finish(future: Future) -> None:
        nonlocal written
        count = future.result()  # re-raises a write error here
        written += count
        bar.update(count)

    with ThreadPoolExecutor(max(1, workers)) as pool, ThreadPoolExecutor(_WRITERS) as writers:
        loaded = _bounded_map(pool, lambda item: _load(src, item, store.dtype), todo, ahead=max(2 * BATCH, 4 * workers))
        batch: list[tuple[_Inspected, np.ndarray]] = []
        for item, array in zip(todo, loaded):
            if array is not None:
                batch.append((item, array))
            if len(batch) == BATCH:
                in_flight.append(writers.submit(_write_batch, store, batch))
                batch = []
                while len(in_flight) >= _WRITERS:
                    finish(in_flight.pop(0))
        if batch:
            in_flight.append(writers.submit(_write_batch, store, batch))
        for future in in_flight:
            finish(future)
    bar.close()
    return written


_WRITERS = 2


def _write_batch(store: FeatureStore, batch: Sequence[tuple[_Inspected, np.ndarray]]) -> int:
    """One write_clips call; each clip's record names its file and that file's hash."""
    records = {item.cid: {"imported_from": item.name, "xxh3_128": item.digest, "bytes": item.stat[0]}
               for item, _ in batch}
    store.write_clips([item.cid for item, _ in batch], np.stack([array for _, array in batch]),  # (n, T, D)
                      records=records)
    return len(batch)


def _load(src: Path, item: _Inspected, dtype: str) -> np.ndarray | None:
    """One clip as the store's dtype (and its file's hash), or None with ``item.error`` set."""
    try:
        with open(src / item.name, "rb") as handle:
            stat = os.fstat(handle.fileno())
            if (stat.st_size, stat.st_mtime_ns) != item.stat:
                item.error = "changed while being imported; rerun the import"
                return None
            data = handle.read()
    except OSError as err:
        item.error = f"unreadable: {err.strerror or err}"
        return None
    if len(data) != item.stat[0]:
        item.error = f"changed while being imported (read {len(data)} of {item.stat[0]} bytes); rerun the import"
        return None
    item.digest = xxhash.xxh3_128(data).hexdigest()
    count = int(np.prod(item.shape))
    array = np.frombuffer(data, dtype=item.dtype, count=count, offset=item.data_offset)
    array = array.reshape(item.shape, order="F" if item.fortran_order else "C")  # (T, D)
    with np.errstate(over="ignore"):
        stored = array.astype(dtype, copy=False)
    if not np.isfinite(stored).all():
        item.error = f"non-finite values (NaN or inf, as {dtype})"
        return None
    return stored


def _bounded_map(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], ahead: int) -> Iterator[R]:
    """``pool.map`` that keeps at most ``ahead`` results in flight, so memory stays bounded."""
    queue: list[Future] = []
    iterator = iter(items)
    for item in iterator:
        queue.append(pool.submit(fn, item))
        if len(queue) >= ahead:
            break
    while queue:
        future = queue.pop(0)
        nxt = next(iterator, _END)
        if nxt is not _END:
            queue.append(pool.submit(fn, nxt))
        yield future.result()


# ---------------------------------------------------------------------- export


def export_npy(
    store_url: str,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    allow_unreal: bool = False,
    workers: int = 4,
    progress: bool = False,
) -> dict[str, Any]:
    """Write each done clip of a store as a float32 ``<id>.npy``, atomically per file.

    Resumable: an existing file of the right shape and dtype is kept unless ``overwrite``.
    Random-init and simulated stores are refused unless ``allow_unreal``, because a folder
    of .npy files cannot carry that mark and would later pass for real features.
    """
    started = time.perf_counter()
    store = open_store(store_url, mode="r")
    if not store.is_real and not allow_unreal:
        raise StoreError(f"{store.name} holds {store.kind} features; a .npy folder would not say so "
                         "(pass --allow-unreal to export them anyway)")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    stale = _remove_stale_temp_files(out)
    done = store.done_ids()
    names = {cid: f"{clip_id(cid)}.npy" for cid in done}  # validates every id before writing
    expected = (*store.shape,)
    todo = [cid for cid in done if overwrite or not _npy_ok(out / names[cid], expected)]
    _write_files(store, out, todo, names, workers, progress)
    return {
        "store": store.url,
        "name": store.name,
        "kind": store.kind,
        "out": str(out),
        "written": len(todo),
        "skipped_existing": len(done) - len(todo),
        "not_done": len(store.clip_ids) - len(done),
        "stale_temp_files_removed": stale,
        "shape": list(expected),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _remove_stale_temp_files(out: Path) -> int:
    """Temp files left by a killed export (only our own naming pattern)."""
    count = 0
    for pattern in _TEMP_GLOBS:
        for path in out.glob(pattern):
            path.unlink(missing_ok=True)
            count += 1
    return count


def _npy_ok(path: Path, shape: tuple[int, ...]) -> bool:
    """Whether ``path`` is a complete float32 .npy of ``shape`` (header and size checked)."""
    try:
        data_size = path.stat().st_size
        with open(path, "rb") as handle:
            got, dtype, _ = _read_npy_header(handle)
            header_end = handle.tell()
    except (OSError, ValueError, EOFError, SyntaxError):
        return False
    return (tuple(got) == shape and dtype == np.float32
            and data_size == header_end + int(np.prod(shape)) * 4)


def _write_files(store: FeatureStore, out: Path, todo: Sequence[str], names: Mapping[str, str],
                 workers: int, progress: bool) -> None:
    from avvp_pipe.core.progress import Progress

    bar = Progress(len(todo), f"exporting {store.name}", enabled=progress)
    with warnings.catch_warnings(), ThreadPoolExecutor(max(1, workers)) as pool:
        warnings.simplefilter("ignore", UnrealFeaturesWarning)  # the caller allowed it explicitly
        for ids, block in store.iter_blocks(todo, block=BATCH):  # (n, T, D) float32
            list(pool.map(lambda pair: _atomic_save(out / names[pair[0]], pair[1]), zip(ids, block)))
            bar.update(len(ids))
    bar.close()


def _atomic_save(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array, dtype=np.float32))
