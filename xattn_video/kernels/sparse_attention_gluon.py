"""Block-sparse attention forward for Hopper in Gluon (EXPERIMENTAL, not dispatched).

Work in progress for issue 8, written without a GPU: compiled for sm90 with Triton 3.6 and 3.8
(``tests/test_kernels_gluon.py`` does it on CPU: no spills, shared memory within 227 KB), never
run. ``kernel="gluon"`` is not wired into the op; the GPU test
``tests/test_gpu_gluon.py`` and ``benchmarks/probe_gluon.py`` are what the next GPU session runs.

Same contract as :func:`~xattn_video.kernels.sparse_attention.block_sparse_attention_fwd` for
bf16/fp16 inputs, block size 128, head dim 64 or 128: one program per (query block, b, h), 8 warps
(two warpgroups over the 128 query rows), Q once by TMA, K and V tiles of the listed key blocks
through a ``STAGES``-deep TMA ring (one mbarrier per slot and operand). The loop overlaps, as
FA3's intra-warpgroup pipelining does, the softmax of key tile j with the wgmma of Q.K^T of tile
j+1 and the wgmma of P.V of tile j-1:

    S_next = Q K_{j+1}^T        (async)
    P_j = softmax step on S_j  (registers, while the tensor cores run)
    wait (S_next, acc)          acc *= alpha_j
    acc += P_j V_j              (async; P_j from registers)

``late_wait=True`` (default) is FA3's finer order: every wait leaves the newest wgmma group in
flight (``wgmma.wait_group 1``), so the tensor cores always hold queued work; ``False`` waits
for both groups mid-tile (the simpler schedule, kept for comparison).

Only the last listed block can hold padded keys (ascending lists of valid blocks), so only its
tile is masked against ``kv_len``.

Not supported: block sizes other than 128, fp8, warp specialization (producer warp, ping-pong
of two consumer warpgroups), causal masks, backward.
"""

from __future__ import annotations

import math

import torch

from ._common import cdiv, kv_len_tensor

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_init,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    HAS_GLUON = True
except ImportError:  # pragma: no cover - Triton without Gluon's Hopper module
    HAS_GLUON = False

LOG2E = 1.4426950408889634


