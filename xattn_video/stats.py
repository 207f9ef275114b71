"""Block-density statistics of XAttention in a diffusers pipeline, per (step, layer, branch).

Every attention call made by an XAttention processor appends one record:

- a **sparse** call records its block density: selected (query block, key block) pairs over all
  pairs whose key block holds at least one valid (non-padding) key, summed over batch and heads
  -- the same number as :func:`xattn_video.attention.block_density` -- and the same ratio per
  head;
- a **dense** call (warm-up steps, ``dense_last_steps``, ``dense_layers``) records density 1.0.

Each call has equal weight in the pooled numbers: within one sampling run every call of a model
attends over the same token count, so this is also the FLOP-weighted mean (up to text padding).
Records accumulate over pipeline calls (``run`` counts them) until :meth:`XAttentionStats.reset`.

Not supported: weighting by FLOPs across runs of different resolutions; per-head numbers for
dense calls (they are all 1.0).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass
class DensityRecord:
    """One attention call. ``heads`` is the per-head density (sparse calls, else None)."""

    run: int
    step: int
    layer: int
    branch: str
    density: float
    sparse: bool
    reused: bool = False
    heads: list[float] | None = None


def mask_density(
    mask: torch.Tensor, block_size: int, kv_len: torch.Tensor | None, n_k: int
) -> tuple[float, list[float]]:
    """(density, per-head densities) of a block mask, as ``attention.block_density`` counts it.

    mask: (B, H, Nbq, Nbk) bool; kv_len: (B,) int valid key lengths or None (all ``n_k`` keys).
    Pairs are counted against the key blocks holding a valid key: ceil(kv_len[b] / block_size).
    One small device-to-host copy.
    """
    B, H, nbq, nbk = mask.shape
    if kv_len is None:
        valid_kb = torch.full((B,), nbk, dtype=torch.long, device=mask.device)
    else:
        valid_kb = (kv_len.to(mask.device).long() + block_size - 1) // block_size
    per_head = mask.sum(dim=(0, 2, 3)).double() / (valid_kb.sum().double() * nbq)
    heads = per_head.tolist()
    return sum(heads) / H, heads


class XAttentionStats:
    """Collects :class:`DensityRecord` s; ``summary()`` / ``to_dict()`` are JSON-serialisable.

    ``enabled=False`` (``XAttentionConfig.collect_stats=False``) turns recording into a no-op
    (no device-to-host copies).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.records: list[DensityRecord] = []

    def __len__(self) -> int:
        return len(self.records)

    def reset(self) -> None:
        """Drop all records."""
        self.records.clear()

    def record(
        self,
        *,
        run: int,
        step: int,
        layer: int,
        branch: str,
        density: float = 1.0,
        sparse: bool = False,
        reused: bool = False,
        heads: list[float] | None = None,
    ) -> None:
        """Append one call (no-op when disabled)."""
        if not self.enabled:
            return
        self.records.append(
            DensityRecord(run, step, layer, branch, float(density), sparse, reused, heads)
        )

    @staticmethod
    def _pool(records: list[DensityRecord]) -> dict[str, Any]:
        sparse = [r.density for r in records if r.sparse]
        return {
            "density": (sum(r.density for r in records) / len(records)) if records else None,
            "sparse_density": (sum(sparse) / len(sparse)) if sparse else None,
            "num_calls": len(records),
            "num_sparse_calls": len(sparse),
        }

    def summary(self) -> dict[str, Any]:
        """Pooled numbers.

        ``sparse_density``: mean density of the sparse calls (None if none);
        ``effective_density``: mean over all calls, dense ones counting 1.0 (None if no call);
        ``num_sparse_calls`` / ``num_dense_calls``; ``num_runs``;
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
