"""Probe (GPU): the Triton estimate kernel against variants of its source, interleaved.

Each variant is a copy of ``xattn_video/kernels/estimate.py`` (e.g. the file at an older commit)
or of the whole ``xattn_video/kernels`` directory, loaded next to the installed module as
``probe_gluon_ab.py`` loads attention variants. Per
(precision, stride), with ``kernel="triton"`` and the tuned launch: the largest |difference| of
the block scores against the installed kernel, the share of blocks whose ratio-0.3 mask differs,
and the fastest of ``--reps`` interleaved median timings. B=1, 24 heads, head dim 128, the last
99 keys padded.

Usage: python benchmarks/probe_estimate_ab.py old=/tmp/estimate_old.py [--n 119056]
       [--configs bf16:8 bf16:16 fp8:8 fp8:16] [--reps 2] [--out results/probe_estimate_ab.json]

Not supported: variants whose ``estimate_block_scores`` signature differs from the installed one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_ms, save_json  # noqa: E402
from probe_gluon_ab import load_variants  # noqa: E402

from xattn_video.kernels.estimate import estimate_block_scores  # noqa: E402
from xattn_video.kernels.select import select_blocks  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "variants",
        nargs="+",
        help="name=path of an estimate.py variant (file or kernels directory)",
    )
    p.add_argument("--n", type=int, default=119056)
    p.add_argument("--configs", nargs="+", default=["bf16:8", "bf16:16", "fp8:8", "fp8:16"],
                   help="precision:stride pairs")  # fmt: skip
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--out", default="results/probe_estimate_ab.json")
    args = p.parse_args(argv)
    variants = load_variants(p, args.variants, prefix="est_", module="estimate")
    fns = {"installed": estimate_block_scores}
    fns.update({m: mod.estimate_block_scores for m, mod in variants.items()})
    n = args.n
    g = torch.Generator(device="cuda").manual_seed(n)
    q, k = (torch.randn(1, 24, n, 128, device="cuda", generator=g).bfloat16() for _ in range(2))
    kv = torch.tensor([n - 99], device="cuda")
    rows = []
    for cfg in args.configs:
        prec, stride = cfg.split(":")
        kw = dict(stride=int(stride), block_size=128, precision=prec, kernel="triton", kv_len=kv)
        ref = estimate_block_scores(q, k, **kw)
        ref_mask = select_blocks(ref, block_size=128, ratio=0.3, n_k=n)
        diff, flips, times = {}, {}, {m: [] for m in fns}
        for m, fn in fns.items():
            out = fn(q, k, **kw)
            diff[m] = float((out - ref).abs().max())
            mask = select_blocks(out, block_size=128, ratio=0.3, n_k=n)
            flips[m] = float((mask != ref_mask).float().mean())
        for _ in range(args.reps):
            for m, fn in fns.items():
                times[m].append(bench_ms(lambda fn=fn, kw=kw: fn(q, k, **kw)))
        best = {m: min(t) for m, t in times.items()}
        rows.append(dict(n=n, precision=prec, stride=int(stride), ms=best, all_ms=times,
                         max_abs_diff_vs_installed=diff, mask_flips_vs_installed=flips))  # fmt: skip
        print(f"{prec} S={stride}: " + ", ".join(
            f"{m} {t:.2f} ms (diff {diff[m]:.1e}, flips {flips[m]:.1e})" for m, t in best.items()
        ), flush=True)  # fmt: skip
    save_json(args.out, {"benchmark": "probe_estimate_ab", "config": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