if HAS_GLUON:

    @gluon.jit
    def _load_kv(desc, smem, bars, slot, b, h, row, pred):
        bar = bars.index(slot)
        mbarrier.expect(bar, desc.block_type.nbytes, pred=pred)
        tma.async_copy_global_to_shared(desc, [b, h, row, 0], bar, smem.index(slot), pred=pred)

    @gluon.jit
    def _refill(k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, idx_base, j, cnt, b, h,
                BN: gl.constexpr, STAGES: gl.constexpr):  # fmt: skip
        """After tile j's waits: K of tile j+STAGES into tile j's slot (Q.K^T(j) is done), V of
        tile j-1+STAGES into tile j-1's slot (P.V(j-1) is done)."""
        refill = j + STAGES
        kb_r = gl.load(idx_base + refill, mask=refill < cnt, other=0)
        _load_kv(k_desc, k_smem, k_bars, j % STAGES, b, h, kb_r * BN, refill < cnt)
        prev = j - 1 + STAGES
        ok = (j > 0) & (prev < cnt)
        kb_p = gl.load(idx_base + prev, mask=ok, other=0)
        _load_kv(v_desc, v_smem, v_bars, (j + STAGES - 1) % STAGES, b, h, kb_p * BN, ok)

    @gluon.jit
    def _softmax_step(
        s, m_i, l_i, dtype: gl.constexpr, p_layout: gl.constexpr, row_o: gl.constexpr
    ):
        """One online-softmax step on logits s (base 2, scaled): (P as the P.V operand, the
        accumulator's rescale factor in its row layout, new m, new l)."""
        m_new = gl.maximum(m_i, gl.max(s, axis=1))
        alpha = gl.exp2(m_i - m_new)
        p = gl.exp2(s - gl.expand_dims(m_new, 1))
        l_new = l_i * alpha + gl.sum(p, axis=1)
        p_op = gl.convert_layout(p.to(dtype), p_layout)
        return p_op, gl.convert_layout(alpha, row_o), m_new, l_new

    @gluon.jit
    def _bsa_gluon_kernel(
        q_desc, k_desc, v_desc, o_desc, LSE, COUNTS, INDICES, KV_LEN,
        stride_cbh, stride_ibh, stride_im, H, N_Q, qk_scale,
        BLOCK: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr, STORE_LSE: gl.constexpr,
        LATE_WAIT: gl.constexpr, num_warps: gl.constexpr,
    ):  # fmt: skip
        BM: gl.constexpr = BLOCK
        BN: gl.constexpr = BLOCK
        pid_m = gl.program_id(0)
        pid_bh = gl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        kvl = gl.load(KV_LEN + b)
        cnt = gl.load(COUNTS + pid_bh * stride_cbh + pid_m)
        idx_base = INDICES + pid_bh * stride_ibh + pid_m * stride_im

        s_layout: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BN, 16]
        )
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, D, 16]
        )
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
        row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
        col_s: gl.constexpr = gl.SliceLayout(0, s_layout)

        q_smem = gl.allocate_shared_memory(q_desc.dtype, q_desc.block_type.shape, q_desc.layout)
        k_smem = gl.allocate_shared_memory(
            k_desc.dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout
        )
        v_smem = gl.allocate_shared_memory(
            v_desc.dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout
        )
        q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        k_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        v_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        mbarrier.init(q_bar, count=1)
        for i in gl.static_range(STAGES):
            mbarrier.init(k_bars.index(i), count=1)
            mbarrier.init(v_bars.index(i), count=1)

        # Prologue: Q, and the first STAGES key blocks' K and V.
        mbarrier.expect(q_bar, q_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [b, h, pid_m * BM, 0], q_bar, q_smem)
        for i in gl.static_range(STAGES):
            kb = gl.load(idx_base + i, mask=i < cnt, other=0)
            _load_kv(k_desc, k_smem, k_bars, i, b, h, kb * BN, i < cnt)
            _load_kv(v_desc, v_smem, v_bars, i, b, h, kb * BN, i < cnt)

        m_i = gl.full([BM], -1.0e30, gl.float32, layout=row_s)
        l_i = gl.full([BM], 0.0, gl.float32, layout=row_s)
        acc = warpgroup_mma_init(gl.zeros([BM, D], gl.float32, layout=o_layout))
        q2 = q_smem.reshape([BM, D])

        mbarrier.wait(q_bar, 0)
        s_cur = gl.zeros([BM, BN], gl.float32, layout=s_layout)
        if cnt > 0:
            mbarrier.wait(k_bars.index(0), 0)
            s_tok = warpgroup_mma(
                q2, k_smem.index(0).reshape([BN, D]).permute((1, 0)), s_cur,
                use_acc=False, is_async=True,
            )  # fmt: skip
            s_cur = warpgroup_mma_wait(num_outstanding=0, deps=(s_tok,))

        # Every tile but the last: full (only the last listed block can hold padded keys).
        if LATE_WAIT:
            # FA3's order: one wgmma group stays in flight across every wait. Issue order per
            # tile: Q.K^T(j+1), P.V(j); waiting for "all but the newest" group finds Q.K^T(j)
            # done at the top (P.V(j-1) may run on) and P.V(j-1) done mid-tile (Q.K^T(j+1)
            # runs on).
            s_tok = warpgroup_mma_init(s_cur)
            for j in range(cnt - 1):
                slot = j % STAGES
                nslot = (j + 1) % STAGES
                s_cur = warpgroup_mma_wait(num_outstanding=1, deps=(s_tok,))
                mbarrier.wait(k_bars.index(nslot), ((j + 1) // STAGES) & 1)
                s_tok = warpgroup_mma(
                    q2, k_smem.index(nslot).reshape([BN, D]).permute((1, 0)), s_cur,
                    use_acc=False, is_async=True,
                )  # fmt: skip
                p_op, alpha, m_i, l_i = _softmax_step(
                    s_cur * qk_scale, m_i, l_i, v_desc.dtype, p_layout, row_o
                )
                acc_r = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
                acc_r = acc_r * gl.expand_dims(alpha, 1)
                mbarrier.wait(v_bars.index(slot), (j // STAGES) & 1)
                acc = warpgroup_mma(p_op, v_smem.index(slot).reshape([BN, D]), acc_r, is_async=True)
                _refill(k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, idx_base, j, cnt, b, h,
                        BN, STAGES)  # fmt: skip
            s_cur = warpgroup_mma_wait(num_outstanding=1, deps=(s_tok,))
        else:
            for j in range(cnt - 1):
                slot = j % STAGES
                nslot = (j + 1) % STAGES
                # 1. Q.K^T of the next tile, in flight during this tile's softmax
                mbarrier.wait(k_bars.index(nslot), ((j + 1) // STAGES) & 1)
                s_tok = warpgroup_mma(
                    q2, k_smem.index(nslot).reshape([BN, D]).permute((1, 0)), s_cur,
                    use_acc=False, is_async=True,
                )  # fmt: skip
                # 2. online softmax of tile j (base 2, the scale in one multiply)
                p_op, alpha, m_i, l_i = _softmax_step(
                    s_cur * qk_scale, m_i, l_i, v_desc.dtype, p_layout, row_o
                )
                # 3. the previous P.V and the next Q.K^T done: K slot free, acc readable
                s_next, acc_r = warpgroup_mma_wait(num_outstanding=0, deps=(s_tok, acc))
                acc_r = acc_r * gl.expand_dims(alpha, 1)
                # 4. P.V of tile j
                mbarrier.wait(v_bars.index(slot), (j // STAGES) & 1)
                acc = warpgroup_mma(p_op, v_smem.index(slot).reshape([BN, D]), acc_r, is_async=True)
                # 5. refill the slots whose reads finished
                _refill(k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, idx_base, j, cnt, b, h,
                        BN, STAGES)  # fmt: skip
                s_cur = s_next

        acc_r = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        if cnt > 0:  # the last tile, masked against kv_len
            j = cnt - 1
            kb = gl.load(idx_base + j)
            valid = (kb * BN + gl.arange(0, BN, layout=col_s)) < kvl
            s = gl.where(gl.expand_dims(valid, 0), s_cur * qk_scale, float("-inf"))
            p_op, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, v_desc.dtype, p_layout, row_o)
            acc_r = acc_r * gl.expand_dims(alpha, 1)
            slot = j % STAGES
            mbarrier.wait(v_bars.index(slot), (j // STAGES) & 1)
            acc_r = warpgroup_mma(p_op, v_smem.index(slot).reshape([BN, D]), acc_r)

        for i in gl.static_range(STAGES):
            mbarrier.invalidate(k_bars.index(i))
            mbarrier.invalidate(v_bars.index(i))
        mbarrier.invalidate(q_bar)

        empty = l_i == 0.0
        denom = gl.convert_layout(gl.where(empty, 1.0, l_i), row_o)
        out = acc_r / gl.expand_dims(denom, 1)
        q_smem.reshape([BM, D]).store(out.to(o_desc.dtype))  # Q's buffer holds O (same tile)
        fence_async_shared()
        tma.async_copy_shared_to_global(o_desc, [b, h, pid_m * BM, 0], q_smem)
        if STORE_LSE:
            offs_m = pid_m * BM + gl.arange(0, BM, layout=row_s)
            lse = gl.where(empty, float("-inf"), (m_i + gl.log2(l_i)) * 0.6931471805599453)
            gl.store(LSE + pid_bh * N_Q + offs_m, lse, mask=offs_m < N_Q)
        tma.store_wait(pendings=0)


def block_sparse_attention_gluon(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    counts: torch.Tensor,
    indices: torch.Tensor,
    *,
    block_size: int,
    kv_len: torch.Tensor | None = None,
    scale: float | None = None,
    return_lse: bool = False,
    stages: int = 2,
    late_wait: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Gluon block-sparse attention (experimental, see the module docstring).

    q, k, v: (B, H, N, D) bf16/fp16 CUDA (sm90), 16-byte aligned strides, unit last stride;
    counts: (B, H, Nbq) int32; indices: (B, H, Nbq, L) int32 ascending valid blocks; kv_len:
    (B,) int. Returns out (B, H, N, D) in q's dtype and, with ``return_lse``, lse (B, H, N)
    float32 (natural log). ``stages``: K/V ring depth (2 or 3); ``late_wait``: FA3's order
    (one wgmma group always in flight) instead of waiting for both groups mid-tile.
    """
    if not HAS_GLUON:
        raise RuntimeError("this Triton has no Gluon Hopper module")
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    if block_size != 128 or D not in (64, 128):
        raise ValueError(f"the Gluon kernel takes block_size 128 and head dim 64/128, got "
                         f"{block_size} / {D}")  # fmt: skip
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    lens = kv_len_tensor(kv_len, B, Nk, q.device)
    out = torch.empty_like(q)
    lse = torch.empty((B, H, Nq), dtype=torch.float32, device=q.device) if return_lse else out
    dt = gl.bfloat16 if q.dtype == torch.bfloat16 else gl.float16
    block = [1, 1, block_size, D]
    layout = gl.NVMMASharedLayout.get_default_for(block, dt)
    descs = [TensorDescriptor.from_tensor(t, block, layout) for t in (q, k, v, out)]
    counts = counts.reshape(B * H, -1)
    indices = indices.reshape(B * H, indices.shape[-2], indices.shape[-1])
    grid = (cdiv(Nq, block_size), B * H)
    _bsa_gluon_kernel[grid](
        *descs, lse, counts, indices, lens,
        counts.stride(0), indices.stride(0), indices.stride(1), H, Nq, scale * LOG2E,
        BLOCK=block_size, D=D, STAGES=stages, STORE_LSE=return_lse, LATE_WAIT=late_wait,
        num_warps=8,
    )  # fmt: skip
    return (out, lse) if return_lse else out
