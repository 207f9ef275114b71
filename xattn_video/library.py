"""The XAttention kernels as ``torch.library`` custom ops, so compiled graphs keep them whole.

Five ops carry the Triton launchers (and, on CPU, the PyTorch references where noted):

- ``xattn_video::quantize_fp8(q, k, v, kv_len, block_size)`` -> the fp8 kernels' inputs and the
  non-finite flags as a list of 7 tensors (:data:`FP8_FIELDS`; sm90 GPUs), so an op that runs
  both the fp8 estimate and the fp8 attention reads and quantizes q and k once;
- ``xattn_video::estimate_block_scores(q, k, kv_len, fp8, stride, block_size, use_triton,
  precision, estimate_kernel, scale)`` -> scores (B, H, Nbq, Nbk) float32 (the strided
  antidiagonal estimate; "fp8": Q and K in e4m3, emulated by the reference on the torch
  backend; ``fp8``: the list from ``quantize_fp8`` or empty; ``estimate_kernel``: "auto" or
  "prefer-gluon", see :func:`.kernels.estimate.estimate_block_scores`; ``scale``: the softmax
  scale, None for 1/sqrt(D));
- ``xattn_video::select_block_mask(scores, kv_len, thr_heads, threshold, dense_from,
  dense_from_int, block_size, max_density, min_blocks, ratio, n_q, n_k)`` -> mask (B, H, Nbq,
  Nbk) bool (the threshold or ratio selection with the text policy and the budget; ``n_q`` /
  ``n_k``: the token counts, where the last blocks end; Triton only);
- ``xattn_video::block_csr(mask, kv_len, block_size, n_k)`` -> (counts, indices) (Triton only);
- ``xattn_video::block_sparse_attention(q, k, v, counts, indices, kv_len, fp8, block_size,
  scale, return_lse, use_triton, precision, nan_block)`` -> (out (B, H, N, D) in q's dtype, lse
  (B, H, N) float32, or an empty (0,) float32 tensor when ``return_lse`` is False), with the
  op's non-finite policy applied inside (flags before the kernel -- taken from ``fp8`` when
  given, the quantization's own reads of q, k and v, at either precision -- NaN kernel after).

The ``torch`` backend's code between them (the batched torch selection) is
plain tensor code that dynamo and inductor trace directly, with no host read. Each op has a
fake (meta) implementation, so ``torch.compile(..., fullgraph=True)`` traces through the whole
XAttention call without a graph break, and the ops launch only device work (no
synchronisation), so a sparse forward can be captured in a CUDA graph.

The wrappers (:func:`estimate_scores`, :func:`select_block_mask`, :func:`block_csr`,
:func:`sparse_attention`) call the registered op while
``torch.compile`` traces, and the implementation directly in eager mode (the dispatcher round
trip of a custom op costs tens of microseconds per call, which matters for small inputs).

Why ``custom_op`` and not ``triton_op``: the Hopper path of the sparse kernel builds host-side
TMA tensor descriptors and picks launch configs per device, which ``triton_op`` +
``wrap_triton`` cannot trace on torch 2.11; as an opaque op inductor calls the launcher as an
extern kernel (no fusion across it, which these kernels would not gain from anyway).

Not supported: autograd (forward only: the attention op's registered backward raises, and the
eager wrapper routes q / k / v that require grad through the op so that it does),
``torch.export`` with dynamic shapes of the block count (the fake implementations use concrete
block counts); a sweep of
Python-float ``threshold`` / ``ratio`` / ``max_density`` / ``scale`` values through one compiled
function on the Triton backend (the ops' float arguments specialise: one graph per value, and
``fullgraph=True`` fails at dynamo's recompile limit, 8; a per-head threshold tensor is one graph).
"""

from __future__ import annotations

import torch

