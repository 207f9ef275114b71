"""Probe (GPU): the Gluon estimate (ring depths, epilogue overlap, bf16 / fp8) vs the Triton one.

Correctness first: small shapes (B=2, key padding, token counts the stride does not divide,
head dims 64 / 128) against the fp32 reference, max |diff| of the block scores. Then at video
sizes (B=1, 24 heads, head dim 128): median ms of each configuration, as a share of cuDNN's
dense attention time in the same run, max |diff| to the Triton estimate in the same precision
and the share of blocks whose threshold-0.9 selection differs from the Triton bf16 one.
Prints a table and writes JSON (GPU, versions, git SHA).

Usage: python benchmarks/probe_estimate_gluon.py [--seq 119056 67576] [--out results/x.json]
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import baseline_ms, bench_ms, print_table, save_json  # noqa: E402

from xattn_video.kernels.estimate import estimate_block_scores, estimate_block_scores_ref  # noqa: E402
from xattn_video.kernels.estimate_gluon import estimate_block_scores_gluon  # noqa: E402
from xattn_video.kernels.select_fused import select_blocks_fused  # noqa: E402

# (key groups per tile, ring depth, chunks issued before the previous tile's epilogue);
# --configs replaces them
CONFIGS = {"bf16": [(128, 3, 0), (128, 3, 2), (128, 2, 1), (64, 4, 3)],
           "fp8": [(128, 6, 0), (128, 6, 5), (128, 4, 3), (64, 8, 7)]}  # fmt: skip


def parse_configs(specs: list[str]) -> dict[str, list[tuple[int, int, int]]]:
    """``["bf16:128,3,0", "fp8:64,8,0"]`` -> {"bf16": [(128, 3, 0)], "fp8": [(64, 8, 0)]}."""
    out: dict[str, list[tuple[int, int, int]]] = {"bf16": [], "fp8": []}
    for spec in specs:
        prec, _, nums = spec.partition(":")
        vals = tuple(int(x) for x in nums.split(","))
        if prec not in out or len(vals) != 3:
            raise SystemExit(f"--configs takes PRECISION:BLOCK_N,STAGES,PRE, got {spec!r}")
        out[prec].append(vals)
    return out


def check_small(rows: list[dict]) -> None:
    """bf16 against the fp32 reference; fp8 against the Triton fp8 estimate (same quantization)."""
    g = torch.Generator(device="cuda").manual_seed(1)
    cases = ((3000, 128, (3000, 2345), CONFIGS["bf16"] + [("fp8", *c) for c in CONFIGS["fp8"]]),
             (2056, 64, (2056, 1999), [(128, 3, 2), ("fp8", 128, 6, 5)]))  # fmt: skip
    for n, d, lens, cfgs in cases:
        q, k = (torch.randn(2, 3, n, d, device="cuda", generator=g).bfloat16() for _ in range(2))
        kv = torch.tensor(lens, device="cuda")
        for S in (8, 16):
            refs = {"bf16": estimate_block_scores_ref(q, k, stride=S, block_size=128, kv_len=kv),
                    "fp8": estimate_block_scores(q, k, stride=S, block_size=128, kv_len=kv,
                                                 precision="fp8", kernel="triton")}  # fmt: skip
            for cfg in cfgs:
                prec, bn, st, pre = cfg if len(cfg) == 4 else ("bf16", *cfg)
                name = f"small n={n} d={d} S={S} {prec} bn={bn} st={st} pre={pre}"
                try:
                    out = estimate_block_scores_gluon(q, k, stride=S, block_size=128,
                                                      kv_len=kv, precision=prec, block_n=bn,
                                                      stages=st, pre=pre)  # fmt: skip
                    torch.cuda.synchronize()
                    diff = float((out - refs[prec]).abs().max())
                except Exception as exc:  # noqa: BLE001 - a probe reports failures
                    diff = float("nan")
                    print(f"  {name} failed: {exc}")
                rows.append(dict(method=name, max_diff_vs_ref=diff))
                print(f"  {name}: max |diff| to the {'fp32 ref' if prec == 'bf16' else 'Triton fp8'}"
                      f" {diff:.2e}", flush=True)  # fmt: skip


def run_length(n: int, rows: list[dict]) -> None:
    H, D = 24, 128
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, H, n, D, device="cuda", generator=g).bfloat16() for _ in range(3))
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        dense = baseline_ms(lambda: F.scaled_dot_product_attention(q, k, v))
    rows.append(dict(n=n, method="cuDNN dense", ms=dense, share=1.0))
    print(f"  n={n} cuDNN dense {dense:.2f} ms", flush=True)

    def select(scores):
        return select_blocks_fused(scores, block_size=128, threshold=0.9)

    for S in (8, 16):
        base = estimate_block_scores(q, k, stride=S, block_size=128, kernel="triton")
        base_mask = select(base)
        for prec, cfgs in CONFIGS.items():
            tri = partial(estimate_block_scores, q, k, stride=S, block_size=128, precision=prec,
                          kernel="triton")  # fmt: skip
            ref = tri()
            ms = bench_ms(tri)
            rows.append(dict(n=n, method=f"triton {prec} S={S}", ms=ms, share=ms / dense,
                             mask_diff_vs_bf16=float((select(ref) != base_mask).float().mean())))  # fmt: skip
            print(f"  n={n} triton {prec} S={S}: {ms:.2f} ms", flush=True)
            for bn, st, pre in cfgs:
                run = partial(estimate_block_scores_gluon, q, k, stride=S, block_size=128,
                              precision=prec, block_n=bn, stages=st, pre=pre)  # fmt: skip
                name = f"gluon {prec} S={S} bn={bn} st={st} pre={pre}"
                try:
                    out = run()
                    diff = float((out - ref).abs().max())
                    mdiff = float((select(out) != base_mask).float().mean())
                    ms = bench_ms(run)
                except Exception as exc:  # noqa: BLE001 - a probe reports failures
                    print(f"  n={n} {name} failed: {exc}")
                    continue
                rows.append(dict(n=n, method=name, ms=ms, share=ms / dense,
                                 max_diff_vs_triton=diff, mask_diff_vs_bf16=mdiff))  # fmt: skip
                print(f"  n={n} {name}: {ms:.2f} ms ({ms / dense:.3%}), |diff| {diff:.1e}, "
                      f"mask diff {mdiff:.2e}", flush=True)  # fmt: skip


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seq", type=int, nargs="+", default=[119056, 67576])
    p.add_argument("--out", default="results/probe_estimate_gluon.json")
    p.add_argument(
        "--configs",
        nargs="+",
        metavar="PREC:BN,STAGES,PRE",
        help="variants to time instead of CONFIGS, e.g. bf16:128,3,0 fp8:128,6,0",
    )
    p.add_argument("--skip-small", action="store_true", help="skip the small correctness cases")
    p.add_argument(
        "--profile-once",
        action="store_true",
        help="run the Triton and the Gluon bf16 S=8 estimate once each (for ncu)",
    )
    args = p.parse_args(argv)
    if args.profile_once:
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k = (torch.randn(1, 24, args.seq[0], 128, device="cuda", generator=g).bfloat16()
                for _ in range(2))  # fmt: skip
        estimate_block_scores(q, k, stride=8, block_size=128, kernel="triton")
        estimate_block_scores_gluon(q, k, stride=8, block_size=128)
        torch.cuda.synchronize()
        return
    if args.configs:
        CONFIGS.update(parse_configs(args.configs))
    rows: list[dict] = []
    if not args.skip_small:
        check_small(rows)
    for n in args.seq:
        run_length(n, rows)
    print_table([r for r in rows if "ms" in r],
                [("n", "N", "{}"), ("method", "estimate", "{}"), ("ms", "ms", "{:.2f}"),
                 ("share", "x cuDNN dense", "{:.3f}"),
                 ("max_diff_vs_triton", "max |diff|", "{:.1e}"),
                 ("mask_diff_vs_bf16", "mask diff", "{:.1e}")])  # fmt: skip
    save_json(args.out, {"benchmark": "probe_estimate_gluon", "config": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
