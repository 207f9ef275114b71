"""Block-density statistics of XAttention in a diffusers pipeline, per (step, layer, branch),
accumulated on the device and read on the host only when asked.

Every attention call made by an XAttention processor adds one record:

- a **sparse** call records its block density: selected (query block, key block) pairs over all
  pairs whose key block holds at least one valid (non-padding) key, summed over batch and heads
  -- the same number as :func:`xattn_video.attention.block_density` -- and the same ratio per
  head;
- a **dense** call records density 1.0 and why it ran dense (``dense_reason``): ``"schedule"``
  (warm-up steps, ``dense_last_steps``, ``dense_layers``) or ``"cost"`` (the cost model
  predicted that the sparse path would be slower at this size, ``auto_dense``).

No host synchronisation per call: a sparse call hands over its per-head densities as a device
tensor (:func:`mask_density_tensor`); the numbers are copied to the host in one transfer when
they are read (:meth:`XAttentionStats.summary`, :meth:`~XAttentionStats.to_dict`,
:attr:`~XAttentionStats.records`). Processors may add calls without knowing the step
(:meth:`XAttentionStats.add`, what compiled graphs do: no Python step number in the graph);
the step hook stamps them with (run, step, branch) at the start of the next forward
(:meth:`XAttentionStats.begin`).

:class:`DensityFeedback` gives the cost model the latest measured density per layer without a
sync: device values are copied to pinned memory asynchronously once per forward and become
visible when that copy has finished (typically one step later).

Each call has equal weight in the pooled numbers: within one sampling run every call of a model
attends over the same token count, so this is also the FLOP-weighted mean (up to text padding).
Records accumulate over pipeline calls until :meth:`XAttentionStats.reset`; ``run`` counts
sampling runs, one per denoising schedule: a pipeline call, or each section of a Framepack call.

Layers are numbered per transformer: Wan 2.2 A14B's two experts (``transformer_2``, one
handle) both have layers 0..L-1, so ``per_layer`` and ``density(step, layer)`` pool layer i of
both (``per_step`` keeps them apart: the experts run disjoint steps).

Not supported: weighting by FLOPs across runs of different resolutions; per-head numbers for
dense calls (they are all 1.0); calls replayed from a CUDA graph (Python does not run on
replay, so only the captured call is recorded).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

DENSE_REASONS = ("schedule", "cost")


@dataclass
class DensityRecord:
    """One attention call. ``heads`` is the per-head density (sparse calls, else None);
    ``dense_reason`` is None for sparse calls, else one of ``DENSE_REASONS``."""

    run: int
    step: int
    layer: int
    branch: str
    density: float
    sparse: bool
    reused: bool = False
    heads: list[float] | None = None
    dense_reason: str | None = None


def mask_density_tensor(
    mask: torch.Tensor, block_size: int, kv_len: torch.Tensor | None, n_k: int
) -> torch.Tensor:
    """Per-head density (H,) float64 of a block mask, on the mask's device (no host read).

    mask: (B, H, Nbq, Nbk) bool; kv_len: (B,) int valid key lengths or None (all ``n_k`` keys).
    Pairs are counted against the key blocks holding a valid key: ceil(kv_len[b] / block_size).
    """
    B, H, nbq, nbk = mask.shape
    sel = mask.sum(dim=(0, 2, 3), dtype=torch.float64)
    if kv_len is None:
        return sel / float(B * nbk * nbq)
    valid_kb = (kv_len.to(mask.device).long() + block_size - 1) // block_size
    return sel / (valid_kb.sum().double() * nbq)


def mask_density(
    mask: torch.Tensor, block_size: int, kv_len: torch.Tensor | None, n_k: int
) -> tuple[float, list[float]]:
    """(density, per-head densities) of a block mask on the host: :func:`mask_density_tensor`
    plus one device-to-host copy (for tools; processors use the tensor form)."""
    heads = mask_density_tensor(mask, block_size, kv_len, n_k).tolist()
    return sum(heads) / len(heads), heads


class DensityFeedback:
    """Latest measured density per layer, for the cost model, without a host sync.

    ``update(layer, heads)`` keeps the device tensor; ``publish()`` (once per forward) starts one
    asynchronous copy of all updated layers' mean densities to pinned memory; ``get(layer)``
    returns the newest value on the host (None before the first one). A CUDA copy lands at the
    next ``publish()``, which waits for it (started a forward before, it is almost always done):
    when a value arrives does not depend on timing, so the decisions made from it are the same
    in every run of the same inputs (asking the event whether it was done made them depend on
    how far the GPU lagged). On the CPU the values are on the host at their ``publish()``.
    """

    def __init__(self) -> None:
        self._dev: dict[int, torch.Tensor] = {}
        self._host: dict[int, float] = {}
        self._inflight: tuple[list[int], torch.Tensor, Any] | None = None

    def update(self, layer: int, heads: torch.Tensor) -> None:
        self._dev[layer] = heads

    def _land(self) -> None:
        """The copy in flight onto the host, waiting for it."""
        if self._inflight is None:
            return
        layers, buf, event = self._inflight
        if event is not None:
            event.synchronize()
        self._host.update(zip(layers, buf.tolist(), strict=True))
        self._inflight = None

    def _start_copy(self, vals: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """(host buffer, its CUDA event or None) of an asynchronous copy of ``vals``."""
        if not vals.is_cuda:
            return vals, None
        buf = torch.empty(vals.shape, dtype=vals.dtype, pin_memory=True)
        buf.copy_(vals, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return buf, event

    def publish(self) -> None:
        """Land the previous copy, start copying the updated layers' densities to the host."""
        self._land()
        if not self._dev:
            return
        layers = sorted(self._dev)
        vals = torch.stack([self._dev[i].double().mean() for i in layers])
        self._dev.clear()
        self._inflight = (layers, *self._start_copy(vals))
        if self._inflight[2] is None:  # on the host already
            self._land()

    def get(self, layer: int) -> float | None:
        """Newest density of ``layer`` on the host, or None."""
        return self._host.get(layer)

    def clear(self) -> None:
        self._dev.clear()
        self._host.clear()
        self._inflight = None

    def swap(self, state: tuple | None) -> tuple:
        """Put this feedback's values and copy in flight aside, take ``state`` (what an earlier
        ``swap`` returned; None: empty) and land its copy, started at least a forward ago as
        ``publish`` would: what :class:`~xattn_video.auto_dense.AutoDense` keeps per input
        size. The copy just started stays in flight with the values it belongs to (landing it
        here would wait for the whole previous forward at every size change)."""
        old = (self._host, self._inflight)
        self._host, self._inflight = state if state is not None else ({}, None)
        self._land()
        return old


