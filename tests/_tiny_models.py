"""Tiny, seeded, fully offline HunyuanVideo and Wan transformers / pipelines for the CPU tests.

Nothing is downloaded: the pipelines get no text encoders or tokenizers (``None``) and are
called with precomputed prompt embeddings (see :func:`hv_inputs`, :func:`wan_inputs`). The VAE
is optional (tests mostly use ``output_type="latent"``).

Sizes are chosen so that, with ``block_size=16``, a tiny video still has several blocks:
HunyuanVideo at 64x64 pixels and 9 frames gives a latent grid (3, 8, 8) = 192 video tokens
(+ up to 8 text tokens), Wan at 128x128 and 9 frames gives (3, 8, 8) = 192 tokens (patch 2).

Not provided: real weights, text encoders (use ``pipelines/models.py`` for those).
"""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoFramepackTransformer3DModel,
    HunyuanVideoPipeline,
    HunyuanVideoTransformer3DModel,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)

HV_TEXT_DIM = 16
HV_POOLED_DIM = 8
HV_TEXT_LEN = 8
WAN_TEXT_DIM = 32
WAN_TEXT_LEN = 8


def tiny_hv_transformer(
    seed: int = 0, num_layers: int = 1, num_single_layers: int = 2, head_dim: int = 16
) -> HunyuanVideoTransformer3DModel:
    """HunyuanVideoTransformer3DModel: 2 heads x ``head_dim`` (16, or 64 for the GPU tests),
    patch 1, 1 refiner block, fp32, eval."""
    torch.manual_seed(seed)
    rope = {16: (4, 6, 6), 64: (16, 24, 24)}[head_dim]
    tr = HunyuanVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=head_dim,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        num_refiner_layers=1,
        patch_size=1,
        patch_size_t=1,
        text_embed_dim=HV_TEXT_DIM,
        pooled_projection_dim=HV_POOLED_DIM,
        rope_axes_dim=rope,
    )
    return tr.eval()


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
    """HunyuanVideoFramepackTransformer3DModel: 2 heads x 16, patch 2 (its history embedder
    hard-codes 2x2 patches), image projection and clean-latent embedder, fp32, eval."""
    torch.manual_seed(seed)
    tr = HunyuanVideoFramepackTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        patch_size=2,
        patch_size_t=1,
        text_embed_dim=HV_TEXT_DIM,
        pooled_projection_dim=HV_POOLED_DIM,
        rope_axes_dim=(4, 6, 6),
        has_image_proj=True,
        image_proj_dim=12,
        has_clean_x_embedder=True,
    )
    return tr.eval()


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


def tiny_wan_transformer(
    seed: int = 0, num_layers: int = 2, head_dim: int = 16
) -> WanTransformer3DModel:
    """WanTransformer3DModel: 2 heads x ``head_dim``, patch (1, 2, 2), fp32, eval."""
    torch.manual_seed(seed)
    tr = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=head_dim,
        in_channels=16,
        out_channels=16,
        text_dim=WAN_TEXT_DIM,
        freq_dim=32,
        ffn_dim=32,
        num_layers=num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    return tr.eval()


def tiny_wan_vae(seed: int = 0) -> AutoencoderKLWan:
    """AutoencoderKLWan with 16 latent channels, 4x temporal / 8x spatial compression."""
    torch.manual_seed(seed)
    return AutoencoderKLWan(
        base_dim=3,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    ).eval()


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


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One OpenMP thread for modules that import this fixture: with tiny tensors on a shared
    2-core CI box, thread barriers cost milliseconds per op and dominate the run time."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
