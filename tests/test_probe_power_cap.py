"""``benchmarks/probe_power_cap.py`` on the CPU: it refuses to run without a CUDA GPU (before
touching one) and rejects bad arguments; its timings need the GPU."""

import pytest
import torch

from ._benchmarks import load_benchmark

probe = load_benchmark("probe_power_cap")


def test_exits_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        probe.main(["--seq", "256"])


def test_rejects_a_bad_argument():
    with pytest.raises(SystemExit):
        probe.main(["--calls", "many"])
