"""The fp8 fixed-cost probe (benchmarks/probe_fp8_fixed_costs.py) on CPU: the block lists it
times are exactly the layouts it names, and what it runs."""

import pytest
import torch

from ._benchmarks import load_benchmark


def _probe():
    return load_benchmark("probe_fp8_fixed_costs")


@pytest.mark.parametrize("which", [0, 1, 2])
def test_lists_hold_n_distinct_ascending_blocks_padded_with_nb(which):
    probe = _probe()
    layout = probe.LAYOUTS[which]  # random, one set per head, bands
    heads, nb, n_sel = 3, 10, 4
    counts, idx = probe.block_lists(layout, heads, nb, n_sel, seed=5)
    assert counts.dtype == idx.dtype == torch.int32
    assert counts.shape == (1, heads, nb) and idx.shape == (1, heads, nb, nb)
    assert torch.equal(counts, torch.full_like(counts, n_sel))
    assert torch.equal(idx[..., n_sel:], torch.full_like(idx[..., n_sel:], nb))
    sel = idx[..., :n_sel]
    assert bool((sel[..., 1:] > sel[..., :-1]).all()) and bool((sel >= 0).all())
    assert bool((sel < nb).all())
    if which == 1:  # one set per head, the same for every query block
        assert torch.equal(sel, sel[:, :, :1].expand_as(sel))
        assert not torch.equal(sel[0, 0], sel[0, 1])  # heads differ (seeded)
    elif which == 2:  # query block qb lists qb, qb + 1, ... modulo nb
        want = torch.tensor([sorted((qb + j) % nb for j in range(n_sel)) for qb in range(nb)])
        assert torch.equal(sel[0, 0].long(), want) and torch.equal(sel[0, 2].long(), want)
    else:  # each query block its own set
        assert len({tuple(r.tolist()) for r in sel[0, 0]}) > 1


def test_random_lists_repeat_with_the_seed_and_take_all_blocks_at_full_density():
    probe = _probe()
    a = probe.block_lists("random", 2, 8, 3, seed=1)[1]
    assert torch.equal(a, probe.block_lists("random", 2, 8, 3, seed=1)[1])
    assert not torch.equal(a, probe.block_lists("random", 2, 8, 3, seed=2)[1])
    full = probe.block_lists("random", 2, 8, 8)[1]
    assert torch.equal(full, torch.arange(8, dtype=torch.int32).expand(1, 2, 8, 8))
    empty_counts, empty = probe.block_lists("band", 2, 8, 0)
    assert int(empty_counts.sum()) == 0 and bool((empty == 8).all())


def test_bad_layouts_and_lengths_are_refused():
    probe = _probe()
    with pytest.raises(ValueError, match="layout"):
        probe.block_lists("diagonal", 1, 4, 2)
    with pytest.raises(ValueError, match="n_sel"):
        probe.block_lists("random", 1, 4, 5)


def test_cases_cover_empty_short_and_density_lists_then_layouts_then_bf16():
    probe = _probe()
    nb = 931  # 119,056 tokens
    rand, per_head, band = probe.LAYOUTS
    assert probe.cases(nb) == [
        ("fp8", rand, 0), ("fp8", rand, 2), ("fp8", rand, 8),
        ("fp8", rand, 47), ("fp8", rand, 93), ("fp8", rand, 279),
        ("fp8", rand, 931), ("fp8", per_head, 93), ("fp8", band, 93),
        ("bf16", rand, 0), ("bf16", rand, 93), ("bf16", rand, 931),
    ]  # fmt: skip
    assert rand == "random" and band == "band"
