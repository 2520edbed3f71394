"""Finding, downloading and loading pretrained weights, the same way for every family.

torchvision, pretrainedmodels and torchvggish all cache downloads as
``<torch hub dir>/checkpoints/<file>`` (``torch.hub.load_state_dict_from_url``), so one
rule serves them all and a file any of them already fetched is reused:

- ``weights_dir`` given (offline mode): the expected file name must be in that folder;
  nothing is downloaded.
- otherwise: the torch hub cache, then one bounded download into it.

Any failure is a one-line :class:`~avvp_pipe.core.errors.WeightsError` naming the file, where it
was looked for and how to get it. There is no silent fallback to random weights.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch

from avvp_pipe.core.errors import WeightsError, one_line

log = logging.getLogger(__name__)

#: weights_identity of a seeded random initialisation (no file involved).
RANDOM_INIT = "random-init"
#: Seconds a download may wait on one network operation (connect or read) before failing.
DOWNLOAD_TIMEOUT_S = 20.0
_SHA_CACHE: dict[tuple[str, int, int], str] = {}
#: Whether files that differ from their published hash may be used (see trust_weights).
_TRUST: ContextVar[bool] = ContextVar("avvp_trust_weights", default=False)


def hub_checkpoints_dir() -> Path:
    """Where torch.hub (and the libraries built on it) cache weights; follows $TORCH_HOME."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def locate(entry: Mapping[str, Any], weights_dir: str | Path | None = None) -> tuple[str, Path | str]:
    """Status of one weights entry without network or hashing: (status, path).

    status is "present" (file found), "downloadable" (not cached yet, a URL is known and
    downloads are allowed) or "missing"; an entry without a file (weights shipped inside
    the package) is "present" with a descriptive path.
    """
    file = entry.get("file")
    if not file:
        return "present", f"(bundled with {entry.get('library', 'the package')})"
    folder = Path(weights_dir).expanduser() if weights_dir is not None else hub_checkpoints_dir()
    path = folder / file
    if path.is_file():
        return "present", path
    if weights_dir is None and entry.get("url"):
        return "downloadable", path
    return "missing", path


