"""FP8 (e4m3) quantization for the Hopper kernels: Triton kernels and PyTorch references.

- :func:`quantize_fp8_blocks`: one symmetric scale per (b, h, token block) (Q and K), so a
  kernel can fold ``scale_q * scale_k`` into the softmax scale per tile.
- :func:`quantize_fp8_qk`: both of Q and K that way, scales flattened per (b, h) row.
- :func:`quantize_fp8_head_t`: one scale per (b, h), stored transposed (B, H, D, N) so the
  tensor cores can read it as the K-major B operand of P.V; optionally with the keys of each
  32 in the order of the e4m3 wgmma A operand (:func:`wgmma_fp8_key_order`), so a kernel can
  feed P from the Q.K^T accumulator without moving it between threads.

Both are memory-bound. The per-block kernel works in chunks of ``CHUNK`` rows: a first sweep
takes the block's amax, a second re-reads the chunks (from L1/L2) and writes e4m3, so a program
holds 32 rows instead of a whole 128 x 128 block (which ptxas spilled at 4 warps: 255
registers). On one H200 (``benchmarks/bench_fp8_quant.py``) one (24, 119,056, 128) bf16 tensor
takes 0.34 ms (3.2 TB/s moved), V's transposed copy 0.56 ms. The V path adds one ``amax``
reduction without a temporary. ``x ~= x8 * scale``; an all-zero block gets scale 1.

On CPU the references run: the Triton interpreter's fp32 -> e4m3 conversion neither rounds
half to even nor keeps subnormals, so it would not match the GPU's ``cvt.rn.satfinite``.

Not supported: other fp8 formats (e5m2), per-channel scales, inputs that are not (B, H, N, D).
"""

from __future__ import annotations

import torch

from ._common import HAS_TRITON, cdiv, triton_usable

if HAS_TRITON:
    import triton
    import triton.language as tl

FP8_MAX = 448.0  # largest finite float8_e4m3fn


