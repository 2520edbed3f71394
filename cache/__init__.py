"""The zarr feature cache every stage reads and writes (see cache/store.py for the layout)."""

from avvp_pipe.cache.store import (
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
    raise_if_reset,
    store_key,
    stores_at,
    verify,
    verify_all,
)

__all__ = [
    "DONE", "FAILED", "PENDING", "FeatureStore", "StoreSpec", "UnrealFeaturesWarning",
    "check_usable", "find_store", "list_stores", "open_or_create", "open_store", "raise_if_reset", "store_key",
    "stores_at", "verify", "verify_all",
]
