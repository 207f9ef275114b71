"""Memory throughput of the FP8 quantizers (:mod:`xattn_video.kernels.fp8`) per launch config.

The FP8 estimate quantizes Q and K per 128-token block, the FP8 sparse kernel also V per head
(transposed): at HunyuanVideo 720p (24 heads x 119,056 tokens x 128, bf16) each tensor is
732 MB read and 366 MB written, so each pass should take ~0.3 ms at the H200's bandwidth.
Three sweeps of launch configs, each config's output compared bit for bit with the first's (the
default):

* ``Q per block``: :func:`~xattn_video.kernels.fp8.quantize_fp8_blocks` of one tensor (chunk
  rows, warps), plus the PyTorch reference;
* ``Q, K + v amax + flags``: :func:`~xattn_video.kernels.fp8.quantize_fp8_inputs` as the fp8
  op calls it first (one launch reading q, k and v: Q and K in e4m3, v's amax, the non-finite
  flags), and ``Q, K`` as a kernel's own fp8 path calls it (no v, no flags);
* ``V^T``: :func:`~xattn_video.kernels.fp8.quantize_fp8_head_t` with the head scale given and
  the Gluon kernel's key order, as the fp8 attention calls it next (tokens per program, warps).

Times (median ms) and GB/s (bytes read + written / time). Prints a table and writes JSON (GPU,
versions, git SHA).

Usage (GPU): python benchmarks/bench_fp8_quant.py [--n 119056] [--out results/fp8_quant.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_ms, print_table, save_json  # noqa: E402

from xattn_video.kernels import fp8  # noqa: E402
from xattn_video.kernels.fp8 import (  # noqa: E402
    fp8_head_scale,
    quantize_fp8_blocks,
    quantize_fp8_blocks_ref,
    quantize_fp8_head_t,
    quantize_fp8_inputs,
)

# launch configs, the default first: (chunk rows, num_warps) and (tokens per program, num_warps)
CONFIGS = [(32, 4), (16, 4), (64, 8), (128, 8), (128, 16)]
HEAD_T_CONFIGS = [(64, 4), (32, 4), (64, 8), (128, 4), (128, 8), (256, 8)]
BLOCKS_DEFAULT = (32, 4)  # quantize_fp8_blocks' own chunk / num_warps defaults


def default_first(configs: list[tuple[int, int]], default: tuple[int, int]):
    """``configs`` with ``default`` moved (or added) to the front."""
    return [default] + [c for c in configs if c != default]


def _same(a, b) -> bool:
    """Bit-for-bit equality of two results (tuples / lists of tensors or None)."""
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None or y is not None]
    return all(
        x.dtype == y.dtype and torch.equal(x.view(torch.uint8), y.view(torch.uint8))
        if x.dtype == torch.float8_e4m3fn
        else torch.equal(x, y)
        for x, y in pairs
    )


def sweep(rows: list[dict], what: str, call, configs, moved: int) -> None:
    """Times ``call(*config)`` per config into ``rows``; ``same``: its output equals the
    first config's (the default) bit for bit."""
    want = call(*configs[0])
    for cfg in configs:
        same = _same(call(*cfg), want)
        ms = bench_ms(lambda c=cfg: call(*c))
        rows.append(dict(method=what, config=str(cfg), ms=ms, gbps=moved / (ms * 1e-3) / 1e9,
                         same=same))  # fmt: skip
        print(f"  {what} {cfg}: {ms:.3f} ms", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=119056)
    p.add_argument("--heads", type=int, default=24)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--out", default="results/bench_fp8_quant.json")
    args = p.parse_args(argv)
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, args.heads, args.n, 128, device="cuda", generator=g).bfloat16()
               for _ in "qkv")  # fmt: skip
    one = q.numel() * (2 + 1)  # one tensor: bf16 in, e4m3 out
    rows: list[dict] = []

    def blocks(chunk, warps):
        return quantize_fp8_blocks(q, args.block, chunk=chunk, num_warps=warps)

    def inputs(chunk, warps):  # what the fp8 op runs first: Q, K, v's amax and the flags
        f8, flags = quantize_fp8_inputs(q, k, v, block=args.block, flags=True, chunk=chunk,
                                        num_warps=warps)  # fmt: skip
        return (*f8, *flags)

    def qk(chunk, warps):
        return quantize_fp8_inputs(q, k, block=args.block, chunk=chunk, num_warps=warps)[0]

    scale = fp8_head_scale(v)

    def head_t(block, warps):  # then V's transposed copy, in the Gluon kernel's key order
        return quantize_fp8_head_t(v, scale=scale, wgmma_key_order=True, block=block,
                                   num_warps=warps)  # fmt: skip

    inputs_default = (fp8.INPUTS_CHUNK, fp8.INPUTS_WARPS)
    sweep(rows, "Q per block", blocks, default_first(CONFIGS, BLOCKS_DEFAULT), one)
    ref_ms = bench_ms(lambda: quantize_fp8_blocks_ref(q, args.block))
    rows.append(dict(method="Q per block, torch reference", config="", ms=ref_ms,
                     gbps=one / (ref_ms * 1e-3) / 1e9, same=None))  # fmt: skip
    sweep(rows, "Q, K + v amax + flags (one launch)", inputs,
          default_first(CONFIGS, inputs_default),
          3 * q.numel() * 2 + 2 * q.numel())  # fmt: skip
    sweep(rows, "Q, K (the fp8 estimate's own call)", qk, default_first(CONFIGS, inputs_default),
          2 * one)  # fmt: skip
    sweep(
        rows,
        "V^T, scale given, key order",
        head_t,
        default_first(HEAD_T_CONFIGS, (fp8.HEAD_T_BLOCK, fp8.HEAD_T_WARPS)),
        one,
    )
    print_table(rows, [("method", "kernel", "{}"), ("config", "config", "{}"),
                       ("ms", "ms", "{:.3f}"), ("gbps", "GB/s", "{:.0f}"),
                       ("same", "same as default", "{}")])  # fmt: skip
    save_json(args.out, {"benchmark": "bench_fp8_quant", "config": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
