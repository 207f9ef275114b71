"""Block selection and CSR index lists as Triton kernels: one launch per stage, no host read.

The batched tensor code of :mod:`.select` (its reference here) runs the threshold selection as
about twenty small kernels (sort, float64 cumsum, compare, scatter, the text policy, validity);
at the tiny DiT's size (4 heads x 136 blocks) that costs more device time than the sparse
attention itself, and several times that in launch overhead in eager mode. Here:

- :func:`select_blocks_fused`: one program per (b, h, query-block row) loads the row's scores,
  sorts them (descending, ties by ascending key-block index: the order of the stable torch
  sort), takes the float64 running sum, applies the threshold, the text rows / columns
  (``dense_from``) and the key validity (``kv_len``), and scatters the row's keep flags back
  to key-block order. With a budget (``max_density``) it writes each block's priority instead
  (forced 3, the row's top ``min_blocks`` 2 + share, chosen share, else -1), then one stable
  torch sort per sample ranks them and a second kernel keeps the top ``budget[b]`` (and every
  priority >= 2): the same rule as :func:`.select.select_blocks`.
- :func:`mask_to_csr`: per row, the ascending list of selected *valid* key blocks (padding
  ``Nbk``) and its length, from a bool mask that may be broadcast over B / H.

Masks equal :func:`.select.select_blocks` (and :func:`.select.mask_to_indices`) bit for bit
except at float64 near-ties of the running sum or of the row total (the sums are taken in a
different order; tested equal on integer-valued scores with many exact ties and on random
scores).

Not supported: ratio mode (the torch code runs it); negative or NaN scores are read as 0 (the
sort key is the float's bit pattern, which orders non-negative floats only; the estimate gives
NaN only for non-finite input, whose mask the op leaves unspecified); rows of more than
``MAX_BLOCKS`` key blocks (the op runs the torch selection there, and :func:`mask_to_csr`
its torch lists).
"""

from __future__ import annotations

import struct

import torch

from ._common import HAS_TRITON, cdiv, kv_len_tensor
from .select import mask_to_indices, valid_key_blocks

if HAS_TRITON:
    import triton
    import triton.language as tl

MAX_BLOCKS = 2048
"""Longest key-block row the kernels take (a row is sorted in one program: 2,048 lanes = 262k
tokens at block 128; tested on the GPU at 931 blocks). The op runs the torch code beyond."""


