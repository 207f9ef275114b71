"""The fp8 consumer loop of the Gluon attention kernel over pairs of listed key blocks.

FlashAttention-3 runs fp8 with 224-key tiles where bf16 takes 128-176: the fp8 tensor cores
finish a tile's matmuls in half the time, so the softmax between them has to do more work per
synchronisation. The index lists are in 128-key blocks, so this loop takes two per step: per
pair one row maximum and one accumulator rescale for 256 keys, and half the named-barrier
turns, mbarrier waits and wgmma waits per key of :func:`.sparse_attention_gluon._consumer`.

P goes to the P.V matmul through shared memory (16 KB per consumer warpgroup), not registers:
with S (2 x 64 fp32 registers a thread), O (64) and P held for the register-A wgmma, ptxas
needs more than the 240 registers a consumer has (388 bytes of spills and serialized wgmmas at
Triton 3.6), and a loop rotated so that P never crosses the back-edge left an accumulator in
flight across it, which ptxas serialized or spilled (2-4 KB; both counts from ptxas -v of those
variants, not committed). P(t) is written once P.V(t-1) has read P(t-1); its keys are in the
e4m3 operand order V^T comes in (:func:`.gluon_attention_parts._wgmma_fp8_key_order`), so the
stores are ``stmatrix``.

The producer loads a pair's two K tiles (and later its two V tiles) on one mbarrier per ring
slot; a list of odd length ends in a filler tile (a copy of its last block) whose logits are
masked to -inf, so it adds nothing. Ring depth 2 pairs: 213 KB of shared memory.

Measured on one H200 (triton 3.6, 24 heads, head dim 128, interleaved against the one-block
loop; docs/results/probe_gluon_pairs_h200_{119k,67k}.json): 119,056 tokens 20.6 / 57.6 / 94.5 /
185.6 ms at densities 0.1 / 0.3 / 0.5 / 1.0 against 22.5 / 63.3 / 104.9 / 206.6 (1.48-1.62x
cuDNN's dense bf16 rate against 1.35-1.46x); 67,576 tokens 1.38-1.66x against 1.32-1.49x. On
an H100 (probe_gluon_pairs_h100_119k.json, 119,056 tokens) 8.7-10.1% less time at densities
0.1 / 0.3 / 1.0 (1.45-1.58x that card's cuDNN).

A persistent version (a program per multiprocessor, query blocks from an atomic counter, the
next block's Q loaded during the last P.V and the epilogue, O's store waited for only before
its buffer is reused) gave bit-identical outputs but ran 1-6% slower at every density on the
H200 with Triton 3.6 (docs/results/probe_gluon_persistent_h200_{119k,67k}.json): Triton 3.6
spilled the shared-memory base inside one consumer's pair loop and the producer's, and ncu
counted 7% more cycles at density 1.0; a static round-robin order was as slow and also lost
L2 hits (89.8% -> 79.0% at density 0.1) as programs drifted apart across heads.

Not supported: bf16 (its P in registers already fills the budget with a 128-key tile and
bf16's matmuls leave the softmax enough time), ring depths other than 2 (shared memory).
"""

from __future__ import annotations

