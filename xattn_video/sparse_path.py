"""The model-independent sparse path of the XAttention processors.

One attention call in the sparse phase, after the processor has built q/k/v [B, N, H, D]
(video tokens first, then any joint text):

1. token order: ``raster`` keeps the model's order; ``tile`` permutes the video prefix into
   3-D tiles of ``cfg.tile_size`` latent tokens (text stays at the end), undone afterwards;
2. mask reuse: with ``cfg.mask_refresh = r`` a block mask estimated for (attention module,
   CFG branch) serves the next r-1 sparse calls of the same pair (:class:`MaskCache`);
3. the op: :func:`xattn_video.attention.xattention` on (B, H, N, D) views;
4. stats: the call's block density in the controller's :class:`~xattn_video.stats.XAttentionStats`.

The per-run state it reads (``cfg``, ``stats``, ``run``, ``step``, ``branch``, ``grid`` and
the two caches) lives on the shared controller (:class:`xattn_video.hook.XAttentionController`,
typed here by the :class:`SparseState` protocol, so this module does not import the hook).

Not supported: gradients (the op is forward-only); token orders other than raster / tile;
per-layer thresholds (one ``cfg.threshold`` for every layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from . import attention as _attention
from .config import XAttentionConfig
from .layout import inverse_permutation, tile_permutation
from .stats import XAttentionStats, mask_density_tensor


@dataclass
class _MaskEntry:
    mask: torch.Tensor  # (B, H, Nbq, Nbk) bool
    kv_len: torch.Tensor | None  # (B,) int
    age: int  # sparse calls served since the estimate, counting the estimating call


class MaskCache:
    """Block masks per (attention module, branch) for ``mask_refresh > 1``.

    Memory: B * H * Nb^2 bytes per attention module and branch; nothing is kept when
    ``refresh == 1``. Cleared at every new sampling run.
    """

    def __init__(self, refresh: int) -> None:
        self.refresh = refresh
        self._entries: dict[tuple[int, str], _MaskEntry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def get(
        self,
        attn: torch.nn.Module,
        branch: str,
        shape: tuple[int, ...],
        kv_len: torch.Tensor | None,
    ) -> torch.Tensor | None:
        """The cached mask of (attn, branch) if it may serve this call, else None.

        A mask serves ``refresh - 1`` calls after the estimating one, and only calls with the
        same mask shape and the same key padding ``kv_len``.
        """
        if self.refresh <= 1:
            return None
        entry = self._entries.get((id(attn), branch))
        if entry is None or entry.age >= self.refresh or tuple(entry.mask.shape) != tuple(shape):
            return None
        if (entry.kv_len is None) != (kv_len is None) or (
            kv_len is not None and not torch.equal(entry.kv_len, kv_len)
        ):
            return None
        entry.age += 1
        return entry.mask

    def put(
        self, attn: torch.nn.Module, branch: str, mask: torch.Tensor, kv_len: torch.Tensor | None
    ) -> None:
        """Keep a freshly estimated mask (only when ``refresh > 1``)."""
        if self.refresh > 1:
            self._entries[(id(attn), branch)] = _MaskEntry(mask, kv_len, 1)


class TileOrders:
    """Cached ``tile`` permutations per (grid, length, device)."""

    def __init__(self, tile_size: tuple[int, int, int]) -> None:
        self.tile_size = tile_size
        self._perms: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def permutation(
        self,
        grid: tuple[int, int, int] | None,
        n_video: int,
        n_total: int,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(perm, inv), each (n_total,) int64: tile order for the ``n_video`` video tokens of the
        latent ``grid`` (T, H, W), identity for the ``n_total - n_video`` text tokens after them."""
        if grid is None or math.prod(grid) != n_video:
            raise ValueError(
                f"token_order='tile' needs the latent grid of the {n_video} video tokens, but the "
                f"step hook saw grid={grid}; attach the step hook (apply_xattention does) and use "
                "a model whose video tokens form one (T, H, W) grid, or use token_order='raster'"
            )
        key = (grid, n_total, str(device))
        if key not in self._perms:
            perm = tile_permutation(grid, self.tile_size, device=device)
            if n_total > n_video:
                tail = torch.arange(n_video, n_total, device=device, dtype=perm.dtype)
                perm = torch.cat([perm, tail])
            self._perms[key] = (perm, inverse_permutation(perm))
        return self._perms[key]


class SparseState(Protocol):
    """What the sparse path reads from the shared controller."""

    cfg: XAttentionConfig
    stats: XAttentionStats
    run: int
    step: int
    branch: str
    grid: tuple[int, int, int] | None
    masks: MaskCache
    orders: TileOrders
    auto_dense: Any  # xattn_video.auto_dense.AutoDense


def _cost_dense(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_len: torch.Tensor | None
) -> torch.Tensor:
    """Dense SDPA over the valid keys, what the stock processors compute. q/k/v: (B, H, N, D)."""
    mask = None
    if kv_len is not None:
        keys = torch.arange(k.shape[2], device=k.device)
        mask = (keys[None, :] < kv_len[:, None])[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def sparse_attention(
    state: SparseState,
    attn: torch.nn.Module,
    layer: int,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    n_video: int,
    kv_len: torch.Tensor | None,
    dense_from: int | None,
) -> torch.Tensor:
    """XAttention for one processor call; returns [B, N, H, D] in the input token order.

    query/key/value: [B, N, H, D], the first ``n_video`` tokens video; kv_len: (B,) int valid
    keys (None: all); dense_from: first token whose query row / key column stays dense (joint
    text), or None. attn: the attention module (keys the mask cache); layer: for the stats.
    """
    cfg = state.cfg
    q, k, v = (x.transpose(1, 2) for x in (query, key, value))  # (B, H, N, D) views
    if _attention.resolve_backend(cfg.backend, q) == "torch":
        # the PyTorch reference estimate reshapes with .view (needs contiguous inputs)
        q, k, v = (x.contiguous() for x in (q, k, v))
    B, H, N, _ = q.shape
    if state.auto_dense.run_dense(layer, q, _attention.resolve_backend(cfg.backend, q)):
        # auto_dense: the cost model predicts the sparse path slower here (a bool per layer)
        state.stats.add(layer, dense_reason="cost")
        return _cost_dense(q, k, v, kv_len).transpose(1, 2)
    inv = None
    if cfg.token_order == "tile":
        perm, inv = state.orders.permutation(state.grid, n_video, N, q.device)
        q, k, v = (x.index_select(2, perm) for x in (q, k, v))
    nb = -(-N // cfg.block_size)
    mask = state.masks.get(attn, state.branch, (B, H, nb, nb), kv_len)
    reused = mask is not None
    sel = (
        {"threshold": cfg.threshold, "ratio": None}
        if cfg.selection == "threshold"
        else {"threshold": None, "ratio": cfg.ratio}
    )
    out, mask = _attention.xattention(
        q,
        k,
        v,
        **sel,
        stride=cfg.stride,
        block_size=cfg.block_size,
        kv_len=kv_len,
        dense_from=dense_from,
        mask=mask,
        backend=cfg.backend,
        return_mask=True,
    )
    if not reused:
        state.masks.put(attn, state.branch, mask, kv_len)
    if state.stats.enabled or state.auto_dense.enabled:
        # a device tensor, stamped with (run, step, branch) by the step hook: no host read,
        # and no step number in a compiled graph
        heads = mask_density_tensor(mask, cfg.block_size, kv_len, N)
        state.stats.add(layer, heads=heads, reused=reused)
    if inv is not None:
        out = out.index_select(2, inv)
    return out.transpose(1, 2)
