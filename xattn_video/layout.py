"""Token orders for the video part of the sequence: raster, 3-D tiles, a 3-D Hilbert curve, and
per-head key/query clusters.

Video DiTs flatten the latent grid (T, H, W) t-major ("raster"). A 1-D block of 128 raster
tokens is a thin strip of one or two rows; the other orders make each block more coherent, so
the block mask follows the attention pattern more closely:

- ``tile``: each run of ``tt*th*tw`` tokens is a compact space-time cube. Tiles are taken in
  raster order over the tile grid, tokens in raster order inside each tile; when a tile size
  does not divide the grid, the edge tiles are simply smaller (no padding tokens are added).
- ``hilbert``: tokens sorted by their index on a 3-D Hilbert curve over the smallest
  power-of-two cube holding the grid (Skilling's transpose algorithm, vectorised). Any grid
  size works, odd ones included: cells of the cube outside the grid are skipped, so on
  non-power-of-two grids the curve occasionally jumps.
- ``cluster`` (content-aware, SVG2's semantic permutation): per (sample, head) a few k-means
  iterations on the token vectors (keys for the key order, queries for the query order), the
  centroids initialised from consecutive chunks of a spatial base order (``tile``), then tokens
  sorted by cluster, ties in base order. Computed from the activations, so once per call (or
  reused with the block mask); its cost belongs in the attention timings.

Every function returns ``perm`` with ``x_ordered = x[..., perm, :]``; ``inverse_permutation``
undoes it. Permutations are (N,) for the grid orders and (B, H, N) for the per-head ones.

Not supported: layouts other than a (T, H, W) grid flattened t-major; tokens interleaved from
several ranks (undo a sequence-parallel layout first); clustering with different permutations
for queries and keys of different lengths (cross-attention).
"""

from __future__ import annotations

import torch


def _check_grid(grid: tuple[int, int, int]) -> tuple[int, int, int]:
    if len(grid) != 3 or min(int(g) for g in grid) < 1:
        raise ValueError(f"grid must be 3 positive ints (T, H, W), got {grid}")
    return tuple(int(g) for g in grid)  # type: ignore[return-value]


