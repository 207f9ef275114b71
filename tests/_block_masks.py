"""Pinning the sparse processors: replay the block masks they used through the stock processors.

:class:`MaskLog` records, per layer and in call order, the token-level mask every XAttention
processor call attended with -- None for dense calls, else the op's block mask expanded to
tokens, with key padding, and mapped back to the model's token order (``tile`` order undone).
:func:`install_replay` then puts stock processors on the target layers that pass those masks to
diffusers' SDPA as ``attention_mask`` (HunyuanVideo 1.5's, which builds its mask from a text
mask, gets them ANDed into that one): the stock computation restricted to the same mask, the
reference the sparse processors must match (tolerance rule).

Not supported: token orders other than raster / tile.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict

import diffusers.models.transformers.transformer_hunyuan_video15 as hv15_module
import torch
from diffusers.models.transformers.transformer_hunyuan_video15 import (
    HunyuanVideo15AttnProcessor2_0,
)

import xattn_video as xv
from xattn_video import attention as attention_mod
from xattn_video import processors as processors_mod
from xattn_video.kernels.select import select_blocks
from xattn_video.layout import inverse_permutation, tile_permutation
from xattn_video.targets import model_family, target_layers, target_of

from ._tolerance import assert_fa_close


def token_mask(
    block_mask: torch.Tensor,
    kv_len: torch.Tensor | None,
    n: int,
    block_size: int,
    perm: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, H, N, N) bool in the model's token order from a (B, H, Nb, Nb) block mask over
    tokens in ``perm`` order (``x_op = x_model[perm]``; None: the model's order)."""
    tok = block_mask.repeat_interleave(block_size, -2).repeat_interleave(block_size, -1)
    tok = tok[..., :n, :n]
    if kv_len is not None:
        keys = torch.arange(n, device=tok.device)[None, :] < kv_len[:, None].to(tok.device)
        tok = tok & keys[:, None, None, :]
    if perm is not None:
        inv = inverse_permutation(perm)
        tok = tok[..., inv, :][..., :, inv]
    return tok


class MaskLog:
    """Spies on the processors (pytest ``monkeypatch``); ``masks[layer]`` lists the token masks
    of that layer's calls in order (None: dense). grid: the latent grid (T, H, W), needed for
    ``token_order='tile'``."""

    def __init__(self, monkeypatch, grid: tuple[int, int, int] | None = None) -> None:
        self.masks: dict[int, list[torch.Tensor | None]] = defaultdict(list)
        self.grid = grid
        self._call: dict | None = None
        mixin = processors_mod._XAttnMixin
        record_dense, sparse = mixin._record_dense, mixin._sparse_attention
        real_op = attention_mod.xattention
        log = self

        def on_dense(proc, layer, *args, **kwargs):
            log.masks[layer].append(None)
            return record_dense(proc, layer, *args, **kwargs)

        def on_sparse(proc, attn, layer, query, *args, **kwargs):
            log._call = {"layer": layer, "n_video": kwargs["n_video"], "cfg": proc.cfg}
            try:
                return sparse(proc, attn, layer, query, *args, **kwargs)
            finally:
                log._call = None

        def on_op(q, k, v, **kwargs):
            out, mask = real_op(q, k, v, **kwargs)
            call = log._call
            cfg, n = call["cfg"], q.shape[2]
            perm = None
            if cfg.token_order == "tile":
                perm = tile_permutation(log.grid, cfg.tile_size)
                perm = torch.cat([perm, torch.arange(perm.numel(), n)])
            elif cfg.token_order != "raster":
                raise NotImplementedError(cfg.token_order)
            tok = token_mask(mask, kwargs.get("kv_len"), n, cfg.block_size, perm)
            log.masks[call["layer"]].append(tok)
            return out, mask

        monkeypatch.setattr(mixin, "_record_dense", on_dense)
        monkeypatch.setattr(mixin, "_sparse_attention", on_sparse)
        monkeypatch.setattr(attention_mod, "xattention", on_op)

    def num_sparse(self) -> int:
        return sum(m is not None for calls in self.masks.values() for m in calls)


