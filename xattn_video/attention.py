"""The XAttention op: estimate -> select -> block-sparse attention, with input checks.

``xattention(q, k, v, ...)`` scores every (query block, key block) pair with strided
antidiagonals, keeps per query-block row the smallest set of key blocks holding ``threshold``
of the estimated mass (or a fixed ``ratio`` of blocks), and computes exact attention inside
that block mask. q/k/v are (B, H, N, D). Keys at positions ``>= kv_len[b]`` are padding: they
get no estimated mass, are never selected and never attended. Tokens from ``dense_from[b]`` on
(text appended after the video) keep their query rows and key columns dense.

Backends: ``"triton"`` (CUDA, or CPU under ``TRITON_INTERPRET=1``, fp32/fp16 only: the
interpreter's bf16 ``tl.dot`` is wrong, so bf16 there raises ``ValueError``), ``"torch"`` (the
PyTorch references; materialises the score matrix, for CPU and tests), ``"auto"`` (Triton on
CUDA, torch otherwise).

Non-finite input (one policy, both backends): like dense attention, NaN / Inf propagate and are
never hidden. A NaN or Inf in a valid key or value of a (batch, head) makes that head's whole
output NaN (dense attention spreads it to every row through the softmax); one in a query row
makes that row NaN -- and, when :func:`xattention` estimates the mask, its whole query block
(the block's mask row was estimated from it). Values at padded key positions (``>= kv_len``)
are ignored like the rest of the padding. The block mask estimated for such a head or block is
unspecified. The check costs one min/max reduction over q, k and v per call, on the device (no
host sync).

Not supported: causal attention, dropout, gradients, GQA / MQA (q, k, v must have the same
head count), queries and keys of different lengths in the sparse kernel, head dims other than
16/32/64/128 with the Triton backend, block sizes other than 16/32/64/128.
"""

from __future__ import annotations

import math

import torch

from .kernels._common import HAS_TRITON, cdiv, interpreter_enabled, kv_len_tensor, triton_usable
from .kernels.select import mask_to_indices, select_blocks, valid_key_blocks
from .kernels.sparse_attention import block_sparse_attention_ref
from .library import estimate_scores, sparse_attention

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


def _require(cond: torch.Tensor, msg: str) -> None:
    """``ValueError(msg)`` unless the bool tensor ``cond`` holds. On CUDA and under
    ``torch.compile`` the check runs on the device (``torch._assert_async``, failing the next
    synchronising call) so that an attention call never waits on a host read."""
    if cond.is_cuda or torch.compiler.is_compiling():
        torch._assert_async(cond, msg)
    elif not bool(cond):
        raise ValueError(msg)


