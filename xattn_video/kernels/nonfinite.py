"""The op's non-finite policy as two Triton kernels: flag NaN / Inf rows, then NaN the outputs.

The policy (documented in :mod:`xattn_video.attention`): an output row is NaN when its query row
holds a NaN / Inf -- or, when the op estimated the mask, any query row of its query block --
or when any *valid* key or value row of its (batch, head) does (dense attention spreads it to
every row). In torch that is about twenty small kernels per call; here:

- :func:`nonfinite_flags`: one pass over q, k, v (grid: row chunks x (B*H)); writes a per
  query-row flag (B, H, Nq) and a per-chunk flag of bad valid keys / values (B, H, chunks);
- :func:`propagate_nan`: one program per (b, h, chunk of query rows) reads the flags and
  writes NaN into the flagged rows of ``out`` (and ``lse``) in place; a clean call reads the
  flags only.

Torch reference: :func:`nonfinite_rows_ref` (the rows the kernels make NaN, as a (B, H, Nq)
bool; the op's torch backend runs it).

Not supported: q rows and k / v rows of different head counts (no GQA), outputs with a
non-unit last stride.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import HAS_TRITON, cdiv

if HAS_TRITON:
    import triton
    import triton.language as tl

FLAG_ROWS = 128
"""Rows per program of the flag kernel (one kv flag per chunk of this many keys)."""


def _bad_rows(x: torch.Tensor) -> torch.Tensor:
    lo, hi = torch.aminmax(x, dim=-1)
    return ~(torch.isfinite(lo) & torch.isfinite(hi))


def nonfinite_rows_ref(q, k, v, lens: torch.Tensor, nan_block: int = 0) -> torch.Tensor:
    """(B, H, Nq) bool: the rows the policy makes NaN. nan_block: 0 per row, else the block
    size (a bad query row flags its whole query block)."""
    key_ok = torch.arange(k.shape[2], device=k.device)[None, :] < lens[:, None].long()
    bad_kv = ((_bad_rows(k) | _bad_rows(v)) & key_ok[:, None, :]).any(dim=-1)
    bad_q = _bad_rows(q)
    if nan_block:
        n = bad_q.shape[-1]
        pad = cdiv(n, nan_block) * nan_block - n
        blocks = F.pad(bad_q, (0, pad)).unflatten(-1, (-1, nan_block)).any(-1)
        # a gather, not ``repeat_interleave(...)[..., :n]``: inductor (torch 2.14, CPU) compiled
        # that slice wrongly and scrambled the LSE rows it masks
        bad_q = blocks[..., torch.arange(n, device=q.device) // nan_block]
    return bad_q | bad_kv[:, :, None]


if HAS_TRITON:

    @triton.jit
    def _row_bad(base, rows, n, stride_n, stride_d, D: tl.constexpr):
        d = tl.arange(0, D)
        ptr = base + rows[:, None] * stride_n + d[None, :] * stride_d
        x = tl.load(ptr, mask=rows[:, None] < n, other=0.0)
        finite = tl.abs(x.to(tl.float32)) <= 3.4028234663852886e38  # False for NaN and Inf
        return tl.max((~finite).to(tl.int8), axis=1)

    @triton.jit
    def _flags_kernel(
        Q, K, V, KV_LEN, QBAD, KVBAD, H, NQ, NK, NCHUNK,
        sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
        D: tl.constexpr, ROWS: tl.constexpr,
    ):  # fmt: skip
        c = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        rows = c * ROWS + tl.arange(0, ROWS)
        b64 = b.to(tl.int64)  # b * sqb passes 2**31 for large B*H*N
        qb = _row_bad(Q + b64 * sqb + h * sqh, rows, NQ, sqn, sqd, D)
        tl.store(QBAD + bh * NQ + rows, qb, mask=rows < NQ)
        kvl = tl.minimum(tl.load(KV_LEN + b), NK)
        kb = _row_bad(K + b64 * skb + h * skh, rows, kvl, skn, skd, D)
        vb = _row_bad(V + b64 * svb + h * svh, rows, kvl, svn, svd, D)
        tl.store(KVBAD + bh * NCHUNK + c, tl.max(kb | vb, axis=0))

    @triton.jit
    def _propagate_kernel(
        OUT, LSE, QBAD, KVBAD, H, NQ, NCHUNK,
        sob, soh, son, sod, slb, slh, sln,
        D: tl.constexpr, ROWS: tl.constexpr, NCP: tl.constexpr,
        BY_BLOCK: tl.constexpr, HAS_LSE: tl.constexpr,
    ):  # fmt: skip
        c = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        ch = tl.arange(0, NCP)
        kv_bad = tl.max(tl.load(KVBAD + bh * NCHUNK + ch, mask=ch < NCHUNK, other=0), axis=0)
        rows = c * ROWS + tl.arange(0, ROWS)
        qb = tl.load(QBAD + bh * NQ + rows, mask=rows < NQ, other=0)
        if BY_BLOCK:  # ROWS is the block size: one bad query row flags the block
            qb = tl.zeros_like(qb) + tl.max(qb, axis=0)
        bad = ((qb | kv_bad) != 0) & (rows < NQ)
        d = tl.arange(0, D)
        nan = tl.full([ROWS, D], float("nan"), dtype=tl.float32)
        o_ptr = OUT + b.to(tl.int64) * sob + h * soh + rows[:, None] * son + d[None, :] * sod
        tl.store(o_ptr, nan.to(OUT.dtype.element_ty), mask=bad[:, None])
        if HAS_LSE:
            nan_row = tl.full([ROWS], float("nan"), dtype=tl.float32)
            tl.store(LSE + b * slb + h * slh + rows * sln, nan_row, mask=bad)


def nonfinite_flags(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over q, k, v (B, H, N*, D); lens (B,) int32 valid keys. Returns q_bad
    (B*H, Nq) int8 (row holds NaN / Inf) and kv_bad (B*H, chunks) int8 (a valid key or value
    row of the chunk of ``FLAG_ROWS`` keys does)."""
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    n_chunks = cdiv(max(Nq, Nk), FLAG_ROWS)
    q_bad = torch.empty((B * H, Nq), dtype=torch.int8, device=q.device)
    kv_bad = torch.empty((B * H, n_chunks), dtype=torch.int8, device=q.device)
    _flags_kernel[(n_chunks, B * H)](
        q, k, v, lens, q_bad, kv_bad, H, Nq, Nk, n_chunks,
        *q.stride(), *k.stride(), *v.stride(), D=D, ROWS=FLAG_ROWS,
    )  # fmt: skip
    return q_bad, kv_bad


def propagate_nan(
    out: torch.Tensor,
    lse: torch.Tensor | None,
    q_bad: torch.Tensor,
    kv_bad: torch.Tensor,
    nan_block: int = 0,
) -> None:
    """In place: NaN the rows of out (B, H, Nq, D) (and lse (B, H, Nq)) that the flags of
    :func:`nonfinite_flags` make NaN; ``nan_block``: 0 per row, else the query block size."""
    B, H, Nq, D = out.shape
    rows = nan_block or 64
    n_chunks = kv_bad.shape[1]
    ls = lse.stride() if lse is not None else (0, 0, 0)
    _propagate_kernel[(cdiv(Nq, rows), B * H)](
        out, lse if lse is not None else out, q_bad, kv_bad, H, Nq, n_chunks,
        *out.stride(), *ls,
        D=D, ROWS=rows, NCP=max(16, triton.next_power_of_2(n_chunks)),
        BY_BLOCK=bool(nan_block), HAS_LSE=lse is not None,
    )  # fmt: skip
