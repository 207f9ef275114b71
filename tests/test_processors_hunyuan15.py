"""XAttention on HunyuanVideo 1.5 (``HunyuanVideo15Transformer3DModel``): its double-stream
blocks' joint [video, text] attention, on a tiny random-weight ``HunyuanVideo15Pipeline`` with
the pipeline's CFG guider (prompt and negative prompt of different text lengths)."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.transformers.transformer_hunyuan_video15 import (
    HunyuanVideo15AttnProcessor2_0,
)

import xattn_video as xv
from xattn_video.processors import HunyuanVideo15XAttnProcessor
from xattn_video.targets import model_family, target_layers
from xattn_video.thresholds import file_family

from ._block_masks import pinned
from ._tiny_models import (  # noqa: F401
    hv15_inputs,
    one_thread,
    tiny_hv15_pipeline,
    tiny_hv15_transformer,
)
from ._tiny_models import tiny_cfg as cfg_
from ._tolerance import assert_fa_close


def run(pipe, **kw) -> torch.Tensor:
    return pipe(**hv15_inputs(**kw)).frames


def test_hv15_blocks_are_targets_and_the_refiner_is_not():
    pipe = tiny_hv15_pipeline()
    tr = pipe.transformer
    assert model_family(tr) == "hunyuanvideo15"
    assert model_family(tr, "hunyuanvideo1.5") == "hunyuanvideo15"
    with pytest.raises(ValueError, match="does not match"):
        model_family(tr, "hunyuanvideo")
    assert [(p, i) for p, _, i in target_layers(tr)] == [
        ("transformer_blocks.0.attn", 0),
        ("transformer_blocks.1.attn", 1),
    ]
    before = dict(tr.attn_processors)
    with xv.apply_xattention(pipe, cfg_(threshold=0.5, warmup_steps=1)) as handle:
        assert handle.model == "hunyuanvideo15"
        for name, proc in tr.attn_processors.items():
            if name.startswith("transformer_blocks."):
                assert type(proc) is HunyuanVideo15XAttnProcessor, name
            else:  # the token refiner keeps its own processor object
                assert proc is before[name], name
        assert handle.cfg.warmup_steps == 1
    assert all(tr.attn_processors[k] is v for k, v in before.items())
    assert xv.XAttentionConfig.from_preset("hunyuanvideo15") == xv.XAttentionConfig.from_preset(
        "hunyuanvideo"
    )


def test_hv15_warmup_covering_all_steps_is_bit_identical():
    pipe = tiny_hv15_pipeline()
    ref = run(pipe, steps=2)
    with xv.apply_xattention(pipe, cfg_(threshold=0.3, warmup_steps=2)) as handle:
        out = run(pipe, steps=2)
        assert handle.stats.summary()["num_sparse_calls"] == 0
    assert torch.equal(out, ref)


def _attention_outputs(pipe, steps: int = 2) -> tuple[torch.Tensor, list[tuple]]:
    """(latents, [(video_out, text_out) of every target attention call, in call order])."""
    seen = []
    hooks = [
        module.register_forward_hook(lambda m, a, out: seen.append(tuple(o.clone() for o in out)))
        for _, module, _ in target_layers(pipe.transformer)
    ]
    try:
        return run(pipe, steps=steps), seen
    finally:
        for h in hooks:
            h.remove()


def test_hv15_dense_kernel_xattn_matches_stock_in_both_streams():
    """dense_kernel="xattn" with every step dense: the kernel with every block and the text
    padding as key lengths. Both outputs of every attention call (video and text stream) meet
    the tolerance rule against stock fp64, and padded text rows are zeros, as the stock
    processor's query-and-key mask makes them (before, our path attended from padded rows)."""
    pipe = tiny_hv15_pipeline()
    lat32, stock32 = _attention_outputs(pipe)
    pipe.transformer.double()
    lat64, ref64 = _attention_outputs(pipe)
    pipe.transformer.float()
    with xv.apply_xattention(pipe, cfg_(warmup_steps=2, dense_kernel="xattn")) as handle:
        lat, ours = _attention_outputs(pipe)
        assert handle.stats.summary()["num_sparse_calls"] == 0
    assert len(ours) == len(ref64) == 2 * 2 * 2  # steps x layers x CFG forwards
    for i, (o, r, s) in enumerate(zip(ours, ref64, stock32, strict=True)):
        assert_fa_close(o[0], r[0], s[0], what=f"call {i} video")
        assert_fa_close(o[1], r[1], s[1], what=f"call {i} text")
    # text order inside the transformer: 4 image tokens (padding in text-to-video) sorted after
    # the valid ByT5 and prompt tokens: 4 + 5 valid (cond), 2 + 3 (uncond); then padding.
    # Call order per step: cond layers 0, 1, then uncond layers 0, 1
    for i, (o, s) in enumerate(zip(ours, stock32, strict=True)):
        n_valid = 9 if (i // 2) % 2 == 0 else 5
        bias = o[1][:, n_valid:]  # to_add_out of zeros: its bias on every padded row
        assert torch.equal(bias, bias[:, :1].expand_as(bias)), i
        assert torch.allclose(o[1][:, n_valid:], s[1][:, n_valid:], atol=1e-6), i
    assert_fa_close(lat, lat64, lat32, what="latents")


@pytest.mark.parametrize(
    "kw",
    [
        dict(threshold=0.5),
        dict(threshold=0.5, text_policy="sparse"),
        dict(selection="ratio", ratio=0.3, token_order="tile", tile_size=(1, 4, 4)),
    ],
    ids=["dense-text", "sparse-text", "ratio-tile"],
)
def test_hv15_sparse_output_equals_stock_attention_with_the_same_mask(monkeypatch, kw):
    """CFG with two text lengths, one dense warm-up step of three: every sparse call equals
    stock attention restricted to its block mask (tolerance rule)."""
    pipe = tiny_hv15_pipeline()
    summary = pinned(monkeypatch, pipe, cfg_(warmup_steps=1, **kw), lambda d: run(pipe, steps=3))
    assert 0.0 < summary["sparse_density"] < 1.0
    assert summary["num_sparse_calls"] == 2 * 2 * 2  # 2 sparse steps x 2 layers x 2 branches


def test_hv15_refuses_what_it_cannot_run():
    pipe = tiny_hv15_pipeline(num_layers=1)
    with pytest.raises(ValueError, match="HunyuanVideo15Transformer3DModel"):
        xv.context_parallel_plan(pipe.transformer)
    proc = HunyuanVideo15XAttnProcessor(cfg_(warmup_steps=0), layer=0)
    proc.controller.sparse = True
    attn = pipe.transformer.transformer_blocks[0].attn
    x, text = torch.randn(1, 32, 32), torch.randn(1, 6, 32)
    with pytest.raises(ValueError, match=r"text mask \[B, 6\]"):
        proc(attn, x, text, torch.ones(1, 1, 1, 38, dtype=torch.bool))
    assert isinstance(proc, HunyuanVideo15AttnProcessor2_0)


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("tencent/HunyuanVideo-1.5", "hunyuanvideo15"),
        ("hunyuanvideo15-480p", "hunyuanvideo15"),
        ("HunyuanVideo", "hunyuanvideo"),
        ("hunyuanvideo-community/HunyuanVideo", "hunyuanvideo"),
    ],
)
def test_thresholds_file_family_tells_hunyuanvideo_15_apart(model, family):
    assert file_family({"model": model}) == family