class XAttentionStats:
    """Collects :class:`DensityRecord` s; ``summary()`` / ``to_dict()`` are JSON-serialisable.

    ``enabled=False`` (``XAttentionConfig.collect_stats=False``) turns recording into a no-op
    (the :class:`DensityFeedback` in ``feedback`` still works).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.feedback = DensityFeedback()
        self._records: list[DensityRecord] = []
        # heads not yet read: (records, their heads, whether their mean is the density)
        self._lazy: list[tuple[list[DensityRecord], torch.Tensor, bool]] = []
        self._open: list[tuple[int, torch.Tensor | None, bool, str | None]] = []
        self._stamp: tuple[int, int, str] | None = None  # None: no forward begun (no step hook)
        # why a dense call added without a reason ran dense, asked when its forward is closed
        # (the controller's ``dense_reason``): compiled graphs then hold no reason (no guard)
        self.reason_of: Callable[[int], str] | None = None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def records(self) -> list[DensityRecord]:
        """Every call so far, with its numbers copied to the host (one transfer if needed)."""
        self._materialize()
        return self._records

    def reset(self) -> None:
        """Drop all records (and the density feedback)."""
        self._records.clear()
        self._lazy.clear()
        self._open.clear()
        self.feedback.clear()

    # -- recording -----------------------------------------------------------------------------
    def begin(self, *, run: int, step: int, branch: str) -> None:
        """Start a forward: stamp the calls added since the last ``begin`` with the previous
        (run, step, branch), remember the new one, publish the density feedback."""
        self.close()
        self._stamp = (int(run), int(step), str(branch))
        self.feedback.publish()

    def add(
        self,
        layer: int,
        *,
        heads: torch.Tensor | None = None,
        reused: bool = False,
        dense_reason: str | None = None,
    ) -> None:
        """One call of the current forward, stamped later by :meth:`begin` (graph-friendly: no
        step number). ``heads``: (H,) per-head density tensor of a sparse call; None for a dense
        call, which may name its ``dense_reason``; without one the reason is ``reason_of(layer)``
        when the forward is closed (default ``"schedule"``)."""
        if heads is not None:
            self.feedback.update(layer, heads)
        if not self.enabled:
            return
        self._open.append((layer, heads, reused, dense_reason))

    def record(
        self,
        *,
        run: int,
        step: int,
        layer: int,
        branch: str,
        density: float | None = None,
        sparse: bool = False,
        reused: bool = False,
        heads: list[float] | torch.Tensor | None = None,
        dense_reason: str | None = None,
    ) -> None:
        """Append one call with an explicit stamp (no-op when disabled). ``heads`` may be a
        device tensor (read later with the others) or a list; ``density`` defaults to their mean
        when given (else 1.0), and a given ``density`` is kept."""
        if isinstance(heads, torch.Tensor):
            self.feedback.update(layer, heads)
        if not self.enabled:
            return
        if not sparse and dense_reason is None:
            dense_reason = "schedule"
        rec = DensityRecord(
            run, step, layer, branch, 1.0 if density is None else float(density), sparse,
            reused, None, None if sparse else dense_reason,
        )  # fmt: skip
        if isinstance(heads, torch.Tensor):
            self._lazy.append(([rec], heads.detach().reshape(1, -1).double(), density is None))
        elif heads is not None:
            rec.heads = [float(h) for h in heads]
            if density is None:
                rec.density = sum(rec.heads) / len(rec.heads)
        self._records.append(rec)

    def close(self) -> None:
        """Turn the calls added since the last :meth:`begin` into records stamped with the
        current (run, step, branch) (the controller calls it before the state that
        ``reason_of`` reads changes)."""
        if not self._open:
            return
        if self._stamp is None:  # calls before any step hook began a forward: no step to stamp
            self._open.clear()  # them with (hand-built processors given a ``layer``)
            return
        run, step, branch = self._stamp
        sparse_recs: list[DensityRecord] = []
        sparse_heads: list[torch.Tensor] = []
        for layer, heads, reused, reason in self._open:
            rec = DensityRecord(run, step, layer, branch, 1.0, heads is not None, reused)
            if heads is None and reason is None:
                reason = self.reason_of(layer) if self.reason_of is not None else "schedule"
            rec.dense_reason = None if heads is not None else reason
            self._records.append(rec)
            if heads is not None:
                sparse_recs.append(rec)
                sparse_heads.append(heads.detach().reshape(-1).double())
        self._open.clear()
        if sparse_heads:
            if len({h.numel() for h in sparse_heads}) == 1:  # one stack: a copy out of any
                self._lazy.append((sparse_recs, torch.stack(sparse_heads), True))  # graph pool
            else:
                self._lazy.extend(
                    ([r], h.reshape(1, -1), True)
                    for r, h in zip(sparse_recs, sparse_heads, strict=True)
                )

    def _materialize(self) -> None:
        """Copy every pending density to the host in one transfer."""
        self.close()
        if not self._lazy:
            return
        # one device: one transfer; several (Wan 2.2's experts on two GPUs): each to the host
        devices = {h.device for _, h, _ in self._lazy}
        to = devices.pop() if len(devices) == 1 else torch.device("cpu")
        flat = torch.cat([h.reshape(-1).to(to, torch.float64) for _, h, _ in self._lazy]).tolist()
        pos = 0
        for recs, h, mean_is_density in self._lazy:
            width = h.shape[-1]
            for rec in recs:
                rec.heads = flat[pos : pos + width]
                if mean_is_density:
                    rec.density = sum(rec.heads) / width
                pos += width
        self._lazy.clear()

    # -- reading -------------------------------------------------------------------------------
    @staticmethod
    def _pool(records: list[DensityRecord]) -> dict[str, Any]:
        sparse = [r.density for r in records if r.sparse]
        return {
            "density": (sum(r.density for r in records) / len(records)) if records else None,
            "sparse_density": (sum(sparse) / len(sparse)) if sparse else None,
            "num_calls": len(records),
            "num_sparse_calls": len(sparse),
            "num_cost_dense_calls": sum(r.dense_reason == "cost" for r in records),
        }

    def summary(self) -> dict[str, Any]:
        """Pooled numbers.

        ``sparse_density``: mean density of the sparse calls (None if none);
        ``effective_density``: mean over all calls, dense ones counting 1.0 (None if no call);
        ``num_sparse_calls`` / ``num_dense_calls``; ``num_cost_dense_calls``: dense calls the
        cost model chose (``auto_dense``), included in ``num_dense_calls``; ``num_runs``;
        ``per_step``: [{step, density (effective), sparse_density, num_calls, ...}] sorted by step;
        ``per_layer``: the same keyed by layer; ``per_head``: mean density per head over the
        sparse calls (None if none).
        """
        recs = self.records
        pooled = self._pool(recs)
        by_step: dict[int, list[DensityRecord]] = defaultdict(list)
        by_layer: dict[int, list[DensityRecord]] = defaultdict(list)
        for r in recs:
            by_step[r.step].append(r)
            by_layer[r.layer].append(r)
        head_lists = [r.heads for r in recs if r.sparse and r.heads]
        per_head = None
        if head_lists and len({len(h) for h in head_lists}) == 1:
            per_head = [sum(col) / len(head_lists) for col in zip(*head_lists, strict=True)]
        return {
            "sparse_density": pooled["sparse_density"],
            "effective_density": pooled["density"],
            "num_sparse_calls": pooled["num_sparse_calls"],
            "num_dense_calls": pooled["num_calls"] - pooled["num_sparse_calls"],
            "num_cost_dense_calls": pooled["num_cost_dense_calls"],
            "num_runs": len({r.run for r in recs}),
            "per_step": [{"step": s, **self._pool(by_step[s])} for s in sorted(by_step)],
            "per_layer": [{"layer": i, **self._pool(by_layer[i])} for i in sorted(by_layer)],
            "per_head": per_head,
        }

    def to_dict(self) -> dict[str, Any]:
        """``{"summary": summary(), "records": [every call as a dict]}``."""
        return {"summary": self.summary(), "records": [asdict(r) for r in self.records]}

    def density(self, step: int, layer: int, branch: str | None = None) -> float | None:
        """Mean density of the calls at (step, layer[, branch]); None if there were none."""
        vals = [
            r.density
            for r in self.records
            if r.step == step and r.layer == layer and (branch is None or r.branch == branch)
        ]
        return sum(vals) / len(vals) if vals else None
