"""The XAttention estimate for Hopper (sm90) in Gluon: TMA-fed, warp-specialized. Experimental:
measured faster than the Triton estimate, but ``kernel="auto"`` does not pick it (see "Status").

Same contract and math as :func:`~xattn_video.kernels.estimate.estimate_block_scores` (whose
PyTorch reference :func:`~xattn_video.kernels.estimate.estimate_block_scores_ref` defines it):
per (b, h), the strided score matrix ``R = Q_rev K^T`` of query/key groups of ``S`` tokens is
soft-maxed per row over the valid key groups and summed per (query block, key block).

One program owns 128 query groups and sweeps ``BN`` (64, 128 or 256) key groups per tile, 12 warps
in three partitions:

* a producer warp (24 registers) streams, per key tile and stride offset ``s``, the chunk
  ``q[i*S + S-1-s]`` of the 128 query groups (two 64-row TMA boxes) and ``k[j*S + s]`` of the
  tile's key groups (one box) into a ``stages``-deep ring. Both come from 5-D TMA views
  ``(B, H, groups, S, D)`` of q and k, so the strided rows need no copy;
* two consumer warpgroups (240 registers), one per 64-row half, accumulate the ``S`` chunk
  products on the tensor cores (``wgmma``; a slot is released once both matmuls that read it
  are done), then per tile take each key block's log2-sum-exp2 (one scratch float per (query
  group, key block), as the Triton kernel; ``lg2`` on the MUFU unit) and the row's online
  max / sum; after the sweep they normalise the scratch and add up each query block's groups.
  With ``pre > 0`` a consumer issues the first ``pre`` chunk matmuls of tile t before tile
  t-1's epilogue, so the tensor cores work during it; ``pre`` is at most ``stages - 1``: the
  producer needs a free slot for chunk ``pre`` while the first ``pre`` are held (with
  ``pre = stages`` every slot is held across the epilogue and the ring deadlocks).

Padding: keys at or past ``kv_len[b]`` must count as zeros. Whole key groups past it are masked;
the one group that straddles ``kv_len`` gets the dot products of its padded keys subtracted
(a few rows of global loads, once per program). Token counts that ``S`` does not divide are
padded by a copy in the wrapper (the TMA view needs whole groups).

``precision="fp8"``: q and k in e4m3 with one scale per (b, h, 128-token block)
(:func:`.fp8.quantize_fp8_blocks`, as the Triton fp8 estimate), folded into each key block's
softmax scale; the matmuls run on the fp8 tensor cores.

Status (one H200, triton 3.6, 24 heads, head dim 128; ``benchmarks/probe_estimate_gluon.py``,
docs/results/probe_estimate_gluon_h200.json and ..._pre0_h200.json): correct (2e-8 max |diff|
to the Triton estimate at 119,056 tokens; masks differing in ~1e-6 of blocks at near-ties) and,
without overlap (``pre=0``, the default) and with the MUFU ``lg2``, faster than the Triton
estimate: at 119,056 / 67,576 tokens bf16 S=8 21.7 vs 25.1 / 6.84 vs 7.91 ms, fp8 S=8 14.0 vs
16.9 / 4.48 vs 5.89, fp8 S=16 7.7 vs 9.1 / 3.31 vs 3.29; bf16 S=16 no faster (15.1 vs 15.0 /
5.40 vs 4.54). ``pre > 0`` was slower everywhere (bf16 S=8 23.0 ms with ``pre=2``), and so were
the 64-key tiles and the 256-key tiles (bf16 S=8 28.5 / 24.3 ms). The first, lockstep version
(libdevice ``log2``) ran at 24.7 ms. :data:`.tuning.GLUON_ESTIMATE` holds the measured tile /
ring per GPU, but ``kernel="auto"`` does not pick this kernel
(:data:`.tuning.GLUON_ESTIMATE_AUTO` is off): one run of its GPU tests stalled inside the fp8
test that cycles through four variants; ``benchmarks/probe_estimate_stall.py`` then launched
every variant 300 times on the tests' inputs without a stall, so the cause is unknown. Callers
opt in per call with ``kernel="prefer-gluon"`` (the op's and the config's ``estimate_kernel``).

Not supported: GPUs other than sm90, block sizes other than 128, strides other than 8 / 16 /
32 (a query block must fit one warpgroup's 64 rows and the final pass's layout), head dims other
than 64 / 128, fp32 inputs, q / k of different head counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import LOG2E, cdiv, check_precision, kv_len_tensor, softmax_scale
from .fp8 import Fp8Inputs, quantize_fp8_qk
from .sparse_attention_gluon import HAS_GLUON, MAXNREG, MIN_TRITON

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

HALF = 64  # query groups per consumer warpgroup
ROWS = 2 * HALF  # query groups per program
STRIDES = (8, 16, 32)
KB_TILE = 32  # key blocks per step of the final pass
SMEM_RING_MAX = 232448 - 4096  # sm90's 227 KB per block, less the barriers and reduction scratch


if HAS_GLUON:
    _HALF = gl.constexpr(HALF)
    _KB_TILE = gl.constexpr(KB_TILE)
    _BARRIER_API = gl.constexpr(hasattr(gl, "barrier"))  # Triton 3.7 renamed thread_barrier

    @gluon.jit
    def _est_producer(args, WG: gl.constexpr, S: gl.constexpr, G: gl.constexpr,
                      STAGES: gl.constexpr, PRE: gl.constexpr, FP8: gl.constexpr):  # fmt: skip
        (q_desc, k_desc, q_smem, k_smem, full, empty, SCR, OUT, QP, KP, Q_SCALE, K_SCALE, b, h,
         pid_m, pid_bh, kvl, n_ct, NGQ, NBQ, NBK, stride_qn, q_off, stride_kn, k_off, stride_sr,
         stride_om, o_off, stride_sq, stride_sk, qk_scale) = args  # fmt: skip
        BN: gl.constexpr = k_desc.block_type.shape[2]
        NBYTES: gl.constexpr = 2 * q_desc.block_type.nbytes + k_desc.block_type.nbytes
        for t in range(n_ct):
            for s in range(S):
                c = t * S + s
                slot = c % STAGES
                mbarrier.wait(empty.index(slot), ((c // STAGES) & 1) ^ 1)
                mbarrier.expect(full.index(slot), NBYTES)
                for i in gl.static_range(2):
                    tma.async_copy_global_to_shared(
                        q_desc, [b, h, pid_m * (2 * _HALF) + i * _HALF, S - 1 - s, 0],
                        full.index(slot), q_smem.index(2 * slot + i),
                    )  # fmt: skip
                tma.async_copy_global_to_shared(k_desc, [b, h, t * BN, s, 0], full.index(slot),
                                                k_smem.index(slot))  # fmt: skip

    @gluon.jit
    def _straddle_fix(x, QP, KP, q_off, k_off, stride_qn, stride_kn, row0, NGQ, kvl,
                      S: gl.constexpr, D: gl.constexpr, s_layout: gl.constexpr, col0):  # fmt: skip
        """Logits of the key group holding kv_len (when kv_len % S != 0) without its padded keys:
        subtract q[i*S + S-1-c] . k[g*S + c] for the padded offsets c of that group g."""
        g = kvl // S
        first_pad = kvl - g * S
        # no partial group (first_pad 0): nothing to subtract, and the offsets would read the
        # S rows from kv_len on, past k's end when kv_len is its length
        lo = S - (S - first_pad) % S  # first_pad, or S when it is 0
        ld: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
        rows = row0 + gl.arange(0, _HALF, layout=gl.SliceLayout(1, ld))
        offs_d = gl.arange(0, D, layout=gl.SliceLayout(0, ld))
        fix = gl.zeros([_HALF], gl.float32, layout=gl.SliceLayout(1, ld))
        for c in range(lo, S):
            q_ptr = QP + q_off + gl.expand_dims(rows * S + (S - 1 - c), 1) * stride_qn
            qv = gl.load(q_ptr + gl.expand_dims(offs_d, 0),
                         mask=gl.expand_dims(rows < NGQ, 1), other=0.0)  # fmt: skip
            kv = gl.load(KP + k_off + (g * S + c) * stride_kn + offs_d)
            fix += gl.sum(qv.to(gl.float32) * gl.expand_dims(kv.to(gl.float32), 0), axis=1)
        fix = gl.convert_layout(fix, gl.SliceLayout(1, s_layout))
        BN: gl.constexpr = s_layout.instr_shape[1]
        cols = col0 + gl.arange(0, BN, layout=gl.SliceLayout(0, s_layout))
        hit = gl.expand_dims(cols == g, 0) & (first_pad > 0)
        return gl.where(hit, x - gl.expand_dims(fix, 1), x)

    @gluon.jit
    def _lg2(x):
        """log2 on the MUFU unit (libdevice's log2f is a branchy polynomial per element)."""
        return gl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=r,r", [x],
                                         dtype=gl.float32, is_pure=True, pack=1)  # fmt: skip

    @gluon.jit
    def _tile_epilogue(x, t, m_i, l_i, scr, row_sc, qk_scale, K_SCALE, pid_bh, stride_sk, NBK,
                       G: gl.constexpr, FP8: gl.constexpr):  # fmt: skip
        """Key tile t's logits x: (64, BN) -> each key block's log2-sum-exp2 to scratch; the
        rows' online max / sum updated."""
        HALF: gl.constexpr = x.shape[0]
        KBT: gl.constexpr = x.shape[1] // G
        x3 = gl.reshape(x, [HALF, KBT, G])
        bmax = gl.max(x3, axis=2)
        bmax = gl.where(bmax == float("-inf"), 0.0, bmax)  # blocks with no valid key
        kbs = t * KBT + gl.arange(0, KBT, layout=gl.SliceLayout(0, bmax.type.layout))
        if FP8:  # softmax scale per (row, key block): q's and k's block scales
            k_sc = gl.load(K_SCALE + pid_bh * stride_sk + kbs, mask=kbs < NBK, other=1.0)
            sc = gl.expand_dims(row_sc, 1) * gl.expand_dims(k_sc, 0)
            e = gl.exp2(x3 * gl.expand_dims(sc, 2) - gl.expand_dims(bmax * sc, 2))
            blse = bmax * sc + _lg2(gl.sum(e, axis=2))
        else:
            e = gl.exp2(x3 * qk_scale - gl.expand_dims(bmax * qk_scale, 2))
            blse = bmax * qk_scale + _lg2(gl.sum(e, axis=2))
        gl.store(scr + gl.expand_dims(kbs, 0), blse, mask=gl.expand_dims(kbs < NBK, 0))
        m_new = gl.maximum(m_i, gl.max(blse, axis=1))
        l_i = l_i * gl.exp2(m_i - m_new) + gl.sum(gl.exp2(blse - gl.expand_dims(m_new, 1)), axis=1)
        return m_new, l_i

    @gluon.jit
    def _release(empty, c0, n: gl.constexpr, STAGES: gl.constexpr):
        """This warpgroup is done with the slots of chunks c0 .. c0+n-1."""
        for i in gl.static_range(n):
            mbarrier.arrive(empty.index((c0 + i) % STAGES), count=1)

    @gluon.jit
    def _issue_chunk(q_smem, k_smem, full, acc, c, use_acc: gl.constexpr, WG: gl.constexpr,
                     STAGES: gl.constexpr):  # fmt: skip
        """Wait for chunk c's slot, then issue (async) this warpgroup's Q half x K^T of it."""
        D: gl.constexpr = k_smem.shape[-1]
        BN: gl.constexpr = k_smem.shape[3]  # (STAGES, 1, 1, BN, 1, D)
        slot = c % STAGES
        mbarrier.wait(full.index(slot), (c // STAGES) & 1)
        return warpgroup_mma(q_smem.index(2 * slot + WG).reshape([_HALF, D]),
                             k_smem.index(slot).reshape([BN, D]).permute((1, 0)), acc,
                             use_acc=use_acc, is_async=True)  # fmt: skip

    @gluon.jit
    def _est_consumer(args, WG: gl.constexpr, S: gl.constexpr, G: gl.constexpr,
                      STAGES: gl.constexpr, PRE: gl.constexpr, FP8: gl.constexpr):  # fmt: skip
        """Per key tile t: issue the first PRE chunk matmuls of tile t, run tile t-1's epilogue
        while they run, then the remaining chunks; after the sweep, the last tile's epilogue
        (padded keys out) and the final pass."""
        (q_desc, k_desc, q_smem, k_smem, full, empty, SCR, OUT, QP, KP, Q_SCALE, K_SCALE, b, h,
         pid_m, pid_bh, kvl, n_ct, NGQ, NBQ, NBK, stride_qn, q_off, stride_kn, k_off, stride_sr,
         stride_om, o_off, stride_sq, stride_sk, qk_scale) = args  # fmt: skip
        BN: gl.constexpr = k_desc.block_type.shape[2]
        D: gl.constexpr = k_desc.block_type.shape[4]
        KI: gl.constexpr = 32 if FP8 else 16  # wgmma's K per instruction: 32 bytes
        KBT: gl.constexpr = BN // G  # key blocks per tile
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BN, KI]
        )
        acc = gl.zeros([_HALF, BN], gl.float32, layout=s_layout)
        blk: gl.constexpr = gl.SliceLayout(2, gl.reshape(acc, [_HALF, KBT, G]).type.layout)
        blk_row: gl.constexpr = gl.SliceLayout(1, blk)
        row0 = pid_m * (2 * _HALF) + WG * _HALF
        rows = row0 + gl.arange(0, _HALF, layout=blk_row)
        if FP8:  # Q's block scale per row (a query block is G consecutive groups)
            row_sc = gl.load(Q_SCALE + pid_bh * stride_sq + rows // G, mask=rows < NGQ,
                             other=1.0) * qk_scale  # fmt: skip
        else:
            row_sc = qk_scale
        m_i = gl.full([_HALF], -1.0e30, gl.float32, layout=blk_row)
        l_i = gl.full([_HALF], 0.0, gl.float32, layout=blk_row)
        scr = SCR + gl.expand_dims(rows, 1) * stride_sr  # SCR: this (b, h)'s scratch
        x_prev = acc
        for t in range(n_ct):
            for s in gl.static_range(PRE):
                acc = _issue_chunk(q_smem, k_smem, full, acc, t * S + s, s > 0, WG, STAGES)
            if t > 0:  # tile t-1's epilogue while this tile's first matmuls run
                m_i, l_i = _tile_epilogue(x_prev, t - 1, m_i, l_i, scr, row_sc, qk_scale,
                                          K_SCALE, pid_bh, stride_sk, NBK, G, FP8)  # fmt: skip
            for s in gl.static_range(PRE, S):
                c = t * S + s
                acc = _issue_chunk(q_smem, k_smem, full, acc, c, s > 0, WG, STAGES)
                acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
                if s == PRE:  # the chunks before this one are done: release their slots
                    _release(empty, t * S, PRE, STAGES)
                else:
                    _release(empty, c - 1, 1, STAGES)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            if PRE == S:
                _release(empty, t * S, S, STAGES)
            else:
                _release(empty, t * S + S - 1, 1, STAGES)
            x_prev = acc
        if n_ct > 0:  # the last tile: padded keys out, groups past kv_len masked
            x = _straddle_fix(x_prev, QP, KP, q_off, k_off, stride_qn, stride_kn, row0, NGQ, kvl,
                              S, D, s_layout, (n_ct - 1) * BN)  # fmt: skip
            cols = (n_ct - 1) * BN + gl.arange(0, BN, layout=gl.SliceLayout(0, s_layout))
            x = gl.where(gl.expand_dims(cols < (kvl + S - 1) // S, 0), x, float("-inf"))
            m_i, l_i = _tile_epilogue(x, n_ct - 1, m_i, l_i, scr, row_sc, qk_scale, K_SCALE,
                                      pid_bh, stride_sk, NBK, G, FP8)  # fmt: skip
        row_lse = m_i + _lg2(l_i)
        # the scratch rows were written by other threads of this warpgroup
        if _BARRIER_API:
            gl.barrier()
        else:
            gl.thread_barrier()
        _final_pass(SCR, OUT, row_lse, row0, pid_m, WG, NGQ, NBQ, kvl, stride_sr, stride_om, o_off,
                    S, G)  # fmt: skip

    @gluon.jit
    def _final_pass(SCR, OUT, row_lse, row0, pid_m, WG: gl.constexpr, NGQ, NBQ, kvl, stride_sr,
                    stride_om, o_off, S: gl.constexpr, G: gl.constexpr):  # fmt: skip
        """A[qb, kb] = sum of exp2(block lse - row lse) over the G query groups of each query
        block of this warpgroup's 64 rows (each thread holds a block's G rows of one column)."""
        fin: gl.constexpr = gl.BlockedLayout([G, 1], [1, 32], [4, 1], [1, 0])
        lse = gl.convert_layout(row_lse, gl.SliceLayout(1, fin))
        rows = row0 + gl.arange(0, _HALF, layout=gl.SliceLayout(1, fin))
        ok = gl.expand_dims(rows < NGQ, 1)
        n_kb = (kvl + S * G - 1) // (S * G)
        for kb0 in range(0, n_kb, _KB_TILE):
            kbs = kb0 + gl.arange(0, _KB_TILE, layout=gl.SliceLayout(0, fin))
            inside = gl.expand_dims(kbs < n_kb, 0)
            blse = gl.load(SCR + gl.expand_dims(rows, 1) * stride_sr + gl.expand_dims(kbs, 0),
                           mask=ok & inside, other=float("-inf"))  # fmt: skip
            p = gl.where(ok & inside, gl.exp2(blse - gl.expand_dims(lse, 1)), 0.0)
            a = gl.sum(gl.reshape(p, [_HALF // G, G, _KB_TILE]), axis=1)
            qb = (pid_m * (2 * _HALF) + WG * _HALF) // G + gl.arange(
                0, _HALF // G, layout=gl.SliceLayout(1, a.type.layout)
            )
            kb = kb0 + gl.arange(0, _KB_TILE, layout=gl.SliceLayout(0, a.type.layout))
            gl.store(OUT + o_off + gl.expand_dims(qb, 1) * stride_om + gl.expand_dims(kb, 0), a,
                     mask=gl.expand_dims(qb < NBQ, 1) & gl.expand_dims(kb < n_kb, 0))  # fmt: skip

    @gluon.jit
    def _estimate_gluon_kernel(
        q_desc, k_desc, SCR, OUT, KV_LEN, Q_SCALE, K_SCALE, QP, KP,
        stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
        stride_sbh, stride_sr, stride_ob, stride_oh, stride_om, stride_sq, stride_sk,
        H, NGQ, NBQ, NBK, qk_scale,
        S: gl.constexpr, G: gl.constexpr, STAGES: gl.constexpr, PRE: gl.constexpr,
        FP8: gl.constexpr, num_warps: gl.constexpr,
    ):  # fmt: skip
        pid_m = gl.program_id(0)
        pid_bh = gl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        BN: gl.constexpr = k_desc.block_type.shape[2]
        kvl = gl.load(KV_LEN + b)
        n_ct = ((kvl + S - 1) // S + BN - 1) // BN  # key tiles holding a valid key group
        q_off = b.to(gl.int64) * stride_qb + h.to(gl.int64) * stride_qh
        k_off = b.to(gl.int64) * stride_kb + h.to(gl.int64) * stride_kh
        o_off = b.to(gl.int64) * stride_ob + h.to(gl.int64) * stride_oh
        scr = SCR + pid_bh.to(gl.int64) * stride_sbh

        q_smem = gl.allocate_shared_memory(q_desc.dtype, [2 * STAGES] + q_desc.block_type.shape,
                                           q_desc.layout)  # fmt: skip
        k_smem = gl.allocate_shared_memory(k_desc.dtype, [STAGES] + k_desc.block_type.shape,
                                           k_desc.layout)  # fmt: skip
        full = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(full.index(i), count=1)
            mbarrier.init(empty.index(i), count=2)  # one arrival per consumer warpgroup
        fence_async_shared()  # the initialized barriers visible to the TMA unit (async proxy)

        args = (q_desc, k_desc, q_smem, k_smem, full, empty, scr, OUT, QP, KP, Q_SCALE, K_SCALE,
                b, h, pid_m, pid_bh, kvl, n_ct, NGQ, NBQ, NBK, stride_qn, q_off, stride_kn, k_off,
                stride_sr, stride_om, o_off, stride_sq, stride_sk, qk_scale)  # fmt: skip
        gl.warp_specialize(
            [(_est_consumer, (args, 0, S, G, STAGES, PRE, FP8)),
             (_est_consumer, (args, 1, S, G, STAGES, PRE, FP8)),
             (_est_producer, (args, 0, S, G, STAGES, PRE, FP8))],
            [4, 1],
            [240, 24],
        )  # fmt: skip
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(full.index(i))
            mbarrier.invalidate(empty.index(i))


def _group_view(x: torch.Tensor, S: int) -> torch.Tensor:
    """x: (B, H, N, D) with S | N -> the (B, H, N/S, S, D) view whose [.., i, s, :] is token
    i*S + s (no copy)."""
    B, H, N, D = x.shape
    sb, sh, sn, sd = x.stride()
    return x.as_strided((B, H, N // S, S, D), (sb, sh, S * sn, sn, sd))


def ring_bytes(block_n: int, stages: int, head_dim: int, precision: str) -> int:
    """Shared memory of a ring of ``stages`` (query chunk, key chunk) slots."""
    return stages * (ROWS + block_n) * head_dim * (1 if precision == "fp8" else 2)


def estimate_block_scores_gluon(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    stride: int,
    block_size: int,
    kv_len: torch.Tensor | None = None,
    precision: str = "bf16",
    block_n: int = 128,
    stages: int = 3,
    pre: int = 0,
    fp8_inputs: Fp8Inputs | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Block scores with the Gluon kernel (see the module docstring); same contract as
    :func:`.estimate.estimate_block_scores_ref`.

    q: (B, H, Nq, D), k: (B, H, Nk, D) bf16/fp16 on an sm90 GPU, unit last stride; kv_len: (B,)
    int. Returns (B, H, ceil(Nq/block_size), ceil(Nk/block_size)) float32. ``block_n``: key
    groups per tile (64, 128 or 256); ``stages``: depth of the (query chunk, key chunk) ring;
    ``pre``: chunk matmuls of the next tile issued before a tile's epilogue (0 to
    ``stages - 1``; 0, the default, was the fastest measured). ``fp8_inputs``: q and k already
    quantized for ``precision="fp8"`` (see :func:`.estimate.estimate_block_scores`). ``scale``:
    the attention's softmax scale (default 1/sqrt(D)).
    """
    if not HAS_GLUON:
        raise RuntimeError(f"the Gluon estimate needs Triton >= {'.'.join(map(str, MIN_TRITON))} "
                           "with Gluon's Hopper module")  # fmt: skip
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    S = stride
    if block_size != 128 or S not in STRIDES or D not in (64, 128):
        raise ValueError(f"the Gluon estimate takes block_size 128, stride {STRIDES} and head "
                         f"dim 64/128, got {block_size} / {S} / {D}")  # fmt: skip
    check_precision(precision)
    if block_n not in (64, 128, 256) or not 2 <= stages <= 8:
        raise ValueError(f"the Gluon estimate takes block_n 64, 128 or 256 and stages 2-8, "
                         f"got {block_n} / {stages}")  # fmt: skip
    ring = ring_bytes(block_n, stages, D, precision)
    if ring > SMEM_RING_MAX:
        raise ValueError(f"{stages} ring slots of {block_n} key groups take {ring} bytes of shared "
                         f"memory; sm90 has room for {SMEM_RING_MAX}")  # fmt: skip
    if not 0 <= pre <= min(stages - 1, stride):
        raise ValueError(f"pre must be in 0..stages-1 (= {stages - 1}), got {pre}")
    if q.dtype not in (torch.bfloat16, torch.float16) or k.dtype != q.dtype:
        raise ValueError(f"the Gluon estimate takes bf16/fp16 q and k, got {q.dtype} / {k.dtype}")
    G = block_size // S
    ngq, ngk = cdiv(Nq, S), cdiv(Nk, S)
    nbq, nbk = cdiv(Nq, block_size), cdiv(Nk, block_size)
    lens = kv_len_tensor(kv_len, B, Nk, q.device)
    fp8 = precision == "fp8"
    if fp8:
        f8 = fp8_inputs or quantize_fp8_qk(q, k, block_size, lens)
        q, k, q_scale, k_scale = f8.q8, f8.k8, f8.q_scale, f8.k_scale
        dt = gl.float8e4nv
    else:
        q_scale = k_scale = lens.new_ones(B * H, 1, dtype=torch.float32)
        dt = gl.bfloat16 if q.dtype == torch.bfloat16 else gl.float16
    # whole groups for the TMA view: pad the token axis by a copy when S does not divide it
    if Nq % S:
        q = F.pad(q, (0, 0, 0, ngq * S - Nq))
    if Nk % S:
        k = F.pad(k, (0, 0, 0, ngk * S - Nk))

    def desc(x, rows):
        block = [1, 1, rows, 1, D]
        return TensorDescriptor.from_tensor(
            _group_view(x, S), block, gl.NVMMASharedLayout.get_default_for(block, dt)
        )

    n_m = cdiv(ngq, ROWS)
    scratch = torch.empty((B * H, n_m * ROWS, nbk), dtype=torch.float32, device=q.device)
    out = torch.zeros((B, H, nbq, nbk), dtype=torch.float32, device=q.device)
    _estimate_gluon_kernel[(n_m, B * H)](
        desc(q, HALF), desc(k, block_n), scratch, out, lens, q_scale, k_scale, q, k,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        scratch.stride(0), scratch.stride(1), out.stride(0), out.stride(1), out.stride(2),
        q_scale.stride(0), k_scale.stride(0), H, ngq, nbq, nbk, LOG2E * softmax_scale(D, scale) / S,
        S=S, G=G, STAGES=stages, PRE=pre, FP8=fp8, num_warps=4, maxnreg=MAXNREG,
    )  # fmt: skip
    return out
