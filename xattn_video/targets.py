"""Model-target registry: which diffusers transformers XAttention supports, which of their
attention layers it replaces, and which stock processor each of those layers must carry.

One place for "what do we patch": :mod:`xattn_video.hook` (layer indices for hand-built
processors), :mod:`xattn_video.processors` (nothing model-wide) and :mod:`xattn_video.apply`
(the install path) all read it; it imports neither of them.

- ``hunyuanvideo``: ``HunyuanVideoTransformer3DModel`` and
  ``HunyuanVideoFramepackTransformer3DModel`` (same blocks). Targets: the double-stream
  ``transformer_blocks.{i}.attn`` -> layer i, then the single-stream
  ``single_transformer_blocks.{j}.attn`` -> layer ``num_layers + j``; stock processor
  ``HunyuanVideoAttnProcessor2_0``. The token refiner is not a target.
- ``hunyuanvideo15``: ``HunyuanVideo15Transformer3DModel`` (HunyuanVideo 1.5: double-stream
  blocks only). Targets: ``transformer_blocks.{i}.attn`` -> layer i; stock processor
  ``HunyuanVideo15AttnProcessor2_0``. The token refiner is not a target.
- ``wan``: ``WanTransformer3DModel`` (Wan 2.1 / 2.2) and ``WanVACETransformer3DModel`` (Wan
  VACE). Targets: ``blocks.{i}.attn1`` (video self-attention) -> layer i, then VACE's
  ``vace_blocks.{j}.attn1`` (self-attention of the control tokens: the control video on the
  video's (T, H, W) grid, zero-padded at the end when it is shorter; they run first in a
  forward) -> layer ``len(blocks) + j``; stock processor
  ``WanAttnProcessor``. Cross-attention (``attn2``) is not a target.

Not supported: other model families and classes, e.g. SkyReels-V2 and Wan Animate (adding one
= one :class:`ModelTarget` entry here plus a processor class in :mod:`xattn_video.processors`);
the ``tile`` token order for Framepack (its
video part also holds multi-scale history tokens, which form no single grid).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0
from diffusers.models.transformers.transformer_hunyuan_video15 import (
    HunyuanVideo15AttnProcessor2_0,
)
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

Layer = tuple[str, torch.nn.Module, int]
"""(module path, attention module, layer index)."""


def _hunyuan_layers(transformer: torch.nn.Module) -> list[Layer]:
    double = list(transformer.transformer_blocks)
    out = [(f"transformer_blocks.{i}.attn", blk.attn, i) for i, blk in enumerate(double)]
    for j, blk in enumerate(transformer.single_transformer_blocks):
        out.append((f"single_transformer_blocks.{j}.attn", blk.attn, len(double) + j))
    return out


def _hunyuan15_layers(transformer: torch.nn.Module) -> list[Layer]:
    return [
        (f"transformer_blocks.{i}.attn", b.attn, i)
        for i, b in enumerate(transformer.transformer_blocks)
    ]


def _wan_layers(transformer: torch.nn.Module) -> list[Layer]:
    out = [(f"blocks.{i}.attn1", blk.attn1, i) for i, blk in enumerate(transformer.blocks)]
    for j, blk in enumerate(getattr(transformer, "vace_blocks", ())):  # Wan VACE
        out.append((f"vace_blocks.{j}.attn1", blk.attn1, len(transformer.blocks) + j))
    return out


@dataclass(frozen=True)
class ModelTarget:
    """One supported model family."""

    family: str
    """Family name (``"hunyuanvideo"``, ``"wan"``); also the config preset's name."""
    transformer_classes: tuple[str, ...]
    """Class names of the diffusers transformers (subclasses are accepted too)."""
    stock_processor: type
    """The diffusers processor class every target layer must carry to be replaced."""
    layers: Callable[[torch.nn.Module], list[Layer]]
    """transformer -> its target attention layers, in layer-index order."""
    raster_only: tuple[str, ...] = ()
    """Transformer class names whose video tokens form no single grid (no ``tile`` order)."""


