"""Shared pytest fixtures: the real LLP files when present, small self-contained ones always."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests are CPU-only and must not contend: one intra-op thread keeps timings stable on 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_LLP = REPO.parent / "shared" / "llp"


@pytest.fixture(scope="session")
def real_llp() -> Path:
    """The real LLP annotation folder (../shared/llp), or skip."""
    if not (SHARED_LLP / "AVVP_train.csv").is_file():
        pytest.skip("real LLP annotation files (../shared/llp) are not present")
    return SHARED_LLP
