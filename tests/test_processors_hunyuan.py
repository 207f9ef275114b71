"""XAttention processors on a tiny HunyuanVideo transformer / pipeline (CPU, offline, seeded).

Block size 16 with stride 4, so the 192 video + 8 text tokens of the tiny model span 13 blocks.
"""

from __future__ import annotations

import json

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

import xattn_video as xv
from xattn_video import attention as attention_mod
from xattn_video.hook import HOOK_NAME, attach_step_hook
from xattn_video.processors import HunyuanVideoXAttnProcessor

from ._block_masks import pinned
from ._tiny_models import (  # noqa: F401
    framepack_inputs,
    hv_inputs,
    hv_text,
    hv_transformer_inputs,
    one_thread,
    tiny_framepack_transformer,
    tiny_hv_pipeline,
    tiny_hv_transformer,
)
from ._tiny_models import tiny_cfg as cfg_
from ._tolerance import assert_fa_close


def run(pipe, **kw) -> torch.Tensor:
    return pipe(**hv_inputs(**kw)).frames


CFG_KW = dict(true_cfg=True, lengths=[5, 8], neg_lengths=[3, 6])  # batch 2, unequal lengths


@pytest.mark.parametrize(
    "kw",
    [
        dict(threshold=0.5),
        dict(selection="ratio", ratio=0.3),
        dict(threshold=0.5, token_order="tile", tile_size=(1, 4, 4)),
        dict(threshold=0.5, token_order="tile", tile_size=(2, 3, 5)),  # does not divide (3, 8, 8)
        dict(threshold=0.5, text_policy="sparse"),
        dict(threshold=0.5, mask_refresh=2),
    ],
    ids=["raster", "ratio", "tile-divides", "tile-ragged", "text-sparse", "mask-reuse"],
)
def test_sparse_output_equals_stock_attention_with_the_same_mask(monkeypatch, kw):
    """Joint [video, text] sequence, batch 2 with padded text of unequal lengths, true CFG,
    one dense warm-up step: every call equals stock attention restricted to its block mask."""
    pipe = tiny_hv_pipeline()
    summary = pinned(
        monkeypatch,
        pipe,
        cfg_(warmup_steps=1, **kw),
        lambda dtype: run(pipe, steps=3, **CFG_KW),
    )
    assert 0.0 < summary["sparse_density"] < 1.0
    assert summary["num_sparse_calls"] == 2 * 3 * 2  # 2 sparse steps x 3 layers x 2 branches


def test_warmup_covering_all_steps_is_bit_identical():
    pipe = tiny_hv_pipeline()
    ref = run(pipe, **CFG_KW)
    with xv.apply_xattention(pipe, cfg_(threshold=0.3, warmup_steps=3)) as handle:
        out = run(pipe, steps=3, **CFG_KW)
        summary = handle.stats.summary()
    assert torch.equal(out, ref)
    assert summary["num_sparse_calls"] == 0 and summary["effective_density"] == 1.0


def _spy_dense_kernel(monkeypatch) -> list:
    """Masks of every block_sparse_attention call; the stock processor and the estimating op
    raise if called."""
    masks = []
    orig = attention_mod.block_sparse_attention

    def spy(q, k, v, mask, **kw):
        masks.append(mask)
        return orig(q, k, v, mask, **kw)

    def never(*a, **kw):
        raise AssertionError("a dense_kernel='xattn' call reached the stock path or the estimate")

    monkeypatch.setattr(attention_mod, "block_sparse_attention", spy)
    monkeypatch.setattr(attention_mod, "xattention", never)
    monkeypatch.setattr(HunyuanVideoAttnProcessor2_0, "__call__", never)
    return masks


@pytest.mark.parametrize("text_policy", ["dense", "sparse"])
def test_dense_kernel_xattn_runs_dense_steps_through_the_kernel(monkeypatch, text_policy):
    """dense_kernel="xattn", warm-up covering all steps (true CFG, unequal padded text): every
    call runs the kernel with every block -- no stock processor, no estimate -- and the latents
    meet the tolerance rule against an fp64 stock run."""
    pipe = tiny_hv_pipeline()
    stock32 = run(pipe, steps=3, **CFG_KW)
    pipe.transformer.double()
    ref64 = run(pipe, steps=3, **CFG_KW)
    pipe.transformer.float()
    masks = _spy_dense_kernel(monkeypatch)
    cfg = cfg_(warmup_steps=3, dense_kernel="xattn", text_policy=text_policy)
    with xv.apply_xattention(pipe, cfg) as handle:
        ours = run(pipe, steps=3, **CFG_KW)
        summary = handle.stats.summary()
    assert summary["num_sparse_calls"] == 0 and summary["effective_density"] == 1.0
    assert len(masks) == 3 * 3 * 2  # 3 steps x 3 layers x 2 branches
    assert all(m.shape[-2:] == (13, 13) and bool(m.all()) for m in masks)
    assert_fa_close(ours, ref64, stock32, what="latents")


