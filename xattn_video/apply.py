"""Switching XAttention on for a diffusers pipeline or transformer, and off again.

Two routes, one install path (:func:`_apply`): both build one
:class:`~xattn_video.hook.XAttentionController` (step, caches, stats) shared by the processors
and the transformer step hook, and one :class:`XAttentionHandle` that owns the application.

``handle = apply_xattention(pipe_or_transformer, cfg)``
    Installs one processor per target attention layer (:mod:`xattn_video.targets`:
    HunyuanVideo's 20 double- + 40 single-stream blocks, the token refiner untouched; Wan's
    ``attn1``, cross-attention untouched) and the step hook. With a pipeline the step comes
    from ``pipe.scheduler``; Wan 2.2's ``transformer_2`` is patched too and shares the
    controller. ``handle.stats``, ``handle.controller``; ``handle.remove()`` (or leaving
    ``with apply_xattention(...):``) puts the original processor objects back and removes the
    hook.

``procs = xattention_processors(transformer, cfg, pipe=None)``
    The diffusers-native route: a dict for ``transformer.set_attn_processor(procs)`` holding
    XAttention processors for the target layers and the current processor objects for every
    other key (the token refiner keeps its ``AttnProcessor2_0``). Building it registers the
    step hook (a processor cannot see the transformer's forward; without the hook the
    processors never leave the dense phase) but changes no processor: until the dict is
    installed the model computes exactly as before. Pass ``pipe`` so the step is read from its
    scheduler, else it comes from the cache context (Wan's text-to-video pipelines) or timestep
    matching, whose steps count from the transformer's first forward: Wan 2.2's image-to-video
    pipeline sets no step in its cache context, so without ``pipe`` its second expert would
    count from 0 again (warm-up repeated). The dict survives diffusers consuming it and carries
    ``procs.stats``, ``procs.controller``, ``procs.handle`` and ``procs.remove()``.

Re-applying replaces: every application (either route) first removes the previous application
that owns the transformer's step hook (``handle.remove()`` of that application: its processors
are put back, its hook removed; a logged warning says so). So a discarded processor dict never
blocks a later ``apply_xattention`` / ``xattention_processors``, and the last application
wins. All checks run before anything is removed or installed: a failing application leaves the
model (and the previous application) untouched. They include the config's ``thresholds_file``
against the model (every layer it lists exists, with that head count: else ``ValueError``; a
warning when it was calibrated on another model family), so a file that does not fit fails here,
not after the dense warm-up; and fp8 arithmetic on a machine without an sm90+ CUDA GPU
(``precision="fp8"``, or an fp8 estimate on ``backend="triton"``), which could never run. Only
that is refused: the parameters' device at apply time is not checked (applying on the CPU and
moving the pipeline to a GPU afterwards is fine), so fp8 on a CPU-resident pipeline of a machine
with a Hopper GPU still fails at the first sparse step if it is never moved.

Hand-built processors (e.g. one instance for ``set_attn_processor``) run dense until
``xattn_video.hook.attach_step_hook(transformer, proc.controller, pipe=pipe)`` is called; such
an owner-less hook is not replaced (applying raises until ``detach_step_hook`` removes it).

Not supported: transformers other than those of :mod:`xattn_video.targets`
(``HunyuanVideoFramepackTransformer3DModel``: no tile / hilbert token order, and apply_xattention
only, it has no ``set_attn_processor``); attention layers whose processor is not the stock one
(a custom processor is never silently replaced); a ``thresholds_file`` on a pipeline with a
second expert (``transformer_2``): both experts use layer indices 0..N-1, so one file's layer
``i`` would set both experts' thresholds (``ValueError``; :mod:`xattn_video.calibrate` refuses
such pipelines too).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any

import torch

from .config import XAttentionConfig
from .hook import XAttentionController, attach_step_hook, current_owner, detach_step_hook, step_hook
from .op_checks import fp8_kernels_missing, interpreter_enabled
from .parallel import check_parallel_config, ulysses_group
from .processors import PROCESSOR_CLASSES
from .stats import XAttentionStats
from .targets import Layer, model_family, supports_tile_order, target_layers, target_of
from .thresholds import check_fits, file_family, shared_thresholds

logger = logging.getLogger(__name__)


class XAttentionHandle:
    """What one application of XAttention did, and how to undo it.

    ``controller`` (shared state), ``stats`` (:class:`XAttentionStats`), ``cfg``, ``model``
    (``"hunyuanvideo"`` / ``"hunyuanvideo15"`` / ``"wan"``), ``transformers`` (the patched
    modules). ``remove()`` is idempotent; the handle is a context manager that removes on exit.
    """

    def __init__(self, controller: XAttentionController, model: str) -> None:
        self.controller = controller
        self.model = model
        self.transformers: list[torch.nn.Module] = []
        self._originals: list[tuple[torch.nn.Module, Any]] = []
        self.active = True

    @property
    def stats(self) -> XAttentionStats:
        return self.controller.stats

    @property
    def cfg(self) -> XAttentionConfig:
        return self.controller.cfg

    def forget_history(self) -> None:
        """Forget what earlier pipeline calls left: the stats records, the density feedback and
        ``auto_dense``'s per-layer decisions, which otherwise persist across calls of one size
        (:mod:`xattn_video.auto_dense`), so the next call's video does not depend on the calls
        made before it. ``generate`` calls it before every prompt: a resumed prompt, or one on
        another process, is the video a one-shot run makes."""
        self.controller.stats.reset()
        self.controller.auto_dense.reset()

    def original_processor(self, module: torch.nn.Module) -> Any:
        """The processor ``module`` had before this application (None if not a target)."""
        return next((orig for m, orig in self._originals if m is module), None)

    def remove(self) -> None:
        """Put the original processors back where this application's processors still sit, and
        remove this application's step hook(s)."""
        if not self.active:
            return
        for module, original in self._originals:
            if getattr(module.processor, "controller", None) is self.controller:
                _carry_backend(module.processor, original)  # set while applied: kept
                module.set_processor(original)
        for tr in self.transformers:
            if current_owner(tr) is self:
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
    ``stats``, ``handle`` and ``remove()``, which stay usable after ``set_attn_processor``
    consumed (popped) the entries."""

    controller: XAttentionController
    handle: XAttentionHandle

    @property
    def stats(self) -> XAttentionStats:
        return self.controller.stats

    def remove(self) -> None:
        """``handle.remove()``: original processors back (if installed), step hook removed."""
        self.handle.remove()


def _carry_backend(src: Any, dst: Any) -> None:
    """Copy the attention backend / parallel config that diffusers' ``set_attention_backend`` /
    ``enable_parallelism`` set on processor ``src`` (instance attributes) to ``dst``."""
    for attr in ("_attention_backend", "_parallel_config"):
        if attr in vars(src):
            setattr(dst, attr, getattr(src, attr))


def _transformers_of(pipe_or_transformer: Any) -> tuple[Any, list[torch.nn.Module]]:
    """(pipe or None, [transformer, transformer_2 if set and another module])."""
    if isinstance(pipe_or_transformer, torch.nn.Module):
        return None, [pipe_or_transformer]
    pipe = pipe_or_transformer
    transformers = []
    for t in (getattr(pipe, "transformer", None), getattr(pipe, "transformer_2", None)):
        # one module set as both experts is patched once (a second hook on it was refused
        # part-way with "already has an XAttention step hook")
        if t is not None and all(t is not u for u in transformers):
            transformers.append(t)
    if not transformers:
        raise ValueError(
            f"{type(pipe).__name__} has no `transformer`: pass a diffusers video pipeline "
            "or a transformer"
        )
    return pipe, transformers


def _config(cfg: XAttentionConfig | None, family: str) -> XAttentionConfig:
    if cfg is None:
        return XAttentionConfig.from_preset(family)
    if not isinstance(cfg, XAttentionConfig):
        raise ValueError(f"cfg must be an XAttentionConfig, got {type(cfg).__name__}")
    return cfg


def _check(
    transformer: torch.nn.Module, family: str, cfg: XAttentionConfig, previous: list
) -> list[Layer]:
    """The target layers, after checking the config against the model and that every target
    carries the stock processor (once the ``previous`` applications are removed)."""
    name = type(transformer).__name__
    hook = step_hook(transformer)
    if hook is not None and hook.owner is None:
        raise ValueError(
            f"{name} has a step hook attached by hand; remove it first "
            "(xattn_video.hook.detach_step_hook(transformer))"
        )
    targets = target_layers(transformer, family)
    # context parallelism already enabled: ring / ulysses_anything and a budget raise here,
    # not after the warm-up steps
    if ulysses_group(getattr(transformer, "_parallel_config", None)) is not None:
        check_parallel_config(cfg)
    bad = [i for i in cfg.dense_layers if i >= len(targets)]
    if bad:
        raise ValueError(
            f"dense_layers {bad} out of range: {name} has {len(targets)} attention layers "
            f"(0-{len(targets) - 1})"
        )
    if cfg.token_order in ("tile", "hilbert") and not supports_tile_order(transformer):
        raise ValueError(
            f"token_order={cfg.token_order!r} is not supported for {name} (its video tokens "
            "form no single grid); use token_order='raster' (or 'cluster')"
        )
    if cfg.thresholds_file:
        _check_thresholds(cfg.thresholds_file, name, family, targets)
    stock = target_of(family).stock_processor
    for path, module, _ in targets:
        proc = module.processor
        for h in previous:
            if getattr(proc, "controller", None) is h.controller:
                proc = h.original_processor(module)
        if isinstance(proc, PROCESSOR_CLASSES[family]):
            raise ValueError(
                f"{path} already has an XAttention processor not installed by an application "
                "(set the stock processor back first)"
            )
        if type(proc) is not stock:
            raise ValueError(
                f"{path} uses {type(proc).__name__}, not the stock {stock.__name__}; XAttention "
                "replaces only the stock processor"
            )
    return targets


def _cuda_capabilities() -> dict[int, tuple[int, int]]:
    """Compute capability of every visible CUDA device (empty without CUDA)."""
    if not torch.cuda.is_available():
        return {}
    return {i: tuple(torch.cuda.get_device_capability(i)) for i in range(torch.cuda.device_count())}


def check_kernels_run(cfg: XAttentionConfig) -> None:
    """``ValueError`` when the config's kernels can never run on this machine: the Triton
    backend with no CUDA device and no interpreter; fp8 attention (``precision="fp8"``, the
    Triton kernels only) or an fp8 estimate on the Triton backend (``backend="auto"`` too
    where a CUDA device exists: it runs Triton on CUDA tensors) with no sm90+ CUDA device at
    all, or fp8 attention with a Triton too old for the Hopper kernels. Where the
    transformer's parameters are now says nothing (a pipeline may be applied on the CPU and
    moved to a GPU afterwards). Called by :func:`apply_xattention`, and by the CLI's commands
    before they load a model."""
    if cfg.backend == "triton" and not torch.cuda.is_available() and not interpreter_enabled():
        raise ValueError(
            "backend='triton' needs a CUDA GPU (or TRITON_INTERPRET=1 on the CPU) and this "
            "machine has no CUDA device: every sparse step would fail after the warm-up; use "
            "backend='auto' or 'torch'"
        )
    estimate = cfg.resolved().estimate_precision
    if cfg.precision != "fp8" and not (estimate == "fp8" and cfg.backend != "torch"):
        return  # no fp8 here: the GPUs are not looked at
    caps = _cuda_capabilities()
    if cfg.precision != "fp8" and cfg.backend == "auto" and not caps:
        return  # "auto" without CUDA is the torch backend, which emulates the fp8 estimate
    if any(cap >= (9, 0) for cap in caps.values()):
        missing = fp8_kernels_missing() if cfg.precision == "fp8" else None
        if missing:
            raise ValueError(
                f"{missing}: every sparse step would fail after the warm-up; upgrade Triton "
                "or use precision='bf16'"
            )
        return
    what = "precision='fp8'" if cfg.precision == "fp8" else "estimate_precision='fp8'"
    has = ", ".join(f"cuda:{i} sm{a}{b}" for i, (a, b) in caps.items())
    raise ValueError(
        f"{what} with backend={cfg.backend!r} needs an sm90+ CUDA GPU (Hopper: H100 / H200) and "
        f"this machine has {'only ' + has if caps else 'no CUDA device'}: every sparse step "
        "would fail after the warm-up; use precision='bf16'"
        + ("" if cfg.precision == "fp8" else " estimates, or backend='torch' (emulated)")
    )


def _check_thresholds(path: str, name: str, family: str, targets: list[Layer]) -> None:
    """The thresholds file against the model, before any step runs: ``ValueError`` for layers
    the model lacks or another head count; a warning when it was calibrated on another model
    family (its layers may still fit, its thresholds do not mean anything here)."""
    data = shared_thresholds(path)  # read only: no copy of the whole file per application
    heads = {layer: getattr(module, "heads", None) for _, module, layer in targets}
    check_fits(data, heads, name, path)
    other = file_family(data)
    if other is not None and other != family:
        warnings.warn(
            f"thresholds file {path!r} was calibrated on {data.get('model')!r} ({other}), not "
            f"on {name} ({family}): its per-head thresholds are not this model's; calibrate "
            "this model",
            stacklevel=_caller_level(),
        )


def _caller_level() -> int:
    """``warnings.warn``'s ``stacklevel`` for a warning raised by the caller of this function
    that points at the first frame outside this package (the user's ``apply_xattention``)."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _log_patched(transformer: torch.nn.Module, targets: list[Layer], cfg: XAttentionConfig):
    dense = sorted({layer for _, _, layer in targets} & set(cfg.dense_layers))
    logger.info(
        "XAttention on %s: %d attention layers (%s .. %s; always dense: %s), warmup_steps=%d, "
        "threshold=%s, block_size=%d, stride=%d, token_order=%s",
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


def _apply(
    pipe: Any,
    transformers: list[torch.nn.Module],
    cfg: XAttentionConfig | None,
    model: str | None,
    *,
    install: bool,
) -> tuple[XAttentionHandle, dict[str, Any]]:
    """The one install path: check, remove the previous application, build the processors,
    install them (``install``) and attach the step hook(s), reading the step from ``pipe``'s
    scheduler when given. Returns the handle and the new processors of the last transformer by
    ``"<module path>.processor"``."""
    families = {model_family(t, model) for t in transformers}
    if len(families) != 1:
        raise ValueError(f"the transformers belong to different model families: {families}")
    family = families.pop()
    cfg = _config(cfg, family)
    if cfg.thresholds_file and len(transformers) > 1:
        raise ValueError(
            f"thresholds_file with a second expert (transformer_2): both experts number their "
            f"layers 0-{len(target_layers(transformers[1], family)) - 1}, so the file's "
            "per-layer thresholds would apply to both; per-expert thresholds are not supported, "
            "use the uniform threshold (thresholds_file='') for this pipeline"
        )
    check_kernels_run(cfg)
    previous = []
    for tr in transformers:
        owner = current_owner(tr)
        if owner is not None and owner not in previous:
            previous.append(owner)
    planned = [(tr, _check(tr, family, cfg, previous)) for tr in transformers]

    for owner in previous:
        logger.warning("XAttention: replacing the previous application %r", owner)
        owner.remove()
    controller = XAttentionController(cfg)
    handle = XAttentionHandle(controller, family)
    cls = PROCESSOR_CLASSES[family]
    new: dict[str, Any] = {}
    try:
        for tr, targets in planned:
            new = {}
            handle.transformers.append(tr)
            for path, module, layer in targets:
                proc = cls(controller=controller, layer=layer)
                _carry_backend(module.processor, proc)
                new[f"{path}.processor"] = proc
                handle._originals.append((module, module.processor))
                if install:
                    module.set_processor(proc)
            layers = {m: i for _, m, i in targets}
            attach_step_hook(tr, controller, pipe=pipe, layers=layers, owner=handle)
            _log_patched(tr, targets, cfg)
    except Exception:
        handle.remove()
        raise
    return handle, new


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
    model: a family name or alias (``targets.FAMILY_ALIASES``) to assert the detected family.
    Every key of ``transformer.attn_processors`` is present; non-target keys map to the current
    objects.
    Replaces a previous application on ``transformer`` (see the module docstring).
    """
    if not isinstance(transformer, torch.nn.Module):
        raise ValueError(
            f"transformer must be a diffusers transformer module, got {type(transformer).__name__}"
        )
    if not hasattr(transformer, "set_attn_processor"):  # Framepack: the dict can't be set
        model_family(transformer, model)  # an unsupported class says so first
        raise ValueError(
            f"{type(transformer).__name__} has no set_attn_processor, so a processor dict "
            "cannot be installed on it; use apply_xattention"
        )
    handle, new = _apply(pipe, [transformer], cfg, model, install=False)
    out = XAttentionProcessors({**_all_processors(transformer), **new})
    out.controller = handle.controller
    out.handle = handle
    return out


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
    preset. model: a family name or alias (``targets.FAMILY_ALIASES``) to assert the detected
    family. Unknown transformers raise ``ValueError`` naming the class and the supported ones.
    Replaces a previous application on the same transformer(s) (see the module docstring).
    """
    pipe, transformers = _transformers_of(pipe_or_transformer)
    return _apply(pipe, transformers, cfg, model, install=True)[0]
