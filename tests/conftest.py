"""Shared test fixtures.

The real FER2013 archive is looked for in ``$FERNOISE_DATA_DIR`` and then in
``../shared/data`` beside the repository; tests that need it skip cleanly when it
is absent.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path | None:
    candidates = [os.environ.get("FERNOISE_DATA_DIR"), str(REPO.parent / "shared" / "data")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "fer2013-trainval.tar.gz").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def fer2013_archive() -> Path:
    found = real_data_dir()
    if found is None:
        pytest.skip("FER2013 archive not found (set FERNOISE_DATA_DIR or place it in ../shared/data)")
    return found / "fer2013-trainval.tar.gz"


@pytest.fixture(autouse=True)
def _few_threads():
    # CI has 2 cores; keep intra-op threads bounded so subprocess tests do not oversubscribe.
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
