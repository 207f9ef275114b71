"""Probe (GPU): this GPU's estimate launch from the table against the fallback as it ran before.

For each precision (bf16, fp8) and stride (8, 16) it times, interleaved over ``--rounds`` rounds
in one process, the Triton estimate (:func:`xattn_video.kernels.estimate.estimate_block_scores`,
``kernel="triton"``) at video size (B=1, 24 heads, head dim 128, no key padding) twice: with the
launch :func:`xattn_video.kernels.tuning.estimate_config` gives this GPU, and with
:data:`~xattn_video.kernels.tuning.SAFE_ESTIMATE`'s tiles without flattening the key-tile x
stride loop nest (what a GPU outside the table ran). It records the max |diff| of the two
launches' block scores and the ratio of the median times. fp8 rows take q and k quantized once
beforehand, so they time the estimate kernel alone. Used for the H100 entries of the table
(``docs/results/probe_estimate_flatten_h100_*.json``); ``probe_estimate_tiles.py`` compares
tiles among flattened launches.

Usage: python benchmarks/probe_estimate_flatten.py [--n 119056] [--rounds 3]
       [--out results/probe_estimate_flatten.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_ms, save_json  # noqa: E402


def ab_row(precision: str, stride: int, table: tuple, fallback_ms: list, table_ms: list,
           max_abs_diff: float) -> dict:  # fmt: skip
    """One JSON row: the medians over the rounds and ``table / fallback`` (below 1: the table's
    launch is faster)."""
    fb, tb = statistics.median(fallback_ms), statistics.median(table_ms)
    return dict(precision=precision, stride=stride, table=list(table), fallback_unflattened_ms=fb,
                table_ms=tb, rounds_fallback=list(fallback_ms), rounds_table=list(table_ms),
                max_abs_diff=max_abs_diff, ratio=tb / fb)  # fmt: skip


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=119056)
    p.add_argument("--heads", type=int, default=24)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="results/probe_estimate_flatten.json")
    args = p.parse_args(argv)
    if args.n < 1 or args.heads < 1 or args.rounds < 1:
        p.error("--n, --heads and --rounds must be positive")

    import torch

    from xattn_video.kernels.estimate import estimate_block_scores
    from xattn_video.kernels.fp8 import quantize_fp8_qk
    from xattn_video.kernels.tuning import SAFE_ESTIMATE, estimate_config, gpu_name

    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    torch.manual_seed(0)
    q = torch.randn(1, args.heads, args.n, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn_like(q)
    rows = []
    for prec in ("bf16", "fp8"):
        f8 = quantize_fp8_qk(q, k, 128) if prec == "fp8" else None
        for s in (8, 16):
            kw = dict(stride=s, block_size=128, precision=prec, kernel="triton", fp8_inputs=f8)

            def fallback(kw=kw):
                return estimate_block_scores(q, k, launch=SAFE_ESTIMATE.tiles, flatten=False, **kw)

            def table(kw=kw):
                return estimate_block_scores(q, k, **kw)

            diff = (fallback() - table()).abs().max().item()
            t_fb, t_tb = [], []
            for _ in range(args.rounds):
                t_fb.append(bench_ms(fallback))
                t_tb.append(bench_ms(table))
            launch = estimate_config(gpu_name(q), prec, s, 128, args.n)
            rows.append(ab_row(prec, s, launch.tiles, t_fb, t_tb, diff))
            print(rows[-1], flush=True)
    save_json(args.out, {"probe": "estimate launch: table vs unflattened fallback",
                         "config": vars(args), "rows": rows})  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
