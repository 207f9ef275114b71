"""Hopper kernel sweep: correctness and speed of every launch variant in one process (one GPU).

For each sparse-attention variant (Hopper kernel configs, bf16 and fp8, and the portable
kernel) it checks a moderate problem first (B=2, H=2, N=8269 with key padding, density 0.3,
sampled query blocks against fp64: max error, flash-attention rule for bf16), then times it at
N tokens (B=1, 24 heads, D=128, bf16 inputs) at density 0.3; the fastest passing configs are
also timed at densities 0.1 / 0.5 / 1.0. Estimate variants (loop flattening, fp8, launch
configs) are timed at S=8 and S=16 and their threshold-0.9 masks compared with the reference.
Prints a table and writes JSON (GPU, versions, git SHA). Used to fill
``xattn_video/kernels/tuning.py``; not a test.

Usage: python benchmarks/sweep_hopper.py [--n 119056] [--out results/sweep_hopper.json]
"""

from __future__ import annotations

import argparse
import math
import sys
import traceback
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_ms as _bench_ms  # noqa: E402
from _common import environment, print_table, save_json  # noqa: E402

from xattn_video.attention import attention_flops  # noqa: E402
from xattn_video.kernels.estimate import estimate_block_scores, estimate_block_scores_ref  # noqa: E402
from xattn_video.kernels.select import mask_to_indices, select_blocks  # noqa: E402
from xattn_video.kernels.sparse_attention import block_sparse_attention_fwd  # noqa: E402
from xattn_video.kernels.sparse_attention_hopper import block_sparse_attention_hopper  # noqa: E402
from xattn_video.kernels.tuning import SAFE_HOPPER  # noqa: E402

BLOCK = 128
DEV = "cuda"
DT = torch.bfloat16
CHECK_N = 8269
bench_ms = _bench_ms


def _cfg(bn, nw, ns, thr=0.0, ws=False, pv=False):
    return dict(SAFE_HOPPER, BLOCK_N=bn, num_warps=nw, num_stages=ns, RESCALE_THRESHOLD=thr,
                WARP_SPEC=ws, FP8_PV=pv)  # fmt: skip


ATTN_VARIANTS = [  # (name, precision, config or None for the portable kernel)
    ("portable tma", "bf16", None),
    ("h bf16 128/8/2", "bf16", _cfg(128, 8, 2)),
    ("h bf16 128/8/2 lazy8", "bf16", _cfg(128, 8, 2, 8.0)),
    ("h bf16 128/8/3", "bf16", _cfg(128, 8, 3)),
    ("h bf16 128/8/3 lazy8", "bf16", _cfg(128, 8, 3, 8.0)),
    ("h bf16 64/8/3", "bf16", _cfg(64, 8, 3)),
    ("h bf16 64/8/3 lazy8", "bf16", _cfg(64, 8, 3, 8.0)),
    ("h bf16 64/8/4 lazy8", "bf16", _cfg(64, 8, 4, 8.0)),
    ("h bf16 128/8/2 ws", "bf16", _cfg(128, 8, 2, 0.0, True)),
    ("h bf16 128/4/2 ws lazy8", "bf16", _cfg(128, 4, 2, 8.0, True)),
    ("h fp8 128/8/2", "fp8", _cfg(128, 8, 2)),
    ("h fp8 128/8/2 lazy8", "fp8", _cfg(128, 8, 2, 8.0)),
    ("h fp8 128/8/3 lazy8", "fp8", _cfg(128, 8, 3, 8.0)),
    ("h fp8 64/8/3 lazy8", "fp8", _cfg(64, 8, 3, 8.0)),
    ("h fp8pv 128/8/2", "fp8", _cfg(128, 8, 2, pv=True)),
    ("h fp8pv 128/8/3", "fp8", _cfg(128, 8, 3, pv=True)),
    ("h fp8pv 64/8/3", "fp8", _cfg(64, 8, 3, pv=True)),
]

EST_VARIANTS = [  # (name, precision, flatten, launch)
    ("est bf16 default", "bf16", False, None),
    ("est bf16 flat 128/128/8/3", "bf16", True, (128, 128, 8, 3)),
    ("est bf16 flat 128/128/8/4", "bf16", True, (128, 128, 8, 4)),
    ("est bf16 flat 128/128/8/2", "bf16", True, (128, 128, 8, 2)),
    ("est bf16 flat 64/128/4/4", "bf16", True, (64, 128, 4, 4)),
    ("est fp8 flat 128/128/8/3", "fp8", True, (128, 128, 8, 3)),
    ("est fp8 flat 128/128/8/4", "fp8", True, (128, 128, 8, 4)),
    ("est fp8 128/128/8/3", "fp8", False, (128, 128, 8, 3)),
]