from .kernels._common import cdiv, on_tensor_device, softmax_scale, zero_padding
from .kernels.estimate import estimate_block_scores as _estimate_triton
from .kernels.estimate import estimate_block_scores_ref as _estimate_ref
from .kernels.fp8 import Fp8Inputs, quantize_fp8_inputs
from .kernels.nonfinite import FLAG_ROWS, nonfinite_flags, nonfinite_rows_ref, propagate_nan
from .kernels.select_fused import mask_to_csr as _csr_triton
from .kernels.select_fused import select_blocks_fused as _select_triton
from .kernels.sparse_attention import block_sparse_attention_fwd as _attn_triton
from .kernels.sparse_attention import block_sparse_attention_ref as _attn_ref
from .op_checks import FP8_ESTIMATE_GPU, propagate_nonfinite

NAMESPACE = "xattn_video"

FP8_FIELDS = ("q8", "k8", "q_scale", "k_scale", "v_scale", "q_bad", "kv_bad")
"""The tensors of ``quantize_fp8``'s list: :class:`~.kernels.fp8.Fp8Inputs`, then the flags."""


def _sm90(t: torch.Tensor) -> bool:
    """Whether ``t`` is on an sm90+ GPU (False on CPU, where CUDA's capability query raises)."""
    return t.is_cuda and torch.cuda.get_device_capability(t.device)[0] >= 9


def _fp8_inputs(fp8: list[torch.Tensor]) -> Fp8Inputs | None:
    return Fp8Inputs(*fp8[:5]) if fp8 else None


@on_tensor_device
def _quantize_fp8_impl(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_len: torch.Tensor, block_size: int
) -> list[torch.Tensor]:
    if not _sm90(q):  # the op's callers ask for fp8 estimates
        raise ValueError(FP8_ESTIMATE_GPU)
    inputs, flags = quantize_fp8_inputs(q, k, v, block=block_size, kv_len=kv_len, flags=True)
    return [*inputs, *flags]


quantize_fp8_op = torch.library.custom_op(
    f"{NAMESPACE}::quantize_fp8", _quantize_fp8_impl, mutates_args=()
)


@quantize_fp8_op.register_fake
def _(q, k, v, kv_len, block_size):
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    nbq, nbk = cdiv(Nq, block_size), cdiv(Nk, block_size)
    chunks = cdiv(max(Nq, Nk), FLAG_ROWS)
    f8, f32, i8 = torch.float8_e4m3fn, torch.float32, torch.int8
    shapes = [((B, H, Nq, D), f8), ((B, H, Nk, D), f8), ((B * H, nbq), f32),
              ((B * H, nbk), f32), ((B, H), f32), ((B * H, Nq), i8), ((B * H, chunks), i8)]  # fmt: skip
    return [q.new_empty(shape, dtype=dtype) for shape, dtype in shapes]


def indices_to_mask(counts: torch.Tensor, indices: torch.Tensor, n_kb: int) -> torch.Tensor:
    """Block mask from CSR lists. counts: (B, H, Nbq) int; indices: (B, H, Nbq, L) int whose
    first ``counts`` entries are selected key blocks -> mask (B, H, Nbq, n_kb) bool."""
    used = torch.arange(indices.shape[-1], device=indices.device) < counts[..., None]
    target = torch.where(used, indices.long(), torch.full_like(indices, n_kb, dtype=torch.long))
    mask = torch.zeros(*indices.shape[:-1], n_kb + 1, dtype=torch.bool, device=indices.device)
    mask.scatter_(-1, target, True)
    return mask[..., :n_kb]


@on_tensor_device
def _estimate_impl(
    q: torch.Tensor,
    k: torch.Tensor,
    kv_len: torch.Tensor,
    fp8: list[torch.Tensor],
    stride: int,
    block_size: int,
    use_triton: bool,
    precision: str = "bf16",
    estimate_kernel: str = "auto",
    scale: float | None = None,
) -> torch.Tensor:
    if use_triton and precision == "fp8" and not _sm90(q):
        raise ValueError(FP8_ESTIMATE_GPU)  # checked here: inside the op under torch.compile
    kw = dict(stride=stride, block_size=block_size, kv_len=kv_len, precision=precision)
    kw["scale"] = scale
    if not use_triton:  # padded keys as 0, as the kernels read them (an Inf would give NaN)
        return _estimate_ref(q, zero_padding(k, kv_len), **kw)
    f8 = _fp8_inputs(fp8) if precision == "fp8" else None
    return _estimate_triton(q, k, fp8_inputs=f8, kernel=estimate_kernel, **kw)


