"""Test helpers around the one tiny-model factory (``xattn_video.pipelines.tiny.factory``).

The architectures come from the factory; this module keeps the test-side pieces: pipelines
without text encoders or tokenizers (``None``), called with precomputed prompt embeddings (see
:func:`hv_inputs`, :func:`wan_inputs`), and the XAttention config used on tiny sequences. The
VAE is optional (tests mostly use ``output_type="latent"``).

Sizes are chosen so that, with ``block_size=16``, a tiny video still has several blocks:
HunyuanVideo at 64x64 pixels and 9 frames gives a latent grid (3, 8, 8) = 192 video tokens
(+ up to 8 text tokens), Wan at 128x128 and 9 frames gives (3, 8, 8) = 192 tokens (patch 2).

Not provided: real weights, text encoders (``load_pipeline`` builds those for the CLI models).
"""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    AutoencoderKLHunyuanVideo15,
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideo15Pipeline,
    HunyuanVideo15Transformer3DModel,
    HunyuanVideoFramepackTransformer3DModel,
    HunyuanVideoPipeline,
    HunyuanVideoTransformer3DModel,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
    WanVACEPipeline,
    WanVACETransformer3DModel,
)

from xattn_video.pipelines.tiny import factory

HV_TEXT_DIM = factory.HUNYUAN_TEXT_DIM
HV_POOLED_DIM = factory.HUNYUAN_POOLED_DIM
HV_TEXT_LEN = 8
WAN_TEXT_DIM = factory.WAN_TEXT_DIM
WAN_TEXT_LEN = 8


def tiny_hv_transformer(
    seed: int = 0, num_layers: int = 1, num_single_layers: int = 2, head_dim: int = 16
) -> HunyuanVideoTransformer3DModel:
    """``factory.hunyuan_transformer`` with 1 double-stream block by default."""
    return factory.hunyuan_transformer(
        seed, num_layers=num_layers, num_single_layers=num_single_layers, head_dim=head_dim
    )


