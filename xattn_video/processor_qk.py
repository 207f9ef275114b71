"""The attention processors' q / k preparation: each parent's QK norm and RoPE, reproduced
with one fused kernel (:mod:`xattn_video.qk_prep`) where it can run and the parent's own torch
code elsewhere.

- :func:`norm_rope`: HunyuanVideo-style (1 and 1.5): diffusers' per-head ``RMSNorm`` of
  x [B, N, H, D], then RoPE (``apply_rotary_emb``, real tables) on the first ``n_rope`` tokens.
- :func:`joint_norm_rope`: a double-stream block's [video, text] q or k written into one
  buffer (video normed and rotated, text normed).
- :func:`wan_norm_rope`: ``WanAttnProcessor``'s ``torch.nn.RMSNorm`` across heads of
  x [B, N, H * D] and its interleaved RoPE.

Not supported by the fused kernel (these fall back to the parent's code): LayerNorm or a norm
with bias, fp32 activations, ``torch.compile`` tracing (Inductor fuses the torch code itself).
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.normalization import RMSNorm

from . import qk_prep


def norm_rope(
    norm: torch.nn.Module | None,
    x: torch.Tensor,
    rotary: tuple[torch.Tensor, torch.Tensor] | None,
    n_rope: int,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The parent's QK norm of x: [B, N, H, D], then RoPE on tokens < n_rope; into ``out``
    when given. One fused kernel (:mod:`xattn_video.qk_prep`) for diffusers' ``RMSNorm`` without
    bias on eager CUDA with matching rotary tables; else the parent's own torch code."""
    n_rope = n_rope if rotary is not None else 0
    if _fusable(norm, x, rotary, n_rope):
        return qk_prep.norm_rope(x, norm.weight, norm.eps, rotary, n_rope, out=out)
    y = norm(x) if norm is not None else x
    if n_rope:
        head = apply_rotary_emb(y[:, :n_rope], rotary, sequence_dim=1)
        y = head if n_rope == y.shape[1] else torch.cat([head, y[:, n_rope:]], dim=1)
    return y if out is None else out.copy_(y)


def _fusable(norm, x, rotary, n_rope: int) -> bool:
    # a weight of another dtype than x is left to diffusers too (it then returns fp32)
    return (
        type(norm) is RMSNorm
        and norm.bias is None
        and qk_prep.fused_available(x, norm.weight, rotary, n_rope)
    )


def wan_norm_rope(norm, x: torch.Tensor, heads: int, rotary) -> torch.Tensor:
    """WanAttnProcessor's QK norm (across heads) of x: [B, N, H*D], then its RoPE with rotary =
    (freqs_cos, freqs_sin), each [1, N, 1, D]; returns [B, N, H, D]. One fused kernel for
    ``torch.nn.RMSNorm`` on eager CUDA with tables of one batch (fp64 ones cast to fp32, within
    the kernel's bound); else the parent's own torch code."""
    x = x.unflatten(2, (heads, -1))
    if type(norm) is torch.nn.RMSNorm and norm.eps is not None:
        tables, n = _wan_tables(rotary)  # views, but a copy of fp64 tables
        if n >= 0 and qk_prep.fused_available(x, norm.weight, tables, n, style="wan"):
            return qk_prep.norm_rope(x, norm.weight, norm.eps, tables, n, style="wan")
    y = norm(x.flatten(2)).unflatten(2, (heads, -1))
    return qk_prep.wan_rotary(y, *rotary) if rotary is not None else y


def _wan_tables(rotary) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, int]:
    """Wan's [1, N, 1, D] rotary tables as the kernel's (N, D) views (fp64 cast to fp32) and N;
    (None, 0) without RoPE, (None, -1) for a layout the kernel does not take."""
    if rotary is None:
        return None, 0
    cos, sin = rotary
    if not (cos.dim() == 4 and cos.shape[0] == 1 and cos.shape[2] == 1 and cos.shape == sin.shape):
        return None, -1
    dtype = torch.float32 if cos.dtype == torch.float64 else cos.dtype
    return (cos[0, :, 0].to(dtype), sin[0, :, 0].to(dtype)), cos.shape[1]


def joint_norm_rope(video, text, norm_video, norm_text, rotary) -> torch.Tensor:
    """[video, text] q or k of a double-stream block: video [B, Nv, H, D] normed and rotated,
    text [B, Nt, H, D] normed, written into one [B, Nv + Nt, H, D] buffer (no ``torch.cat``)."""
    nv = video.shape[1]
    out = video.new_empty((video.shape[0], nv + text.shape[1], *video.shape[2:]))
    norm_rope(norm_video, video, rotary, nv, out=out[:, :nv])
    norm_rope(norm_text, text, None, 0, out=out[:, nv:])
    return out
