"""FP8 (e4m3) quantization for the Hopper kernels: Triton kernels and PyTorch references.

- :func:`quantize_fp8_blocks`: one symmetric scale per (b, h, token block) (Q and K), so a
  kernel can fold ``scale_q * scale_k`` into the softmax scale per tile.
- :func:`quantize_fp8_inputs`: what the fp8 kernels take of q, k (and v's scale) in one
  launch: Q and K per block, the per-head amax of v, and optionally the op's non-finite flags
  (:mod:`.nonfinite`) from the same reads, so an fp8 call reads q, k and v once before V's
  transposed copy instead of twice. The op quantizes once and hands the result to both the
  fp8 estimate and the fp8 attention (:class:`Fp8Inputs`).
- :func:`quantize_fp8_head_t`: one scale per (b, h), stored transposed (B, H, D, N) so the
  tensor cores can read it as the K-major B operand of P.V; optionally with the keys of each
  32 in the order of the e4m3 wgmma A operand (:func:`wgmma_fp8_key_order`), so a kernel can
  feed P from the Q.K^T accumulator without moving it between threads.

Padding and non-finite values: keys at positions ``>= kv_len[b]`` are quantized as zeros and
take no part in a scale (a padded row cannot coarsen the valid keys' grid, nor put a NaN into
P.V through a zero probability), and scales come from the finite values only (an Inf in one
query row leaves its block's other rows intact; the op's policy NaNs that row).

All are memory-bound. The per-block kernel works in chunks of ``CHUNK`` rows: a first sweep
takes the block's amax, a second re-reads the chunks (from L1/L2) and writes e4m3, so a program
holds 32 rows (4 warps) or 64 (8 warps, :data:`INPUTS_CHUNK`) instead of a whole 128 x 128
block (which ptxas spilled at 4 warps: 255 registers). On one H200
(``benchmarks/bench_fp8_quant.py``, 24 heads x 119,056 tokens x 128, bf16): one tensor per
block 0.37 ms (3.0 TB/s moved), the fp8 op's one launch over q, k and v 0.95 ms (3.1 TB/s),
V's transposed copy with the scale given 0.30 ms (3.7 TB/s), all with a division per element;
the reciprocal's multiply (:func:`_block_store`) took the one launch from 1.01 to 0.96 ms on
an H100 (benchmarks/probe_fp8_quant_variants.py). Launch configs change the time, never the
bytes. ``x ~= x8 * scale``; an all-zero block gets scale 1.

On CPU the references run: the Triton interpreter's fp32 -> e4m3 conversion neither rounds
half to even nor keeps subnormals, so it would not match the GPU's ``cvt.rn.satfinite``.

Not supported: other fp8 formats (e5m2), per-channel scales, inputs that are not (B, H, N, D),
different head counts for q and k.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._common import HAS_TRITON, cdiv, kv_len_tensor, triton_usable, zero_padding
from .nonfinite import FLAG_ROWS, nonfinite_flags

if HAS_TRITON:
    import triton
    import triton.language as tl

FP8_MAX = 448.0  # largest finite float8_e4m3fn
HEAD_T_BLOCKS = (32, 64, 128, 256)  # tokens per program of V's transposed copy
HEAD_T_BLOCK = 64
HEAD_T_WARPS = 4
# Launch of the one-launch quantizer (:func:`quantize_fp8_inputs`): rows per sweep step, warps.
# On the H200 (benchmarks/bench_fp8_quant.py) the fp8 op's call (q, k, v, flags) took 0.945 vs
# 1.012 ms at 119,056 tokens and 0.546 vs 0.577 at 67,576 against (32, 4).
INPUTS_CHUNK = 64
INPUTS_WARPS = 8


class Fp8Inputs(NamedTuple):
    """q and k as the fp8 kernels take them, and v's scale (:func:`quantize_fp8_inputs`)."""

    q8: torch.Tensor
    """(B, H, Nq, D) float8_e4m3fn."""
    k8: torch.Tensor
    """(B, H, Nk, D) float8_e4m3fn; keys ``>= kv_len[b]`` are 0."""
    q_scale: torch.Tensor
    """(B*H, ceil(Nq/block)) fp32: ``q ~= q8 * scale`` per block."""
    k_scale: torch.Tensor
    """(B*H, ceil(Nk/block)) fp32, from the valid keys only."""
    v_scale: torch.Tensor | None
    """(B, H) fp32 per-head scale of v's valid keys (what :func:`quantize_fp8_head_t` takes),
    None when v was not given."""