@torch.no_grad()
def test_dense_kernel_xattn_keeps_padded_query_rows():
    """The text output of one double-stream attention call, padded rows included, equals the
    stock processor's within the tolerance rule: text_policy="sparse" zeroes padded query rows
    for the estimate only, never in a dense call."""
    tr = tiny_hv_transformer()
    calls = []
    attn = tr.transformer_blocks[0].attn
    hook = attn.register_forward_pre_hook(lambda m, a, kw: calls.append(kw), with_kwargs=True)
    tr(**hv_transformer_inputs(lengths=[3, 8]))
    hook.remove()
    kw = calls[0]
    assert not kw["attention_mask"].all()  # the first sample's text is padded
    stock32 = HunyuanVideoAttnProcessor2_0()(attn, **kw)
    kw64 = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v
            for k, v in kw.items()}  # fmt: skip
    kw64["image_rotary_emb"] = tuple(x.double() for x in kw["image_rotary_emb"])
    ref64 = HunyuanVideoAttnProcessor2_0()(attn.double(), **kw64)
    attn.float()
    proc = HunyuanVideoXAttnProcessor(cfg_(dense_kernel="xattn", text_policy="sparse"), layer=0)
    ours = proc(attn, **kw)  # no step hook attached: a dense call
    for i, what in enumerate(("video", "text")):
        assert_fa_close(ours[i], ref64[i], stock32[i], what=what)


@pytest.mark.parametrize(
    "kw",
    [
        dict(threshold=1.0),
        dict(selection="ratio", ratio=1.0),
        dict(threshold=1.0, token_order="tile", tile_size=(1, 4, 4)),
        dict(threshold=1.0, token_order="tile", tile_size=(2, 3, 5)),  # does not divide (3, 8, 8)
        dict(threshold=1.0, text_policy="sparse"),
    ],
    ids=["threshold1", "ratio1", "tile-divides", "tile-ragged", "text-sparse"],
)
def test_all_blocks_matches_stock_within_tolerance(kw):
    """Tolerance rule (DESIGN.md): err(ours fp32 vs fp64 stock) <= 2 * err(stock fp32 vs fp64
    stock) + fp32 rounding floor. The fp64 reference is the stock pipeline on a double copy."""
    pipe = tiny_hv_pipeline()
    stock32 = run(pipe, **CFG_KW)
    pipe.transformer.double()
    ref64 = run(pipe, **CFG_KW)
    pipe.transformer.float()
    with xv.apply_xattention(pipe, cfg_(warmup_steps=0, **kw)) as handle:
        ours = run(pipe, **CFG_KW)
        assert handle.stats.summary()["sparse_density"] == 1.0
        assert handle.stats.summary()["num_dense_calls"] == 0
    assert_fa_close(ours, ref64, stock32, what="latents")


def test_sparse_run_records_density_per_step_and_layer():
    pipe = tiny_hv_pipeline()
    with xv.apply_xattention(pipe, cfg_(threshold=0.5, warmup_steps=1)) as handle:
        run(pipe, steps=3)
        stats = handle.stats
        summary = stats.summary()
    for step in range(3):
        for layer in range(3):  # 1 double-stream + 2 single-stream blocks
            d = stats.density(step, layer)
            assert d is not None
            assert d == 1.0 if step == 0 else 0.0 < d < 1.0
    assert 0.0 < summary["sparse_density"] < summary["effective_density"] < 1.0
    assert summary["num_sparse_calls"] == 6 and summary["num_dense_calls"] == 3
    assert [s["step"] for s in summary["per_step"]] == [0, 1, 2]
    assert [s["layer"] for s in summary["per_layer"]] == [0, 1, 2]
    assert len(summary["per_head"]) == 2
    json.dumps(stats.to_dict())  # JSON-serialisable


