"""The XAttention kernels as ``torch.library`` custom ops, so compiled graphs keep them whole.

Two ops carry the Triton launchers (and, on CPU, the PyTorch references):

- ``xattn_video::estimate_block_scores(q, k, kv_len, stride, block_size, use_triton)``
  -> scores (B, H, Nbq, Nbk) float32 (the strided antidiagonal estimate);
- ``xattn_video::block_sparse_attention(q, k, v, counts, indices, kv_len, block_size, scale,
  return_lse, use_triton)`` -> (out (B, H, N, D) in q's dtype, lse (B, H, N) float32, or an
  empty (0,) float32 tensor when ``return_lse`` is False).

Everything between them (block selection, the text policy, mask -> CSR indices) is plain
tensor code (sort, cumsum, scatter) that dynamo and inductor trace directly, with no host
read. Each op has a fake (meta) implementation, so ``torch.compile(..., fullgraph=True)``
traces through the whole XAttention call without a graph break, and the ops launch only
device work (no synchronisation), so a sparse forward can be captured in a CUDA graph.

The wrappers :func:`estimate_scores` and :func:`sparse_attention` call the registered op while
``torch.compile`` traces, and the implementation directly in eager mode (the dispatcher round
trip of a custom op costs tens of microseconds per call, which matters for small inputs).

Why ``custom_op`` and not ``triton_op``: the Hopper path of the sparse kernel builds host-side
TMA tensor descriptors and picks launch configs per device, which ``triton_op`` +
``wrap_triton`` cannot trace on torch 2.11; as an opaque op inductor calls the launcher as an
extern kernel (no fusion across it, which these kernels would not gain from anyway).

Not supported: autograd (forward only: no backward is registered), ``torch.export`` with
dynamic shapes of the block count (the fake implementations use concrete block counts).
"""

from __future__ import annotations

import math

import torch

from .kernels._common import cdiv
from .kernels.estimate import estimate_block_scores as _estimate_triton
from .kernels.estimate import estimate_block_scores_ref as _estimate_ref
from .kernels.sparse_attention import block_sparse_attention_fwd as _attn_triton
from .kernels.sparse_attention import block_sparse_attention_ref as _attn_ref

NAMESPACE = "xattn_video"


def indices_to_mask(counts: torch.Tensor, indices: torch.Tensor, n_kb: int) -> torch.Tensor:
    """Block mask from CSR lists. counts: (B, H, Nbq) int; indices: (B, H, Nbq, L) int whose
    first ``counts`` entries are selected key blocks -> mask (B, H, Nbq, n_kb) bool."""
    used = torch.arange(indices.shape[-1], device=indices.device) < counts[..., None]
    target = torch.where(used, indices.long(), torch.full_like(indices, n_kb, dtype=torch.long))
    mask = torch.zeros(*indices.shape[:-1], n_kb + 1, dtype=torch.bool, device=indices.device)
    mask.scatter_(-1, target, True)
    return mask[..., :n_kb]


def _estimate_impl(
    q: torch.Tensor,
    k: torch.Tensor,
    kv_len: torch.Tensor,
    stride: int,
    block_size: int,
    use_triton: bool,
) -> torch.Tensor:
    fn = _estimate_triton if use_triton else _estimate_ref
    return fn(q, k, stride=stride, block_size=block_size, kv_len=kv_len)


def _attention_impl(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    counts: torch.Tensor,
    indices: torch.Tensor,
    kv_len: torch.Tensor,
    block_size: int,
    scale: float,
    return_lse: bool,
    use_triton: bool,
    precision: str = "bf16",
) -> tuple[torch.Tensor, torch.Tensor]:
    if use_triton:
        res = _attn_triton(
            q, k, v, counts, indices, block_size=block_size, kv_len=kv_len, scale=scale,
            return_lse=return_lse, precision=precision,
        )  # fmt: skip
    else:
        mask = indices_to_mask(counts, indices, cdiv(k.shape[2], block_size))
        res = _attn_ref(
            q, k, v, mask, block_size=block_size, kv_len=kv_len, scale=scale,
            return_lse=return_lse,
        )  # fmt: skip
    if return_lse:
        return res[0], res[1]
    return res, q.new_empty((0,), dtype=torch.float32)


@torch.library.custom_op(f"{NAMESPACE}::estimate_block_scores", mutates_args=())
def estimate_block_scores_op(
    q: torch.Tensor,
    k: torch.Tensor,
    kv_len: torch.Tensor,
    stride: int,
    block_size: int,
    use_triton: bool,
) -> torch.Tensor:
    """q: (B, H, Nq, D), k: (B, H, Nk, D), kv_len: (B,) int32 -> (B, H, Nbq, Nbk) float32."""
    return _estimate_impl(q, k, kv_len, stride, block_size, use_triton)


@estimate_block_scores_op.register_fake
def _(q, k, kv_len, stride, block_size, use_triton):
    B, H, Nq, _ = q.shape
    return q.new_empty(
        (B, H, cdiv(Nq, block_size), cdiv(k.shape[2], block_size)), dtype=torch.float32
    )


@torch.library.custom_op(f"{NAMESPACE}::block_sparse_attention", mutates_args=())
def block_sparse_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    counts: torch.Tensor,
    indices: torch.Tensor,
    kv_len: torch.Tensor,
    block_size: int,
    scale: float,
    return_lse: bool,
    use_triton: bool,
    precision: str = "bf16",
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k, v: (B, H, N, D); counts (B, H, Nbq) int32; indices (B, H, Nbq, L) int32;
    kv_len (B,) int32 -> (out (B, H, Nq, D), lse (B, H, Nq) float32 or an empty (0,))."""
    return _attention_impl(
        q, k, v, counts, indices, kv_len, block_size, scale, return_lse, use_triton, precision
    )


@block_sparse_attention_op.register_fake
def _(
    q, k, v, counts, indices, kv_len, block_size, scale, return_lse, use_triton, precision="bf16"
):
    B, H, Nq, _ = q.shape
    lse_shape = (B, H, Nq) if return_lse else (0,)
    return torch.empty_like(q), q.new_empty(lse_shape, dtype=torch.float32)


def estimate_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    kv_len: torch.Tensor,
    stride: int,
    block_size: int,
    use_triton: bool,
) -> torch.Tensor:
    """Block scores (B, H, Nbq, Nbk) float32: the registered op under ``torch.compile``, the
    implementation directly in eager mode. kv_len: (B,) int32 on q's device."""
    if torch.compiler.is_compiling():
        return estimate_block_scores_op(q, k, kv_len, stride, block_size, use_triton)
    return _estimate_impl(q, k, kv_len, stride, block_size, use_triton)


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    counts: torch.Tensor,
    indices: torch.Tensor,
    *,
    kv_len: torch.Tensor,
    block_size: int,
    scale: float | None,
    return_lse: bool,
    use_triton: bool,
    precision: str = "bf16",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention inside CSR block lists (see :func:`block_sparse_attention_op`); returns out,
    or (out, lse) with ``return_lse``. ``scale`` None means 1/sqrt(D)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if torch.compiler.is_compiling():
        out, lse = block_sparse_attention_op(
            q, k, v, counts, indices, kv_len, block_size, scale, return_lse, use_triton, precision
        )
    else:
        out, lse = _attention_impl(
            q, k, v, counts, indices, kv_len, block_size, scale, return_lse, use_triton, precision
        )
    return (out, lse) if return_lse else out