from .gluon_attention_parts import HAS_GLUON

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

    from .gluon_attention_parts import (
        _BAR0,
        _SHIFT_FP8,
        _TAU_FP8,
        _acc_layout,
        _epilogue,
        _load_q,
        _mask_keys,
        _tile_scale,
        _v_operand,
        _wgmma_fp8_key_order,
    )
    from .gluon_ptx import named_barrier_arrive, named_barrier_sync, rescale_rows

    @gluon.jit
    def _producer_pairs(args, WG: gl.constexpr, FP8: gl.constexpr):
        """:func:`_producer` for the pair loop: per ring slot two key blocks (K(2t), K(2t+1)
        on one mbarrier, V likewise); an odd list's last pair repeats its last block."""
        (q_desc, k_desc, v_desc, o_desc, q_smem, k_smem, v_smem, o_smem, q_bars, k_full, v_full,
         empty, LSE, idx_base, cnt, kvl, b, h, pid_m, pid_bh, N_Q, qk_scale, q_scale, k_scale,
         v_scale, STAGES, p_smem, vt_desc, TAIL) = args  # fmt: skip
        BN: gl.constexpr = k_desc.block_type.shape[2]
        _load_q(q_desc, q_bars, q_smem, b, h, pid_m)
        npairs = (cnt + 1) // 2
        last = cnt - 1
        mbarrier.expect(k_full.index(0), 2 * k_desc.block_type.nbytes, pred=cnt > 0)
        for i in gl.static_range(2):
            kb = gl.load(idx_base + gl.minimum(i, last), mask=cnt > 0, other=0)
            tma.async_copy_global_to_shared(k_desc, [b, h, kb * BN, 0], k_full.index(0),
                                            k_smem.index(i), pred=cnt > 0)  # fmt: skip
        for t in range(npairs):
            nxt = t + 1
            has_next = nxt < npairs
            ns = nxt % STAGES
            mbarrier.wait(empty.index(ns), ((nxt // STAGES) & 1) ^ 1)
            mbarrier.expect(k_full.index(ns), 2 * k_desc.block_type.nbytes, pred=has_next)
            for i in gl.static_range(2):
                kb_n = gl.load(idx_base + gl.minimum(2 * nxt + i, last), mask=has_next, other=0)
                tma.async_copy_global_to_shared(
                    k_desc,
                    [b, h, kb_n * BN, 0],
                    k_full.index(ns),
                    k_smem.index(2 * ns + i),
                    pred=has_next,
                )
            s = t % STAGES
            mbarrier.expect(v_full.index(s), 2 * v_desc.block_type.nbytes)
            for i in gl.static_range(2):
                kb = gl.load(idx_base + gl.minimum(2 * t + i, last))
                tma.async_copy_global_to_shared(v_desc, [b, h, 0, kb * BN], v_full.index(s),
                                                v_smem.index(2 * s + i))  # fmt: skip

    @gluon.jit
    def _softmax_pair(s0, s1, m_i, l_i, sc0, sc1, row_o: gl.constexpr, SHIFT: gl.constexpr,
                      TAU: gl.constexpr):  # fmt: skip
        """:func:`_softmax_step` over two key tiles at once (one row maximum and rescale for
        256 keys; each tile its own fp8 scale): (P0, P1 in fp32, alpha, new m, l)."""
        m_tile = gl.maximum(gl.max(s0, axis=1) * sc0, gl.max(s1, axis=1) * sc1)
        m_new = gl.where(m_tile > m_i + TAU, m_tile, m_i)
        alpha = gl.where(m_new == m_i, 1.0, gl.exp2(m_i - m_new))
        mb = gl.expand_dims(m_new - SHIFT, 1)
        p0 = gl.exp2(s0 * sc0 - mb)
        p1 = gl.exp2(s1 * sc1 - mb)
        l_new = l_i * alpha + gl.sum(p0, axis=1) + gl.sum(p1, axis=1)
        return p0, p1, gl.convert_layout(alpha, row_o), m_new, l_new

    @gluon.jit
    def _pv_pair(acc, alpha, a0, a1, v_smem, v_full, slot, t, STAGES, BN: gl.constexpr,
                 D: gl.constexpr):  # fmt: skip
        """Rescale the accumulator, then issue pair t's two P.V matmuls, P from shared memory."""
        acc = rescale_rows(acc, alpha)
        mbarrier.wait(v_full.index(slot), (t // STAGES) & 1)
        tok = warpgroup_mma(a0, _v_operand(v_smem, 2 * slot, BN, D, True), acc, is_async=True)
        return warpgroup_mma(a1, _v_operand(v_smem, 2 * slot + 1, BN, D, True), tok,
                             is_async=True)  # fmt: skip

    @gluon.jit
    def _issue_qk(q, k_smem, slot, s0, s1, BN: gl.constexpr, D: gl.constexpr):
        """Issue Q.K^T of the pair in ring slot ``slot`` (two async wgmmas)."""
        t0 = warpgroup_mma(q, k_smem.index(2 * slot).reshape([BN, D]).permute((1, 0)), s0,
                           use_acc=False, is_async=True)  # fmt: skip
        t1 = warpgroup_mma(q, k_smem.index(2 * slot + 1).reshape([BN, D]).permute((1, 0)), s1,
                           use_acc=False, is_async=True)  # fmt: skip
        return t0, t1

    @gluon.jit
    def _pair_probs(s0, s1, m_i, l_i, t, npairs, cnt, idx_base, kvl, qk_scale, q_scale, k_scale,
                    row_o: gl.constexpr, col_s: gl.constexpr):  # fmt: skip
        """Pair t's logits masked (last pair: padded keys, an odd list's filler tile) and
        through :func:`_softmax_pair` with each tile's fp8 scale."""
        BN: gl.constexpr = s0.shape[1]
        if t == npairs - 1:
            s0 = _mask_keys(s0, idx_base, 2 * t, cnt, kvl, BN, col_s)
            s1 = _mask_keys(s1, idx_base, 2 * t + 1, cnt, kvl, BN, col_s)
        sc0 = _tile_scale(qk_scale, q_scale, k_scale, idx_base, 2 * t, True)
        sc1 = _tile_scale(qk_scale, q_scale, k_scale, idx_base, gl.minimum(2 * t + 1, cnt - 1),
                          True)  # fmt: skip
        return _softmax_pair(s0, s1, m_i, l_i, sc0, sc1, row_o, _SHIFT_FP8, _TAU_FP8)

    @gluon.jit
    def _store_p(a0, a1, p0, p1):
        """P (fp32, two tiles) in e4m3 into this warpgroup's P buffers for the SS P.V wgmma, keys
        in the order V^T comes in (:func:`_wgmma_fp8_key_order`)."""
        a0.store(_wgmma_fp8_key_order(p0).to(gl.float8e4nv))
        a1.store(_wgmma_fp8_key_order(p1).to(gl.float8e4nv))
        fence_async_shared()

    @gluon.jit
    def _consumer_pairs(args, WG: gl.constexpr, FP8: gl.constexpr):
        """fp8 consumer over pairs of listed key blocks (256 keys per step, FA3's long fp8
        tiles): one row maximum and rescale per pair, half the turns and waits per key of
        :func:`.sparse_attention_gluon._consumer`, in its order: per pair t, in this warpgroup's
        turn, issue Q.K^T(t) and P.V(t-1) (P(t-1) from this warpgroup's shared buffers), run
        pair t's softmax while P.V(t-1) runs, wait for it, release K(t) and V(t-1), and store
        P(t) into the buffers it freed. The accumulator is a finished tensor at the back-edge
        (an accumulator in flight across it made ptxas serialize the wgmmas or spill)."""
        (q_desc, k_desc, v_desc, o_desc, q_smem, k_smem, v_smem, o_smem, q_bars, k_full, v_full,
         empty, LSE, idx_base, cnt, kvl, b, h, pid_m, pid_bh, N_Q, qk_scale, q_scale, k_scale,
         v_scale, STAGES, p_smem, vt_desc, TAIL) = args  # fmt: skip
        BN: gl.constexpr = k_desc.block_type.shape[2]
        D: gl.constexpr = k_desc.block_type.shape[3]
        HALF: gl.constexpr = q_desc.block_type.shape[2]
        SHIFT: gl.constexpr = _SHIFT_FP8
        BAR0: gl.constexpr = _BAR0
        s_layout: gl.constexpr = _acc_layout(BN, 1)  # e4m3
        o_layout: gl.constexpr = _acc_layout(D, 1)
        row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
        row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
        col_s: gl.constexpr = gl.SliceLayout(0, s_layout)

        q = q_smem.index(WG).reshape([HALF, D])
        m_i = gl.full([HALF], -1.0e30, gl.float32, layout=row_s)
        l_i = gl.full([HALF], 0.0, gl.float32, layout=row_s)
        s0 = gl.zeros([HALF, BN], gl.float32, layout=s_layout)
        s1 = gl.zeros([HALF, BN], gl.float32, layout=s_layout)
        a0 = p_smem.index(2 * WG)
        a1 = p_smem.index(2 * WG + 1)
        npairs = (cnt + 1) // 2
        acc = gl.zeros([HALF, D], gl.float32, layout=o_layout)
        alpha = gl.full([HALF], 1.0, gl.float32, layout=row_o)
        mbarrier.wait(q_bars.index(WG), 0)
        if npairs > 0:  # pair 0: Q.K^T only
            if WG == 1:
                named_barrier_arrive(BAR0)  # warpgroup 0 goes first
            named_barrier_sync(BAR0 + WG)
            mbarrier.wait(k_full.index(0), 0)
            t0, t1 = _issue_qk(q, k_smem, 0, s0, s1, BN, D)
            if WG == 0 or npairs > 1:
                named_barrier_arrive(BAR0 + 1 - WG)
            s0, s1 = warpgroup_mma_wait(num_outstanding=0, deps=(t0, t1))
            mbarrier.arrive(empty.index(0), count=1)
            p0, p1, alpha, m_i, l_i = _pair_probs(s0, s1, m_i, l_i, 0, npairs, cnt, idx_base,
                                                  kvl, qk_scale, q_scale, k_scale, row_o,
                                                  col_s)  # fmt: skip
            _store_p(a0, a1, p0, p1)
        for t in range(1, npairs):
            slot = t % STAGES
            pslot = (t - 1) % STAGES
            named_barrier_sync(BAR0 + WG)
            mbarrier.wait(k_full.index(slot), (t // STAGES) & 1)
            t0, t1 = _issue_qk(q, k_smem, slot, s0, s1, BN, D)
            tok = _pv_pair(acc, alpha, a0, a1, v_smem, v_full, pslot, t - 1, STAGES, BN, D)
            if WG == 0 or t < npairs - 1:
                named_barrier_arrive(BAR0 + 1 - WG)
            s0, s1 = warpgroup_mma_wait(num_outstanding=2, deps=(t0, t1))
            p0, p1, alpha, m_i, l_i = _pair_probs(s0, s1, m_i, l_i, t, npairs, cnt, idx_base,
                                                  kvl, qk_scale, q_scale, k_scale, row_o,
                                                  col_s)  # fmt: skip
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(tok,))
            mbarrier.arrive(empty.index(slot), count=1)  # K(t) and V(t-1) read
            _store_p(a0, a1, p0, p1)  # P(t-1) read: its buffers take P(t)
        if npairs > 0:
            tok = _pv_pair(acc, alpha, a0, a1, v_smem, v_full, (npairs - 1) % STAGES, npairs - 1,
                           STAGES, BN, D)  # fmt: skip
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(tok,))
        _epilogue(acc, m_i, l_i, o_smem.index(WG), o_desc, LSE, b, h, pid_bh,
                  pid_m * (2 * HALF) + WG * HALF, N_Q, v_scale, row_s, row_o, SHIFT)  # fmt: skip
