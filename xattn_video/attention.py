"""The XAttention op: estimate -> select -> block-sparse attention, with input checks.

``xattention(q, k, v, ...)`` scores every (query block, key block) pair with strided
antidiagonals, keeps per query-block row the smallest set of key blocks holding ``threshold``
of the estimated mass (or a fixed ``ratio`` of blocks), and computes exact attention inside
that block mask. q/k/v are (B, H, N, D). Keys at positions ``>= kv_len[b]`` are padding: they
get no estimated mass, are never selected and never attended. Tokens from ``dense_from[b]`` on
(text appended after the video) keep their query rows and key columns dense.

Backends: ``"triton"`` (CUDA, or CPU under ``TRITON_INTERPRET=1``, fp32/fp16 only: the
interpreter's bf16 ``tl.dot`` is wrong, so bf16 there raises ``ValueError``), ``"torch"`` (the
PyTorch references; materialises the score matrix, for CPU and tests), ``"auto"`` (Triton on CUDA,
torch otherwise).

Non-finite input (one policy, both backends): NaN / Inf propagate and are never hidden, more
widely than in dense attention (an Inf value there can stay in its own column). A NaN or Inf
in a valid key or value of a (batch, head) makes that head's whole output NaN (dense attention
spreads a NaN to every row through the softmax); one in a query row
makes that row NaN -- and, when :func:`xattention` estimates the mask, its whole query block
(the block's mask row was estimated from it). Values at padded key positions (``>= kv_len``)
are ignored like the rest of the padding (the kernels zero them where a tile holds some:
0 * NaN would be NaN). The block mask estimated for such a head or block is unspecified (with
``max_density``, one budget per sample, also the sample's other masks). The
check costs one pass over q, k and v per call (calls with fp8 attention or an fp8 estimate take
the flags from their quantization's reads instead) and one over the flags, on the device (two
Triton kernels, :mod:`xattn_video.kernels.nonfinite`; torch ops on the torch backend), no sync.

Gradients: the Triton backend is forward only (a backward raises ``library.NO_BACKWARD``; run
inference under ``torch.no_grad()``); the torch backend, eager or compiled, is differentiable
with the block mask held fixed (the reference, for tests).

Not supported: causal attention, dropout, training, GQA / MQA (q, k, v must have the same
head count), head dims other than 16/32/64/128 with the Triton backend, block sizes other than
16/32/64/128. Queries and keys of different lengths are tested on the torch backend and the
portable Triton kernel only (not in the Hopper kernels' GPU tests). Logits (``scale*q.k``) all
below -1e30 in a row (a scale ~1e29): the Triton kernels return it as a row with no keys.
"""

from __future__ import annotations

import torch

from .kernels._common import (
    HAS_TRITON,
    cdiv,
    check_precision,
    kv_len_tensor,
    triton_usable,
    zero_padding,
)
from .kernels.nonfinite import nonfinite_rows_ref
from .kernels.select import select_blocks, valid_key_blocks
from .kernels.select_fused import MAX_BLOCKS as MAX_FUSED_BLOCKS
from .kernels.sparse_attention import block_sparse_attention_ref
from .library import (
    block_csr,
    estimate_scores,
    quantize_fp8,
    select_block_mask,
    sparse_attention,
)
from .op_checks import BLOCK_SIZES as BLOCK_SIZES
from .op_checks import STRIDES as STRIDES
from .op_checks import (
    as_ints,
    check_block_stride,
    check_dense_from,
    check_estimate_kernel,
    check_estimate_precision,
    check_fp8_attention,
    check_kv_len,
    check_max_density,
    check_qk,
    check_scale,
    check_selection,
    check_triton_dtype,
    check_triton_head_dim,
    propagate_nonfinite,
    resolve_estimate_precision,
)

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
            "backend='triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1, set "
            f"before xattn_video is imported); got a tensor on {t.device}"
        )
    return backend


