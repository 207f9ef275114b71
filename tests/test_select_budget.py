"""Budgeted selection (``max_density``): the budget caps the density exactly, the per-row minimum
and forced blocks survive it, it only removes blocks the mode chose, and it matches the plain
Python reference."""

import math

import pytest
import torch

from xattn_video.kernels.select import select_blocks, select_blocks_ref, valid_key_blocks


def _scores(B, H, nb, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, H, nb, nb, generator=g) ** 4  # skewed rows, like attention


def _n_pairs(B, H, nbq, kv_len, nbk, bs):
    return valid_key_blocks(kv_len, nbk, bs).sum(-1) * H * nbq  # (B,)


@pytest.mark.parametrize("max_density", [0.05, 0.3, 0.37, 0.5])
def test_budget_caps_density_exactly(max_density):
    B, H, nb, bs = 2, 3, 12, 16
    kv_len = torch.tensor([nb * bs, 7 * bs + 3])
    scores = _scores(B, H, nb)
    mask = select_blocks(scores, block_size=bs, threshold=0.99, kv_len=kv_len,
                         max_density=max_density)  # fmt: skip
    free = select_blocks(scores, block_size=bs, threshold=0.99, kv_len=kv_len)
    pairs = _n_pairs(B, H, nb, kv_len, nb, bs)
    for b in range(B):
        want = math.floor(max_density * int(pairs[b]))
        assert int(free[b].sum()) > want  # tau alone would exceed the budget ...
        assert int(mask[b].sum()) == max(want, H * nb)  # ... which caps it (>= 1 per row)
    assert bool((mask <= free).all())  # only blocks tau chose (each row's top is among them)


def test_budget_above_the_selection_changes_nothing():
    scores = _scores(1, 2, 10, seed=3)
    free = select_blocks(scores, block_size=16, threshold=0.6)
    density = float(free.float().mean())
    capped = select_blocks(scores, block_size=16, threshold=0.6, max_density=density + 0.01)
    assert torch.equal(capped, free)


def test_budget_keeps_the_per_row_minimum_and_forced_blocks():
    B, H, nb, bs = 1, 2, 8, 16
    scores = _scores(B, H, nb, seed=5)
    force_cols = torch.zeros(B, nb, dtype=torch.bool)
    force_cols[0, -1] = True
    mask = select_blocks(scores, block_size=bs, threshold=0.95, max_density=0.01, min_blocks=2,
                         force_cols=force_cols)  # fmt: skip
    top2 = scores.topk(2, dim=-1).indices
    assert bool(mask.gather(-1, top2).all())  # each row's 2 best blocks
    assert bool(mask[..., -1].all())  # the forced column
    extra = mask.clone()
    extra.scatter_(-1, top2, False)
    extra[..., -1] = False
    assert int(extra.sum()) == 0  # nothing else: the budget (2 pairs) is spent


def test_budget_prefers_blocks_holding_more_of_their_row():
    # row 0 is peaked (one block holds most of it), row 1 is flat: with room for 3 of the
    # blocks beyond each row's top one, the 2nd block of the peaked row (share 0.5/2.1)
    # loses to the flat row's blocks (share 1/4 each)
    scores = torch.tensor([[[[1.0, 0.5, 0.3, 0.3], [1.0, 1.0, 1.0, 1.0]]]])  # (1,1,2,4)
    mask = select_blocks(scores, block_size=16, threshold=1.0 - 1e-9, max_density=5 / 8)
    assert mask[0, 0].tolist() == [[True, False, False, False], [True, True, True, True]]


@pytest.mark.parametrize(
    "kw",
    [
        dict(threshold=0.9, max_density=0.3),
        dict(threshold=0.97, max_density=0.45, min_blocks=2),
        dict(ratio=0.8, max_density=0.25),
        dict(threshold=0.9, max_density=0.2, forced=True),
    ],
)
def test_budget_matches_reference(kw):
    kw = dict(kw)
    B, H, nb, bs = 2, 2, 9, 16
    kv_len = torch.tensor([nb * bs - 5, 5 * bs])
    scores = _scores(B, H, nb, seed=7)
    if kw.pop("forced", False):
        rows = torch.zeros(B, nb, dtype=torch.bool)
        rows[:, -1] = True
        kw.update(force_rows=rows, force_cols=rows.clone())
    got = select_blocks(scores, block_size=bs, kv_len=kv_len, **kw)
    ref = select_blocks_ref(scores, block_size=bs, kv_len=kv_len, **kw)
    assert torch.equal(got, ref)


def test_bad_budget_arguments_raise_naming_them():
    s = _scores(1, 1, 4)
    with pytest.raises(ValueError, match="max_density"):
        select_blocks(s, block_size=16, threshold=0.9, max_density=0.0)
    with pytest.raises(ValueError, match="max_density"):
        select_blocks(s, block_size=16, threshold=0.9, max_density=1.5)
    with pytest.raises(ValueError, match="min_blocks"):
        select_blocks(s, block_size=16, threshold=0.9, max_density=0.5, min_blocks=0)
