"""RMSNorm and rotary embedding of q or k in one pass: a Triton kernel and its reference.

What a diffusers attention processor does to q and k between the QKV projections and attention,
in two styles:

- ``"hunyuan"`` (HunyuanVideo-style): diffusers' ``RMSNorm(head_dim)`` (``attn.norm_q`` /
  ``norm_k``) per head, then ``apply_rotary_emb(x, (cos, sin), use_real=True,
  use_real_unbind_dim=-1, sequence_dim=1)`` on the video tokens. Rounds where diffusers rounds:
  ``r = rsqrt(mean(x^2) + eps)`` in fp32, ``y = bf16(x * r)``, ``y = bf16(y * weight)``, then
  ``bf16(y * cos + rot(y) * sin)`` with each product and the sum in fp32, ``rot`` the pair
  rotation ``(a, b) -> (-b, a)``; fp32 tables.
- ``"wan"``: ``torch.nn.RMSNorm(heads * head_dim)`` across all heads of a token
  (``y = bf16(x * r * weight)``, one rounding), then ``WanAttnProcessor``'s interleaved RoPE
  (``x1 * cos - x2 * sin``, ``x1 * sin + x2 * cos`` with cos read at a pair's even index and
  sin at its odd one), in the tables' dtype: fp32 (one rounding at the end) or x's (each
  product rounded to it, as torch does).

Either takes ~10-15 elementwise torch kernels per tensor: at HunyuanVideo 720p (119,056 tokens
x 24 heads x 128) ~20 GB of memory traffic per tensor and layer. :func:`rms_norm_rope` reads x
once and writes the result once, optionally into a view of a larger buffer (the joint [video,
text] sequence, so no ``torch.cat``). No product is fused into a multiply-add that torch's
separate kernels would not fuse. The mean's summation order (and the hardware ``rsqrt``) differ
from torch's, so an output can differ from the reference by one rounding where ``x * r`` lies
next to a rounding boundary (~3e-6 of the values at 720p on an H200; tests bound it).

Not supported: other norms (LayerNorm), a norm bias, fp32 inputs (the kernel is for bf16 / fp16
activations), fp64 tables (the Wan processor casts them to fp32, within the same bound), other
pair layouts, gradients. On CPU the reference runs (the Triton interpreter runs the kernel when
``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import torch

from ._common import HAS_TRITON, cdiv, triton_usable

if HAS_TRITON:
    import triton
    import triton.language as tl

DTYPES = (torch.bfloat16, torch.float16)
STYLES = ("hunyuan", "wan")


def rms_norm_rope_ref(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
    n_rope: int = 0,
    style: str = "hunyuan",
) -> torch.Tensor:
    """The style's norm, then its RoPE on the first ``n_rope`` tokens, in torch.

    x: (B, N, H, D) bf16 / fp16; cos / sin: (n_rope, D) (None when ``n_rope`` is 0).
    ``"hunyuan"``: diffusers' ``RMSNorm(D)`` + ``apply_rotary_emb``; weight (D,) of x's dtype
    or None, tables fp32. ``"wan"``: ``torch.nn.RMSNorm(H * D)`` + ``WanAttnProcessor``'s RoPE;
    weight (H * D,) or None, tables fp32 or x's dtype. Returns (B, N, H, D) in x's dtype.
    """
    if style == "wan":
        return _wan_ref(x, weight, eps, cos, sin, n_rope)
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


def _wan_ref(x, weight, eps, cos, sin, n_rope: int) -> torch.Tensor:
    B, N, H, D = x.shape
    xf = x.float().flatten(2)
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    y = (y * weight if weight is not None else y).to(x.dtype).unflatten(2, (H, D))
    if n_rope == 0:
        return y
    out = wan_rotary(y[:, :n_rope], cos[None, :, None], sin[None, :, None])
    return torch.cat([out, y[:, n_rope:]], dim=1) if n_rope < N else out


def wan_rotary(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """WanAttnProcessor's RoPE (interleaved pairs), copied verbatim (diffusers nests it inside
    ``__call__``). x: [B, N, H, D]; freqs_cos / freqs_sin: [1, N, 1, D] (or broadcastable)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