def dense_blocks(
    dense_from: int | torch.Tensor | None, batch: int, n_tokens: int, block_size: int, device
) -> torch.Tensor | None:
    """(B, Nb) bool: blocks holding any of the ``n_tokens`` tokens at position >= dense_from[b]
    (none for ``dense_from = n_tokens``, the last partial block included), or None."""
    if dense_from is None:
        return None
    if isinstance(dense_from, torch.Tensor):
        start = dense_from.to(device).long().reshape(-1).expand(batch)
    else:  # a Python int: a fill on the device, no host-to-device copy (CUDA graphs)
        start = torch.full((batch,), int(dense_from), dtype=torch.long, device=device)
    ends = (torch.arange(cdiv(n_tokens, block_size), device=device) + 1) * block_size
    return ends.clamp(max=n_tokens)[None, :] > start[:, None]


def block_density(mask: torch.Tensor, *, block_size: int, kv_len: torch.Tensor | None = None,
                  n_k: int | None = None) -> float:  # fmt: skip
    """Selected (query block, key block) pairs over all pairs with a valid key block.

    mask: (B, H, Nbq, Nbk) bool. Dense attention over valid keys has density exactly 1.0:
    selected blocks without a valid key (the attention skips them) are not counted.
    """
    B, H, nbq, nbk = mask.shape
    n_k = n_k if n_k is not None else nbk * block_size
    check_kv_len(kv_len, B, n_k)  # a (1,) or (B, 1) kv_len broadcast: densities past 1.0
    lens = kv_len_tensor(kv_len, B, n_k, mask.device)
    valid = valid_key_blocks(lens, nbk, block_size)
    pairs = float(valid.sum() * H * nbq)
    if not pairs:
        raise ValueError(f"mask {tuple(mask.shape)} has no (query block, valid key block) pair")
    return float((mask & valid[:, None, None, :]).sum()) / pairs


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
    max_density: float | None = None,
    precision: str = "bf16",
    kernel: str = "auto",
    scale: float | None = None,
) -> torch.Tensor:
    """XAttention block mask. q: (B, H, Nq, D), k: (B, H, Nk, D) -> (B, H, Nbq, Nbk) bool.

    ``threshold`` (float or per-head (H,) tensor in (0, 1]; default 0.9 unless ``ratio`` is
    given) keeps per row the smallest set of key blocks whose estimated mass reaches it;
    ``ratio=r`` keeps the top ``ceil(r * valid_blocks)`` blocks of every row instead.
    ``max_density`` (in (0, 1]) caps the kept share of block pairs per sample, see
    :func:`xattn_video.kernels.select.select_blocks`.
    ``precision="fp8"``: the estimate's Q.K^T in e4m3 with one scale per (b, h, block) (the
    Triton kernels on sm90+ GPUs; the torch backend emulates it exactly in fp32). Its masks
    can differ from bf16 ones where blocks' masses nearly tie.
    ``kernel``: "auto" (the Triton estimate) or "prefer-gluon" (the experimental Gluon estimate
    where :data:`.kernels.tuning.GLUON_ESTIMATE` measured it faster on this GPU: sm90, from 32k
    query tokens; same scores up to accumulation order; the torch backend ignores it).
    ``scale``: the softmax scale of the attention the mask is for (default 1/sqrt(D)); the
    estimate's strided logits take ``scale / stride``, so ``threshold`` is a share of that
    attention's mass.
    """
    block_size, stride = as_ints(block_size, stride)
    check_estimate_kernel(kernel, "kernel")
    return _estimate_mask(
        q, k, None, threshold=threshold, stride=stride, block_size=block_size, kv_len=kv_len,
        ratio=ratio, dense_from=dense_from, backend=backend, max_density=max_density,
        precision=precision, kernel=kernel, scale=scale,
    )[0]  # fmt: skip


