"""Test set-up: CPU runs use Triton's interpreter; ``@pytest.mark.gpu`` tests skip without CUDA.

TRITON_INTERPRET must be set before any ``@triton.jit`` function is created, so it is set here,
before the package is imported by any test module.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m gpu` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
