"""Probe: could the fp8 op's one-launch quantizer be cheaper? Variants against the current one.

Each variant computes what ``quantize_fp8_inputs(q, k, v, flags=True)`` computes (Q8, K8 per
128-token block and their scales, v's per-block amax, q's row flags, k / v's block flags) and is
compared with the module's kernel ("current") bit for bit (mismatch counts per output). At the
run below "current" divided per element; since then it is the ``split=None`` variant, so a
rerun compares the other way round (``recip=False`` rows then differ, the rest match):

* ``split=False``: one program per (block, b*h) as now, but q's, k's and v's chunk loads issued
  together, the amax and non-finite test on the bf16 / fp16 bits (integer max of
  ``bits & 0x7FFF``, no fp32 conversion in the first sweep), ``rows`` rows per sweep step;
* ``split=True``: one program per (block, b*h, tensor), the whole 128-row block in registers,
  one sweep;
* ``split=None``: the module's kernel (q, then k, then v, fp32 stats) at ``rows`` / ``warps``;
  at the recorded run it was that kernel with the reciprocal store, the module's since 307378d;
* ``recip``: ``x * (1 / scale)`` instead of the correctly rounded ``x / scale`` (fewer
  instructions; not bit-identical: ~0.04% of the e4m3 values differ by one step);

and, for the ceiling, torch's copy of one bf16 tensor and its cast to e4m3.

Result on one H100 (docs/results/probe_fp8_quant_variants_h100.json): the current kernel
moved 2.90 TB/s at 119,056 and 2.87 at 67,576 tokens (1.010 / 0.578 ms), torch's plain copy
3.02 / 2.99. The current structure with the reciprocal store (``split=None``) was
the only faster one: 0.958 / 0.553 ms at 64 rows and 8 warps (the defaults), 0.944 / 0.544 at
128 rows and 16 warps, 5-7% -- now the kernel's (:func:`xattn_video.kernels.fp8._block_store`).
The rest were slower: split with the reciprocal 3-4%, the bit-identical variants 17-36% (the
joint loads hold more registers). A few percent of ~1 ms: the fp8 gap at density 0.1 (issue
8) does not come from the quantizer on that card. The H200 (1.4x the memory bandwidth for the
same arithmetic; the quantizer moved 3.1 TB/s there) is not measured.

Usage (GPU): python benchmarks/probe_fp8_quant_variants.py [--seq 119056 67576] [--out F.json]
"""

from __future__ import annotations

import argparse
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, "benchmarks")
from _common import bench_ms, save_json  # noqa: E402

from xattn_video.kernels import fp8  # noqa: E402


@triton.jit
def _stats(x, FP16: tl.constexpr):
    """x: tile bf16/fp16 -> (amax of finite |x| as fp32, per-element bad bool)."""
    bits = x.to(tl.int16, bitcast=True).to(tl.int32) & 0x7FFF
    if FP16:
        bad = bits >= 0x7C00
    else:
        bad = bits >= 0x7F80
    m = tl.max(tl.max(tl.where(bad, 0, bits), axis=1), axis=0)
    if FP16:
        amax = m.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    else:
        amax = (m << 16).to(tl.float32, bitcast=True)
    return amax, bad


@triton.jit
def _quant(x, amax, y_ptrs, ymask, RECIP: tl.constexpr):
    scale = tl.where(amax > 0, tl.math.div_rn(amax, 448.0), 1.0)
    if RECIP:
        inv = tl.math.div_rn(1.0, scale)
        y = x.to(tl.float32) * inv
    else:
        y = tl.math.div_rn(x.to(tl.float32), scale)
    tl.store(y_ptrs, y.to(y_ptrs.dtype.element_ty), mask=ymask)
    return scale