def _estimate_checks(q, k, *, threshold, stride, block_size, kv_len, ratio, dense_from,
                     max_density, scale):  # fmt: skip
    """The estimate's arguments, checked (also by :func:`xattention` given a ``mask``, which
    then does not use them) -> ``threshold``, the default one when neither it nor ``ratio`` is
    given."""
    if threshold is None and ratio is None:
        threshold = DEFAULT_THRESHOLD
    check_max_density(max_density)
    check_scale(scale)
    check_qk(q, k)
    check_block_stride(block_size, stride, estimate=True)
    B, H, Nq, _ = q.shape
    Nk = k.shape[2]
    check_selection(threshold, ratio, H)
    check_kv_len(kv_len, B, Nk)
    check_dense_from(dense_from, B, max(Nq, Nk))
    return threshold


def _estimate_mask(q, k, v, *, threshold, stride, block_size, kv_len, ratio, dense_from, backend,
                   max_density, precision, kernel="auto", scale=None):  # fmt: skip
    """:func:`estimate_block_mask` -> (mask, fp8): with v given on the fp8 Triton path on an sm90
    GPU, q, k and v are quantized once (:func:`.library.quantize_fp8`) and ``fp8`` is that list
    (with the non-finite flags) for the attention to reuse; else ``fp8`` is None."""
    threshold = _estimate_checks(q, k, threshold=threshold, stride=stride, block_size=block_size,
                                 kv_len=kv_len, ratio=ratio, dense_from=dense_from,
                                 max_density=max_density, scale=scale)  # fmt: skip
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    backend = resolve_backend(backend, q)
    check_triton_head_dim(backend, D)
    check_triton_dtype(backend, q, attention=False)
    check_estimate_precision(precision, backend, q)
    lens = kv_len_tensor(kv_len, B, Nk, q.device)
    fp8 = None
    if v is not None and precision == "fp8" and backend == "triton" and q.is_cuda:
        check_qk(q, v, "v")
        if v.shape[2] != Nk:
            raise ValueError("k and v must have the same number of tokens")
        fp8 = quantize_fp8(q, k, v, kv_len=lens, block_size=block_size)
    scores = estimate_scores(
        q, k, kv_len=lens, stride=stride, block_size=block_size, use_triton=backend == "triton",
        precision=precision, fp8=fp8, estimate_kernel=kernel, scale=scale,
    )  # fmt: skip
    if backend == "triton" and cdiv(Nk, block_size) <= MAX_FUSED_BLOCKS:
        # one kernel (two and a sort with a budget)
        return select_block_mask(
            scores, kv_len=lens, threshold=threshold, dense_from=dense_from,
            block_size=block_size, max_density=max_density, ratio=ratio, n_q=Nq, n_k=Nk,
        ), fp8  # fmt: skip
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
        max_density=max_density,
    ), fp8


