"""The attention-level view of ``sweep_quality.py``: q / k / v captured from one dense run of the
tiny DiT, and per (tau, stride, token order) the estimated block mask scored against the true
attention (share of the true softmax mass inside the mask, the same for the best mask with as
many blocks per row, relative L2 error of the block-sparse output against dense attention).

Not supported: the cluster token order (its per-head orders depend on q / k: see
``sweep_methods.py``), processors other than diffusers' HunyuanVideo one (the capture wraps its
``dispatch_attention_fn``).
"""

from __future__ import annotations

import itertools
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

import xattn_video as xv
from xattn_video.calibrate import true_block_mass
from xattn_video.layout import grid_permutation, inverse_permutation


class QKVCapture:
    """Wraps the HunyuanVideo processor's ``dispatch_attention_fn`` for one dense run and keeps
    q/k/v (B, H, N, D) of the chosen (step, layer) pairs (layer index: double-stream blocks
    first, then single-stream, as the toolkit counts them)."""

    def __init__(self, pipe, layers: list[int], steps: list[int]) -> None:
        import diffusers.models.transformers.transformer_hunyuan_video as hv

        self.hv, self.pipe = hv, pipe
        self.want = {(s, l) for s in steps for l in layers}  # noqa: E741
        self.captures: dict[tuple[int, int], tuple] = {}
        self.layer = None
        tr = pipe.transformer
        mods = [b.attn for b in (*tr.transformer_blocks, *tr.single_transformer_blocks)]
        self.handles = [m.register_forward_pre_hook(self._make_pre(i)) for i, m in enumerate(mods)]
        self.original = hv.dispatch_attention_fn

    def _make_pre(self, i: int):
        def pre(module, args):
            self.layer = i

        return pre

    def _dispatch(self, query, key, value, *args, **kwargs):
        step = int(self.pipe.scheduler.step_index or 0)
        if (step, self.layer) in self.want:
            mask = kwargs.get("attn_mask")
            self.captures[(step, self.layer)] = (
                query.transpose(1, 2).contiguous(),
                key.transpose(1, 2).contiguous(),
                value.transpose(1, 2).contiguous(),
                None if mask is None else mask.reshape(mask.shape[0], -1).sum(-1).int(),
            )
        return self.original(query, key, value, *args, **kwargs)

    def run(self, fn):
        try:
            with mock.patch.object(self.hv, "dispatch_attention_fn", self._dispatch):
                return fn()
        finally:
            for h in self.handles:
                h.remove()


def attention_view(captures: dict, a, n_video: int, grid: tuple[int, int, int]) -> list[dict]:
    """Per (step, layer, tau, stride, order): density, true-mass share, oracle share, rel L2."""
    rows = []
    for (step, layer), (q, k, v, kv_len) in sorted(captures.items()):
        B, H, N, D = q.shape
        kv_len = (
            torch.full((B,), N, dtype=torch.int32, device=q.device) if kv_len is None else kv_len
        )
        ref = F.scaled_dot_product_attention(
            q.float(), k.float(), v.float(),
            attn_mask=(torch.arange(N, device=q.device)[None, :] < kv_len[:, None])[:, None, None],
        )  # fmt: skip
        for order in a.orders:
            if order == "cluster":
                continue  # per-head orders computed from q / k: see sweep_methods.py
            if order in ("tile", "hilbert"):
                perm = torch.cat([grid_permutation(order, grid, tuple(a.tile), device=q.device),
                                  torch.arange(n_video, N, device=q.device)])  # fmt: skip
                inv = inverse_permutation(perm)
                qo, ko, vo = (x.index_select(2, perm) for x in (q, k, v))
            else:
                qo, ko, vo, inv = q, k, v, None
            mass = true_block_mass(qo, ko, block_size=a.block_size, kv_len=kv_len)
            total = mass.sum(dim=(-1, -2))  # rows per (B, H)
            for tau, stride in itertools.product(a.taus, a.strides):
                if a.block_size % stride:
                    continue
                mask = xv.estimate_block_mask(qo, ko, threshold=tau, stride=stride,
                                              block_size=a.block_size, kv_len=kv_len,
                                              dense_from=n_video,
                                              max_density=getattr(a, "view_max_density", None))  # fmt: skip
                out = xv.block_sparse_attention(qo, ko, vo, mask, block_size=a.block_size,
                                                kv_len=kv_len)  # fmt: skip
                if inv is not None:
                    out = out.index_select(2, inv)
                rel = float((out.float() - ref).norm() / ref.norm())
                kept = (mass * mask).sum(dim=(-1, -2)) / total
                n_sel = mask.sum(-1, keepdim=True)  # (B, H, Nb, 1)
                ranked = mass.sort(dim=-1, descending=True).values
                ranks = torch.arange(mass.shape[-1], device=q.device)
                oracle = (ranked * (ranks < n_sel)).sum(dim=(-1, -2)) / total
                rows.append({
                    "step": step, "layer": layer, "order": order, "threshold": tau,
                    "stride": stride,
                    "density": xv.block_density(mask, block_size=a.block_size, kv_len=kv_len,
                                                n_k=N),
                    "mass_kept": float(kept.mean()), "oracle_mass": float(oracle.mean()),
                    "rel_l2": rel,
                })  # fmt: skip
    return rows


def aggregate_attention(rows: list[dict]) -> list[dict]:
    """Rows of :func:`attention_view` averaged per (tau, stride, order)."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["threshold"], r["stride"], r["order"]), []).append(r)
    out = []
    for (tau, stride, order), rs in sorted(groups.items()):
        out.append({
            "threshold": tau, "stride": stride, "order": order, "n": len(rs),
            **{k: float(np.mean([r[k] for r in rs]))
               for k in ("density", "mass_kept", "oracle_mass", "rel_l2")},
        })  # fmt: skip
    return out