TARGETS: dict[str, ModelTarget] = {
    t.family: t
    for t in (
        ModelTarget(
            family="hunyuanvideo",
            transformer_classes=(
                "HunyuanVideoTransformer3DModel",
                "HunyuanVideoFramepackTransformer3DModel",
            ),
            stock_processor=HunyuanVideoAttnProcessor2_0,
            layers=_hunyuan_layers,
            raster_only=("HunyuanVideoFramepackTransformer3DModel",),
        ),
        ModelTarget(
            family="hunyuanvideo15",
            transformer_classes=("HunyuanVideo15Transformer3DModel",),
            stock_processor=HunyuanVideo15AttnProcessor2_0,
            layers=_hunyuan15_layers,
        ),
        ModelTarget(
            family="wan",
            transformer_classes=("WanTransformer3DModel", "WanVACETransformer3DModel"),
            stock_processor=WanAttnProcessor,
            layers=_wan_layers,
        ),
    )
}

MODEL_FAMILIES: dict[str, str] = {
    name: t.family for t in TARGETS.values() for name in t.transformer_classes
}
"""Transformer class name -> model family."""

FAMILY_ALIASES: dict[str, str] = {"hunyuanvideo": "hunyuanvideo", "hunyuan": "hunyuanvideo",
                                  "hunyuanvideo15": "hunyuanvideo15",
                                  "hunyuanvideo1.5": "hunyuanvideo15", "wan": "wan"}  # fmt: skip
"""Accepted spellings of ``model=`` in ``apply_xattention`` / ``xattention_processors``."""


def model_family(transformer: torch.nn.Module, model: str | None = None) -> str:
    """The family of ``transformer`` (its class or a supported base class).

    model: an expected family (see ``FAMILY_ALIASES``), checked against the detected one.
    Raises ``ValueError`` naming the class and the supported ones, or the mismatch, or saying
    to apply before ``torch.compile`` for a compiled wrapper (``OptimizedModule``).
    """
    detected = None
    for cls in type(transformer).__mro__:
        if cls.__name__ in MODEL_FAMILIES:
            detected = MODEL_FAMILIES[cls.__name__]
            break
    inner = getattr(transformer, "_orig_mod", None)  # torch.compile's OptimizedModule wrapper
    if detected is None and isinstance(inner, torch.nn.Module):
        model_family(inner)  # an unsupported model: say so, not how to compile it
        raise ValueError(
            f"{type(inner).__name__} is wrapped by torch.compile: apply XAttention to the "
            "uncompiled transformer, then compile it in place (transformer.compile()) or under "
            "the step hook (xattn_video.hook.compile_below_hook)"
        )
    if detected is None:
        raise ValueError(
            f"XAttention does not support {type(transformer).__name__}; supported transformers: "
            f"{', '.join(MODEL_FAMILIES)}"
        )
    if model is not None:
        family = FAMILY_ALIASES.get(str(model).lower())
        if family is None:
            raise ValueError(f"unknown model {model!r}; known: {sorted(FAMILY_ALIASES)}")
        if family != detected:
            raise ValueError(
                f"model={model!r} does not match {type(transformer).__name__} ({detected})"
            )
    return detected


def target_of(family: str) -> ModelTarget:
    """The :class:`ModelTarget` of a family; ``ValueError`` for an unknown one."""
    if family not in TARGETS:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(TARGETS)}")
    return TARGETS[family]


def target_layers(transformer: torch.nn.Module, family: str | None = None) -> list[Layer]:
    """(module path, attention module, layer index) of every attention XAttention replaces."""
    return target_of(family or model_family(transformer)).layers(transformer)


def supports_tile_order(transformer: torch.nn.Module) -> bool:
    """False for transformers whose video tokens form no single (T, H, W) grid."""
    names = {cls.__name__ for cls in type(transformer).__mro__}
    return not any(names & set(t.raster_only) for t in TARGETS.values())


def transformer_patch_size(transformer: torch.nn.Module) -> tuple[int, int, int] | None:
    """(p_t, p_h, p_w) from a diffusers video transformer's config, or None if unknown."""
    config = getattr(transformer, "config", None)
    p = getattr(config, "patch_size", None)
    if p is None:
        return None
    if isinstance(p, (tuple, list)):
        return tuple(int(x) for x in p) if len(p) == 3 else None
    return (int(getattr(config, "patch_size_t", 1) or 1), int(p), int(p))
