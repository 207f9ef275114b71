"""The fused norm + RoPE kernel's ``style="wan"`` (kernels/norm_rope.py) and the Wan processor's
use of it.

Wan's attention normalises q and k with ``torch.nn.RMSNorm(heads * head_dim)`` (one mean per
token across all heads, one rounding) and rotates interleaved pairs in the rotary tables'
dtype. The reference is pinned to that torch code bit for bit (``wan_rotary``, the copy of
``WanAttnProcessor``'s nested RoPE, is itself pinned to the q and k diffusers' processor hands
to attention); the kernel may differ from it by one rounding of a
normed value carried through the rotation (:func:`_assert_wan_bound`). CPU tests run the
kernel in the interpreter in fp16 (its fp32 -> bf16 conversion does not round to nearest
even); bf16 is checked on the GPU at Wan 2.1 14B 720p size.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

import xattn_video as xv
from xattn_video import qk_prep
from xattn_video.kernels.norm_rope import rms_norm_rope, rms_norm_rope_ref, wan_rotary
from xattn_video.processor_qk import wan_norm_rope

from ._tiny_models import tiny_wan_transformer, wan_transformer_inputs
from ._tolerance import assert_fa_close


def _inputs(B, N, H, D, n_rope, dtype, tables, seed=0, device="cpu", weight=True, wan=False):
    """``wan``: tables as Wan's (cos / sin of one angle per pair, repeated for both elements);
    else every entry independent, so reading a table at the wrong index of a pair shows."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(B, N, H, D, generator=g) * 3).to(dtype)
    w = (torch.randn(H * D, generator=g) * 0.5 + 1).to(dtype) if weight else None
    if wan:
        angles = torch.randn(n_rope, D // 2, generator=g).repeat_interleave(2, dim=-1)
        cos, sin = angles.cos(), angles.sin()
    else:
        cos, sin = torch.randn(n_rope, D, generator=g), torch.randn(n_rope, D, generator=g)
    cos, sin = cos.to(tables), sin.to(tables)
    return tuple(t.to(device) if t is not None else None for t in (x, w, cos, sin))


def _wan_processor(x, w, cos, sin, n_rope, eps=1e-6):
    """What WanAttnProcessor does: torch.nn.RMSNorm over H * D, then its RoPE on every token."""
    B, N, H, D = x.shape
    norm = torch.nn.RMSNorm(H * D, eps=eps, elementwise_affine=w is not None).to(x.device, x.dtype)
    if w is not None:
        norm.weight.data.copy_(w)
    y = norm(x.flatten(2)).unflatten(2, (H, D))
    if n_rope == 0:
        return y
    head = wan_rotary(y[:, :n_rope], cos[None, :, None], sin[None, :, None])
    return torch.cat([head, y[:, n_rope:]], dim=1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tables", ["fp32", "x"])
@pytest.mark.parametrize("n_rope", [0, 7, 20])
@pytest.mark.parametrize("weight", [True, False])
def test_reference_is_the_wan_processor_bit_for_bit(dtype, tables, n_rope, weight):
    t_dtype = torch.float32 if tables == "fp32" else dtype
    x, w, cos, sin = _inputs(2, 20, 3, 32, n_rope, dtype, t_dtype, weight=weight)
    want = _wan_processor(x, w, cos, sin, n_rope)
    assert torch.equal(rms_norm_rope_ref(x, w, 1e-6, cos, sin, n_rope, style="wan"), want)


@torch.no_grad()
@pytest.mark.parametrize("tables", [torch.float32, torch.float16])
def test_wan_rotary_is_what_diffusers_processor_computes(monkeypatch, tables):
    """``wan_rotary`` after the norm gives exactly the q and k that diffusers' own
    ``WanAttnProcessor`` passes to attention (captured at its ``dispatch_attention_fn``)."""
    import diffusers.models.transformers.transformer_wan as tw

    attn = tiny_wan_transformer(head_dim=16).blocks[0].attn1.half()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 24, attn.inner_dim, generator=g).half()
    cos, sin = torch.randn(2, 1, 24, 1, 16, generator=g).to(tables).unbind(0)
    seen = []

    def capture(q, k, v, **kw):
        seen.append((q, k))
        return v

    monkeypatch.setattr(tw, "dispatch_attention_fn", capture)
    tw.WanAttnProcessor()(attn, x, rotary_emb=(cos, sin))
    assert len(seen) == 1
    qk = zip(seen[0], (attn.to_q, attn.to_k), (attn.norm_q, attn.norm_k), strict=True)
    for got, proj, norm in qk:
        want = wan_rotary(norm(proj(x)).unflatten(2, (attn.heads, -1)), cos, sin)
        assert torch.equal(got, want)


CASES = [  # (B, N, H, D, n_rope, block_n, block_h)
    (1, 16, 2, 16, 16, 1, 8),
    (2, 50, 5, 64, 40, 4, 2),  # 5 heads 2 at a time, a partial last program, unrotated tail
    (2, 37, 3, 128, 0, 2, 4),  # no RoPE
    (1, 33, 12, 32, 33, 8, 8),  # Wan 1.3B's 12 heads: one whole step, one half-masked
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("tables", [torch.float32, torch.float16])
@pytest.mark.parametrize("weight", [True, False])
def test_kernel_within_one_rounding_in_the_interpreter(case, tables, weight):
    B, N, H, D, n_rope, bn, bh = case
    x, w, cos, sin = _inputs(B, N, H, D, n_rope, torch.float16, tables, seed=N, weight=weight)
    got = rms_norm_rope(x, w, 1e-6, cos, sin, n_rope, style="wan", block_n=bn, block_h=bh)
    _assert_wan_bound(got, x, w, cos, sin, n_rope, max_frac=0.02)
    # by hand: unrotated rows are the norm alone, a rotated row's first pair turned by its angle
    normed = rms_norm_rope(x, w, 1e-6, style="wan", block_n=bn, block_h=bh)
    assert torch.equal(got[:, n_rope:], normed[:, n_rope:])
    if n_rope:
        a, b = normed[:, 0, :, 0], normed[:, 0, :, 1]
        c, s = cos[0, 0], sin[0, 1]
        if tables == torch.float32:
            want0, want1 = (a.float() * c - b.float() * s), (a.float() * s + b.float() * c)
        else:  # each product rounded to fp16 first, as torch multiplies fp16 tensors
            want0, want1 = (a * c).float() - (b * s).float(), (a * s).float() + (b * c).float()
        assert torch.equal(got[:, 0, :, 0], want0.half())
        assert torch.equal(got[:, 0, :, 1], want1.half())


def test_the_norm_spans_all_heads():
    """Scaling one head's inputs changes the other heads' outputs (one mean per token), and a
    token whose heads are all equal is normed like a per-head RMSNorm of that head."""
    x, w, _, _ = _inputs(1, 4, 3, 16, 0, torch.float16, torch.float32, weight=False)
    y = rms_norm_rope(x, None, 1e-6, style="wan")
    x2 = x.clone()
    x2[:, :, 0] *= 4
    y2 = rms_norm_rope(x2, None, 1e-6, style="wan")
    assert not torch.equal(y[:, :, 1:], y2[:, :, 1:])
    same = x[:, :, :1].expand(1, 4, 3, 16).contiguous()
    per_head = rms_norm_rope(same, None, 1e-6)  # the "hunyuan" style: per head
    assert torch.equal(rms_norm_rope(same, None, 1e-6, style="wan"), per_head)


class _ReportsCuda(torch.Tensor):
    """A CPU tensor that says it is on CUDA: what ``fused_available`` decides from there."""

    @property
    def is_cuda(self) -> bool:
        return True


def test_the_fused_kernel_is_available_for_the_wan_style():
    """A Wan weight spans all heads, (H*D,): checked as Wan's (the fused kernel runs), not as
    HunyuanVideo's per-head (D,) weight (the processor would fall back to torch)."""
    pytest.importorskip("triton")
    x = torch.randn(1, 8, 4, 16, dtype=torch.bfloat16).as_subclass(_ReportsCuda)
    weight = torch.ones(4 * 16, dtype=torch.bfloat16)
    assert qk_prep.fused_available(x, weight, None, 0, style="wan")
    assert not qk_prep.fused_available(x, weight, None, 0, style="hunyuan")


def test_bad_inputs_raise():
    x, w, cos, sin = _inputs(1, 8, 2, 16, 8, torch.float16, torch.float32)
    with pytest.raises(ValueError, match="style"):
        rms_norm_rope(x, w, 1e-6, style="cogvideo")
    with pytest.raises(ValueError, match=r"weight must be contiguous \(32,\)"):
        rms_norm_rope(x, w[:16], 1e-6, style="wan")
    with pytest.raises(ValueError, match="cos must be"):
        rms_norm_rope(x, w, 1e-6, cos.double(), sin.double(), 8, style="wan")
    with pytest.raises(ValueError, match="cos must be"):  # bf16 tables for fp16 activations
        rms_norm_rope(x, w, 1e-6, cos.bfloat16(), sin.bfloat16(), 8, style="wan")
    with pytest.raises(ValueError, match="share a dtype"):
        rms_norm_rope(x, w, 1e-6, cos, sin.half(), 8, style="wan")
    # the "hunyuan" style still takes only fp32 tables and a per-head weight
    with pytest.raises(ValueError, match="cos must be"):
        rms_norm_rope(x, w[:16], 1e-6, cos.half(), sin.half(), 8)


@torch.no_grad()
@pytest.mark.parametrize("tables", [torch.float16, torch.float64])
def test_wan_processor_runs_the_fused_kernel_on_every_q_and_k(monkeypatch, tables):
    """A tiny Wan (2 layers, 2 heads x 16) in fp16 on the CPU with the fused norm + RoPE forced
    (interpreter), rotary tables in fp16 (as ``.to(dtype)`` leaves them) or fp64 (as the
    ``rope`` module kept out of the cast holds them; the processor hands fp32 to the kernel):
    the kernel runs on every self-attention q and k (dense phase; with fp64 tables the sparse
    one too), each result within one rounding of the processor's torch code, and a forward with
    every call through the dense kernel keeps the tolerance rule against the fp64 stock
    forward, as the torch code does."""
    tr = tiny_wan_transformer(head_dim=16)
    inputs = wan_transformer_inputs()
    cast = {k: v.double() if k in ("hidden_states", "encoder_hidden_states") else v
            for k, v in inputs.items()}  # fmt: skip
    ref64 = tr.double()(**cast)[0]
    tr.to(torch.float16)
    tr.rope.to(tables)
    inputs = {k: v.half() if k in ("hidden_states", "encoder_hidden_states") else v
              for k, v in inputs.items()}  # fmt: skip
    # 16 tokens a program: the interpreter runs every program in Python (block_n=1 made the two
    # cases ~42 s); the launch knobs are pinned by CASES, this test is about the routing.
    monkeypatch.setattr(qk_prep, "rms_norm_rope", partial(rms_norm_rope, block_n=16))
    real = qk_prep.norm_rope
    checked = []

    def spy(x, weight, eps, rotary, n_rope, *, style="hunyuan", out=None):
        got = real(x, weight, eps, rotary, n_rope, style=style, out=out)
        want_dtype = torch.float32 if tables == torch.float64 else tables
        assert style == "wan" and rotary[0].dtype == want_dtype
        _assert_wan_bound(got, x, weight, *rotary, n_rope, max_frac=0.02, eps=eps)
        checked.append((tuple(x.shape), n_rope))
        return got

    monkeypatch.setattr(qk_prep, "norm_rope", spy)
    cfg_dense = xv.XAttentionConfig(
        block_size=16, dense_layers=(0, 1), dense_kernel="xattn", backend="torch"
    )
    cfg_sparse = xv.XAttentionConfig(
        threshold=0.5, stride=4, block_size=16, warmup_steps=0, auto_dense=False,
        backend="torch",
    )  # fmt: skip
    outs = {}
    # the sparse phase once (fp64 tables), to keep the interpreter's time down
    phases = [("dense", cfg_dense)] + ([("sparse", cfg_sparse)] if tables == torch.float64 else [])
    for fused in (False, True):
        monkeypatch.setattr(qk_prep, "fused_available", lambda *args, f=fused, **kw: f)
        for name, cfg in phases:
            with xv.apply_xattention(tr, cfg) as handle:
                outs[fused, name] = tr(**inputs)[0]
                assert handle.stats.summary()["num_sparse_calls"] == (2 if name == "sparse" else 0)
    assert checked == [((1, 192, 2, 16), 192)] * 4 * len(phases)  # q and k of 2 layers a forward
    assert_fa_close(outs[True, "dense"], ref64, outs[False, "dense"], what="fused, dense")
    if len(phases) == 2:
        assert torch.isfinite(outs[True, "sparse"]).all()


def test_wan_processor_hands_the_kernel_only_what_it_takes(monkeypatch):
    """With the kernel available: Wan's [1, N, 1, D] tables reach it as (N, D) views (fp64 as
    fp32 copies); per-batch tables and norms other than torch.nn.RMSNorm keep the torch code."""
    calls = []
    monkeypatch.setattr(qk_prep, "fused_available", lambda *a, **kw: True)
    monkeypatch.setattr(
        qk_prep, "norm_rope", lambda x, w, eps, rot, n, **kw: calls.append((rot, n, kw))
    )
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 6, 32, generator=g).half()
    norm = torch.nn.RMSNorm(32, eps=1e-6).half()
    cos, sin = torch.randn(2, 1, 6, 1, 16, generator=g, dtype=torch.float64).unbind(0)
    wan_norm_rope(norm, x, 2, (cos, sin))
    (c, s), n, kw = calls.pop()
    assert n == 6 and kw == {"style": "wan"} and c.dtype == torch.float32
    assert torch.equal(c, cos[0, :, 0].float()) and torch.equal(s, sin[0, :, 0].float())
    ch, sh = cos.half(), sin.half()
    wan_norm_rope(norm, x, 2, (ch, sh))
    (c, _), _, _ = calls.pop()
    assert c.data_ptr() == ch.data_ptr() and c.shape == (6, 16)  # a view of the table, no copy
    wan_norm_rope(norm, x, 2, None)
    assert calls.pop()[:2] == (None, 0)
    per_batch = (cos.expand(2, 6, 1, 16).half(), sin.expand(2, 6, 1, 16).half())
    got = wan_norm_rope(norm, x.expand(2, 6, 32), 2, per_batch)
    want = wan_rotary(norm(x.expand(2, 6, 32)).unflatten(2, (2, 16)), *per_batch)
    assert torch.equal(got, want)
    layer_norm = torch.nn.LayerNorm(32).half()
    got = wan_norm_rope(layer_norm, x, 2, None)
    assert torch.equal(got, layer_norm(x).unflatten(2, (2, 16)))
    assert calls == []


@pytest.mark.gpu
@pytest.mark.parametrize("tables", [torch.float32, torch.bfloat16])
def test_gpu_full_size_bf16_within_one_rounding(tables):
    """Wan 2.1 14B at 720p x 81 frames: 75,600 tokens x 40 heads (a 64-wide tile) x 128, bf16,
    every token rotated, on the GPU: within one rounding of the reference, almost all values
    equal, as the processor's torch code on the GPU is; a second launch config likewise."""
    x, w, cos, sin = _inputs(
        1, 75_600, 40, 128, 75_600, torch.bfloat16, tables, device="cuda", wan=True
    )
    got = rms_norm_rope(x, w, 1e-6, cos, sin, 75_600, style="wan")
    _assert_wan_bound(got, x, w, cos, sin, 75_600, max_frac=1e-3)
    # torch's own CUDA RMSNorm (another summation order) keeps the same bound to the reference
    _assert_wan_bound(_wan_processor(x, w, cos, sin, 75_600), x, w, cos, sin, 75_600, 1e-3)
    other = rms_norm_rope(x, w, 1e-6, cos, sin, 75_600, style="wan", block_n=2, block_h=16)
    _assert_wan_bound(other, x, w, cos, sin, 75_600, max_frac=1e-3)


def _assert_wan_bound(got, x, w, cos, sin, n_rope, max_frac, eps=1e-6) -> None:
    """got within one rounding of the reference on x, carried through: a normed value rounded
    the other way moves by up to its ulp; a rotated value by those of its pair times cos / sin,
    each product's own rounding when the tables are low precision, and its own rounding. At
    most ``max_frac`` of the values different."""
    want = rms_norm_rope_ref(x, w, eps, cos, sin, n_rope, style="wan").float()
    normed = rms_norm_rope_ref(x, w, eps, style="wan").float().abs()
    scale = 2 * normed
    if n_rope:
        head = normed[:, :n_rope]
        a, b = head.unflatten(-1, (-1, 2)).unbind(-1)
        pair = torch.stack([b, a], dim=-1).flatten(3)  # each value's partner
        c = cos[None, :, None, 0::2].float().abs().repeat_interleave(2, dim=-1)
        s = sin[None, :, None, 1::2].float().abs().repeat_interleave(2, dim=-1)
        scale[:, :n_rope] = want[:, :n_rope].abs() + 2 * (head * c + pair * s)
    bits = 7 if x.dtype == torch.bfloat16 else 10  # stored mantissa bits
    diff = (got.float() - want).abs()
    assert bool((diff <= scale * 2.0**-bits).all()), f"max diff {diff.max().item():.3e}"
    frac = (diff > 0).float().mean().item()
    assert frac <= max_frac, f"{frac:.2e} of the values differ"
