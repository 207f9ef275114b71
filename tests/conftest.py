"""Test set-up shared by every test module.

- CPU runs use Triton's interpreter: TRITON_INTERPRET must be set before any ``@triton.jit``
  function is created, so it is set here, before the package is imported by any test module.
- ``@pytest.mark.gpu`` tests skip without CUDA.
- Fixtures: ``data_dir`` (``tests/data/``, the small data files committed with the tests;
  tests never read paths outside the repository) and ``one_thread`` (one torch thread for a
  module). The VBench prompt subset has its own helpers in ``tests/_vbench.py``.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

DATA_DIR = Path(__file__).resolve().parent / "data"

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m gpu` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test downloads by accident (LPIPS weights, prompt files): tests of a fetch path stub it
    or opt in by deleting XATTN_VIDEO_OFFLINE (test_lpips's real-weights fixture fetches)."""
    monkeypatch.setenv("XATTN_VIDEO_OFFLINE", "1")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``tests/data/``: small data files committed with the tests."""
    return DATA_DIR


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch (OpenMP) thread for the module's tests: with tiny tensors on a shared 2-core
    CI box, thread barriers cost milliseconds per op and dominate the run time. Use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