def test_true_cfg_counts_one_step_per_pair_of_forwards():
    pipe = tiny_hv_pipeline()
    seen: list[tuple[int, str, bool]] = []
    with xv.apply_xattention(pipe, cfg_(threshold=0.5, warmup_steps=2)) as handle:
        ctl = handle.controller
        orig = ctl.begin_forward

        def spy(**kw):
            orig(**kw)
            seen.append((ctl.step, ctl.branch, ctl.sparse))

        ctl.begin_forward = spy
        run(pipe, steps=4, true_cfg=True)
        recs = handle.stats.records
    assert seen == [
        (0, "cond", False), (0, "uncond", False), (1, "cond", False), (1, "uncond", False),
        (2, "cond", True), (2, "uncond", True), (3, "cond", True), (3, "uncond", True),
    ]  # fmt: skip
    assert {(r.step, r.branch) for r in recs if r.sparse} == {
        (s, b) for s in (2, 3) for b in ("cond", "uncond")
    }


def test_two_pipeline_calls_both_start_dense():
    pipe = tiny_hv_pipeline()
    with xv.apply_xattention(pipe, cfg_(threshold=0.5, warmup_steps=1, mask_refresh=3)) as h:
        first = run(pipe, steps=3)
        second = run(pipe, steps=3)
        recs = h.stats.records
        assert len(h.controller.masks) == 0  # reset at the end of each pipeline call
    assert torch.equal(first, second)
    assert {r.run for r in recs} == {0, 1}
    for run_idx in (0, 1):
        mine = [r for r in recs if r.run == run_idx]
        assert all(not r.sparse for r in mine if r.step == 0)
        assert all(r.sparse for r in mine if r.step > 0)


def test_remove_restores_stock_processors_and_behaviour():
    pipe = tiny_hv_pipeline()
    tr = pipe.transformer
    originals = dict(tr.attn_processors)
    ref = run(pipe, **CFG_KW)
    handle = xv.apply_xattention(pipe, cfg_(threshold=0.5, warmup_steps=1))
    procs = tr.attn_processors
    assert sum(isinstance(p, HunyuanVideoXAttnProcessor) for p in procs.values()) == 3
    refiner_key = "context_embedder.token_refiner.refiner_blocks.0.attn.processor"
    assert procs[refiner_key] is originals[refiner_key]
    assert not torch.equal(run(pipe, **CFG_KW), ref)
    handle.remove()
    handle.remove()  # idempotent
    assert all(tr.attn_processors[k] is v for k, v in originals.items())
    assert tr._diffusers_hook.get_hook(HOOK_NAME) is None
    assert "forward" not in vars(tr)
    assert torch.equal(run(pipe, **CFG_KW), ref)
    assert "removed" in repr(handle)


def _count_offload_loads(monkeypatch) -> list[str]:
    """The class names of the modules accelerate's model-offload hook loads, call by call."""
    import accelerate.hooks

    loads, real = [], accelerate.hooks.CpuOffload.pre_forward

    def counting(self, module, *args, **kwargs):
        loads.append(type(module).__name__)
        return real(self, module, *args, **kwargs)

    monkeypatch.setattr(accelerate.hooks.CpuOffload, "pre_forward", counting)
    return loads


@pytest.mark.parametrize("then", ["remove", "reapply"])
def test_model_offload_enabled_after_apply_survives_remove_and_reapply(then, monkeypatch):
    """apply -> ``enable_model_cpu_offload`` (accelerate wraps the step hook's forward) ->
    remove or a second apply: the registry put its inner forward over accelerate's wrapper, so
    the offload hook stopped running on the transformer (on a GPU: weights left on the CPU),
    and diffusers' re-installed hooks ran the removed handle's step hook again."""
    loads = _count_offload_loads(monkeypatch)
    pipe, name = tiny_hv_pipeline(), "HunyuanVideoTransformer3DModel"
    ref = run(pipe, **CFG_KW)
    cfg = cfg_(threshold=0.5, warmup_steps=1)
    handle = xv.apply_xattention(pipe, cfg)
    pipe.enable_model_cpu_offload(device="cpu")
    sparse = run(pipe, **CFG_KW)
    per_call = loads.count(name)  # one per transformer forward
    assert per_call >= 2
    new = handle.remove() if then == "remove" else xv.apply_xattention(pipe, cfg)
    for _ in range(2):  # the second call: after diffusers re-installed the offload hooks
        loads.clear()
        forwards = handle.controller.forwards
        out = run(pipe, **CFG_KW)
        assert loads.count(name) == per_call
        assert handle.controller.forwards == forwards  # the removed step hook stays out
        if then == "remove":
            assert torch.equal(out, ref)
        else:
            assert torch.equal(out, sparse) and new.controller.forwards > 0


