"""Block-sparse attention forward for Hopper (sm90) in Gluon: warp-specialized, ping-pong.

Same contract as :func:`~xattn_video.kernels.sparse_attention.block_sparse_attention_fwd`
(CSR ``counts`` / ``indices``, keys ``>= kv_len[b]`` masked, optional natural-log LSE) for
bf16/fp16 inputs, block size 128, head dim 64 or 128. One program per (query block of 128 rows,
b, h), 12 warps in three partitions (FlashAttention-3's structure):

* a producer warp (24 registers): Q's two 64-row halves once, then K and V of the listed key
  blocks by TMA into a ``stages``-deep ring, in the order the consumers read them (K of tile j
  before V of tile j-1), waiting on per-slot "empty" mbarriers;
* two consumer warpgroups (240 registers each), one per 64-row half of the query block, each
  with its own online softmax. Per key tile j a consumer issues Q.K^T(j) and P.V(j-1) on the
  tensor cores, then runs tile j's softmax while P.V(j-1) runs; K(j) and V(j-1) are released
  together (one arrival on slot j's "empty" mbarrier, count 2) once both wgmmas are done;
* ping-pong: the two consumers take turns issuing their matmuls on two hardware named
  barriers (:mod:`.gluon_ptx`, FA3's way; Gluon's mbarrier arrive costs a warpgroup bar.sync),
  so one warpgroup's softmax runs while the other's matmuls hold the tensor cores.

The softmax takes the row maximum of the raw logits and folds the scale into one FMA per
element (``exp2(s * scale - m)``). The maximum is lazy (FA4): a row's reference moves only when
a tile's maximum exceeds it by more than :data:`TAU`, so alpha is exactly 1 on most tiles and
the accumulator's rescale is skipped by warps whose 16 rows all kept theirs
(:func:`.gluon_ptx.rescale_rows`). Only the last listed block can hold padded keys, so only its
tile is masked.

``precision="fp8"`` (bf16/fp16 inputs quantized here, :mod:`.fp8`): Q and K in e4m3 with one
scale per (b, h, 128-token block), folded into each tile's softmax scale; P shifted by 2**6
(:data:`SHIFT`: small probabilities stay out of subnormals, the largest P, 2**(6 + TAU) = 256,
under e4m3's 448; l carries the same factor) and cast to e4m3; V^T in e4m3 with one scale per
(b, h). Both matmuls run on the fp8 tensor cores; O goes out through its own bf16 buffers. P
goes to the e4m3 A operand without moving between threads: its keys are reordered within each
32 (:func:`_wgmma_fp8_key_order`; V^T is quantized in the same key order) and packed 4 per
register next to the P.V matmul (:func:`_p_operand`). At ring depth 2 (the default) fp8 runs
the loop of :mod:`.gluon_attention_pairs` instead: two key blocks per step, P through shared
memory; this module's one-block loop stays for ``pairs=False`` and ring depths 3-4.

Measured on one H200 (triton 3.6, 24 heads, head dim 128; benchmarks/bench_attention.py,
docs/results/bench_attention_h200_cdbfe40.json, probe_gluon*_h200.json): bf16 577-657 effective
TFLOP/s at densities 0.1-1.0, 1.00-1.16x cuDNN's dense rate in the same run, vs 435-492 for the
Triton Hopper kernel. fp8: 735-852 TFLOP/s (1.30-1.50x cuDNN at 67k and 119k tokens), 1.19-1.46x
the Triton fp8 kernel with the one-block loop; the pair loop 9-11% faster than that (1.38-1.66x
cuDNN, probe_gluon_pairs_h200_*.json). Named barriers, the joint release and the lazy rescale
together: fp8 3.4-4.5% faster at densities 0.3-1.0, bf16 up to 2.4%
(probe_gluon_sync_lazy_h200.json); before
the key order (shuffles and byte re-packing of P: 47% more instructions under ncu,
docs/results/ncu_gluon_fp8_*) fp8 ran at 653-708.

Not supported: GPUs other than sm90 (wgmma: Blackwell has none), block sizes other than 128,
fp32 inputs, causal masks, backward.
"""

from __future__ import annotations

import torch