def tiny_hv_pipeline(seed: int = 0, **transformer_kw) -> HunyuanVideoPipeline:
    """HunyuanVideoPipeline without text encoders, tokenizers or VAE (``output_type='latent'``)."""
    pipe = HunyuanVideoPipeline(
        text_encoder=None,
        tokenizer=None,
        transformer=tiny_hv_transformer(seed, **transformer_kw),
        vae=None,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=None,
        tokenizer_2=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def hv_text(
    lengths: list[int], seed: int = 1, total: int = HV_TEXT_LEN, pad_value: float = 0.0
) -> dict[str, torch.Tensor]:
    """Prompt embeddings (B, total, 16), pooled (B, 8) and a right-padded mask (B, total).

    Positions ``>= lengths[b]`` hold ``pad_value`` (the padded embeddings) and mask 0.
    """
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    emb = torch.randn(B, total, HV_TEXT_DIM, generator=g)
    mask = torch.zeros(B, total)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        emb[b, n:] = pad_value
    pooled = torch.randn(B, HV_POOLED_DIM, generator=g)
    return {"embeds": emb, "pooled": pooled, "mask": mask}


def hv_inputs(
    lengths: list[int] | None = None,
    steps: int = 3,
    seed: int = 0,
    true_cfg: bool = False,
    neg_lengths: list[int] | None = None,
    height: int = 64,
    width: int = 64,
    num_frames: int = 9,
) -> dict:
    """Keyword arguments for ``HunyuanVideoPipeline.__call__`` (fully offline, latent output)."""
    lengths = lengths or [5]
    pos = hv_text(lengths, seed=seed + 1)
    kw = dict(
        prompt_embeds=pos["embeds"],
        pooled_prompt_embeds=pos["pooled"],
        prompt_attention_mask=pos["mask"],
        height=height,
        width=width,
        num_frames=num_frames,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
    )
    if true_cfg:
        neg = hv_text(neg_lengths or [3] * len(lengths), seed=seed + 2)
        kw.update(
            true_cfg_scale=2.0,
            negative_prompt_embeds=neg["embeds"],
            negative_pooled_prompt_embeds=neg["pooled"],
            negative_prompt_attention_mask=neg["mask"],
        )
    return kw


def hv_transformer_inputs(
    lengths: list[int] | None = None, grid: tuple[int, int, int] = (3, 8, 8), seed: int = 0,
    timestep: float = 900.0,
) -> dict:  # fmt: skip
    """Keyword arguments for a bare ``HunyuanVideoTransformer3DModel.forward`` call."""
    lengths = lengths or [5]
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    txt = hv_text(lengths, seed=seed + 1)
    return dict(
        hidden_states=torch.randn(B, 4, *grid, generator=g),
        timestep=torch.full((B,), float(timestep)),
        encoder_hidden_states=txt["embeds"],
        encoder_attention_mask=txt["mask"],
        pooled_projections=txt["pooled"],
        guidance=torch.full((B,), 6000.0),
        return_dict=False,
    )


def tiny_framepack_transformer(seed: int = 0) -> HunyuanVideoFramepackTransformer3DModel:
    """``factory.framepack_transformer``."""
    return factory.framepack_transformer(seed)


def framepack_inputs(seed: int = 0, text_len: int = 5) -> dict:
    """One Framepack section (batch 1): 3 new latent frames (grid (3, 8, 8)) plus 1 clean, 2
    2x-history and 4 4x-history frames -> 192 + 64 + 16 + 4 video tokens, then image + text."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(1, HV_TEXT_LEN)
    mask[:, :text_len] = 1
    return dict(
        hidden_states=torch.randn(1, 4, 3, 16, 16, generator=g),
        timestep=torch.tensor([900.0]),
        encoder_hidden_states=torch.randn(1, HV_TEXT_LEN, HV_TEXT_DIM, generator=g),
        encoder_attention_mask=mask,
        pooled_projections=torch.randn(1, HV_POOLED_DIM, generator=g),
        image_embeds=torch.randn(1, 4, 12, generator=g),
        indices_latents=torch.arange(3),
        guidance=torch.tensor([6000.0]),
        latents_clean=torch.randn(1, 4, 1, 16, 16, generator=g),
        indices_latents_clean=torch.tensor([3]),
        latents_history_2x=torch.randn(1, 4, 2, 16, 16, generator=g),
        indices_latents_history_2x=torch.tensor([4, 5]),
        latents_history_4x=torch.randn(1, 4, 4, 16, 16, generator=g),
        indices_latents_history_4x=torch.tensor([6, 7, 8, 9]),
        return_dict=False,
    )


def tiny_hv15_transformer(
    seed: int = 0, num_layers: int = 2, head_dim: int = 16
) -> HunyuanVideo15Transformer3DModel:
    """``HunyuanVideo15Transformer3DModel``: ``num_layers`` blocks, 2 heads x ``head_dim`` (RoPE
    axes 1/4, 3/8, 3/8 of it), patch 1, 4 latent channels (9 in: latent, condition, mask),
    prompt embeddings (B, L, 32), ByT5 ones (B, L2, 24), image embeddings (B, L3, 12)."""
    with factory.seeded(seed):
        tr = HunyuanVideo15Transformer3DModel(
            in_channels=9,
            out_channels=4,
            num_attention_heads=2,
            attention_head_dim=head_dim,
            num_layers=num_layers,
            num_refiner_layers=1,
            mlp_ratio=2.0,
            patch_size=1,
            patch_size_t=1,
            text_embed_dim=32,
            text_embed_2_dim=24,
            image_embed_dim=12,
            rope_axes_dim=(head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8),
            target_size=64,
        )
    return tr.eval()


def tiny_hv15_pipeline(seed: int = 0, num_layers: int = 2) -> HunyuanVideo15Pipeline:
    """HunyuanVideo15Pipeline without text encoders: :func:`tiny_hv15_transformer`, a tiny VAE
    (16x spatial: 128 pixels -> an 8 x 8 grid) and CFG through the pipeline's guider; 4 image
    tokens instead of 729 (the pipeline's text-to-video image tokens, all padding). Called with
    :func:`hv15_inputs`."""
    from diffusers.guiders import ClassifierFreeGuidance

    tr = tiny_hv15_transformer(seed, num_layers)
    with factory.seeded(seed):
        vae = AutoencoderKLHunyuanVideo15(
            latent_channels=4, block_out_channels=(8, 8, 8, 8, 8), layers_per_block=1
        ).eval()
    pipe = HunyuanVideo15Pipeline(
        text_encoder=None,
        tokenizer=None,
        transformer=tr,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
        text_encoder_2=None,
        tokenizer_2=None,
        guider=ClassifierFreeGuidance(guidance_scale=6.0),
    )
    pipe.vision_num_semantic_tokens = 4
    pipe.set_progress_bar_config(disable=True)
    return pipe


def hv15_inputs(steps: int = 3, seed: int = 0, batch: int = 1, **kw) -> dict:
    """Keyword arguments for ``HunyuanVideo15Pipeline.__call__`` (offline, latent output): 8
    prompt tokens of which 5 valid (negative: 3) and 6 ByT5 tokens of which 4 (negative: 2),
    so the two CFG forwards have different text lengths; 128 x 128 pixels, 9 frames."""
    g = torch.Generator().manual_seed(seed + 1)

    def mask(n: int, valid: int) -> torch.Tensor:
        return (torch.arange(n) < valid).long().expand(batch, n)

    out = dict(
        prompt_embeds=torch.randn(batch, 8, 32, generator=g),
        prompt_embeds_mask=mask(8, 5),
        negative_prompt_embeds=torch.randn(batch, 8, 32, generator=g),
        negative_prompt_embeds_mask=mask(8, 3),
        prompt_embeds_2=torch.randn(batch, 6, 24, generator=g),
        prompt_embeds_mask_2=mask(6, 4),
        negative_prompt_embeds_2=torch.randn(batch, 6, 24, generator=g),
        negative_prompt_embeds_mask_2=mask(6, 2),
        height=128,
        width=128,
        num_frames=9,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
    )
    out.update(kw)
    return out


def tiny_wan_transformer(
    seed: int = 0, num_layers: int = 2, head_dim: int = 16
) -> WanTransformer3DModel:
    """``factory.wan_transformer`` with a 32-wide timestep embedding."""
    return factory.wan_transformer(seed, num_layers=num_layers, head_dim=head_dim, freq_dim=32)


def wan_transformer_inputs(seed: int = 0) -> dict:
    """Keyword arguments for a bare ``tiny_wan_transformer`` forward: a (1, 16, 3, 16, 16)
    latent, timestep 500 and 8 text tokens, both drawn from one generator seeded ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(1, 16, 3, 16, 16, generator=g),
        timestep=torch.tensor([500.0]),
        encoder_hidden_states=torch.randn(1, 8, 32, generator=g),
        return_dict=False,
    )


def tiny_wan_vae(seed: int = 0) -> AutoencoderKLWan:
    """``factory.wan_vae``."""
    return factory.wan_vae(seed)


def tiny_wan_pipeline(
    seed: int = 0, two_stage: bool = False, with_vae: bool = False, num_layers: int = 2
) -> WanPipeline:
    """WanPipeline without text encoder; ``two_stage`` adds ``transformer_2`` (Wan 2.2 A14B
    style, boundary at 0.8 of the training timesteps: with 4 steps, timesteps 999, 900 run on
    ``transformer`` and 750, 500 on ``transformer_2``)."""
    pipe = WanPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=tiny_wan_vae(seed) if with_vae else None,
        scheduler=UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
        ),
        transformer=tiny_wan_transformer(seed, num_layers),
        transformer_2=tiny_wan_transformer(seed + 100, num_layers) if two_stage else None,
        boundary_ratio=0.8 if two_stage else None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_wan_vace_pipeline(seed: int = 0, num_layers: int = 2) -> WanVACEPipeline:
    """WanVACEPipeline without text encoder: ``tiny_wan_transformer``'s architecture as
    ``WanVACETransformer3DModel`` with a VACE block at every layer (``vace_layers``
    0..num_layers-1; control input 96 channels = the tiny VAE's 2 x 16 latent + 8 x 8 mask), and
    the tiny VAE (VACE encodes its control video). Called with :func:`wan_inputs`; no ``video``
    given, the pipeline's control video is blank and its mask all ones."""
    with factory.seeded(seed):
        tr = WanVACETransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=16,
            out_channels=16,
            text_dim=WAN_TEXT_DIM,
            freq_dim=32,
            ffn_dim=32,
            num_layers=num_layers,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
            vace_layers=list(range(num_layers)),
            vace_in_channels=96,
        ).eval()
    pipe = WanVACEPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=tiny_wan_vae(seed),
        scheduler=UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
        ),
        transformer=tr,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def wan_inputs(steps: int = 3, seed: int = 0, batch: int = 1, cfg: bool = True, **kw) -> dict:
    """Keyword arguments for ``WanPipeline.__call__`` (offline, latent output unless overridden)."""
    g = torch.Generator().manual_seed(seed + 1)
    out = dict(
        prompt_embeds=torch.randn(batch, WAN_TEXT_LEN, WAN_TEXT_DIM, generator=g),
        negative_prompt_embeds=torch.randn(batch, WAN_TEXT_LEN, WAN_TEXT_DIM, generator=g),
        height=128,
        width=128,
        num_frames=9,
        num_inference_steps=steps,
        guidance_scale=5.0 if cfg else 1.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
    )
    out.update(kw)
    return out


