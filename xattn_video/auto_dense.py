"""``auto_dense``: run an attention call dense when the sparse path cannot beat dense there.

One :class:`AutoDense` per controller. The sparse path asks :meth:`AutoDense.run_dense` at the
start of every sparse-phase call; the answer is a per-layer Python bool, so compiled graphs
branch on it cheaply (a guard on a bool, not a retrace per step):

- the first eager call of a layer decides at once from the cost model
  (:mod:`xattn_video.cost_model`; calibrating the GPU first if this configuration was never
  measured) at this token count and the expected density: the layer's measured density when
  known (:class:`~xattn_video.stats.DensityFeedback`, no sync), else ``cfg.ratio`` in ratio
  mode, else the most optimistic density (one block per row), so a layer only runs sparse
  where it can win and is measured there;
- the step hook calls :meth:`AutoDense.update` once per forward (eagerly): layers still
  running sparse are re-decided with their newest measured density. A layer that went dense
  stays dense (it is no longer measured) until :meth:`reset` or a new input size;
- decisions hold for the input size they were made at (the transformer and the shapes,
  devices and dtypes of the forward's ``hidden_states`` and ``encoder_hidden_states``, given
  to ``update``): at a forward of another size they and the density feedback are put aside
  and that size's own come back (:data:`SIZES_KEPT` sizes are kept), or, at a size not seen,
  every layer is decided afresh at its token count (a layer sent dense at a small size is not
  kept dense at a large one). So true CFG whose negative prompt has another text length than
  the prompt (sizes alternating every forward) keeps each branch's measured densities, and
  another transformer under the same controller decides on its own (Wan 2.2's two experts
  share layer numbers, not densities: each expert's layers decide at its own first steps);
- under ``torch.compile`` a layer not yet decided runs sparse (the decision needs eager code)
  and is decided by the next ``update``;
- under Ulysses (``group`` set by :class:`xattn_video.parallel.GatheredState`): every
  decision is all-reduced over the group where it is made (dense if any rank says dense; each
  rank decides from its own GPU's calibration) and the agreed value is stored, so
  ``controller.is_sparse`` -- what the processors branch on -- is the same on every rank;
- ``graph_timing`` (set by :func:`xattn_video.hook.compile_below_hook` when the compile mode
  captures CUDA graphs): decide from the cost model's CUDA-graph times (device time only)
  instead of its eager times (which include launch overhead that CUDA graphs remove).

Decisions persist across pipeline calls of the same size (the same shapes give the same
decisions, so a compiled pipeline sees the same variants in every call); a call's video then
depends on the calls before it (a layer sent dense by one prompt's densities stays dense for
the next). :meth:`xattn_video.apply.XAttentionHandle.forget_history` forgets them; ``generate``
does so before every prompt, so a video is the same wherever its run resumes.

Not supported: decisions for the ``torch`` reference backend or CPU (never dense for cost: the
cost model does not apply there, see :func:`xattn_video.cost_model.applies`); different
decisions per CFG branch (one per layer).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import torch
import torch.distributed as dist

from . import cost_model
from .config import XAttentionConfig
from .stats import XAttentionStats

SIZES_KEPT = 4
"""Input sizes whose decisions and density feedback :class:`AutoDense` keeps (least recently
used dropped): a CFG pair of text lengths and Wan 2.2's two experts fit."""


