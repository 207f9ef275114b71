"""Block selection and CSR index lists as Triton kernels: one launch per stage, no host read.

The batched tensor code of :mod:`.select` (its reference here) runs the selection as
about twenty small kernels (sort, float64 cumsum, compare, scatter, the text policy, validity);
at the tiny DiT's size (4 heads x 136 blocks) that costs more device time than the sparse
attention itself, and several times that in launch overhead in eager mode. Here:

- :func:`select_blocks_fused`: one program per (b, h, query-block row) loads the row's scores
  and finds the blocks the torch code keeps -- ranked descending, ties by ascending key-block
  index (the stable torch sort's order) -- without sorting: in ratio mode the top
  ``max(1, ceil(ratio * valid blocks))`` ranks by a bitwise search for the cut-off score (31
  counts over the row); in threshold mode the ranks whose mass ranked before them is below
  ``threshold * row_total`` by a bitwise search over float64 sums of the mass scored above a
  candidate (31 sums; then the ties at the cut-off score, in index order), the top block
  always; then the text rows / columns (``dense_from``) and the key validity (``kv_len``).
  With a budget (``max_density``) it writes each block's priority instead (forced 3, the row's
  top ``min_blocks`` 2 + share, chosen share, else -1), then one stable torch sort per sample
  ranks them and a second kernel keeps the top ``budget[b]`` (and every priority >= 2): the
  same rule as :func:`.select.select_blocks`.
- :func:`mask_to_csr`: per row, the ascending list of selected *valid* key blocks (padding
  ``Nbk``) and its length, from a bool mask that may be broadcast over B / H (a prefix sum
  gives each block its slot: no sort).

Masks equal :func:`.select.select_blocks` (and :func:`.select.mask_to_indices`) bit for bit
except, in threshold mode, at float64 near-ties of the mass ranked before a block or of the row
total (the sums are taken in a different order; tested equal on integer-valued scores with
many exact ties and on random scores); ratio mode ranks without sums, so its masks are equal
always without a ``max_density`` budget; with one, both modes rank blocks by their share of the
row total, so they can differ at float64 near-ties of those shares too.

Not supported: negative or NaN scores are read as 0 (the ranking compares the floats' bit
patterns, which order non-negative floats only; the estimate gives NaN only for non-finite
input, whose mask the op leaves unspecified); rows of more than
``MAX_BLOCKS`` key blocks (the op runs the torch selection there, and :func:`mask_to_csr`
its torch lists).
"""

from __future__ import annotations

import struct

import torch

from ._common import HAS_TRITON, cdiv, kv_len_tensor
from .select import RATIO_SLACK, mask_to_indices, valid_key_blocks

if HAS_TRITON:
    import triton
    import triton.language as tl

MAX_BLOCKS = 2048
"""Longest key-block row the kernels take (a row is held in one program: 2,048 lanes = 262k
tokens at block 128; tested on the GPU at 931 blocks). The op runs the torch code beyond."""


