"""The one tiny-model factory: every small random-weight model the tests and the CLI build.

Architectures (weights from ``seed`` or the current RNG, see below):

- the tiny video DiT (:mod:`~xattn_video.pipelines.tiny.model`): :func:`build_tiny_pipeline`
  (the training start point) and :func:`random_tiny_pipeline` (diffusers' init, eval mode);
- HunyuanVideo: :func:`hunyuan_transformer` (2 heads x 16 or 64, patch 1, 4 latent channels),
  :func:`framepack_transformer`, and the whole offline ``HunyuanVideoPipeline``
  :func:`build_tiny_hunyuan_pipeline` (the CLI's ``tiny-hunyuan``);
- Wan 2.1: :func:`wan_transformer`, :func:`wan_vae` and the whole offline ``WanPipeline``
  :func:`build_tiny_wan_pipeline` (the CLI's ``tiny-wan``).

Seeds: a function given ``seed`` builds from ``torch.manual_seed(seed)`` inside
``torch.random.fork_rng`` (the caller's global RNG state is left untouched); with ``seed=None``
it draws from the current RNG, so several parts can be built from one seeded stream. Weights
depend only on the seed and the arguments (same init order as before this module existed).
diffusers and transformers are imported on first use.

Not supported: real weights (see ``pipelines.models``), text encoders for the bare-transformer
builders (tests pass precomputed prompt embeddings), GPU-side initialisation (everything is
built on the CPU in fp32, then moved).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from . import char_tokenizers

if TYPE_CHECKING:
    from diffusers import (
        AutoencoderKLWan,
        HunyuanVideoFramepackTransformer3DModel,
        HunyuanVideoTransformer3DModel,
        WanTransformer3DModel,
    )

    from .pipeline import TinyVideoPipeline

__all__ = [
    "HUNYUAN_POOLED_DIM",
    "HUNYUAN_TEXT_DIM",
    "WAN_TEXT_DIM",
    "build_tiny_hunyuan_pipeline",
    "build_tiny_pipeline",
    "build_tiny_wan_pipeline",
    "framepack_transformer",
    "hunyuan_transformer",
    "random_tiny_pipeline",
    "seeded",
    "wan_transformer",
    "wan_vae",
]

HUNYUAN_TEXT_DIM = 16
"""Prompt-embedding width of the tiny HunyuanVideo transformers."""
HUNYUAN_POOLED_DIM = 8
"""Pooled-projection width of the tiny HunyuanVideo transformers."""
WAN_TEXT_DIM = 32
"""Prompt-embedding width of the tiny Wan transformers."""


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """CPU RNG seeded to ``seed`` inside the block, the caller's RNG state restored after;
    ``None``: no-op (draw from the current RNG)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ---------------------------------------------------------------------------------------------
# The tiny video DiT
# ---------------------------------------------------------------------------------------------


