"""The XAttention op: estimate -> select -> block-sparse attention, with input checks.

``xattention(q, k, v, ...)`` scores every (query block, key block) pair with strided
antidiagonals, keeps per query-block row the smallest set of key blocks holding ``threshold``
of the estimated mass (or a fixed ``ratio`` of blocks), and computes exact attention inside
that block mask. q/k/v are (B, H, N, D). Keys at positions ``>= kv_len[b]`` are padding: they
get no estimated mass, are never selected and never attended. Tokens from ``dense_from[b]`` on
(text appended after the video) keep their query rows and key columns dense.

Backends: ``"triton"`` (CUDA, or CPU under ``TRITON_INTERPRET=1``), ``"torch"`` (the PyTorch
references; materialises the score matrix, for CPU and tests), ``"auto"`` (Triton on CUDA,
torch otherwise).

Not supported: causal attention, dropout, gradients, GQA / MQA (q, k, v must have the same
head count), queries and keys of different lengths in the sparse kernel, head dims other than
16/32/64/128 with the Triton backend, block sizes other than 16/32/64/128.
"""

from __future__ import annotations

import math

import torch

from .kernels._common import HAS_TRITON, cdiv, kv_len_tensor, triton_usable
from .kernels.estimate import estimate_block_scores, estimate_block_scores_ref
from .kernels.select import mask_to_indices, select_blocks, valid_key_blocks
from .kernels.sparse_attention import block_sparse_attention_fwd, block_sparse_attention_ref

BLOCK_SIZES = (16, 32, 64, 128)
STRIDES = (2, 4, 8, 16)
TRITON_HEAD_DIMS = (16, 32, 64, 128)
BACKENDS = ("auto", "triton", "torch")
DEFAULT_THRESHOLD = 0.9


