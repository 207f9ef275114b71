"""Knowing the denoising step inside the attention processors: a shared controller and a
stateful diffusers ``ModelHook`` on the transformer that updates it once per forward.

diffusers' HunyuanVideo pipeline passes no step index down to the attention blocks, so the
processors read a shared :class:`XAttentionController` instead. Its ``pre_forward`` hook sets,
before every transformer forward:

- ``step``: ``pipe.scheduler.step_index or 0`` when the pipeline (hence its scheduler) is known
  -- the same value for both forwards of a true-CFG step; else the ``step_index`` of the
  diffusers cache context when the pipeline sets one (Wan does); else **timestep matching**
  (bare transformer): a new ``float(timestep.max())`` advances the step, a repeated one (the
  second CFG forward) does not, a larger one starts a new sampling run at step 0;
- ``num_steps``: ``len(scheduler.timesteps)`` (or the context's ``num_inference_steps``);
- ``sparse``: ``warmup_steps <= step < num_steps - dense_last_steps`` -- the processors branch
  on this bool, never on the step number, so ``torch.compile`` sees only two variants;
- ``branch``: the cache-context name (``"cond"`` / ``"uncond"``) when the pipeline sets one,
  else ``"pass0"``, ``"pass1"``, ... counting the forwards seen at the same step;
- ``grid``: the latent token grid (T/p_t, H/p_h, W/p_w) of the input ``hidden_states``
  [B, C, T, H, W], for the ``tile`` token order.

The controller also holds the caches: block masks per (attention module, branch) for
``mask_refresh > 1`` and token permutations per (grid, tile, length, device). ``reset()`` runs at
the end of every pipeline call (diffusers calls each stateful hook's ``reset_state`` from
``maybe_free_model_hooks``) and whenever a new sampling run is detected (the step goes back),
so every pipeline call starts dense.

Not supported: ``dense_last_steps`` without a known step count (bare transformer without cache
context: logged once and ignored); pipelines that call the transformer several times per step
with different timesteps (they would count as several steps in the timestep fallback).
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, CacheContext, StateManager

from .config import XAttentionConfig
from .layout import inverse_permutation, tile_permutation
from .stats import XAttentionStats

logger = logging.getLogger(__name__)

HOOK_NAME = "xattention_step"


@dataclass
class _MaskEntry:
    mask: torch.Tensor  # (B, H, Nbq, Nbk) bool
    kv_len: torch.Tensor | None  # (B,) int
    age: int  # sparse calls served since the estimate, counting the estimating call


class XAttentionController:
    """State shared by the step hook(s) and all XAttention processors of one application.

    One controller may serve several transformers (Wan 2.2's ``transformer`` and
    ``transformer_2``). Processors read ``sparse``, ``step``, ``branch``, ``run`` and ``grid``.
    """

    def __init__(self, cfg: XAttentionConfig, stats: XAttentionStats | None = None) -> None:
        if not isinstance(cfg, XAttentionConfig):
            raise ValueError(f"cfg must be an XAttentionConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.stats = stats if stats is not None else XAttentionStats(enabled=cfg.collect_stats)
        self.dense_layers = frozenset(cfg.dense_layers)
        self.layers: weakref.WeakKeyDictionary[torch.nn.Module, int] = weakref.WeakKeyDictionary()
        self.run = -1
        self.forwards = 0
        self._perms: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._warned_no_num_steps = False
        self.reset()

    # -- per-run state ------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the current sampling run: step 0, dense, no cached masks."""
        self.step = 0
        self.sparse = False
        self.branch = "pass0"
        self.num_steps: int | None = None
        self.grid: tuple[int, int, int] | None = None
        self.masks: dict[tuple[int, str], _MaskEntry] = {}
        self._last_step: int | None = None
        self._last_t: float | None = None
        self._calls_at_step = 0
        self._fresh = True

    def _new_run(self) -> None:
        self.reset()

    def begin_forward(
        self,
        *,
        timestep: Any = None,
        hidden_states: torch.Tensor | None = None,
        context: CacheContext | None = None,
        scheduler: Any = None,
        patch_size: tuple[int, int, int] | None = None,
    ) -> None:
        """Update step / sparse / branch / grid for the transformer forward about to run.

        timestep: scalar, (B,) or (B, N) (Wan 2.2 per-token); hidden_states: [B, C, T, H, W];
        context: the diffusers cache context (may be None); scheduler: the pipeline's scheduler
        when known (its ``step_index`` is authoritative).
        """
        num_steps = None
        if scheduler is not None:
            step = int(getattr(scheduler, "step_index", None) or 0)
            timesteps = getattr(scheduler, "timesteps", None)
            num_steps = len(timesteps) if timesteps is not None else None
            if self._last_step is not None and step < self._last_step:
                self._new_run()
        elif context is not None and context.step_index is not None:
            step = int(context.step_index)
            if self._last_step is not None and step < self._last_step:
                self._new_run()
        else:
            step = self._match_timestep(timestep)
        if num_steps is None and context is not None and context.num_inference_steps:
            num_steps = int(context.num_inference_steps)

        if self._fresh:
            self.run += 1
            self._fresh = False
        self._calls_at_step = (
            self._calls_at_step + 1 if (self._last_step is not None and step == self._last_step)
            else 0
        )  # fmt: skip
        self._last_step = step
        self.step = step
        self.num_steps = num_steps
        self.branch = context.name if context is not None else f"pass{self._calls_at_step}"
        self.forwards += 1

        cfg = self.cfg
        end = math.inf
        if cfg.dense_last_steps:
            if num_steps is None:
                if not self._warned_no_num_steps:
                    logger.warning(
                        "dense_last_steps=%d ignored: the number of denoising steps is unknown "
                        "(pass the pipeline to apply_xattention)",
                        cfg.dense_last_steps,
                    )
                    self._warned_no_num_steps = True
            else:
                end = num_steps - cfg.dense_last_steps
        self.sparse = bool(cfg.warmup_steps <= step < end)

        if hidden_states is not None and patch_size is not None and hidden_states.ndim == 5:
            T, H, W = hidden_states.shape[-3:]
            pt, ph, pw = patch_size
            self.grid = (T // pt, H // ph, W // pw)

    def _match_timestep(self, timestep: Any) -> int:
        """Step from the timestep sequence: new value -> next step, repeat -> same, larger -> 0."""
        if timestep is None:
            return self._last_step if self._last_step is not None else 0
        t = float(torch.as_tensor(timestep).max())
        last = self._last_t
        if last is None or self._last_step is None:
            step = 0
        elif t == last:
            step = self._last_step
        elif t < last:
            step = self._last_step + 1
        else:
            self._new_run()
            step = 0
        self._last_t = t
        return step

    # -- what processors ask ------------------------------------------------------------------
    def layer_of(self, attn: torch.nn.Module) -> int:
        """Layer index of an attention module (registered by ``attach_step_hook``), else -1."""
        return self.layers.get(attn, -1)

    def is_sparse(self, layer: int) -> bool:
        """Sparse now, for this layer (``sparse`` and the layer not in ``dense_layers``)."""
        return self.sparse and layer not in self.dense_layers

    def cached_mask(
        self, attn: torch.nn.Module, shape: tuple[int, ...], kv_len: torch.Tensor | None
    ) -> torch.Tensor | None:
        """The cached block mask of (attn, branch) if it may be reused now, else None.

        With ``mask_refresh = r`` a mask estimated at one sparse step serves the next r-1 sparse
        steps of the same module and branch, then it is re-estimated.
        """
        refresh = self.cfg.mask_refresh
        if refresh <= 1:
            return None
        entry = self.masks.get((id(attn), self.branch))
        if entry is None or entry.age >= refresh or tuple(entry.mask.shape) != tuple(shape):
            return None
        if (entry.kv_len is None) != (kv_len is None) or (
            kv_len is not None and not torch.equal(entry.kv_len, kv_len)
        ):
            return None
        entry.age += 1
        return entry.mask

    def store_mask(
        self, attn: torch.nn.Module, mask: torch.Tensor, kv_len: torch.Tensor | None
    ) -> None:
        """Keep a freshly estimated mask for reuse (only when ``mask_refresh > 1``).

        Memory: B * H * Nb^2 bytes per attention module and branch.
        """
        if self.cfg.mask_refresh > 1:
            self.masks[(id(attn), self.branch)] = _MaskEntry(mask, kv_len, 1)

    def permutation(
        self, n_video: int, n_total: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(perm, inv), each (n_total,) int64: ``tile`` order for the video prefix, identity for
        the ``n_total - n_video`` text tokens after it. Cached per (grid, tile, length, device)."""
        grid = self.grid
        if grid is None or math.prod(grid) != n_video:
            raise ValueError(
                f"token_order='tile' needs the latent grid of the {n_video} video tokens, but the "
                f"step hook saw grid={grid}; attach the step hook (apply_xattention does) and use "
                "a model whose video tokens form one (T, H, W) grid, or use token_order='raster'"
            )
        key = (grid, self.cfg.tile_size, n_total, str(device))
        if key not in self._perms:
            perm = tile_permutation(grid, self.cfg.tile_size, device=device)
            if n_total > n_video:
                tail = torch.arange(n_video, n_total, device=device, dtype=perm.dtype)
                perm = torch.cat([perm, tail])
            self._perms[key] = (perm, inverse_permutation(perm))
        return self._perms[key]


class _NoState(BaseState):
    def reset(self, *args, **kwargs) -> None:
        pass


class XAttentionStepHook(ModelHook):
    """Stateful transformer hook: calls ``controller.begin_forward`` before every forward.

    scheduler_getter: returns the pipeline's current scheduler (or None); patch_size:
    (p_t, p_h, p_w) of the transformer, for the latent grid.
    """

    _is_stateful = True

    def __init__(
        self,
        controller: XAttentionController,
        *,
        scheduler_getter: Callable[[], Any] | None = None,
        patch_size: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        self.controller = controller
        self.scheduler_getter = scheduler_getter
        self.patch_size = patch_size
        # diffusers' cache_context() writes the context into every StateManager of a stateful hook
        self.state_manager = StateManager(_NoState)

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        hidden_states = kwargs.get("hidden_states", args[0] if args else None)
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        try:
            context = self.state_manager.context
        except ValueError:  # no cache_context around this call (bare transformer)
            context = None
        self.controller.begin_forward(
            timestep=timestep,
            hidden_states=hidden_states if isinstance(hidden_states, torch.Tensor) else None,
            context=context,
            scheduler=self.scheduler_getter() if self.scheduler_getter is not None else None,
            patch_size=self.patch_size,
        )
        return args, kwargs

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state_manager.reset()
        self.controller.reset()
        return module


def transformer_patch_size(transformer: torch.nn.Module) -> tuple[int, int, int] | None:
    """(p_t, p_h, p_w) from a diffusers video transformer's config, or None if unknown."""
    config = getattr(transformer, "config", None)
    p = getattr(config, "patch_size", None)
    if p is None:
        return None
    if isinstance(p, (tuple, list)):
        return tuple(int(x) for x in p) if len(p) == 3 else None
    return (int(getattr(config, "patch_size_t", 1) or 1), int(p), int(p))


def scheduler_getter_for(pipe: Any) -> Callable[[], Any] | None:
    """A callable returning ``pipe.scheduler`` at call time (weakly referenced; None if no pipe)."""
    if pipe is None:
        return None
    ref = weakref.ref(pipe)

    def get() -> Any:
        p = ref()
        return getattr(p, "scheduler", None) if p is not None else None

    return get


def attach_step_hook(
    transformer: torch.nn.Module,
    controller: XAttentionController,
    *,
    pipe: Any = None,
    layers: dict[torch.nn.Module, int] | None = None,
) -> XAttentionStepHook:
    """Register the step hook on ``transformer`` (name ``"xattention_step"``).

    pipe: the diffusers pipeline whose scheduler gives the step (None: cache context or
    timestep matching). layers: attention module -> layer index, for processors built without a
    ``layer`` (default: every attention module XAttention targets in this transformer).
    Raises ``ValueError`` if the transformer already has the hook.
    """
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    if registry.get_hook(HOOK_NAME) is not None:
        raise ValueError(
            f"{type(transformer).__name__} already has an XAttention step hook; remove the "
            "previous application first (handle.remove())"
        )
    if layers is None:
        from .processors import target_layers  # processors import this module

        layers = {module: layer for _, module, layer in target_layers(transformer)}
    controller.layers.update(layers)
    hook = XAttentionStepHook(
        controller,
        scheduler_getter=scheduler_getter_for(pipe),
        patch_size=transformer_patch_size(transformer),
    )
    registry.register_hook(hook, HOOK_NAME)
    return hook


def detach_step_hook(transformer: torch.nn.Module) -> bool:
    """Remove the step hook from ``transformer``; True if there was one.

    If the hook registry is then empty, the plain ``forward`` is restored too (the registry's
    instance attribute is dropped), leaving the module as it was before.
    """
    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is None or registry.get_hook(HOOK_NAME) is None:
        return False
    registry.remove_hook(HOOK_NAME, recurse=False)
    if not registry.hooks:
        fwd = transformer.__dict__.get("forward")
        if getattr(fwd, "__func__", None) is type(transformer).forward:
            del transformer.forward
    return True
