"""``torch.compile`` of a transformer's forward whose outputs outlive the next call.

With a mode that captures CUDA graphs (``reduce-overhead``, ``max-autotune``: inductor's CUDA
graph trees), "a new iteration is started on each invocation" of the compiled function, and the
outputs of the previous one live in the graph's static memory, which the next replay writes
(``torch.compiler.cudagraph_mark_step_begin``'s documentation). A pipeline that calls the
transformer twice per step -- Wan's classifier-free guidance (the conditional, then the
unconditional forward), HunyuanVideo's ``true_cfg_scale`` -- reads the first output after the
second call: "accessing tensor output of CUDAGraphs that has been overwritten by a subsequent
run". :func:`compile_forward` clones the tensors of each output in those modes (one copy of
the latent-sized prediction per forward, against a whole transformer).

Not supported: inductor's global ``torch._inductor.config.triton.cudagraphs`` switched on by
hand (not seen in the compile arguments); outputs that are not pytrees of tensors (diffusers' ``BaseOutput`` and tuples
are); gradients through the clone are the compiled function's own (the clone is
differentiable).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_map_only

CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
"""``torch.compile`` modes that capture CUDA graphs (inductor's ``triton.cudagraphs``)."""


def captures_cuda_graphs(compile_kwargs: dict[str, Any]) -> bool:
    """Whether ``torch.compile(**compile_kwargs)`` captures CUDA graphs: dynamo's
    ``"cudagraphs"`` backend (the same CUDA graph trees), its mode, or inductor's
    ``triton.cudagraphs`` option, which wins when given."""
    if compile_kwargs.get("backend") == "cudagraphs":
        return True
    options = compile_kwargs.get("options") or {}
    return bool(options.get("triton.cudagraphs", compile_kwargs.get("mode") in CUDA_GRAPH_MODES))


def compile_forward(fn: Callable[..., Any], **compile_kwargs: Any) -> Callable[..., Any]:
    """``torch.compile(fn, **compile_kwargs)``; with CUDA graphs (:func:`captures_cuda_graphs`)
    wrapped so that each call returns clones of the graph's output tensors."""
    compiled = torch.compile(fn, **compile_kwargs)
    if not captures_cuda_graphs(compile_kwargs):
        return compiled

    @functools.wraps(fn)
    def keeping_outputs(*args: Any, **kwargs: Any) -> Any:
        return tree_map_only(torch.Tensor, torch.clone, compiled(*args, **kwargs))

    return keeping_outputs