@triton.jit
def _qi_kernel(
    Q, K, V, Q8, K8, Q_SCALE, K_SCALE, V_AMAX, Q_BAD, KV_BAD3, KV_LEN,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, syqb, syqh, syqn, sykb, sykh, sykn,
    H, NQ, NK, NBQ, NBK, NCHUNK, BH,
    BLOCK: tl.constexpr, D: tl.constexpr, ROWS: tl.constexpr,
    RECIP: tl.constexpr, FP16: tl.constexpr,
):  # fmt: skip
    """One program per (block, b*h): q, k, v's blocks, loads of all three issued together."""
    blk = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    b64 = b.to(tl.int64)
    offs_d = tl.arange(0, D)
    kvl = tl.minimum(tl.load(KV_LEN + b), NK)
    do_q = blk < NBQ
    do_kv = blk < NBK
    q_amax = 0.0
    k_amax = 0.0
    v_amax = 0.0
    k_bad = 0
    v_bad = 0
    for c in range(0, BLOCK, ROWS):
        offs_n = blk * BLOCK + c + tl.arange(0, ROWS)
        qm = (offs_n[:, None] < NQ) & do_q
        kvm = (offs_n[:, None] < kvl) & do_kv
        xq = tl.load(Q + b64 * sqb + h * sqh + offs_n[:, None] * sqn + offs_d[None, :],
                     mask=qm, other=0.0)  # fmt: skip
        xk = tl.load(K + b64 * skb + h * skh + offs_n[:, None] * skn + offs_d[None, :],
                     mask=kvm, other=0.0)  # fmt: skip
        xv = tl.load(V + b64 * svb + h * svh + offs_n[:, None] * svn + offs_d[None, :],
                     mask=kvm, other=0.0)  # fmt: skip
        a, bad = _stats(xq, FP16)
        q_amax = tl.maximum(q_amax, a)
        tl.store(Q_BAD + bh * NQ + offs_n, tl.max(bad.to(tl.int8), axis=1),
                 mask=(offs_n < NQ) & do_q)  # fmt: skip
        a, bad = _stats(xk, FP16)
        k_amax = tl.maximum(k_amax, a)
        k_bad = tl.maximum(k_bad, tl.max(tl.max(bad.to(tl.int32), axis=1), axis=0))
        a, bad = _stats(xv, FP16)
        v_amax = tl.maximum(v_amax, a)
        v_bad = tl.maximum(v_bad, tl.max(tl.max(bad.to(tl.int32), axis=1), axis=0))
    for c in range(0, BLOCK, ROWS):
        offs_n = blk * BLOCK + c + tl.arange(0, ROWS)
        qm = (offs_n[:, None] < NQ) & do_q
        kvm = (offs_n[:, None] < kvl) & do_kv
        xq = tl.load(Q + b64 * sqb + h * sqh + offs_n[:, None] * sqn + offs_d[None, :],
                     mask=qm, other=0.0)  # fmt: skip
        xk = tl.load(K + b64 * skb + h * skh + offs_n[:, None] * skn + offs_d[None, :],
                     mask=kvm, other=0.0)  # fmt: skip
        s = _quant(xq, q_amax, Q8 + b64 * syqb + h * syqh + offs_n[:, None] * syqn
                   + offs_d[None, :], qm, RECIP)  # fmt: skip
        tl.store(Q_SCALE + bh * NBQ + blk, s, mask=do_q & (c == 0))
        s = _quant(xk, k_amax, K8 + b64 * sykb + h * sykh + offs_n[:, None] * sykn
                   + offs_d[None, :], (offs_n[:, None] < NK) & do_kv, RECIP)  # fmt: skip
        tl.store(K_SCALE + bh * NBK + blk, s, mask=do_kv & (c == 0))
    tl.store(V_AMAX + bh * NBK + blk, v_amax, mask=do_kv)
    tl.store(KV_BAD3 + bh * NCHUNK + blk, tl.maximum(k_bad, v_bad).to(tl.int8), mask=blk < NCHUNK)