def _transformer_inputs(dtype: torch.dtype, grid=(3, 16, 16), device: str = "cuda") -> dict:
    """A bare forward's inputs: batch 2 with unequal text (prompt 5 / 8 valid of 8, ByT5 4 / 2
    of 6, 4 image tokens, all padding: text-to-video)."""
    g = torch.Generator().manual_seed(0)

    def mask(n, valid):
        return (torch.arange(n)[None, :] < torch.tensor(valid)[:, None]).long().to(device)

    return dict(
        hidden_states=torch.randn(2, 9, *grid, generator=g).to(device, dtype),
        timestep=torch.tensor([900.0, 900.0]).to(device, dtype),
        encoder_hidden_states=torch.randn(2, 8, 32, generator=g).to(device, dtype),
        encoder_attention_mask=mask(8, [5, 8]),
        encoder_hidden_states_2=torch.randn(2, 6, 24, generator=g).to(device, dtype),
        encoder_attention_mask_2=mask(6, [4, 2]),
        image_embeds=torch.zeros(2, 4, 12, dtype=dtype).to(device),
        return_dict=False,
    )


def test_hv15_token_refiner_works_with_a_single_processor_instance():
    """set_attn_processor(one instance) also puts it on the token refiner, whose attention has
    no text stream and no QK norm: the first forward failed in the parent's code ('NoneType'
    object is not callable). The refiner runs its stock AttnProcessor2_0, as HunyuanVideo's."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from xattn_video.hook import attach_step_hook

    tr = tiny_hv15_transformer()
    inputs = _transformer_inputs(torch.float32, grid=(3, 8, 8), device="cpu")
    ref = tr(**inputs)[0]
    proc = HunyuanVideo15XAttnProcessor(cfg_(threshold=0.5, warmup_steps=0))
    tr.set_attn_processor(proc)
    refiner = tr.context_embedder.token_refiner.refiner_blocks[0].attn
    assert refiner.processor is proc and isinstance(proc._refiner_processor, AttnProcessor2_0)
    assert torch.equal(tr(**inputs)[0], ref)  # no step hook yet: dense, bit-identical to stock
    attach_step_hook(tr, proc.controller)
    out = tr(**inputs)[0]
    other = tiny_hv15_transformer()  # the same weights
    with xv.apply_xattention(other, proc.cfg):
        assert torch.equal(out, other(**inputs)[0])  # the same as the apply route
    assert sorted({r.layer for r in proc.stats.records if r.sparse}) == [0, 1]


@pytest.mark.gpu
@torch.no_grad()
def test_gpu_triton_bf16_matches_stock_and_runs_sparse():
    """Triton backend in bf16 (head dim 64, block 64, 768 video + 18 text tokens, batch 2 with
    unequal text; the fused QK norm + RoPE on CUDA): all blocks within the tolerance rule
    against an fp64 stock forward; sparse raster / tile runs finite with density < 1."""
    tr = tiny_hv15_transformer(head_dim=64).cuda().double()
    ref64 = tr(**_transformer_inputs(torch.float64))[0]
    tr.to(torch.bfloat16)
    bf16 = _transformer_inputs(torch.bfloat16)
    stock = tr(**bf16)[0]
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
