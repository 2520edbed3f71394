"""The notebook API: ``avvp_pipe.extract``, ``train``, ``select``, ``open_store``.

Why a top-level API: a researcher in a notebook wants one call per stage with the CLI's
defaults, not the five objects each command assembles (lhotse's ``compute_and_store_features``
and timm's ``create_model`` are the model). Each function builds the same options the CLI
builds and calls the same library function, and returns what the CLI prints from: the extract
summary (a dict), the :class:`~avvp_pipe.pipeline.train.engine.TrainResult`, the ranking (a
dict), a :class:`~avvp_pipe.cache.store.FeatureStore`. Options not named in a signature are
passed by their CLI name with underscores (``epochs=3``, ``mtsc="entire"``, ``batch_size=64``).

``import avvp_pipe`` loads none of this (``avvp_pipe/__init__.py`` exports it lazily); each
function imports its stage when called.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from avvp_pipe.core.errors import AvvpError

if TYPE_CHECKING:
    from avvp_pipe.cache.store import FeatureStore
    from avvp_pipe.pipeline.train.engine import TrainResult
    from avvp_pipe.pipeline.train.seeds import SeedsResult

PathLike = str | os.PathLike


def extract(videos: PathLike, cache: PathLike, extractors: str | Sequence[str] | None = None, *,
            dataset: str | None = None, annotations: PathLike | None = None, split: str | None = None,
            clips_file: PathLike | None = None, workers: int | None = None, scheduler: str | None = None,
            progress: bool = True, **options: Any) -> dict[str, Any]:
    """Decode clips once and write every extractor's features (``avvp-pipe extract``); the summary.

    ``options`` are :class:`~avvp_pipe.pipeline.extract.plan.ExtractOptions` fields
    (``device="auto"``, ``precision``, ``dtype``, ``random_init``, ``weights_dir``, ...). A clip
    that failed is in ``summary["failures"]``; unlike the CLI this does not raise for it.
    """
    from avvp_pipe.pipeline.extract import ExtractOptions, find_clips, resolve_names, run_extract

    names = [extractors] if isinstance(extractors, str) else extractors
    chosen = resolve_names([n for part in names for n in part.split(",")] if names is not None else None)
    opts = ExtractOptions(extractors=tuple(chosen), **_only(ExtractOptions, options, exclude=("extractors",)))
    clips = find_clips(videos, dataset=dataset, annotations=annotations, split=split, clips_file=clips_file)
    return run_extract(videos, cache, clips, opts, workers=workers, scheduler=scheduler, progress=progress)


def train(cache: PathLike, dataset: str, annotations: PathLike, audio: str, visual: str, out: PathLike, *,
          visual_3d: str | None = None, resume: bool = False, overwrite: bool = False,
          allow_random_init: bool = False, allow_simulated: bool = False, progress: bool = True,
          seeds: int = 1, **recipe: Any) -> TrainResult | SeedsResult:
    """Train HAN (+MTSC) on one cached pairing into run folder ``out`` (``avvp-pipe train``).

    ``recipe`` are :class:`~avvp_pipe.pipeline.train.config.TrainConfig` fields (``epochs``,
    ``mtsc``, ``device="auto"``, ...). ``avvp_pipe.pipeline.train.summary(result)`` is the CLI's table.
    ``seeds=K > 1`` is ``train --seeds K``: a SeedsResult (``format_seeds`` prints it).
    """
    from avvp_pipe.pipeline.train import TrainConfig, train_run, train_seeds_run

    config = TrainConfig(**_only(TrainConfig, recipe))
    if seeds != 1:
        return train_seeds_run(str(cache), dataset, annotations, audio, visual, visual_3d, config, out, seeds,
                               resume=resume, overwrite=overwrite, allow_random_init=allow_random_init,
                               allow_simulated=allow_simulated, progress=progress)
    return train_run(str(cache), dataset, annotations, audio, visual, visual_3d, config, out, resume=resume,
                     overwrite=overwrite, allow_random_init=allow_random_init, allow_simulated=allow_simulated,
                     progress=progress)


def select(cache: PathLike, dataset: str, annotations: PathLike, audio: str | Sequence[str],
           visual: str | Sequence[str], out: PathLike, *, visual_3d: str | None = None,
           allow_random_init: bool = False, allow_simulated: bool = False, **options: Any) -> dict[str, Any]:
    """Rank the audio x visual pairings (``avvp-pipe select``); the ranking record (also in ``out``).

    ``options`` are :class:`~avvp_pipe.selection.upper_bound.SelectOptions` fields (``method``,
    ``validate``, ``seeds``, ``score``, ...) and TrainConfig fields (``epochs``, ``device``, ...).
    ``avvp_pipe.selection.report.format_ranking(ranking)`` is the CLI's table.
    """
    from avvp_pipe.pipeline.llp.annotations import load_annotations
    from avvp_pipe.pipeline.train import TrainConfig
    from avvp_pipe.selection.upper_bound import Candidates, SelectOptions, run_select

    chosen = _only(SelectOptions, options, others=TrainConfig)
    select_options = SelectOptions(**chosen)
    config = TrainConfig(**_only(TrainConfig, {k: v for k, v in options.items() if k not in chosen}),
                         select_metric=select_options.score)
    cands = Candidates(cache=str(cache), dataset=dataset, audio=_names(audio), visual=_names(visual),
                       visual_3d=visual_3d, allow_random_init=allow_random_init, allow_simulated=allow_simulated)
    return run_select(cands, load_annotations(annotations), config, str(out), select_options)


def open_store(target: PathLike, name: str | None = None, *, dataset: str | None = None) -> FeatureStore:
    """A feature store: by its URL, or by ``name`` (``extractor`` or ``extractor@KEY``) and
    ``dataset`` under the cache root ``target``. ``store.to_xarray()`` opens it in xarray."""
    from avvp_pipe.cache import find_store
    from avvp_pipe.cache import open_store as open_url

    if name is None:
        return open_url(str(target))
    if dataset is None:
        raise AvvpError(f"open_store({str(target)!r}, {name!r}): expected dataset= with a store name")
    return find_store(str(target), dataset, name)


def _only(cls: type, given: Mapping[str, Any], *, exclude: Sequence[str] = (), others: type | None = None) -> dict:
    """The entries of ``given`` that are fields of dataclass ``cls``; a name that is a field of
    neither ``cls`` nor ``others`` is an error naming the accepted ones."""
    names = {f.name for f in fields(cls)} - set(exclude)
    known = names | ({f.name for f in fields(others)} if others is not None else set())
    unknown = sorted(set(given) - known)
    if unknown:
        raise AvvpError(f"unknown option {unknown[0]!r}: expected one of {', '.join(sorted(known))}")
    return {k: v for k, v in given.items() if k in names}


def _names(value: str | Sequence[str]) -> tuple[str, ...]:
    parts = value.split(",") if isinstance(value, str) else list(value)
    return tuple(p.strip() for p in parts if p.strip())
