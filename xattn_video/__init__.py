"""xattn-video: XAttention block-sparse attention for video diffusion transformers in diffusers.

Layers, one direction: ``xattn_video.kernels`` (Triton kernels + PyTorch references) ->
``xattn_video.attention`` (the op) -> integration (processors, step hook, stats, CLI, metrics).
"""

from typing import TYPE_CHECKING

from .attention import (
    block_density,
    block_sparse_attention,
    estimate_block_mask,
    xattention,
)
from .config import PRESETS, XAttentionConfig
from .stats import XAttentionStats

if TYPE_CHECKING:  # resolved lazily at run time, see __getattr__
    from .apply import XAttentionHandle, apply_xattention, xattention_processors
    from .parallel import context_parallel_plan

__version__ = "0.1.0"

# The diffusers integration is imported on first use, so the op and the config load without
# importing diffusers.
_LAZY = {
    "apply_xattention": "apply",
    "xattention_processors": "apply",
    "XAttentionHandle": "apply",
    "context_parallel_plan": "parallel",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:  # the lazy names too (tab completion, dir())
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "PRESETS",
    "XAttentionConfig",
    "XAttentionHandle",
    "XAttentionStats",
    "apply_xattention",
    "block_density",
    "block_sparse_attention",
    "context_parallel_plan",
    "estimate_block_mask",
    "xattention",
    "xattention_processors",
]