def block_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    stride: int = 8,
    block_size: int = 128,
    kv_len: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """The estimate alone, as the selection ranks it (used by the threshold calibration).

    q: (B, H, Nq, D), k: (B, H, Nk, D) -> (B, H, Nbq, Nbk) float32 strided-antidiagonal block
    mass; keys >= kv_len[b] get none.
    """
    block_size, stride = as_ints(block_size, stride)
    check_qk(q, k)
    check_block_stride(block_size, stride, estimate=True)
    B, _, _, D = q.shape
    Nk = k.shape[2]
    check_kv_len(kv_len, B, Nk)
    backend = resolve_backend(backend, q)
    check_triton_head_dim(backend, D)
    check_triton_dtype(backend, q, attention=False)
    lens = kv_len_tensor(kv_len, B, Nk, q.device)
    return estimate_scores(
        q, k, kv_len=lens, stride=stride, block_size=block_size, use_triton=backend == "triton"
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
    precision: str = "bf16",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Exact attention restricted to a block mask (``precision``: "bf16", or "fp8" on sm90).

    q, k, v: (B, H, N, D); mask: (B, H, Nbq, Nbk) bool (broadcastable over B and H);
    kv_len: (B,) int. Blocks without a valid key are ignored. Rows with no selected block give
    zeros. Returns out (B, H, N, D) and, with ``return_lse``, lse (B, H, N) float32 (natural
    log; -inf for empty rows). NaN / Inf input: see the module docstring (propagated).
    """
    (block_size,) = as_ints(block_size)
    backend = _attention_checks(
        q, k, v, block_size=block_size, scale=scale, backend=backend, precision=precision
    )
    check_kv_len(kv_len, q.shape[0], k.shape[2])
    return _block_sparse(
        q, k, v, mask, block_size=block_size, kv_len=kv_len, scale=scale, return_lse=return_lse,
        backend=backend, precision=precision, nan_block=0,
    )  # fmt: skip


def _attention_checks(q, k, v, *, block_size, scale, backend, precision) -> str:
    """What the attention needs of q, k, v and its arguments, checked once per public call
    before any kernel runs (:func:`xattention`'s before its estimate) -> the resolved backend."""
    check_qk(q, k)
    check_qk(q, v, "v")
    if k.shape[2] != v.shape[2]:
        raise ValueError("k and v must have the same number of tokens")
    check_block_stride(block_size, None)
    check_scale(scale)
    check_precision(precision)
    backend = resolve_backend(backend, q)
    if precision == "fp8":
        if backend != "triton":
            raise ValueError("precision='fp8' needs backend='triton' on an sm90+ GPU")
        check_fp8_attention(backend, q, k, v, block_size)
    check_triton_head_dim(backend, q.shape[-1])
    check_triton_dtype(backend, q)
    return backend


def _block_sparse(q, k, v, mask, *, block_size, kv_len, scale, return_lse, backend, precision,
                  nan_block, fp8=None):  # fmt: skip
    """:func:`block_sparse_attention` with the non-finite policy per row (``nan_block`` 0) or
    per query block (the block size: :func:`xattention` estimated the mask); ``fp8``: q, k, v
    already quantized with their flags (:func:`.library.quantize_fp8`): an fp8 call uses all of
    it, a bf16 call the flags. ``backend``: resolved, and q, k, v and the other arguments
    passed by :func:`_attention_checks` (the caller's call), ``kv_len`` by the caller too
    (:func:`xattention`'s through :func:`_estimate_checks`, with or without a given mask)."""
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    nbq, nbk = cdiv(Nq, block_size), cdiv(Nk, block_size)
    if (
        not isinstance(mask, torch.Tensor)
        or mask.dtype != torch.bool
        or mask.ndim != 4
        or mask.shape[-2:] != (nbq, nbk)
        or mask.shape[0] not in (1, B)
        or mask.shape[1] not in (1, H)
    ):
        raise ValueError(
            f"mask must be a bool tensor ({B} or 1, {H} or 1, {nbq}, {nbk}) for q/k of shape "
            f"{tuple(q.shape)}/{tuple(k.shape)} and block_size={block_size}, got "
            f"{tuple(getattr(mask, 'shape', ()))} {getattr(mask, 'dtype', type(mask).__name__)}"
        )
    mask = mask.to(q.device).expand(B, H, nbq, nbk)
    lens = kv_len_tensor(kv_len, B, Nk, q.device)
    if backend == "torch":
        bad = nonfinite_rows_ref(q, k, v, lens, nan_block)
        if kv_len is not None:
            k, v = zero_padding(k, lens), zero_padding(v, lens)
        res = block_sparse_attention_ref(
            q, k, v, mask, block_size=block_size, kv_len=lens, scale=scale, return_lse=return_lse
        )
        return propagate_nonfinite(res, bad, return_lse)
    counts, indices = block_csr(mask, kv_len=lens, block_size=block_size, n_k=Nk)
    return sparse_attention(  # the registered op under torch.compile
        q.contiguous() if q.stride(-1) != 1 else q,
        k if k.stride(-1) == 1 else k.contiguous(),
        v if v.stride(-1) == 1 else v.contiguous(),
        counts,
        indices,
        kv_len=lens,
        block_size=block_size,
        scale=scale,
        return_lse=return_lse,
        use_triton=True,
        precision=precision,
        nan_block=nan_block,
        fp8=fp8,
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
    max_density: float | None = None,
    precision: str = "bf16",
    estimate_precision: str = "auto",
    estimate_kernel: str = "auto",
):
    """XAttention: estimate the block mask, then attend exactly inside it.

    ``precision="fp8"``: the sparse attention runs Q.K^T and P.V in e4m3 (sm90+ kernels).
    ``estimate_precision``: the estimate's arithmetic, "bf16" or "fp8" (Q.K^T in e4m3, see
    :func:`estimate_block_mask`); by default ("auto") fp8 with fp8 attention (Q and K are then
    quantized once for both) and on the Triton backend on Hopper GPUs, bf16 elsewhere
    (:func:`.op_checks.resolve_estimate_precision`).
    ``estimate_kernel="prefer-gluon"``: the experimental Gluon estimate where it was measured
    faster (:func:`estimate_block_mask`'s ``kernel``).

    q, k, v: (B, H, N, D) (self-attention; q and k may have different lengths for the
    estimate). ``mask``: reuse a block mask from an earlier call instead of estimating; it is
    attended as given (``dense_from`` forces nothing then), and the estimate's arguments
    (``threshold``, ``ratio``, ``stride``, ``max_density``, ``dense_from``) are checked but not
    used. ``threshold``: 0.9 unless ``ratio`` is given.
    ``scale``: the softmax scale (default 1/sqrt(D)), for the estimate as for the attention.
    ``max_density``: cap on the kept share of block pairs (see :func:`estimate_block_mask`).
    Returns ``out`` (B, H, N, D), or a tuple ``(out, mask)``, ``(out, lse)`` or
    ``(out, mask, lse)`` as requested; mask is (B, H, Nbq, Nbk) bool, lse (B, H, N) float32.
    """
    block_size, stride = as_ints(block_size, stride)
    check_estimate_kernel(estimate_kernel)
    estimated = mask is None
    fp8 = None
    # what the attention cannot run is refused before the estimate's work
    resolved = _attention_checks(
        q, k, v, block_size=block_size, scale=scale, backend=backend, precision=precision
    )
    estimate_precision = resolve_estimate_precision(
        estimate_precision, precision, backend=resolved, device=q.device, head_dim=q.shape[-1]
    )
    if estimated:
        mask, fp8 = _estimate_mask(
            q,
            k,
            # an fp8 estimate quantizes q, k (and reads v) once: the fp8 attention reuses the
            # quantization, and any attention its non-finite flags
            v if estimate_precision == "fp8" else None,
            threshold=threshold,
            stride=stride,
            block_size=block_size,
            kv_len=kv_len,
            ratio=ratio,
            dense_from=dense_from,
            backend=backend,
            max_density=max_density,
            precision=estimate_precision,
            kernel=estimate_kernel,
            scale=scale,
        )
    else:  # a given mask is attended as it is; the estimate's arguments must still be valid
        _estimate_checks(q, k, threshold=threshold, stride=stride, block_size=block_size,
                         kv_len=kv_len, ratio=ratio, dense_from=dense_from,
                         max_density=max_density, scale=scale)  # fmt: skip
    # a mask row estimated from a non-finite query row is meaningless: its whole block is NaN
    res = _block_sparse(
        q, k, v, mask, block_size=block_size, kv_len=kv_len, scale=scale, return_lse=return_lse,
        backend=resolved, precision=precision, nan_block=block_size if estimated else 0, fp8=fp8,
    )  # fmt: skip
    out, lse = res if return_lse else (res, None)
    if return_mask and not estimated:  # a broadcast (1, 1, ...) mask, as it was attended
        mask = mask.to(q.device).expand(*q.shape[:2], *mask.shape[-2:])
    extras = ((mask,) if return_mask else ()) + ((lse,) if return_lse else ())
    return (out, *extras) if extras else out


def attention_flops(batch: int, heads: int, n_q: int, n_k: int, head_dim: int) -> float:
    """Dense forward FLOPs of attention (two matmuls): 4 * B * H * Nq * Nk * D."""
    return 4.0 * batch * heads * n_q * n_k * head_dim
