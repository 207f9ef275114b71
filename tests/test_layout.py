"""Token orders: every order is a permutation whose inverse restores the sequence exactly (odd
grids included); the Hilbert curve is a curve (unit steps) on power-of-two cubes; clustering
groups tokens by content."""

import pytest
import torch

from xattn_video.layout import (
    cluster_permutation,
    extend_permutation,
    grid_permutation,
    hilbert_index,
    hilbert_permutation,
    inverse_permutation,
    permute_tokens,
    tile_permutation,
)

GRIDS = [(1, 1, 1), (3, 5, 7), (5, 16, 16), (17, 9, 4), (2, 3, 1), (4, 4, 4)]


def _is_perm(p: torch.Tensor, n: int) -> bool:
    return bool(torch.equal(torch.sort(p, dim=-1).values, torch.arange(n).expand_as(p)))


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("order", ["raster", "tile", "hilbert"])
def test_grid_orders_are_permutations_with_exact_inverse(grid, order):
    n = grid[0] * grid[1] * grid[2]
    perm = grid_permutation(order, grid, tile=(2, 2, 3))
    assert perm.shape == (n,) and perm.dtype == torch.int64 and _is_perm(perm, n)
    x = torch.randn(2, 3, n, 5)
    y = permute_tokens(x, perm)
    assert torch.equal(permute_tokens(y, inverse_permutation(perm)), x)


@pytest.mark.parametrize("bits", [1, 2, 3])
@pytest.mark.parametrize("dims", [2, 3])
def test_hilbert_index_visits_a_power_of_two_cube_in_unit_steps(bits, dims):
    side = 1 << bits
    coords = torch.cartesian_prod(*[torch.arange(side)] * dims).reshape(-1, dims)
    idx = hilbert_index(coords, bits)
    assert torch.equal(torch.sort(idx).values, torch.arange(side**dims))  # a bijection
    path = coords[torch.argsort(idx)]
    steps = (path[1:] - path[:-1]).abs().sum(-1)
    assert torch.equal(steps, torch.ones_like(steps))  # neighbours only: a curve


def test_hilbert_blocks_are_more_compact_than_raster():
    grid = (8, 16, 16)
    coords = torch.cartesian_prod(*[torch.arange(g) for g in grid])

    def mean_extent(perm):  # mean bounding-box volume of blocks of 64 consecutive tokens
        c = coords[perm].view(-1, 64, 3)
        ext = (c.max(1).values - c.min(1).values + 1).prod(-1).float()
        return float(ext.mean())

    assert mean_extent(hilbert_permutation(grid)) == 64.0  # 4x4x4 cubes on a 2^k grid
    assert mean_extent(torch.arange(8 * 16 * 16)) == 4 * 16.0


def test_tile_order_matches_hand_example():
    # grid (1, 2, 4), tiles (1, 2, 2): two 2x2 tiles, each in raster order inside
    assert tile_permutation((1, 2, 4), (1, 2, 2)).tolist() == [0, 1, 4, 5, 2, 3, 6, 7]
    # tiles that don't divide the grid: the edge tiles are smaller, never merged with others
    # (tile counts rounded down mixed them, still a permutation, so nothing else failed)
    assert tile_permutation((1, 3, 4), (1, 4, 3)).tolist() == [0, 1, 2, 4, 5, 6, 8, 9, 10, 3, 7, 11]
    assert tile_permutation((1, 4, 3), (1, 2, 2)).tolist() == [0, 1, 3, 4, 2, 5, 6, 7, 9, 10, 8, 11]
    assert tile_permutation((3, 1, 2), (2, 1, 1)).tolist() == [0, 2, 1, 3, 4, 5]


@pytest.mark.parametrize("grid", [(3, 5, 6), (17, 9, 4), (2, 3, 5)])
def test_hilbert_order_of_any_grid_is_the_enclosing_cubes_curve(grid):
    """Cells in the order of the smallest power-of-two cube's curve that holds the grid; a cube
    one bit too small wrapped coordinates onto others, still a permutation."""
    side = 1 << max(1, (max(grid) - 1).bit_length())
    cube = torch.cartesian_prod(*[torch.arange(side)] * 3)
    rank = torch.empty(side**3, dtype=torch.long)
    rank[torch.argsort(hilbert_index(cube, side.bit_length() - 1))] = torch.arange(side**3)
    inside = (cube < torch.tensor(grid)).all(-1)
    cells = cube[inside]  # raster order of the grid
    want = torch.argsort(rank[inside])
    assert torch.equal(hilbert_permutation(grid), want)
    assert torch.equal(cells[want][0], torch.zeros(3, dtype=torch.long))  # the curve's start


@pytest.mark.parametrize("shape", [(1, 1, 7, 3), (2, 3, 50, 8), (1, 2, 33, 4)])
@pytest.mark.parametrize("iters", [0, 1, 3])
def test_cluster_order_is_a_per_head_permutation_with_exact_inverse(shape, iters):
    B, H, N, D = shape
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(N))
    base = torch.randperm(N, generator=torch.Generator().manual_seed(1))
    perm = cluster_permutation(x, n_clusters=max(1, N // 5), iters=iters, base=base)
    assert perm.shape == (B, H, N) and _is_perm(perm, N)
    inv = inverse_permutation(perm)
    assert torch.equal(permute_tokens(permute_tokens(x, perm), inv), x)
    if iters == 0:  # no iteration: the initial chunks of the base order, i.e. the base order
        assert torch.equal(perm, base.expand(B, H, N))


def test_cluster_order_groups_tokens_by_content():
    # two well separated groups of keys, interleaved in the sequence: after clustering, each
    # half of the order holds exactly one group, the ties kept in base (sequence) order
    N, D = 40, 4
    centers = torch.tensor([[5.0, 0, 0, 0], [-5.0, 0, 0, 0]])
    labels = torch.arange(N) % 2
    x = centers[labels] + 0.1 * torch.randn(N, D, generator=torch.Generator().manual_seed(0))
    perm = cluster_permutation(x.view(1, 1, N, D), n_clusters=2, iters=2)[0, 0]
    assert len(set(labels[perm[: N // 2]].tolist())) == 1
    first = perm[: N // 2]
    assert torch.equal(first, torch.sort(first).values)


def test_extend_permutation_keeps_the_tail_in_place():
    perm = torch.tensor([2, 0, 1])
    assert extend_permutation(perm, 5).tolist() == [2, 0, 1, 3, 4]
    batched = extend_permutation(perm.expand(2, 1, 3), 4)
    assert batched.shape == (2, 1, 4) and batched[1, 0].tolist() == [2, 0, 1, 3]
    with pytest.raises(ValueError, match="n_total"):
        extend_permutation(perm, 2)


def test_bad_arguments_raise_naming_them():
    with pytest.raises(ValueError, match="grid"):
        hilbert_permutation((0, 2, 2))
    with pytest.raises(ValueError, match="order"):
        grid_permutation("spiral", (1, 2, 2))
    with pytest.raises(ValueError, match="n_clusters"):
        cluster_permutation(torch.zeros(1, 1, 4, 2), n_clusters=5)
    with pytest.raises(ValueError, match="perm"):
        permute_tokens(torch.zeros(1, 2, 4, 2), torch.zeros(1, 1, 4, dtype=torch.long))
