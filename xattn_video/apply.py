"""Switching XAttention on for a diffusers pipeline or transformer, and off again.

Two routes, both sharing one :class:`~xattn_video.hook.XAttentionController` (step, caches,
stats) between the processors and the transformer step hook:

``handle = apply_xattention(pipe_or_transformer, cfg)``
    Installs one processor per target attention layer (HunyuanVideo: 20 double- + 40
    single-stream blocks, the token refiner untouched; Wan: every ``attn1``, cross-attention
    untouched) and the step hook. With a pipeline the step comes from ``pipe.scheduler``; Wan
    2.2's ``transformer_2`` is patched too and shares the controller. ``handle.stats``,
    ``handle.controller``; ``handle.remove()`` (or leaving ``with apply_xattention(...):``)
    puts the original processor objects back and removes the hook.

``procs = xattention_processors(transformer, cfg, pipe=None)``
    The diffusers-native route: a dict for ``transformer.set_attn_processor(procs)`` holding
    XAttention processors for the target layers and the current processor objects for every
    other key (the token refiner keeps its ``AttnProcessor2_0``). **It also registers the step
    hook on the transformer** (without it the processors would never leave the dense phase);
    pass ``pipe`` so the step is read from its scheduler, else it comes from the cache context
    (Wan pipelines) or from timestep matching. The returned dict survives diffusers consuming
    it and carries ``procs.stats``, ``procs.controller`` and ``procs.handle`` (whose
    ``remove()`` restores the processors seen when it was built and removes the hook).

Hand-built processors (e.g. one instance for ``set_attn_processor``) run dense until
``xattn_video.hook.attach_step_hook(transformer, proc.controller, pipe=pipe)`` is called.

Not supported: transformers other than ``HunyuanVideoTransformer3DModel``,
``HunyuanVideoFramepackTransformer3DModel`` (raster token order only; apply_xattention only, it
has no ``set_attn_processor``) and ``WanTransformer3DModel`` (and subclasses); attention
layers whose processor is not the stock one (a custom processor is never silently replaced);
applying twice to one transformer without removing first.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .config import XAttentionConfig
from .hook import XAttentionController, attach_step_hook, detach_step_hook
from .processors import (
    PROCESSOR_CLASSES,
    STOCK_PROCESSOR_CLASSES,
    model_family,
    target_layers,
)
from .stats import XAttentionStats

logger = logging.getLogger(__name__)

_FAMILY_ALIASES = {"hunyuanvideo": "hunyuanvideo", "hunyuan": "hunyuanvideo", "wan": "wan"}


class XAttentionHandle:
    """What :func:`apply_xattention` did, and how to undo it.

    ``controller`` (shared state), ``stats`` (:class:`XAttentionStats`), ``cfg``, ``model``
    (``"hunyuanvideo"`` / ``"wan"``), ``transformers`` (the patched modules). ``remove()`` is
    idempotent; the handle is a context manager that removes on exit.
    """

    def __init__(self, controller: XAttentionController, model: str) -> None:
        self.controller = controller
        self.model = model
        self.transformers: list[torch.nn.Module] = []
        self._originals: list[tuple[torch.nn.Module, Any]] = []
        self._hooked: list[torch.nn.Module] = []
        self.active = True

    @property
    def stats(self) -> XAttentionStats:
        return self.controller.stats

    @property
    def cfg(self) -> XAttentionConfig:
        return self.controller.cfg

    def remove(self) -> None:
        """Restore the original processor objects and remove the step hook(s)."""
        if not self.active:
            return
        for module, original in self._originals:
            module.set_processor(original)
        for tr in self._hooked:
            detach_step_hook(tr)
        self.controller.reset()
        self.active = False
        logger.info("XAttention removed from %d transformer(s)", len(self.transformers))

    def __enter__(self) -> XAttentionHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        names = ", ".join(type(t).__name__ for t in self.transformers)
        return f"XAttentionHandle({self.model}: {names}; {state})"


class XAttentionProcessors(dict):
    """The dict :func:`xattention_processors` returns: path -> processor, plus ``controller``,
    ``stats`` and ``handle`` attributes that stay usable after ``set_attn_processor`` consumed
    (popped) the entries."""

    controller: XAttentionController
    handle: XAttentionHandle

    @property
    def stats(self) -> XAttentionStats:
        return self.controller.stats


def _resolve_family(transformer: torch.nn.Module, model: str | None) -> str:
    detected = model_family(transformer)  # raises for unknown classes
    if model is not None:
        fam = _FAMILY_ALIASES.get(str(model).lower())
        if fam is None:
            raise ValueError(f"unknown model {model!r}; known: {sorted(_FAMILY_ALIASES)}")
        if fam != detected:
            raise ValueError(
                f"model={model!r} does not match {type(transformer).__name__} ({detected})"
            )
    return detected


def _check_targets(transformer: torch.nn.Module, family: str, cfg: XAttentionConfig):
    targets = target_layers(transformer, family)
    stock, ours = STOCK_PROCESSOR_CLASSES[family], PROCESSOR_CLASSES[family]
    for path, module, _ in targets:
        proc = module.processor
        if isinstance(proc, ours):
            raise ValueError(
                f"XAttention is already applied to {type(transformer).__name__} ({path}); "
                "call remove() on its handle first"
            )
        if type(proc) is not stock:
            raise ValueError(
                f"{path} uses {type(proc).__name__}, not the stock {stock.__name__}; XAttention "
                "replaces only the stock processor"
            )
    if cfg.token_order == "tile" and "Framepack" in type(transformer).__name__:
        raise ValueError(
            "token_order='tile' is not supported for HunyuanVideoFramepackTransformer3DModel "
            "(its history tokens form no single grid); use token_order='raster'"
        )
    return targets


def _build(
    transformer: torch.nn.Module,
    family: str,
    controller: XAttentionController,
) -> tuple[list[tuple[str, torch.nn.Module, int]], dict[str, Any]]:
    """Processors for the targets, copying the stock processors' backend / parallel settings."""
    targets = _check_targets(transformer, family, controller.cfg)
    cls = PROCESSOR_CLASSES[family]
    new: dict[str, Any] = {}
    for path, module, layer in targets:
        proc = cls(controller=controller, layer=layer)
        for attr in ("_attention_backend", "_parallel_config"):
            if attr in vars(module.processor):  # set per instance by set_attention_backend etc.
                setattr(proc, attr, getattr(module.processor, attr))
        new[f"{path}.processor"] = proc
    return targets, new