if HAS_TRITON:

    @triton.jit
    def _norm_rope_kernel(
        X, W, COS, SIN, Y, sxb, sxn, sxh, syb, syn, syh, scn, N, H, N_ROPE, eps,
        D: tl.constexpr, BN: tl.constexpr, BH: tl.constexpr, HAS_W: tl.constexpr,
        ROPE: tl.constexpr,
    ):  # fmt: skip
        """ "hunyuan": one program per (BN tokens, BH heads, b), a (BN, BH, D) tile, cos / sin
        loaded once for its BH heads."""
        # int64: offs_n * sxn passes 2**31 for long sequences of strided views (fused QKV)
        offs_n = (tl.program_id(0) * BN + tl.arange(0, BN)).to(tl.int64)[:, None, None]
        offs_h = (tl.program_id(1) * BH + tl.arange(0, BH))[None, :, None]
        offs_d = tl.arange(0, D)[None, None, :]
        b = tl.program_id(2).to(tl.int64)  # b * sxb passes 2**31 for large B*N*H*D
        partner = offs_d ^ 1  # the other element of each rotated pair
        ok = (offs_n < N) & (offs_h < H)
        xb = X + b * sxb + offs_n * sxn + offs_h * sxh
        x = tl.load(xb + offs_d, mask=ok, other=0.0).to(tl.float32)
        # diffusers' RMSNorm(D): x * r rounded, then the weight
        r = tl.math.rsqrt(tl.sum(x * x, axis=2) * (1.0 / D) + eps)[:, :, None]
        y = _scale_head(x, r, W, offs_d, Y, HAS_W)
        if ROPE:
            # the partner's value, computed the same way from the same row scale
            x_p = tl.load(xb + partner, mask=ok, other=0.0).to(tl.float32)
            y_p = _scale_head(x_p, r, W, partner, Y, HAS_W)
            in_rope = offs_n < N_ROPE
            cos = tl.load(COS + offs_n * scn + offs_d, mask=in_rope, other=1.0)
            sin = tl.load(SIN + offs_n * scn + offs_d, mask=in_rope, other=0.0)
            y = tl.where(in_rope, _rotate(y, y_p, cos, sin, offs_d, Y, False), y)
        tl.store(Y + b * syb + offs_n * syn + offs_h * syh + offs_d, y, mask=ok)

    @triton.jit
    def _norm_rope_wan_kernel(
        X, W, COS, SIN, Y, sxb, sxn, sxh, syb, syn, syh, scn, N, H, N_ROPE, eps, inv_n,
        D: tl.constexpr, BN: tl.constexpr, BH: tl.constexpr, HAS_W: tl.constexpr,
        ROPE: tl.constexpr, LOWP_TABLES: tl.constexpr,
    ):  # fmt: skip
        """ "wan": one program per (BN tokens, b), sweeping the heads BH at a time twice: the
        sum of squares over all H * D values, then (re-reading x from cache) the outputs. A
        whole (H, D) token in registers at once ran at ~440 GB/s on an H200, this at ~2.4 TB/s."""
        offs_n = (tl.program_id(0) * BN + tl.arange(0, BN)).to(tl.int64)[:, None, None]
        offs_hb = tl.arange(0, BH)[None, :, None]
        offs_d = tl.arange(0, D)[None, None, :]
        b = tl.program_id(1).to(tl.int64)  # b * sxb passes 2**31 for large B*N*H*D
        partner = offs_d ^ 1
        in_n = offs_n < N
        xb = X + b * sxb + offs_n * sxn
        ss = tl.zeros((BN, BH), dtype=tl.float32)
        for h0 in range(0, H, BH):
            offs_h = h0 + offs_hb
            x = tl.load(xb + offs_h * sxh + offs_d, mask=in_n & (offs_h < H), other=0.0)
            ss += tl.sum(x.to(tl.float32) * x.to(tl.float32), axis=2)
        # torch.nn.RMSNorm(H * D): x * r * w in fp32, rounded once
        r = tl.math.rsqrt(tl.sum(ss, axis=1) * inv_n + eps)[:, None, None]
        if ROPE:  # WanAttnProcessor reads cos at a pair's even index, sin at its odd one
            in_rope = offs_n < N_ROPE
            even = offs_n * scn + offs_d - offs_d % 2
            cos = tl.load(COS + even, mask=in_rope, other=1.0).to(tl.float32)
            sin = tl.load(SIN + even + 1, mask=in_rope, other=0.0).to(tl.float32)
        for h0 in range(0, H, BH):
            offs_h = h0 + offs_hb
            # the weight's mask is the heads' alone, (1, BH, 1) like its pointers (1, BH, D):
            # Triton < 3.5 broadcasts a load's mask to its pointers' shape, not both ways
            w_ok = offs_h < H
            ok = in_n & w_ok
            xh = xb + offs_h * sxh
            y = _scale_token(tl.load(xh + offs_d, mask=ok, other=0.0), r, W, offs_h * D + offs_d,
                             w_ok, Y, HAS_W)  # fmt: skip
            if ROPE:
                x_p = tl.load(xh + partner, mask=ok, other=0.0)
                y_p = _scale_token(x_p, r, W, offs_h * D + partner, w_ok, Y, HAS_W)
                y = tl.where(in_rope, _rotate(y, y_p, cos, sin, offs_d, Y, LOWP_TABLES), y)
            tl.store(Y + b * syb + offs_n * syn + offs_h * syh + offs_d, y, mask=ok)

    @triton.jit
    def _scale_head(x, r, W, w_offs, Y, HAS_W: tl.constexpr):
        """diffusers' RMSNorm: ``x * r`` rounded to the output's dtype, then times the weight
        (D,) and rounded again."""
        dt = Y.dtype.element_ty
        y = (x * r).to(dt)
        if HAS_W:
            y = (y.to(tl.float32) * tl.load(W + w_offs).to(tl.float32)).to(dt)  # (1, 1, D)
        return y

    @triton.jit
    def _scale_token(x, r, W, w_offs, w_ok, Y, HAS_W: tl.constexpr):
        """torch's RMSNorm: ``x * r * weight`` in fp32, rounded once to the output's dtype;
        ``w_ok`` masks the weight's loads."""
        y = x.to(tl.float32) * r
        if HAS_W:
            y = y * tl.load(W + w_offs, mask=w_ok, other=0.0).to(tl.float32)
        return y.to(Y.dtype.element_ty)

    @triton.jit
    def _rotate(y, y_p, cos, sin, offs_d, Y, LOWP_TABLES: tl.constexpr):
        """``y * cos + rot * sin`` with ``rot`` the pair rotation of y's partner ``y_p``
        (``-y_p`` at even d, ``y_p`` at odd), products and sum in fp32, each product first
        rounded to the output's dtype with tables in that dtype (as torch multiplies them)."""
        dt = Y.dtype.element_ty
        rot = tl.where(offs_d % 2 == 0, -y_p.to(tl.float32), y_p.to(tl.float32))
        a = y.to(tl.float32) * cos
        c = rot * sin
        if LOWP_TABLES:
            a = a.to(dt).to(tl.float32)
            c = c.to(dt).to(tl.float32)
        return (a + c).to(dt)


