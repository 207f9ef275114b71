"""Per-head RMSNorm and rotary embedding of q or k in one pass: a Triton kernel and its reference.

What a HunyuanVideo-style attention processor does to q and k between the QKV projections and
attention -- diffusers' ``RMSNorm(head_dim)`` (``attn.norm_q`` / ``norm_k``) and then
``apply_rotary_emb(x, (cos, sin), use_real=True, use_real_unbind_dim=-1, sequence_dim=1)`` on
the video tokens -- takes ~15 elementwise torch kernels per tensor, several of them over fp32
copies: at HunyuanVideo 720p (119,056 tokens x 24 heads x 128) ~20 GB of memory traffic per
tensor and layer. :func:`rms_norm_rope` reads x once and writes the result once, optionally
into a view of a larger buffer (the joint [video, text] sequence, so no ``torch.cat``).

Same arithmetic as diffusers, rounding where it rounds: ``r = rsqrt(mean(x^2) + eps)`` in
fp32, ``y = bf16(x * r)``, ``y = bf16(y * weight)``, then
``bf16(y * cos + rot(y) * sin)`` with each product and the sum rounded to fp32 (no fused
multiply-add, as torch's separate kernels), ``rot`` the pair rotation ``(a, b) -> (-b, a)``.
The mean's summation order (and the hardware ``rsqrt``) differ from torch's, so an output can
differ from the reference by one rounding where ``x * r`` lies next to a rounding boundary
(~3e-6 of the values at 720p on an H200; tests bound it).

Not supported: norms other than RMSNorm over the head dim (LayerNorm, norms across heads as
in Wan), a norm bias, fp32 inputs (the kernel is for bf16 / fp16 activations), interleaving
other than diffusers' ``use_real_unbind_dim=-1``, gradients. On CPU the reference runs (the
Triton interpreter runs the kernel when ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import torch

from ._common import HAS_TRITON, cdiv, triton_usable

if HAS_TRITON:
    import triton
    import triton.language as tl

DTYPES = (torch.bfloat16, torch.float16)


def rms_norm_rope_ref(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
    n_rope: int = 0,
) -> torch.Tensor:
    """diffusers' ``RMSNorm`` then ``apply_rotary_emb`` on the first ``n_rope`` tokens, in torch.

    x: (B, N, H, D) bf16 / fp16; weight: (D,) of x's dtype or None; cos / sin: (n_rope, D) fp32
    (None when ``n_rope`` is 0). Returns (B, N, H, D) in x's dtype.
    """
    var = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    y = x * torch.rsqrt(var + eps)
    y = (y.to(weight.dtype) * weight) if weight is not None else y.to(x.dtype)
    if n_rope == 0:
        return y
    head = y[:, :n_rope]
    real, imag = head.reshape(*head.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(3)
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    head = (head.float() * c + rotated.float() * s).to(x.dtype)
    return torch.cat([head, y[:, n_rope:]], dim=1) if n_rope < y.shape[1] else head


if HAS_TRITON:

    @triton.jit
    def _norm_rope_kernel(
        X, W, COS, SIN, Y, sxb, sxn, sxh, syb, syn, syh, scn, N, H, N_ROPE, eps,
        D: tl.constexpr, BN: tl.constexpr, BH: tl.constexpr, HAS_W: tl.constexpr,
        ROPE: tl.constexpr,
    ):  # fmt: skip
        """One program per (BN tokens, BH heads, b): a (BN, BH, D) tile, cos / sin loaded once
        for its BH heads."""
        offs_n = (tl.program_id(0) * BN + tl.arange(0, BN))[:, None, None]
        offs_h = (tl.program_id(1) * BH + tl.arange(0, BH))[None, :, None]
        offs_d = tl.arange(0, D)[None, None, :]
        b = tl.program_id(2)
        partner = offs_d ^ 1  # the other element of each rotated pair
        ok = (offs_n < N) & (offs_h < H)
        dt = Y.dtype.element_ty
        xb = X + b * sxb + offs_n * sxn + offs_h * sxh
        x = tl.load(xb + offs_d, mask=ok, other=0.0).to(tl.float32)
        r = tl.math.rsqrt(tl.sum(x * x, axis=2) * (1.0 / D) + eps)[:, :, None]
        y = (x * r).to(dt)
        if HAS_W:
            y = (y.to(tl.float32) * tl.load(W + offs_d).to(tl.float32)).to(dt)
        if ROPE:
            # the partner's value, computed the same way from the same row scale
            x_p = tl.load(xb + partner, mask=ok, other=0.0).to(tl.float32)
            y_p = (x_p * r).to(dt)
            if HAS_W:
                y_p = (y_p.to(tl.float32) * tl.load(W + partner).to(tl.float32)).to(dt)
            in_rope = offs_n < N_ROPE
            cs_offs = offs_n * scn + offs_d
            cos = tl.load(COS + cs_offs, mask=in_rope, other=1.0)
            sin = tl.load(SIN + cs_offs, mask=in_rope, other=0.0)
            rot = tl.where(offs_d % 2 == 0, -y_p.to(tl.float32), y_p.to(tl.float32))
            out = (y.to(tl.float32) * cos + rot * sin).to(dt)
            y = tl.where(in_rope, out, y)
        tl.store(Y + b * syb + offs_n * syn + offs_h * syh + offs_d, y, mask=ok)


def unsupported(x, weight, cos, sin, n_rope: int, out=None) -> str | None:
    """Why :func:`rms_norm_rope` cannot take these arguments (its ``ValueError`` message), or
    None when it can: callers with a fallback ask this instead of catching the error."""
    if x.dim() != 4 or x.dtype not in DTYPES or x.stride(-1) != 1:
        return (
            f"x must be (B, N, H, D) bf16 / fp16 with a unit last stride, got "
            f"{tuple(x.shape)} {x.dtype} strides {x.stride()}"
        )
    D = x.shape[-1]
    if D % 2 or D & (D - 1):
        return f"head dim must be an even power of two, got {D}"
    if weight is not None and (weight.shape != (D,) or weight.dtype != x.dtype):
        return f"weight must be ({D},) {x.dtype}, got {tuple(weight.shape)} {weight.dtype}"
    if not 0 <= n_rope <= x.shape[1]:
        return f"n_rope must be in [0, {x.shape[1]}], got {n_rope}"
    if n_rope:
        for name, t in (("cos", cos), ("sin", sin)):
            if (
                not isinstance(t, torch.Tensor)
                or t.dtype != torch.float32
                or t.shape != (n_rope, D)
            ):
                got = (tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else t
                return f"{name} must be ({n_rope}, {D}) float32, got {got}"
            if t.device != x.device or t.stride(-1) != 1:
                return f"{name} must be on {x.device} with a unit last stride"
    if out is not None and (out.shape != x.shape or out.dtype != x.dtype or out.stride(-1) != 1):
        return f"out must be {tuple(x.shape)} {x.dtype} with a unit last stride"
    return None


def rms_norm_rope(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
    n_rope: int = 0,
    *,
    out: torch.Tensor | None = None,
    block_n: int = 1,
    block_h: int = 8,
    num_warps: int = 4,
) -> torch.Tensor:
    """RMSNorm over the head dim, then RoPE on tokens ``< n_rope`` (see the module docstring).

    x: (B, N, H, D) bf16 / fp16, any strides but a unit last one; weight: (D,) of x's dtype or
    None; cos / sin: (n_rope, D) fp32 on x's device; out: optional (B, N, H, D) tensor (a view
    is fine) to write into. Returns out, or a new (B, N, H, D) tensor. One Triton launch where
    Triton runs (CUDA, or the CPU interpreter), :func:`rms_norm_rope_ref` elsewhere.
    ``block_n`` tokens and ``block_h`` heads per program (powers of two) and ``num_warps`` are
    launch knobs: the tile's layout sets the order of the mean's sum, so another config can move
    a value by one rounding (within the same bound against diffusers). The defaults measured
    fastest of those tried on an H200 at 720p size (``benchmarks/probe_norm_rope.py``).
    """
    why = unsupported(x, weight, cos, sin, n_rope, out)
    if why is not None:
        raise ValueError(why)
    if not triton_usable(x):
        y = rms_norm_rope_ref(x, weight, eps, cos, sin, n_rope)
        return y if out is None else out.copy_(y)
    B, N, H, D = x.shape
    y = torch.empty_like(x, memory_format=torch.contiguous_format) if out is None else out
    if x.numel() == 0:  # no tokens (an empty text stream): nothing to launch
        return y
    rope = n_rope > 0
    c, s = (cos, sin) if rope else (x, x)  # never read without ROPE
    w = weight if weight is not None else x
    block_h = min(block_h, triton.next_power_of_2(H))
    _norm_rope_kernel[(cdiv(N, block_n), cdiv(H, block_h), B)](
        x, w, c, s, y, x.stride(0), x.stride(1), x.stride(2), y.stride(0), y.stride(1),
        y.stride(2), c.stride(0) if rope else 0, N, H, n_rope, float(eps), D=D, BN=block_n,
        BH=block_h, HAS_W=weight is not None, ROPE=rope, num_warps=num_warps,
        enable_fp_fusion=False,
    )  # fmt: skip
    return y
