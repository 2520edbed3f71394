"""The candidates of a selection: every audio store with every visual store, checked before any work.

Every store of every pairing is checked before any training starts (missing clips, datasets,
random-init and simulated features), so a bad candidate fails the run at once rather than
after hours. The trained protocols, the training-free scores and the dask workers all read a
pairing's features through :func:`load`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from avvp_pipe.cache.store import FeatureStore, check_usable
from avvp_pipe.core.errors import AvvpError
from avvp_pipe.pipeline.llp.annotations import Annotations
from avvp_pipe.pipeline.train.pairing import ROLES, PairingData, check_complete, load_pairing, open_pairing_stores


@dataclass(frozen=True)
class Candidates:
    """The extractors to pair: every audio store with every 2D visual store (and the one 3D store)."""

    cache: str
    dataset: str
    audio: tuple[str, ...]
    visual: tuple[str, ...]
    visual_3d: str | None = None
    allow_random_init: bool = False
    allow_simulated: bool = False

    def pairs(self) -> list[tuple[str, str]]:
        """(audio, visual) names, audio-major, as given."""
        if not self.audio or not self.visual:
            raise AvvpError("select: expected at least one --audio and one --visual extractor but got none")
        return list(itertools.product(self.audio, self.visual))


@dataclass
class Pairing:
    """A checked pairing: its stores, its name and store keys (what results are keyed by)."""

    audio: str
    visual: str
    stores: dict[str, FeatureStore]

    @property
    def name(self) -> str:
        return "+".join(self.stores[r].extractor for r in ROLES if r in self.stores)

    def store_keys(self) -> dict[str, str]:
        return {role: f"{s.extractor}@{s.key}" for role, s in self.stores.items()}


def check_candidates(cands: Candidates, annotations: Annotations, splits: Sequence[str]) -> list[Pairing]:
    """Open and check every pairing's stores for ``splits`` before any work: errors come at once."""
    pairings = []
    for audio, visual in cands.pairs():
        stores = open_pairing_stores(cands.cache, cands.dataset, audio, visual, cands.visual_3d,
                                     allow_random_init=cands.allow_random_init,
                                     allow_simulated=cands.allow_simulated)
        for split in dict.fromkeys(splits):
            ids = annotations.split_ids(split)
            if not ids:
                raise AvvpError(f"split {split!r} has no clips in the annotations at {annotations.root}")
            check_complete(stores, ids, split)
        pairings.append(Pairing(audio, visual, stores))
    unique = {s.url: s for p in pairings for s in p.stores.values()}
    check_usable(list(unique.values()), allow_random_init=cands.allow_random_init,
                 allow_simulated=cands.allow_simulated)  # one dataset across ALL pairings
    names = [p.name for p in pairings]
    if len(set(names)) != len(names):
        raise AvvpError(f"select: expected distinct pairings but got duplicates in {', '.join(names)}")
    return pairings


def load(cands: Candidates, annotations: Annotations, audio: str, visual: str, splits: Sequence[str]) -> PairingData:
    """One pairing's features for ``splits`` (the checks of load_pairing included)."""
    return load_pairing(cands.cache, cands.dataset, annotations, list(splits), audio=audio,
                        visual=visual, visual_3d=cands.visual_3d,
                        allow_random_init=cands.allow_random_init, allow_simulated=cands.allow_simulated)
