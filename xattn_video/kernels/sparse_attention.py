"""Block-sparse attention forward (FlashAttention-style, non-causal), Triton kernel and reference.

Each program owns one query block of ``block_size`` tokens of one (batch, head) and walks the
ascending list of its selected key blocks (``counts`` / ``indices`` from
:func:`~xattn_video.kernels.select.mask_to_indices`), in sub-tiles of ``BLOCK_N`` keys, with
an online softmax in base 2. Keys at positions ``>= kv_len[b]`` are masked inside the kernel,
so the last, partial block and per-sample key padding are exact. Optionally returns the
natural-log log-sum-exp per query row, needed to merge partial results (text columns, ring
attention).

Not supported: causal masks, dropout, backward (inference only), GQA (q/k/v must have the same
head count), head dims other than 16, 32, 64 and 128 in the Triton kernel, different block
sizes for queries and keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import (
    HAS_TRITON,
    LOG2E,
    cdiv,
    check_precision,
    dot_precision,
    kv_len_tensor,
    softmax_scale,
)
from .fp8 import Fp8Inputs

if HAS_TRITON:
    import triton
    import triton.language as tl

try:  # host-side TMA descriptors (Triton >= 3.3)
    from triton.tools.tensor_descriptor import TensorDescriptor

    HAS_TENSOR_DESC = True
except ImportError:  # pragma: no cover - old Triton or no Triton
    HAS_TENSOR_DESC = False

LN2 = 0.6931471805599453


FP8_NEEDS = (
    "precision='fp8' needs the Hopper kernels: an sm90+ GPU, Triton >= 3.4 (TMA descriptors) "
    "and fp16/bf16 q/k/v with head dim 64 or 128, block_size >= 64 and 16-byte aligned strides"
)


def block_sparse_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    *,
    block_size: int,
    kv_len: torch.Tensor | None = None,
    scale: float | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SDPA with the block mask expanded to tokens (and key padding). Computed in q's dtype.

    q, k, v: (B, H, N, D); mask: (B, H, Nbq, Nbk) bool; kv_len: (B,) int. Rows with no
    selected key give 0 output (and -inf LSE). Returns out (B, H, N, D) and, with
    ``return_lse``, lse (B, H, N) float32 (natural log).

    The mask reaches SDPA as an additive bias in q's dtype, one row per query block (its key
    columns gathered from the block mask) that broadcasts over the block's query rows, one SDPA
    call per query block: what SDPA makes of a bool mask without expanding a token mask (on
    CPU at 2,304 tokens as fast as dense SDPA, ~5x faster than a bool token mask). Each block's
    row is gathered on its own: rows sliced from one bias of several blocks gave wrong output
    rows in the last, partial block under ``torch.compile(dynamic=True)`` (torch 2.14's
    inductor; N = 130 and 140 at block 16, eager and a fixed shape were right).
    """
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    scale = softmax_scale(D, scale)
    lens = kv_len_tensor(kv_len, B, Nk, q.device).long()
    key_ok = torch.arange(Nk, device=q.device)[None, None, None, :] < lens[:, None, None, None]
    block_ok = torch.arange(mask.shape[-1], device=q.device) * block_size < lens[:, None]
    picked = mask & block_ok[:, None, None, :]  # (B, H, Nbq, Nbk): blocks with a valid key
    has_key = picked.any(dim=-1, keepdim=True)  # (B, H, Nbq, 1)
    zero = torch.zeros((), dtype=q.dtype, device=q.device)
    neg = torch.full((), float("-inf"), dtype=q.dtype, device=q.device)
    out = torch.empty_like(q)
    lse = torch.empty((B, H, Nq), dtype=torch.float32, device=q.device) if return_lse else None
    cols = torch.arange(Nk, device=q.device) // block_size  # gathers, see nonfinite_rows_ref
    k_t = k.float().transpose(-1, -2) if return_lse else None  # (B, H, D, Nk), for the LSE
    for i in range(mask.shape[2]):  # one query block a call: its bias row broadcasts over it
        q0, q1 = i * block_size, min(Nq, (i + 1) * block_size)
        row = slice(i, i + 1)
        # rows without a key may see every key (no all -inf row, so no NaN); zeroed below
        ok = (picked[:, :, row].index_select(-1, cols) & key_ok) | ~has_key[:, :, row]
        bias = torch.where(ok, zero, neg)  # (B, H, 1, Nk)
        chunk = F.scaled_dot_product_attention(q[:, :, q0:q1], k, v, attn_mask=bias, scale=scale)
        out[:, :, q0:q1] = torch.where(has_key[:, :, row], chunk, zero)
        if lse is not None:
            logits = (q[:, :, q0:q1].float() @ k_t) * scale
            keep = ok & has_key[:, :, row]
            lse[:, :, q0:q1] = torch.logsumexp(logits.masked_fill(~keep, float("-inf")), -1)
    return (out, lse) if return_lse else out