def quantize_fp8_blocks_ref(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (B, H, N, D). Returns x8 (B, H, N, D) float8_e4m3fn, scale (B, H, ceil(N/block)) fp32."""
    B, H, N, D = x.shape
    nb = cdiv(N, block)
    pad = nb * block - N
    xp = torch.nn.functional.pad(x, (0, 0, 0, pad)) if pad else x
    amax = xp.reshape(B, H, nb, block * D).abs().amax(-1).float()
    scale = torch.where(amax > 0, amax / torch.full_like(amax, FP8_MAX), torch.ones_like(amax))
    x8 = (xp.reshape(B, H, nb, block, D).float() / scale[..., None, None]).to(torch.float8_e4m3fn)
    return x8.reshape(B, H, nb * block, D)[:, :, :N].contiguous(), scale


def round_fp8_blocks_ref(x: torch.Tensor, block: int) -> torch.Tensor:
    """x: (B, H, N, D) -> fp32 values of its per-block e4m3 quantization (x8 * scale), what
    the fp8 kernels compute with."""
    x8, scale = quantize_fp8_blocks_ref(x, block)
    return x8.float() * scale.repeat_interleave(block, -1)[..., : x.shape[2], None]


def _head_scale(v: torch.Tensor) -> torch.Tensor:
    """(B, H) fp32 e4m3 scale per head of v: (B, H, N, D): amax / FP8_MAX (1 for all-zero heads)."""
    # the max-norm is max |v| exactly, in one reduction (``v.abs().amax()`` writes |v| first)
    amax = torch.linalg.vector_norm(v, ord=float("inf"), dim=(-1, -2)).float()
    return torch.where(amax > 0, amax / torch.full_like(amax, FP8_MAX), torch.ones_like(amax))


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
    v: torch.Tensor, *, wgmma_key_order: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """v: (B, H, N, D). Returns vt8: (B, H, D, N) e4m3 view of a buffer whose token axis is
    padded to 16 (TMA strides), and scale (B, H) fp32 with ``v ~= vt8^T * scale``.

    ``wgmma_key_order``: the token axis padded with zero keys to a multiple of 32 and returned
    whole, (B, H, D, ceil(N/32)*32), its columns in :func:`wgmma_fp8_key_order`."""
    B, H, N, D = v.shape
    scale = _head_scale(v)
    width = _head_t_width(N, wgmma_key_order)
    buf = torch.zeros(B, H, D, width, dtype=torch.float8_e4m3fn, device=v.device)
    buf[..., :N] = (v.float() / scale[..., None, None]).transpose(-1, -2).to(torch.float8_e4m3fn)
    if wgmma_key_order:
        return buf[..., wgmma_fp8_key_order(width, v.device)].contiguous(), scale
    return buf[..., :N], scale


if HAS_TRITON:

    @triton.jit
    def _quant_blocks_kernel(
        X, Y, SCALE, sxb, sxh, sxn, syb, syh, syn, H, N, NB,
        BLOCK: tl.constexpr, D: tl.constexpr, CHUNK: tl.constexpr,
    ):  # fmt: skip
        blk = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        offs_d = tl.arange(0, D)
        x_base = X + b * sxb + h * sxh
        amax = 0.0
        # two loops, not unrolled: unrolled, the compiler merges the two sweeps' loads and the
        # whole block is live in registers again
        for c in range(0, BLOCK, CHUNK):  # sweep 1: the block's amax
            offs_n = blk * BLOCK + c + tl.arange(0, CHUNK)
            ok = offs_n[:, None] < N
            x = tl.load(x_base + offs_n[:, None] * sxn + offs_d[None, :], mask=ok, other=0.0)
            amax = tl.maximum(amax, tl.max(tl.max(tl.abs(x.to(tl.float32)), axis=1), axis=0))
        scale = tl.where(amax > 0, tl.math.div_rn(amax, 448.0), 1.0)
        for c in range(0, BLOCK, CHUNK):  # sweep 2: the same chunks, cached
            offs_n = blk * BLOCK + c + tl.arange(0, CHUNK)
            ok = offs_n[:, None] < N
            x = tl.load(x_base + offs_n[:, None] * sxn + offs_d[None, :], mask=ok, other=0.0)
            y = tl.math.div_rn(x.to(tl.float32), scale).to(Y.dtype.element_ty)
            tl.store(Y + b * syb + h * syh + offs_n[:, None] * syn + offs_d[None, :], y, mask=ok)
        tl.store(SCALE + bh * NB + blk, scale)

    @triton.jit
    def _quant_head_t_kernel(
        X, Y, SCALE, sxb, sxh, sxn, syb, syh, syd, H, N, N_OUT,
        BLOCK: tl.constexpr, D: tl.constexpr, WGMMA_ORDER: tl.constexpr,
    ):  # fmt: skip
        blk = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        offs_n = blk * BLOCK + tl.arange(0, BLOCK)
        offs_d = tl.arange(0, D)
        ok = offs_n[:, None] < N
        x = tl.load(X + b * sxb + h * sxh + offs_n[:, None] * sxn + offs_d[None, :], mask=ok,
                    other=0.0).to(tl.float32)  # fmt: skip
        yt = tl.trans(tl.math.div_rn(x, tl.load(SCALE + bh)).to(Y.dtype.element_ty))
        if WGMMA_ORDER:  # key 32i+16h+8c+2q+e to column 32i+16h+4q+2c+e; zero keys up to N_OUT
            yt = tl.reshape(yt, [D, BLOCK // 32, 2, 2, 4, 2])  # (d, i, h, c, q, e)
            yt = tl.reshape(tl.permute(yt, [0, 1, 2, 4, 3, 5]), [D, BLOCK])
            out_ok = offs_n[None, :] < N_OUT
        else:
            out_ok = tl.trans(ok)
        tl.store(Y + b * syb + h * syh + offs_d[:, None] * syd + offs_n[None, :], yt,
                 mask=out_ok)  # fmt: skip


def quantize_fp8_blocks(
    x: torch.Tensor, block: int, *, chunk: int = 32, num_warps: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(b, h, block) e4m3 quantization (Triton on CUDA, the reference elsewhere).
    Same contract as :func:`quantize_fp8_blocks_ref`; ``chunk`` rows per sweep step (a power of
    two; clamped to ``block``) and ``num_warps`` are the launch knobs (same result)."""
    if not (x.is_cuda and triton_usable(x)) or x.stride(-1) != 1:
        return quantize_fp8_blocks_ref(x, block)
    B, H, N, D = x.shape
    nb = cdiv(N, block)
    chunk = min(chunk, block)
    if block % chunk:
        raise ValueError(f"chunk {chunk} must divide the block size {block}")
    y = torch.empty(B, H, N, D, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty(B, H, nb, dtype=torch.float32, device=x.device)
    _quant_blocks_kernel[(nb, B * H)](
        x, y, scale, x.stride(0), x.stride(1), x.stride(2), y.stride(0), y.stride(1), y.stride(2),
        H, N, nb, BLOCK=block, D=D, CHUNK=chunk, num_warps=num_warps,
    )  # fmt: skip
    return y, scale


def quantize_fp8_qk(
    q: torch.Tensor, k: torch.Tensor, block: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q and K as the fp8 kernels take them: q, k: (B, H, N, D) -> q8, k8 (e4m3, same shapes)
    and their block scales flattened to (B*H, ceil(Nq/block)) / (B*H, ceil(Nk/block))."""
    q8, q_scale = quantize_fp8_blocks(q, block)
    k8, k_scale = quantize_fp8_blocks(k, block)
    bh = q.shape[0] * q.shape[1]
    return q8, k8, q_scale.reshape(bh, -1), k_scale.reshape(bh, -1)


def quantize_fp8_head_t(
    v: torch.Tensor, *, wgmma_key_order: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(b, h) e4m3 quantization, transposed (Triton on CUDA, the reference elsewhere).
    Same contract as :func:`quantize_fp8_head_t_ref`."""
    if not (v.is_cuda and triton_usable(v)) or v.stride(-1) != 1:
        return quantize_fp8_head_t_ref(v, wgmma_key_order=wgmma_key_order)
    B, H, N, D = v.shape
    scale = _head_scale(v).contiguous()
    width = _head_t_width(N, wgmma_key_order)
    buf = torch.empty(B, H, D, width, dtype=torch.float8_e4m3fn, device=v.device)
    block = 64  # a multiple of 32: the key order stays within a program
    _quant_head_t_kernel[(cdiv(N, block), B * H)](
        v, buf, scale, v.stride(0), v.stride(1), v.stride(2), buf.stride(0), buf.stride(1),
        buf.stride(2), H, N, width, BLOCK=block, D=D, WGMMA_ORDER=wgmma_key_order, num_warps=4,
    )  # fmt: skip
    return (buf, scale) if wgmma_key_order else (buf[..., :N], scale)
