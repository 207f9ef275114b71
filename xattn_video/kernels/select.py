"""Block selection from block scores, and the CSR-style index lists the sparse kernel reads.

Threshold mode: per (b, h, query block) row, keep the smallest set of key blocks, taken in
descending score order, whose mass reaches ``threshold * row_total``; the block that crosses the
threshold is kept (a block is kept iff the mass of the blocks ranked before it is still below
the target). ``threshold >= 1`` keeps every valid block. Ratio mode: keep the top
``ceil(ratio * valid_blocks)`` key blocks of every row (at least one), to pin the density
(the product less :data:`RATIO_SLACK`: 0.28 * 25 is 7.000000000000001 in floats, and keeps 7).

Budget (``max_density``, with either mode): per sample, at most
``floor(max_density * H * Nbq * valid_key_blocks)`` (query block, key block) pairs are kept over
all heads and rows ("30% density, best quality"). Blocks are admitted in this order: forced
(text) blocks, then the top ``min_blocks`` blocks of every row, then the remaining blocks the
mode chose, by their share of their row's estimated mass, highest first -- so the budget goes
where a block holds the most of its row's mass, and rows stop short of the threshold when the
budget runs out. Forced blocks and the per-row minimum are always kept, even past the budget.

Key blocks that hold no valid key (``block_start >= kv_len[b]``) are never selected. Rows and
columns can be forced dense (used for text tokens). There is no implicit "key block 0 is always
kept" (the official code's side effect).

Everything is batched tensor code (sort, cumsum, scatter): no Python loop over heads, rows or
chunks. The op's Triton path runs the same rule as one kernel per stage
(:mod:`.select_fused`), for which this code is the reference; the ``torch`` backend and ratio
mode run this code. :func:`select_blocks_ref` is a plain per-row loop kept as the reference for
tests.

Not supported: causal selection; per-row thresholds (a per-head tensor is supported); a budget
shared across samples or calls (it is per sample of one call).
"""

from __future__ import annotations

import math

import torch

from ._common import cdiv, kv_len_tensor

RATIO_SLACK = 1e-9
"""Subtracted from ``ratio * valid blocks`` before the ceil: a product that is an integer but
for float rounding keeps that many blocks, not one more."""


def valid_key_blocks(kv_len: torch.Tensor, n_kb: int, block_size: int) -> torch.Tensor:
    """(B, n_kb) bool: key block j holds at least one valid key of sample b. kv_len: (B,) int."""
    starts = torch.arange(n_kb, device=kv_len.device) * block_size
    return starts[None, :] < kv_len[:, None].to(starts.dtype)


def _threshold_tensor(threshold: float | torch.Tensor, H: int, device) -> torch.Tensor:
    thr = torch.as_tensor(threshold, dtype=torch.float64, device=device)
    if thr.ndim == 0:
        return thr.view(1, 1, 1, 1)
    return thr.view(1, H, 1, 1)


