"""CPU tests of ``benchmarks/bench_pipeline.py``'s projections (the timing needs a GPU)."""

from __future__ import annotations

import pytest

from ._benchmarks import load_benchmark

bench = load_benchmark("bench_pipeline")


def _rows(with_kernel: bool = True) -> list[dict]:
    methods = [("dense, diffusers default", 30.0), ("dense, cuDNN SDPA", 32.0)]
    if with_kernel:
        methods.append((bench.KERNEL_DENSE, 20.0))
    methods.append(("xattn ratio=0.3", 10.0))
    return [{"method": m, "s": s} for m, s in methods]


def test_projections_use_each_kind_of_dense_warmup_step():
    rows = _rows()
    bench.add_projections(rows, steps=50, warm=5)
    default, cudnn, kernel, sparse = rows
    assert default["projected_steps_s"] == 1500.0 and cudnn["projected_steps_s"] == 1600.0
    assert kernel["projected_steps_kernel_dense_s"] == 1000.0
    # stock warm-up: the faster SDPA row (default here); kernel warm-up: the kernel's row
    assert sparse["projected_steps_s"] == 5 * 30.0 + 45 * 10.0
    assert sparse["projected_steps_kernel_dense_s"] == 5 * 20.0 + 45 * 10.0
    assert sparse["projected_speedup_vs_default"] == pytest.approx(1500 / 600)
    assert sparse["projected_speedup_kernel_dense_vs_default"] == pytest.approx(1500 / 550)
    # "best dense" is the fastest dense row, the kernel's included
    assert sparse["speedup_vs_best_dense"] == pytest.approx(2.0)
    assert sparse["projected_speedup_kernel_dense_vs_best_dense"] == pytest.approx(1000 / 550)
    assert kernel["speedup_vs_default"] == pytest.approx(1.5)


def test_projections_without_the_kernel_row():
    rows = _rows(with_kernel=False)
    bench.add_projections(rows, steps=50, warm=5)
    sparse = rows[-1]
    assert sparse["projected_steps_s"] == 600.0
    assert "projected_steps_kernel_dense_s" not in sparse
    assert sparse["projected_speedup_vs_best_dense"] == pytest.approx(1500 / 600)


def test_projection_headers_and_rows_name_the_steps_projected():
    """--steps 30 --warmup-steps 3 projected 30 steps under headers and keys that said 50 / 5."""
    rows = _rows()
    bench.add_projections(rows, steps=30, warm=3)
    sparse = rows[-1]
    assert sparse["projected_steps_s"] == 3 * 30.0 + 27 * 10.0
    assert (sparse["projected_steps"], sparse["projected_warmup_steps"]) == (30, 3)
    columns = bench.projection_columns(30, 3)
    headers = [h for _, h, _ in columns]
    assert (
        headers[0] == "30 steps (3 stock dense) s" and headers[2] == "30 steps (3 kernel dense) s"
    )
    assert all(h.startswith("30") and "50" not in h for h in headers)
    assert {k for k, _, _ in columns} <= set(sparse)
