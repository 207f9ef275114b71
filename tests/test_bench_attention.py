"""``benchmarks/bench_attention.py`` on the CPU (interpreter): its "whole op from the kernels" rows
compose exactly what the op runs (bit for bit against ``xattention(backend="triton")``, within
fp32 rounding of the torch backend), and it does not offer the Gluon estimate off sm90. Its
timings need a CUDA GPU (the script exits without one)."""

from types import SimpleNamespace

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


def test_rows_give_ratios_to_the_first_cudnn_row_and_effective_tflops(monkeypatch):
    """The table's arithmetic on CPU with faked timings (baseline 4 ms, every other row 2 ms):
    each ratio is the row's time over the first cuDNN row's (the end-of-run cuDNN row too),
    effective TFLOP/s are density x 4 B H N^2 D over the time, and an estimate row's density is
    its share of dense attention's FLOPs, 1 / (2 S)."""
    monkeypatch.setattr(ba, "baseline_ms", lambda fn: 4.0)
    monkeypatch.setattr(ba, "median_ms", lambda fn, reps, warmup=1: 4.0)
    monkeypatch.setattr(ba, "bench_ms", lambda fn: 2.0)
    monkeypatch.setattr(ba, "xattention", lambda *a, **kw: None)  # the whole-op rows: timed only
    monkeypatch.setattr(ba, "_whole_op", lambda *a, **kw: None)
    args = SimpleNamespace(no_flex=True, sweep=False, seq=[512])
    rows = ba.run_length(512, 2, 64, [0.5], [8, 16], args, device="cpu")
    by = {r["method"]: r for r in rows}
    assert rows[0]["method"] == "sdpa cuDNN dense" and rows[0]["ratio_to_cudnn"] == 1.0
    assert by["sdpa cuDNN dense, call by call"]["ratio_to_cudnn"] == 1.0
    assert by["sdpa cuDNN dense, again at the end"]["ratio_to_cudnn"] == 0.5
    flops = 4 * 2 * 512 * 512 * 64
    sparse = by["ours sparse d=0.5"]
    assert sparse["ratio_to_cudnn"] == 0.5 and sparse["density"] == 0.5  # 8 of 16 blocks
    assert sparse["tflops"] == pytest.approx(0.5 * flops / 2e-3 / 1e12)
    assert rows[0]["tflops"] == pytest.approx(flops / 4e-3 / 1e12)
    for s in (8, 16):
        est = by[f"ours estimate S={s}"]
        assert est["density"] == 1 / (2 * s)
        assert est["tflops"] == pytest.approx(flops / (2 * s) / 2e-3 / 1e12)
    assert by["ours select tau=0.9"]["tflops"] is None
    assert by["ours whole op composed bf16 ratio=0.3 S=8"]["density"] == 0.3


def test_whole_op_rows_run_the_estimate_at_the_precision_they_name(monkeypatch):
    """ "composed fp8" is fp8 attention after a bf16 estimate; "fp8 + fp8 estimate" both."""
    seen = []
    monkeypatch.setattr(ba, "estimate_block_scores",
                        lambda q, k, **kw: seen.append(("estimate", kw["precision"])))  # fmt: skip
    monkeypatch.setattr(ba, "select_blocks_fused", lambda scores, **kw: None)
    monkeypatch.setattr(ba, "mask_to_csr", lambda mask, **kw: (None, None))
    monkeypatch.setattr(ba, "block_sparse_attention_fwd",
                        lambda *a, **kw: seen.append(("attention", kw["precision"])))  # fmt: skip
    q = torch.zeros(1, 1, 256, 64)
    ba._whole_op(q, q, q, "fp8", "bf16")
    ba._whole_op(q, q, q, "fp8", "fp8")
    assert seen == [("estimate", "bf16"), ("attention", "fp8")] + [
        ("estimate", "fp8"),
        ("attention", "fp8"),
    ]


def test_rows_reach_the_runs_list_as_they_are_measured(monkeypatch):
    """main kept a length's rows in run_length's own list until it returned, so an error part
    way through a length (the first one: no JSON at all) lost every row it had measured."""
    monkeypatch.setattr(ba, "baseline_ms", lambda fn: 4.0)
    monkeypatch.setattr(ba, "median_ms", lambda fn, reps, warmup=1: 4.0)
    calls = []

    def bench_ms(fn):
        calls.append(fn)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return 2.0

    monkeypatch.setattr(ba, "bench_ms", bench_ms)
    sink = []
    args = SimpleNamespace(no_flex=True, sweep=False, seq=[512])
    with pytest.raises(KeyboardInterrupt):
        ba.run_length(512, 2, 64, [0.5], [8], args, device="cpu", sink=sink)
    assert [r["method"] for r in sink] == [
        "sdpa cuDNN dense", "sdpa cuDNN dense, call by call", "sdpa FA2 dense",
        "ours sparse d=0.5",
    ]  # fmt: skip


@pytest.mark.parametrize("argv, message", [
    (["--densities", "0"], "--densities must be in (0, 1], got [0.0]"),
    (["--densities", "0.3", "1.5"], "--densities must be in (0, 1], got [1.5]"),
    (["--strides", "3"], "--strides: stride must be one of"),
    (["--seq", "0"], "--seq, --heads and --dim must be at least 1"),
])  # fmt: skip
def test_arguments_that_would_mislabel_or_fail_late_are_usage_errors(argv, message, capsys):
    """--densities 1.5 made rows named d=1.5 that ran at 1.0 (the selection clamps); --strides 3
    failed after every dense and sparse row of the first length."""
    with pytest.raises(SystemExit) as e:
        ba.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
