"""Strided antidiagonal block scores (the XAttention estimate), Triton kernel and PyTorch reference.

For query/key groups of ``S`` consecutive tokens, the reshaped score is

    R[i, j] = sum_{s=0..S-1} q[i*S + (S-1-s)] . k[j*S + s]      (query reversed, keys forward)

scaled by ``scale / S`` (``scale``: the attention's softmax scale, 1/sqrt(D) unless given) and
soft-maxed per row over the *valid* key groups (a group is valid when its first token is a
valid key; padded tokens inside a partial group contribute zeros). The probability mass is
summed per (query block, key block) of ``block_size`` tokens:

    A[b, h, qb, kb] = sum_{i in qb, j in kb} softmax_j(R[i, :])[j]

so each row of ``A`` sums to the number of query groups in the block. Key blocks that hold no
valid key get exactly zero.

The Triton kernel never writes the ``(N/S) x (N/S)`` score matrix: one program owns
``BLOCK_M`` query groups and sweeps all key groups once, keeping an online row max / sum and
writing only the per-(query group, key block) log-sum-exp (``block_size/S`` times smaller) to a
scratch buffer, which it re-reads to normalise and sum per query block. The softmax scale is
folded into exp2's FMA, and on a GPU the block log-sum-exp's log2 runs on the MUFU unit
(``lg2.approx``; libdevice's ``log2f`` where :data:`.tuning.ESTIMATE_MEASURED` measured
that faster).

Not supported: causal masking, query padding (every query token is scored), different head
counts for q and k (no GQA), head dims other than 16/32/64/128 in the Triton kernel.
"""

from __future__ import annotations

import torch

from ._common import (
    HAS_TRITON,
    LOG2E,
    cdiv,
    check_precision,
    dot_precision,
    interpreter_enabled,
    kv_len_tensor,
    softmax_scale,
)
from .fp8 import Fp8Inputs, quantize_fp8_qk, round_fp8_blocks_ref
from .tuning import AUTOMATIC_ESTIMATE_KERNELS, ESTIMATE_KERNELS

if HAS_TRITON:
    import triton
    import triton.language as tl


