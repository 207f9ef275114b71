"""Knowing the denoising step inside the attention processors: a shared controller and a
stateful diffusers ``ModelHook`` on the transformer that updates it once per forward.

diffusers' HunyuanVideo pipeline passes no step index down to the attention blocks, so the
processors read a shared :class:`XAttentionController` instead. Its ``pre_forward`` hook sets,
before every transformer forward:

- ``step``: when the pipeline (hence its scheduler) is known, the scheduler's position in its
  ``timesteps`` counted from where this call started (video-to-video / image-to-video pipelines
  with ``strength < 1`` start part-way and set no begin index; before the first
  ``scheduler.step`` the position is its ``begin_index``, else where the forward's timestep
  sits in ``timesteps``; a controller first run after a ``scheduler.step`` -- Wan 2.2's
  ``transformer_2`` with its own -- reads the start from :mod:`xattn_video.schedule`) -- the
  same value for both forwards of a true-CFG step (a scheduler whose run is over, or left
  mid-run by a call stopped part-way, is ignored: another pipeline object runs the
  transformer; a second-order scheduler -- Heun, KDPM2, ``order`` 2 -- moves its position
  at each of a step's two forwards, so the position is divided by its ``order``); else the
  ``step_index`` of the diffusers cache context when the pipeline sets one (Wan does, counting
  forwards: no ``order`` there); else **timestep matching** (bare
  transformer): a new ``float(timestep.max())`` advances the step, a repeated one (the second
  CFG forward) does not, a larger one starts a new run at step 0;
- ``num_steps``: ``len(scheduler.timesteps)`` less the steps the call skipped, over the
  scheduler's ``order`` (or the context's ``num_inference_steps``);
- ``sparse``: ``warmup_steps <= step < num_steps - dense_last_steps`` -- the processors branch
  on this bool, never on the step number, so ``torch.compile`` sees only two variants (the
  hook itself runs eagerly: :func:`compile_below_hook` compiles the forward under it);
- ``reuse_masks``: with ``mask_refresh = r > 1``, True at the sparse steps that reuse the
  masks estimated at the run's first sparse step + k*r (another bool, so compiled graphs hold
  one "estimate" and one "reuse" variant whatever r is; no counter is read inside a graph);
- ``branch``: the cache-context name (``"cond"`` / ``"uncond"``) when the pipeline sets one,
  else ``"pass0"``, ``"pass1"``, ... counting the forwards seen at the same step;
- ``grid``: the latent token grid (T/p_t, H/p_h, W/p_w) of the input ``hidden_states``
  [B, C, T, H, W], for the ``tile`` token order.

The controller also holds the sparse path's caches (:mod:`xattn_video.sparse_path`): block
masks per (attention module, branch) for ``mask_refresh > 1`` and tile permutations. A new
sampling run -- hence a reset to step 0, dense, no cached masks -- starts when

- the pipeline's scheduler has a new ``timesteps`` tensor (every diffusers pipeline call runs
  ``scheduler.set_timesteps``), or its position goes back (``step_index`` back to None too);
- without a scheduler: the cache context's ``step_index`` goes back, or a branch name
  (``"cond"``) comes again at the same step; with timestep matching, a larger timestep (a
  branch name seen again at the same timestep is the next step: bf16 timesteps repeat);
- diffusers calls the hook's ``reset_state`` (``maybe_free_model_hooks`` at the end of a call).

So a call that raised (e.g. in ``callback_on_step_end``) never leaks masks or step into the next.

One application owns the hook (``attach_step_hook(..., owner=handle)``, :func:`current_owner`),
so a later application can remove the previous one first (see :mod:`xattn_video.apply`).

Not supported: ``dense_last_steps`` without a known step count (bare transformer without cache
context: logged once and ignored); a scheduler that sets ``step_index`` before the first forward
(FlowMatchHeun's ``scale_noise`` in video-to-video calls: counted from the schedule's start);
second-order schedulers without the pipeline (``apply_xattention`` on Wan's bare transformer:
the cache context counts forwards, so pass ``pipe``); pipelines that call the transformer several
times per step with different timesteps (they would count as several steps in the timestep
fallback); a new run of a bare transformer (no scheduler, no cache context) that starts at the
timestep where the previous one stopped (it continues the previous run; with context names
and no ``step_index``, after a call stopped at its first step, from step 1).
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, CacheContext, StateManager

from . import offload_hooks, schedule
from .auto_dense import AutoDense
from .config import XAttentionConfig
from .graph_outputs import captures_cuda_graphs, compile_forward
from .sparse_path import MaskCache, TileOrders, file_thresholds
from .stats import XAttentionStats
from .targets import target_layers, transformer_patch_size

logger = logging.getLogger(__name__)

HOOK_NAME = "xattention_step"


class XAttentionController:
    """State shared by the step hook(s) and all XAttention processors of one application.

    One controller may serve several transformers (Wan 2.2's ``transformer`` and
    ``transformer_2``). Processors read ``sparse``, ``step``, ``branch``, ``run`` and ``grid``;
    the sparse path uses ``masks`` (:class:`~xattn_video.sparse_path.MaskCache`) and ``orders``
    (:class:`~xattn_video.sparse_path.TileOrders`).
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
        self.masks = MaskCache(cfg.mask_refresh)
        self.orders = TileOrders(cfg.tile_size)
        self.auto_dense = AutoDense(cfg, self.stats)
        self.stats.reason_of = self.dense_reason  # read when a forward's records are closed
        self._warned_no_num_steps = False
        self._stopped = schedule.StoppedCalls()
        self.reset()

    # -- per-run state ------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the current sampling run: step 0, dense, no cached masks."""
        self.stats.close()  # the last forward's dense reasons, before its state goes
        self.step = 0
        self.sparse = False
        self.reuse_masks = False
        self._first_sparse_step: int | None = None
        self.branch = "pass0"
        self.num_steps: int | None = None
        self.grid: tuple[int, int, int] | None = None
        self.thresholds: dict[int, tuple[float, ...]] | None = None  # sparse_path.file_thresholds
        self.masks.clear()
        self._last_step: int | None = None
        self._last_index: int | None = None  # the scheduler's position at the last forward
        self._start_index: int | None = None  # its position at this call's first step
        self._last_t: float | None = None
        self._timesteps: Any = None  # the scheduler's timesteps tensor of the current run
        self._branches_at_step: set[str] = set()
        self._calls_at_step = 0
        self._fresh = True

    def begin_forward(
        self,
        *,
        timestep: Any = None,
        hidden_states: torch.Tensor | None = None,
        context: CacheContext | None = None,
        scheduler: Any = None,
        loop_t: Any = None,
        patch_size: tuple[int, int, int] | None = None,
        input_size: tuple | None = None,
    ) -> None:
        """Update step / sparse / branch / grid for the transformer forward about to run.

        timestep: scalar, (B,) or (B, N) (Wan 2.2 per-token); hidden_states: [B, C, T, H, W];
        context: the diffusers cache context (may be None); scheduler: the pipeline's scheduler
        when known (its ``step_index`` is authoritative); loop_t: its ``_current_timestep``
        (:class:`~xattn_video.schedule.StoppedCalls`); input_size: the transformer and the
        inputs' shapes, devices and dtypes (``auto_dense`` keeps decisions per size).
        """
        self.masks.own()  # masks a compiled graph stored: out of its CUDA-graph pool
        num_steps = None
        if scheduler is not None and schedule.idle(scheduler):
            scheduler = None  # another pipeline runs the transformer: context / timesteps
        elif scheduler is not None and schedule.stopped_call(
            loop_t, scheduler, context.name if context is not None else None, self._stopped
        ):
            scheduler = None  # the pipeline raised part-way; another one runs the transformer
            if self._timesteps is not None:
                self.reset()  # its call's steps and masks are not this one's
        if scheduler is not None:
            index = schedule.scheduler_index(scheduler, timestep)
            timesteps = getattr(scheduler, "timesteps", None)
            last = self._last_index
            if self._last_step is not None and (
                timesteps is not self._timesteps
                or (last is not None and (index is None or index < last))
            ):
                self.reset()  # set_timesteps ran: a new pipeline call
            self._timesteps = timesteps  # held, so a new tensor can't reuse its identity
            if index is not None and self._start_index is None:  # where this call started
                self._start_index = schedule.call_start(
                    scheduler, index, first=self._last_step is None
                )
            self._last_index = index
            start = self._start_index or 0
            per = schedule.evaluations_per_step(scheduler)  # Heun: 2 forwards a step
            step = (index - start) // per if index is not None else 0
            num_steps = -(-(len(timesteps) - start) // per) if timesteps is not None else None
        elif context is not None and context.step_index is not None:
            step = int(context.step_index)
            if self._last_step is not None and (
                step < self._last_step
                or (step == self._last_step and context.name in self._branches_at_step)
            ):
                self.reset()
        else:
            step = self._match_timestep(timestep, context.name if context is not None else None)
        if num_steps is None and context is not None and context.num_inference_steps:
            num_steps = int(context.num_inference_steps)

        if self._fresh:
            self.run += 1
            self._fresh = False
        same_step = self._last_step is not None and step == self._last_step
        self._calls_at_step = self._calls_at_step + 1 if same_step else 0
        if not same_step:
            self._branches_at_step = set()
        if context is not None:
            self._branches_at_step.add(context.name)
        self._last_step = step
        self.step = step
        self.num_steps = num_steps
        self.branch = context.name if context is not None else f"pass{self._calls_at_step}"
        self.forwards += 1
        # stamp the previous forward's stats, publish its densities, re-decide auto_dense
        self.stats.begin(run=self.run, step=self.step, branch=self.branch)
        self.auto_dense.update(input_size)

        cfg = self.cfg
        end = math.inf
        if cfg.dense_last_steps:
            if num_steps is None:
                if not self._warned_no_num_steps:
                    logger.warning(
                        "dense_last_steps=%d ignored: the number of denoising steps is unknown "
                        "(pass the pipeline that runs the transformer to apply_xattention)",
                        cfg.dense_last_steps,
                    )
                    self._warned_no_num_steps = True
            else:
                end = num_steps - cfg.dense_last_steps
        self.sparse = bool(cfg.warmup_steps <= step < end)
        if self.sparse and self._first_sparse_step is None:
            self._first_sparse_step = step
        self.reuse_masks = bool(
            self.sparse
            and cfg.mask_refresh > 1
            and (step - self._first_sparse_step) % cfg.mask_refresh != 0
        )
        if self.sparse:
            self.masks.prepare(self.layers.keys(), self.branch)
            self.thresholds = file_thresholds(cfg)  # eagerly: a traced call reads no file

        if hidden_states is not None and patch_size is not None and hidden_states.ndim == 5:
            T, H, W = hidden_states.shape[-3:]
            pt, ph, pw = patch_size
            self.grid = (T // pt, H // ph, W // pw)
            order = {"cluster": "tile"}.get(cfg.token_order, cfg.token_order)
            if self.sparse and order in ("tile", "hilbert"):  # eagerly, not in a graph
                self.orders.prepare(self.grid, hidden_states.device, order)

    def _match_timestep(self, timestep: Any, branch: str | None = None) -> int:
        """Step from the timestep sequence: new value -> next step, repeat -> same (next when
        ``branch`` ran at it: bf16 timesteps of consecutive steps can be one value), larger -> 0."""
        if timestep is None:
            return self._last_step if self._last_step is not None else 0
        t = schedule.timestep_value(timestep)
        last = self._last_t
        if last is None or self._last_step is None:
            step = 0
        elif t == last:
            step = self._last_step + (branch in self._branches_at_step)
        elif t < last:
            step = self._last_step + 1
        else:
            self.reset()
            step = 0
        self._last_t = t
        return step

    # -- what processors ask ------------------------------------------------------------------
    def layer_of(self, attn: torch.nn.Module) -> int:
        """Layer index of an attention module (registered by ``attach_step_hook``), else -1."""
        return self.layers.get(attn, -1)

    def is_sparse(self, layer: int) -> bool:
        """Sparse now, for this layer: ``sparse``, a registered layer (not -1), not in
        ``dense_layers``, and not run dense by ``auto_dense`` (decided at its first sparse call).

        The ``auto_dense`` decision is read first: a compiled graph of a forward whose layers
        all run dense for cost then guards on the decisions only, so the warm-up steps of the
        next pipeline call (``sparse`` False) replay that same graph instead of a second one.
        """
        return (
            not self.auto_dense.decisions.get(layer, False)
            and self.sparse
            and layer >= 0
            and layer not in self.dense_layers
        )

    def dense_reason(self, layer: int) -> str:
        """Why ``layer`` runs dense now: ``"cost"`` (auto_dense) or ``"schedule"``."""
        scheduled = self.sparse and layer not in self.dense_layers
        return "cost" if scheduled and self.auto_dense.decisions.get(layer, False) else "schedule"


class _NoState(BaseState):
    def reset(self, *args, **kwargs) -> None:
        pass


class XAttentionStepHook(ModelHook):
    """Stateful transformer hook: calls ``controller.begin_forward`` before every forward.

    scheduler_getter: the pipeline's (scheduler, loop ``t``) (``schedule.scheduler_getter_for``);
    patch_size: (p_t, p_h, p_w) of the transformer, for the latent grid; owner: the application
    that attached it (an object with ``remove()``, e.g. ``XAttentionHandle``), or None.
    """

    _is_stateful = True

    def __init__(
        self,
        controller: XAttentionController,
        *,
        scheduler_getter: Callable[[], tuple[Any, Any]] | None = None,
        patch_size: tuple[int, int, int] | None = None,
        owner: Any = None,
    ) -> None:
        super().__init__()
        self.controller = controller
        self.owner = owner
        self.scheduler_getter = scheduler_getter
        self.patch_size = patch_size
        self.uncompiled_forward: Callable[..., Any] | None = None  # set by compile_below_hook
        self.compiled_forward: Callable[..., Any] | None = None  # and what it compiled
        self.installed_forward: Any = None  # the registry's forward (offload_hooks.register)
        # diffusers' cache_context() writes the context into every StateManager of a stateful hook
        self.state_manager = StateManager(_NoState)

    # Host-side bookkeeping (step, scheduler, timestep matching): never traced. A plain
    # torch.compile of the transformer breaks the graph here once per forward (instead of
    # recompiling every step); compile_below_hook() compiles the forward under the hook.
    @torch.compiler.disable
    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        hidden_states = kwargs.get("hidden_states", args[0] if args else None)
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        ehs = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        if getattr(module, "_parallel_config", None) is not None:
            # context parallelism enabled directly (diffusers' enable_parallelism): the same clear
            # ValueError for indivisible token counts as enable_context_parallel's check hook
            from .parallel import check_parallel_inputs

            if isinstance(hidden_states, torch.Tensor) and hidden_states.ndim == 5:
                text = ehs if isinstance(ehs, torch.Tensor) and ehs.ndim == 3 else None
                check_parallel_inputs(module, hidden_states, text)
        try:
            context = self.state_manager.context
        except ValueError:  # no cache_context around this call (bare transformer)
            context = None
        # auto_dense decides per transformer (Wan 2.2's experts share layer numbers, not costs)
        # and per inputs' size, device and dtype (a model moved keeps its shapes)
        tensors = [x for x in (hidden_states, ehs) if isinstance(x, torch.Tensor)]
        size = (id(module), *((x.device, x.dtype, x.shape) for x in tensors))
        scheduler, loop_t = self.scheduler_getter() if self.scheduler_getter else (None, None)
        self.controller.begin_forward(
            timestep=timestep,
            hidden_states=hidden_states if isinstance(hidden_states, torch.Tensor) else None,
            context=context,
            scheduler=scheduler,
            loop_t=loop_t,
            patch_size=self.patch_size,
            input_size=size,
        )
        return args, kwargs

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state_manager.reset()
        self.controller.reset()
        return module


def attach_step_hook(
    transformer: torch.nn.Module,
    controller: XAttentionController,
    *,
    pipe: Any = None,
    layers: dict[torch.nn.Module, int] | None = None,
    owner: Any = None,
) -> XAttentionStepHook:
    """Register the step hook on ``transformer`` (name ``"xattention_step"``).

    pipe: the diffusers pipeline whose scheduler gives the step (None: cache context or
    timestep matching). layers: attention module -> layer index, for processors built without a
    ``layer`` (default: every attention module XAttention targets in this transformer).
    owner: the application this hook belongs to (see :func:`current_owner`).
    Raises ``ValueError`` if the transformer already has the hook.
    """
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    if registry.get_hook(HOOK_NAME) is not None:
        raise ValueError(
            f"{type(transformer).__name__} already has an XAttention step hook; remove it first "
            "(handle.remove(), or xattn_video.hook.detach_step_hook(transformer))"
        )
    if layers is None:
        layers = {module: layer for _, module, layer in target_layers(transformer)}
    controller.layers.update(layers)
    hook = XAttentionStepHook(
        controller,
        scheduler_getter=schedule.scheduler_getter_for(pipe),
        patch_size=transformer_patch_size(transformer),
        owner=owner,
    )
    hook.installed_forward = offload_hooks.register(transformer, registry, hook, HOOK_NAME)
    return hook


def step_hook(transformer: torch.nn.Module) -> XAttentionStepHook | None:
    """The XAttention step hook registered on ``transformer``, or None."""
    registry = getattr(transformer, "_diffusers_hook", None)
    return registry.get_hook(HOOK_NAME) if registry is not None else None


def compile_below_hook(transformer: torch.nn.Module, **compile_kwargs: Any) -> torch.nn.Module:
    """``torch.compile`` the forward of a transformer that has the XAttention step hook, under
    the hook: the hook keeps running eagerly before every forward (it reads the scheduler and
    the timestep on the host), and the forward it calls -- the whole model with the XAttention
    processors -- is one compiled graph (``fullgraph=True`` works). It branches only on bools
    (``controller.sparse``, ``auto_dense``), so a run compiles a dense and a sparse variant (two
    sparse with ``mask_refresh > 1``), not one per step. ``compile_kwargs`` go to
    ``torch.compile`` (e.g. ``mode="reduce-overhead"``: then ``auto_dense`` decides from CUDA-graph
    times, and each forward returns clones of the graph's outputs, :mod:`.graph_outputs`: a
    second forward in the step, CFG, would overwrite them). Called again, it compiles the
    uncompiled forward anew; ``handle.remove()`` restores it. Removing a hook registered before
    XAttention's (e.g. ``disable_cache()``) puts the plain forward back: compile again. Not for
    regional compilation (``compile_repeated_blocks``: a graph per layer). Returns the model."""
    hook = step_hook(transformer)
    if hook is None:
        raise ValueError(
            f"{type(transformer).__name__} has no XAttention step hook: apply XAttention first, "
            "or compile it with torch.compile directly"
        )
    if hook.uncompiled_forward is None:  # put back by detach_step_hook
        hook.uncompiled_forward = hook.fn_ref.forward
    hook.compiled_forward = compile_forward(hook.uncompiled_forward, **compile_kwargs)
    hook.fn_ref.forward = hook.compiled_forward
    hook.controller.auto_dense.use_graph_timing(captures_cuda_graphs(compile_kwargs))
    return transformer


def current_owner(transformer: torch.nn.Module) -> Any:
    """The owner (application handle) of ``transformer``'s step hook; None without a hook or
    for a hook attached by hand without an owner."""
    hook = step_hook(transformer)
    return hook.owner if hook is not None else None


def detach_step_hook(transformer: torch.nn.Module) -> bool:
    """Remove the step hook from ``transformer``; True if there was one.

    The forward under the hook is put back uncompiled first (diffusers would otherwise restore
    :func:`compile_below_hook`'s compiled one as the module's forward); accelerate's offload
    hook stays outermost (:mod:`xattn_video.offload_hooks`). An empty hook registry then gives
    back the plain ``forward`` too, leaving the module as it was before."""
    registry = getattr(transformer, "_diffusers_hook", None)
    hook = registry.get_hook(HOOK_NAME) if registry is not None else None
    if hook is None:
        return False
    if hook.compiled_forward is not None and hook.fn_ref.forward is hook.compiled_forward:
        hook.fn_ref.forward = hook.uncompiled_forward  # (a hook removed below replaced both)
    offload_hooks.remove(transformer, registry, HOOK_NAME, hook.installed_forward)
    if not registry.hooks:
        fwd = transformer.__dict__.get("forward")
        if getattr(fwd, "__func__", None) is type(transformer).forward:
            del transformer.forward
    return True