def _is_int_dtype(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def _check_selection(threshold, ratio, heads: int) -> None:
    if (threshold is None) == (ratio is None):
        raise ValueError("give exactly one of `threshold` and `ratio`")
    if threshold is not None:
        if isinstance(threshold, bool) or (
            isinstance(threshold, torch.Tensor) and not threshold.is_floating_point()
        ):
            raise ValueError(f"threshold must be a float or a float (H,) tensor, got {threshold}")
        if not isinstance(threshold, torch.Tensor):  # a Python number: no tensor, no read
            if not (0.0 < float(threshold) <= 1.0):
                raise ValueError(f"threshold must be in (0, 1], got {threshold}")
            return
        thr = threshold
        if thr.ndim > 1 or (thr.ndim == 1 and thr.shape[0] != heads):
            raise ValueError(
                f"threshold must be a float or a per-head tensor of shape ({heads},) for "
                f"{heads} heads, got shape {tuple(thr.shape)}"
            )
        _require(((thr > 0) & (thr <= 1)).all(), "threshold must be in (0, 1] (an (H,) tensor)")
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
            raise ValueError(f"ratio must be a float in (0, 1], got {ratio!r}")
        if not (0.0 < float(ratio) <= 1.0):
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")


def _check_kv_len(kv_len: torch.Tensor | None, batch: int, n_k: int) -> None:
    if kv_len is None:
        return
    if not isinstance(kv_len, torch.Tensor) or kv_len.shape != (batch,):
        raise ValueError(f"kv_len must be an int tensor of shape ({batch},)")
    if not _is_int_dtype(kv_len):
        raise ValueError(f"kv_len must be an integer tensor, got {kv_len.dtype}")
    if kv_len.is_cuda or torch.compiler.is_compiling():
        _require(((kv_len >= 1) & (kv_len <= n_k)).all(), f"kv_len values must be in [1, {n_k}]")
        return
    lo, hi = int(kv_len.min()), int(kv_len.max())
    if lo < 1 or hi > n_k:
        raise ValueError(f"kv_len values must be in [1, {n_k}], got [{lo}, {hi}]")


def _check_dense_from(dense_from, batch: int, n_tokens: int) -> None:
    """dense_from: None, an int or an int tensor of shape () / (B,), each in [0, n_tokens]."""
    if dense_from is None:
        return
    if isinstance(dense_from, torch.Tensor):
        if not _is_int_dtype(dense_from) or dense_from.shape not in ((), (1,), (batch,)):
            raise ValueError(
                f"dense_from must be an int or an int tensor of shape ({batch},), got "
                f"{dense_from.dtype} {tuple(dense_from.shape)}"
            )
        lo, hi = int(dense_from.min()), int(dense_from.max())
    elif isinstance(dense_from, int) and not isinstance(dense_from, bool):
        lo = hi = dense_from
    else:
        raise ValueError(f"dense_from must be an int or an int tensor, got {dense_from!r}")
    if lo < 0 or hi > n_tokens:
        raise ValueError(f"dense_from must be in [0, {n_tokens}], got [{lo}, {hi}]")


def _check_triton_dtype(backend: str, t: torch.Tensor) -> None:
    if backend == "triton" and t.dtype == torch.bfloat16 and not t.is_cuda:
        raise ValueError(
            "bf16 with backend='triton' under the Triton interpreter (TRITON_INTERPRET=1) gives "
            "wrong results (the interpreter's bf16 tl.dot is broken upstream): cast q, k, v to "
            "float32 or float16, or use backend='torch'"
            + ("" if interpreter_enabled() else " (the interpreter is not even enabled)")
        )


def _zero_padding(x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """x (B, H, N, D) with the positions >= lens[b] set to 0 (torch references: SDPA and the
    reference estimate would otherwise let a NaN/Inf in padding through)."""
    ok = torch.arange(x.shape[2], device=x.device)[None, :] < lens[:, None].long()
    return x.masked_fill(~ok[:, None, :, None], 0)


def _bad_rows(x: torch.Tensor) -> torch.Tensor:
    """(B, H, N) bool: rows of x (B, H, N, D) holding a NaN or an Inf."""
    lo, hi = torch.aminmax(x, dim=-1)
    return ~(torch.isfinite(lo) & torch.isfinite(hi))


def nonfinite_rows(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens: torch.Tensor
) -> torch.Tensor:
    """(B, H, Nq) bool: output rows that are NaN under the non-finite policy (module docstring):
    a non-finite query row, or any non-finite valid key / value in the (batch, head)."""
    key_ok = torch.arange(k.shape[2], device=k.device)[None, :] < lens[:, None].long()
    bad_kv = ((_bad_rows(k) | _bad_rows(v)) & key_ok[:, None, :]).any(dim=-1)  # (B, H)
    return _bad_rows(q) | bad_kv[:, :, None]


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
    if isinstance(dense_from, torch.Tensor):
        start = dense_from.to(device).long().reshape(-1).expand(batch)
    else:  # a Python int: a fill on the device, no host-to-device copy (CUDA graphs)
        start = torch.full((batch,), int(dense_from), dtype=torch.long, device=device)
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
    max_density: float | None = None,
) -> torch.Tensor:
    """XAttention block mask. q: (B, H, Nq, D), k: (B, H, Nk, D) -> (B, H, Nbq, Nbk) bool.

    ``threshold`` (float or per-head (H,) tensor in (0, 1]; default 0.9 unless ``ratio`` is
    given) keeps per row the smallest set of key blocks whose estimated mass reaches it;
    ``ratio=r`` keeps the top ``ceil(r * valid_blocks)`` blocks of every row instead.
    ``max_density`` (in (0, 1]) caps the kept share of block pairs per sample, see
    :func:`xattn_video.kernels.select.select_blocks`.
    """
    if threshold is None and ratio is None:
        threshold = DEFAULT_THRESHOLD
    if max_density is not None and not (0.0 < float(max_density) <= 1.0):
        raise ValueError(f"max_density must be in (0, 1], got {max_density}")
    _check_qk(q, k)
    _check_block_stride(block_size, stride)
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    _check_selection(threshold, ratio, H)
    _check_kv_len(kv_len, B, Nk)
    _check_dense_from(dense_from, B, max(Nq, Nk))
    backend = resolve_backend(backend, q)
    _check_triton_head_dim(backend, D)
    _check_triton_dtype(backend, q)
    lens = kv_len_tensor(kv_len, B, Nk, q.device)
    if backend == "torch" and kv_len is not None:
        k = _zero_padding(k, lens)
    scores = estimate_scores(
        q, k, kv_len=lens, stride=stride, block_size=block_size, use_triton=backend == "triton"
    )
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
    )


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
    _check_qk(q, k)
    _check_block_stride(block_size, stride)
    B, _, _, D = q.shape
    Nk = k.shape[2]
    _check_kv_len(kv_len, B, Nk)
    backend = resolve_backend(backend, q)
    _check_triton_head_dim(backend, D)
    _check_triton_dtype(backend, q)
    lens = kv_len_tensor(kv_len, B, Nk, q.device)
    if backend == "torch" and kv_len is not None:
        k = _zero_padding(k, lens)
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
    _check_qk(q, k)
    _check_qk(q, v, "v")
    if k.shape[2] != v.shape[2]:
        raise ValueError("k and v must have the same number of tokens")
    _check_block_stride(block_size, None)
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    _check_kv_len(kv_len, B, Nk)
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
    backend = resolve_backend(backend, q)
    if precision not in ("bf16", "fp8"):
        raise ValueError(f"precision must be 'bf16' or 'fp8', got {precision!r}")
    if precision == "fp8" and backend != "triton":
        raise ValueError("precision='fp8' needs backend='triton' on an sm90+ GPU")
    _check_triton_head_dim(backend, D)
    _check_triton_dtype(backend, q)
    lens = kv_len_tensor(kv_len, B, Nk, q.device)
    bad = nonfinite_rows(q, k, v, lens)
    if backend == "torch":
        if kv_len is not None:
            k, v = _zero_padding(k, lens), _zero_padding(v, lens)
        res = block_sparse_attention_ref(
            q, k, v, mask, block_size=block_size, kv_len=lens, scale=scale, return_lse=return_lse
        )
        return _propagate_nonfinite(res, bad, return_lse)
    if q.dtype == torch.float32 and q.is_cuda:
        raise ValueError("the Triton kernel takes fp16/bf16 on CUDA; cast q, k, v first")
    mask = mask & valid_key_blocks(lens, nbk, block_size)[:, None, None, :]
    counts, indices = mask_to_indices(mask)
    res = sparse_attention(  # the registered op under torch.compile
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
    )
    return _propagate_nonfinite(res, bad, return_lse)


