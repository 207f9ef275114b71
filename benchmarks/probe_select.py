"""Probe (GPU): the op's selection and CSR-list kernels against the torch code and variants.

At HunyuanVideo sizes (B=1, 24 heads, blocks of 128, the last 99 keys padded; random block
scores ``rand ** 4``), interleaved: the torch selection (:func:`.select.select_blocks`) and the
fused one (:func:`.select_fused.select_blocks_fused`) in ratio mode (0.3), threshold mode (0.9)
and threshold mode under a budget (``max_density`` 0.3), and the CSR lists (torch
:func:`.select.mask_to_indices` against :func:`.select_fused.mask_to_csr`), for the installed ``select_fused.py`` and each variant given
as ``name=path`` (e.g. the file at an older commit; a variant without ratio mode is skipped
there). Each row: the fastest of ``--reps`` rounds' median times, and whether the result equals
the torch code's. With ``--whole-op``, also the whole op (``xv.xattention``, ratio 0.3, S=8;
bf16, and fp8 with the fp8 estimate) on random q, k, v: as installed, and with the torch ratio
selection and the first variant's CSR lists (what the op ran before ratio mode was fused), its
output compared bit for bit.

Usage: python benchmarks/probe_select.py [old=/tmp/select_fused_old.py] [--n 119056 67576]
       [--reps 3] [--whole-op] [--out results/probe_select.json]

Not supported: text columns.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_ms, print_table, save_json  # noqa: E402
from probe_gluon_ab import load_variants  # noqa: E402

from xattn_video.kernels import select_fused  # noqa: E402
from xattn_video.kernels.select import (  # noqa: E402
    mask_to_indices,
    select_blocks,
    valid_key_blocks,
)

MODES = {
    "ratio 0.3": dict(ratio=0.3),
    "threshold 0.9": dict(threshold=0.9),
    "threshold 0.9 + budget 0.3": dict(threshold=0.9, max_density=0.3),
}


def _cases(mods: dict, scores: torch.Tensor, kv: torch.Tensor, n: int) -> dict:
    """{name: (fn, same-as-torch)} for every timed call at one size."""
    nb = scores.shape[-1]
    cases = {}
    masks = {}
    for mode, kw in MODES.items():
        want = select_blocks(scores, block_size=128, kv_len=kv, **kw)
        masks[mode] = want
        cases[f"select {mode}, torch"] = (
            lambda kw=kw: select_blocks(scores, block_size=128, kv_len=kv, **kw), True)  # fmt: skip
        for name, mod in mods.items():
            fn = lambda mod=mod, kw=kw: (  # fmt: skip
                mod.select_blocks_fused(scores, block_size=128, kv_len=kv, **kw)
            )
            try:
                got = fn()
            except TypeError:  # a variant from before ratio mode
                continue
            cases[f"select {mode}, fused {name}"] = (fn, bool(torch.equal(got, want)))
    mask = masks["ratio 0.3"]
    ref = mask_to_indices(mask & valid_key_blocks(kv, nb, 128)[:, None, None, :])
    cases["csr, torch"] = (lambda: mask_to_indices(mask), True)
    for name, mod in mods.items():
        fn = lambda mod=mod: mod.mask_to_csr(mask, block_size=128, kv_len=kv, n_k=n)  # noqa: E731
        counts, idx = fn()
        same = bool(torch.equal(counts, ref[0]) and torch.equal(idx, ref[1]))
        cases[f"csr, fused {name}"] = (fn, same)
    return cases


def _whole_op_rows(n: int, old, reps: int) -> list[dict]:
    """The op as installed against the op with the torch ratio selection and ``old``'s CSR."""
    import xattn_video as xv
    from xattn_video import attention, library

    g = torch.Generator(device="cuda").manual_seed(n + 1)
    q, k, v = (torch.randn(1, 24, n, 128, device="cuda", generator=g).bfloat16() for _ in range(3))
    rows = []
    fused_max, csr = attention.MAX_FUSED_BLOCKS, library._csr_triton
    for prec in ("bf16", "fp8"):
        kw = dict(ratio=0.3, stride=8, precision=prec, estimate_precision=prec)

        def before(kw=kw):
            attention.MAX_FUSED_BLOCKS, library._csr_triton = 0, old.mask_to_csr
            try:
                return xv.xattention(q, k, v, **kw)
            finally:
                attention.MAX_FUSED_BLOCKS, library._csr_triton = fused_max, csr

        fns = {"installed": lambda kw=kw: xv.xattention(q, k, v, **kw), "before": before}
        same = bool(torch.equal(fns["installed"](), before()))
        times = {name: [] for name in fns}
        for _ in range(reps):
            for name, fn in fns.items():
                times[name].append(bench_ms(fn))
        for name in fns:
            rows.append(dict(n=n, what=f"whole op {prec} ratio 0.3 S=8, {name}",
                             ms=min(times[name]), same=same))  # fmt: skip
            print(f"n={n} whole op {prec} {name}: {min(times[name]):.2f} ms", flush=True)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("variants", nargs="*", help="name=path of a select_fused.py variant")
    p.add_argument("--n", type=int, nargs="+", default=[119056, 67576])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--whole-op", action="store_true", help="also time the op (needs a variant)")
    p.add_argument("--out", default="results/probe_select.json")
    args = p.parse_args(argv)
    mods = {"installed": select_fused}
    mods.update(load_variants(p, args.variants, prefix="sel_", module="select_fused"))
    if args.whole_op and len(mods) < 2:
        p.error("--whole-op compares against the first variant's CSR lists: give one")
    rows = []
    for n in args.n:
        nb = math.ceil(n / 128)
        g = torch.Generator(device="cuda").manual_seed(n)
        scores = torch.rand(1, 24, nb, nb, device="cuda", generator=g) ** 4
        kv = torch.tensor([n - 99], device="cuda", dtype=torch.int32)
        cases = _cases(mods, scores, kv, n)
        times = {name: [] for name in cases}
        for _ in range(args.reps):
            for name, (fn, _) in cases.items():
                times[name].append(bench_ms(fn))
        for name, (_, same) in cases.items():
            rows.append(dict(n=n, what=name, ms=min(times[name]), same=same))
            print(f"n={n} {name}: {min(times[name]):.3f} ms, same={same}", flush=True)
        if args.whole_op:
            rows += _whole_op_rows(n, next(m for name, m in mods.items() if name != "installed"),
                                   args.reps)  # fmt: skip
    cols = [("n", "tokens", "{}"), ("what", "what", "{}"), ("ms", "ms", "{:.3f}"),
            ("same", "equals torch", "{}")]  # fmt: skip
    print()
    print_table(rows, cols)
    save_json(args.out, {"benchmark": "probe_select", "config": vars(args), "rows": rows})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