def estimate_block_scores_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    stride: int,
    block_size: int,
    kv_len: torch.Tensor | None = None,
    precision: str = "bf16",
    scale: float | None = None,
) -> torch.Tensor:
    """Block scores by materialising the strided score matrix (fp32, for tests and CPU).

    q: (B, H, Nq, D), k: (B, H, Nk, D); kv_len: (B,) int, keys at positions >= kv_len[b] are
    padding. Returns A: (B, H, ceil(Nq/block_size), ceil(Nk/block_size)) float32.
    ``scale``: the attention's softmax scale (default 1/sqrt(D)); the strided logits take
    ``scale / stride``.
    ``precision="fp8"``: q and k first rounded as the fp8 kernels take them (e4m3 with one
    scale per (b, h, block), :func:`.fp8.quantize_fp8_blocks_ref`), then the same fp32 math:
    the kernels' fp8 estimate up to accumulation order (padded keys quantized as zeros and
    outside their block's scale, as the kernels take them), on any device.
    """
    check_precision(precision)
    if precision == "fp8":
        q = round_fp8_blocks_ref(q, block_size)
        k = round_fp8_blocks_ref(k, block_size, kv_len)
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    S = stride
    G = block_size // S
    ngq, ngk = cdiv(Nq, S), cdiv(Nk, S)
    nbq, nbk = cdiv(Nq, block_size), cdiv(Nk, block_size)
    lens = kv_len_tensor(kv_len, B, Nk, q.device).long()

    tok_k = torch.arange(ngk * S, device=q.device)
    kpad = torch.nn.functional.pad(k.float(), (0, 0, 0, ngk * S - Nk))
    kpad = kpad * (tok_k[None, :] < lens[:, None]).to(kpad.dtype)[:, None, :, None]
    qpad = torch.nn.functional.pad(q.float(), (0, 0, 0, ngq * S - Nq))
    q_rev = qpad.reshape(B, H, ngq, S, D).flip(3).reshape(B, H, ngq, S * D)
    k_fwd = kpad.reshape(B, H, ngk, S * D)
    logits = q_rev @ k_fwd.transpose(-1, -2) * (softmax_scale(D, scale) / S)
    valid_group = torch.arange(ngk, device=q.device)[None, :] * S < lens[:, None]  # (B, ngk)
    logits = logits.masked_fill(~valid_group[:, None, None, :], float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    probs = torch.nn.functional.pad(probs, (0, nbk * G - ngk, 0, nbq * G - ngq))
    return probs.reshape(B, H, nbq, G, nbk, G).sum(dim=(3, 5))


if HAS_TRITON:

    @triton.jit
    def _log2(x, FAST: tl.constexpr):
        """log2 of fp32 x: ``lg2.approx`` on the MUFU unit on a GPU (libdevice's ``log2f`` is
        a polynomial of ~30 instructions), ``tl.log2`` in the interpreter."""
        if FAST:
            return tl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=r,r", [x],
                                             dtype=tl.float32, is_pure=True, pack=1)  # fmt: skip
        else:
            return tl.log2(x)

    @triton.jit
    def _estimate_fwd_kernel(
        Q, K, LSE_BUF, OUT, KV_LEN, Q_SCALE, K_SCALE,
        stride_qb, stride_qh, stride_qn, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd,
        stride_lbh, stride_lm,
        stride_ob, stride_oh, stride_om, stride_sq, stride_sk,
        H, N_Q, N_GQ, N_BQ, N_BK,
        qk_scale,
        S: tl.constexpr, G: tl.constexpr, D: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, KB_TILE: tl.constexpr,
        PRECISION: tl.constexpr, FLATTEN: tl.constexpr, FP8: tl.constexpr,
        FAST_LOG2: tl.constexpr,
    ):  # fmt: skip
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        kvl = tl.load(KV_LEN + b)
        n_kg = tl.cdiv(kvl, S)  # key groups that hold at least one valid key
        n_kb = tl.cdiv(kvl, S * G)  # key blocks that hold at least one valid key

        # int64 per-(b, h) bases: b * stride_qb and the scratch pass 2**31 for large B*H*N
        b64 = b.to(tl.int64)
        q_base = Q + b64 * stride_qb + h * stride_qh
        k_base = K + b64 * stride_kb + h * stride_kh
        l_base = LSE_BUF + pid_bh.to(tl.int64) * stride_lbh

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # query groups
        offs_d = tl.arange(0, D)
        KB_PER_TILE: tl.constexpr = BLOCK_N // G

        m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        if FP8:  # per-row q-block scale (fp8 inputs; one scale per block of S*G tokens)
            q_sc = tl.load(
                Q_SCALE + pid_bh * stride_sq + offs_m // G, mask=offs_m < N_GQ, other=1.0
            )
            row_scale = q_sc * qk_scale
        else:
            row_scale = tl.full([BLOCK_M], 1.0, dtype=tl.float32) * qk_scale

        # Pass 1: one sweep over the keys. Per (row, key block): log2-sum-exp2 of the block's
        # logits, stored to scratch; per row: online max and sum over all blocks.
        for start_n in tl.range(0, n_kg, BLOCK_N, flatten=FLATTEN):
            offs_n = start_n + tl.arange(0, BLOCK_N)  # key groups
            acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for s in range(S):
                q_tok = offs_m * S + (S - 1 - s)
                k_tok = offs_n * S + s
                qs = tl.load(
                    q_base + q_tok[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                    mask=q_tok[:, None] < N_Q,
                    other=0.0,
                )
                ks = tl.load(
                    k_base + k_tok[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                    mask=k_tok[:, None] < kvl,
                    other=0.0,
                )
                acc = tl.dot(qs, tl.trans(ks), acc, input_precision=PRECISION)
            offs_kb = start_n // G + tl.arange(0, KB_PER_TILE)
            # the scale (per row, and per key block in fp8; > 0) is folded into the exponent's
            # FMA: the block max is taken on the raw logits
            if FP8:
                k_sc = tl.load(K_SCALE + pid_bh * stride_sk + offs_kb, mask=offs_kb < N_BK,
                               other=1.0)  # fmt: skip
                sc = row_scale[:, None] * k_sc[None, :]
            else:
                sc = tl.broadcast_to(row_scale[:, None], [BLOCK_M, KB_PER_TILE])
            raw = tl.where(offs_n[None, :] < n_kg, acc, float("-inf"))
            l3 = tl.reshape(raw, [BLOCK_M, KB_PER_TILE, G])
            bmax_raw = tl.max(l3, axis=2)
            bmax_safe = tl.where(bmax_raw == float("-inf"), 0.0, bmax_raw) * sc
            bsum = tl.sum(tl.exp2(l3 * sc[:, :, None] - bmax_safe[:, :, None]), axis=2)
            blse = bmax_safe + _log2(bsum, FAST_LOG2)  # -inf for blocks with no valid key
            bmax = bmax_raw * sc
            tl.store(
                l_base + offs_m[:, None] * stride_lm + offs_kb[None, :],
                blse,
                mask=(offs_m[:, None] < N_GQ) & (offs_kb[None, :] < N_BK),
            )
            m_new = tl.maximum(m_i, tl.max(bmax, axis=1))
            l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(blse - m_new[:, None]), axis=1)
            m_i = m_new

        row_lse = m_i + tl.log2(l_i)
        row_ok = offs_m < N_GQ
        tl.debug_barrier()  # scratch written above by other threads of this program

        # Pass 2: normalise the stored block sums and add up the query groups of each q-block.
        QB_PER_TILE: tl.constexpr = BLOCK_M // G
        offs_qb = pid_m * QB_PER_TILE + tl.arange(0, QB_PER_TILE)
        o_base = OUT + b64 * stride_ob + h * stride_oh
        for kb0 in range(0, n_kb, KB_TILE):
            offs_kb = kb0 + tl.arange(0, KB_TILE)
            blse = tl.load(
                l_base + offs_m[:, None] * stride_lm + offs_kb[None, :],
                mask=row_ok[:, None] & (offs_kb[None, :] < n_kb),
                other=float("-inf"),
            )
            p = tl.exp2(blse - row_lse[:, None])
            p = tl.where(row_ok[:, None], p, 0.0)
            a = tl.sum(tl.reshape(p, [QB_PER_TILE, G, KB_TILE]), axis=1)
            tl.store(
                o_base + offs_qb[:, None] * stride_om + offs_kb[None, :],
                a,
                mask=(offs_qb[:, None] < N_BQ) & (offs_kb[None, :] < n_kb),
            )


def _estimate_launch_config(G: int, D: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for the estimate kernel (tuned on H100)."""
    if dtype == torch.float32:  # interpreter tests and fp32 callers: small tiles
        return max(64, G), max(64, G), 4, 1
    # H100 sweep (bf16, D=128, N=119k, S=8 and 16): (128, 128, 8 warps, 3 stages) was fastest.
    return max(128, G), max(128, G), 8, 3


def estimate_block_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    stride: int,
    block_size: int,
    kv_len: torch.Tensor | None = None,
    launch: tuple[int, int, int, int] | None = None,
    precision: str = "bf16",
    flatten: bool | None = None,
    kernel: str = "auto",
    fp8_inputs: Fp8Inputs | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Block scores with the fused Triton kernel, or on sm90 GPUs the Gluon one
    (:mod:`.estimate_gluon`) where :func:`.tuning.estimate_kernel_for` picks it. Same contract
    as :func:`estimate_block_scores_ref`.

    q: (B, H, Nq, D), k: (B, H, Nk, D) in fp16/bf16/fp32 on CUDA (or CPU with
    ``TRITON_INTERPRET=1``); kv_len: (B,) int. Returns (B, H, Nbq, Nbk) float32.
    ``launch`` overrides (BLOCK_M, BLOCK_N, num_warps, num_stages), for tuning.
    ``precision="fp8"``: q and k in e4m3 with one scale per (b, h, block) (Hopper GPUs; the
    masks selected from these scores may differ from bf16 ones at near-ties).
    ``flatten``: ask Triton to flatten the key-tile / stride loop nest for pipelining.
    On CUDA, ``launch`` / ``flatten`` left None come from :func:`.tuning.estimate_config`.
    ``kernel``: "auto", "prefer-gluon" (the Gluon kernel wherever :data:`.tuning.GLUON_ESTIMATE`
    measured it faster, even with :data:`.tuning.GLUON_ESTIMATE_AUTO` off), or force "gluon" /
    "triton" (``launch`` / ``flatten`` tune the Triton kernel, so giving either keeps "auto" and
    "prefer-gluon" on it). ``fp8_inputs``: q and k already quantized by
    :func:`.fp8.quantize_fp8_inputs` with this ``block_size`` and ``kv_len`` (the op shares
    them with the fp8 attention); q and k then give only the shapes. ``scale``: the attention's
    softmax scale (default 1/sqrt(D)).
    """
    check_precision(precision)
    automatic = kernel in AUTOMATIC_ESTIMATE_KERNELS
    if kernel == "gluon" or (automatic and q.is_cuda and launch is None and flatten is None):
        from .tuning import estimate_kernel_for

        choice, (tile_n, stages) = estimate_kernel_for(q, k, stride, block_size, precision, kernel)
        if choice == "gluon":
            from .estimate_gluon import estimate_block_scores_gluon

            return estimate_block_scores_gluon(
                q, k, stride=stride, block_size=block_size, kv_len=kv_len, precision=precision,
                block_n=tile_n, stages=stages, fp8_inputs=fp8_inputs, scale=scale,
            )  # fmt: skip
    elif not automatic and kernel != "triton":
        raise ValueError(f"kernel must be one of {ESTIMATE_KERNELS}, got {kernel!r}")
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    S = stride
    G = block_size // S
    ngq = cdiv(Nq, S)
    nbq, nbk = cdiv(Nq, block_size), cdiv(Nk, block_size)
    lens = kv_len_tensor(kv_len, B, Nk, q.device)
    fast_log2 = not interpreter_enabled()
    if q.is_cuda and q.dtype != torch.float32:
        from .tuning import estimate_config, gpu_name

        tuned = estimate_config(gpu_name(q), precision, S, D, Nq)
        fast_log2 = tuned.fast_log2
        bm, bn, warps, stages = tuned.tiles
        launch = launch or (max(bm, G), max(bn, G), warps, stages)
        flatten = tuned.flatten if flatten is None else flatten
    block_m, block_n, num_warps, num_stages = launch or _estimate_launch_config(G, D, q.dtype)
    flatten = bool(flatten)
    fp8 = precision == "fp8"
    if fp8:
        f8 = fp8_inputs or quantize_fp8_qk(q, k, block_size, lens)
        q, k, q_scale, k_scale = f8.q8, f8.k8, f8.q_scale, f8.k_scale
    else:
        q_scale = k_scale = lens.view(B, 1)  # never read without FP8 (no allocation per call)

    n_m_tiles = cdiv(ngq, block_m)
    scratch = torch.empty((B * H, n_m_tiles * block_m, nbk), dtype=torch.float32, device=q.device)
    out = torch.zeros((B, H, nbq, nbk), dtype=torch.float32, device=q.device)
    grid = (n_m_tiles, B * H)
    _estimate_fwd_kernel[grid](
        q, k, scratch, out, lens, q_scale, k_scale,
        *q.stride(), *k.stride(),
        scratch.stride(0), scratch.stride(1),
        out.stride(0), out.stride(1), out.stride(2), q_scale.stride(0), k_scale.stride(0),
        H, Nq, ngq, nbq, nbk,
        LOG2E * softmax_scale(D, scale) / S,
        S=S, G=G, D=D, BLOCK_M=block_m, BLOCK_N=block_n, KB_TILE=32,
        PRECISION=dot_precision(q.dtype), FLATTEN=flatten, FP8=fp8,
        FAST_LOG2=fast_log2, num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return out
