"""XAttention on tiny Wan 2.1 / 2.2 transformers and pipelines (CPU, offline, seeded).

The tiny Wan video is a (3, 8, 8) latent token grid = 192 tokens = 12 blocks of 16.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

import xattn_video as xv
from xattn_video import attention as attention_mod
from xattn_video.hook import attach_step_hook
from xattn_video.layout import tile_permutation
from xattn_video.processors import WanXAttnProcessor

from ._block_masks import pinned
from ._tiny_models import one_thread, tiny_wan_pipeline, tiny_wan_transformer, wan_inputs  # noqa: F401
from ._tiny_models import tiny_cfg as cfg_
from ._tolerance import assert_fa_close


def run(pipe, **kw) -> torch.Tensor:
    return pipe(**wan_inputs(**kw)).frames


def test_warmup_covering_all_steps_is_bit_identical():
    pipe = tiny_wan_pipeline()
    ref = run(pipe, steps=3)
    with xv.apply_xattention(pipe, cfg_(threshold=0.3, warmup_steps=3)) as handle:
        out = run(pipe, steps=3)
        assert handle.stats.summary()["num_sparse_calls"] == 0
    assert torch.equal(out, ref)


def test_a_subclass_of_a_supported_transformer_is_supported():
    """A user's subclass (a fine-tune wrapper, say) is its parent's family, as ModelTarget
    says; matching only the exact class refused it and passed every test."""
    from diffusers import WanTransformer3DModel

    from xattn_video.targets import model_family

    class MyWan(WanTransformer3DModel):
        pass

    tr = tiny_wan_transformer(num_layers=1)
    tr.__class__ = MyWan
    assert model_family(tr) == "wan"
    with xv.apply_xattention(tr, cfg_(warmup_steps=0)):
        assert isinstance(tr.attn_processors["blocks.0.attn1.processor"], WanXAttnProcessor)


def test_dense_kernel_xattn_runs_dense_self_attention_through_the_kernel(monkeypatch):
    """dense_kernel="xattn", warm-up covering all steps: self-attention (attn1) runs the kernel
    with every block, cross-attention (attn2) stays the stock processor; latents meet the
    tolerance rule against an fp64 stock run."""
    pipe = tiny_wan_pipeline()
    stock32 = run(pipe, steps=3)
    pipe.transformer.double()
    ref64 = run(pipe, steps=3)
    pipe.transformer.float()
    masks, stock_self = [], []
    orig_call, orig_attn = WanAttnProcessor.__call__, attention_mod.block_sparse_attention

    def stock(self, attn, hidden_states, encoder_hidden_states=None, *a, **kw):
        stock_self.append(encoder_hidden_states is None)
        return orig_call(self, attn, hidden_states, encoder_hidden_states, *a, **kw)

    def spy(q, k, v, mask, **kw):
        masks.append(mask)
        return orig_attn(q, k, v, mask, **kw)

    monkeypatch.setattr(WanAttnProcessor, "__call__", stock)
    monkeypatch.setattr(attention_mod, "block_sparse_attention", spy)
    with xv.apply_xattention(pipe, cfg_(warmup_steps=3, dense_kernel="xattn")) as handle:
        ours = run(pipe, steps=3)
        assert handle.stats.summary()["num_sparse_calls"] == 0
    n_layers = len(pipe.transformer.blocks)
    assert len(masks) == 3 * n_layers * 2  # 3 steps x layers x 2 CFG forwards
    assert all(bool(m.all()) for m in masks)
    assert stock_self and not any(stock_self)  # the stock processor ran cross-attention only
    assert_fa_close(ours, ref64, stock32, what="latents")


@pytest.mark.parametrize(
    "kw",
    [
        dict(threshold=1.0),
        dict(selection="ratio", ratio=1.0),
        dict(threshold=1.0, token_order="tile", tile_size=(1, 4, 4)),
        dict(selection="ratio", ratio=1.0, token_order="tile", tile_size=(2, 3, 5)),
    ],
    ids=["threshold1", "ratio1", "tile-divides", "tile-ragged"],
)
def test_all_blocks_matches_stock_within_tolerance(kw):
    """err(ours fp32 vs stock on an fp64 transformer) <= 2 * err(stock fp32 vs the same) + floor."""
    pipe = tiny_wan_pipeline()
    stock32 = run(pipe, steps=3)
    pipe.transformer.double()
    ref64 = run(pipe, steps=3)
    pipe.transformer.float()
    with xv.apply_xattention(pipe, cfg_(warmup_steps=0, **kw)) as handle:
        ours = run(pipe, steps=3)
        assert handle.stats.summary()["sparse_density"] == 1.0
    assert_fa_close(ours, ref64, stock32, what="latents")


@pytest.mark.parametrize(
    "kw",
    [
        dict(threshold=0.5),
        dict(selection="ratio", ratio=0.3),
        dict(threshold=0.5, token_order="tile", tile_size=(1, 4, 4)),
        dict(threshold=0.5, token_order="tile", tile_size=(2, 3, 5)),  # does not divide (3, 8, 8)
        dict(threshold=0.5, mask_refresh=2),
    ],
    ids=["raster", "ratio", "tile-divides", "tile-ragged", "mask-reuse"],
)
def test_sparse_output_equals_stock_attention_with_the_same_mask(monkeypatch, kw):
    """Batch 2, CFG, one dense warm-up step: every self-attention call equals stock attention
    restricted to its block mask (tolerance rule)."""
    pipe = tiny_wan_pipeline()
    summary = pinned(
        monkeypatch, pipe, cfg_(warmup_steps=1, **kw), lambda d: run(pipe, steps=3, batch=2)
    )
    assert 0.0 < summary["sparse_density"] < 1.0
    assert summary["num_sparse_calls"] == 2 * 2 * 2  # 2 sparse steps x 2 layers x 2 branches


def test_tile_order_permutes_the_video_tokens(monkeypatch):
    seen = []
    real = attention_mod.xattention

    def spy(q, k, v, **kw):
        seen.append(q.clone())
        return real(q, k, v, **kw)

    monkeypatch.setattr(attention_mod, "xattention", spy)
    pipe = tiny_wan_pipeline(num_layers=1)
    for order in ("raster", "tile"):
        with xv.apply_xattention(pipe, cfg_(warmup_steps=0, token_order=order)):
            run(pipe, steps=1, cfg=False)
    raster, tiled = seen
    perm = tile_permutation((3, 8, 8), (2, 8, 8))
    assert torch.equal(tiled, raster[:, :, perm])


def test_self_attention_sparse_cross_attention_untouched(monkeypatch):
    lengths = []
    real = attention_mod.xattention

    def spy(q, k, v, **kw):
        lengths.append((q.shape[2], k.shape[2]))
        return real(q, k, v, **kw)

    monkeypatch.setattr(attention_mod, "xattention", spy)
    pipe = tiny_wan_pipeline()
    tr = pipe.transformer
    originals = dict(tr.attn_processors)
    with xv.apply_xattention(pipe, cfg_(threshold=0.5, warmup_steps=1)) as handle:
        procs = tr.attn_processors
        for i in range(2):
            assert isinstance(procs[f"blocks.{i}.attn1.processor"], WanXAttnProcessor)
            key = f"blocks.{i}.attn2.processor"
            assert procs[key] is originals[key] and type(procs[key]) is WanAttnProcessor
        run(pipe, steps=3)
        recs = handle.stats.records
    assert set(lengths) == {(192, 192)}  # only video self-attention reaches the op
    assert len(lengths) == 2 * 2 * 2  # 2 sparse steps x 2 layers x 2 CFG branches
    assert {r.layer for r in recs} == {0, 1}
    assert all(0.0 < r.density < 1.0 for r in recs if r.sparse)


def test_single_instance_delegates_cross_attention_to_the_parent():
    cfg = cfg_(threshold=0.5, warmup_steps=1)
    pipe = tiny_wan_pipeline()
    with xv.apply_xattention(pipe, cfg):
        expected = run(pipe, steps=3)
    tr = pipe.transformer
    originals = dict(tr.attn_processors)
    proc = WanXAttnProcessor(cfg)
    tr.set_attn_processor(proc)  # attn1 and attn2
    attach_step_hook(tr, proc.controller, pipe=pipe)
    assert torch.equal(run(pipe, steps=3), expected)
    assert {r.layer for r in proc.stats.records} == {0, 1}
    tr.set_attn_processor(originals)


def _spy_steps(pipe, ctl):
    """(transformer name, step, branch, sparse) per forward, read after each forward."""
    seen = []
    for name in ("transformer", "transformer_2"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.register_forward_hook(
                lambda m, a, o, name=name: seen.append((name, ctl.step, ctl.branch, ctl.sparse))
            )
    return seen


def test_wan22_two_transformers_share_one_controller(monkeypatch):
    pipe = tiny_wan_pipeline(two_stage=True)
    ref = run(pipe, steps=4)
    originals = [dict(pipe.transformer.attn_processors), dict(pipe.transformer_2.attn_processors)]
    handle = xv.apply_xattention(pipe, cfg_(threshold=0.5, warmup_steps=1))
    ctl = handle.controller
    assert handle.transformers == [pipe.transformer, pipe.transformer_2]
    for tr in handle.transformers:
        xprocs = [p for p in tr.attn_processors.values() if isinstance(p, WanXAttnProcessor)]
        assert len(xprocs) == 2 and all(p.controller is ctl for p in xprocs)
    seen = _spy_steps(pipe, ctl)
    run(pipe, steps=4)
    assert seen == [
        ("transformer", 0, "cond", False), ("transformer", 0, "uncond", False),
        ("transformer", 1, "cond", True), ("transformer", 1, "uncond", True),
        ("transformer_2", 2, "cond", True), ("transformer_2", 2, "uncond", True),
        ("transformer_2", 3, "cond", True), ("transformer_2", 3, "uncond", True),
    ]  # fmt: skip
    per_step = {s["step"]: s for s in handle.stats.summary()["per_step"]}
    assert per_step[0]["sparse_density"] is None
    assert all(per_step[s]["num_sparse_calls"] == 4 for s in (1, 2, 3))
    handle.remove()
    for tr, orig in zip((pipe.transformer, pipe.transformer_2), originals, strict=True):
        assert all(tr.attn_processors[k] is v for k, v in orig.items())
    assert torch.equal(run(pipe, steps=4), ref)
    # both transformers' sparse calls equal stock attention with the same masks
    pinned(monkeypatch, pipe, cfg_(threshold=0.5, warmup_steps=1), lambda d: run(pipe, steps=4))


def test_remove_keeps_a_processor_the_user_set_meanwhile_and_drops_the_cached_masks():
    from ._tiny_models import wan_transformer_inputs

    pipe = tiny_wan_pipeline()
    tr = pipe.transformer
    originals = dict(tr.attn_processors)
    handle = xv.apply_xattention(pipe, cfg_(threshold=0.5, warmup_steps=0, mask_refresh=2))
    with torch.no_grad():
        tr(**wan_transformer_inputs())  # a bare forward: sparse, its masks kept for reuse
    assert len(handle.controller.masks) > 0 and handle.controller.sparse
    key = next(k for k, v in tr.attn_processors.items() if isinstance(v, WanXAttnProcessor))
    mine = WanAttnProcessor()
    dict(tr.named_modules())[key.removesuffix(".processor")].set_processor(mine)
    handle.remove()
    assert tr.attn_processors[key] is mine  # the user's, not the saved original
    assert all(tr.attn_processors[k] is v for k, v in originals.items() if k != key)
    assert len(handle.controller.masks) == 0 and not handle.controller.sparse


def test_an_apply_that_fails_part_way_leaves_the_model_as_it_was(monkeypatch):
    from xattn_video import apply as apply_mod
    from xattn_video.hook import step_hook

    pipe = tiny_wan_pipeline(two_stage=True)
    originals = [dict(pipe.transformer.attn_processors), dict(pipe.transformer_2.attn_processors)]
    calls = []

    def fail_second(tr, *args, **kw):
        calls.append(tr)
        if len(calls) == 2:
            raise RuntimeError("hook failed")
        return attach_step_hook(tr, *args, **kw)

    monkeypatch.setattr(apply_mod, "attach_step_hook", fail_second)
    with pytest.raises(RuntimeError, match="hook failed"):
        xv.apply_xattention(pipe, cfg_(threshold=0.5))
    assert calls == [pipe.transformer, pipe.transformer_2]
    for tr, orig in zip((pipe.transformer, pipe.transformer_2), originals, strict=True):
        assert dict(tr.attn_processors) == orig and step_hook(tr) is None


def test_one_module_set_as_both_experts_is_patched_once():
    """It was refused part-way with 'already has an XAttention step hook; remove it first'."""

    class Pipe:  # a pipeline object (it is weakly referenced)
        pass

    tr = tiny_wan_transformer()
    pipe = Pipe()
    pipe.transformer = pipe.transformer_2 = tr
    handle = xv.apply_xattention(pipe, cfg_(threshold=0.5))
    assert handle.transformers == [tr]
    xprocs = [p for p in tr.attn_processors.values() if isinstance(p, WanXAttnProcessor)]
    assert len(xprocs) == 2
    handle.remove()
    assert not any(isinstance(p, WanXAttnProcessor) for p in tr.attn_processors.values())


def test_step_from_cache_context_without_a_scheduler():
    # xattention_processors without `pipe`: Wan pipelines pass step_index in cache_context
    pipe = tiny_wan_pipeline()
    procs = xv.xattention_processors(pipe.transformer, cfg_(threshold=0.5, warmup_steps=2))
    pipe.transformer.set_attn_processor(procs)
    seen = _spy_steps(pipe, procs.controller)
    run(pipe, steps=3)
    assert [(s, b, sp) for _, s, b, sp in seen] == [
        (0, "cond", False), (0, "uncond", False), (1, "cond", False), (1, "uncond", False),
        (2, "cond", True), (2, "uncond", True),
    ]  # fmt: skip
    procs.handle.remove()


def test_bare_transformer_with_per_token_timesteps():
    """Wan 2.2 TI2V passes (B, N) timesteps whose first-frame entries are 0: steps come from
    their max, a repeat is the CFG pass, a larger value starts a new run."""
    tr = tiny_wan_transformer(num_layers=1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 3, 16, 16, generator=g)
    text = torch.randn(1, 8, 32, generator=g)
    handle = xv.apply_xattention(tr, cfg_(threshold=0.5, warmup_steps=1))
    ctl = handle.controller
    steps = []
    for t in (999.0, 999.0, 900.0, 900.0, 800.0, 999.0):
        ts = torch.full((1, 192), t)
        ts[:, :64] = 0.0  # first latent frame is the conditioning image
        out = tr(hidden_states=x, timestep=ts, encoder_hidden_states=text, return_dict=False)[0]
        assert torch.isfinite(out).all()
        steps.append((ctl.step, ctl.branch, ctl.sparse))
    assert steps == [
        (0, "pass0", False), (0, "pass1", False), (1, "pass0", True), (1, "pass1", True),
        (2, "pass0", True), (0, "pass0", False),
    ]  # fmt: skip
    assert ctl.grid == (3, 8, 8)
    handle.remove()


def test_end_to_end_with_vae_decodes_finite_video():
    pipe = tiny_wan_pipeline(with_vae=True, num_layers=1)
    with xv.apply_xattention(pipe, cfg_(threshold=0.5, warmup_steps=1, token_order="tile")) as h:
        video = run(pipe, steps=2, output_type="pt")
        assert h.stats.summary()["num_sparse_calls"] == 2
    assert video.shape == (1, 9, 3, 128, 128) and torch.isfinite(video).all()


@pytest.mark.gpu
@torch.no_grad()
def test_gpu_triton_bf16_matches_stock_and_runs_sparse():
    """Triton backend in bf16 (head dim 64, block 64, 1024 tokens, batch 2): all blocks within
    the tolerance rule against an fp64 stock forward; sparse raster / tile runs finite."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 4, 32, 32, generator=g).cuda()
    text = torch.randn(2, 8, 32, generator=g).cuda()
    t = torch.tensor([900.0, 900.0], device="cuda")
    tr = tiny_wan_transformer(head_dim=64).cuda().double()
    ref64 = tr(x.double(), t, text.double(), return_dict=False)[0]
    tr.to(torch.bfloat16)
    xb, tb = x.bfloat16(), text.bfloat16()
    stock = tr(xb, t, tb, return_dict=False)[0]
    # auto_dense off: at this size the cost model would (rightly) run every call dense, and this
    # test is about the Triton sparse path.
    cfg = xv.XAttentionConfig(
        threshold=1.0, stride=8, block_size=64, warmup_steps=0, auto_dense=False
    )
    with xv.apply_xattention(tr, cfg) as h:
        ours = tr(xb, t, tb, return_dict=False)[0]
        assert h.stats.summary()["sparse_density"] == 1.0
    assert_fa_close(ours, ref64, stock, what="bf16 transformer output")
    for kw in (
        dict(threshold=0.9),
        dict(selection="ratio", ratio=0.3, token_order="tile", tile_size=(1, 8, 8)),
    ):
        with xv.apply_xattention(tr, cfg.replace(**kw)) as h:
            out = tr(xb, t, tb, return_dict=False)[0]
            assert 0.0 < h.stats.summary()["sparse_density"] < 1.0
        assert torch.isfinite(out).all()


def test_wan22_processors_route_counts_transformer_2_from_the_call_start():
    """Wan 2.2 through ``xattention_processors(tr, cfg, pipe=pipe)`` per transformer (one
    controller each): transformer_2's controller first runs at the call's step 3 (after
    ``scheduler.step``) and used to count its steps from there (steps 0-2: warm-up again, and
    dense_last_steps missed). It now counts from the call's start, as apply_xattention's one
    shared controller does: 6 steps, warm-up 2, dense last 1 -> steps 2-4 sparse."""
    cfg = cfg_(warmup_steps=2, threshold=0.5, dense_last_steps=1)
    pipe = tiny_wan_pipeline(two_stage=True)
    procs = []
    for tr in (pipe.transformer, pipe.transformer_2):
        procs.append(xv.xattention_processors(tr, cfg, pipe=pipe))
        tr.set_attn_processor(procs[-1])
    run(pipe, steps=6)
    got = [
        sorted({(r.step, r.sparse) for r in p.stats.records if r.branch == "cond"}) for p in procs
    ]
    assert got == [[(0, False), (1, False), (2, True)], [(3, True), (4, True), (5, False)]]