def fetch(name: str, entry: Mapping[str, Any], weights_dir: str | Path | None = None,
          *, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """The local path of ``entry``'s file for extractor ``name``, downloading only without weights_dir."""
    status, path = locate(entry, weights_dir)
    if status == "present":
        return Path(path)
    file, url = entry.get("file"), entry.get("url")
    if weights_dir is not None:
        how = f"download it from {url}" if url else "copy it there"
        raise WeightsError(f"Weights file {file!r} for extractor {name!r} not found in {weights_dir} "
                           f"(--weights-dir is offline: nothing is downloaded); {how} into that folder")
    if status == "missing":  # no URL known
        raise WeightsError(f"Weights file {file!r} for extractor {name!r} not found in {path.parent}; "
                           f"put it there or pass --weights-dir DIR holding it")
    try:
        download(url, path, hash_prefix=entry.get("sha256_prefix"), timeout_s=timeout_s)
    except Exception as err:  # network, HTTP, disk or hash failure: all mean "no weights"
        reason = one_line(err, limit=10_000)
        raise WeightsError(f"Weights file {file!r} for extractor {name!r} is not in {path.parent} and "
                           f"downloading {url} failed ({reason}); download it by hand into that folder "
                           f"or pass --weights-dir DIR holding it") from err
    return path


def download(url: str, dst: Path, *, hash_prefix: str | None, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> None:
    """torch.hub's downloader (temp file in the same folder, sha256-prefix check, then move),
    with every socket operation bounded by ``timeout_s`` so an unreachable host fails fast.

    torch.hub offers no timeout argument, hence the scoped socket default timeout.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        log.warning("downloading %s -> %s", url, dst)
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=hash_prefix, progress=sys.stderr.isatty())
    finally:
        socket.setdefaulttimeout(previous)


def file_sha256(path: Path) -> str:
    """Full sha256 hex of ``path``, memoised per (path, size, mtime) since files are large."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


@contextmanager
def trust_weights(enabled: bool = True) -> Iterator[None]:
    """Within this block, weights files whose hash differs from the published one are used.

    Why an explicit switch: a file in --weights-dir or the hub cache that is not the
    published one may be fine-tuned, re-saved, or tampered with; only the user can tell, so
    they say it (``extract --trust-weights``) and the file's own hash then keys the features.
    """
    token = _TRUST.set(enabled)
    try:
        yield
    finally:
        _TRUST.reset(token)


def file_identity(path: Path, expected_prefix: str | None = None) -> str:
    """First 16 hex of the file's sha256: the weights identity in configs and store keys.

    A file whose hash does not start with the published prefix is refused, unless the caller
    is inside :func:`trust_weights`; then it is used, loudly, and its own hash keys the features.
    """
    sha = file_sha256(path)
    if expected_prefix and not sha.startswith(expected_prefix):
        if not _TRUST.get():
            raise WeightsError(f"Weights file {path} has sha256 {sha[:16]}..., not the published "
                               f"{expected_prefix}...; refusing a file that may have been altered "
                               f"(pass --trust-weights to use it: its own hash then keys the features)")
        log.warning("weights file %s has sha256 %s..., not the published %s...; using it (--trust-weights), "
                    "and features are keyed by its own hash", path, sha[:16], expected_prefix)
    return sha[:16]


#: The only globals a checkpoint may pickle beyond torch's own: what numpy arrays and scalars
#: need to be rebuilt (torchvggish's PCA file holds numpy arrays). Nothing else numpy offers
#: is allowed: some of its functions evaluate strings, so "anything under numpy" runs code.
NUMPY_ARRAY_GLOBALS = frozenset({
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
    "numpy.ndarray", "numpy.dtype",
})


def load_state_dict(path: Path) -> dict[str, Any]:
    """``torch.load`` with weights_only=True; numpy arrays inside (old checkpoints such as
    torchvggish's PCA params) are allowed through :data:`NUMPY_ARRAY_GLOBALS` only."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as first:
        names = _pickled_globals(path)
        if names is None:
            raise WeightsError(f"Weights file {path} cannot be read as a PyTorch checkpoint "
                               f"({type(first).__name__}: {one_line(first, 200)})") from first
        refused = sorted(names - NUMPY_ARRAY_GLOBALS)
        if refused or not names:
            raise WeightsError(f"Weights file {path} pickles {', '.join(refused[:5]) or 'objects'}: refused, "
                               f"only tensors and numpy arrays are loaded (nothing in it was run)") from None
        try:
            with torch.serialization.safe_globals(_numpy_array_globals()):
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise WeightsError(f"Weights file {path} cannot be read as a PyTorch checkpoint of tensors "
                               f"and numpy arrays ({type(err).__name__}: {one_line(err, 200)})") from err


def _pickled_globals(path: Path) -> set[str] | None:
    """The globals a checkpoint's pickle names beyond torch's own; None if it is no checkpoint."""
    try:
        return set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:
        return None


def _numpy_array_globals() -> list[Any]:
    """:data:`NUMPY_ARRAY_GLOBALS` resolved, plus numpy's dtype classes (Float64DType, ...),
    which unpickling meets without listing them: data types, no code."""
    import numpy as np

    core = np._core if hasattr(np, "_core") else np.core
    objects: list[Any] = [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"]
    return objects + [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype]


def load_into(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: Path,
              name: str, ignore_prefixes: Iterable[str] = ()) -> None:
    """Load ``state_dict`` into the (headless) ``model``, strictly except for head keys.

    Keys under ``ignore_prefixes`` (the removed classifier) may or may not be in the file,
    so both the library's full checkpoint and a re-saved headless one load.
    """
    prefixes = tuple(ignore_prefixes)
    kept = OrderedDict((k, v) for k, v in state_dict.items() if not (prefixes and k.startswith(prefixes)))
    if hasattr(state_dict, "_metadata"):  # module versions (e.g. BatchNorm) steer old-file loading
        kept._metadata = state_dict._metadata  # type: ignore[attr-defined]
    try:
        missing, unexpected = model.load_state_dict(kept, strict=False, assign=True)
    except RuntimeError as err:  # shape mismatch
        raise WeightsError(f"Weights file {source} does not fit extractor {name!r}: "
                           f"{one_line(err)}") from err
    if missing or unexpected:
        raise WeightsError(f"Weights file {source} does not fit extractor {name!r}: "
                           f"{len(missing)} missing keys {missing[:3]}, "
                           f"{len(unexpected)} unexpected keys {unexpected[:3]}")


def build_model(spec: Any, factory: Callable[[], torch.nn.Module], *, weights_dir: str | Path | None,
                random_init: bool, ignore_prefixes: Iterable[str] = ()) -> tuple[torch.nn.Module, str]:
    """(model, weights_identity): ``factory()`` builds the headless architecture.

    random_init: seeded with 0 inside a forked RNG, so outputs are reproducible and the
    caller's global RNG is untouched. Pretrained: the architecture is built on the meta
    device (no wasted random init of ~100M parameters) and the file's tensors assigned.
    """
    if random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return factory(), RANDOM_INIT
    path = fetch(spec.name, spec.weights, weights_dir)
    identity = file_identity(path, spec.weights.get("sha256_prefix"))
    state_dict = load_state_dict(path)
    with torch.device("meta"):
        model = factory()
    load_into(model, state_dict, source=path, name=spec.name, ignore_prefixes=ignore_prefixes)
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        model = factory()  # a buffer outside the state dict: build for real, then load
        load_into(model, state_dict, source=path, name=spec.name, ignore_prefixes=ignore_prefixes)
    return model, identity

