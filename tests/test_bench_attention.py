"""``benchmarks/bench_attention.py`` on the CPU (interpreter): its "whole op from the kernels" rows
compose exactly what the op runs (bit for bit against ``xattention(backend="triton")``, within
fp32 rounding of the torch backend), and it does not offer the Gluon estimate off sm90. Its
timings need a CUDA GPU (the script exits without one)."""

import pytest
import torch

from xattn_video.attention import xattention

from ._benchmarks import load_benchmark

ba = load_benchmark("bench_attention")


def test_composed_whole_op_is_the_op():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 640, 64) for _ in range(3))  # 5 blocks of 128
    composed = ba._whole_op(q, k, v, "bf16", "bf16")
    op = dict(ratio=0.3, stride=8, block_size=ba.BLOCK)
    assert torch.equal(composed, xattention(q, k, v, backend="triton", **op))
    torch.testing.assert_close(composed, xattention(q, k, v, backend="torch", **op))


def test_no_gluon_estimate_off_sm90():
    q = torch.randn(1, 1, 256, 64)
    assert ba._gluon_estimate_runs(q, q, 8) is False


def test_exits_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        ba.main(["--seq", "256"])


def test_cudnn_baseline_is_warmed_up_before_its_first_timing(monkeypatch):
    """A process's first back-to-back timing of cuDNN ran 6% slow on an H100 (67k tokens):
    the baseline row comes from ``baseline_ms`` (3 untimed calls first), then the call-by-call
    row."""
    log = []
    monkeypatch.setattr(ba, "baseline_ms", lambda fn: log.append(("baseline_ms",)) or 1.0)
    monkeypatch.setattr(
        ba, "median_ms", lambda fn, reps, warmup=1: log.append(("median_ms", reps, warmup)) or 2.0
    )
    monkeypatch.setattr(ba, "bench_ms", lambda fn: log.append(("bench_ms",)) or 3.0)
    rows = []
    ba._cudnn_baseline(lambda: None, lambda name, ms: rows.append((name, ms)))
    assert log == [("baseline_ms",), ("median_ms", 8, 2)]
    assert rows == [("sdpa cuDNN dense", 1.0), ("sdpa cuDNN dense, call by call", 2.0)]
