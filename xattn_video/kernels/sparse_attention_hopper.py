"""Block-sparse attention forward for Hopper (sm90): TMA tiles, wgmma, warp specialization, FP8.

Same contract as :func:`~xattn_video.kernels.sparse_attention.block_sparse_attention_fwd`
(CSR ``counts`` / ``indices`` from :func:`~xattn_video.kernels.select.mask_to_indices`, keys
``>= kv_len[b]`` masked, optional natural-log LSE), written for Hopper:

- Q/K/V/O move through host-side tensor descriptors (TMA bulk copies, zero fill past N);
- the main loop over the selected key tiles is a ``tl.range(..., warp_specialize=...)`` loop
  (a producer warp issues the TMA loads, the consumer warpgroups run wgmma + softmax);
- the softmax scale is folded into one FMA before ``exp2``; only the last listed key block can
  hold padded keys, so only its tiles are masked (a second, short loop);
- optional lazy rescaling (FA4): the accumulator is rescaled only when some row's running
  maximum grew by more than ``RESCALE_THRESHOLD`` (log2 units); the stale maximum keeps every
  ``p <= 2**threshold``, so fp32 sums stay exact to rounding and the result is unchanged;
- ``precision="fp8"``: Q and K in e4m3 with one scale per (b, h, 128-token block)
  (:mod:`.fp8`), Q.K^T on the fp8 tensor cores, the scales folded into the
  softmax scale per tile; P.V in bf16 (``FP8_PV=False``) or e4m3 with one V scale per (b, h)
  and P shifted by 2**8 before the cast so small probabilities keep their mantissa.

The launch configuration (tile sizes, warps, stages, warp specialization, lazy rescale) comes
from :mod:`xattn_video.kernels.tuning` per (GPU name, N bucket, head dim).

Measured on one H200 (triton 3.6, docs/results/bench_attention_h200*.json): bf16 runs at the
portable TMA kernel's 440-490 TFLOP/s (0.77-0.86x cuDNN's dense rate). Triton 3.6 does not
specialize the 8-warp loop (no partitions in the TTGIR) and its 4-warp specialization either
fails in the data-partition pass or spills (211 TFLOP/s), so softmax is not overlapped with
the wgmmas; lazy rescaling costs 4% (a tile-wide branch). That is why bf16 on sm90 at video
sizes runs the Gluon kernel (:mod:`.sparse_attention_gluon`, 1.06-1.16x cuDNN at density >=
0.3; fp8 there too at head dim 128, 1.19-1.46x this kernel's fp8 at 570-690 TFLOP/s,
docs/results/bench_attention_h200_cdbfe40.json); this kernel keeps inputs under 32k tokens,
block size 64, fp8 at head dim 64 and sm100.

Not supported: anything but sm90+ CUDA GPUs for compiled runs (the interpreter runs it on CPU
for tests), fp32 inputs on GPU, head dims other than 64 and 128, block sizes under 64,
causal masks, backward.
"""

from __future__ import annotations

import torch

from ._common import (
    HAS_TENSOR_DESC,
    HAS_TRITON,
    LOG2E,
    cdiv,
    check_precision,
    kv_len_tensor,
    softmax_scale,
)
from .fp8 import Fp8Inputs, quantize_fp8_head_t, quantize_fp8_qk

if HAS_TRITON:
    import triton
    import triton.language as tl

if HAS_TENSOR_DESC:
    from triton.tools.tensor_descriptor import TensorDescriptor