def unsupported(x, weight, cos, sin, n_rope: int, out=None, style: str = "hunyuan") -> str | None:
    """Why :func:`rms_norm_rope` cannot take these arguments (its ``ValueError`` message), or
    None when it can: callers with a fallback ask this instead of catching the error."""
    if style not in STYLES:
        return f"style must be one of {STYLES}, got {style!r}"
    if x.dim() != 4 or x.dtype not in DTYPES or x.stride(-1) != 1:
        return (
            f"x must be (B, N, H, D) bf16 / fp16 with a unit last stride, got "
            f"{tuple(x.shape)} {x.dtype} strides {x.stride()}"
        )
    D = x.shape[-1]
    if D % 2 or D & (D - 1):
        return f"head dim must be an even power of two, got {D}"
    wan = style == "wan"
    w_shape, w_dtypes = ((x.shape[2] * D,), (x.dtype, torch.float32)) if wan else ((D,), (x.dtype,))
    if weight is not None and (
        weight.shape != w_shape or weight.dtype not in w_dtypes or not weight.is_contiguous()
    ):
        layout = "" if weight.is_contiguous() else " non-contiguous"
        return (
            f"weight must be contiguous {w_shape} of {' / '.join(map(str, w_dtypes))}, got"
            f"{layout} {tuple(weight.shape)} {weight.dtype}"
        )
    if weight is not None and weight.device != x.device:
        # an offloaded norm (accelerate's cpu_offload: meta; leaf-level group offloading: CPU)
        # loads its weight in its own forward hook, which only calling the module runs
        return f"weight must be on x's device {x.device}, got {weight.device}"
    if not 0 <= n_rope <= x.shape[1]:
        return f"n_rope must be in [0, {x.shape[1]}], got {n_rope}"
    if n_rope:
        t_dtypes = (torch.float32, x.dtype) if wan else (torch.float32,)
        for name, t in (("cos", cos), ("sin", sin)):
            if not isinstance(t, torch.Tensor) or t.dtype not in t_dtypes or t.shape != (n_rope, D):
                got = (tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else t
                want = " / ".join(map(str, t_dtypes))
                return f"{name} must be ({n_rope}, {D}) of {want}, got {got}"
            if t.device != x.device or t.stride(-1) != 1 or t.stride(0) != cos.stride(0):
                return f"{name} must be on {x.device} with a unit last stride (as cos's rows)"
        if cos.dtype != sin.dtype:
            return f"cos and sin must share a dtype, got {cos.dtype} and {sin.dtype}"
    if out is not None and (
        out.shape != x.shape
        or out.dtype != x.dtype
        or out.stride(-1) != 1
        or out.device != x.device
    ):
        return f"out must be {tuple(x.shape)} {x.dtype} on {x.device} with a unit last stride"
    return None


def rms_norm_rope(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
    n_rope: int = 0,
    *,
    style: str = "hunyuan",
    out: torch.Tensor | None = None,
    block_n: int = 1,
    block_h: int = 4,
    num_warps: int = 2,
) -> torch.Tensor:
    """RMSNorm, then RoPE on tokens ``< n_rope``, as the ``style``'s processor does (see the
    module docstring and :func:`rms_norm_rope_ref` for the arguments of each style).

    x: (B, N, H, D) bf16 / fp16, any strides but a unit last one; out: optional (B, N, H, D)
    tensor (a view is fine) to write into. Returns out, or a new (B, N, H, D) tensor. One
    Triton launch where Triton runs (CUDA, or the CPU interpreter), :func:`rms_norm_rope_ref`
    elsewhere. ``block_n`` tokens and ``block_h`` heads per program or step (powers of two;
    ``"wan"`` sweeps all heads of its tokens ``block_h`` at a time) and ``num_warps`` are launch
    knobs: the tile's layout sets the order of the mean's sum, so another config can move a
    value by one rounding (within the same bound against the reference). The defaults (one
    token, 4 heads, 2 warps) measured fastest of those tried for both styles on an H200
    (``benchmarks/probe_norm_rope.py``: HunyuanVideo 720p 0.63 ms per tensor, 2.3 TB/s, in
    two runs; Wan 14B 720p 0.66 ms); a later run (``probe_norm_rope_h200_78ab20d``) also tried
    one warp, 0.58 against 0.65 ms with the same bits, kept as a measurement of one run
    (~4 ms of a 10 s 720p forward).
    """
    why = unsupported(x, weight, cos, sin, n_rope, out, style)
    if why is not None:
        raise ValueError(why)
    if not triton_usable(x):
        y = rms_norm_rope_ref(x, weight, eps, cos, sin, n_rope, style)
        return y if out is None else out.copy_(y)
    B, N, H, D = x.shape
    y = torch.empty_like(x, memory_format=torch.contiguous_format) if out is None else out
    if x.numel() == 0:  # no tokens (an empty text stream): nothing to launch
        return y
    rope = n_rope > 0
    c, s = (cos, sin) if rope else (x, x)  # never read without ROPE
    w = weight if weight is not None else x
    block_h = min(block_h, triton.next_power_of_2(H))
    args = (x, w, c, s, y, x.stride(0), x.stride(1), x.stride(2), y.stride(0), y.stride(1),
            y.stride(2), c.stride(0) if rope else 0, N, H, n_rope, float(eps))  # fmt: skip
    if style == "wan":
        _norm_rope_wan_kernel[(cdiv(N, block_n), B)](
            *args, 1.0 / (H * D), D=D, BN=block_n, BH=block_h, HAS_W=weight is not None,
            ROPE=rope, LOWP_TABLES=rope and c.dtype == x.dtype, num_warps=num_warps,
            enable_fp_fusion=False,
        )  # fmt: skip
    else:
        _norm_rope_kernel[(cdiv(N, block_n), cdiv(H, block_h), B)](
            *args, D=D, BN=block_n, BH=block_h, HAS_W=weight is not None, ROPE=rope,
            num_warps=num_warps, enable_fp_fusion=False,
        )  # fmt: skip
    return y