def resolve_backend(backend: str, t: torch.Tensor) -> str:
    """Map ``"auto"`` to ``"triton"`` on CUDA and ``"torch"`` elsewhere; check explicit choices."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if (t.is_cuda and HAS_TRITON) else "torch"
    if backend == "triton" and not triton_usable(t):
        raise ValueError(
            "backend='triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1); "
            f"got a tensor on {t.device}"
        )
    return backend


def _check_qk(q: torch.Tensor, k: torch.Tensor, name_k: str = "k") -> None:
    if q.ndim != 4:
        raise ValueError(f"q must have rank 4 (B, H, N, D), got shape {tuple(q.shape)}")
    if k.ndim != 4:
        raise ValueError(f"{name_k} must have rank 4 (B, H, N, D), got shape {tuple(k.shape)}")
    if k.shape[0] != q.shape[0] or k.shape[1] != q.shape[1] or k.shape[3] != q.shape[3]:
        raise ValueError(
            f"q {tuple(q.shape)} and {name_k} {tuple(k.shape)} must agree on B, H and D "
            "(GQA/MQA is not supported: repeat the key/value heads first)"
        )
    if k.dtype != q.dtype or k.device != q.device:
        raise ValueError(f"q and {name_k} must share dtype and device")
    if not q.is_floating_point():
        raise ValueError(f"q must be a floating-point tensor, got {q.dtype}")
    if q.shape[2] == 0 or k.shape[2] == 0:
        raise ValueError("q and k need at least one token")


def _check_block_stride(block_size: int, stride: int | None) -> None:
    if block_size not in BLOCK_SIZES:
        raise ValueError(f"block_size must be one of {BLOCK_SIZES}, got {block_size}")
    if stride is not None:
        if stride not in STRIDES:
            raise ValueError(f"stride must be one of {STRIDES}, got {stride}")
        if block_size % stride:
            raise ValueError(f"stride ({stride}) must divide block_size ({block_size})")


def _check_selection(threshold, ratio) -> None:
    if (threshold is None) == (ratio is None):
        raise ValueError("give exactly one of `threshold` and `ratio`")
    if threshold is not None:
        thr = torch.as_tensor(threshold, dtype=torch.float64)
        if thr.ndim > 1 or not bool(((thr > 0) & (thr <= 1)).all()):
            raise ValueError(
                f"threshold must be in (0, 1] (a float or a (H,) tensor), got {threshold}"
            )
    if ratio is not None and not (0.0 < float(ratio) <= 1.0):
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")


def _check_kv_len(kv_len: torch.Tensor | None, batch: int, n_k: int) -> None:
    if kv_len is None:
        return
    if not isinstance(kv_len, torch.Tensor) or kv_len.shape != (batch,):
        raise ValueError(f"kv_len must be an int tensor of shape ({batch},)")
    if kv_len.is_floating_point():
        raise ValueError(f"kv_len must be an integer tensor, got {kv_len.dtype}")
    lo, hi = int(kv_len.min()), int(kv_len.max())
    if lo < 1 or hi > n_k:
        raise ValueError(f"kv_len values must be in [1, {n_k}], got [{lo}, {hi}]")


def _check_triton_head_dim(backend: str, head_dim: int) -> None:
    if backend == "triton" and head_dim not in TRITON_HEAD_DIMS:
        raise ValueError(
            f"head dim {head_dim} is not supported by the Triton kernels "
            f"(supported: {TRITON_HEAD_DIMS}); use backend='torch'"
        )


def dense_blocks(
    dense_from: int | torch.Tensor | None, batch: int, n_tokens: int, block_size: int, device
) -> torch.Tensor | None:
    """(B, Nb) bool: blocks holding any token at position >= dense_from[b], or None."""
    if dense_from is None:
        return None
    start = torch.as_tensor(dense_from, device=device).long().reshape(-1).expand(batch)
    ends = (torch.arange(cdiv(n_tokens, block_size), device=device) + 1) * block_size
    return ends[None, :] > start[:, None]


def block_density(mask: torch.Tensor, *, block_size: int, kv_len: torch.Tensor | None = None,
                  n_k: int | None = None) -> float:  # fmt: skip
    """Selected (query block, key block) pairs over all pairs with a valid key block.

    mask: (B, H, Nbq, Nbk) bool. Dense attention over valid keys has density exactly 1.0.
    """
    B, H, nbq, nbk = mask.shape
    lens = kv_len_tensor(kv_len, B, n_k if n_k is not None else nbk * block_size, mask.device)
    n_valid = valid_key_blocks(lens, nbk, block_size).sum()
    return float(mask.sum()) / float(n_valid * H * nbq)


def estimate_block_mask(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    threshold: float | torch.Tensor | None = None,
    stride: int = 8,
    block_size: int = 128,
    kv_len: torch.Tensor | None = None,
    ratio: float | None = None,
    dense_from: int | torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """XAttention block mask. q: (B, H, Nq, D), k: (B, H, Nk, D) -> (B, H, Nbq, Nbk) bool.

    ``threshold`` (float or per-head (H,) tensor in (0, 1]; default 0.9 unless ``ratio`` is
    given) keeps per row the smallest set of key blocks whose estimated mass reaches it;
    ``ratio=r`` keeps the top ``ceil(r * valid_blocks)`` blocks of every row instead.
    """
    if threshold is None and ratio is None:
        threshold = DEFAULT_THRESHOLD
    _check_qk(q, k)
    _check_block_stride(block_size, stride)
    _check_selection(threshold, ratio)
    B, _, Nq, D = q.shape
    Nk = k.shape[2]
    _check_kv_len(kv_len, B, Nk)
    backend = resolve_backend(backend, q)
    _check_triton_head_dim(backend, D)
    lens = kv_len_tensor(kv_len, B, Nk, q.device)
    estimate = estimate_block_scores if backend == "triton" else estimate_block_scores_ref
    scores = estimate(q, k, stride=stride, block_size=block_size, kv_len=lens)
    force_rows = dense_blocks(dense_from, B, Nq, block_size, q.device)
    force_cols = dense_blocks(dense_from, B, Nk, block_size, q.device)
    return select_blocks(
        scores,
        block_size=block_size,
        threshold=threshold,
        ratio=ratio,
        kv_len=lens,
        force_rows=force_rows,
        force_cols=force_cols,
    )


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    *,
    block_size: int = 128,
    kv_len: torch.Tensor | None = None,
    scale: float | None = None,
    return_lse: bool = False,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Exact attention restricted to a block mask.

    q, k, v: (B, H, N, D); mask: (B, H, Nbq, Nbk) bool (broadcastable over B and H);
    kv_len: (B,) int. Blocks without a valid key are ignored. Rows with no selected block give
    zeros. Returns out (B, H, N, D) and, with ``return_lse``, lse (B, H, N) float32 (natural
    log; -inf for empty rows).
    """
    _check_qk(q, k)
    _check_qk(q, v, "v")
    if k.shape[2] != v.shape[2]:
        raise ValueError("k and v must have the same number of tokens")
    _check_block_stride(block_size, None)
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    _check_kv_len(kv_len, B, Nk)
    nbq, nbk = cdiv(Nq, block_size), cdiv(Nk, block_size)
    if mask.dtype != torch.bool or mask.ndim != 4 or mask.shape[-2:] != (nbq, nbk):
        raise ValueError(
            f"mask must be a bool tensor (B, H, {nbq}, {nbk}) for block_size={block_size}, "
            f"got {tuple(mask.shape)} {mask.dtype}"
        )
    mask = mask.to(q.device).expand(B, H, nbq, nbk)
    backend = resolve_backend(backend, q)
    _check_triton_head_dim(backend, D)
    lens = kv_len_tensor(kv_len, B, Nk, q.device)
    if backend == "torch":
        return block_sparse_attention_ref(
            q, k, v, mask, block_size=block_size, kv_len=lens, scale=scale, return_lse=return_lse
        )
    if q.dtype == torch.float32 and q.is_cuda:
        raise ValueError("the Triton kernel takes fp16/bf16 on CUDA; cast q, k, v first")
    mask = mask & valid_key_blocks(lens, nbk, block_size)[:, None, None, :]
    counts, indices = mask_to_indices(mask)
    return block_sparse_attention_fwd(
        q.contiguous() if q.stride(-1) != 1 else q,
        k if k.stride(-1) == 1 else k.contiguous(),
        v if v.stride(-1) == 1 else v.contiguous(),
        counts,
        indices,
        block_size=block_size,
        kv_len=lens,
        scale=scale,
        return_lse=return_lse,
    )


