"""Token orders for the video part of the sequence: raster (as the model emits it) and 3-D tiles.

Video DiTs flatten the latent grid (T, H, W) t-major ("raster"). A 1-D block of 128 raster
tokens is a thin strip of one or two rows; in ``tile`` order each run of ``tt*th*tw`` tokens is
a compact space-time cube, so a block covers a local neighbourhood and the block mask follows
the attention pattern more closely. Tiles are taken in raster order over the tile grid, tokens
in raster order inside each tile; when a tile size does not divide the grid, the edge tiles
are simply smaller (no padding tokens are added).

Not supported: layouts other than a (T, H, W) grid flattened t-major; tokens interleaved from
several ranks (undo a sequence-parallel layout first).
"""

from __future__ import annotations

import torch


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


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """inv such that ``x[..., perm, :][..., inv, :] == x``."""
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device)
    return inv
