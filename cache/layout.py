"""The parts of a store's layout that let other tools read it: xarray, and remote readers.

A store made by this version opens in xarray as it is::

    ds = xr.open_zarr("cache/llp/vggish/<key>.zarr")
    ds.features.sel(clip="BjCEufrlXm4")          # (time, feature)
    ds.where(ds.split == "test")                 # other clips masked

Why each part:

- ``dimension_names`` (zarr v3 array metadata) on ``features`` ("clip", "time", "feature")
  and ``status`` ("clip",): xarray refuses a v3 array without them.
- ``clip`` and ``split``: (N,) string arrays over the ``clip`` dimension, so clips are picked
  by id and splits are a coordinate; the group attributes keep both too, as before, for
  :class:`~avvp_pipe.cache.store.FeatureStore` (reading them needs no array reads).
- consolidated metadata: every array's metadata in the group's ``zarr.json``, so a reader on
  S3 or GCS needs one request to open a store instead of one per array, and xarray opens it
  without its "non-consolidated metadata" warning.

Stores of the previous layout (no dimension names, no coordinate arrays) are upgraded in
place by :func:`upgrade`, which rewrites metadata documents and adds the two small
coordinate arrays; feature and status chunks are never touched.
"""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import zarr

from avvp_pipe.core.errors import AvvpError, StoreError
from avvp_pipe.core.io import atomic_write_url

if TYPE_CHECKING:
    import xarray

    from avvp_pipe.cache.store import FeatureStore

#: zarr v3 ``dimension_names`` of a store's arrays.
DIMENSIONS: dict[str, tuple[str, ...]] = {"features": ("clip", "time", "feature"), "status": ("clip",)}
#: Coordinate arrays over the ``clip`` dimension (``clip`` is xarray's index of it).
COORDINATES = ("clip", "split")
#: xarray reads this attribute (CF ``coordinates``) to make ``split`` a coordinate, not data.
_VARIABLE_ATTRS = {"coordinates": "split"}
#: The split of a clip the annotations give none (as ``cache ls`` calls it).
NO_SPLIT = "unsplit"
_COORDINATE_COMPRESSORS = (zarr.codecs.ZstdCodec(level=3, checksum=True),)
_WARNINGS_LOCK = threading.Lock()


def array_options(name: str) -> dict[str, Any]:
    """``create_array`` keyword arguments that name the axes of array ``name``."""
    return {"dimension_names": DIMENSIONS[name], "attributes": dict(_VARIABLE_ATTRS)}


def coordinate_values(clip_ids: Sequence[str], splits: Mapping[str, str]) -> dict[str, list[str]]:
    """The values of the ``clip`` and ``split`` arrays, in store order."""
    return {"clip": list(clip_ids), "split": [splits.get(cid, NO_SPLIT) for cid in clip_ids]}


def write_coordinates(group: zarr.Group, clip_ids: Sequence[str], splits: Mapping[str, str]) -> None:
    """Create the ``clip`` and ``split`` arrays (one chunk each) unless present, and fill them.

    Why not ``overwrite=True``: a concurrent creator may be writing the same values; creating
    only what is absent and writing identical bytes keeps both right.
    """
    n = len(clip_ids)
    for name, values in coordinate_values(clip_ids, splits).items():
        if name in group:
            array = group[name]
        else:
            try:
                array = group.create_array(name, shape=(n,), chunks=(max(n, 1),), dtype=str,
                                           dimension_names=("clip",), compressors=_COORDINATE_COMPRESSORS)
            except zarr.errors.ContainsArrayError:  # a concurrent creator made it first
                array = group[name]
        if n:
            array[:] = np.asarray(values, dtype=str)


def consolidate(url: str) -> None:
    """Write consolidated metadata into the group's ``zarr.json`` (one request opens the store).

    zarr warns that consolidated metadata is not yet in the v3 specification and about
    ``records/`` (plain JSON files, not a zarr node); both are expected here, so silenced.
    The lock: ``catch_warnings`` swaps process-wide filters, so two threads creating stores
    at once would otherwise restore each other's filters early.
    """
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # ZarrUserWarning subclasses it
        zarr.consolidate_metadata(url)


def layout_gaps(group: zarr.Group) -> list[str]:
    """What a store's layout lacks for xarray (empty for a store of this version)."""
    gaps = [f"{name} has no dimension names" for name, dims in DIMENSIONS.items()
            if tuple(group[name].metadata.dimension_names or ()) != dims]
    gaps += [f"no {name} coordinate array" for name in COORDINATES if name not in group]
    if group.metadata.consolidated_metadata is None:
        gaps.append("metadata not consolidated")
    return gaps


def upgrade(store: FeatureStore) -> list[str]:
    """Bring ``store`` to this layout in place; returns what was missing (empty: nothing done).

    Metadata only: the arrays' ``zarr.json`` documents gain their dimension names (written
    atomically, every other field kept), the coordinate arrays are added and the metadata
    consolidated. Feature and status chunks are not read or written, so a store in use by a
    reader stays valid throughout. Reopen the store afterwards (its handle caches metadata).
    """
    gaps = layout_gaps(store.group)
    if not gaps:
        return []
    if store.group.store.read_only:
        raise StoreError(f"{store.url}: opened read-only; cannot upgrade its layout ({'; '.join(gaps)})")
    for name, dims in DIMENSIONS.items():
        _set_dimension_names(store.url, name, dims)
    group = zarr.open_group(store.url, mode="r+", use_consolidated=False)  # the documents just written
    write_coordinates(group, store.clip_ids, store.splits)
    consolidate(store.url)
    return gaps


def _set_dimension_names(url: str, name: str, dims: tuple[str, ...]) -> None:
    """Add ``dimension_names`` and the coordinates attribute to one array's metadata document."""
    path = f"{url.rstrip('/')}/{name}/zarr.json"
    fs, fs_path = fsspec.core.url_to_fs(path)
    try:
        doc = json.loads(fs.cat_file(fs_path))
    except (OSError, ValueError) as err:
        raise StoreError(f"{path}: expected zarr metadata JSON but cannot read it ({type(err).__name__})") from None
    attrs = doc.setdefault("attributes", {})
    if doc.get("dimension_names") == list(dims) and all(attrs.get(k) == v for k, v in _VARIABLE_ATTRS.items()):
        return
    doc["dimension_names"] = list(dims)
    attrs.update(_VARIABLE_ATTRS)
    atomic_write_url(path, json.dumps(doc, indent=2).encode())


def open_xarray(store: FeatureStore, **kwargs: Any) -> xarray.Dataset:
    """``xr.open_zarr`` of ``store``: lazy (dask) ``features`` and ``status`` over clip ids.

    Pending clips read as zeros there (zarr's fill value): select ``ds.status == 1`` for done ones.
    """
    try:
        import xarray as xr
    except ImportError:
        raise AvvpError("xarray is not installed: pip install 'avvp-pipe[xarray]'") from None
    gaps = [g for g in layout_gaps(store.group) if g != "metadata not consolidated"]
    if gaps:
        raise StoreError(f"{store.url}: a store of an older layout ({'; '.join(gaps)}); "
                         f"run `avvp-pipe cache verify --upgrade {store.url}` to open it in xarray")
    return xr.open_zarr(store.url, **kwargs)