def tile_permutation(
    grid: tuple[int, int, int], tile: tuple[int, int, int], device=None
) -> torch.Tensor:
    """perm: (T*H*W,) int64 such that ``x_tiled = x_raster[..., perm, :]``.

    grid: latent token grid (T, H, W); tile: (tt, th, tw) tile extent, each >= 1.
    """
    if len(grid) != 3 or len(tile) != 3 or min(grid) < 1 or min(tile) < 1:
        raise ValueError(f"grid and tile must be 3 positive ints, got grid={grid} tile={tile}")
    T, H, W = grid
    tt, th, tw = tile
    t, h, w = torch.meshgrid(
        torch.arange(T, device=device),
        torch.arange(H, device=device),
        torch.arange(W, device=device),
        indexing="ij",
    )
    n_th, n_tw = -(-H // th), -(-W // tw)
    tile_id = ((t // tt) * n_th + h // th) * n_tw + w // tw
    inner = ((t % tt) * th + h % th) * tw + w % tw
    key = tile_id * (tt * th * tw) + inner
    return torch.argsort(key.reshape(-1), stable=True)


def hilbert_index(coords: torch.Tensor, bits: int) -> torch.Tensor:
    """Index of each point on the Hilbert curve through the cube [0, 2**bits)^n.

    coords: (P, n) non-negative int64, each < 2**bits. Returns (P,) int64 (n * bits <= 62).
    Consecutive indices are neighbours (one unit step along one axis).
    """
    P, n = coords.shape
    if bits < 1 or n * bits > 62:
        raise ValueError(f"bits must be in [1, {62 // max(n, 1)}] for {n} dims, got {bits}")
    x = [coords[:, i].clone().long() for i in range(n)]
    # Skilling (2004), AxestoTranspose: undo the excess work, then Gray-encode.
    q = 1 << (bits - 1)
    while q > 1:
        p = q - 1
        for i in range(n):
            hit = (x[i] & q) != 0
            x0_inv = x[0] ^ p
            t = (x[0] ^ x[i]) & p
            new_x0 = torch.where(hit, x0_inv, x[0] ^ t)
            if i > 0:
                x[i] = torch.where(hit, x[i], x[i] ^ t)
            x[0] = new_x0
        q >>= 1
    for i in range(1, n):
        x[i] = x[i] ^ x[i - 1]
    t = torch.zeros_like(x[0])
    q = 1 << (bits - 1)
    while q > 1:
        t = torch.where((x[n - 1] & q) != 0, t ^ (q - 1), t)
        q >>= 1
    x = [xi ^ t for xi in x]
    index = torch.zeros_like(x[0])
    for b in range(bits - 1, -1, -1):
        for i in range(n):
            index = (index << 1) | ((x[i] >> b) & 1)
    return index


def hilbert_permutation(grid: tuple[int, int, int], device=None) -> torch.Tensor:
    """perm: (T*H*W,) int64, the raster tokens of ``grid`` in 3-D Hilbert-curve order.

    The curve runs through the smallest power-of-two cube holding (T, H, W); grid cells are
    sorted by their curve index, so any grid size (odd ones included) gives a permutation.
    """
    T, H, W = _check_grid(grid)
    bits = max(1, (max(T, H, W) - 1).bit_length())
    t, h, w = torch.meshgrid(
        torch.arange(T, device=device),
        torch.arange(H, device=device),
        torch.arange(W, device=device),
        indexing="ij",
    )
    coords = torch.stack([t.reshape(-1), h.reshape(-1), w.reshape(-1)], dim=1)
    return torch.argsort(hilbert_index(coords, bits), stable=True)


def grid_permutation(
    order: str, grid: tuple[int, int, int], tile: tuple[int, int, int] = (2, 8, 8), device=None
) -> torch.Tensor:
    """perm (T*H*W,) int64 of a grid order: ``raster`` (identity), ``tile`` or ``hilbert``."""
    n = _check_grid(grid)
    if order == "raster":
        return torch.arange(n[0] * n[1] * n[2], device=device)
    if order == "tile":
        return tile_permutation(grid, tile, device=device)
    if order == "hilbert":
        return hilbert_permutation(grid, device=device)
    raise ValueError(f"order must be one of 'raster', 'tile', 'hilbert', got {order!r}")


CLUSTER_ITERS = 2
"""k-means iterations of the ``cluster`` order (SVG2 warm-starts 2 per step; the processors start
from the tile order every call)."""


def cluster_permutation(
    x: torch.Tensor,
    n_clusters: int,
    *,
    iters: int = 2,
    base: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-head content-aware order: tokens grouped by k-means cluster of their vectors.

    x: (B, H, N, D) token vectors (keys or queries); n_clusters: 1..N; iters: k-means
    iterations (>= 0; 0 keeps the initial chunks, i.e. ``base`` order); base: (N,) int64 base
    order whose consecutive chunks initialise the centroids and which breaks ties (default:
    identity). Returns perm: (B, H, N) int64. Deterministic (no random initialisation).
    """
    if x.ndim != 4:
        raise ValueError(f"x must have rank 4 (B, H, N, D), got shape {tuple(x.shape)}")
    B, H, N, D = x.shape
    if not (1 <= int(n_clusters) <= N):
        raise ValueError(f"n_clusters must be in [1, {N}], got {n_clusters}")
    if int(iters) < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    C = int(n_clusters)
    dev = x.device
    if base is None:
        base = torch.arange(N, device=dev)
    elif base.shape != (N,):
        raise ValueError(f"base must be a ({N},) permutation, got shape {tuple(base.shape)}")
    base = base.to(dev)
    rank = inverse_permutation(base)  # token -> position in the base order
    xf = x.float()
    # initial assignment: the c-th chunk of the base order is cluster c (sizes differ by <= 1)
    assign = (rank * C // N).view(1, 1, N).expand(B, H, N).contiguous()
    chunk = max(1, (1 << 26) // max(1, B * H * C))
    for _ in range(int(iters)):
        sums = torch.zeros(B, H, C, D, device=dev, dtype=torch.float32)
        sums.scatter_add_(2, assign[..., None].expand(B, H, N, D), xf)
        counts = torch.zeros(B, H, C, device=dev, dtype=torch.float32)
        counts.scatter_add_(2, assign, torch.ones_like(assign, dtype=torch.float32))
        cent = sums / counts.clamp(min=1.0)[..., None]  # empty clusters: never nearest below
        cnorm = (cent * cent).sum(-1)  # (B, H, C)
        cnorm = torch.where(counts > 0, cnorm, torch.full_like(cnorm, float("inf")))
        new = torch.empty_like(assign)
        for s in range(0, N, chunk):
            e = min(N, s + chunk)
            # argmin ||x - c||^2 = argmin (||c||^2 - 2 x.c)
            d = cnorm[:, :, None, :] - 2.0 * torch.einsum("bhnd,bhcd->bhnc", xf[:, :, s:e], cent)
            new[:, :, s:e] = d.argmin(dim=-1)
        assign = new
    key = assign * N + rank.view(1, 1, N)
    return torch.argsort(key, dim=-1, stable=True)


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """inv such that ``x[..., perm, :][..., inv, :] == x``; perm (N,) or batched (..., N)."""
    inv = torch.empty_like(perm)
    if perm.ndim == 1:
        inv[perm] = torch.arange(perm.numel(), device=perm.device)
        return inv
    ar = torch.arange(perm.shape[-1], device=perm.device).expand_as(perm)
    return inv.scatter_(-1, perm, ar)


def permute_tokens(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """x: (B, H, N, D) reordered along N by perm: (N,) (all heads) or (B, H, N) (per head)."""
    if perm.ndim == 1:
        return x.index_select(2, perm)
    if perm.shape != x.shape[:3]:
        raise ValueError(f"perm must be (N,) or {tuple(x.shape[:3])}, got {tuple(perm.shape)}")
    return torch.gather(x, 2, perm[..., None].expand(x.shape))


def extend_permutation(perm: torch.Tensor, n_total: int) -> torch.Tensor:
    """perm over the first P tokens -> perm over ``n_total`` tokens (the tail keeps its place).

    perm: (P,) or (B, H, P) int64; returns (n_total,) or (B, H, n_total).
    """
    P = perm.shape[-1]
    if n_total < P:
        raise ValueError(f"n_total ({n_total}) must be >= the permuted length ({P})")
    if n_total == P:
        return perm
    tail = torch.arange(P, n_total, device=perm.device, dtype=perm.dtype)
    tail = tail.expand(*perm.shape[:-1], n_total - P)
    return torch.cat([perm, tail], dim=-1)
