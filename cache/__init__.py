"""The zarr feature cache every stage reads and writes (see cache/store.py for the layout)."""

from cache.store import (
    DONE,
    FAILED,
    PENDING,
    FeatureStore,
    StoreSpec,
    UnrealFeaturesWarning,
    check_usable,
    find_store,
    list_stores,
    open_or_create,
    open_store,
    store_key,
    verify,
)

__all__ = [
    "DONE", "FAILED", "PENDING", "FeatureStore", "StoreSpec", "UnrealFeaturesWarning",
    "check_usable", "find_store", "list_stores", "open_or_create", "open_store", "store_key", "verify",
]
