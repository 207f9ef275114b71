"""CPU checks of ``benchmarks/bench_fp8_quant.py``'s helpers (the timing itself needs a GPU)."""

import inspect

import torch

from xattn_video.kernels import fp8

from ._benchmarks import load_benchmark

bench = load_benchmark("bench_fp8_quant")


def test_default_config_runs_first_and_once():
    assert bench.default_first([(1, 2), (3, 4), (5, 6)], (3, 4)) == [(3, 4), (1, 2), (5, 6)]
    assert bench.default_first([(1, 2)], (7, 8)) == [(7, 8), (1, 2)]
    params = inspect.signature(fp8.quantize_fp8_blocks).parameters
    assert bench.BLOCKS_DEFAULT == (params["chunk"].default, params["num_warps"].default)
    for configs, default in (
        (bench.CONFIGS, bench.BLOCKS_DEFAULT),
        (bench.CONFIGS, (fp8.INPUTS_CHUNK, fp8.INPUTS_WARPS)),
        (bench.HEAD_T_CONFIGS, (fp8.HEAD_T_BLOCK, fp8.HEAD_T_WARPS)),
    ):
        swept = bench.default_first(configs, default)
        assert swept[0] == default and len(set(swept)) == len(swept)


def test_same_compares_fp8_bytes_and_skips_absent_outputs():
    """e4m3 outputs compare by their bytes (+0 and -0 differ, as two launches' bytes would);
    other tensors by value; outputs absent from both (None) are skipped."""
    a = torch.tensor([0.0, 1.5, -2.0]).to(torch.float8_e4m3fn)
    neg_zero = torch.tensor([-0.0, 1.5, -2.0]).to(torch.float8_e4m3fn)
    s = torch.tensor([0.25])
    assert bench._same((a, s, None), (a.clone(), s.clone(), None))
    assert not bench._same((a, s), (neg_zero, s))
    assert not bench._same((a, s), (a, s + 1))
