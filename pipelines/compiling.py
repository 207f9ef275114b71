"""``torch.compile`` of a ``generate`` run's transformer, and the name of the mode that ran.

``generate --compile MODE`` compiles the transformer after XAttention is applied; a dense run
with the same flag is compiled the same way, so a dense/sparse speed-up compares like with
like. With the XAttention step hook the forward below the hook is compiled
(:func:`xattn_video.hook.compile_below_hook`: the hook stays eager, the model is one graph);
without it (dense runs) the transformer's ``forward``. Both use ``fullgraph=True``: a graph
break is an error, not a silent partial compile. With CUDA graphs (``reduce-overhead``,
``max-autotune``) each forward's outputs are cloned (:mod:`xattn_video.graph_outputs`): Wan's
classifier-free guidance reads the first forward's output after the second. The first prompt
of a process pays the compilation (it is ``first_in_process`` in meta.json and left out of the
report's speed-ups).

Mode names recorded in run.json (``RunRecord.compile``) and shown by the report:
``"eager"``, ``"compiled:<mode>"`` (inductor), ``"compiled:<mode>:<backend>"`` (another
``torch.compile`` backend, Python API only, e.g. ``aot_eager`` in CPU tests).

CPU: inductor compiles C++ (``$CXX``, else ``g++``, must be on ``PATH`` and answer ``--version``, as
inductor checks; checked before loading) and
takes minutes on the first prompt; ``reduce-overhead`` (CUDA graphs) only helps on CUDA.

Not supported: ``--compile`` with ``--ulysses`` > 1 (untested with diffusers' context-parallel
hooks; refused); modes other than ``default`` with a backend other than inductor.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import torch

from xattn_video.graph_outputs import compile_forward

COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
"""``--compile`` values: ``off`` runs eagerly; the others are ``torch.compile`` modes."""
EAGER = "eager"
"""The mode name of an uncompiled run (and of runs recorded before schema 3)."""


def compile_label(mode: str, backend: str = "inductor") -> str:
    """The recorded mode name: ``"eager"`` for ``mode="off"``, else ``"compiled:<mode>"``
    (``":<backend>"`` appended for a backend other than inductor)."""
    if mode == "off":
        return EAGER
    return f"compiled:{mode}" + ("" if backend == "inductor" else f":{backend}")


def check_compile(mode: str, backend: str, device: torch.device, ulysses: int) -> str | None:
    """Why ``mode`` / ``backend`` can't run here (None when they can): unknown mode, a mode
    other than ``default`` with a non-inductor backend, ``ulysses`` > 1, inductor on the CPU
    without the C++ compiler it runs (``$CXX``, else ``g++``)."""
    if mode not in COMPILE_MODES:
        return f"compile must be one of {COMPILE_MODES}, got {mode!r}"
    if mode == "off":
        return None
    if not isinstance(backend, str) or not backend:
        return f"compile_backend must be a torch.compile backend name, got {backend!r}"
    if backend != "inductor" and mode != "default":
        return f"compile mode {mode!r} needs the inductor backend, got {backend!r}"
    if ulysses > 1:
        return "--compile is not supported with --ulysses > 1 (context parallelism)"
    if backend == "inductor" and device.type == "cpu":
        cxx, problem = "", "is not set (torch._inductor.config.cpp.cxx)"
        for cxx in inductor_cxx():  # inductor takes the first that works
            problem = cxx_problem(cxx)
            if problem is None:
                return None
        return (
            f"--compile with inductor on the CPU needs a C++ compiler: inductor runs {cxx!r} "
            f"($CXX, else g++), which {problem}; install it, set CXX to one that works "
            "(e.g. CXX=clang++), or pass --compile off"
        )
    return None


def inductor_cxx() -> list[str]:
    """The compiler commands inductor tries, in order: its ``config.cpp.cxx``, which took
    ``$CXX`` (else g++) when torch._inductor was imported (a later change of the environment
    does not reach it), without its ``None`` (a conda g++ it installs only when asked to)."""
    try:
        from torch._inductor import config

        cxx = config.cpp.cxx
    except (ImportError, AttributeError):  # pragma: no cover (another torch layout)
        return [os.environ.get("CXX", "g++")]
    return [c for c in (cxx if isinstance(cxx, (list, tuple)) else (cxx,)) if c]


def cxx_problem(cxx: str) -> str | None:
    """Why inductor could not use the compiler command ``cxx`` (None when it can): as inductor,
    split into words (``CXX="ccache g++"`` works), the first on PATH, ``cxx --version`` runs."""
    try:
        words = shlex.split(cxx)
    except ValueError:
        words = []
    if not words or not shutil.which(words[0]):
        return "is not on PATH"
    try:
        subprocess.run([*words, "--version"], check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return f"does not run ({cxx} --version failed)"
    return None


def compile_transformer(
    transformer: torch.nn.Module, mode: str, backend: str = "inductor"
) -> Callable[[], None]:
    """Compile ``transformer`` for ``mode`` (see the module docstring); returns a function that
    undoes it (a no-op with the step hook: removing XAttention restores the forward).

    Raises:
        ValueError: ``mode`` not in :data:`COMPILE_MODES`.
    """
    from xattn_video.hook import compile_below_hook, step_hook

    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {COMPILE_MODES}, got {mode!r}")
    if mode == "off":
        return lambda: None
    kw: dict[str, Any] = {"backend": backend, "fullgraph": True}
    if mode != "default":
        kw["mode"] = mode
    if step_hook(transformer) is not None:
        compile_below_hook(transformer, **kw)
        return lambda: None
    had = "forward" in transformer.__dict__
    before = transformer.__dict__.get("forward")
    transformer.forward = compile_forward(transformer.forward, **kw)  # graph outputs cloned

    def restore() -> None:
        if had:
            transformer.forward = before
        else:
            del transformer.forward

    return restore