@triton.jit
def _qi_split_kernel(
    Q, K, V, Q8, K8, Q_SCALE, K_SCALE, V_AMAX, Q_BAD, KV_BAD3, KV_LEN,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, syqb, syqh, syqn, sykb, sykh, sykn,
    H, NQ, NK, NBQ, NBK, NCHUNK, BH,
    BLOCK: tl.constexpr, D: tl.constexpr, RECIP: tl.constexpr, FP16: tl.constexpr,
):  # fmt: skip
    """One program per (block, b*h, tensor): the whole block in registers, one sweep."""
    blk = tl.program_id(0)
    bh = tl.program_id(1)
    which = tl.program_id(2)
    b = bh // H
    h = bh % H
    b64 = b.to(tl.int64)
    offs_d = tl.arange(0, D)
    offs_n = blk * BLOCK + tl.arange(0, BLOCK)
    kvl = tl.minimum(tl.load(KV_LEN + b), NK)
    if which == 0:
        if blk < NBQ:
            x = tl.load(Q + b64 * sqb + h * sqh + offs_n[:, None] * sqn + offs_d[None, :],
                        mask=offs_n[:, None] < NQ, other=0.0)  # fmt: skip
            a, bad = _stats(x, FP16)
            tl.store(Q_BAD + bh * NQ + offs_n, tl.max(bad.to(tl.int8), axis=1),
                     mask=offs_n < NQ)  # fmt: skip
            s = _quant(x, a, Q8 + b64 * syqb + h * syqh + offs_n[:, None] * syqn
                       + offs_d[None, :], offs_n[:, None] < NQ, RECIP)  # fmt: skip
            tl.store(Q_SCALE + bh * NBQ + blk, s)
    elif which == 1:
        if blk < NBK:
            x = tl.load(K + b64 * skb + h * skh + offs_n[:, None] * skn + offs_d[None, :],
                        mask=offs_n[:, None] < kvl, other=0.0)  # fmt: skip
            a, bad = _stats(x, FP16)
            s = _quant(x, a, K8 + b64 * sykb + h * sykh + offs_n[:, None] * sykn
                       + offs_d[None, :], offs_n[:, None] < NK, RECIP)  # fmt: skip
            tl.store(K_SCALE + bh * NBK + blk, s)
            tl.store(KV_BAD3 + bh * NCHUNK + blk, tl.max(tl.max(bad.to(tl.int8), axis=1), axis=0))
    else:
        if blk < NBK:
            x = tl.load(V + b64 * svb + h * svh + offs_n[:, None] * svn + offs_d[None, :],
                        mask=offs_n[:, None] < kvl, other=0.0)  # fmt: skip
            a, bad = _stats(x, FP16)
            tl.store(V_AMAX + bh * NBK + blk, a)
            tl.store(KV_BAD3 + BH * NCHUNK + bh * NCHUNK + blk,
                     tl.max(tl.max(bad.to(tl.int8), axis=1), axis=0))  # fmt: skip


def variant(q, k, v, *, rows, split, recip, warps, block=128):
    if split is None:  # the module's kernel (q, k, v in turn) at these launch knobs
        return current(q, k, v, block, chunk=rows, warps=warps)
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    nbq, nbk = triton.cdiv(Nq, block), triton.cdiv(Nk, block)
    n_chunks = max(nbq, nbk)
    dev = q.device
    lens = torch.full((B,), Nk, dtype=torch.int32, device=dev)
    q8 = torch.empty((B, H, Nq, D), dtype=torch.float8_e4m3fn, device=dev)
    k8 = torch.empty((B, H, Nk, D), dtype=torch.float8_e4m3fn, device=dev)
    q_scale = torch.empty((B * H, nbq), dtype=torch.float32, device=dev)
    k_scale = torch.empty((B * H, nbk), dtype=torch.float32, device=dev)
    v_amax = torch.empty((B * H, nbk), dtype=torch.float32, device=dev)
    q_bad = torch.empty((B * H, Nq), dtype=torch.int8, device=dev)
    kv_bad3 = torch.zeros((2 if split else 1, B * H, n_chunks), dtype=torch.int8, device=dev)
    kern = _qi_split_kernel if split else _qi_kernel
    extra = dict(ROWS=rows) if not split else {}
    kern[(n_chunks, B * H, 3 if split else 1)](
        q, k, v, q8, k8, q_scale, k_scale, v_amax, q_bad, kv_bad3, lens,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), q8.stride(0), q8.stride(1), q8.stride(2),
        k8.stride(0), k8.stride(1), k8.stride(2), H, Nq, Nk, nbq, nbk, n_chunks, B * H,
        BLOCK=block, D=D, RECIP=recip, FP16=q.dtype == torch.float16, num_warps=warps,
        **extra,
    )  # fmt: skip
    kv_bad = kv_bad3.amax(0) if split else kv_bad3[0]
    return q8, k8, q_scale, k_scale, v_amax, q_bad, kv_bad