def test_apply_after_model_offload_holds_for_every_call_and_removes():
    """``enable_model_cpu_offload`` then ``apply_xattention``: the pipeline removes and adds the
    offload hooks at the end of every call, and accelerate's removal restored the forward it
    had wrapped, dropping the step hook: from the second call on the processors ran on the
    first call's last step state (no warm-up, no new run; other videos for the same seed)."""
    cfg = cfg_(threshold=0.5, warmup_steps=1)
    plain = tiny_hv_pipeline()
    ref = run(plain, **CFG_KW)
    xv.apply_xattention(plain, cfg)
    want = run(plain, **CFG_KW)
    pipe = tiny_hv_pipeline()
    pipe.enable_model_cpu_offload(device="cpu")
    handle = xv.apply_xattention(pipe, cfg)
    for call in range(3):
        assert torch.equal(run(pipe, **CFG_KW), want)
        steps = sorted({(r.step, r.sparse) for r in handle.stats.records if r.run == call})
        assert steps == [(0, False), (1, True), (2, True)]
    handle.remove()
    assert torch.equal(run(pipe, **CFG_KW), ref) and torch.equal(run(pipe, **CFG_KW), ref)
    assert pipe.transformer._diffusers_hook.get_hook(HOOK_NAME) is None


@pytest.mark.parametrize("call_between", [False, True])
@pytest.mark.parametrize("offload_first", [False, True])
def test_remove_under_offload_with_a_hook_registered_after_ours(
    offload_first, call_between, monkeypatch
):
    """Another diffusers hook registered on the transformer after XAttention (a cache hook),
    with model offload: the registry relinks that hook's forward on removal, not
    ``module.forward``, and the first offload fix then made accelerate's wrapper call itself
    (RecursionError) or left it out of the chain (no offload)."""
    from diffusers.hooks import HookRegistry, ModelHook

    loads = _count_offload_loads(monkeypatch)
    pipe, name = tiny_hv_pipeline(), "HunyuanVideoTransformer3DModel"
    ref = run(pipe, **CFG_KW)
    if offload_first:
        pipe.enable_model_cpu_offload(device="cpu")
    handle = xv.apply_xattention(pipe, cfg_(threshold=0.5, warmup_steps=1))
    if not offload_first:
        pipe.enable_model_cpu_offload(device="cpu")
    HookRegistry.check_if_exists_or_initialize(pipe.transformer).register_hook(ModelHook(), "x")
    loads.clear()
    if call_between:
        run(pipe, **CFG_KW)
    per_call = loads.count(name) if call_between else 6  # 3 steps x (cond, uncond)
    handle.remove()
    for _ in range(2):
        loads.clear()
        assert torch.equal(run(pipe, **CFG_KW), ref)
        assert loads.count(name) == per_call


@pytest.mark.parametrize("text_policy", ["dense", "sparse"])
def test_padded_text_keys_never_influence_the_output(text_policy):
    pipe = tiny_hv_pipeline()
    cfg = cfg_(threshold=0.5, warmup_steps=0, text_policy=text_policy)

    def call(pad: float | int) -> tuple[torch.Tensor, list]:
        """A constant pad value (float), or random padded embeddings from seed ``pad`` (int):
        the token refiner's LayerNorm maps any constant to one vector, so constants alone
        missed padded text *query* rows steering the sparse-text estimate."""
        kw = hv_inputs(lengths=[3, 8], steps=2)
        txt = hv_text([3, 8], seed=1, pad_value=0.0)
        if isinstance(pad, int):
            noise = torch.randn(txt["embeds"].shape, generator=torch.Generator().manual_seed(pad))
            txt["embeds"] = torch.where(txt["mask"].bool()[..., None], txt["embeds"], 3 * noise)
        else:
            txt["embeds"][~txt["mask"].bool()] = pad
        kw["prompt_embeds"] = txt["embeds"]
        with xv.apply_xattention(pipe, cfg) as handle:
            frames = pipe(**kw).frames
        densities = [(r.layer, r.step, r.density) for r in handle.stats.records if r.sparse]
        return frames, densities

    (a, da), (b, db), (c, dc), (d, dd) = call(0.0), call(7.5), call(1), call(2)
    assert da and max(x for *_, x in da) < 1.0
    assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(a, d)
    assert da == db == dc == dd  # the same blocks chosen, whatever the padding holds