if HAS_TRITON:

    @triton.jit
    def _hopper_tile(
        q, desc_k, desc_v, b, h, start, kb, offs_bn, kvl, m_i, l_i, acc, qk_scale, K_SCALE,
        BLOCK_N: tl.constexpr, D: tl.constexpr, MASKED: tl.constexpr,
        RESCALE_THRESHOLD: tl.constexpr, FP8: tl.constexpr, FP8_PV: tl.constexpr,
    ):  # fmt: skip
        """One BLOCK_N-key step of the online softmax (base 2, scale folded into one FMA)."""
        kt = desc_k.load([b, h, start, 0]).reshape(BLOCK_N, D)
        qk = tl.dot(q, kt.T)
        if FP8:
            scale = qk_scale * tl.load(K_SCALE + kb)
        else:
            scale = qk_scale
        if MASKED:
            qk = tl.where((start + offs_bn)[None, :] < kvl, qk, float("-inf"))
        m_ij = tl.maximum(m_i, tl.max(qk, axis=1) * scale)
        if RESCALE_THRESHOLD > 0:
            # Lazy rescale: keep the stale max unless some row grew by more than the threshold.
            if tl.max(m_ij - m_i, axis=0) > RESCALE_THRESHOLD:
                alpha = tl.math.exp2(m_i - m_ij)
                l_i = l_i * alpha
                acc = acc * alpha[:, None]
                m_i = m_ij
            m_use = m_i
        else:
            alpha = tl.math.exp2(m_i - m_ij)
            l_i = l_i * alpha
            acc = acc * alpha[:, None]
            m_i = m_ij
            m_use = m_ij
        if FP8_PV:
            # 2**8 headroom: P in [0, 256] keeps small probabilities out of e4m3 subnormals;
            # l carries the same factor, so out = acc / l is unchanged.
            p = tl.math.exp2(qk * scale - (m_use - 8.0)[:, None])
            l_i = l_i + tl.sum(p, axis=1)
            vt = desc_v.load([b, h, 0, start]).reshape(D, BLOCK_N)
            acc = tl.dot(p.to(vt.dtype), vt.T, acc)
        else:
            p = tl.math.exp2(qk * scale - m_use[:, None])
            l_i = l_i + tl.sum(p, axis=1)
            vt = desc_v.load([b, h, start, 0]).reshape(BLOCK_N, D)
            if MASKED:  # padded values as 0: a NaN there would reach acc through P = 0
                vt = tl.where(((start + offs_bn) < kvl)[:, None], vt, 0.0)
            acc = tl.dot(p.to(vt.dtype), vt, acc)
        return m_i, l_i, acc

    @triton.jit
    def _bsa_hopper_kernel(
        desc_q, desc_k, desc_v, desc_o, LSE, COUNTS, INDICES, KV_LEN, Q_SCALE, K_SCALE, V_SCALE,
        stride_cbh, stride_ibh, stride_im, stride_sq, stride_sk,
        H, N_Q, qk_scale,
        BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
        STORE_LSE: tl.constexpr, WARP_SPEC: tl.constexpr, RESCALE_THRESHOLD: tl.constexpr,
        FP8: tl.constexpr, FP8_PV: tl.constexpr,
    ):  # fmt: skip
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        M_PER_BLOCK: tl.constexpr = BLOCK // BLOCK_M
        SUB: tl.constexpr = BLOCK // BLOCK_N
        qblock = pid_m // M_PER_BLOCK
        kvl = tl.load(KV_LEN + b)
        cnt = tl.load(COUNTS + pid_bh * stride_cbh + qblock)
        # int64: the index lists pass 2**31 elements for large B*H*N at block 64
        idx_base = INDICES + pid_bh.to(tl.int64) * stride_ibh + qblock * stride_im
        offs_bn = tl.arange(0, BLOCK_N)
        q = desc_q.load([b, h, pid_m * BLOCK_M, 0]).reshape(BLOCK_M, D)
        if FP8:
            qk_scale = qk_scale * tl.load(Q_SCALE + pid_bh * stride_sq + qblock)
        k_scale = K_SCALE + pid_bh * stride_sk

        m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
        # Only the last listed block (ascending lists of valid blocks) can hold padded keys.
        n_full = tl.maximum(cnt - 1, 0) * SUB
        for t in tl.range(0, n_full, warp_specialize=WARP_SPEC):
            kb = tl.load(idx_base + t // SUB)
            start = kb * BLOCK + (t % SUB) * BLOCK_N
            m_i, l_i, acc = _hopper_tile(
                q, desc_k, desc_v, b, h, start, kb, offs_bn, kvl, m_i, l_i, acc, qk_scale,
                k_scale, BLOCK_N, D, False, RESCALE_THRESHOLD, FP8, FP8_PV,
            )  # fmt: skip
        for t in range(n_full, cnt * SUB):
            kb = tl.load(idx_base + t // SUB)
            start = kb * BLOCK + (t % SUB) * BLOCK_N
            m_i, l_i, acc = _hopper_tile(
                q, desc_k, desc_v, b, h, start, kb, offs_bn, kvl, m_i, l_i, acc, qk_scale,
                k_scale, BLOCK_N, D, True, RESCALE_THRESHOLD, FP8, FP8_PV,
            )  # fmt: skip

        empty = l_i == 0.0
        out = acc / tl.where(empty, 1.0, l_i)[:, None]
        if FP8_PV:
            out = out * tl.load(V_SCALE + pid_bh)
        desc_o.store([b, h, pid_m * BLOCK_M, 0], out.to(desc_o.dtype).reshape(1, 1, BLOCK_M, D))
        if STORE_LSE:
            offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
            m_fin = m_i - 8.0 if FP8_PV else m_i
            lse = tl.where(empty, float("-inf"), (m_fin + tl.log2(l_i)) * 0.6931471805599453)
            tl.store(LSE + pid_bh * N_Q + offs_m, lse, mask=offs_m < N_Q)


def block_sparse_attention_hopper(
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
    precision: str = "bf16",
    config: dict | None = None,
    fp8_inputs: Fp8Inputs | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Hopper block-sparse attention over CSR lists (same contract as the portable kernel).

    q, k, v: (B, H, N, D) fp16/bf16 (fp32/fp16 under the interpreter); counts: (B, H, Nbq)
    int32; indices: (B, H, Nbq, L) int32 ascending; kv_len: (B,) int. ``precision``: "bf16"
    (inputs' own dtype) or "fp8" (see the module docstring). ``config``: launch configuration
    dict (keys of :data:`xattn_video.kernels.tuning.HOPPER_KEYS`); default from the table.
    ``fp8_inputs``: q, k (and v's scale) already quantized (:func:`.fp8.quantize_fp8_inputs`).
    Returns out (B, H, N, D) in q's dtype and, with ``return_lse``, lse (B, H, N) float32.
    """
    from .tuning import hopper_attention_config

    check_precision(precision)
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    scale = softmax_scale(D, scale)
    cfg = config or hopper_attention_config(q, block_size, precision)
    block_m, block_n = cfg["BLOCK_M"], cfg["BLOCK_N"]
    if block_size % block_m or block_size % block_n:
        raise ValueError(f"config tiles {block_m}x{block_n} must divide block_size={block_size}")
    lens = kv_len_tensor(kv_len, B, Nk, q.device)
    out = torch.empty_like(q)
    lse = torch.empty((B, H, Nq), dtype=torch.float32, device=q.device) if return_lse else out
    fp8 = precision == "fp8"
    fp8_pv = fp8 and cfg.get("FP8_PV", False)
    if fp8_pv and cfg["RESCALE_THRESHOLD"] > 0:  # P <= 2**(8 + threshold) must fit e4m3 (448)
        raise ValueError("config: FP8_PV needs RESCALE_THRESHOLD=0 (P would overflow e4m3)")
    one = torch.ones(B * H, 1, dtype=torch.float32, device=q.device)
    q_scale = k_scale = v_scale = one
    if fp8:
        f8 = fp8_inputs or quantize_fp8_qk(q, k, block_size, lens)
        q, k, q_scale, k_scale = f8.q8, f8.k8, f8.q_scale, f8.k_scale
        if fp8_pv:
            v, v_scale = quantize_fp8_head_t(v, kv_len=lens, scale=f8.v_scale)
            v_scale = v_scale.reshape(B * H)
    counts = counts.reshape(B * H, -1)
    indices = indices.reshape(B * H, indices.shape[-2], indices.shape[-1])
    v_block = [1, 1, D, block_n] if fp8_pv else [1, 1, block_n, D]
    descs = [
        TensorDescriptor.from_tensor(q, [1, 1, block_m, D]),
        TensorDescriptor.from_tensor(k, [1, 1, block_n, D]),
        TensorDescriptor.from_tensor(v, v_block),
        TensorDescriptor.from_tensor(out, [1, 1, block_m, D]),
    ]
    grid = (cdiv(Nq, block_size) * (block_size // block_m), B * H)
    _bsa_hopper_kernel[grid](
        *descs, lse, counts, indices, lens, q_scale, k_scale, v_scale,
        counts.stride(0), indices.stride(0), indices.stride(1), q_scale.stride(0),
        k_scale.stride(0),
        H, Nq, scale * LOG2E,
        BLOCK=block_size, BLOCK_M=block_m, BLOCK_N=block_n, D=D, STORE_LSE=return_lse,
        WARP_SPEC=cfg["WARP_SPEC"], RESCALE_THRESHOLD=cfg["RESCALE_THRESHOLD"],
        FP8=fp8, FP8_PV=fp8_pv,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    return (out, lse) if return_lse else out