class AutoDense:
    """Per-layer dense-for-cost decisions. ``decisions``: layer -> True (dense) / False."""

    def __init__(self, cfg: XAttentionConfig, stats: XAttentionStats) -> None:
        self.cfg = cfg
        self.stats = stats
        self.enabled = cfg.auto_dense
        self.graph_timing = False
        self.decisions: dict[int, bool] = {}
        self._shapes: dict[int, tuple] = {}
        self._size: Hashable | None = None  # the input size the decisions were made at
        # other sizes' (decisions, shapes, density feedback), least recently used first
        self._kept: dict[Hashable, tuple[dict, dict, tuple]] = {}
        self.group: Any = None  # the process group the decisions must agree over (Ulysses)
        self._device: torch.device | None = None  # of the last call's queries (collectives)

    def reset(self) -> None:
        """Forget every decision, at every input size (a layer that went dense is measured
        again)."""
        self.decisions.clear()
        self._shapes.clear()
        self._kept.clear()

    def use_graph_timing(self, on: bool = True) -> None:
        """Decide from CUDA-graph times (``on``) or eager times; forgets earlier decisions."""
        if on != self.graph_timing:
            self.graph_timing = on
            self.reset()

    def run_dense(self, layer: int, q: torch.Tensor, backend: str, padded: bool = False) -> bool:
        """Whether this sparse-phase call of ``layer`` runs dense for cost.

        q: (B, H, N, D) queries of the call; backend: the resolved backend; padded: the call
        has key padding (``kv_len``), so its dense alternative is masked SDPA.
        """
        if not self.enabled or not cost_model.applies(backend, q.device):
            return False
        B, H, N, D = q.shape
        dtype = str(q.dtype).removeprefix("torch.")
        self._shapes[layer] = (dtype, B * H, D, N, q.device.index, bool(padded))
        self._device = q.device
        decided = self.decisions.get(layer)
        if decided is None:
            if torch.compiler.is_compiling():
                return False
            self._decide(layer)
            self._agree([layer])
            decided = self.decisions[layer]
        return decided

    def update(self, size: Hashable | None = None) -> None:
        """Re-decide the layers running sparse with their newest measured density (eager).

        size: the forward's input size (None: unknown, taken as unchanged); at a size other than
        the decisions' they are put aside with the density feedback (measured at that size) and
        the new size's own, if kept, come back.
        """
        if not self.enabled:
            return
        if size is not None and size != self._size:
            if self._size is not None:
                self._switch(size)
            self._size = size
        for layer, dense in list(self.decisions.items()):
            if not dense and self.stats.feedback.get(layer) is not None:
                self._decide(layer)
        for layer in self._shapes.keys() - self.decisions.keys():  # first seen under compile
            self._decide(layer)
        self._agree(sorted(self.decisions))  # the same layers on every rank

    def _switch(self, size: Hashable) -> None:
        """Put the current size's decisions, shapes and density feedback aside; take ``size``'s
        (empty if not kept)."""
        decisions, shapes, feedback = self._kept.pop(size, ({}, {}, None))
        old = self.stats.feedback.swap(feedback)
        self._kept[self._size] = (self.decisions, self._shapes, old)
        self.decisions, self._shapes = decisions, shapes
        while len(self._kept) > SIZES_KEPT - 1:  # with the current one, SIZES_KEPT sizes
            del self._kept[next(iter(self._kept))]

    def _agree(self, layers: list[int]) -> None:
        """Under a ``group``: all-reduce these layers' decisions (dense if any rank says dense)
        and store the agreed ones. Every rank calls it with the same layers."""
        if self.group is None or not layers:
            return
        flags = torch.tensor([int(self.decisions[i]) for i in layers], device=self._device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.group)
        self.decisions.update(zip(layers, (bool(f) for f in flags.tolist()), strict=True))

    def expected_density(self, layer: int, n: int) -> float:
        """The density the decision assumes for ``layer`` at ``n`` tokens."""
        measured = self.stats.feedback.get(layer)
        if measured is not None:
            return measured
        cfg = self.cfg
        if cfg.selection == "ratio":  # the op keeps at most max_density of the pairs
            return min(float(cfg.ratio), float(cfg.max_density))
        return 1.0 / -(-n // cfg.block_size)  # one key block per row: 1 / ceil(n / block)

    def _decide(self, layer: int) -> bool:
        dtype, heads, head_dim, n, index, padded = self._shapes[layer]
        cfg = self.cfg
        device = torch.device("cuda", index)
        key = cost_model.cost_key(
            device, getattr(torch, dtype), heads, head_dim, cfg.block_size, cfg.stride,
            precision=cfg.precision, estimate_precision=cfg.estimate_precision,
        )  # fmt: skip
        cal = cost_model.lookup(key) or cost_model.calibrate(key, device)
        pred = cost_model.predict(
            cal,
            n,
            self.expected_density(layer, n),
            block_size=cfg.block_size,
            refresh=cfg.mask_refresh,
            gathers=0 if cfg.token_order == "raster" else 4,
            graph=self.graph_timing,
            padded=padded,
            clusters=cfg.token_order == "cluster",
        )
        self.decisions[layer] = not pred.sparse_wins
        return self.decisions[layer]