def _f64_bits(x: float) -> int:
    """The IEEE bit pattern of a Python float as an int (Triton types float arguments fp32)."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


if HAS_TRITON:
    _RATIO_SLACK = tl.constexpr(RATIO_SLACK)

    @triton.jit
    def _top_ranks(bits, n_keep):
        """Keep flags of the ``n_keep`` largest of ``bits`` (the int32 patterns of non-negative
        floats, which order as the floats do; -1 on lanes outside the row), ties by ascending
        lane: the top ranks of the stable descending sort, found without sorting. A bitwise
        search, high bit first, for the largest t with ``count(bits >= t) >= n_keep`` (31
        counts), then the first ``n_keep - count(bits > t)`` lanes equal to t."""
        t = tl.sum(bits * 0, 0)
        for bit in range(30, -1, -1):
            cand = t | (1 << bit)
            t = tl.where(tl.sum((bits >= cand).to(tl.int32), 0) >= n_keep, cand, t)
        above = bits > t
        tie = bits == t
        tie_rank = tl.cumsum(tie.to(tl.int32), 0)  # 1 for the first lane equal to t
        return above | (tie & (tie_rank <= n_keep - tl.sum(above.to(tl.int32), 0)))

    @triton.jit
    def _first_max(bits):
        """The top rank's flag: the first lane holding the largest of ``bits``."""
        top = bits == tl.max(bits, 0)
        return top & (tl.cumsum(top.to(tl.int32), 0) == 1)

    @triton.jit
    def _mass_ranks(bits, val, target):
        """Keep flags of the blocks whose mass ranked strictly before them (descending, ties by
        ascending lane) is below ``target``: a prefix of the ranking, found without sorting.
        ``above(t)`` = the mass of the blocks scored above bit pattern t; a bitwise search finds
        the largest u with ``above(u) >= target`` (31 float64 sums), so every block scored
        above the lowest score c > u is kept, and of the blocks scored c (mass ``above(c)``
        before the first of them) the first m while ``above(c) + m * score < target``."""
        u = tl.sum(bits * 0, 0)
        for bit in range(30, -1, -1):
            cand = u | (1 << bit)
            u = tl.where(tl.sum(tl.where(bits > cand, val, 0.0), 0) >= target, cand, u)
        c = tl.min(tl.where(bits > u, bits, 0x7FFFFFFF), 0)
        tie = bits == c
        tie_rank = tl.cumsum(tie.to(tl.int32), 0) - 1  # 0 for the first block scored c
        before = tl.sum(tl.where(bits > c, val, 0.0), 0) + tie_rank.to(tl.float64) * val
        return (bits > c) | (tie & (before < target))

    @triton.jit
    def _select_rows_kernel(
        SCORES, MASK, PRIO, KV_LEN, THR, DF,
        thr_bits, df_value,
        H, NBQ, NBK, N_Q, N_K,
        stride_sb, stride_sh, stride_sq,
        BLOCK: tl.constexpr, NP: tl.constexpr, THR_PER_HEAD: tl.constexpr,
        DF_MODE: tl.constexpr, BUDGET: tl.constexpr, MIN_BLOCKS: tl.constexpr,
        RATIO: tl.constexpr,
    ):  # fmt: skip
        i = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        kvl = tl.load(KV_LEN + b)
        j = tl.arange(0, NP)
        in_row = j < NBK
        valid = in_row & (j * BLOCK < kvl)
        s = tl.load(
            SCORES + b.to(tl.int64) * stride_sb + h * stride_sh + i * stride_sq + j,
            mask=valid,
            other=0.0,
        )
        # NaN (from non-finite input: its mask is unspecified), negative or -0.0 -> +0.0: every
        # block's bit pattern is then >= 0 and orders as its score does (-0.0's would be
        # negative, below every other lane); -1 marks lanes past the row
        s = tl.where(s > 0.0, s, 0.0)
        bits = tl.where(in_row, s.to(tl.int32, bitcast=True), -1)
        val = s.to(tl.float64)
        total = tl.sum(val, 0)
        if RATIO:  # the top max(1, ceil(ratio * valid blocks)) ranks, in float64 as in torch
            ratio = tl.cast(tl.cast(thr_bits, tl.int64), tl.float64, bitcast=True)
            n_valid = tl.minimum((kvl + BLOCK - 1) // BLOCK, NBK).to(tl.float64)
            n_keep = tl.ceil(ratio * n_valid - _RATIO_SLACK)  # not 8 of 25 blocks at 0.28
            keep = _top_ranks(bits, tl.maximum(n_keep, 1.0).to(tl.int32))
        else:
            if THR_PER_HEAD:
                thr = tl.load(THR + h)
            else:
                thr = tl.cast(tl.cast(thr_bits, tl.int64), tl.float64, bitcast=True)
            keep = _mass_ranks(bits, val, thr * total) | _first_max(bits)
            # tau >= 1 keeps every block (a row vector: the interpreter's bool ops)
            keep = keep | ((tl.zeros([NP], tl.float64) + thr) >= 1.0)
        if DF_MODE == 0:
            forced = valid & (j < 0)
        else:
            if DF_MODE == 1:
                df = tl.cast(df_value, tl.int64)  # tl.cast: a 1 arrives as a constexpr
            else:
                df = tl.load(DF + b).to(tl.int64)
            # a block is forced when it holds a token >= df: its end, clamped to the query /
            # key length (a partial last block ends there), passes df
            row_end = tl.minimum((i + 1).to(tl.int64) * BLOCK, N_Q)
            col_end = tl.minimum((j + 1).to(tl.int64) * BLOCK, N_K)
            forced = ((row_end > df) | (col_end > df)) & valid
        row = (bh * NBQ + i).to(tl.int64)  # row * NBK passes 2**31 for large B*H*N at block 64
        if BUDGET:
            share = tl.where(total > 0, val / total, 0.0)
            prio = tl.where(keep & valid, share, -1.0)
            prio = tl.where(_top_ranks(bits, MIN_BLOCKS) & valid, 2.0 + share, prio)
            prio = tl.where(forced, 3.0, prio)
            tl.store(PRIO + row * NBK + j, prio, mask=in_row)
        else:
            m = (keep | forced) & valid
            tl.store(MASK + row * NBK + j, m.to(tl.int8), mask=in_row)

    @triton.jit
    def _budget_keep_kernel(
        RANKED, ORDER, MASK, KV_LEN, md_bits, H, NBQ, NBK, L,
        BLOCK: tl.constexpr, TILE: tl.constexpr,
    ):  # fmt: skip
        t = tl.program_id(0)
        b = tl.program_id(1)
        kvl = tl.load(KV_LEN + b)
        base = b.to(tl.int64) * L  # passes 2**31 for large B*H*N at block 64
        n_valid = tl.minimum((kvl + BLOCK - 1) // BLOCK, NBK).to(tl.float64)
        md = tl.cast(tl.cast(md_bits, tl.int64), tl.float64, bitcast=True)
        budget = tl.floor(n_valid * H * NBQ * md + 1e-9).to(tl.int64)
        r = t * TILE + tl.arange(0, TILE)
        inside = r < L
        ranked = tl.load(RANKED + base + r, mask=inside, other=-1.0)
        where = tl.load(ORDER + base + r, mask=inside, other=0)
        keep = ((r.to(tl.int64) < budget) & (ranked >= 0.0)) | (ranked >= 2.0)
        tl.store(MASK + base + where, keep.to(tl.int8), mask=inside)

    @triton.jit
    def _csr_kernel(
        MASK, COUNTS, INDICES, KV_LEN, H, NBQ, NBK,
        stride_mb, stride_mh, stride_mq, stride_mk,
        BLOCK: tl.constexpr, NP: tl.constexpr,
    ):  # fmt: skip
        i = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        kvl = tl.load(KV_LEN + b)
        j = tl.arange(0, NP)
        m = tl.load(
            MASK + b.to(tl.int64) * stride_mb + h * stride_mh + i * stride_mq + j * stride_mk,
            mask=j < NBK,
            other=0,
        )
        sel = (m != 0) & (j < NBK) & (j * BLOCK < kvl)
        # a stable partition instead of a sort: selected blocks to the front in ascending
        # order, the padding value after them (lane j's slot: a permutation of 0..NBK-1)
        before = tl.cumsum(sel.to(tl.int32), 0)  # selected lanes up to and including j
        count = tl.sum(sel.to(tl.int32), 0)
        slot = tl.where(sel, before - 1, count + j - before)
        row = (bh * NBQ + i).to(tl.int64)
        tl.store(INDICES + row * NBK + slot, tl.where(sel, j, NBK), mask=j < NBK)
        tl.store(COUNTS + row, count)


def _row_lanes(nbk: int, what: str) -> tuple[int, int]:
    """(lanes, num_warps) of a kernel that holds one row of ``nbk`` key blocks per program."""
    if nbk > MAX_BLOCKS:
        raise ValueError(f"{what} supports up to {MAX_BLOCKS} key blocks, got {nbk}")
    lanes = max(16, triton.next_power_of_2(nbk))
    return lanes, 4 if lanes <= 1024 else 8


def _dense_from_args(dense_from, B: int, device) -> tuple[int, torch.Tensor | None, int]:
    """(mode, tensor, value): 0 none, 1 a Python int, 2 a (B,) / broadcast tensor."""
    if dense_from is None:
        return 0, None, 0
    if isinstance(dense_from, torch.Tensor):
        return 2, dense_from.to(device=device, dtype=torch.int64).reshape(-1).expand(B), 0
    return 1, None, int(dense_from)


def select_blocks_fused(
    scores: torch.Tensor,
    *,
    block_size: int,
    threshold: float | torch.Tensor | None = None,
    ratio: float | None = None,
    kv_len: torch.Tensor | None = None,
    dense_from: int | torch.Tensor | None = None,
    max_density: float | None = None,
    min_blocks: int = 1,
    n_q: int | None = None,
    n_k: int | None = None,
) -> torch.Tensor:
    """Threshold or ratio selection in one kernel (plus a sort and a kernel with a budget).

    scores: (B, H, Nbq, Nbk) float32, non-negative; exactly one of threshold (float or (H,)
    tensor in (0, 1]) and ratio (float in (0, 1]: the top ``max(1, ceil(ratio * valid
    blocks))`` of every row); kv_len: (B,) int valid keys; dense_from: int or (B,) int tensor,
    first token whose query row / key column is forced dense (text), or None; max_density:
    per-sample budget in (0, 1] or None; min_blocks: blocks per row kept under the budget;
    n_q / n_k: the query / key token counts (default whole blocks), where the last blocks end
    for ``dense_from``.
    Returns (B, H, Nbq, Nbk) bool, equal to :func:`.select.select_blocks` with ``force_rows`` /
    ``force_cols`` = :func:`xattn_video.attention.dense_blocks` of ``dense_from`` (see the
    module docstring).
    """
    if (threshold is None) == (ratio is None):
        raise ValueError("select_blocks_fused: give exactly one of `threshold` and `ratio`")
    B, H, nbq, nbk = scores.shape
    np2, warps = _row_lanes(nbk, "select_blocks_fused")
    scores = scores if scores.stride(-1) == 1 else scores.contiguous()
    lens = kv_len_tensor(kv_len, B, nbk * block_size, scores.device)
    per_head = isinstance(threshold, torch.Tensor)
    scalar = ratio if ratio is not None else (0.0 if per_head else threshold)
    thr = (
        threshold.to(device=scores.device, dtype=torch.float64).reshape(-1).expand(H).contiguous()
        if per_head
        else lens  # unused pointer
    )
    df_mode, df, df_value = _dense_from_args(dense_from, B, scores.device)
    df = lens if df is None else df.contiguous()
    budget = max_density is not None
    mask = torch.empty((B, H, nbq, nbk), dtype=torch.bool, device=scores.device)
    prio = (
        torch.empty((B, H, nbq, nbk), dtype=torch.float64, device=scores.device)
        if budget
        else scores
    )
    _select_rows_kernel[(nbq, B * H)](
        scores, mask.view(torch.int8), prio, lens, thr, df,
        _f64_bits(scalar), df_value,
        H, nbq, nbk,
        nbq * block_size if n_q is None else int(n_q),
        nbk * block_size if n_k is None else int(n_k),
        scores.stride(0), scores.stride(1), scores.stride(2),
        BLOCK=block_size, NP=np2, THR_PER_HEAD=per_head, DF_MODE=df_mode, BUDGET=budget,
        MIN_BLOCKS=int(min_blocks), RATIO=ratio is not None, num_warps=warps,
    )  # fmt: skip
    if not budget:
        return mask
    n = H * nbq * nbk
    ranked, order = torch.sort(prio.view(B, n), dim=-1, descending=True, stable=True)
    tile = 1024
    _budget_keep_kernel[(cdiv(n, tile), B)](
        ranked, order, mask.view(torch.int8), lens, _f64_bits(max_density), H, nbq, nbk, n,
        BLOCK=block_size, TILE=tile,
    )  # fmt: skip
    return mask


def mask_to_csr(
    mask: torch.Tensor, *, block_size: int, kv_len: torch.Tensor | None = None, n_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR lists of the valid selected blocks, one launch.

    mask: (B, H, Nbq, Nbk) bool, any strides (an expanded mask is read in place); kv_len: (B,)
    int (None: ``n_k`` keys). Returns counts (B, H, Nbq) int32 and indices (B, H, Nbq, Nbk)
    int32, ascending, padded with Nbk: :func:`.select.mask_to_indices` of ``mask & valid``.
    Rows longer than ``MAX_BLOCKS`` run that torch code instead.
    """
    B, H, nbq, nbk = mask.shape
    lens = kv_len_tensor(kv_len, B, n_k, mask.device)
    if nbk > MAX_BLOCKS:
        return mask_to_indices(mask & valid_key_blocks(lens, nbk, block_size)[:, None, None, :])
    np2, warps = _row_lanes(nbk, "mask_to_csr")
    m = mask.view(torch.uint8)
    counts = torch.empty((B, H, nbq), dtype=torch.int32, device=mask.device)
    indices = torch.empty((B, H, nbq, nbk), dtype=torch.int32, device=mask.device)
    _csr_kernel[(nbq, B * H)](
        m, counts, indices, lens, H, nbq, nbk, *m.stride(),
        BLOCK=block_size, NP=np2, num_warps=warps,
    )  # fmt: skip
    return counts, indices