from ._common import LOG2E, cdiv, check_precision, kv_len_tensor, softmax_scale
from .fp8 import Fp8Inputs, quantize_fp8_head_t, quantize_fp8_inputs
from .gluon_attention_parts import (
    HALF,
    HAS_GLUON,
    MAXNREG,
    MIN_TRITON,
    SHIFT,
    TAU,
    gluon_supported,
    padded_tail_block,
)

__all__ = ["HAS_GLUON", "HALF", "MAXNREG", "MIN_TRITON", "SHIFT", "TAU",
           "block_sparse_attention_gluon", "gluon_supported"]  # fmt: skip

if HAS_GLUON:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from .gluon_attention_pairs import _consumer_pairs, _producer_pairs
    from .gluon_attention_parts import (
        _BAR0,
        _SHIFT_BF16,
        _SHIFT_FP8,
        _TAU_BF16,
        _TAU_FP8,
        _acc_layout,
        _epilogue,
        _load_q,
        _mask_keys,
        _tile_scale,
        _v_operand,
        _wgmma_fp8_key_order,
    )
    from .gluon_ptx import named_barrier_arrive, named_barrier_sync, pack_e4m3, rescale_rows

    @gluon.jit
    def _producer(args, WG: gl.constexpr, FP8: gl.constexpr):
        (q_desc, k_desc, v_desc, o_desc, q_smem, k_smem, v_smem, o_smem, q_bars, k_full, v_full,
         empty, LSE, idx_base, cnt, kvl, b, h, pid_m, pid_bh, N_Q, qk_scale, q_scale, k_scale,
         v_scale, STAGES, p_smem, vt_desc, TAIL) = args  # fmt: skip
        BN: gl.constexpr = k_desc.block_type.shape[2]
        _load_q(q_desc, q_bars, q_smem, b, h, pid_m)
        # K of tile 0, then per tile j: K of tile j+1, V of tile j (the consumers' order)
        kb = gl.load(idx_base, mask=cnt > 0, other=0)
        mbarrier.expect(k_full.index(0), k_desc.block_type.nbytes, pred=cnt > 0)
        tma.async_copy_global_to_shared(k_desc, [b, h, kb * BN, 0], k_full.index(0),
                                        k_smem.index(0), pred=cnt > 0)  # fmt: skip
        for j in range(cnt):
            nxt = j + 1
            has_next = nxt < cnt
            ns = nxt % STAGES
            kb_n = gl.load(idx_base + nxt, mask=has_next, other=0)
            # K(j+1) and V(j) take the slots of K(j+1-S) and V(j-S), both freed by the
            # consumers' release of tile j+1-S
            mbarrier.wait(empty.index(ns), ((nxt // STAGES) & 1) ^ 1)
            mbarrier.expect(k_full.index(ns), k_desc.block_type.nbytes, pred=has_next)
            tma.async_copy_global_to_shared(k_desc, [b, h, kb_n * BN, 0], k_full.index(ns),
                                            k_smem.index(ns), pred=has_next)  # fmt: skip
            s = j % STAGES
            kb = gl.load(idx_base + j)
            mbarrier.expect(v_full.index(s), v_desc.block_type.nbytes)
            if FP8:  # V^T: (D, keys)
                tma.async_copy_global_to_shared(v_desc, [b, h, 0, kb * BN], v_full.index(s),
                                                v_smem.index(s))  # fmt: skip
            elif TAIL:  # the block holding kv_len: its padded rows zeroed (vt_desc)
                tma.async_copy_global_to_shared(v_desc, [b, h, kb * BN, 0], v_full.index(s),
                                                v_smem.index(s), pred=kb != kvl // BN)  # fmt: skip
                tma.async_copy_global_to_shared(vt_desc, [b, h, 0, 0], v_full.index(s),
                                                v_smem.index(s), pred=kb == kvl // BN)  # fmt: skip
            else:
                tma.async_copy_global_to_shared(v_desc, [b, h, kb * BN, 0], v_full.index(s),
                                                v_smem.index(s))  # fmt: skip

    @gluon.jit
    def _softmax_step(s, m_i, l_i, qk_scale, dtype: gl.constexpr, p_layout: gl.constexpr,
                      row_o: gl.constexpr, SHIFT: gl.constexpr, TAU: gl.constexpr,
                      FP8: gl.constexpr):  # fmt: skip
        """One online-softmax step on raw logits s (the scale folded into the exponent's FMA):
        (P, the accumulator's rescale factor in its row layout, new m, l). m is lazy: it moves
        only when the tile's row maximum exceeds it by more than TAU (alpha is then exactly 1
        elsewhere). P and l are scaled by 2**SHIFT. bf16: P as the P.V operand; fp8: P in fp32,
        made the operand by :func:`_p_operand` next to its matmul."""
        m_tile = gl.max(s, axis=1) * qk_scale
        m_new = gl.where(m_tile > m_i + TAU, m_tile, m_i)
        alpha = gl.where(m_new == m_i, 1.0, gl.exp2(m_i - m_new))
        p = gl.exp2(s * qk_scale - gl.expand_dims(m_new - SHIFT, 1))
        l_new = l_i * alpha + gl.sum(p, axis=1)
        if not FP8:
            p = gl.convert_layout(p.to(dtype), p_layout)
        return p, gl.convert_layout(alpha, row_o), m_new, l_new

    @gluon.jit
    def _p_operand(p, p_layout: gl.constexpr, FP8: gl.constexpr):
        """P as the A operand of P.V. fp8: keys reordered (:func:`_wgmma_fp8_key_order`, no data
        moves between threads), then 4 keys per register (:func:`.gluon_ptx.pack_e4m3`).
        Done here, next to the matmul, the packed registers go straight into the wgmma; carried
        across the loop as e4m3 values, Triton kept one byte per register and re-packed them
        (~100 more PRMT per thread and tile in the SASS)."""
        if FP8:
            p = pack_e4m3(gl.convert_layout(_wgmma_fp8_key_order(p), p_layout))
        return p

    @gluon.jit
    def _consumer(args, WG: gl.constexpr, FP8: gl.constexpr):
        """FA3's order with ping-pong: per tile j, wait for this warpgroup's turn, issue
        Q.K^T(j) and P.V(j-1), pass the turn to the other warpgroup, then tile j's softmax while
        P.V(j-1) (and the other warpgroup's matmuls) run; then release K(j) and V(j-1)'s slots
        with one arrival. Turns are hardware named barriers (:data:`.gluon_ptx.PINGPONG_BARRIERS`,
        warpgroup WG waits at BAR0 + WG): warpgroup 1 arrives at warpgroup 0's once up front and
        skips its last arrival, so every barrier ends balanced."""
        (q_desc, k_desc, v_desc, o_desc, q_smem, k_smem, v_smem, o_smem, q_bars, k_full, v_full,
         empty, LSE, idx_base, cnt, kvl, b, h, pid_m, pid_bh, N_Q, qk_scale, q_scale, k_scale,
         v_scale, STAGES, p_smem, vt_desc, TAIL) = args  # fmt: skip
        BN: gl.constexpr = k_desc.block_type.shape[2]
        D: gl.constexpr = k_desc.block_type.shape[3]
        HALF: gl.constexpr = q_desc.block_type.shape[2]
        dtype: gl.constexpr = v_desc.dtype
        SHIFT: gl.constexpr = _SHIFT_FP8 if FP8 else _SHIFT_BF16
        TAU: gl.constexpr = _TAU_FP8 if FP8 else _TAU_BF16
        BAR0: gl.constexpr = _BAR0
        s_layout: gl.constexpr = _acc_layout(BN, 1 if FP8 else 2)
        o_layout: gl.constexpr = _acc_layout(D, 1 if FP8 else 2)
        p_layout: gl.constexpr = gl.DotOperandLayout(
            operand_index=0, parent=o_layout, k_width=4 if FP8 else 2
        )
        row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
        row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
        col_s: gl.constexpr = gl.SliceLayout(0, s_layout)

        q = q_smem.index(WG).reshape([HALF, D])
        m_i = gl.full([HALF], -1.0e30, gl.float32, layout=row_s)
        l_i = gl.full([HALF], 0.0, gl.float32, layout=row_s)
        acc = gl.zeros([HALF, D], gl.float32, layout=o_layout)
        s = gl.zeros([HALF, BN], gl.float32, layout=s_layout)
        if FP8:  # P in fp32 until _p_operand
            p = gl.zeros([HALF, BN], gl.float32, layout=s_layout)
        else:
            p = gl.zeros([HALF, BN], dtype, layout=p_layout)
        alpha = gl.full([HALF], 1.0, gl.float32, layout=row_o)
        mbarrier.wait(q_bars.index(WG), 0)
        if cnt > 0:  # tile 0: Q.K^T only
            if WG == 1:
                named_barrier_arrive(BAR0)  # warpgroup 0 goes first
            named_barrier_sync(BAR0 + WG)
            mbarrier.wait(k_full.index(0), 0)
            s_tok = warpgroup_mma(q, k_smem.index(0).reshape([BN, D]).permute((1, 0)), s,
                                  use_acc=False, is_async=True)  # fmt: skip
            if WG == 0 or cnt > 1:
                named_barrier_arrive(BAR0 + 1 - WG)
            s = warpgroup_mma_wait(num_outstanding=0, deps=(s_tok,))
            mbarrier.arrive(empty.index(0), count=1)
            if cnt == 1:
                s = _mask_keys(s, idx_base, 0, cnt, kvl, BN, col_s)
            sc = _tile_scale(qk_scale, q_scale, k_scale, idx_base, 0, FP8)
            p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, sc, dtype, p_layout, row_o, SHIFT,
                                               TAU, FP8)  # fmt: skip
        for j in range(1, cnt):
            slot = j % STAGES
            pslot = (j - 1) % STAGES
            sc = _tile_scale(qk_scale, q_scale, k_scale, idx_base, j, FP8)  # loads in flight early
            named_barrier_sync(BAR0 + WG)
            mbarrier.wait(k_full.index(slot), (j // STAGES) & 1)
            s_tok = warpgroup_mma(q, k_smem.index(slot).reshape([BN, D]).permute((1, 0)), s,
                                  use_acc=False, is_async=True)  # fmt: skip
            acc = rescale_rows(acc, alpha)
            mbarrier.wait(v_full.index(pslot), ((j - 1) // STAGES) & 1)
            acc_tok = warpgroup_mma(_p_operand(p, p_layout, FP8),
                                    _v_operand(v_smem, pslot, BN, D, FP8), acc,
                                    is_async=True)  # fmt: skip
            if WG == 0 or j < cnt - 1:
                named_barrier_arrive(BAR0 + 1 - WG)
            s = warpgroup_mma_wait(num_outstanding=1, deps=(s_tok,))
            if j == cnt - 1:  # only the last listed block can hold padded keys
                s = _mask_keys(s, idx_base, j, cnt, kvl, BN, col_s)
            p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, sc, dtype, p_layout, row_o, SHIFT,
                                               TAU, FP8)  # fmt: skip
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc_tok,))
            mbarrier.arrive(empty.index(slot), count=1)  # K(j) and V(j-1) read
        if cnt > 0:
            acc = rescale_rows(acc, alpha)
            slot = (cnt - 1) % STAGES
            mbarrier.wait(v_full.index(slot), ((cnt - 1) // STAGES) & 1)
            acc = warpgroup_mma(
                _p_operand(p, p_layout, FP8), _v_operand(v_smem, slot, BN, D, FP8), acc
            )
        _epilogue(acc, m_i, l_i, o_smem.index(WG), o_desc, LSE, b, h, pid_bh,
                  pid_m * (2 * HALF) + WG * HALF, N_Q, v_scale, row_s, row_o, SHIFT)  # fmt: skip

    @gluon.jit
    def _bsa_gluon_kernel(
        q_desc, k_desc, v_desc, o_desc, LSE, COUNTS, INDICES, KV_LEN, Q_SCALE, K_SCALE, V_SCALE,
        stride_cbh, stride_ibh, stride_im, stride_sq, stride_sk, H, N_Q, qk_scale, vt_desc,
        STAGES: gl.constexpr, FP8: gl.constexpr, PAIRS: gl.constexpr, TAIL: gl.constexpr,
        num_warps: gl.constexpr,
    ):  # fmt: skip
        pid_m = gl.program_id(0)
        pid_bh = gl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        kvl = gl.load(KV_LEN + b)
        cnt = gl.load(COUNTS + pid_bh * stride_cbh + pid_m)
        idx_base = INDICES + pid_bh * stride_ibh + pid_m * stride_im
        if FP8:
            q_scale = gl.load(Q_SCALE + pid_bh * stride_sq + pid_m)
            v_scale = gl.load(V_SCALE + pid_bh)
        else:
            q_scale = 1.0
            v_scale = 1.0
        k_scale = K_SCALE + pid_bh * stride_sk

        q_smem = gl.allocate_shared_memory(q_desc.dtype, [2] + q_desc.block_type.shape,
                                           q_desc.layout)  # fmt: skip
        TILES: gl.constexpr = STAGES * 2 if PAIRS else STAGES
        k_smem = gl.allocate_shared_memory(k_desc.dtype, [TILES] + k_desc.block_type.shape,
                                           k_desc.layout)  # fmt: skip
        v_smem = gl.allocate_shared_memory(v_desc.dtype, [TILES] + v_desc.block_type.shape,
                                           v_desc.layout)  # fmt: skip
        if FP8:  # O (bf16) does not fit Q's e4m3 buffers
            o_smem = gl.allocate_shared_memory(o_desc.dtype, [2] + o_desc.block_type.shape,
                                               o_desc.layout)  # fmt: skip
        else:
            o_smem = q_smem
        if PAIRS:  # each consumer's P, two key tiles, as the A operand of P.V
            p_smem = gl.allocate_shared_memory(
                gl.float8e4nv,
                [4, q_desc.block_type.shape[2], k_desc.block_type.shape[2]],
                gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=8),
            )
        else:
            p_smem = q_smem
        q_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        k_full = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        v_full = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(2):
            mbarrier.init(q_bars.index(i), count=1)
        for i in gl.static_range(STAGES):
            mbarrier.init(k_full.index(i), count=1)
            mbarrier.init(v_full.index(i), count=1)
            mbarrier.init(empty.index(i), count=2)  # one arrival per consumer warpgroup
        fence_async_shared()  # the initialized barriers visible to the TMA unit (async proxy)

        args = (q_desc, k_desc, v_desc, o_desc, q_smem, k_smem, v_smem, o_smem, q_bars, k_full,
                v_full, empty, LSE, idx_base, cnt, kvl, b, h, pid_m, pid_bh, N_Q, qk_scale,
                q_scale, k_scale, v_scale, STAGES, p_smem, vt_desc, TAIL)  # fmt: skip
        if PAIRS:
            gl.warp_specialize(
                [(_consumer_pairs, (args, 0, FP8)), (_consumer_pairs, (args, 1, FP8)),
                 (_producer_pairs, (args, 0, FP8))],
                [4, 1],
                [240, 24],
            )  # fmt: skip
        else:
            gl.warp_specialize(
                [(_consumer, (args, 0, FP8)), (_consumer, (args, 1, FP8)),
                 (_producer, (args, 0, FP8))],
                [4, 1],
                [240, 24],
            )  # fmt: skip
        for i in gl.static_range(2):
            mbarrier.invalidate(q_bars.index(i))
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(k_full.index(i))
            mbarrier.invalidate(v_full.index(i))
            mbarrier.invalidate(empty.index(i))


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
    precision: str = "bf16",
    pairs: bool | None = None,
    fp8_inputs: Fp8Inputs | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Gluon block-sparse attention for sm90 (see the module docstring).

    q, k, v: (B, H, N, D) bf16/fp16 CUDA (sm90), 16-byte aligned strides, unit last stride;
    counts: (B, H, Nbq) int32; indices: (B, H, Nbq, L) int32 ascending valid blocks; kv_len:
    (B,) int. Returns out (B, H, N, D) in q's dtype and, with ``return_lse``, lse (B, H, N)
    float32 (natural log). ``stages``: K/V ring depth (2 or 3; fp8 also 4). ``precision``:
    "bf16" (the inputs' dtype) or "fp8": Q and K in e4m3 with one scale per (b, h, block), V
    in e4m3 with one scale per (b, h) (:mod:`.fp8`), P in e4m3 scaled by 2**6 (:data:`SHIFT`).
    ``pairs``: fp8's loop over pairs of key blocks (:mod:`.gluon_attention_pairs`); None takes it
    for fp8 at ``stages=2`` (its ring is 2 pairs), where it measured 9-11% faster.
    ``fp8_inputs``: q, k (and v's scale) already quantized by
    :func:`.fp8.quantize_fp8_inputs` with this block size and kv_len; q and k then give only
    the shapes.
    """
    if not HAS_GLUON:
        raise RuntimeError(f"the Gluon kernel needs Triton >= {'.'.join(map(str, MIN_TRITON))} "
                           "with Gluon's Hopper module")  # fmt: skip
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    fp8 = precision == "fp8"
    if block_size != 128 or D not in (64, 128):
        raise ValueError(f"the Gluon kernel takes block_size 128 and head dim 64/128, got "
                         f"{block_size} / {D}")  # fmt: skip
    check_precision(precision)
    if stages not in ((2, 3, 4) if fp8 else (2, 3)):
        raise ValueError(f"the Gluon kernel takes stages 2 or 3 (fp8: up to 4), got {stages}")
    if pairs is None:
        pairs = fp8 and stages == 2
    if pairs and not (fp8 and stages == 2):
        raise ValueError("pairs=True takes precision='fp8' and stages=2 (two key blocks a slot)")
    if q.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"the Gluon kernel takes bf16/fp16 inputs, got {q.dtype}")
    scale = softmax_scale(D, scale)
    lens = kv_len_tensor(kv_len, B, Nk, q.device)
    out = torch.empty_like(q)
    # without return_lse the kernel gets an int32 placeholder and skips the store
    lse = (torch.empty((B, H, Nq), dtype=torch.float32, device=q.device) if return_lse
           else lens)  # fmt: skip
    dt = gl.bfloat16 if q.dtype == torch.bfloat16 else gl.float16
    q_block, kv_block = [1, 1, HALF, D], [1, 1, block_size, D]
    o_desc = TensorDescriptor.from_tensor(
        out, q_block, gl.NVMMASharedLayout.get_default_for(q_block, dt)
    )
    if fp8:
        f8 = fp8_inputs or quantize_fp8_inputs(q, k, v, block=block_size, kv_len=lens)[0]
        q, k, q_scale, k_scale = f8.q8, f8.k8, f8.q_scale, f8.k_scale
        v, v_scale = quantize_fp8_head_t(
            v, kv_len=lens, scale=f8.v_scale, wgmma_key_order=True
        )  # (B, H, D, N32)
        v_block, dt = [1, 1, D, block_size], gl.float8e4nv
    else:
        q_scale = k_scale = v_scale = lens.new_ones(B * H, 1, dtype=torch.float32)
        v_block = kv_block

    def desc(t, block):
        return TensorDescriptor.from_tensor(
            t, block, gl.NVMMASharedLayout.get_default_for(block, dt)
        )

    descs = [desc(q, q_block), desc(k, kv_block), desc(v, v_block), o_desc]
    # bf16 with key padding: the block holding kv_len comes from a copy with its padded rows
    # zeroed (P.V would turn a NaN there into NaN output through P = 0); fp8 zeroes padding
    tail = not fp8 and kv_len is not None
    vt_desc = desc(padded_tail_block(v, lens, block_size), v_block) if tail else descs[2]
    counts = counts.reshape(B * H, -1)
    indices = indices.reshape(B * H, indices.shape[-2], indices.shape[-1])
    grid = (cdiv(Nq, block_size), B * H)
    _bsa_gluon_kernel[grid](
        *descs, lse, counts, indices, lens, q_scale, k_scale, v_scale,
        counts.stride(0), indices.stride(0), indices.stride(1), q_scale.stride(0),
        k_scale.stride(0), H, Nq, scale * LOG2E, vt_desc,
        STAGES=stages, FP8=fp8, PAIRS=pairs, TAIL=tail, num_warps=4, maxnreg=MAXNREG,
    )  # fmt: skip
    return (out, lse) if return_lse else out