TINY = dict(stride=4, block_size=16, backend="torch")
"""Small blocks and the torch backend: tiny sequences still have several blocks on CPU."""


def tiny_cfg(**kw):
    """An ``XAttentionConfig`` with the ``TINY`` defaults, overridden by ``kw``."""
    import xattn_video as xv

    return xv.XAttentionConfig(**{**TINY, **kw})


def run_sparse_steps(**cfg_overrides) -> None:
    """Three steps of the tiny HunyuanVideo pipeline under the ``tiny`` preset (τ 0.5, one dense
    warm-up step, torch backend) with ``cfg_overrides``; asserts that sparse calls ran (for
    tests that spy on what the processors hand down)."""
    import xattn_video as xv

    pipe = tiny_hv_pipeline()
    cfg = xv.XAttentionConfig.from_preset(
        "tiny", threshold=0.5, warmup_steps=1, backend="torch", **cfg_overrides
    )
    with xv.apply_xattention(pipe, cfg) as handle:
        pipe(**hv_inputs(steps=3))
        assert handle.stats.summary()["num_sparse_calls"] > 0


@pytest.fixture(autouse=True, scope="module")
def one_thread(one_thread):  # noqa: F811 - the conftest fixture of the same name
    """Kept for modules that import it (it is autouse there): conftest's ``one_thread``. New
    modules write ``pytestmark = pytest.mark.usefixtures("one_thread")`` instead."""
    yield
