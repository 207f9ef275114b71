"""The flash-attention tolerance rule, shared by kernel tests.

A kernel's max error against an exact reference may be at most twice the error of the same
reference computed naively in the kernel's low-precision dtype, plus a rounding floor.
"""

import math

import torch


def naive_attention(q, k, v, token_mask=None, scale=None, dtype=None):
    """Plain matmul-softmax-matmul in ``dtype`` (the low-precision reference).

    q, k, v: (B, H, N, D); token_mask: (B|1, H|1, Nq, Nk) bool or None. Rows with no key -> 0.
    """
    dtype = dtype or q.dtype
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q * scale) @ k.transpose(-1, -2)
    if token_mask is not None:
        s = s.masked_fill(~token_mask, float("-inf"))
    p = torch.softmax(s.float() if dtype in (torch.float16, torch.bfloat16) else s, dim=-1)
    p = p.to(dtype)
    p = torch.nan_to_num(p, nan=0.0)
    return p @ v


def assert_fa_close(out, ref_exact, ref_lowp, what="output"):
    """|out - ref_exact| <= 2 |ref_lowp - ref_exact| + 2 * fp32 rounding floor of ref_exact."""
    ref_exact = ref_exact.float()
    floor = 2 * (ref_exact + 0.3 - 0.3 - ref_exact).abs().max().item()
    err = (out.float() - ref_exact).abs().max().item()
    base = (ref_lowp.float() - ref_exact).abs().max().item()
    assert err <= 2 * base + floor, f"{what}: error {err:.3e} > 2 * {base:.3e} + {floor:.3e}"
    return err, base
