"""Parts of the Gluon attention kernel shared by its two consumer loops (one key block per
step, :mod:`.sparse_attention_gluon`; fp8 pairs of key blocks, :mod:`.gluon_attention_pairs`):
the Triton versions it runs on, its register budget and softmax constants, the Gluon
functions both loops call (the query block's loads, the fp8 key order of P, the logits' key mask, a tile's softmax
scale, the P.V operand's V view, the epilogue that writes O and the LSE), and the bf16 path's
copy of the V block that holds kv_len with its padded rows zeroed (:func:`padded_tail_block`).

Not supported: anything but sm90 (wgmma), block size 128, head dims other than 64 / 128.
"""

from __future__ import annotations

import torch

from .gluon_ptx import PINGPONG_BARRIERS

MIN_TRITON = (3, 6)
"""Oldest Triton the kernel is checked on (3.6 on the GPU, the latest on CPU): Gluon is
experimental and its API (``warp_specialize``, layouts) changed between releases."""


def gluon_supported(version: str) -> bool:
    """Whether Triton ``version`` (e.g. "3.6.0", "3.8.0+git1a2b") is one this kernel supports."""
    parts = version.split("+")[0].split(".")
    try:
        return (int(parts[0]), int(parts[1])) >= MIN_TRITON
    except (IndexError, ValueError):
        return False


try:
    import triton
    import triton.language as tl
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma

    # the wrapper's host-side descriptors: part of what "Gluon's Hopper module" means here
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor  # noqa: F401

    HAS_GLUON = gluon_supported(triton.__version__)
except ImportError:  # pragma: no cover - Triton without Gluon's Hopper module
    HAS_GLUON = False

HALF = 64  # query rows per consumer warpgroup
MAXNREG = 168  # 12 warps x 32 x 168 <= 64K registers; re-allocated to 240 / 240 / 24
TAU = {"bf16": 8.0, "fp8": 2.0}
"""Lazy row maximum (base-2 log units): a row's reference maximum moves only when a tile's
exceeds it by more than TAU, so most tiles leave alpha == 1 and :func:`.gluon_ptx.rescale_rows`
skips the accumulator's rescale. P is then at most 2**(SHIFT + TAU): 256 in both precisions."""
SHIFT = {"bf16": 0.0, "fp8": 6.0}
"""P is scaled by 2**SHIFT (fp8: small probabilities stay out of e4m3's subnormals; with
:data:`TAU` its largest value 2**8 stays under e4m3's 448)."""


