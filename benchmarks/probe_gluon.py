"""Probe (GPU): the Gluon kernel (ring depths, bf16 / fp8) vs the Triton Hopper kernel and cuDNN.

B=1, 24 heads, head dim 128, bf16, N=119,056, pinned densities on random block scores, median
ms and effective TFLOP/s (density x dense FLOPs / time), max |diff| to the Triton kernel in
the same precision.
Prints a table and writes JSON (GPU, versions, git SHA).

Usage: python benchmarks/probe_gluon.py [--n 119056] [--precisions bf16 fp8]
       [--out results/probe_gluon.json]
"""

from __future__ import annotations

import argparse
import math
import sys
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import baseline_ms, bench_ms, print_table, save_json  # noqa: E402

from xattn_video.kernels.select import mask_to_indices, select_blocks  # noqa: E402
from xattn_video.kernels.sparse_attention import block_sparse_attention_fwd  # noqa: E402
from xattn_video.kernels.sparse_attention_gluon import block_sparse_attention_gluon  # noqa: E402
from xattn_video.op_checks import PRECISIONS  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=119056)
    p.add_argument("--heads", type=int, default=24)
    p.add_argument("--densities", type=float, nargs="+", default=[0.1, 0.3, 0.5, 1.0])
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    p.add_argument("--out", default="results/probe_gluon.json")
    args = p.parse_args(argv)
    n, H, D = args.n, args.heads, 128
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, H, n, D, device="cuda", generator=g).bfloat16() for _ in range(3))
    flops = 4 * H * n * n * D
    rows: list[dict] = []

    def add(name, ms, density, **extra):
        rows.append(dict(method=name, ms=ms, density=density,
                         tflops=density * flops / (ms * 1e-3) / 1e12, **extra))  # fmt: skip
        print(f"  {name}: {ms:.2f} ms", flush=True)

    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        add("cuDNN dense", baseline_ms(lambda: F.scaled_dot_product_attention(q, k, v)), 1.0)
    nb = math.ceil(n / 128)
    scores = torch.rand(1, H, nb, nb, device="cuda", generator=g)
    for d in args.densities:
        mask = select_blocks(scores, block_size=128, ratio=d, n_k=n)
        counts, idx = mask_to_indices(mask)
        dens = float(mask.float().mean())
        for prec, stage_list in (("bf16", (2, 3)), ("fp8", (2, 3, 4))):
            if prec not in args.precisions:
                continue
            triton_run = partial(block_sparse_attention_fwd, q, k, v, counts, idx, block_size=128,
                                 kernel="hopper", precision=prec)  # fmt: skip
            ref = triton_run()
            add(f"triton hopper {prec} d={d}", bench_ms(triton_run), dens)
            for st in stage_list:
                run = partial(block_sparse_attention_gluon, q, k, v, counts, idx, block_size=128,
                              stages=st, precision=prec)  # fmt: skip
                try:
                    diff = float((run().float() - ref.float()).abs().max())
                    add(f"gluon {prec} stages={st} d={d}", bench_ms(run), dens,
                        max_diff_vs_triton=diff)  # fmt: skip
                except Exception as exc:  # noqa: BLE001 - a probe reports failures
                    print(f"  gluon {prec} stages={st} d={d} failed: {exc}")
    base = rows[0]["tflops"]
    for r in rows:
        r["x_cudnn_rate"] = r["tflops"] / base
    print_table(rows, [("method", "kernel", "{}"), ("ms", "ms", "{:.2f}"),
                       ("tflops", "eff. TFLOP/s", "{:.0f}"), ("x_cudnn_rate", "x cuDNN", "{:.2f}"),
                       ("max_diff_vs_triton", "max |diff|", "{:.1e}")])  # fmt: skip
    save_json(args.out, {"benchmark": "probe_gluon", "config": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