def xattention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    threshold: float | torch.Tensor | None = None,
    stride: int = 8,
    block_size: int = 128,
    kv_len: torch.Tensor | None = None,
    ratio: float | None = None,
    dense_from: int | torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
    return_mask: bool = False,
    return_lse: bool = False,
):
    """XAttention: estimate the block mask, then attend exactly inside it.

    q, k, v: (B, H, N, D) (self-attention; q and k may have different lengths for the
    estimate). ``mask``: reuse a block mask from an earlier call instead of estimating.
    Returns ``out`` (B, H, N, D), or a tuple ``(out, mask)``, ``(out, lse)`` or
    ``(out, mask, lse)`` as requested; mask is (B, H, Nbq, Nbk) bool, lse (B, H, N) float32.
    """
    if mask is None:
        mask = estimate_block_mask(
            q,
            k,
            threshold=threshold,
            stride=stride,
            block_size=block_size,
            kv_len=kv_len,
            ratio=ratio,
            dense_from=dense_from,
            backend=backend,
        )
    res = block_sparse_attention(
        q, k, v, mask, block_size=block_size, kv_len=kv_len, scale=scale,
        return_lse=return_lse, backend=backend,
    )  # fmt: skip
    out, lse = res if return_lse else (res, None)
    extras = ((mask,) if return_mask else ()) + ((lse,) if return_lse else ())
    return (out, *extras) if extras else out


def attention_flops(batch: int, heads: int, n_q: int, n_k: int, head_dim: int) -> float:
    """Dense forward FLOPs of attention (two matmuls): 4 * B * H * Nq * Nk * D."""
    return 4.0 * batch * heads * n_q * n_k * head_dim


def default_scale(head_dim: int) -> float:
    """Softmax scale 1/sqrt(D)."""
    return 1.0 / math.sqrt(head_dim)