if HAS_TRITON:

    @triton.jit
    def _attn_tile(
        q, k_base, v_base, start, offs_bn, offs_d, stride_kn, stride_kd, stride_vn, stride_vd,
        kvl, m_i, l_i, acc, sm_scale_log2, MASKED: tl.constexpr, PRECISION: tl.constexpr,
    ):  # fmt: skip
        """One BLOCK_N-key step of the online softmax; MASKED handles keys >= kvl."""
        offs_n = start + offs_bn
        k_ptrs = k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
        v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
        if MASKED:
            key_ok = offs_n < kvl
            kt = tl.load(k_ptrs, mask=key_ok[:, None], other=0.0)
            vt = tl.load(v_ptrs, mask=key_ok[:, None], other=0.0)
        else:
            kt = tl.load(k_ptrs)
            vt = tl.load(v_ptrs)
        qk = tl.dot(q, tl.trans(kt), input_precision=PRECISION) * sm_scale_log2
        if MASKED:
            qk = tl.where(key_ok[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(vt.dtype), vt, acc, input_precision=PRECISION)
        return m_new, l_i, acc

    @triton.jit
    def _block_sparse_attn_fwd_kernel(
        Q, K, V, OUT, LSE, COUNTS, INDICES, KV_LEN,
        stride_qb, stride_qh, stride_qn, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd,
        stride_ob, stride_oh, stride_on, stride_od,
        stride_cbh, stride_ibh, stride_im,
        H, N_Q, sm_scale_log2,
        BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
        STORE_LSE: tl.constexpr, PRECISION: tl.constexpr,
    ):  # fmt: skip
        pid_m = tl.program_id(0)  # query tile (BLOCK_M tokens inside one query block)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        M_PER_BLOCK: tl.constexpr = BLOCK // BLOCK_M
        SUB: tl.constexpr = BLOCK // BLOCK_N
        qblock = pid_m // M_PER_BLOCK
        kvl = tl.load(KV_LEN + b)
        cnt = tl.load(COUNTS + pid_bh * stride_cbh + qblock)
        # int64 per-(b, h) bases: b * stride_qb and the index lists pass 2**31 for large B*H*N
        idx_base = INDICES + pid_bh.to(tl.int64) * stride_ibh + qblock * stride_im
        b64 = b.to(tl.int64)

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, D)
        offs_bn = tl.arange(0, BLOCK_N)
        q = tl.load(
            Q + b64 * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn
            + offs_d[None, :] * stride_qd,
            mask=offs_m[:, None] < N_Q,
            other=0.0,
        )  # fmt: skip
        k_base = K + b64 * stride_kb + h * stride_kh
        v_base = V + b64 * stride_vb + h * stride_vh

        m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
        # Blocks are sorted ascending and only valid ones are listed, so only the last listed
        # block can hold padded keys: the main loop runs unmasked, the last block masked.
        n_full = tl.maximum(cnt - 1, 0) * SUB
        for t in range(0, n_full):
            kb = tl.load(idx_base + t // SUB)
            start = kb * BLOCK + (t % SUB) * BLOCK_N
            m_i, l_i, acc = _attn_tile(
                q, k_base, v_base, start, offs_bn, offs_d, stride_kn, stride_kd, stride_vn,
                stride_vd, kvl, m_i, l_i, acc, sm_scale_log2, False, PRECISION,
            )  # fmt: skip
        for t in range(n_full, cnt * SUB):
            kb = tl.load(idx_base + t // SUB)
            start = kb * BLOCK + (t % SUB) * BLOCK_N
            m_i, l_i, acc = _attn_tile(
                q, k_base, v_base, start, offs_bn, offs_d, stride_kn, stride_kd, stride_vn,
                stride_vd, kvl, m_i, l_i, acc, sm_scale_log2, True, PRECISION,
            )  # fmt: skip

        empty = l_i == 0.0
        out = acc / tl.where(empty, 1.0, l_i)[:, None]
        tl.store(
            OUT + b64 * stride_ob + h * stride_oh + offs_m[:, None] * stride_on
            + offs_d[None, :] * stride_od,
            out.to(OUT.dtype.element_ty),
            mask=offs_m[:, None] < N_Q,
        )  # fmt: skip
        if STORE_LSE:
            lse = tl.where(empty, float("-inf"), (m_i + tl.log2(l_i)) * 0.6931471805599453)
            tl.store(LSE + pid_bh * N_Q + offs_m, lse, mask=offs_m < N_Q)

    @triton.jit
    def _attn_tile_tma(
        q, desc_k, desc_v, b, h, start, offs_bn, kvl, m_i, l_i, acc, sm_scale_log2,
        BLOCK_N: tl.constexpr, D: tl.constexpr, MASKED: tl.constexpr,
    ):  # fmt: skip
        """One BLOCK_N-key step with TMA loads (rows past N come back as zeros)."""
        kt = desc_k.load([b, h, start, 0]).reshape(BLOCK_N, D)
        qk = tl.dot(q, kt.T)
        if MASKED:
            qk = tl.where((start + offs_bn)[None, :] < kvl, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=1) * sm_scale_log2)
        p = tl.exp2(qk * sm_scale_log2 - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None]
        vt = desc_v.load([b, h, start, 0]).reshape(BLOCK_N, D)
        if MASKED:  # padded values as 0: a NaN there would reach acc through P = 0
            vt = tl.where(((start + offs_bn) < kvl)[:, None], vt, 0.0)
        acc = tl.dot(p.to(vt.dtype), vt, acc)
        return m_new, l_i, acc

    @triton.jit
    def _block_sparse_attn_fwd_tma_kernel(
        desc_q, desc_k, desc_v, desc_o, LSE, COUNTS, INDICES, KV_LEN,
        stride_cbh, stride_ibh, stride_im,
        H, N_Q, sm_scale_log2,
        BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
        STORE_LSE: tl.constexpr,
    ):  # fmt: skip
        """Same contract as ``_block_sparse_attn_fwd_kernel``, with Hopper TMA descriptors."""
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        M_PER_BLOCK: tl.constexpr = BLOCK // BLOCK_M
        SUB: tl.constexpr = BLOCK // BLOCK_N
        qblock = pid_m // M_PER_BLOCK
        kvl = tl.load(KV_LEN + b)
        cnt = tl.load(COUNTS + pid_bh * stride_cbh + qblock)
        idx_base = INDICES + pid_bh.to(tl.int64) * stride_ibh + qblock * stride_im
        offs_bn = tl.arange(0, BLOCK_N)
        q = desc_q.load([b, h, pid_m * BLOCK_M, 0]).reshape(BLOCK_M, D)

        m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
        n_full = tl.maximum(cnt - 1, 0) * SUB
        for t in range(0, n_full):
            kb = tl.load(idx_base + t // SUB)
            start = kb * BLOCK + (t % SUB) * BLOCK_N
            m_i, l_i, acc = _attn_tile_tma(
                q, desc_k, desc_v, b, h, start, offs_bn, kvl, m_i, l_i, acc, sm_scale_log2,
                BLOCK_N, D, False,
            )  # fmt: skip
        for t in range(n_full, cnt * SUB):
            kb = tl.load(idx_base + t // SUB)
            start = kb * BLOCK + (t % SUB) * BLOCK_N
            m_i, l_i, acc = _attn_tile_tma(
                q, desc_k, desc_v, b, h, start, offs_bn, kvl, m_i, l_i, acc, sm_scale_log2,
                BLOCK_N, D, True,
            )  # fmt: skip

        empty = l_i == 0.0
        out = acc / tl.where(empty, 1.0, l_i)[:, None]
        desc_o.store([b, h, pid_m * BLOCK_M, 0], out.to(desc_o.dtype).reshape(1, 1, BLOCK_M, D))
        if STORE_LSE:
            offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
            lse = tl.where(empty, float("-inf"), (m_i + tl.log2(l_i)) * 0.6931471805599453)
            tl.store(LSE + pid_bh * N_Q + offs_m, lse, mask=offs_m < N_Q)


def _tma_default(*tensors: torch.Tensor) -> bool:
    """TMA descriptors: Hopper or newer, fp16/bf16, 16-byte aligned strides and base."""
    if not HAS_TENSOR_DESC or not all(t.is_cuda for t in tensors):
        return False
    if torch.cuda.get_device_capability(tensors[0].device)[0] < 9:
        return False
    return all(
        t.dtype in (torch.float16, torch.bfloat16)
        and t.stride(-1) == 1
        and t.data_ptr() % 16 == 0
        and all((st * t.element_size()) % 16 == 0 for st in t.stride()[:-1])
        for t in tensors
    )


def _attn_launch_config(
    block_size: int, D: int, dtype: torch.dtype, use_tma: bool = False
) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for the sparse attention kernel."""
    if dtype == torch.float32:  # interpreter tests and fp32 callers: small tiles
        return min(64, block_size), min(32, block_size), 4, 1
    # H100 sweeps (bf16, D=128, N=119k, density 0.3, docs/results/bench_attention_h100.json):
    # 128x128 tiles, 8 warps; 2 stages with TMA loads, 3 with pointer loads.
    block_m = min(128, block_size)
    block_n = min(128, block_size)
    return block_m, block_n, 8 if block_m * D >= 128 * 128 else 4, 2 if use_tma else 3


def block_sparse_attention_fwd(
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
    launch: tuple[int, int, int, int] | None = None,
    use_tma: bool | None = None,
    kernel: str = "auto",
    precision: str = "bf16",
    fp8_inputs: Fp8Inputs | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Triton block-sparse attention over CSR lists; picks the Hopper kernel on sm90.

    q, k, v: (B, H, N, D) fp16/bf16 (fp32 under the interpreter); counts: (B, H, Nbq) int32;
    indices: (B, H, Nbq, L) int32, ascending, only valid key blocks; kv_len: (B,) int.
    Returns out (B, H, N, D) in q's dtype and, with ``return_lse``, lse (B, H, N) float32.
    ``launch`` overrides (BLOCK_M, BLOCK_N, num_warps, num_stages), for tuning. ``use_tma``:
    load tiles with Hopper tensor descriptors (default: on sm90+ GPUs for fp16/bf16).
    ``kernel``: "auto" (the Gluon or Hopper kernel where :func:`~.tuning.attention_kernel_for`
    allows it, unless ``launch`` or ``use_tma`` asks for the portable one), "gluon", "hopper"
    or "portable". ``precision``: "bf16" (the inputs' dtype) or "fp8" (the Gluon kernel where
    "auto" picks it at head dim 128, else the Triton Hopper kernel; not the portable kernel).
    ``fp8_inputs``: q, k and v's scale already quantized (:func:`.fp8.quantize_fp8_inputs`
    with this block size and kv_len), for ``precision="fp8"``.
    """
    from .sparse_attention_gluon import block_sparse_attention_gluon
    from .sparse_attention_hopper import block_sparse_attention_hopper
    from .tuning import attention_kernel_for, gluon_stages, gpu_name

    check_precision(precision)
    if kernel == "auto" and (launch is not None or use_tma is not None):
        kernel = "portable"
    choice = attention_kernel_for(q, k, v, block_size, kernel, precision)
    if precision == "fp8" and choice == "portable":
        raise ValueError(FP8_NEEDS)
    if choice == "gluon":
        return block_sparse_attention_gluon(
            q, k, v, counts, indices, block_size=block_size, kv_len=kv_len, scale=scale,
            return_lse=return_lse, precision=precision,
            stages=gluon_stages(gpu_name(q), q.shape[-1], precision), fp8_inputs=fp8_inputs,
        )  # fmt: skip
    if choice == "hopper":
        return block_sparse_attention_hopper(
            q, k, v, counts, indices, block_size=block_size, kv_len=kv_len, scale=scale,
            return_lse=return_lse, precision=precision, fp8_inputs=fp8_inputs,
        )  # fmt: skip
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    scale = softmax_scale(D, scale)
    lens = kv_len_tensor(kv_len, B, Nk, q.device)
    out = torch.empty_like(q)
    lse = torch.empty((B, H, Nq), dtype=torch.float32, device=q.device) if return_lse else out
    if use_tma is None:
        use_tma = _tma_default(q, k, v)
    block_m, block_n, num_warps, num_stages = launch or _attn_launch_config(
        block_size, D, q.dtype, use_tma
    )
    counts = counts.reshape(B * H, -1)
    indices = indices.reshape(B * H, indices.shape[-2], indices.shape[-1])
    grid = (cdiv(Nq, block_size) * (block_size // block_m), B * H)
    if use_tma:
        descs = [
            TensorDescriptor.from_tensor(t, [1, 1, rows, D])
            for t, rows in ((q, block_m), (k, block_n), (v, block_n), (out, block_m))
        ]
        _block_sparse_attn_fwd_tma_kernel[grid](
            *descs, lse, counts, indices, lens,
            counts.stride(0), indices.stride(0), indices.stride(1),
            H, Nq, scale * LOG2E,
            BLOCK=block_size, BLOCK_M=block_m, BLOCK_N=block_n, D=D, STORE_LSE=return_lse,
            num_warps=num_warps, num_stages=num_stages,
        )  # fmt: skip
        return (out, lse) if return_lse else out
    _block_sparse_attn_fwd_kernel[grid](
        q, k, v, out, lse, counts, indices, lens,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        counts.stride(0), indices.stride(0), indices.stride(1),
        H, Nq, scale * LOG2E,
        BLOCK=block_size, BLOCK_M=block_m, BLOCK_N=block_n, D=D,
        STORE_LSE=return_lse, PRECISION=dot_precision(q.dtype),
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return (out, lse) if return_lse else out
