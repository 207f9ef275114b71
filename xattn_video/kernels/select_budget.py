"""The budget cut of the fused selection (``max_density``) as a radix select: no sort.

:func:`.select_fused.select_blocks_fused` writes each block's priority (3 forced, 2 + share for
a row's top ``min_blocks``, the share of its row's mass for the other chosen blocks, -1 for the
rest); the rule of :func:`.select.select_blocks` then keeps, per sample, every priority >= 2
and the ``budget`` best ranked by (priority descending, flat (h, i, j) index ascending). The
torch code ranks all ``H * Nbq * Nbk`` pairs of a sample with one stable sort (20.8 M at
HunyuanVideo 720p: ~3 ms on an H200). Here the cut is found instead: with ``hi`` the count of
priorities >= 2 and ``k = budget - hi``, the ``k``-th largest priority in [0, 2) (its float64
bit pattern, which orders non-negative doubles) is built 8 bits at a time, high bits first,
from a histogram of the candidates that match the bits chosen so far (8 passes of two small
kernels: a histogram, then a one-program pick of the digit); then the blocks above it are kept, and of those
equal to it the first ones in flat order (a per-tile count and its prefix sum), as many as the
budget has left. Same keep set as the torch code, exactly: no sums are involved.

Not supported: priorities outside {-1} u [0, 3] (the selection writes no others); budgets
shared across samples (one per sample, as :func:`.select.select_blocks`).
"""

from __future__ import annotations

import torch

from ._common import HAS_TRITON, cdiv

if HAS_TRITON:
    import triton
    import triton.language as tl

RADIX_BITS = 8
"""Bits of the cut found per pass (a histogram of 2^8 bins): 8 passes cover a double's 64."""

TILE = 4096
"""Priorities per program of the histogram, tie-count and keep kernels."""

# the state per sample, 5 int64: the counts of priorities >= 2 and in [0, 2), the cut's bits so
# far, how many of the candidates that match them are still to keep, and a done flag (the
# budget keeps none or all of the candidates: no cut to find)
_STATE = 5