def test_refiner_works_with_a_single_processor_instance():
    tr = tiny_hv_transformer()
    inputs = hv_transformer_inputs(lengths=[3, 8])
    ref = tr(**inputs)[0]
    proc = HunyuanVideoXAttnProcessor(cfg_(threshold=0.5, warmup_steps=0))
    tr.set_attn_processor(proc)  # also lands on the token refiner
    assert tr.context_embedder.token_refiner.refiner_blocks[0].attn.processor is proc
    assert isinstance(proc._refiner_processor, AttnProcessor2_0)
    # no step hook yet: dense everywhere, bit-identical to stock
    assert torch.equal(tr(**inputs)[0], ref)
    attach_step_hook(tr, proc.controller)
    out = tr(**inputs)[0]
    other = tiny_hv_transformer()  # the same weights
    with xv.apply_xattention(other, proc.cfg):
        assert torch.equal(out, other(**inputs)[0])  # the same as the pinned apply route
    layers = sorted({r.layer for r in proc.stats.records if r.sparse})
    assert layers == [0, 1, 2]  # found through the attention modules, not the instance


def test_xattention_processors_native_route():
    pipe = tiny_hv_pipeline()
    tr = pipe.transformer
    originals = dict(tr.attn_processors)
    ref = run(pipe, steps=3)
    with xv.apply_xattention(pipe, cfg_(threshold=0.5, warmup_steps=1)):
        applied = run(pipe, steps=3)
    procs = xv.xattention_processors(tr, cfg_(threshold=0.5, warmup_steps=1), pipe=pipe)
    assert set(procs) == set(originals)
    refiner_keys = [k for k in procs if k.startswith("context_embedder.")]
    assert refiner_keys and all(procs[k] is originals[k] for k in refiner_keys)
    tr.set_attn_processor(procs)  # consumes the dict; .stats / .handle stay usable
    assert torch.equal(run(pipe, steps=3), applied)  # the same as the pinned apply route
    assert procs.stats.summary()["num_sparse_calls"] == 6
    procs.remove()  # the same as procs.handle.remove()
    assert not procs.handle.active
    assert all(tr.attn_processors[k] is v for k, v in originals.items())
    assert torch.equal(run(pipe, steps=3), ref)


def test_dense_layers_are_honoured():
    pipe = tiny_hv_pipeline()
    with xv.apply_xattention(pipe, cfg_(threshold=0.5, warmup_steps=0, dense_layers=(1,))) as h:
        run(pipe, steps=2)
        recs = h.stats.records
    assert all(not r.sparse and r.density == 1.0 for r in recs if r.layer == 1)
    assert all(r.sparse for r in recs if r.layer in (0, 2))


def test_mask_refresh_reuses_masks_per_layer_and_branch(monkeypatch):
    calls = []
    real = attention_mod._estimate_mask

    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(attention_mod, "_estimate_mask", spy)
    pipe = tiny_hv_pipeline()
    # 5 steps, 1 warm-up: 4 sparse steps x 3 layers x 2 CFG branches = 24 sparse calls
    with xv.apply_xattention(pipe, cfg_(threshold=0.5, warmup_steps=1)) as h:
        every = run(pipe, steps=5, true_cfg=True)
        assert len(calls) == 24 and h.stats.summary()["num_sparse_calls"] == 24
    calls.clear()
    with xv.apply_xattention(pipe, cfg_(threshold=0.5, warmup_steps=1, mask_refresh=2)) as h:
        reused = run(pipe, steps=5, true_cfg=True)
        recs = [r for r in h.stats.records if r.sparse]
    assert len(calls) == 12  # estimated at sparse steps 1 and 3, reused at 2 and 4
    assert {r.step for r in recs if r.reused} == {2, 4}
    assert {r.step for r in recs if not r.reused} == {1, 3}
    assert not torch.equal(reused, every)  # output pinned by the "mask-reuse" case above


