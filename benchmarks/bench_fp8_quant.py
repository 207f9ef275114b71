"""Memory throughput of the FP8 quantizers (:mod:`xattn_video.kernels.fp8`) per launch config.

The FP8 estimate quantizes Q and K per 128-token block, the FP8 sparse kernel also V per head
(transposed): at HunyuanVideo 720p (24 heads x 119,056 tokens x 128, bf16) each call reads
732 MB and writes 366 MB, so these passes should take ~0.3 ms each at the H200's bandwidth.
Times (median ms), GB/s (bytes read + written / time) and whether each config's output equals
the default's bit for bit. Prints a table and writes JSON (GPU, versions, git SHA).

Usage (GPU): python benchmarks/bench_fp8_quant.py [--n 119056] [--out results/fp8_quant.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_ms, print_table, save_json  # noqa: E402

from xattn_video.kernels.fp8 import (  # noqa: E402
    quantize_fp8_blocks,
    quantize_fp8_blocks_ref,
    quantize_fp8_head_t,
)

CONFIGS = [(32, 4), (16, 4), (64, 8), (128, 8), (128, 16)]  # (chunk rows, num_warps)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=119056)
    p.add_argument("--heads", type=int, default=24)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--out", default="results/bench_fp8_quant.json")
    args = p.parse_args(argv)
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1, args.heads, args.n, 128, device="cuda", generator=g).bfloat16()
    moved = x.numel() * (2 + 1)  # bf16 in, e4m3 out
    rows: list[dict] = []

    def add(name, ms, same):
        rows.append(dict(method=name, ms=ms, gbps=moved / (ms * 1e-3) / 1e9, same=same))
        print(f"  {name}: {ms:.3f} ms", flush=True)

    want_y, want_s = quantize_fp8_blocks(x, args.block)
    for chunk, warps in CONFIGS:
        y, s = quantize_fp8_blocks(x, args.block, chunk=chunk, num_warps=warps)
        same = bool(torch.equal(y.view(torch.uint8), want_y.view(torch.uint8)))
        same = same and bool(torch.equal(s, want_s))
        ms = bench_ms(lambda c=chunk, w=warps: quantize_fp8_blocks(x, args.block, chunk=c,
                                                                   num_warps=w))  # fmt: skip
        add(f"blocks chunk={chunk} warps={warps}", ms, same)
    add("blocks torch reference", bench_ms(lambda: quantize_fp8_blocks_ref(x, args.block)), None)
    add("head, transposed (V)", bench_ms(lambda: quantize_fp8_head_t(x)), None)
    print_table(rows, [("method", "config", "{}"), ("ms", "ms", "{:.3f}"),
                       ("gbps", "GB/s", "{:.0f}"), ("same", "same as default", "{}")])  # fmt: skip
    save_json(args.out, {"benchmark": "bench_fp8_quant", "config": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