if HAS_TRITON:

    @triton.jit
    def _candidates(PRIO, b, L, t, TILE: tl.constexpr):
        r = t * TILE + tl.arange(0, TILE)
        inside = r < L
        p = tl.load(PRIO + b * L + r, mask=inside, other=-1.0)
        cand = inside & (p >= 0.0) & (p < 2.0)
        return r, inside, p, cand, p.to(tl.int64, bitcast=True)

    @triton.jit
    def _hist_kernel(PRIO, HIST, STATE, L, SHIFT: tl.constexpr, FIRST: tl.constexpr,
                     BITS: tl.constexpr, TILE: tl.constexpr):  # fmt: skip
        t = tl.program_id(0)
        b = tl.program_id(1)
        _, inside, p, cand, bits = _candidates(PRIO, b, L, t, TILE)
        BINS: tl.constexpr = 1 << BITS
        if FIRST:  # the counts, with the first digit's histogram
            n_hi = tl.sum((inside & (p >= 2.0)).to(tl.int64), 0)
            tl.atomic_add(STATE + b * 5 + 0, n_hi, sem="relaxed")
            tl.atomic_add(STATE + b * 5 + 1, tl.sum(cand.to(tl.int64), 0), sem="relaxed")
            match = cand
        else:
            prefix = tl.load(STATE + b * 5 + 2)
            match = cand & ((bits >> (SHIFT + BITS)) == (prefix >> (SHIFT + BITS)))
        digit = ((bits >> SHIFT) & (BINS - 1)).to(tl.int32)
        h = tl.histogram(tl.where(match, digit, BINS), 2 * BINS)  # the upper half: no match
        bins = tl.arange(0, 2 * BINS)
        # relaxed: the pick reads the sums in the next launch (kernel order is the fence)
        tl.atomic_add(HIST + b * BINS + bins, h, mask=bins < BINS, sem="relaxed")

    @triton.jit
    def _pick_kernel(HIST, STATE, KV_LEN, md_bits, H, NBQ, NBK, SHIFT: tl.constexpr,
                     FIRST: tl.constexpr, BITS: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
        b = tl.program_id(0)
        BINS: tl.constexpr = 1 << BITS
        s = STATE + b * 5
        if FIRST:  # k = budget - hi: none of the candidates, all of them, or a cut
            kvl = tl.load(KV_LEN + b)
            n_valid = tl.minimum((kvl + BLOCK - 1) // BLOCK, NBK).to(tl.float64)
            md = md_bits.to(tl.int64).to(tl.float64, bitcast=True)
            budget = tl.floor(n_valid * H * NBQ * md + 1e-9).to(tl.int64)
            k = budget - tl.load(s + 0)
            none = k <= 0
            every = k >= tl.load(s + 1)
            # keep none: the cut above every pattern; keep all: below them (bits > -1)
            top = tl.full([], 0x7FFFFFFFFFFFFFFF, tl.int64)
            prefix = tl.where(none, top, tl.where(every, top - top - 1, top - top))
            left = tl.where(none | every, 0, k)
            done = none | every
        else:
            prefix = tl.load(s + 2)
            left = tl.load(s + 3)
            done = tl.load(s + 4) != 0
        bins = tl.arange(0, BINS)
        h = tl.load(HIST + b * BINS + bins).to(tl.int64)
        tl.store(HIST + b * BINS + bins, tl.zeros([BINS], tl.int32))  # for the next pass
        upto = tl.sum(h, 0) - tl.cumsum(h, 0) + h  # matches with this digit or a higher one
        d = tl.max(tl.where(upto >= left, bins, -1), 0)  # >= 0 while not done
        above = tl.sum(tl.where(bins > d, h, 0), 0)
        tl.store(s + 2, tl.where(done, prefix, prefix | (d.to(tl.int64) << SHIFT)))
        tl.store(s + 3, tl.where(done, left, left - above))
        if FIRST:
            tl.store(s + 4, done.to(tl.int64))

    @triton.jit
    def _tie_count_kernel(PRIO, TIES, STATE, L, NT, TILE: tl.constexpr):
        t = tl.program_id(0)
        b = tl.program_id(1)
        _, _, _, cand, bits = _candidates(PRIO, b, L, t, TILE)
        tie = cand & (bits == tl.load(STATE + b * 5 + 2))
        tl.store(TIES + b * NT + t, tl.sum(tie.to(tl.int64), 0))

    @triton.jit
    def _keep_kernel(PRIO, MASK, TIES, STATE, L, NT, TILE: tl.constexpr):
        t = tl.program_id(0)
        b = tl.program_id(1)
        r, inside, p, cand, bits = _candidates(PRIO, b, L, t, TILE)
        cut = tl.load(STATE + b * 5 + 2)
        tie = cand & (bits == cut)
        # ties before this tile (the inclusive prefix sum of the counts, less this tile's own)
        rank = tl.load(TIES + b * NT + t) + tl.cumsum(tie.to(tl.int64), 0)
        ties_left = tl.load(STATE + b * 5 + 3)
        keep = (p >= 2.0) | (cand & (bits > cut)) | (tie & (rank <= ties_left))
        tl.store(MASK + b * L + r, keep.to(tl.int8), mask=inside)


def budget_keep(
    prio: torch.Tensor,
    mask: torch.Tensor,
    kv_len: torch.Tensor,
    *,
    max_density: float,
    block_size: int,
    f64_bits: int,
) -> None:
    """Write the budget's keep flags into ``mask`` (B, H, Nbq, Nbk) bool, contiguous, in place.

    prio: (B, H, Nbq, Nbk) float64, contiguous (the selection's priorities); kv_len: (B,) int;
    ``f64_bits``: ``max_density``'s IEEE bit pattern (Triton types float arguments fp32).
    """
    B, H, nbq, nbk = prio.shape
    n = H * nbq * nbk
    nt = cdiv(n, TILE)
    dev = prio.device
    bins = 1 << RADIX_BITS
    hist = torch.zeros((B, bins), dtype=torch.int32, device=dev)
    state = torch.zeros((B, _STATE), dtype=torch.int64, device=dev)
    ties = torch.empty((B, nt), dtype=torch.int64, device=dev)
    for n_pass in range(cdiv(64, RADIX_BITS)):
        shift = 64 - RADIX_BITS * (n_pass + 1)
        first = n_pass == 0
        _hist_kernel[(nt, B)](prio, hist, state, n, SHIFT=shift, FIRST=first, BITS=RADIX_BITS,
                              TILE=TILE)  # fmt: skip
        _pick_kernel[(B,)](hist, state, kv_len, f64_bits, H, nbq, nbk, SHIFT=shift,
                           FIRST=first, BITS=RADIX_BITS, BLOCK=block_size)  # fmt: skip
    _tie_count_kernel[(nt, B)](prio, ties, state, n, nt, TILE=TILE)
    before = torch.cumsum(ties, dim=1) - ties
    _keep_kernel[(nt, B)](prio, mask.view(torch.int8), before, state, n, nt, TILE=TILE)