def test_unknown_model_and_bad_input_errors():
    with pytest.raises(ValueError, match=r"Linear.*HunyuanVideoTransformer3DModel"):
        xv.apply_xattention(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no `transformer`"):
        xv.apply_xattention(object())
    pipe = tiny_hv_pipeline()
    with pytest.raises(ValueError, match="does not match"):
        xv.apply_xattention(pipe, cfg_(), model="wan")
    with pytest.raises(ValueError, match="does not match"):  # names are case-blind
        xv.apply_xattention(pipe, cfg_(), model="Wan")
    with pytest.raises(ValueError, match="unknown model 'flux'"):
        xv.apply_xattention(pipe, cfg_(), model="flux")
    with pytest.raises(ValueError, match="XAttentionConfig"):
        xv.apply_xattention(pipe, {"threshold": 0.5})
    with pytest.raises(ValueError, match=r"dense_layers \[3, 7\].*3 attention layers"):
        xv.apply_xattention(pipe, cfg_(dense_layers=(1, 3, 7)))
    assert getattr(pipe.transformer, "_diffusers_hook", None) is None
    for name in ("HunyuanVideo", "hunyuan", "HUNYUANVIDEO"):
        xv.apply_xattention(pipe, cfg_(), model=name).remove()


def test_reapplying_replaces_the_previous_application():
    pipe = tiny_hv_pipeline()
    tr = pipe.transformer
    ref = run(pipe, steps=2)
    first = xv.apply_xattention(pipe, cfg_(threshold=0.5, warmup_steps=0))
    sparse = run(pipe, steps=2)
    second = xv.apply_xattention(pipe, cfg_(threshold=0.5, warmup_steps=0))
    assert not first.active and second.active and "removed" in repr(first)
    xprocs = [p for p in tr.attn_processors.values() if isinstance(p, HunyuanVideoXAttnProcessor)]
    assert len(xprocs) == 3 and all(p.controller is second.controller for p in xprocs)
    assert torch.equal(run(pipe, steps=2), sparse)
    assert len(first.stats) == 3 * 2 and len(second.stats) == 3 * 2
    first.remove()  # a no-op: it no longer owns anything
    assert torch.equal(run(pipe, steps=2), sparse)
    second.remove()
    assert torch.equal(run(pipe, steps=2), ref)
    assert "forward" not in vars(tr)


def test_a_discarded_processor_dict_never_blocks_apply_xattention():
    """Issue 11 #4: building the dict attached the step hook, and a later apply raised."""
    pipe = tiny_hv_pipeline()
    tr = pipe.transformer
    ref = run(pipe, steps=2)
    procs = xv.xattention_processors(tr, cfg_(threshold=0.5, warmup_steps=0), pipe=pipe)
    assert torch.equal(run(pipe, steps=2), ref)  # not installed: the model is unchanged
    assert len(procs.stats) == 0
    del procs
    with xv.apply_xattention(pipe, cfg_(threshold=0.5, warmup_steps=0)) as handle:
        out = run(pipe, steps=2)
        assert handle.stats.summary()["num_sparse_calls"] == 6
    assert not torch.equal(out, ref)
    assert torch.equal(run(pipe, steps=2), ref)
    assert (
        getattr(tr, "_diffusers_hook", None) is None
        or tr._diffusers_hook.get_hook(HOOK_NAME) is None
    )


def test_apply_replaces_an_installed_processor_dict():
    pipe = tiny_hv_pipeline()
    tr = pipe.transformer
    originals = dict(tr.attn_processors)
    procs = xv.xattention_processors(tr, cfg_(threshold=0.5, warmup_steps=0), pipe=pipe)
    tr.set_attn_processor(procs)
    with xv.apply_xattention(pipe, cfg_(threshold=0.3, warmup_steps=0)) as handle:
        assert not procs.handle.active
        ours = [p for p in tr.attn_processors.values() if isinstance(p, HunyuanVideoXAttnProcessor)]
        assert len(ours) == 3 and all(p.controller is handle.controller for p in ours)
        run(pipe, steps=2)
        assert len(procs.stats) == 0 and handle.stats.summary()["num_sparse_calls"] == 6
    procs.remove()  # a no-op now
    assert all(tr.attn_processors[k] is v for k, v in originals.items())


def test_a_hand_attached_hook_is_not_replaced():
    tr = tiny_hv_transformer()
    proc = HunyuanVideoXAttnProcessor(cfg_())
    attach_step_hook(tr, proc.controller)
    with pytest.raises(ValueError, match="detach_step_hook"):
        xv.apply_xattention(tr, cfg_())


def test_exception_in_a_call_does_not_leak_into_the_next_call():
    """Issue 11 #3: a call that raised at step 0 left its masks (mask_refresh > 1) and step in
    the controller; the next call reused them and differed from a fresh run."""
    pipe = tiny_hv_pipeline()
    cfg = cfg_(threshold=0.5, warmup_steps=0, mask_refresh=3)
    with xv.apply_xattention(pipe, cfg):
        fresh = run(pipe, steps=5, seed=0)

    def boom(*args, **kwargs):
        raise ZeroDivisionError

    with xv.apply_xattention(pipe, cfg) as handle:
        with pytest.raises(ZeroDivisionError):
            pipe(**hv_inputs(steps=5, seed=7), callback_on_step_end=boom)
        again = run(pipe, steps=5, seed=0)
        runs = sorted({r.run for r in handle.stats.records})
    assert torch.equal(again, fresh)
    assert runs == [0, 1]


def test_custom_processor_is_not_replaced_and_model_is_left_untouched():
    pipe = tiny_hv_pipeline()
    tr = pipe.transformer

    class Custom(HunyuanVideoAttnProcessor2_0):
        pass

    tr.single_transformer_blocks[1].attn.set_processor(Custom())
    before = dict(tr.attn_processors)
    with pytest.raises(ValueError, match="Custom"):
        xv.apply_xattention(pipe, cfg_())
    assert all(tr.attn_processors[k] is v for k, v in before.items())
    assert getattr(tr, "_diffusers_hook", None) is None or not tr._diffusers_hook.hooks


def test_attention_backend_setting_is_carried_over():
    pipe = tiny_hv_pipeline()
    # what transformer.set_attention_backend() writes on each processor (without also
    # switching diffusers' global backend, which would leak into other tests)
    for p in pipe.transformer.attn_processors.values():
        if hasattr(p, "_attention_backend"):
            p._attention_backend = "_native_math"
    with xv.apply_xattention(pipe, cfg_()):
        procs = [
            p for p in pipe.transformer.attn_processors.values()
            if isinstance(p, HunyuanVideoXAttnProcessor)
        ]  # fmt: skip
        assert procs and all(p._attention_backend == "_native_math" for p in procs)


def test_an_attention_backend_set_while_applied_is_kept_after_remove():
    """remove() put back the original processors with their old backend: only the layers
    XAttention did not replace kept the backend the user set meanwhile."""
    pipe = tiny_hv_pipeline()
    handle = xv.apply_xattention(pipe, cfg_())
    for p in pipe.transformer.attn_processors.values():  # what set_attention_backend writes
        p._attention_backend = "_native_math"
    handle.remove()
    backends = [
        getattr(p, "_attention_backend", None) for p in pipe.transformer.attn_processors.values()
    ]
    assert len(backends) > 1 and set(backends) == {"_native_math"}


def test_a_torch_compile_wrapper_is_refused_with_how_to_compile():
    """pipe.transformer = torch.compile(pipe.transformer) was refused as "XAttention does not
    support OptimizedModule", as if the model were unsupported."""
    pipe = tiny_hv_pipeline()
    pipe.transformer = torch.compile(pipe.transformer)
    for target in (pipe, pipe.transformer):
        with pytest.raises(ValueError, match=(
            r"^HunyuanVideoTransformer3DModel is wrapped by torch.compile: apply XAttention to the "
            r"uncompiled transformer, then compile it in place \(transformer.compile\(\)\)"
        )):  # fmt: skip
            xv.apply_xattention(target, cfg_())
    with pytest.raises(ValueError, match="^XAttention does not support Linear; supported"):
        xv.apply_xattention(torch.compile(torch.nn.Linear(2, 2)))


def test_processor_dict_for_framepack_is_refused_before_the_step_hook():
    """Framepack has no set_attn_processor: xattention_processors returned a dict that cannot
    be installed, and had already attached its step hook. It refuses, naming apply_xattention,
    and leaves the transformer as it was."""
    from xattn_video.hook import step_hook

    tr = tiny_framepack_transformer()
    with pytest.raises(ValueError, match="no set_attn_processor.*use apply_xattention"):
        xv.xattention_processors(tr)
    assert step_hook(tr) is None


@torch.no_grad()
def test_framepack_without_grid_orders(monkeypatch):
    tr = tiny_framepack_transformer()
    inputs = framepack_inputs()
    ref = tr(**inputs)[0]
    as64 = {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
            for k, v in inputs.items()}  # fmt: skip
    ref64 = tr.double()(**as64)[0]
    tr.float()
    with xv.apply_xattention(tr, cfg_(threshold=1.0, warmup_steps=0)) as h:
        full = tr(**inputs)[0]
        assert h.stats.summary()["sparse_density"] == 1.0
    assert_fa_close(full, ref64, ref, what="framepack")
    inputs_of = {torch.float32: inputs, torch.float64: as64}
    summary = pinned(
        monkeypatch, tr, cfg_(threshold=0.5, warmup_steps=0), lambda d: tr(**inputs_of[d])[0]
    )
    assert summary["sparse_density"] < 1.0
    for order in ("tile", "hilbert"):  # both need one (T, H, W) grid; hilbert was accepted
        with pytest.raises(ValueError, match=f"token_order='{order}' is not supported.*raster"):
            xv.apply_xattention(tr, cfg_(token_order=order))  # and failed at the first sparse step
    with xv.apply_xattention(tr, cfg_(token_order="cluster", threshold=0.5, warmup_steps=0)) as h:
        tr(**inputs)  # cluster starts from the raster order without a grid
        assert h.stats.summary()["num_sparse_calls"] > 0


def _to(inputs: dict, dtype: torch.dtype, device: str = "cuda") -> dict:
    """Move tensors to ``device``; floating ones (except the timestep) to ``dtype``."""
    out = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device)
            if v.is_floating_point() and k != "timestep":
                v = v.to(dtype)
        out[k] = v
    return out