def _f64_bits(x: float) -> int:
    """The IEEE bit pattern of a Python float as an int (Triton types float arguments fp32)."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


if HAS_TRITON:

    @triton.jit
    def _select_rows_kernel(
        SCORES, MASK, PRIO, KV_LEN, THR, DF,
        thr_bits, df_value,
        H, NBQ, NBK,
        stride_sb, stride_sh, stride_sq,
        BLOCK: tl.constexpr, NP: tl.constexpr, THR_PER_HEAD: tl.constexpr,
        DF_MODE: tl.constexpr, BUDGET: tl.constexpr, MIN_BLOCKS: tl.constexpr,
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
            SCORES + b * stride_sb + h * stride_sh + i * stride_sq + j, mask=valid, other=0.0
        )
        # NaN (from non-finite input: its mask is unspecified) or negative -> 0, so every key
        # below is >= 0 and sorts before the padding lanes (-1): the scatter stays in the row
        s = tl.where(s >= 0.0, s, 0.0)
        # descending by score, ties by ascending index (the stable torch sort's order)
        key = (s.to(tl.int32, bitcast=True).to(tl.int64) << 32) | (NP - 1 - j).to(tl.int64)
        key = tl.where(in_row, key, -1)
        srt = tl.sort(key, descending=True)
        ok = j < NBK  # sorted lanes that hold a block (the padding sorted last)
        idx = tl.where(ok, NP - 1 - (srt & 0xFFFFFFFF).to(tl.int32), 0)
        val = tl.where(ok, (srt >> 32).to(tl.int32).to(tl.float32, bitcast=True), 0.0)
        val = val.to(tl.float64)
        csum = tl.cumsum(val, 0)
        total = tl.max(csum, 0)  # the last running sum (values are >= 0)
        if THR_PER_HEAD:
            thr = tl.load(THR + h)
        else:
            thr = thr_bits.to(tl.int64).to(tl.float64, bitcast=True)
        thr = tl.zeros([NP], tl.float64) + thr  # a row vector (the interpreter's bool ops)
        keep = ((csum - val) < thr * total) | (thr >= 1.0) | (j == 0)
        valid_s = ok & (idx * BLOCK < kvl)
        if DF_MODE == 0:
            forced = valid_s & (j < 0)
        else:
            if DF_MODE == 1:
                df = df_value.to(tl.int64)
            else:
                df = tl.load(DF + b).to(tl.int64)
            forced = (((i + 1) * BLOCK > df) | ((idx + 1).to(tl.int64) * BLOCK > df)) & valid_s
        row = bh * NBQ + i
        if BUDGET:
            row_sum = tl.sum(val, 0)
            share = tl.where(row_sum > 0, val / row_sum, 0.0)
            prio = tl.where(keep & valid_s, share, -1.0)
            prio = tl.where((j < MIN_BLOCKS) & valid_s, 2.0 + share, prio)
            prio = tl.where(forced, 3.0, prio)
            tl.store(PRIO + row * NBK + idx, prio, mask=ok)
        else:
            m = (keep | forced) & valid_s
            tl.store(MASK + row * NBK + idx, m.to(tl.int8), mask=ok)

    @triton.jit
    def _budget_keep_kernel(
        RANKED, ORDER, MASK, KV_LEN, md_bits, H, NBQ, NBK, L,
        BLOCK: tl.constexpr, TILE: tl.constexpr,
    ):  # fmt: skip
        t = tl.program_id(0)
        b = tl.program_id(1)
        kvl = tl.load(KV_LEN + b)
        n_valid = tl.minimum((kvl + BLOCK - 1) // BLOCK, NBK).to(tl.float64)
        md = md_bits.to(tl.int64).to(tl.float64, bitcast=True)
        budget = tl.floor(n_valid * H * NBQ * md + 1e-9).to(tl.int64)
        r = t * TILE + tl.arange(0, TILE)
        inside = r < L
        ranked = tl.load(RANKED + b * L + r, mask=inside, other=-1.0)
        where = tl.load(ORDER + b * L + r, mask=inside, other=0)
        keep = ((r.to(tl.int64) < budget) & (ranked >= 0.0)) | (ranked >= 2.0)
        tl.store(MASK + b * L + where, keep.to(tl.int8), mask=inside)

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
            MASK + b * stride_mb + h * stride_mh + i * stride_mq + j * stride_mk,
            mask=j < NBK,
            other=0,
        )
        sel = (m != 0) & (j < NBK) & (j * BLOCK < kvl)
        keyed = tl.sort(tl.where(sel, j, NBK))
        row = bh * NBQ + i
        tl.store(INDICES + row * NBK + j, keyed, mask=j < NBK)
        tl.store(COUNTS + row, tl.sum(sel.to(tl.int32), 0))


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
    threshold: float | torch.Tensor,
    kv_len: torch.Tensor | None = None,
    dense_from: int | torch.Tensor | None = None,
    max_density: float | None = None,
    min_blocks: int = 1,
) -> torch.Tensor:
    """Threshold selection in one kernel (plus a sort and a kernel with a budget).

    scores: (B, H, Nbq, Nbk) float32, non-negative; threshold: float or (H,) tensor in (0, 1];
    kv_len: (B,) int valid keys; dense_from: int or (B,) int tensor, first token whose query
    row / key column is forced dense (text), or None; max_density: per-sample budget in (0, 1]
    or None; min_blocks: blocks per row kept under the budget. Returns (B, H, Nbq, Nbk) bool,
    equal to :func:`.select.select_blocks` with ``force_rows`` / ``force_cols`` =
    :func:`xattn_video.attention.dense_blocks` of ``dense_from`` (see the module docstring).
    """
    B, H, nbq, nbk = scores.shape
    np2, warps = _row_lanes(nbk, "select_blocks_fused")
    scores = scores if scores.stride(-1) == 1 else scores.contiguous()
    lens = kv_len_tensor(kv_len, B, nbk * block_size, scores.device)
    per_head = isinstance(threshold, torch.Tensor)
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
        0 if per_head else _f64_bits(threshold), df_value,
        H, nbq, nbk, scores.stride(0), scores.stride(1), scores.stride(2),
        BLOCK=block_size, NP=np2, THR_PER_HEAD=per_head, DF_MODE=df_mode, BUDGET=budget,
        MIN_BLOCKS=int(min_blocks), num_warps=warps,
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