@on_tensor_device
def _attention_impl(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    counts: torch.Tensor,
    indices: torch.Tensor,
    kv_len: torch.Tensor,
    fp8: list[torch.Tensor],
    block_size: int,
    scale: float,
    return_lse: bool,
    use_triton: bool,
    precision: str = "bf16",
    nan_block: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    if use_triton:
        if precision == "fp8" and not fp8 and _sm90(q):
            fp8 = _quantize_fp8_impl(q, k, v, kv_len, block_size)  # flags from the same reads
        flags = fp8[5:] if fp8 else nonfinite_flags(q, k, v, kv_len)
        res = _attn_triton(
            q, k, v, counts, indices, block_size=block_size, kv_len=kv_len, scale=scale,
            return_lse=return_lse, precision=precision,
            fp8_inputs=_fp8_inputs(fp8) if precision == "fp8" else None,
        )  # fmt: skip
        out, lse = res if return_lse else (res, None)
        propagate_nan(out, lse, *flags, nan_block=nan_block)
    else:
        mask = indices_to_mask(counts, indices, cdiv(k.shape[2], block_size))
        k, v = zero_padding(k, kv_len), zero_padding(v, kv_len)  # a NaN there: 0 * NaN in SDPA
        res = _attn_ref(
            q, k, v, mask, block_size=block_size, kv_len=kv_len, scale=scale,
            return_lse=return_lse,
        )  # fmt: skip
        res = propagate_nonfinite(res, nonfinite_rows_ref(q, k, v, kv_len, nan_block), return_lse)
        out, lse = res if return_lse else (res, None)
        out = torch.empty_like(q).copy_(out)  # q's strides, as the kernels and the fake give
    if return_lse:
        return out, lse
    return out, q.new_empty((0,), dtype=torch.float32)


@on_tensor_device
def _select_impl(
    scores: torch.Tensor,
    kv_len: torch.Tensor,
    thr_heads: torch.Tensor | None,
    threshold: float,
    dense_from: torch.Tensor | None,
    dense_from_int: int,
    block_size: int,
    max_density: float,
    min_blocks: int,
    ratio: float,
    n_q: int,
    n_k: int,
) -> torch.Tensor:
    return _select_triton(
        scores,
        block_size=block_size,
        threshold=None if ratio > 0 else (thr_heads if thr_heads is not None else threshold),
        ratio=ratio if ratio > 0 else None,
        kv_len=kv_len,
        dense_from=dense_from if dense_from is not None else (
            None if dense_from_int < 0 else dense_from_int
        ),
        max_density=max_density if max_density > 0 else None,
        min_blocks=min_blocks, n_q=n_q, n_k=n_k,
    )  # fmt: skip


# the op is the implementation itself (same signature): threshold selection (Triton) of scores
# (B, H, Nbq, Nbk) float32 with kv_len (B,) int32, per-head thresholds (H,) float64 or None (then
# ``threshold``), dense_from (B,) int or None (then ``dense_from_int``, -1 for none), a budget
# ``max_density`` (<= 0: none), or ratio selection where ``ratio`` > 0 (thresholds then
# unused); n_q / n_k tokens -> mask (B, H, Nbq, Nbk) bool
select_block_mask_op = torch.library.custom_op(
    f"{NAMESPACE}::select_block_mask", _select_impl, mutates_args=()
)


@select_block_mask_op.register_fake
def _(scores, kv_len, thr_heads, threshold, dense_from, dense_from_int, block_size, max_density,
      min_blocks, ratio, n_q, n_k):  # fmt: skip
    return scores.new_empty(scores.shape, dtype=torch.bool)  # contiguous, as the kernel's


@on_tensor_device
def _csr_impl(
    mask: torch.Tensor, kv_len: torch.Tensor, block_size: int, n_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    return _csr_triton(mask, block_size=block_size, kv_len=kv_len, n_k=n_k)


@torch.library.custom_op(f"{NAMESPACE}::block_csr", mutates_args=())
def block_csr_op(
    mask: torch.Tensor, kv_len: torch.Tensor, block_size: int, n_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """mask (B, H, Nbq, Nbk) bool (expanded strides allowed), kv_len (B,) int32 -> counts
    (B, H, Nbq) int32, indices (B, H, Nbq, Nbk) int32 (Triton; see
    :func:`xattn_video.kernels.select_fused.mask_to_csr`)."""
    return _csr_impl(mask, kv_len, block_size, n_k)


@block_csr_op.register_fake
def _(mask, kv_len, block_size, n_k):
    B, H, nbq, nbk = mask.shape
    return (
        mask.new_empty((B, H, nbq), dtype=torch.int32),
        mask.new_empty((B, H, nbq, nbk), dtype=torch.int32),
    )


@torch.library.custom_op(f"{NAMESPACE}::estimate_block_scores", mutates_args=())
def estimate_block_scores_op(
    q: torch.Tensor,
    k: torch.Tensor,
    kv_len: torch.Tensor,
    fp8: list[torch.Tensor],
    stride: int,
    block_size: int,
    use_triton: bool,
    precision: str = "bf16",
    estimate_kernel: str = "auto",
    scale: float | None = None,
) -> torch.Tensor:
    """q: (B, H, Nq, D), k: (B, H, Nk, D), kv_len: (B,) int32, fp8: ``quantize_fp8``'s list or
    empty, scale: softmax scale (None: 1/sqrt(D)) -> (B, H, Nbq, Nbk) float32. (Not
    ``kernel``: Inductor's fallback for a custom op takes its arguments as keywords beside its
    own ``kernel`` parameter.)"""
    return _estimate_impl(
        q, k, kv_len, fp8, stride, block_size, use_triton, precision, estimate_kernel, scale
    )


@estimate_block_scores_op.register_fake
def _(q, k, kv_len, fp8, stride, block_size, use_triton, precision="bf16", estimate_kernel="auto",
      scale=None):  # fmt: skip
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
    fp8: list[torch.Tensor],
    block_size: int,
    scale: float,
    return_lse: bool,
    use_triton: bool,
    precision: str = "bf16",
    nan_block: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k, v: (B, H, N, D); counts (B, H, Nbq) int32; indices (B, H, Nbq, L) int32;
    kv_len (B,) int32; fp8: ``quantize_fp8``'s list (a bf16 call takes only its flags) or
    empty (then an fp8 call quantizes here) -> (out (B, H, Nq, D), lse (B, H, Nq) float32 or an
    empty (0,)).
    Non-finite input: the op's policy (:mod:`xattn_video.attention`), per row, or per query
    block of ``nan_block`` rows when it is not 0."""
    return _attention_impl(
        q, k, v, counts, indices, kv_len, fp8, block_size, scale, return_lse, use_triton,
        precision, nan_block,
    )  # fmt: skip


@block_sparse_attention_op.register_fake
def _(
    q, k, v, counts, indices, kv_len, fp8, block_size, scale, return_lse, use_triton,
    precision="bf16", nan_block=0,
):  # fmt: skip
    B, H, Nq, _ = q.shape
    lse_shape = (B, H, Nq) if return_lse else (0,)
    return torch.empty_like(q), q.new_empty(lse_shape, dtype=torch.float32)


NO_BACKWARD = (
    "xattention has no backward through its Triton kernels or under torch.compile (forward "
    "only). Run inference under torch.no_grad() or torch.inference_mode() (diffusers pipelines "
    "do); for gradients use backend='torch' in eager mode (the PyTorch reference, "
    "differentiable with the block mask held fixed)"
)


def _no_backward(ctx, grad_out: torch.Tensor, grad_lse: torch.Tensor):
    raise RuntimeError(NO_BACKWARD)


# a backward that raises, so q / k / v that require grad get an output whose backward says why
# (without it the eager Triton path returned outputs detached from q, k and v: no error, no grad)
block_sparse_attention_op.register_autograd(_no_backward)


def estimate_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    kv_len: torch.Tensor,
    stride: int,
    block_size: int,
    use_triton: bool,
    precision: str = "bf16",
    fp8: list[torch.Tensor] | None = None,
    estimate_kernel: str = "auto",
    scale: float | None = None,
) -> torch.Tensor:
    """Block scores (B, H, Nbq, Nbk) float32: the registered op under ``torch.compile``, the
    implementation directly in eager mode. kv_len: (B,) int32 on q's device. ``fp8``: what
    :func:`quantize_fp8` returned for these q and k (an fp8 estimate then reuses it).
    ``estimate_kernel``: which Triton-backend estimate kernel ("auto" or "prefer-gluon").
    ``scale``: the attention's softmax scale (None: 1/sqrt(D))."""
    args = (q, k, kv_len, fp8 or [], stride, block_size, use_triton, precision, estimate_kernel)
    args += (scale,)
    if torch.compiler.is_compiling():
        return estimate_block_scores_op(*args)
    return _estimate_impl(*args)


def quantize_fp8(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, kv_len: torch.Tensor, block_size: int
) -> list[torch.Tensor]:
    """q, k, v quantized for the fp8 kernels with the non-finite flags (:data:`FP8_FIELDS`),
    for :func:`estimate_scores` and :func:`sparse_attention` to share (sm90 GPUs; the registered
    op under ``torch.compile``). kv_len: (B,) int32 on q's device."""
    if torch.compiler.is_compiling():
        return quantize_fp8_op(q, k, v, kv_len, block_size)
    return _quantize_fp8_impl(q, k, v, kv_len, block_size)


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
    nan_block: int = 0,
    fp8: list[torch.Tensor] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention inside CSR block lists (see :func:`block_sparse_attention_op`), with the
    non-finite policy; returns out, or (out, lse) with ``return_lse``. ``scale`` None means
    1/sqrt(D). ``fp8``: what :func:`quantize_fp8` returned for these q, k, v (a bf16 call
    takes its non-finite flags)."""
    scale = softmax_scale(q.shape[-1], scale)
    args = (q, k, v, counts, indices, kv_len, fp8 or [], block_size, scale, return_lse,
            use_triton)  # fmt: skip
    wants_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if torch.compiler.is_compiling() or (use_triton and wants_grad):  # the op: no backward
        out, lse = block_sparse_attention_op(*args, precision, nan_block)
    else:
        out, lse = _attention_impl(*args, precision, nan_block)
    return (out, lse) if return_lse else out


def select_block_mask(
    scores: torch.Tensor,
    *,
    kv_len: torch.Tensor,
    threshold: float | torch.Tensor | None,
    dense_from: int | torch.Tensor | None,
    block_size: int,
    max_density: float | None,
    min_blocks: int = 1,
    ratio: float | None = None,
    n_q: int,
    n_k: int,
) -> torch.Tensor:
    """Triton threshold or ratio selection (:func:`select_block_mask_op`; the implementation
    directly in eager mode); exactly one of ``threshold`` and ``ratio``. scores (B, H, Nbq, Nbk)
    float32 -> mask (B, H, Nbq, Nbk) bool."""
    if (threshold is None) == (ratio is None):
        raise ValueError("select_block_mask: give exactly one of `threshold` and `ratio`")
    per_head = isinstance(threshold, torch.Tensor)
    df_tensor = isinstance(dense_from, torch.Tensor)
    args = (
        scores, kv_len, threshold if per_head else None,
        0.0 if per_head or threshold is None else float(threshold),
        dense_from if df_tensor else None,
        -1 if dense_from is None or df_tensor else int(dense_from),
        block_size, float(max_density) if max_density is not None else 0.0, int(min_blocks),
        float(ratio) if ratio is not None else 0.0, int(n_q), int(n_k),
    )  # fmt: skip
    if torch.compiler.is_compiling():
        return select_block_mask_op(*args)
    return _select_impl(*args)


def block_csr(
    mask: torch.Tensor, *, kv_len: torch.Tensor, block_size: int, n_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton mask -> CSR lists (:func:`block_csr_op`; direct in eager mode); kv_len (B,)."""
    if torch.compiler.is_compiling():
        return block_csr_op(mask, kv_len, block_size, n_k)
    return _csr_impl(mask, kv_len, block_size, n_k)
