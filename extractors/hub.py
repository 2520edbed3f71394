"""Weights files on the Hugging Face hub (timm's and transformers' models), found the way
those libraries find them, with the same promises as :mod:`avvp_pipe.extractors.weights`.

A spec's weights entry with ``source: "hf_hub"`` names a ``repo`` and a ``file`` in it:

- ``weights_dir`` given (offline mode): the file must be at ``<weights_dir>/<repo>/<file>``
  (what ``hf download REPO FILE --local-dir <weights_dir>/<repo>`` writes) or inside an HF
  cache rooted at ``weights_dir`` (a copied ``~/.cache/huggingface/hub``); nothing is
  downloaded.
- otherwise: the HF hub cache (``$HF_HOME``, shared with every HF library), then one
  download into it through ``huggingface_hub`` (its own timeouts; ``HF_HUB_OFFLINE=1``
  forbids it).

Every failure is a one-line :class:`~avvp_pipe.core.errors.WeightsError` naming the repo,
the file and where it was looked for. There is no silent fallback to random weights.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from avvp_pipe.core.errors import WeightsError, one_line

log = logging.getLogger(__name__)


def entry(repo: str, file: str, library: str, *, revision: str = "main") -> dict[str, Any]:
    """A weights entry for ``file`` of HF repo ``repo`` (the url only names it; the hub client downloads)."""
    return {"library": library, "source": "hf_hub", "repo": repo, "file": file, "revision": revision,
            "id": repo, "url": f"https://huggingface.co/{repo}/resolve/{revision}/{file}"}


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _cached(repo: str, file: str, revision: str, cache_dir: Path | None) -> Path | None:
    """The file in an HF cache (default: the user's), without any network access."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, file, cache_dir=str(cache_dir) if cache_dir else None,
                                   revision=revision)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def local_dir_path(spec_entry: Mapping[str, Any], weights_dir: str | Path) -> Path:
    """Where ``--weights-dir`` expects the file: ``<weights_dir>/<repo>/<file>``."""
    return Path(weights_dir).expanduser() / str(spec_entry["repo"]) / str(spec_entry["file"])


def locate(spec_entry: Mapping[str, Any], weights_dir: str | Path | None = None) -> tuple[str, Path | str]:
    """(status, path) as :func:`avvp_pipe.extractors.weights.locate`: present, downloadable or missing."""
    repo, file, revision = spec_entry["repo"], spec_entry["file"], spec_entry.get("revision", "main")
    if weights_dir is not None:
        path = local_dir_path(spec_entry, weights_dir)
        if path.is_file():
            return "present", path
        cached = _cached(repo, file, revision, Path(weights_dir).expanduser())
        return ("present", cached) if cached else ("missing", path)
    cached = _cached(repo, file, revision, None)
    if cached:
        return "present", cached
    return ("missing" if _offline() else "downloadable"), f"hf://{repo}/{file} (Hugging Face cache)"


def missing_message(name: str, spec_entry: Mapping[str, Any], weights_dir: str | Path | None) -> str:
    """One line: which file of which repo, where it was looked for, how to get it."""
    repo, file = spec_entry["repo"], spec_entry["file"]
    if weights_dir is not None:
        target = local_dir_path(spec_entry, weights_dir)
        return (f"Weights file {file!r} of Hugging Face repo {repo!r} for extractor {name!r} not found at "
                f"{target} (--weights-dir is offline: nothing is downloaded); get it with "
                f"`hf download {repo} {file} --local-dir {target.parent}` or from {spec_entry['url']}")
    return (f"Weights file {file!r} of Hugging Face repo {repo!r} for extractor {name!r} is not in the "
            f"Hugging Face cache and HF_HUB_OFFLINE forbids downloading it; unset it or pass "
            f"--weights-dir DIR holding {repo}/{file}")


def fetch(name: str, spec_entry: Mapping[str, Any], weights_dir: str | Path | None = None) -> Path:
    """The local path of the entry's file, downloading into the HF cache only without ``weights_dir``."""
    status, path = locate(spec_entry, weights_dir)
    if status == "present":
        return Path(path)
    if status == "missing":
        raise WeightsError(missing_message(name, spec_entry, weights_dir))
    from huggingface_hub import hf_hub_download

    repo, file = spec_entry["repo"], spec_entry["file"]
    log.warning("downloading %s from Hugging Face repo %s", file, repo)
    try:
        return Path(hf_hub_download(repo, file, revision=spec_entry.get("revision", "main")))
    except Exception as err:  # network, HTTP, auth or disk failure: all mean "no weights"
        reason = one_line(err)
        raise WeightsError(f"Weights file {file!r} of Hugging Face repo {repo!r} for extractor {name!r} is "
                           f"not in the Hugging Face cache and downloading it failed ({reason}); download "
                           f"it by hand (`hf download {repo} {file}`) or pass --weights-dir DIR holding "
                           f"{repo}/{file}") from err


def load_safetensors(path: Path, name: str) -> dict[str, Any]:
    """A ``.safetensors`` file's tensors (no pickle, so no code can run); unreadable is a WeightsError."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as err:
        raise WeightsError(f"Weights file {path} for extractor {name!r} cannot be read as safetensors "
                           f"({type(err).__name__}: {one_line(err, 200)})") from err
