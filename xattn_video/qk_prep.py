"""q / k preparation for the attention processors: RMSNorm and RoPE in one kernel.

The op layer's entry to :mod:`xattn_video.kernels.norm_rope`: :func:`fused_available` says
whether the fused kernel should run on a tensor (eager CUDA with Triton: under ``torch.compile``
the processors keep diffusers' torch code, which Inductor fuses itself), :func:`norm_rope` runs
it, and :func:`wan_rotary` is Wan's RoPE in torch (the Wan processor's fallback and the
kernel reference's). Which norms and rotary tables qualify is the processors' call
(:mod:`xattn_video.processors`); the numerics match the processors' own norm + RoPE
(HunyuanVideo's or Wan's) up to one rounding carried through (the kernel module's docstring
says where).

Not supported: what :mod:`xattn_video.kernels.norm_rope` does not support (LayerNorm, fp32
activations, a norm bias).
"""

from __future__ import annotations

import torch

from .kernels._common import on_tensor_device, triton_usable
from .kernels.norm_rope import rms_norm_rope, unsupported, wan_rotary

__all__ = ["fused_available", "norm_rope", "wan_rotary"]


def _cos_sin(rotary, n_rope: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    # rotary None with n_rope > 0: (None, None), which the kernel entry refuses by name
    return rotary if n_rope and rotary is not None else (None, None)


def fused_available(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    rotary: tuple[torch.Tensor, torch.Tensor] | None,
    n_rope: int,
    style: str = "hunyuan",
) -> bool:
    """Whether :func:`norm_rope` should run on these arguments: CUDA with Triton, not while
    ``torch.compile`` traces, and arguments the kernel takes (``kernels.norm_rope.unsupported``:
    bf16 / fp16, a power-of-two head dim, the style's weight on x's device (an offloaded
    norm's weight is on ``meta`` or the CPU until its forward hook runs) and (n_rope, D) tables)."""
    if torch.compiler.is_compiling():  # first: the rest need not trace
        return False
    return (
        x.is_cuda
        and triton_usable(x)
        and unsupported(x, weight, *_cos_sin(rotary, n_rope), n_rope, style=style) is None
    )


@on_tensor_device
def norm_rope(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float,
    rotary: tuple[torch.Tensor, torch.Tensor] | None,
    n_rope: int,
    *,
    style: str = "hunyuan",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The style's RMSNorm of x: (B, N, H, D) (``"hunyuan"``: over the head dim; ``"wan"``:
    over all heads of a token), then its RoPE with rotary = (cos, sin), each (n_rope, D), on
    tokens ``< n_rope`` (rotary may be None when n_rope is 0); into ``out`` (B, N, H, D) when
    given."""
    return rms_norm_rope(x, weight, eps, *_cos_sin(rotary, n_rope), n_rope, style=style, out=out)