def _gpu_bf16_model():
    """(bf16 tiny transformer on CUDA (head dim 64), bf16 inputs (1024 video + 8 text tokens,
    batch 2 with unequal text), fp64 stock output, bf16 stock output)."""
    inputs = hv_transformer_inputs(lengths=[5, 8], grid=(4, 16, 16))
    tr = tiny_hv_transformer(head_dim=64).cuda().double()
    ref64 = tr(**_to(inputs, torch.float64))[0]
    tr.to(torch.bfloat16)
    bf16 = _to(inputs, torch.bfloat16)
    return tr, bf16, ref64, tr(**bf16)[0]


@pytest.mark.gpu
@torch.no_grad()
def test_gpu_triton_bf16_matches_stock_and_runs_sparse():
    """Triton backend in bf16 (head dim 64, block 64, 1024 video + 8 text tokens, batch 2 with
    unequal text): all blocks within the tolerance rule against an fp64 stock forward, and
    sparse raster / tile runs are finite with density < 1."""
    tr, bf16, ref64, stock = _gpu_bf16_model()
    # auto_dense off: at this size the cost model would (rightly) run every call dense, and this
    # test is about the Triton sparse path.
    cfg = xv.XAttentionConfig(
        threshold=1.0, stride=8, block_size=64, warmup_steps=0, auto_dense=False
    )
    with xv.apply_xattention(tr, cfg) as h:  # backend "auto" -> triton on CUDA
        ours = tr(**bf16)[0]
        assert h.stats.summary()["sparse_density"] == 1.0
    assert_fa_close(ours, ref64, stock, what="bf16 transformer output")
    for kw in (
        dict(threshold=0.9),
        dict(selection="ratio", ratio=0.3, token_order="tile", tile_size=(1, 8, 8)),
    ):
        with xv.apply_xattention(tr, cfg.replace(**kw)) as h:
            out = tr(**bf16)[0]
            assert 0.0 < h.stats.summary()["sparse_density"] < 1.0
        assert torch.isfinite(out).all()


@pytest.mark.gpu
@torch.no_grad()
def test_gpu_dense_kernel_xattn_matches_stock(monkeypatch):
    """dense_kernel="xattn" on the Triton backend in bf16 (head dim 64, block 64, 1024 video + 8
    text tokens, batch 2 with unequal text), every call dense: the kernel with every block runs
    every layer, within the tolerance rule against an fp64 stock forward."""
    tr, bf16, ref64, stock = _gpu_bf16_model()
    masks = _spy_dense_kernel(monkeypatch)
    cfg = xv.XAttentionConfig(block_size=64, dense_layers=(0, 1, 2), dense_kernel="xattn")
    with xv.apply_xattention(tr, cfg) as h:
        ours = tr(**bf16)[0]
        assert h.stats.summary()["num_sparse_calls"] == 0
    assert len(masks) == 3 and all(bool(m.all()) for m in masks)
    assert_fa_close(ours, ref64, stock, what="bf16 transformer output")