def _valid_rows(x: torch.Tensor, kv_len: torch.Tensor | None) -> torch.Tensor:
    """x with rows >= kv_len[b] set to 0 (x itself when kv_len is None)."""
    return x if kv_len is None else zero_padding(x, kv_len)


def _finite_abs_ref(x: torch.Tensor) -> torch.Tensor:
    a = x.abs().float()
    return torch.where(torch.isfinite(a), a, torch.zeros_like(a))


def _scale_of(amax: torch.Tensor) -> torch.Tensor:
    return torch.where(amax > 0, amax / torch.full_like(amax, FP8_MAX), torch.ones_like(amax))


def quantize_fp8_blocks_ref(
    x: torch.Tensor, block: int, kv_len: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (B, H, N, D); kv_len: (B,) or None (rows >= kv_len[b] quantized as 0, outside the
    scales). Returns x8 (B, H, N, D) float8_e4m3fn, scale (B, H, ceil(N/block)) fp32 from the
    finite values."""
    B, H, N, D = x.shape
    x = _valid_rows(x, kv_len)
    nb = cdiv(N, block)
    pad = nb * block - N
    xp = torch.nn.functional.pad(x, (0, 0, 0, pad)) if pad else x
    scale = _scale_of(_finite_abs_ref(xp).reshape(B, H, nb, block * D).amax(-1))
    inv = (1.0 / scale)[..., None, None]  # x * (1 / scale), as the kernel computes it
    x8 = (xp.reshape(B, H, nb, block, D).float() * inv).to(torch.float8_e4m3fn)
    return x8.reshape(B, H, nb * block, D)[:, :, :N].contiguous(), scale


def round_fp8_blocks_ref(
    x: torch.Tensor, block: int, kv_len: torch.Tensor | None = None
) -> torch.Tensor:
    """x: (B, H, N, D) -> fp32 values of its per-block e4m3 quantization (x8 * scale), what
    the fp8 kernels compute with (rows >= kv_len[b] as 0)."""
    x8, scale = quantize_fp8_blocks_ref(x, block, kv_len)
    rows = torch.arange(x.shape[2], device=x.device) // block  # a gather, see nonfinite_rows_ref
    return x8.float() * scale[..., rows, None]


def _head_scale(v: torch.Tensor, kv_len: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H) fp32 e4m3 scale per head of v: (B, H, N, D) from its finite valid values:
    amax / FP8_MAX (1 for all-zero heads)."""
    return _scale_of(_finite_abs_ref(_valid_rows(v, kv_len)).amax(dim=(-1, -2)))


def wgmma_fp8_key_order(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(n,) int64 with n a multiple of 32: the key stored at each column when keys are in the
    e4m3 wgmma operand's order. Within each 32, column 32i+16h+4q+2c+e holds key 32i+16h+8c+2q+e
    (q < 4; h, c, e < 2): the keys a thread holds of a Q.K^T accumulator row (2q, 2q+1, 8+2q,
    9+2q, ...) land on the 4 consecutive keys per register that the A operand of an e4m3 wgmma
    wants (:func:`.sparse_attention_gluon._wgmma_fp8_key_order` reorders P the same way)."""
    if n % 32:
        raise ValueError(f"the key order works on whole 32s of keys, got n={n}")
    col = torch.arange(n, device=device)
    i, h, q, c, e = col // 32, (col // 16) % 2, (col // 4) % 4, (col // 2) % 2, col % 2
    return 32 * i + 16 * h + 8 * c + 2 * q + e


def _head_t_width(n: int, wgmma_key_order: bool) -> int:
    """Token-axis length of V^T's buffer: a multiple of 16 (TMA strides), of 32 in key order."""
    multiple = 32 if wgmma_key_order else 16
    return cdiv(n, multiple) * multiple


def quantize_fp8_head_t_ref(
    v: torch.Tensor, *, kv_len: torch.Tensor | None = None, wgmma_key_order: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """v: (B, H, N, D); kv_len (B,) or None. Returns vt8: (B, H, D, N) e4m3 view of a buffer
    whose token axis is padded to 16 (TMA strides), and scale (B, H) fp32 with
    ``v ~= vt8^T * scale`` on the valid keys (padded keys are 0).

    ``wgmma_key_order``: the token axis padded with zero keys to a multiple of 32 and returned
    whole, (B, H, D, ceil(N/32)*32), its columns in :func:`wgmma_fp8_key_order`."""
    B, H, N, D = v.shape
    scale = _head_scale(v, kv_len)
    v = _valid_rows(v, kv_len)
    width = _head_t_width(N, wgmma_key_order)
    buf = torch.zeros(B, H, D, width, dtype=torch.float8_e4m3fn, device=v.device)
    buf[..., :N] = (v.float() / scale[..., None, None]).transpose(-1, -2).to(torch.float8_e4m3fn)
    if wgmma_key_order:
        return buf[..., wgmma_fp8_key_order(width, v.device)].contiguous(), scale
    return buf[..., :N], scale


if HAS_TRITON:

    @triton.jit
    def _block_amax(x_base, sxn, blk, n_valid, BAD, ROW_FLAGS: tl.constexpr, N_ROWS,
                    BLOCK: tl.constexpr, D: tl.constexpr, CHUNK: tl.constexpr):  # fmt: skip
        """Sweep 1 over block ``blk``'s rows < n_valid, CHUNK rows at a time: the amax of its
        finite values and whether any value is NaN / Inf; with ROW_FLAGS also a per-row flag
        (int8) into BAD for the rows < N_ROWS."""
        offs_d = tl.arange(0, D)
        amax = 0.0
        bad = 0
        # not unrolled: unrolled, the compiler merges the two sweeps' loads and the whole
        # block is live in registers again
        for c in range(0, BLOCK, CHUNK):
            offs_n = blk * BLOCK + c + tl.arange(0, CHUNK)
            x = tl.load(x_base + offs_n[:, None] * sxn + offs_d[None, :],
                        mask=offs_n[:, None] < n_valid, other=0.0)  # fmt: skip
            a = tl.abs(x.to(tl.float32))
            finite = a <= 3.4028234663852886e38  # False for NaN and Inf
            amax = tl.maximum(amax, tl.max(tl.max(tl.where(finite, a, 0.0), axis=1), axis=0))
            row_bad = tl.max(tl.where(finite, 0, 1), axis=1)
            bad = tl.maximum(bad, tl.max(row_bad, axis=0))
            if ROW_FLAGS:
                tl.store(BAD + offs_n, row_bad.to(tl.int8), mask=offs_n < N_ROWS)
        return amax, bad

    @triton.jit
    def _block_store(x_base, sxn, y_base, syn, blk, n_valid, n_rows, scale,
                     BLOCK: tl.constexpr, D: tl.constexpr, CHUNK: tl.constexpr):  # fmt: skip
        """Sweep 2: block ``blk``'s rows < n_rows in e4m3 (x * (1 / scale); rows >= n_valid as
        0). A multiply, not a division per element: 5-6% faster on an H100 (the division's
        instructions, benchmarks/probe_fp8_quant_variants.py); ~0.04% of the values land one
        e4m3 step from the correctly rounded x / scale."""
        offs_d = tl.arange(0, D)
        inv = tl.math.div_rn(1.0, scale)
        for c in range(0, BLOCK, CHUNK):  # the chunks of sweep 1, cached
            offs_n = blk * BLOCK + c + tl.arange(0, CHUNK)
            x = tl.load(x_base + offs_n[:, None] * sxn + offs_d[None, :],
                        mask=offs_n[:, None] < n_valid, other=0.0)  # fmt: skip
            y = (x.to(tl.float32) * inv).to(y_base.dtype.element_ty)
            tl.store(y_base + offs_n[:, None] * syn + offs_d[None, :], y,
                     mask=offs_n[:, None] < n_rows)  # fmt: skip

    @triton.jit
    def _quant_inputs_kernel(
        Q, K, V, Q8, K8, Q_SCALE, K_SCALE, V_AMAX, Q_BAD, KV_BAD, KV_LEN,
        sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, syqb, syqh, syqn, sykb, sykh, sykn,
        H, NQ, NK, NBQ, NBK, NCHUNK,
        BLOCK: tl.constexpr, D: tl.constexpr, CHUNK: tl.constexpr, HAS_Q: tl.constexpr,
        HAS_K: tl.constexpr, HAS_V: tl.constexpr, FLAGS: tl.constexpr,
    ):  # fmt: skip
        """One program per (token block, b*h): Q's block (scale, e4m3, row flags), K's block of
        valid keys (scale, e4m3), V's valid-key amax, and the block's key / value flag."""
        blk = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        b64 = b.to(tl.int64)  # b * sqb passes 2**31 for large B*H*N
        if HAS_Q:
            if blk < NBQ:
                x_base = Q + b64 * sqb + h * sqh
                amax, _ = _block_amax(x_base, sqn, blk, NQ, Q_BAD + bh * NQ, FLAGS, NQ,
                                      BLOCK, D, CHUNK)  # fmt: skip
                scale = tl.where(amax > 0, tl.math.div_rn(amax, 448.0), 1.0)
                _block_store(x_base, sqn, Q8 + b64 * syqb + h * syqh, syqn, blk, NQ, NQ, scale,
                             BLOCK, D, CHUNK)  # fmt: skip
                tl.store(Q_SCALE + bh * NBQ + blk, scale)
        kv_bad = 0
        if blk < NBK:
            kvl = tl.minimum(tl.load(KV_LEN + b), NK)
            if HAS_K:
                x_base = K + b64 * skb + h * skh
                amax, k_bad = _block_amax(x_base, skn, blk, kvl, Q_BAD, False, 0, BLOCK, D,
                                          CHUNK)  # fmt: skip
                scale = tl.where(amax > 0, tl.math.div_rn(amax, 448.0), 1.0)
                _block_store(x_base, skn, K8 + b64 * sykb + h * sykh, sykn, blk, kvl, NK, scale,
                             BLOCK, D, CHUNK)  # fmt: skip
                tl.store(K_SCALE + bh * NBK + blk, scale)
                kv_bad = tl.maximum(kv_bad, k_bad)
            if HAS_V:
                amax, v_bad = _block_amax(V + b64 * svb + h * svh, svn, blk, kvl, Q_BAD, False, 0,
                                          BLOCK, D, CHUNK)  # fmt: skip
                tl.store(V_AMAX + bh * NBK + blk, amax)
                kv_bad = tl.maximum(kv_bad, v_bad)
        if FLAGS:
            if blk < NCHUNK:
                tl.store(KV_BAD + bh * NCHUNK + blk, kv_bad.to(tl.int8))

    @triton.jit
    def _quant_head_t_kernel(
        X, Y, SCALE, KV_LEN, sxb, sxh, sxn, syb, syh, syd, H, N, N_OUT,
        BLOCK: tl.constexpr, D: tl.constexpr, WGMMA_ORDER: tl.constexpr,
    ):  # fmt: skip
        blk = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        b64 = b.to(tl.int64)  # b * sxb passes 2**31 for large B*H*N
        offs_n = blk * BLOCK + tl.arange(0, BLOCK)
        offs_d = tl.arange(0, D)
        ok = offs_n[:, None] < tl.minimum(tl.load(KV_LEN + b), N)  # padded keys: 0
        x = tl.load(X + b64 * sxb + h * sxh + offs_n[:, None] * sxn + offs_d[None, :], mask=ok,
                    other=0.0).to(tl.float32)  # fmt: skip
        yt = tl.trans(tl.math.div_rn(x, tl.load(SCALE + bh)).to(Y.dtype.element_ty))
        if WGMMA_ORDER:  # key 32i+16h+8c+2q+e to column 32i+16h+4q+2c+e; zero keys up to N_OUT
            yt = tl.reshape(yt, [D, BLOCK // 32, 2, 2, 4, 2])  # (d, i, h, c, q, e)
            yt = tl.reshape(tl.permute(yt, [0, 1, 2, 4, 3, 5]), [D, BLOCK])
            out_ok = offs_n[None, :] < N_OUT
        else:
            out_ok = offs_n[None, :] < N
        tl.store(Y + b64 * syb + h * syh + offs_d[:, None] * syd + offs_n[None, :], yt,
                 mask=out_ok)  # fmt: skip


def _gpu_path(*xs: torch.Tensor | None) -> bool:
    return all(x.is_cuda and triton_usable(x) and x.stride(-1) == 1 for x in xs if x is not None)


def _launch(q, k, v, lens, block, fused_flags, chunk, num_warps):
    """One :func:`_quant_inputs_kernel` launch over whichever of q, k, v are given (k / v:
    (B, H, Nk, D); lens (B,) int32). Returns q8, k8, q_scale, k_scale, v_amax (B*H, nbk),
    q_bad, kv_bad (None where not asked)."""
    ref = next(x for x in (q, k, v) if x is not None)
    B, H, _, D = ref.shape
    Nq = q.shape[2] if q is not None else 0
    Nk = (k if k is not None else v).shape[2] if (k is not None or v is not None) else 0
    nbq, nbk = cdiv(Nq, block), cdiv(Nk, block)
    chunk = min(chunk, block)
    if block % chunk:
        raise ValueError(f"chunk {chunk} must divide the block size {block}")
    n_chunks = max(nbq, nbk) if fused_flags else 0

    def new(shape, dtype, want=True):
        return torch.empty(shape, dtype=dtype, device=ref.device) if want else None

    q8 = new((B, H, Nq, D), torch.float8_e4m3fn, q is not None)
    k8 = new((B, H, Nk, D), torch.float8_e4m3fn, k is not None)
    q_scale = new((B * H, nbq), torch.float32, q is not None)
    k_scale = new((B * H, nbk), torch.float32, k is not None)
    v_amax = new((B * H, nbk), torch.float32, v is not None)
    q_bad = new((B * H, Nq), torch.int8, fused_flags)
    kv_bad = new((B * H, n_chunks), torch.int8, fused_flags)
    outs = (q8, k8, q_scale, k_scale, v_amax, q_bad, kv_bad)
    dummy = ref  # pointer arguments a program never touches (their HAS_* is False)
    xq, xk, xv, yq, yk = (t if t is not None else dummy for t in (q, k, v, q8, k8))
    _quant_inputs_kernel[(max(nbq, nbk), B * H)](
        xq, xk, xv, yq, yk, *(t if t is not None else dummy for t in outs[2:]), lens,
        xq.stride(0), xq.stride(1), xq.stride(2), xk.stride(0), xk.stride(1), xk.stride(2),
        xv.stride(0), xv.stride(1), xv.stride(2), yq.stride(0), yq.stride(1), yq.stride(2),
        yk.stride(0), yk.stride(1), yk.stride(2), H, Nq, Nk, nbq, nbk, n_chunks,
        BLOCK=block, D=D, CHUNK=chunk, HAS_Q=q is not None, HAS_K=k is not None,
        HAS_V=v is not None, FLAGS=fused_flags, num_warps=num_warps,
    )  # fmt: skip
    return outs


def quantize_fp8_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor | None = None,
    *,
    block: int,
    kv_len: torch.Tensor | None = None,
    flags: bool = False,
    chunk: int = INPUTS_CHUNK,
    num_warps: int = INPUTS_WARPS,
) -> tuple[Fp8Inputs, tuple[torch.Tensor, torch.Tensor] | None]:
    """q: (B, H, Nq, D), k / v: (B, H, Nk, D) bf16/fp16; kv_len (B,) int or None (all keys).
    Returns (:class:`Fp8Inputs`, flags): Q and K per (b, h, block), v's per-head scale when v is
    given, and with ``flags`` (needs v) the non-finite flags of
    :func:`.nonfinite.nonfinite_flags` (q_bad (B*H, Nq), kv_bad (B*H, chunks) int8), taken from
    the same reads when ``block`` is :data:`.nonfinite.FLAG_ROWS`. One Triton launch on CUDA
    (the references elsewhere; ``flags`` needs a Triton device). ``chunk`` rows per sweep step
    (a power of two; clamped to ``block``) and ``num_warps`` are launch knobs (same result)."""
    if flags and v is None:
        raise ValueError("flags=True needs v (the flags cover q, k and v)")
    B, H = q.shape[:2]
    lens = kv_len_tensor(kv_len, B, k.shape[2], q.device)
    if not _gpu_path(q, k, v):
        q8, q_scale = quantize_fp8_blocks_ref(q, block)
        k8, k_scale = quantize_fp8_blocks_ref(k, block, lens)
        v_scale = _head_scale(v, lens) if v is not None else None
        res = Fp8Inputs(q8, k8, q_scale.reshape(B * H, -1), k_scale.reshape(B * H, -1), v_scale)
        return res, (nonfinite_flags(q, k, v, lens) if flags else None)
    fused_flags = flags and block == FLAG_ROWS
    q8, k8, q_scale, k_scale, v_amax, q_bad, kv_bad = _launch(
        q, k, v, lens, block, fused_flags, chunk, num_warps
    )
    v_scale = _scale_of(v_amax.amax(-1)).reshape(B, H) if v is not None else None
    res = Fp8Inputs(q8, k8, q_scale, k_scale, v_scale)
    if not flags:
        return res, None
    return res, ((q_bad, kv_bad) if fused_flags else nonfinite_flags(q, k, v, lens))


def quantize_fp8_blocks(
    x: torch.Tensor,
    block: int,
    *,
    kv_len: torch.Tensor | None = None,
    chunk: int = 32,
    num_warps: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(b, h, block) e4m3 quantization of one tensor (Triton on CUDA, the reference
    elsewhere). Same contract as :func:`quantize_fp8_blocks_ref`; ``chunk`` / ``num_warps`` as
    in :func:`quantize_fp8_inputs`."""
    if not _gpu_path(x):
        return quantize_fp8_blocks_ref(x, block, kv_len)
    lens = kv_len_tensor(kv_len, x.shape[0], x.shape[2], x.device)
    _, x8, _, scale, *_ = _launch(None, x, None, lens, block, False, chunk, num_warps)
    return x8, scale.reshape(x.shape[0], x.shape[1], -1)


def quantize_fp8_qk(
    q: torch.Tensor, k: torch.Tensor, block: int, kv_len: torch.Tensor | None = None
) -> Fp8Inputs:
    """Q and K as the fp8 kernels take them (:class:`Fp8Inputs` without v's scale)."""
    return quantize_fp8_inputs(q, k, block=block, kv_len=kv_len)[0]


def fp8_head_scale(v: torch.Tensor, kv_len: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H) fp32 per-head e4m3 scale of v (B, H, N, D) from its finite valid values (one
    Triton launch on CUDA, :func:`_head_scale` elsewhere)."""
    if not _gpu_path(v):
        return _head_scale(v, kv_len)
    B, H, N, _ = v.shape
    lens = kv_len_tensor(kv_len, B, N, v.device)
    v_amax = _launch(None, None, v, lens, 128, False, 32, 4)[4]
    return _scale_of(v_amax.amax(-1)).reshape(B, H)


def quantize_fp8_head_t(
    v: torch.Tensor,
    *,
    kv_len: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    wgmma_key_order: bool = False,
    block: int = HEAD_T_BLOCK,
    num_warps: int = HEAD_T_WARPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(b, h) e4m3 quantization, transposed (Triton on CUDA, the reference elsewhere).
    Same contract as :func:`quantize_fp8_head_t_ref`; ``scale`` (B, H): the head scale already
    taken (:attr:`Fp8Inputs.v_scale`), so v is read once more instead of twice. ``block``
    tokens per program (one of :data:`HEAD_T_BLOCKS`: whole 32s, so the key order stays within
    a program) and ``num_warps`` are launch knobs (same result)."""
    if block not in HEAD_T_BLOCKS:
        raise ValueError(f"block must be one of {HEAD_T_BLOCKS}, got {block}")
    if not _gpu_path(v):
        return quantize_fp8_head_t_ref(v, kv_len=kv_len, wgmma_key_order=wgmma_key_order)
    B, H, N, D = v.shape
    lens = kv_len_tensor(kv_len, B, N, v.device)
    scale = (fp8_head_scale(v, lens) if scale is None else scale).contiguous()
    width = _head_t_width(N, wgmma_key_order)
    buf = torch.empty(B, H, D, width, dtype=torch.float8_e4m3fn, device=v.device)
    _quant_head_t_kernel[(cdiv(N, block), B * H)](
        v, buf, scale, lens, v.stride(0), v.stride(1), v.stride(2), buf.stride(0), buf.stride(1),
        buf.stride(2), H, N, width, BLOCK=block, D=D, WGMMA_ORDER=wgmma_key_order,
        num_warps=num_warps,
    )  # fmt: skip
    return (buf, scale) if wgmma_key_order else (buf[..., :N], scale)
