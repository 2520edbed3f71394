"""One audio/visual pairing's features, read once from the cache into memory.

Training (stage two), selection (stage three) and analysis all start here, so the checks
that make their numbers trustworthy live in one place: the stores exist, come from one
dataset, hold every clip of the splits a run needs, and are real features unless the user
allowed random-init or simulated ones.

The 2D visual stream is kept as per-second means (N, 10, D), not 80 frames: HAN's fc_v is
linear, so averaging then projecting equals projecting then averaging (models/han.py), and
the data is 8x smaller in memory and compute.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from avvp_pipe.cache.store import FeatureStore, check_usable, find_store
from avvp_pipe.core.errors import StoreError
from avvp_pipe.pipeline.llp.annotations import SECONDS, Annotations

ROLES = ("audio", "visual", "visual_3d")
#: The store modality each role accepts.
ROLE_MODALITY = {"audio": "audio", "visual": "visual-2d", "visual_3d": "visual-3d"}


@dataclass
class SplitArrays:
    """Features and weak labels of one split, rows in annotation order."""

    ids: list[str]
    audio: np.ndarray  # (N, 10, Da) float32
    visual: np.ndarray  # (N, 10, Dv) float32, per-second means of the 2D frames
    visual_3d: np.ndarray | None  # (N, 10, D3) float32, or None without a 3D stream
    labels: np.ndarray  # (N, 25) float32 multi-hot clip labels

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class PairingData:
    """The stores of one pairing and their features for the requested splits."""

    dataset: str
    stores: dict[str, FeatureStore]  # role -> store ("visual_3d" absent without a 3D stream)
    splits: dict[str, SplitArrays] = field(default_factory=dict)

    @property
    def dims(self) -> dict[str, int | None]:
        """Feature widths per role: HAN's input projections are sized from these."""
        return {role: (self.stores[role].shape[1] if role in self.stores else None) for role in ROLES}

    @property
    def name(self) -> str:
        """``audio+visual[+visual_3d]`` extractor names, e.g. ``vggish+resnet152+r2plus1d_18``."""
        return "+".join(self.stores[r].extractor for r in ROLES if r in self.stores)

    def store_keys(self) -> dict[str, str]:
        """role -> ``extractor@key``: what a run's results are keyed by."""
        return {role: f"{store.extractor}@{store.key}" for role, store in self.stores.items()}


def open_pairing_stores(cache: str, dataset: str, audio: str, visual: str, visual_3d: str | None = None,
                        *, allow_random_init: bool = False, allow_simulated: bool = False
                        ) -> dict[str, FeatureStore]:
    """Find the stores named ``extractor[@key]`` and check they may be used together."""
    names = {"audio": audio, "visual": visual, "visual_3d": visual_3d}
    stores = {role: find_store(cache, dataset, name) for role, name in names.items() if name}
    for role, store in stores.items():
        if store.modality != ROLE_MODALITY[role]:
            raise StoreError(f"--{role.replace('_', '-')} {store.name}: expected a {ROLE_MODALITY[role]} "
                             f"store but it holds {store.modality} features")
    check_usable(list(stores.values()), allow_random_init=allow_random_init, allow_simulated=allow_simulated)
    return stores


def load_pairing(cache: str, dataset: str, annotations: Annotations, splits: Sequence[str], *,
                 audio: str, visual: str, visual_3d: str | None = None,
                 allow_random_init: bool = False, allow_simulated: bool = False) -> PairingData:
    """Read the splits' features of one pairing into memory, refusing incomplete stores."""
    stores = open_pairing_stores(cache, dataset, audio, visual, visual_3d,
                                 allow_random_init=allow_random_init, allow_simulated=allow_simulated)
    data = PairingData(dataset=dataset, stores=stores)
    for split in dict.fromkeys(splits):  # unique, in order
        ids = annotations.split_ids(split)
        if not ids:
            raise StoreError(f"split {split!r} has no clips in the annotations at {annotations.root}")
        check_complete(stores, ids, split)
        arrays = {role: read_per_second(store, ids) for role, store in stores.items()}
        data.splits[split] = SplitArrays(ids=ids, audio=arrays["audio"], visual=arrays["visual"],
                                         visual_3d=arrays.get("visual_3d"),
                                         labels=annotations.weak_labels(ids))
    return data


def check_complete(stores: dict[str, FeatureStore], ids: Sequence[str], split: str) -> None:
    """Every clip of the split must be done in every store; name the first missing ones."""
    for role, store in stores.items():
        missing = store.missing(ids)
        if missing:
            shown = ", ".join(missing[:5]) + (f" ... (+{len(missing) - 5} more)" if len(missing) > 5 else "")
            raise StoreError(f"{store.name} ({store.url}) lacks {len(missing)} of the {len(ids)} {split} "
                             f"clips: {shown}; run avvp-pipe extract for them first")


def read_per_second(store: FeatureStore, ids: Sequence[str], block: int = 512) -> np.ndarray:
    """(N, 10, D) float32: frame stores are averaged per second while reading, block by block."""
    frames = store.shape[0]
    if frames % SECONDS:
        raise StoreError(f"{store.name}: expected a multiple of {SECONDS} time steps per clip but got {frames}")
    out = np.empty((len(ids), SECONDS, store.shape[1]), dtype=np.float32)
    row = 0
    for _, feats in store.iter_blocks(list(ids), block):  # (n, T, D)
        n = feats.shape[0]
        out[row : row + n] = feats.reshape(n, SECONDS, frames // SECONDS, -1).mean(axis=2)  # (n, 10, D)
        row += n
    return out