def _log_patched(transformer: torch.nn.Module, targets, cfg: XAttentionConfig) -> None:
    layers = [layer for _, _, layer in targets]
    dense = sorted(set(layers) & set(cfg.dense_layers))
    logger.info(
        "XAttention on %s: %d attention layers patched (%s .. %s; always dense: %s), "
        "warmup_steps=%d, threshold=%s, block_size=%d, stride=%d, token_order=%s",
        type(transformer).__name__,
        len(targets),
        targets[0][0] if targets else "-",
        targets[-1][0] if targets else "-",
        dense or "none",
        cfg.warmup_steps,
        cfg.threshold if cfg.selection == "threshold" else f"ratio {cfg.ratio}",
        cfg.block_size,
        cfg.stride,
        cfg.token_order,
    )


def _all_processors(transformer: torch.nn.Module) -> dict[str, Any]:
    if hasattr(transformer, "attn_processors"):
        return dict(transformer.attn_processors)
    return {
        f"{name}.processor": m.processor
        for name, m in transformer.named_modules()
        if name and hasattr(m, "set_processor") and hasattr(m, "processor")
    }


def xattention_processors(
    transformer: torch.nn.Module,
    cfg: XAttentionConfig | None = None,
    *,
    pipe: Any = None,
    model: str | None = None,
) -> XAttentionProcessors:
    """Processor dict for ``transformer.set_attn_processor(...)``; registers the step hook.

    transformer: a supported diffusers video transformer; cfg: default the model's preset;
    pipe: the pipeline whose scheduler gives the step (optional, see the module docstring);
    model: ``"hunyuanvideo"`` / ``"wan"`` to assert the detected family. Every key of
    ``transformer.attn_processors`` is present; non-target keys map to the current objects.
    """
    family = _resolve_family(transformer, model)
    cfg = _config(cfg, family)
    controller = XAttentionController(cfg)
    current = _all_processors(transformer)
    targets, new = _build(transformer, family, controller)
    handle = XAttentionHandle(controller, family)
    handle.transformers.append(transformer)
    handle._originals = [(module, module.processor) for _, module, _ in targets]
    attach_step_hook(transformer, controller, pipe=pipe, layers={m: i for _, m, i in targets})
    handle._hooked.append(transformer)
    _log_patched(transformer, targets, cfg)
    out = XAttentionProcessors({**current, **new})
    out.controller = controller
    out.handle = handle
    return out


def _config(cfg: XAttentionConfig | None, family: str) -> XAttentionConfig:
    if cfg is None:
        return XAttentionConfig.from_preset(family)
    if not isinstance(cfg, XAttentionConfig):
        raise ValueError(f"cfg must be an XAttentionConfig, got {type(cfg).__name__}")
    return cfg


def apply_xattention(
    pipe_or_transformer: Any,
    cfg: XAttentionConfig | None = None,
    *,
    model: str | None = None,
) -> XAttentionHandle:
    """Switch XAttention on; returns the :class:`XAttentionHandle`.

    pipe_or_transformer: a diffusers pipeline (``.transformer``, and ``.transformer_2`` when it
    is set, as in Wan 2.2 A14B) or a bare transformer (the step then comes from the cache
    context or timestep matching, see :mod:`xattn_video.hook`). cfg: default the model's
    preset. model: ``"hunyuanvideo"`` / ``"wan"`` to assert the detected family. Unknown
    transformers raise ``ValueError`` naming the class and the supported ones.
    """
    if isinstance(pipe_or_transformer, torch.nn.Module):
        pipe, transformers = None, [pipe_or_transformer]
    else:
        pipe = pipe_or_transformer
        transformers = [
            t
            for t in (getattr(pipe, "transformer", None), getattr(pipe, "transformer_2", None))
            if t is not None
        ]
        if not transformers:
            raise ValueError(
                f"{type(pipe).__name__} has no `transformer`: pass a diffusers video pipeline "
                "or a transformer"
            )
    families = {_resolve_family(t, model) for t in transformers}
    if len(families) != 1:
        raise ValueError(f"the transformers belong to different model families: {families}")
    family = families.pop()
    cfg = _config(cfg, family)
    controller = XAttentionController(cfg)
    # check and build everything first, so a failure leaves the model untouched
    built = [(t, *_build(t, family, controller)) for t in transformers]
    handle = XAttentionHandle(controller, family)
    try:
        for tr, targets, new in built:
            handle.transformers.append(tr)
            for path, module, _ in targets:
                handle._originals.append((module, module.processor))
                module.set_processor(new[f"{path}.processor"])
            attach_step_hook(tr, controller, pipe=pipe, layers={m: i for _, m, i in targets})
            handle._hooked.append(tr)
            _log_patched(tr, targets, cfg)
    except Exception:
        handle.remove()
        raise
    return handle
