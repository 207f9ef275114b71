"""The step hook under accelerate's model-offload hook, whichever was added first.

diffusers' hook registry wraps ``module.forward`` at registration and, on removal, sets it back
to what it wrapped. accelerate's hooks (``pipe.enable_model_cpu_offload()``) wrap the forward too,
keep the wrapped one in ``module._old_forward``, and on removal set ``forward`` back to it --
which the pipeline does at the end of every call (``maybe_free_model_hooks`` removes and adds
the offload hooks again). So:

- offload enabled *before* ``apply_xattention``: registered over accelerate's wrapper, the step
  hook was dropped at the end of the first call (accelerate restored the forward it had wrapped),
  and every later call ran the processors on the first call's last step state;
- offload enabled *after*: removing the step hook (``handle.remove()``, applying again) set the
  forward over accelerate's wrapper, so the transformer no longer moved to the GPU, and the
  offload hook put back at the end of the call ran the removed step hook again.

:func:`register` registers the hook under accelerate's wrapper (over the forward accelerate
wraps, which becomes the registry's), and :func:`remove` keeps accelerate's wrapper outermost,
around what the registry restores.

Not supported: other wrappers of ``forward`` added after the hook that do not follow
accelerate's ``_old_forward`` protocol (they are dropped by a removal, as before).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook


def _accelerate_wrapper(module: torch.nn.Module) -> Any:
    """accelerate's forward wrapper on ``module`` (a partial of ``accelerate.hooks``' forward,
    with the ``_hf_hook`` and the ``_old_forward`` it calls), or None."""
    state = vars(module)
    forward = state.get("forward")
    func = getattr(forward, "func", None)
    if "_hf_hook" in state and "_old_forward" in state and func is not None:
        if getattr(func, "__module__", "").startswith("accelerate"):
            return forward
    return None


def register(module: torch.nn.Module, registry: HookRegistry, hook: ModelHook, name: str) -> Any:
    """``registry.register_hook(hook, name)``, under accelerate's wrapper when there is one;
    returns the forward the registry installed (what :func:`remove` needs)."""
    outer = _accelerate_wrapper(module)
    if outer is not None:
        module.forward = module._old_forward  # the registry wraps what accelerate calls
    registry.register_hook(hook, name)
    installed = vars(module)["forward"]
    if outer is not None:
        module._old_forward, module.forward = installed, outer
    return installed


def remove(module: torch.nn.Module, registry: HookRegistry, name: str, installed: Any) -> None:
    """``registry.remove_hook(name)``. Where accelerate calls ``installed`` (the registry's
    forward from :func:`register`, or one accelerate wrapped later), the registry's idea of who
    calls the hook -- ``module.forward`` for its last hook, else the next hook's -- is wrong:
    what it would set there is put back, and accelerate calls what the hook wrapped instead."""
    hook = registry.get_hook(name)
    if "_hf_hook" not in vars(module) or vars(module).get("_old_forward") is not installed:
        registry.remove_hook(name, recurse=False)
        return
    ref = hook.fn_ref
    inner = ref.original_forward if ref.original_forward is not None else ref.forward
    index = registry._hook_order.index(name)
    nxt = registry._fn_refs[index + 1] if index + 1 < len(registry._fn_refs) else None
    caller = vars(module)["forward"] if nxt is None else nxt.forward
    registry.remove_hook(name, recurse=False)
    if nxt is None:
        module.forward = caller
    else:
        nxt.forward = caller
    module._old_forward = inner