def _bad_query_blocks(q: torch.Tensor, block_size: int) -> torch.Tensor:
    """(B, H, Nq) bool: rows whose query block holds a non-finite query row."""
    bad = _bad_rows(q)
    n = bad.shape[-1]
    pad = cdiv(n, block_size) * block_size - n
    blocks = torch.nn.functional.pad(bad, (0, pad)).unflatten(-1, (-1, block_size)).any(-1)
    return blocks.repeat_interleave(block_size, dim=-1)[..., :n]


def _propagate_nonfinite(res, bad: torch.Tensor, return_lse: bool):
    """Set the rows flagged by :func:`nonfinite_rows` (B, H, Nq) to NaN in out (and lse)."""
    out, lse = res if return_lse else (res, None)
    out = out.masked_fill(bad[..., None], float("nan"))
    if lse is None:
        return out
    return out, lse.masked_fill(bad, float("nan"))


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
):
    """XAttention: estimate the block mask, then attend exactly inside it.

    ``precision="fp8"``: the sparse attention runs Q.K^T and P.V in e4m3 (Hopper kernel; the
    estimate stays bf16, so the mask is the bf16 one).

    q, k, v: (B, H, N, D) (self-attention; q and k may have different lengths for the
    estimate). ``mask``: reuse a block mask from an earlier call instead of estimating.
    ``max_density``: cap on the kept share of block pairs (see :func:`estimate_block_mask`).
    Returns ``out`` (B, H, N, D), or a tuple ``(out, mask)``, ``(out, lse)`` or
    ``(out, mask, lse)`` as requested; mask is (B, H, Nbq, Nbk) bool, lse (B, H, N) float32.
    """
    estimated = mask is None
    if estimated:
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
            max_density=max_density,
        )
    res = block_sparse_attention(
        q, k, v, mask, block_size=block_size, kv_len=kv_len, scale=scale,
        return_lse=return_lse, backend=backend, precision=precision,
    )  # fmt: skip
    if estimated:  # a block-mask row estimated from a non-finite query row is meaningless
        res = _propagate_nonfinite(res, _bad_query_blocks(q, block_size), return_lse)
    out, lse = res if return_lse else (res, None)
    extras = ((mask,) if return_mask else ()) + ((lse,) if return_lse else ())
    return (out, *extras) if extras else out


def attention_flops(batch: int, heads: int, n_q: int, n_k: int, head_dim: int) -> float:
    """Dense forward FLOPs of attention (two matmuls): 4 * B * H * Nq * Nk * D."""
    return 4.0 * batch * heads * n_q * n_k * head_dim


def default_scale(head_dim: int) -> float:
    """Softmax scale 1/sqrt(D)."""
    return 1.0 / math.sqrt(head_dim)
