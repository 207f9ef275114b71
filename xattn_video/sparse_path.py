"""The model-independent sparse path of the XAttention processors.

One attention call in the sparse phase, after the processor has built q/k/v [B, N, H, D]
(video tokens first, then any joint text):

1. token order: ``raster`` keeps the model's order; ``tile`` permutes the video prefix into
   3-D tiles of ``cfg.tile_size`` latent tokens, ``hilbert`` along a 3-D Hilbert curve (both
   cached per grid); ``cluster`` orders keys (and values) per head by k-means on the keys and
   queries by k-means on the queries (:func:`cluster_orders`, computed in the call, kept with
   the mask when it is reused). Text stays at the end; the order is undone afterwards;
2. mask reuse: with ``cfg.mask_refresh = r`` a block mask estimated for (attention module,
   CFG branch) serves the same pair at the next r-1 sparse steps (:class:`MaskCache`; the
   controller's ``reuse_masks`` bool says which steps reuse);
3. the op: :func:`xattn_video.attention.xattention` on (B, H, N, D) views, with the layer's
   per-head thresholds when ``cfg.thresholds_file`` lists the layer, and ``cfg.max_density``
   as the per-call budget; an ``observer`` on the state (the threshold calibration,
   :class:`xattn_video.calibrate.Calibrator`) sees the call's reordered q / k first;
4. stats: the call's block density in the controller's :class:`~xattn_video.stats.XAttentionStats`.

:func:`dense_attention` is the dense-phase call with ``dense_kernel="xattn"``: the op's
kernel with every block selected (no estimate, order, cache or stats).

The per-run state it reads (``cfg``, ``stats``, ``run``, ``step``, ``branch``, ``grid`` and
the two caches) lives on the shared controller (:class:`xattn_video.hook.XAttentionController`,
typed here by the :class:`SparseState` protocol, so this module does not import the hook).

Not supported: gradients (the op is forward-only); a ``cluster`` order shared across layers or
steps (it is recomputed in every call that estimates a mask).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from . import attention as _attention
from . import cost_model
from . import thresholds as _thresholds
from .config import XAttentionConfig
from .layout import (
    CLUSTER_ITERS,
    cluster_permutation,
    extend_permutation,
    grid_permutation,
    inverse_permutation,
    permute_tokens,
)
from .stats import XAttentionStats, mask_density_tensor


@dataclass
class _MaskEntry:
    mask: torch.Tensor | None = None  # (B, H, Nbq, Nbk) bool; None: not estimated yet
    kv_len: torch.Tensor | None = None  # (B,) int
    aux: tuple | None = None  # what the mask depends on besides the tokens (cluster orders)
    traced: bool = False  # stored by a compiled graph: may live in a CUDA-graph memory pool


class MaskCache:
    """Block masks per (attention module, branch) for ``mask_refresh > 1``.

    Which steps reuse is decided outside (the controller's ``reuse_masks``, from the step), so
    nothing here counts calls: a compiled graph reads the cache only when it reuses. The
    controller creates the forward's branch's entries eagerly and makes them the current ones
    (:meth:`prepare`), so a compiled call neither reads the branch name nor changes the key set
    it looks up: a graph guarded on either was compiled once per CFG branch (5 graphs for
    dense + estimate + reuse under guidance, 9 with Wan 2.2's two experts: past dynamo's
    recompile limit, a fullgraph compile failed mid-run).
    Memory: B * H * Nb^2 bytes per attention module and branch; nothing is kept when
    ``refresh == 1``. Cleared at every new sampling run.

    Under CUDA graphs (``torch.compile(mode="reduce-overhead")``) a graph's outputs are
    overwritten by the next compiled call, so a mask stored by a compiled graph is copied out
    of the graph's memory by :meth:`own`, which the controller calls eagerly before every
    forward (one small device copy per layer after an estimating step).
    """

    def __init__(self, refresh: int) -> None:
        self.refresh = refresh
        self._branches: dict[str, dict[int, _MaskEntry]] = {}
        self._current: dict[int, _MaskEntry] = {}  # id(attention module) -> entry, this branch

    def _entries(self):
        return (e for entries in self._branches.values() for e in entries.values())

    def __len__(self) -> int:
        """Masks held."""
        return sum(e.mask is not None for e in self._entries())

    def prepare(self, attns, branch: str) -> None:
        """Create empty entries for ``attns`` (attention modules) in ``branch`` and make them the
        current ones, which :meth:`get` / :meth:`put` use (eager code, before the forward)."""
        if self.refresh > 1:
            self._current = self._branches.setdefault(branch, {})
            for attn in attns:
                self._current.setdefault(id(attn), _MaskEntry())

    def clear(self) -> None:
        self._branches.clear()
        self._current = {}

    def get(
        self,
        attn: torch.nn.Module,
        shape: tuple[int, ...],
        kv_len: torch.Tensor | None,
        reuse: bool = True,
    ) -> torch.Tensor | None:
        """The cached mask of ``attn`` in the current branch if it may serve this call, else
        None.

        reuse: this step reuses masks (the controller's ``reuse_masks``); False returns None
        without reading the cache. A mask serves only calls with the same mask shape and the
        same key padding ``kv_len``.
        """
        if self.refresh <= 1 or not reuse:
            return None
        entry = self._current.get(id(attn))
        if entry is None or entry.mask is None or tuple(entry.mask.shape) != tuple(shape):
            return None
        if (entry.kv_len is None) != (kv_len is None):
            return None
        # same key padding: compared on the host only for CPU tensors; on CUDA and under
        # torch.compile it is not read back (no sync): within one run and CFG branch a
        # diffusers pipeline keeps one prompt, hence one kv_len, and the run resets the cache
        if kv_len is not None and not (kv_len.is_cuda or torch.compiler.is_compiling()):
            if not torch.equal(entry.kv_len, kv_len):
                return None
        return entry.mask

    def aux(self, attn: torch.nn.Module) -> tuple | None:
        """What was stored with ``attn``'s mask in the current branch (the cluster orders), else
        None."""
        entry = self._current.get(id(attn))
        return None if entry is None else entry.aux

    def put(
        self,
        attn: torch.nn.Module,
        mask: torch.Tensor,
        kv_len: torch.Tensor | None,
        aux: tuple | None = None,
    ) -> None:
        """Keep a freshly estimated mask (only when ``refresh > 1``), with ``aux``."""
        if self.refresh <= 1:
            return
        traced = torch.compiler.is_compiling()
        entry = self._current.get(id(attn))
        if entry is None:  # not prepared (a module the controller does not list)
            self._current[id(attn)] = _MaskEntry(mask, kv_len, aux, traced)
        else:
            entry.mask, entry.kv_len, entry.aux, entry.traced = mask, kv_len, aux, traced

    def own(self) -> None:
        """Copy the masks (and their kv_len / cluster orders) that a compiled graph stored into
        memory of their own (eager code, before the next compiled call: see the class
        docstring)."""
        for entry in self._entries():
            if entry.traced and entry.mask is not None:
                entry.mask = entry.mask.clone()
                if isinstance(entry.kv_len, torch.Tensor):
                    entry.kv_len = entry.kv_len.clone()
                if entry.aux is not None:
                    entry.aux = tuple(
                        a.clone() if isinstance(a, torch.Tensor) else a for a in entry.aux
                    )
                entry.traced = False


class TileOrders:
    """Cached grid-order (``tile``, ``hilbert``) permutations per (order, grid, device), and
    per text length in eager code.

    The controller computes the video permutation eagerly (:meth:`prepare`, at each sparse
    forward); a compiled graph then only looks it up and appends the text tokens, so the first
    sparse call does not trace the Hilbert / tile computation into a graph that a later call
    (with the cache filled) would have to recompile.
    """

    def __init__(self, tile_size: tuple[int, int, int]) -> None:
        self.tile_size = tile_size
        self._video: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._perms: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def prepare(
        self, grid: tuple[int, int, int], device: torch.device, order: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(perm, inv) of ``order`` over the video tokens of ``grid``, computed once (the
        controller calls this eagerly at every sparse forward)."""
        key = (order, tuple(grid), str(device))
        if key not in self._video:
            perm = grid_permutation(order, grid, self.tile_size, device=device)
            self._video[key] = (perm, inverse_permutation(perm))
        return self._video[key]

    def permutation(
        self,
        grid: tuple[int, int, int] | None,
        n_video: int,
        n_total: int,
        device: torch.device,
        order: str = "tile",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(perm, inv), each (n_total,) int64: ``order`` (tile / hilbert) for the ``n_video``
        video tokens of the latent ``grid`` (T, H, W), identity for the ``n_total - n_video``
        text tokens after them."""
        if grid is None or math.prod(grid) != n_video:
            raise ValueError(
                f"token_order={order!r} needs the latent grid of the {n_video} video tokens, but the "
                f"step hook saw grid={grid}; attach the step hook (apply_xattention does) and use "
                "a model whose video tokens form one (T, H, W) grid, or use token_order='raster'"
            )
        perm, inv = self.prepare(grid, device, order)
        if torch.compiler.is_compiling():  # two small ops in the graph, no cache mutation
            return extend_permutation(perm, n_total), extend_permutation(inv, n_total)
        key = (order, tuple(grid), n_total, str(device))
        if key not in self._perms:
            self._perms[key] = (extend_permutation(perm, n_total), extend_permutation(inv, n_total))
        return self._perms[key]


def cluster_orders(
    state: SparseState, q: torch.Tensor, k: torch.Tensor, n_video: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(perm_q, perm_k), each (B, H, N) int64: the video prefix of q and of k ordered per head by
    k-means clusters (one cluster per block of video tokens, centroids started from the tile
    order when the grid is known, else the raster order), text tokens left at the end."""
    cfg = state.cfg
    N = q.shape[2]
    base = None
    if state.grid is not None and math.prod(state.grid) == n_video:
        base = state.orders.permutation(state.grid, n_video, n_video, q.device, order="tile")[0]
    n_clusters = max(1, -(-n_video // cfg.block_size))
    perms = tuple(
        extend_permutation(
            cluster_permutation(x[:, :, :n_video], n_clusters, iters=CLUSTER_ITERS, base=base), N
        )
        for x in (q, k)
    )
    return perms[0], perms[1]


_LAYER_THRESHOLDS: dict[tuple, tuple[dict, torch.Tensor | None]] = {}
"""(file, layer, device, heads) -> (the file's layer dict it was read from, the thresholds)."""


def file_thresholds(cfg: XAttentionConfig) -> dict[int, tuple[float, ...]] | None:
    """Layer -> per-head thresholds of ``cfg.thresholds_file`` as it is now (None without a
    file): what the controller reads eagerly at each sparse forward for :func:`layer_threshold`
    (a call traced by ``torch.compile`` must not touch the file system); a new version of the
    file is checked against ``cfg`` first (``ValueError`` when it was calibrated with other
    estimate settings)."""
    if not cfg.thresholds_file:
        return None
    return _thresholds.shared_layer_thresholds(cfg.thresholds_file, cfg)


def layer_threshold(
    cfg: XAttentionConfig,
    layer: int,
    heads: int,
    device: torch.device,
    *,
    first_head: int = 0,
    total_heads: int | None = None,
    listed: dict[int, tuple[float, ...]] | None = None,
) -> float | torch.Tensor:
    """The threshold of one layer: its per-head (heads,) float64 tensor from
    ``cfg.thresholds_file`` when the file lists the layer, else ``cfg.threshold``. The call
    holds ``heads`` of the layer's ``total_heads`` (default: all) from ``first_head`` on (a
    Ulysses rank: its H/P). ``listed``: the file's :func:`file_thresholds`, read by the caller
    (the controller, eagerly); without it the file is read here, which a traced call can't.
    Cached per (file, layer, device, heads) for the file's current contents (the entry holds
    ``listed``, compared by identity: an ``id()`` in the key could be reused by a later version
    of a rewritten file); a traced call builds its tensor in the graph, uncached."""
    if not cfg.thresholds_file:
        return cfg.threshold
    traced = torch.compiler.is_compiling()
    if listed is None:
        if traced:
            raise RuntimeError("a traced sparse call needs the thresholds read eagerly (listed)")
        listed = file_thresholds(cfg)
    total = heads if total_heads is None else total_heads
    key = (cfg.thresholds_file, layer, str(device), first_head, heads)
    entry = None if traced else _LAYER_THRESHOLDS.get(key)
    if entry is None or entry[0] is not listed:
        per_layer = listed.get(layer)
        if per_layer is not None and len(per_layer) != total:
            raise ValueError(
                f"thresholds file {cfg.thresholds_file!r} has {len(per_layer)} heads for layer "
                f"{layer}, the model has {total}; calibrate this model"
            )
        thr = None
        if per_layer is not None:
            part = per_layer[first_head : first_head + heads]
            thr = torch.tensor(part, dtype=torch.float64, device=device)
        entry = (listed, thr)
        if not traced:
            _LAYER_THRESHOLDS[key] = entry
    return cfg.threshold if entry[1] is None else entry[1]


class SparseState(Protocol):
    """What the sparse path reads from the shared controller."""

    cfg: XAttentionConfig
    stats: XAttentionStats
    run: int
    step: int
    reuse_masks: bool
    branch: str
    grid: tuple[int, int, int] | None
    masks: MaskCache
    orders: TileOrders
    auto_dense: Any  # xattn_video.auto_dense.AutoDense
    # optional ``heads``: {"first_head", "total_heads"} where a call holds a share of the layer's
    # heads (a Ulysses rank, xattn_video.parallel.GatheredState): layer_threshold's slice;
    # optional ``thresholds``: the forward's file_thresholds, read eagerly


def xattn_dense(controller: Any, layer: int) -> bool:
    """Whether a dense call of ``layer`` runs :func:`dense_attention` (``dense_kernel="xattn"``):
    not one ``auto_dense`` sent dense, which stays what the cost model compared the sparse
    path with (SDPA, :func:`~xattn_video.cost_model.dense_call`); from its second forward such
    a call ran the XAttention kernel instead."""
    return controller.cfg.dense_kernel == "xattn" and controller.dense_reason(layer) != "cost"


def dense_attention(
    cfg: XAttentionConfig,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    kv_len: torch.Tensor | None,
) -> torch.Tensor:
    """A dense-phase call with ``dense_kernel="xattn"``: exact attention over the valid keys
    with the block-sparse kernel and every block selected, in the inputs' dtype (bf16 even for
    an fp8 configuration), no mask tensor. query/key/value: [B, N, H, D]; kv_len: (B,) int or
    None; returns [B, N, H, D]. No token order (dense attention does not depend on it)."""
    q, k, v = (x.transpose(1, 2) for x in (query, key, value))  # (B, H, N, D) views
    if _attention.resolve_backend(cfg.backend, q) == "torch":
        q, k, v = (x.contiguous() for x in (q, k, v))
    nb = -(-q.shape[2] // cfg.block_size)
    every = torch.ones((1, 1, 1, 1), dtype=torch.bool, device=q.device).expand(1, 1, nb, nb)
    out = _attention.block_sparse_attention(
        q, k, v, every, block_size=cfg.block_size, kv_len=kv_len, backend=cfg.backend
    )
    return out.transpose(1, 2)


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
    backend = _attention.resolve_backend(cfg.backend, q)
    if backend == "torch":
        # the PyTorch reference estimate reshapes with .view (needs contiguous inputs)
        q, k, v = (x.contiguous() for x in (q, k, v))
    B, H, N, _ = q.shape
    if state.auto_dense.run_dense(layer, q, backend, padded=kv_len is not None):
        # auto_dense: the cost model predicts the sparse path slower here (a bool per layer)
        state.stats.add(layer, dense_reason="cost")
        return cost_model.dense_call(q, k, v, kv_len).transpose(1, 2)
    inv = None
    if cfg.token_order in ("tile", "hilbert"):
        perm, inv = state.orders.permutation(state.grid, n_video, N, q.device, cfg.token_order)
        q, k, v = (x.index_select(2, perm) for x in (q, k, v))
    nb = -(-N // cfg.block_size)
    mask = state.masks.get(attn, (B, H, nb, nb), kv_len, state.reuse_masks)
    reused = mask is not None
    aux = None
    if cfg.token_order == "cluster":
        aux = state.masks.aux(attn) if reused else None
        if aux is None:
            aux = cluster_orders(state, q, k, n_video)
            if reused:  # a mask without its orders cannot be reused
                mask, reused = None, False
        perm_q, perm_k = aux
        q, k, v = permute_tokens(q, perm_q), permute_tokens(k, perm_k), permute_tokens(v, perm_k)
        inv = inverse_permutation(perm_q)
    observer = getattr(state, "observer", None)
    if observer is not None and observer.wants(state.step):
        observer.observe(layer, state.step, q, k, kv_len, dense_from)
    sel = {"threshold": None, "ratio": cfg.ratio}
    if cfg.selection == "threshold":
        listed = getattr(state, "thresholds", None)  # the controller's, read eagerly
        heads = getattr(state, "heads", {})
        thr = layer_threshold(cfg, layer, H, q.device, listed=listed, **heads)
        sel = {"threshold": thr, "ratio": None}
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
        precision=cfg.precision,
        estimate_precision=cfg.estimate_precision,
        estimate_kernel=cfg.estimate_kernel,
        max_density=cfg.max_density if cfg.max_density < 1.0 else None,
    )
    if not reused:
        state.masks.put(attn, mask, kv_len, aux)
    if state.stats.enabled or state.auto_dense.enabled:
        # a device tensor, stamped with (run, step, branch) by the step hook: no host read,
        # and no step number in a compiled graph
        heads = mask_density_tensor(mask, cfg.block_size, kv_len, N)
        state.stats.add(layer, heads=heads, reused=reused)
    if inv is not None:
        out = permute_tokens(out, inv)
    return out.transpose(1, 2)