@contextlib.contextmanager
def _and_mask(mask: torch.Tensor):
    """HunyuanVideo 1.5's stock processor with ``mask`` (B, H, N, N) ANDed into the mask it
    hands to ``dispatch_attention_fn`` (its own: text padding masked as queries and keys)."""
    real = hv15_module.dispatch_attention_fn

    def patched(query, key, value, attn_mask=None, **kw):
        return real(query, key, value, attn_mask=attn_mask & mask, **kw)

    hv15_module.dispatch_attention_fn = patched
    try:
        yield
    finally:
        hv15_module.dispatch_attention_fn = real


def install_replay(transformers: list[torch.nn.Module], log: MaskLog) -> dict[int, list]:
    """Stock processors on every target layer of ``transformers`` replaying ``log``'s masks (one
    queue per layer index, shared by the transformers, consumed in call order). Returns the
    queues: all empty after a replay of the same calls."""
    queues = {layer: list(calls) for layer, calls in log.masks.items()}
    for tr in transformers:
        stock = target_of(model_family(tr)).stock_processor

        class Replay(stock):
            own_mask = stock is HunyuanVideo15AttnProcessor2_0

            def __init__(self, layer: int) -> None:
                super().__init__()
                self.layer = layer

            # explicit parameters: diffusers passes only the keywords __call__ names
            # (HunyuanVideo: image_rotary_emb, Wan: rotary_emb; the fifth positional of both)
            def __call__(self, attn, hidden_states, encoder_hidden_states=None,
                         attention_mask=None, image_rotary_emb=None, rotary_emb=None):  # fmt: skip
                queue = queues[self.layer]
                assert queue, f"layer {self.layer}: more calls than recorded"
                mask = queue.pop(0)
                rope = image_rotary_emb if image_rotary_emb is not None else rotary_emb
                if mask is not None and self.own_mask:
                    # the stock processor builds its mask from a [B, L] text mask: AND ours in
                    with _and_mask(mask):
                        return super().__call__(
                            attn, hidden_states, encoder_hidden_states, attention_mask, rope
                        )
                if mask is not None:
                    attention_mask = mask
                return super().__call__(
                    attn, hidden_states, encoder_hidden_states, attention_mask, rope
                )

        for _, module, layer in target_layers(tr):
            module.set_processor(Replay(layer))
    return queues


def pinned(monkeypatch, target, cfg, call, grid=(3, 8, 8)) -> dict:
    """Run ``call(dtype)`` with XAttention (``cfg``) on ``target`` (pipeline or transformer),
    recording every call's mask, then with the stock processors restricted to the same masks
    (SDPA ``attention_mask``) in fp32 and fp64: ours must match within the tolerance rule.
    ``call(dtype)`` runs the model once (``dtype``: the transformers' dtype, for the inputs).
    Returns the stats summary of our run."""
    if isinstance(target, torch.nn.Module):
        transformers = [target]
    else:
        pair = (target.transformer, getattr(target, "transformer_2", None))
        transformers = [t for t in pair if t is not None]
    saved = [(m, m.processor) for tr in transformers for _, m, _ in target_layers(tr)]
    with monkeypatch.context() as mp:
        log = MaskLog(mp, grid)
        with xv.apply_xattention(target, cfg) as handle:
            ours = call(torch.float32)
            summary = handle.stats.summary()
    assert log.num_sparse() == summary["num_sparse_calls"] > 0
    queues = install_replay(transformers, log)
    stock32 = call(torch.float32)
    assert not any(queues.values())
    for tr in transformers:
        tr.double()
    install_replay(transformers, log)
    ref64 = call(torch.float64)
    for tr in transformers:
        tr.float()
    for module, proc in saved:
        module.set_processor(proc)
    assert_fa_close(ours, ref64, stock32, what="sparse vs stock with the same mask")
    return summary


def torch_selection(scores, block_size, kv_len, dense_from, **kw) -> torch.Tensor:
    """The batched torch selection (the fused kernels' reference) with the text policy of
    ``dense_from`` as forced rows / columns: what the op's Triton path must equal."""
    B, _, nbq, nbk = scores.shape
    return select_blocks(
        scores, block_size=block_size, kv_len=kv_len,
        force_rows=attention_mod.dense_blocks(dense_from, B, nbq * block_size, block_size,
                                              scores.device),
        force_cols=attention_mod.dense_blocks(dense_from, B, nbk * block_size, block_size,
                                              scores.device),
        **kw,
    )  # fmt: skip
