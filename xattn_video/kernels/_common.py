"""Small helpers shared by the kernel modules: Triton availability and shape arithmetic.

Not supported: anything but CUDA devices for compiled Triton kernels; on CPU, Triton kernels
run only under the interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import functools
import inspect
import math
import os

import torch

try:  # Triton is a Linux-only dependency; the torch references work without it.
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only on platforms without Triton
    HAS_TRITON = False

try:  # how this process's kernels were built: @triton.jit reads TRITON_INTERPRET once, then
    from triton.runtime.interpreter import InterpretedFunction

    @triton.jit
    def _probe():  # pragma: no cover - never launched
        pass

    BUILT_INTERPRETED = isinstance(_probe, InterpretedFunction)
except ImportError:  # pragma: no cover - no Triton, or one without this module
    BUILT_INTERPRETED = None

try:  # host-side TMA descriptors (Triton >= 3.4)
    from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: F401

    HAS_TENSOR_DESC = True
except ImportError:  # pragma: no cover - old Triton or no Triton
    HAS_TENSOR_DESC = False


LOG2E = 1.4426950408889634
"""1/ln(2): the kernels keep logits in base 2 so they can use exp2; softmax scales are passed
multiplied by it."""


PRECISIONS = ("bf16", "fp8")
"""Arithmetic of the kernels' Q.K^T (and P.V): the inputs' 16-bit dtype, or e4m3 with scales."""


def check_precision(precision: str, name: str = "precision") -> None:
    """ValueError unless ``precision`` is one of :data:`PRECISIONS` (``name`` in the message)."""
    if precision not in PRECISIONS:
        raise ValueError(f"{name} must be 'bf16' or 'fp8', got {precision!r}")


_TRUE_WORDS = ("1", "true", "yes", "on", "y")


@torch.compiler.assume_constant_result  # a traced call: read while tracing (dynamo can't)
def interpreter_enabled() -> bool:
    """True when Triton kernels run in the CPU interpreter: ``TRITON_INTERPRET`` read as Triton
    reads it (``1`` / ``true`` / ``yes`` / ``on`` / ``y``, any case; ``false`` or ``2`` is off).
    A ``torch.compile`` graph keeps the value read while it was traced (as Triton keeps the
    mode its kernels were built in). False when the variable was set only after the kernels
    were built in compiled mode (at import): they would fail on CPU tensors deep in a launch
    ("0 active drivers"), where the op now says the variable is needed."""
    if HAS_TRITON and hasattr(triton, "knobs"):  # Triton >= 3.4: its own reading
        enabled = bool(triton.knobs.runtime.interpret)
    else:
        enabled = os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUE_WORDS
    return enabled and BUILT_INTERPRETED is not False


def on_tensor_device(fn):
    """``fn(t, ...)`` run with ``t``'s CUDA device current. Triton launches its kernels on the
    current device whatever their tensors' (a model on ``cuda:1`` ran them on device 0 with
    pointers into device 1), and a custom op sets no device guard; torch ops follow their
    tensors. A no-op for CPU tensors and for a device that is already current."""

    first = next(iter(inspect.signature(fn).parameters))  # the tensor, by position or name

    @functools.wraps(fn)
    def on_device(*args, **kwargs):
        t = args[0] if args else kwargs[first]
        if t.is_cuda and t.get_device() != torch.cuda.current_device():
            with torch.cuda.device(t.device):
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)

    return on_device


def triton_usable(t: torch.Tensor) -> bool:
    """Whether a Triton kernel can run on the device of ``t`` (CUDA, or CPU under the interpreter)."""
    if not HAS_TRITON:
        return False
    return t.is_cuda or (t.device.type == "cpu" and interpreter_enabled())


def cdiv(a: int, b: int) -> int:
    """Ceiling division for non-negative ints."""
    return -(-a // b)


def softmax_scale(head_dim: int, scale: float | None) -> float:
    """The softmax scale: ``scale``, or 1/sqrt(head_dim) when None."""
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: exact IEEE for fp32 inputs (tests), tensor cores otherwise."""
    return "ieee" if dtype == torch.float32 else "tf32"


def kv_len_tensor(kv_len: torch.Tensor | None, batch: int, n_k: int, device) -> torch.Tensor:
    """Valid key length per sample as a contiguous int32 tensor (B,) on ``device`` (the kernels
    read ``KV_LEN + b``: a strided or expanded view read other samples' lengths, or past its
    storage); None means all keys."""
    if kv_len is None:
        return torch.full((batch,), n_k, dtype=torch.int32, device=device)
    return kv_len.to(device=device, dtype=torch.int32).contiguous()


def zero_padding(x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """x (B, H, N, D) with the positions >= lens[b] set to 0 (lens (B,) int): the torch
    references (SDPA, the reference estimate, the fp8 quantizers') would otherwise let a NaN / Inf
    or a large value in padding through."""
    ok = torch.arange(x.shape[2], device=x.device)[None, :] < lens.to(x.device)[:, None].long()
    return x.masked_fill(~ok[:, None, :, None], 0)


def tma_aligned(*tensors: torch.Tensor) -> bool:
    """TMA descriptor rules: unit last stride, 16-byte aligned base and other strides."""
    return (
        HAS_TRITON
        and HAS_TENSOR_DESC
        and all(
            t.stride(-1) == 1
            and t.data_ptr() % 16 == 0
            and all((st * t.element_size()) % 16 == 0 for st in t.stride()[:-1])
            for t in tensors
        )
    )
