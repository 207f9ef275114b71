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