def select_blocks(
    scores: torch.Tensor,
    *,
    block_size: int,
    threshold: float | torch.Tensor | None = None,
    ratio: float | None = None,
    kv_len: torch.Tensor | None = None,
    n_k: int | None = None,
    force_rows: torch.Tensor | None = None,
    force_cols: torch.Tensor | None = None,
    max_density: float | None = None,
    min_blocks: int = 1,
) -> torch.Tensor:
    """Choose key blocks per query-block row.

    scores: (B, H, Nbq, Nbk) non-negative block mass (from the estimate); exactly one of
    ``threshold`` (float or (H,) tensor, in (0, 1]) and ``ratio`` (in (0, 1]) is given.
    kv_len: (B,) int valid key length in tokens (default: ``n_k`` or ``Nbk * block_size``).
    force_rows: (B, Nbq) bool, rows kept dense; force_cols: (B, Nbk) bool, columns always kept.
    max_density: optional budget in (0, 1] (see the module docstring); min_blocks: blocks per
    row always kept under a budget (>= 1).
    Returns mask: (B, H, Nbq, Nbk) bool, never selecting blocks without valid keys.
    """
    if max_density is not None and not (0.0 < float(max_density) <= 1.0):
        raise ValueError(f"max_density must be in (0, 1], got {max_density}")
    if int(min_blocks) < 1:
        raise ValueError(f"min_blocks must be >= 1, got {min_blocks}")
    B, H, nbq, nbk = scores.shape
    lens = kv_len_tensor(kv_len, B, n_k if n_k is not None else nbk * block_size, scores.device)
    valid = valid_key_blocks(lens, nbk, block_size)[:, None, None, :]  # (B,1,1,Nbk)
    scores = scores.masked_fill(~valid, 0.0)

    if threshold is not None and ratio is None:
        # a Python threshold stays a Python number: no tensor, no host read (CUDA graphs)
        scalar = isinstance(threshold, (int, float))
        # float(): NumPy's float64 is a float whose comparisons give np.bool_, which a bool
        # tensor's | refuses
        thr = float(threshold) if scalar else _threshold_tensor(threshold, H, scores.device)
        if scalar and threshold >= 1.0:
            mask = valid.expand(B, H, nbq, nbk).clone()
        else:
            sorted_scores, order = torch.sort(scores, dim=-1, descending=True, stable=True)
            csum = sorted_scores.double().cumsum(dim=-1)
            before = csum - sorted_scores.double()  # mass ranked strictly before each block
            keep_sorted = (before < thr * csum[..., -1:]) | (thr >= 1.0)
            keep_sorted[..., 0] = True  # the top block, even in a degenerate all-zero row
            mask = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
    elif ratio is not None and threshold is None:
        n_valid = valid.sum(dim=-1, keepdim=True)  # (B,1,1,1)
        n_keep = torch.clamp(torch.ceil(ratio * n_valid.double() - RATIO_SLACK).long(), min=1)
        order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
        rank_ok = torch.arange(nbk, device=scores.device).view(1, 1, 1, nbk) < n_keep
        mask = torch.zeros_like(rank_ok.expand(B, H, nbq, nbk)).scatter_(
            -1, order, rank_ok.expand(B, H, nbq, nbk)
        )
    else:
        raise ValueError("select_blocks: give exactly one of `threshold` and `ratio`")

    forced = torch.zeros(B, 1, nbq, nbk, dtype=torch.bool, device=scores.device)
    if force_rows is not None:
        forced = forced | force_rows[:, None, :, None]
    if force_cols is not None:
        forced = forced | force_cols[:, None, None, :]
    if max_density is not None:
        mask = _apply_budget(scores, mask, forced & valid, valid, float(max_density), min_blocks)
    return (mask | forced) & valid


def _apply_budget(
    scores: torch.Tensor,
    mask: torch.Tensor,
    forced: torch.Tensor,
    valid: torch.Tensor,
    max_density: float,
    min_blocks: int,
) -> torch.Tensor:
    """Cut ``mask`` (B, H, Nbq, Nbk) to the per-sample budget; see the module docstring.

    Priority per block: 3 forced, 2 + share for the row's top ``min_blocks``, the share of the
    row's mass for the other chosen blocks, -1 for blocks not chosen. Kept: the top
    ``budget[b]`` of sample b by priority (stable: ties in (h, i, j) order), and every block of
    priority >= 2. No host sync.
    """
    B, H, nbq, nbk = mask.shape
    s = scores.double()
    share = s / s.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    top = torch.zeros_like(mask).scatter_(-1, order[..., : min(min_blocks, nbk)], True) & valid
    prio = torch.where(mask & valid, share, torch.full_like(share, -1.0))
    prio = torch.where(top, 2.0 + share, prio)
    prio = torch.where(forced.expand_as(prio), torch.full_like(share, 3.0), prio)
    n_pairs = valid.sum(dim=-1).view(B).double() * (H * nbq)
    budget = torch.floor(n_pairs * max_density + 1e-9).long()  # (B,)
    flat = prio.reshape(B, -1)
    ranked, idx = torch.sort(flat, dim=-1, descending=True, stable=True)
    rank = torch.arange(flat.shape[-1], device=flat.device)[None, :]
    keep_sorted = ((rank < budget[:, None]) & (ranked >= 0)) | (ranked >= 2.0)
    keep = torch.zeros_like(keep_sorted).scatter_(-1, idx, keep_sorted)
    return keep.view(B, H, nbq, nbk)


