"""xattn-video: XAttention block-sparse attention for video diffusion transformers in diffusers.

Layers, one direction: ``xattn_video.kernels`` (Triton kernels + PyTorch references) ->
``xattn_video.attention`` (the op) -> integration (processors, step hook, stats, CLI, metrics).
"""

from .attention import (
    block_density,
    block_sparse_attention,
    estimate_block_mask,
    xattention,
)
from .config import PRESETS, XAttentionConfig

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "XAttentionConfig",
    "block_density",
    "block_sparse_attention",
    "estimate_block_mask",
    "xattention",
]