if HAS_GLUON:
    _TAU_BF16, _TAU_FP8 = gl.constexpr(TAU["bf16"]), gl.constexpr(TAU["fp8"])
    _SHIFT_BF16, _SHIFT_FP8 = gl.constexpr(SHIFT["bf16"]), gl.constexpr(SHIFT["fp8"])
    _BAR0 = gl.constexpr(PINGPONG_BARRIERS[0])

    @gluon.constexpr_function
    def _acc_layout(n, elem_bytes):
        """Register layout of a 64-row wgmma accumulator with ``n`` columns, one consumer
        warpgroup (4 warps stacked along the rows); wgmma's K per instruction is 32 bytes, so
        16 bf16 or 32 e4m3 values (``elem_bytes`` 2 or 1). Both consumer loops take their
        S and O layouts from here, so the epilogue and the masks see the same layouts."""
        return gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, n, 32 // elem_bytes]
        )

    @gluon.jit
    def _load_q(q_desc, q_bars, q_smem, b, h, pid_m):
        """The producer's first loads: the query block's two 64-row halves by TMA, one
        mbarrier each (the consumer warpgroup of that half waits on it)."""
        HALF: gl.constexpr = q_desc.block_type.shape[2]
        for i in gl.static_range(2):
            mbarrier.expect(q_bars.index(i), q_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(
                q_desc, [b, h, pid_m * (2 * HALF) + i * HALF, 0], q_bars.index(i), q_smem.index(i)
            )

    @gluon.jit
    def _wgmma_fp8_key_order(p):
        """fp8 P (rows, BN) in the Q.K^T accumulator's layout, its keys reordered within each 32
        (key 32i+16h+8c+2q+e to column 32i+16h+4q+2c+e): each thread's values then sit where
        the e4m3 A operand wants them (4 consecutive keys per register), so the conversion to
        the operand layout moves no data between threads. V^T comes in the same key order
        (:func:`.fp8.quantize_fp8_head_t` with ``wgmma_key_order``)."""
        R: gl.constexpr = p.shape[0]
        BN: gl.constexpr = p.shape[1]
        p = gl.reshape(p, [R, BN // 32, 2, 2, 4, 2])  # (row, i, h, c, q, e)
        return gl.reshape(gl.permute(p, [0, 1, 2, 4, 3, 5]), [R, BN])

    @gluon.jit
    def _epilogue(acc, m_i, l_i, o_smem, o_desc, LSE, b, h, pid_bh, row0, N_Q, v_scale,
                  row_s: gl.constexpr, row_o: gl.constexpr, SHIFT: gl.constexpr):  # fmt: skip
        """O = acc * v_scale / l into this half's output buffer (bf16: its now free Q buffer),
        then TMA to global; LSE if asked."""
        HALF: gl.constexpr = o_desc.block_type.shape[2]
        D: gl.constexpr = o_desc.block_type.shape[3]
        empty = l_i == 0.0
        denom = gl.convert_layout(gl.where(empty, 1.0, l_i / v_scale), row_o)
        out = acc / gl.expand_dims(denom, 1)
        o_smem.reshape([HALF, D]).store(out.to(o_desc.dtype))
        fence_async_shared()
        tma.async_copy_shared_to_global(o_desc, [b, h, row0, 0], o_smem)
        if LSE.dtype.element_ty == gl.float32:
            offs_m = row0 + gl.arange(0, HALF, layout=row_s)
            lse = gl.where(empty, float("-inf"),
                           (m_i - SHIFT + gl.log2(l_i)) * 0.6931471805599453)  # fmt: skip
            gl.store(LSE + pid_bh * N_Q + offs_m, lse, mask=offs_m < N_Q)
        tma.store_wait(pendings=0)

    @gluon.jit
    def _v_operand(v_smem, slot, BN: gl.constexpr, D: gl.constexpr, FP8: gl.constexpr):
        """The (keys, D) B operand of P.V: V's tile, or for fp8 the K-major view of V^T's."""
        if FP8:
            return v_smem.index(slot).reshape([D, BN]).permute((1, 0))
        else:
            return v_smem.index(slot).reshape([BN, D])

    @gluon.jit
    def _tile_scale(qk_scale, q_scale, k_scale, idx_base, j, FP8: gl.constexpr):
        """Softmax scale (base 2) of listed tile j: fp8 folds in Q's and that K block's scales."""
        if FP8:
            return qk_scale * q_scale * gl.load(k_scale + gl.load(idx_base + j))
        else:
            return qk_scale

    @gluon.jit
    def _mask_keys(s, idx_base, j, cnt, kvl, BN: gl.constexpr, col_s: gl.constexpr):
        """Logits of listed tile j with keys at or past kv_len set to -inf; all of them when
        j >= cnt (the pair loop's filler tile, a copy of the last listed one)."""
        kb = gl.load(idx_base + gl.minimum(j, cnt - 1))
        valid = ((kb * BN + gl.arange(0, BN, layout=col_s)) < kvl) & (j < cnt)
        return gl.where(gl.expand_dims(valid, 0), s, float("-inf"))


if HAS_GLUON:

    @triton.jit
    def _tail_kernel(V, T, LENS, svb, svh, svn, stb, sth, stn, H, N,
                     BN: tl.constexpr, D: tl.constexpr):  # fmt: skip
        bh = tl.program_id(0)
        b = bh // H
        h = bh % H
        kvl = tl.minimum(tl.load(LENS + b), N)
        rows = (kvl // BN) * BN + tl.arange(0, BN)
        d = tl.arange(0, D)
        x = tl.load(V + b.to(tl.int64) * svb + h * svh + rows[:, None] * svn + d[None, :],
                    mask=(rows < kvl)[:, None], other=0.0)  # fmt: skip
        tl.store(T + b * stb + h * sth + tl.arange(0, BN)[:, None] * stn + d[None, :], x)


def padded_tail_block(v: torch.Tensor, lens: torch.Tensor, block: int) -> torch.Tensor:
    """v: (B, H, N, D) on CUDA, lens: (B,) int32 valid keys -> (B, H, block, D): the rows of the
    block holding key ``lens[b]`` (from ``(lens[b] // block) * block``), those ``>= lens[b]``
    zeroed. The bf16 kernel loads that block's V tile from here: its padded rows meet P = 0 in
    P.V, and 0 * NaN is NaN (one Triton launch, B*H programs)."""
    B, H, N, D = v.shape
    t = torch.empty(B, H, block, D, dtype=v.dtype, device=v.device)
    _tail_kernel[(B * H,)](
        v, t, lens, v.stride(0), v.stride(1), v.stride(2), t.stride(0), t.stride(1), t.stride(2),
        H, N, BN=block, D=D, num_warps=8,
    )  # fmt: skip
    return t