def select_blocks_ref(
    scores: torch.Tensor,
    *,
    block_size: int,
    threshold: float | None = None,
    ratio: float | None = None,
    kv_len: torch.Tensor | None = None,
    force_rows: torch.Tensor | None = None,
    force_cols: torch.Tensor | None = None,
    max_density: float | None = None,
    min_blocks: int = 1,
) -> torch.Tensor:
    """Per-row Python reference of :func:`select_blocks` (scalar threshold only; slow)."""
    B, H, nbq, nbk = scores.shape
    lens = kv_len_tensor(kv_len, B, nbk * block_size, torch.device("cpu")).tolist()
    mask = torch.zeros(B, H, nbq, nbk, dtype=torch.bool)
    for b in range(B):
        valid = [j for j in range(nbk) if j * block_size < lens[b]]
        for h in range(H):
            for i in range(nbq):
                row = {j: float(scores[b, h, i, j]) for j in valid}
                ranked = sorted(valid, key=lambda j: (-row[j], j))
                if threshold is not None:
                    target = threshold * sum(row.values())
                    taken = 0.0
                    for rank, j in enumerate(ranked):
                        if threshold >= 1.0 or rank == 0 or taken < target:
                            mask[b, h, i, j] = True
                        taken += row[j]
                else:
                    for j in ranked[: max(1, math.ceil(ratio * len(valid) - RATIO_SLACK))]:
                        mask[b, h, i, j] = True
                if force_rows is not None and bool(force_rows[b, i]):
                    mask[b, h, i, valid] = True
                for j in valid:
                    if force_cols is not None and bool(force_cols[b, j]):
                        mask[b, h, i, j] = True
        if max_density is not None:
            _budget_ref(scores[b], mask[b], valid, force_rows, force_cols, b, max_density,
                        min_blocks)  # fmt: skip
    return mask


def _budget_ref(scores, mask, valid, force_rows, force_cols, b, max_density, min_blocks):
    """In-place budget cut of one sample's mask (H, Nbq, Nbk), as a plain sorted list."""
    H, nbq, _ = mask.shape
    entries = []  # (priority, flat index, (h, i, j))
    for h in range(H):
        for i in range(nbq):
            row = {j: float(scores[h, i, j]) for j in valid}
            total = sum(row.values())
            top = sorted(valid, key=lambda j: (-row[j], j))[:min_blocks]
            for j in valid:
                share = row[j] / total if total > 0 else 0.0
                forced = (force_rows is not None and bool(force_rows[b, i])) or (
                    force_cols is not None and bool(force_cols[b, j])
                )
                if forced:
                    prio = 3.0
                elif j in top:
                    prio = 2.0 + share
                elif bool(mask[h, i, j]):
                    prio = share
                else:
                    continue
                entries.append((prio, (h * nbq + i) * scores.shape[-1] + j, (h, i, j)))
    budget = math.floor(max_density * H * nbq * len(valid) + 1e-9)
    entries.sort(key=lambda e: (-e[0], e[1]))
    mask.zero_()
    for rank, (prio, _, (h, i, j)) in enumerate(entries):
        if rank < budget or prio >= 2.0:
            mask[h, i, j] = True


def mask_to_indices(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR-style lists of a block mask, without a host sync.

    mask: (B, H, Nbq, Nbk) bool. Returns counts: (B, H, Nbq) int32 and indices:
    (B, H, Nbq, Nbk) int32 whose first ``counts[b, h, i]`` entries are the selected key-block
    indices in ascending order (the rest is padding with the value Nbk).
    """
    nbk = mask.shape[-1]
    cols = torch.arange(nbk, device=mask.device, dtype=torch.int32)
    keyed = torch.where(mask, cols, torch.full_like(cols, nbk))
    indices = torch.sort(keyed, dim=-1).values
    counts = mask.sum(dim=-1, dtype=torch.int32)
    return counts, indices.contiguous()


def block_counts(n_tokens: int, block_size: int) -> int:
    """Number of blocks covering ``n_tokens`` (the last one may be partial)."""
    return cdiv(n_tokens, block_size)
