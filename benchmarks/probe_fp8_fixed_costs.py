"""Probe (GPU): what an fp8 Gluon attention call costs besides its key blocks.

At low density the fp8 kernel falls short of its dense-rate ratio; this splits the time of
:func:`~xattn_video.kernels.sparse_attention_gluon.block_sparse_attention_gluon` (``precision
="fp8"``, ring depth 2: the pair loop) into what does not scale with the listed key blocks and
what does. Per token count (B=1, 24 heads, head dim 128), timed in one run with cuDNN dense:

* the quantization the call runs first (Q and K per block, V^T per head; :mod:`.fp8`);
* calls whose every query block lists the same number of key blocks (0, 2, 8, then densities
  0.05 / 0.1 / 0.3 / 1.0): the 0-block call is quantization plus the kernel's per-program cost
  (launch, Q's load, the epilogue), the rest add key blocks;
* density 0.1 with three layouts of the lists: ``random`` (each query block its own blocks),
  ``shared`` (one random set per head, so every program reads the same K / V) and ``band``
  (consecutive blocks from the query block's own), to see whether L2 reuse matters;
* bf16 at 0 / 0.1 / 1.0 for comparison.

Each row gives the median of ``--reps`` timed calls and, for non-empty lists, the ratio of
cuDNN's dense rate (``density * cudnn_ms / ms``).

Measured on one H200 (triton 3.6; docs/results/probe_fp8_fixed_costs_h200.json): at 119,056
tokens the 0-block fp8 call takes 1.87 ms, 1.30 of them quantization, against 20.9 ms at
density 0.1 (1.47x cuDNN; 1.65x at density 1.0); at 67,576 tokens 1.17 ms, 0.75 quantization,
against 6.9 ms (1.42x; 1.63x at 1.0). At density 0.1 and 119,056 tokens one set per head and
the bands ran 2.6% faster than random lists (1.51x against 1.47x: L2 reuse), at 67,576 tokens
random lists ran fastest (1.42x against 1.34x / 1.31x), so the layout moves the time no more
than runs of the same call differ by (another run of these cases gave 1.34x for random lists at
67,576 tokens).

Usage: python benchmarks/probe_fp8_fixed_costs.py [--n 119056 67576] [--reps 10]
       [--out results/probe_fp8_fixed_costs.json]

Not supported: other head dims, batch sizes or block sizes; kernels other than the Gluon one.
"""

from __future__ import annotations

import argparse
import math
import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median_ms, save_json  # noqa: E402

H, D, BLOCK = 24, 128, 128
LAYOUTS = ("random", "shared", "band")


def block_lists(
    layout: str, heads: int, nb: int, n_sel: int, *, device="cpu", seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR lists (as :func:`~xattn_video.kernels.select.mask_to_indices` gives them) in which
    each of the ``nb`` query blocks of each head lists ``n_sel`` of the ``nb`` key blocks:

    * ``random``: its own random set; ``shared``: one random set per head for all of them;
    * ``band``: blocks ``qb, qb + 1, ...`` modulo ``nb``.

    Returns counts: (1, heads, nb) int32, all ``n_sel``; indices: (1, heads, nb, nb) int32,
    each row ascending, padded with ``nb``."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not 0 <= n_sel <= nb:
        raise ValueError(f"n_sel must be in [0, {nb}], got {n_sel}")
    g = torch.Generator(device=device).manual_seed(seed)
    if layout == "random":
        sel = torch.rand(1, heads, nb, nb, device=device, generator=g).topk(n_sel, -1).indices
    elif layout == "shared":
        one = torch.rand(1, heads, 1, nb, device=device, generator=g).topk(n_sel, -1).indices
        sel = one.expand(1, heads, nb, n_sel)
    else:
        rows = torch.arange(nb, device=device)[:, None] + torch.arange(n_sel, device=device)
        sel = (rows % nb)[None, None].expand(1, heads, nb, n_sel)
    idx = torch.full((1, heads, nb, nb), nb, dtype=torch.int32, device=device)
    idx[..., :n_sel] = sel.sort(-1).values.int()
    counts = torch.full((1, heads, nb), n_sel, dtype=torch.int32, device=device)
    return counts, idx


def cases(nb: int) -> list[tuple[str, str, int]]:
    """(precision, layout, blocks per list) in the order they run."""
    fp8 = [("fp8", "random", n) for n in (0, 2, 8)]
    fp8 += [("fp8", "random", round(d * nb)) for d in (0.05, 0.1, 0.3, 1.0)]
    fp8 += [("fp8", "shared", round(0.1 * nb)), ("fp8", "band", round(0.1 * nb))]
    bf16 = [("bf16", "random", n) for n in (0, round(0.1 * nb), nb)]
    return fp8 + bf16


def _quantize(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """What the fp8 call quantizes before its kernel (q, k, v: (B, H, N, D) bf16): one launch
    for Q, K and V's head scale, then V's transposed copy (the JSON of 2026-12-03 was measured
    before that launch also took V's amax: Q, K, then V's amax and copy)."""
    from xattn_video.kernels.fp8 import quantize_fp8_head_t, quantize_fp8_inputs

    f8, _ = quantize_fp8_inputs(q, k, v, block=BLOCK)
    quantize_fp8_head_t(v, scale=f8.v_scale, wgmma_key_order=True)


def probe_tokens(n: int, reps: int) -> list[dict]:
    """The rows of one token count (see the module docstring), printed as they come."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from xattn_video.kernels.sparse_attention_gluon import block_sparse_attention_gluon

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, H, n, D, device="cuda", generator=g).bfloat16() for _ in "qkv")
    nb = math.ceil(n / BLOCK)
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        cudnn = median_ms(partial(torch.nn.functional.scaled_dot_product_attention, q, k, v), 5)
    quant = median_ms(partial(_quantize, q, k, v), reps)
    print(f"n={n}: cuDNN dense {cudnn:.2f} ms, fp8 quantization {quant:.3f} ms", flush=True)
    rows = [dict(n=n, what="fp8 quantization", ms=quant, cudnn_ms=cudnn)]
    for precision, layout, n_sel in cases(nb):
        counts, idx = block_lists(layout, H, nb, n_sel, device="cuda")
        call = partial(block_sparse_attention_gluon, q, k, v, counts, idx, block_size=BLOCK,
                       precision=precision)  # fmt: skip
        ms = median_ms(call, reps if n_sel < nb // 2 else max(3, reps // 2))
        density = n_sel / nb
        ratio = density * cudnn / ms if n_sel else None
        rows.append(dict(n=n, what=precision, layout=layout, blocks=n_sel, density=density, ms=ms,
                         cudnn_ms=cudnn, x_cudnn=ratio))  # fmt: skip
        shown = f"{ratio:.3f}x cuDNN" if ratio else "-"
        print(f"  {precision} {layout} {n_sel} blocks (d={density:.3f}): {ms:.3f} ms {shown}",
              flush=True)  # fmt: skip
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[119056, 67576])
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", default="results/probe_fp8_fixed_costs.json")
    args = p.parse_args(argv)
    rows = [row for n in args.n for row in probe_tokens(n, args.reps)]
    save_json(args.out, {"benchmark": "probe_fp8_fixed_costs", "config": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