def _attn(q, k, v, counts, idx, kv_len, prec, cfg):
    if cfg is None:
        return block_sparse_attention_fwd(q, k, v, counts, idx, block_size=BLOCK, kv_len=kv_len,
                                          kernel="portable")  # fmt: skip
    return block_sparse_attention_hopper(q, k, v, counts, idx, block_size=BLOCK, kv_len=kv_len,
                                         precision=prec, config=cfg)  # fmt: skip


def _once(fn, **_):
    import time

    t = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - t)


def check_attention(prec, cfg, gen) -> dict:
    """Sampled fp64 check on B=2, H=2, N=8269, kv_len (N, N-300), density 0.3."""
    B, H, N, D = 2, 2, CHECK_N, 128
    q, k, v = (torch.randn(B, H, N, D, device=DEV, generator=gen).to(DT) for _ in range(3))
    kv_len = torch.tensor([N, N - 300], device=DEV)
    nb = math.ceil(N / BLOCK)
    mask = select_blocks(torch.rand(B, H, nb, nb, device=DEV, generator=gen), block_size=BLOCK,
                         ratio=0.3, kv_len=kv_len)  # fmt: skip
    counts, idx = mask_to_indices(mask)
    out = _attn(q, k, v, counts, idx, kv_len, prec, cfg)
    key_ok = torch.arange(N, device=DEV)[None, :] < kv_len[:, None]
    worst, worst_base, sq_err, sq_ref, abs_sum, cnt = 0.0, 0.0, 0.0, 0.0, 0.0, 0
    for qb in (0, 1, nb // 2, nb - 1):
        r0, r1 = qb * BLOCK, min(N, (qb + 1) * BLOCK)
        tok = (mask[:, :, qb].repeat_interleave(BLOCK, -1)[..., :N] & key_ok[:, None, :])[
            :, :, None
        ]
        s = (q[:, :, r0:r1].double() @ k.double().transpose(-1, -2)) / math.sqrt(D)
        ref = torch.softmax(s.masked_fill(~tok, float("-inf")), -1) @ v.double()
        sl = (q[:, :, r0:r1] @ k.transpose(-1, -2)).float() / math.sqrt(D)
        lowp = torch.softmax(sl.masked_fill(~tok, float("-inf")), -1).to(DT) @ v
        e = (out[:, :, r0:r1].double() - ref).abs()
        worst = max(worst, e.max().item())
        worst_base = max(worst_base, (lowp.double() - ref).abs().max().item())
        sq_err += (e**2).sum().item()
        sq_ref += (ref**2).sum().item()
        abs_sum += e.sum().item()
        cnt += e.numel()
    return dict(max_err=worst, mean_err=abs_sum / cnt, rel_l2=math.sqrt(sq_err / sq_ref),
                fa_bound=2 * worst_base + 1e-6, finite=bool(torch.isfinite(out).all()))  # fmt: skip


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=119056)
    p.add_argument("--heads", type=int, default=24)
    p.add_argument("--out", default="results/sweep_hopper.json")
    p.add_argument("--skip-estimate", action="store_true")
    p.add_argument("--dry", action="store_true", help="CPU interpreter smoke run of this script")
    args = p.parse_args(argv)
    if args.dry:  # TRITON_INTERPRET=1: check the script itself on tiny shapes, timings meaningless
        global DEV, DT, CHECK_N, bench_ms
        DEV, DT, CHECK_N = "cpu", torch.float16, 520
        bench_ms = _once
        torch.cuda.get_device_name = lambda *a: "cpu"
    print(environment(), flush=True)
    gen = torch.Generator(device=DEV).manual_seed(0)
    n, H, D = args.n, args.heads, 128
    q, k, v = (torch.randn(1, H, n, D, device=DEV, generator=gen).to(DT) for _ in range(3))
    flops = attention_flops(1, H, n, n, D)
    rows: list[dict] = []

    def add(name, ms, density, **extra):
        tf = None if density is None or ms is None else density * flops / (ms * 1e-3) / 1e12
        rows.append(dict(method=name, ms=ms, density=density, tflops=tf, **extra))
        print(f"  {name}: {ms if ms is None else round(ms, 3)} ms {extra}", flush=True)

    from torch.nn.attention import SDPBackend, sdpa_kernel

    def cudnn():
        with sdpa_kernel(SDPBackend.MATH if args.dry else SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v)

    base = bench_ms(cudnn)
    add("sdpa cuDNN dense", base, 1.0)
    nb = math.ceil(n / BLOCK)
    scores = torch.rand(1, H, nb, nb, device=DEV, generator=gen)
    masks = {
        d: select_blocks(scores, block_size=BLOCK, ratio=d, n_k=n) for d in (0.1, 0.3, 0.5, 1.0)
    }
    lists = {d: mask_to_indices(m) for d, m in masks.items()}
    dens = {d: float(m.float().mean()) for d, m in masks.items()}
    kv_full = torch.tensor([n], device=DEV)
    from xattn_video.kernels.fp8 import quantize_fp8_blocks, quantize_fp8_head_t

    add("fp8 quantize q (per block)", bench_ms(partial(quantize_fp8_blocks, q, BLOCK)), None)
    add("fp8 quantize v (per head, transposed)", bench_ms(partial(quantize_fp8_head_t, v)), None)
    passing = []
    for name, prec, cfg in ATTN_VARIANTS:
        try:
            chk = check_attention(prec, cfg, gen)
            ok = chk["finite"] and (prec == "fp8" or chk["max_err"] <= chk["fa_bound"])
            c, i = lists[0.3]
            ms = bench_ms(partial(_attn, q, k, v, c, i, kv_full, prec, cfg))
            add(name + " d=0.3", ms, dens[0.3], ok=ok, **chk)
            if ok:
                passing.append((ms, name, prec, cfg))
        except Exception as exc:  # noqa: BLE001 - a variant that fails to compile is reported
            add(name + " FAILED", None, None, error=f"{type(exc).__name__}: {str(exc)[:200]}")
            traceback.print_exc(limit=1)
    for prec in ("bf16", "fp8"):
        best = sorted(x for x in passing if x[2] == prec)[:2]
        for _, name, _, cfg in best:
            for d in (0.1, 0.5, 1.0):
                c, i = lists[d]
                add(f"{name} d={d}", bench_ms(partial(_attn, q, k, v, c, i, kv_full, prec, cfg)),
                    dens[d])  # fmt: skip

    if not args.skip_estimate:
        qs, ks = q[:, :1], k[:, :1]  # one head for the reference masks (fp32 score matrix)
        kvl = torch.tensor([n - 100], device=DEV)
        for s in (8, 16):
            ref = estimate_block_scores_ref(qs, ks, stride=s, block_size=BLOCK, kv_len=kvl)
            m_ref = select_blocks(ref, block_size=BLOCK, threshold=0.9, kv_len=kvl)
            for name, prec, flat, launch in EST_VARIANTS:
                try:
                    got = estimate_block_scores(qs, ks, stride=s, block_size=BLOCK, kv_len=kvl,
                                                precision=prec, flatten=flat, launch=launch)  # fmt: skip
                    m = select_blocks(got, block_size=BLOCK, threshold=0.9, kv_len=kvl)
                    diff = float((m != m_ref).float().mean())
                    maxdiff = float((got - ref).abs().max())
                    fn = partial(estimate_block_scores, q, k, stride=s, block_size=BLOCK,
                                 precision=prec, flatten=flat, launch=launch)  # fmt: skip
                    ms = bench_ms(fn)
                    add(f"{name} S={s}", ms, 1.0 / s / 2, mask_diff=diff, score_maxdiff=maxdiff,
                        pct_of_cudnn=100 * ms / base)  # fmt: skip
                except Exception as exc:  # noqa: BLE001
                    add(
                        f"{name} S={s} FAILED",
                        None,
                        None,
                        error=f"{type(exc).__name__}: {exc}"[:200],
                    )
    for r in rows:
        r["ratio_to_cudnn"] = None if r["ms"] is None else r["ms"] / base
    print()
    print_table(rows, [("method", "method", "{}"), ("ms", "ms", "{:.2f}"),
                       ("ratio_to_cudnn", "x cuDNN", "{:.3f}"), ("tflops", "eff TF/s", "{:.0f}"),
                       ("max_err", "max err", "{:.2e}"), ("fa_bound", "FA bound", "{:.2e}"),
                       ("rel_l2", "rel l2", "{:.1e}"), ("mask_diff", "mask diff", "{:.1e}")])  # fmt: skip
    save_json(args.out, {"config": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