def build_tiny_pipeline(
    seed: int | None = 0,
    *,
    init: str = "default",
    shift: float | None = None,
    **transformer_overrides: Any,
) -> TinyVideoPipeline:
    """Fresh (untrained) tiny DiT pipeline in fp32 on CPU, in train mode.

    seed: ``torch.manual_seed(seed)`` on the GLOBAL RNG first (the training script relies on
    it); None draws from the current RNG. init: ``"default"`` (diffusers' init) or ``"dit"``
    (:func:`~xattn_video.pipelines.tiny.model.dit_initialize_`, identity blocks: the training
    start point). shift: the scheduler's shift (None: ``DEFAULT_SHIFT``).
    transformer_overrides: changes to :func:`~xattn_video.pipelines.tiny.model.tiny_transformer_config`.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel

    from .model import DEFAULT_SHIFT, ConditionEmbedder, dit_initialize_, tiny_transformer_config
    from .pipeline import TinyVideoPipeline

    if init not in ("default", "dit"):
        raise ValueError(f"init must be 'default' or 'dit', got {init!r}")
    if seed is not None:
        torch.manual_seed(seed)
    cfg = tiny_transformer_config(**transformer_overrides)
    tr = HunyuanVideoTransformer3DModel(**cfg)
    if init == "dit":
        dit_initialize_(tr)
    emb = ConditionEmbedder(
        text_embed_dim=cfg["text_embed_dim"], pooled_projection_dim=cfg["pooled_projection_dim"]
    )
    shift = DEFAULT_SHIFT if shift is None else shift
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    return TinyVideoPipeline(transformer=tr, scheduler=sched, condition_embedder=emb)


def random_tiny_pipeline(
    seed: int = 0,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    **transformer_overrides: Any,
) -> TinyVideoPipeline:
    """The tiny DiT with random (diffusers default) weights, in eval mode, progress bar off.
    The weights depend only on ``seed`` (the global RNG state is left untouched)."""
    with seeded(seed):
        pipe = build_tiny_pipeline(None, init="default", **transformer_overrides)
    for module in (pipe.transformer, pipe.condition_embedder):
        torch.nn.Module.to(module.eval(), device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------------------
# HunyuanVideo
# ---------------------------------------------------------------------------------------------

_ROPE_AXES = {16: (4, 6, 6), 64: (16, 24, 24)}


def hunyuan_transformer(
    seed: int | None = 0, *, num_layers: int = 2, num_single_layers: int = 2, head_dim: int = 16
) -> HunyuanVideoTransformer3DModel:
    """``HunyuanVideoTransformer3DModel``: 2 heads x ``head_dim`` (16, or 64 for the GPU
    kernels), patch 1x1x1, 4 latent channels, 1 refiner block, guidance embedding, prompt
    embeddings (B, L, 16) and pooled (B, 8); fp32, eval mode."""
    from diffusers import HunyuanVideoTransformer3DModel

    if head_dim not in _ROPE_AXES:
        raise ValueError(f"head_dim must be one of {sorted(_ROPE_AXES)}, got {head_dim}")
    with seeded(seed):
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
            guidance_embeds=True,
            text_embed_dim=HUNYUAN_TEXT_DIM,
            pooled_projection_dim=HUNYUAN_POOLED_DIM,
            rope_axes_dim=_ROPE_AXES[head_dim],
        )
    return tr.eval()


def framepack_transformer(seed: int | None = 0) -> HunyuanVideoFramepackTransformer3DModel:
    """``HunyuanVideoFramepackTransformer3DModel``: 2 heads x 16, patch 2 (its history embedder
    hard-codes 2x2 patches), 1 + 1 blocks, image projection (B, L, 12) and clean-latent
    embedder; fp32, eval mode."""
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    with seeded(seed):
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
            text_embed_dim=HUNYUAN_TEXT_DIM,
            pooled_projection_dim=HUNYUAN_POOLED_DIM,
            rope_axes_dim=(4, 6, 6),
            has_image_proj=True,
            image_proj_dim=12,
            has_clean_x_embedder=True,
        )
    return tr.eval()


def build_tiny_hunyuan_pipeline(
    *, seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Any:
    """A fully offline ``HunyuanVideoPipeline`` with random weights (about 0.2 M parameters).

    Transformer: :func:`hunyuan_transformer` (2 double-stream + 2 single-stream blocks); VAE 8x
    spatial / 4x temporal compression; Llama and CLIP text encoders with 2 layers and
    character-level tokenizers. 32x32x9 pixels give 3x4x4 = 48 video tokens. Call it with
    ``MODELS["tiny-hunyuan"].call_kwargs`` (no chat template, 32 text tokens).

    The weights depend only on ``seed`` (the global RNG state is left untouched).
    """
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    tokenizer, tokenizer_2 = char_tokenizers.llama_tokenizer(), char_tokenizers.clip_tokenizer()
    with seeded(seed):
        transformer = hunyuan_transformer(None)
        vae = AutoencoderKLHunyuanVideo(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            down_block_types=("HunyuanVideoDownBlock3D",) * 4,
            up_block_types=("HunyuanVideoUpBlock3D",) * 4,
            block_out_channels=(8, 8, 8, 8),
            layers_per_block=1,
            act_fn="silu",
            norm_num_groups=4,
            scaling_factor=0.476986,
            spatial_compression_ratio=8,
            temporal_compression_ratio=4,
            mid_block_add_attention=True,
        )
        text_encoder = LlamaModel(
            LlamaConfig(
                bos_token_id=0,
                pad_token_id=1,
                eos_token_id=2,
                hidden_size=HUNYUAN_TEXT_DIM,
                intermediate_size=37,
                num_attention_heads=4,
                num_hidden_layers=2,
                vocab_size=len(tokenizer),
                hidden_act="gelu",
            )
        )
        text_encoder_2 = CLIPTextModel(
            CLIPTextConfig(
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=2,
                hidden_size=HUNYUAN_POOLED_DIM,
                intermediate_size=37,
                num_attention_heads=4,
                num_hidden_layers=2,
                vocab_size=len(tokenizer_2),
                hidden_act="gelu",
                projection_dim=32,
            )
        )
    pipe = HunyuanVideoPipeline(
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
    )
    return _finish(pipe, device, dtype)


# ---------------------------------------------------------------------------------------------
# Wan 2.1
# ---------------------------------------------------------------------------------------------


def wan_transformer(
    seed: int | None = 0, *, num_layers: int = 2, head_dim: int = 16, freq_dim: int = 256
) -> WanTransformer3DModel:
    """``WanTransformer3DModel``: 2 heads x ``head_dim``, patch (1, 2, 2), 16 latent channels,
    prompt embeddings (B, L, 32), timestep embedding width ``freq_dim``; fp32, eval mode."""
    from diffusers import WanTransformer3DModel

    with seeded(seed):
        tr = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=head_dim,
            in_channels=16,
            out_channels=16,
            text_dim=WAN_TEXT_DIM,
            freq_dim=freq_dim,
            ffn_dim=32,
            num_layers=num_layers,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        )
    return tr.eval()


def wan_vae(seed: int | None = 0) -> AutoencoderKLWan:
    """``AutoencoderKLWan`` (base dim 3): 16 latent channels, 4x temporal / 8x spatial
    compression; fp32, eval mode."""
    from diffusers import AutoencoderKLWan

    with seeded(seed):
        vae = AutoencoderKLWan(
            base_dim=3,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
        )
    return vae.eval()


def build_tiny_wan_pipeline(
    *, seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Any:
    """A fully offline ``WanPipeline`` (Wan 2.1 text-to-video) with random weights.

    Transformer: :func:`wan_transformer` (2 blocks); :func:`wan_vae`; a 2-layer UMT5 encoder
    with a character-level tokenizer. 64x64x9 pixels give 3x4x4 = 48 video tokens. Call it
    with ``MODELS["tiny-wan"].call_kwargs`` (32 text tokens). Classifier-free guidance is on
    (the pipeline's default ``guidance_scale=5.0``): two transformer forwards per step.

    The weights depend only on ``seed`` (the global RNG state is left untouched).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = char_tokenizers.t5_tokenizer()
    with seeded(seed):
        text_encoder = UMT5EncoderModel(
            UMT5Config(
                vocab_size=len(tokenizer),
                d_model=WAN_TEXT_DIM,
                d_kv=8,
                d_ff=37,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
                pad_token_id=0,
                eos_token_id=1,
                decoder_start_token_id=0,
            )
        )
        vae = wan_vae(None)
        transformer = wan_transformer(None)
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        transformer=transformer,
    )
    return _finish(pipe, device, dtype)


def _finish(pipe: Any, device: str | torch.device, dtype: torch.dtype) -> Any:
    """Inference mode (no dropout), on ``device``, floating point weights in ``dtype`` except the
    modules each class keeps in fp32 (``_keep_in_fp32_modules``), as ``from_pretrained`` does."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
            _cast(component, device, dtype)
    return pipe


def _cast(module: torch.nn.Module, device: str | torch.device, dtype: torch.dtype) -> None:
    keep = getattr(module, "_keep_in_fp32_modules", None) or []
    keep = [keep] if isinstance(keep, str) else list(keep)
    torch.nn.Module.to(module, device=device)
    if dtype == torch.float32:  # built in fp32
        return
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if t.is_floating_point() and not any(k in name.split(".") for k in keep):
            t.data = t.data.to(dtype)