def current(q, k, v, block=128, chunk=fp8.INPUTS_CHUNK, warps=fp8.INPUTS_WARPS):
    """The fp8 module's one launch (:func:`xattn_video.kernels.fp8._launch`), flags fused."""
    lens = torch.full((q.shape[0],), k.shape[2], dtype=torch.int32, device=q.device)
    return fp8._launch(q, k, v, lens, block, True, chunk, warps)


def mismatches(a, b):
    out = []
    for x, y in zip(a, b, strict=True):
        if x.dtype == torch.float8_e4m3fn:
            x, y = x.view(torch.uint8), y.view(torch.uint8)
        out.append(int((x != y).sum()))
    return out


# (rows per sweep step, one program per tensor (None: q, k, v in turn as now), reciprocal, warps)
VARIANTS = [
    (64, None, True, 8), (32, None, True, 4), (128, None, True, 16),
    (64, False, False, 8), (64, False, True, 8), (32, False, True, 8), (32, False, True, 4),
    (16, False, True, 4), (128, True, True, 16), (128, True, False, 16), (128, True, True, 32),
    (128, True, True, 8),
]  # fmt: skip


def measure(n: int) -> list[dict]:
    """The rows of one sequence length (24 heads, head dim 128, bf16, B=1)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 24, n, 128, device="cuda", generator=g).bfloat16() for _ in "qkv")
    # a few non-finite values and a wide dynamic range
    q[0, 3, 1000, 5] = float("nan")
    k[0, 5, 2000, 7] = float("inf")
    v[0, 7, 3000, 9] = float("-inf")
    q[0, 1] *= 1e-3
    k[0, 2] *= 300.0
    moved = 3 * q.numel() * 2 + 2 * q.numel()  # q, k, v read (bf16), Q8 and K8 written
    want = current(q, k, v)
    ms = bench_ms(lambda: current(q, k, v))
    rows = [dict(n=n, what="current (64 rows, 8 warps)", ms=ms, gbps=moved / ms / 1e6)]
    print(rows[-1], flush=True)
    for vrows, split, recip, warps in VARIANTS:
        kw = dict(rows=vrows, split=split, recip=recip, warps=warps)
        mm = mismatches(variant(q, k, v, **kw), want)
        ms = bench_ms(lambda kw=kw: variant(q, k, v, **kw))
        rows.append(dict(n=n, what=f"rows={vrows} split={split} recip={recip} warps={warps}",
                         ms=ms, gbps=moved / ms / 1e6, mismatches=mm))  # fmt: skip
        print(rows[-1], flush=True)
    y = torch.empty_like(q)
    ms = bench_ms(lambda: y.copy_(q))
    rows.append(dict(n=n, what="torch copy bf16 (one tensor)", ms=ms,
                     gbps=q.numel() * 4 / ms / 1e6))  # fmt: skip
    ms = bench_ms(lambda: q.to(torch.float8_e4m3fn))
    rows.append(dict(n=n, what="torch cast to e4m3 (one tensor)", ms=ms,
                     gbps=q.numel() * 3 / ms / 1e6))  # fmt: skip
    print(rows[-2:], flush=True)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seq", type=int, nargs="+", default=[119056, 67576])
    p.add_argument("--out", default="results/probe_fp8_quant_variants.json")
    args = p.parse_args(argv)
    rows = []
    for n in args.seq:
        rows += measure(n)
        torch.cuda.empty_cache()
    save_json(args.out, {"benchmark": "probe_fp8_quant_variants", "config": vars(args),
                         "rows": rows})  # fmt: skip


if __name__ == "__main__":
    main()
