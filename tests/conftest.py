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


@pytest.fixture
def one_thread():
    """For tests that hold two runs to the same bits (subprocesses: ``OMP_NUM_THREADS=1``).

    On the CPUs measured two threads give the same floats run to run too, but on a CI machine
    (2026-11-30, CPU unknown) two identical two-thread processes once differed by 5 float32 ulps
    in one step's loss, as a reduction whose order follows the threads' timing would; Adam and
    the dynamic method's sign flips then grow the difference into another run.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
