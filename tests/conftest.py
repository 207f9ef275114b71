"""Test set-up shared by every test module.

- CPU runs use Triton's interpreter: TRITON_INTERPRET must be set before any ``@triton.jit``
  function is created, so it is set here, before the package is imported by any test module.
- ``@pytest.mark.gpu`` tests skip without CUDA.
- Fixtures: ``data_dir`` (``tests/data/``, the small data files committed with the tests;
  tests never read paths outside the repository) and ``one_thread`` (one torch thread for a
  module). The VBench prompt subset has its own helpers in ``tests/_vbench.py``.
"""

import importlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

DATA_DIR = Path(__file__).resolve().parent / "data"

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def layout_problem() -> str | None:
    """Why the tests cannot import the package as installed, or None.

    ``pipelines/``, ``prompts/`` and ``metrics/`` sit at the repo root and install into
    ``xattn_video``; with a non-editable install, ``python -m pytest`` from the repo root puts the
    repo's own ``xattn_video/`` (which has none of them) first on ``sys.path``, and each test
    module importing ``xattn_video.pipelines`` would fail to collect with a bare
    ModuleNotFoundError."""
    try:
        importlib.import_module("xattn_video.pipelines")
    except ModuleNotFoundError as e:
        if e.name == "xattn_video":
            return "xattn_video is not installed: pip install -e '.[dev]' (see the README)"
        if e.name != "xattn_video.pipelines":
            raise
        import xattn_video

        return (
            f"cannot import xattn_video.pipelines: xattn_video comes from {xattn_video.__path__[0]}"
            ", the repo's source folder, without the installed package's layout. Install it as "
            "the README says (pip install -e '.[dev]'), or, against a non-editable install, run "
            "python -P -m pytest --import-mode=append ..."
        )
    return None


def pytest_configure(config):
    problem = layout_problem()
    if problem is not None:
        raise pytest.UsageError(problem)


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
