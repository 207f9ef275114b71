"""GPU checks of the Hopper kernels at full size (``pytest -m gpu`` on an sm90 GPU).

Every (precision, config) the tuning table can hand out (:func:`tuning.shipped_configs`) runs at
119,056 and 67,576 tokens, B=2 with key padding, against fp64 on sampled query blocks: bf16
with the flash-attention rule, fp8 against a documented error budget (and its errors printed).
The estimate's fp8 / flattened variants are checked for mask agreement with the reference.
"""

import math

import pytest
import torch

from xattn_video.attention import xattention
from xattn_video.kernels import tuning
from xattn_video.kernels.estimate import estimate_block_scores, estimate_block_scores_ref
from xattn_video.kernels.select import mask_to_indices, select_blocks
from xattn_video.kernels.sparse_attention import block_sparse_attention_fwd
from xattn_video.kernels.sparse_attention_hopper import block_sparse_attention_hopper

from ._tolerance import assert_fa_close, naive_attention

pytestmark = pytest.mark.gpu

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9
needs_hopper = pytest.mark.skipif(not HOPPER, reason="needs an sm90+ GPU")
# e4m3 keeps 3 mantissa bits: Q.K in fp8 -> ~4% relative L2 error of the output; fp8 P.V more.
FP8_REL_L2 = {False: 0.06, True: 0.12}


def _sampled_check(q, k, v, mask, kv_len, out, blocks, precision):
    B, H, N, D = q.shape
    key_ok = torch.arange(N, device="cuda")[None, :] < kv_len[:, None]
    errs = []
    for qb in blocks:
        r0, r1 = qb * 128, min(N, (qb + 1) * 128)
        tok = (mask[:, :, qb].repeat_interleave(128, -1)[..., :N] & key_ok[:, None, :])[:, :, None]
        exact = naive_attention(q[:, :, r0:r1], k, v, tok, dtype=torch.float64)
        if precision == "bf16":
            lowp = naive_attention(q[:, :, r0:r1], k, v, tok, dtype=q.dtype)
            assert_fa_close(out[:, :, r0:r1], exact, lowp, what=f"q-block {qb}")
        errs.append((out[:, :, r0:r1].double() - exact, exact))
    return errs


@needs_hopper
@pytest.mark.parametrize("n", [119056, 67576])
@pytest.mark.parametrize("precision, cfg", tuning.shipped_configs(), ids=lambda x: str(x))
def test_hopper_every_config_full_size(n, precision, cfg):
    B, H, D = 2, 2, 128
    g = torch.Generator(device="cuda").manual_seed(n)
    q, k, v = (torch.randn(B, H, n, D, device="cuda", generator=g).bfloat16() for _ in range(3))
    kv_len = torch.tensor([n, n - 3000], device="cuda")
    nb = math.ceil(n / 128)
    for density in (0.3, 1.0):
        mask = select_blocks(torch.rand(B, H, nb, nb, device="cuda", generator=g), block_size=128,
                             ratio=density, kv_len=kv_len)  # fmt: skip
        counts, idx = mask_to_indices(mask)
        out = block_sparse_attention_hopper(q, k, v, counts, idx, block_size=128, kv_len=kv_len,
                                            precision=precision, config=cfg)  # fmt: skip
        assert torch.isfinite(out).all()
        errs = _sampled_check(q, k, v, mask, kv_len, out, [0, 1, nb // 2, nb - 2, nb - 1],
                              precision)  # fmt: skip
        if precision == "fp8":
            diff = torch.cat([e.flatten() for e, _ in errs])
            ref = torch.cat([r.flatten() for _, r in errs])
            rel = (diff.norm() / ref.norm()).item()
            print(f"fp8 n={n} d={density} {cfg}: max {diff.abs().max():.3e} "
                  f"mean {diff.abs().mean():.3e} rel_l2 {rel:.3e}")  # fmt: skip
            assert rel < FP8_REL_L2[bool(cfg.get("FP8_PV"))]


def test_fp8_quantizers_match_reference_on_gpu():
    """The Triton quantizers agree with the PyTorch references (odd N, a zero block): scales to
    fp32 rounding, values to at most one e4m3 step on a handful of rounding ties."""
    from xattn_video.kernels.fp8 import (
        quantize_fp8_blocks,
        quantize_fp8_blocks_ref,
        quantize_fp8_head_t,
        quantize_fp8_head_t_ref,
        wgmma_fp8_key_order,
    )

    g = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(2, 3, 1000, 128, device="cuda", generator=g).bfloat16() * 3
    x[1, 1, 128:256] = 0
    y, s = quantize_fp8_blocks(x, 128)
    y_ref, s_ref = quantize_fp8_blocks_ref(x, 128)
    torch.testing.assert_close(s, s_ref, rtol=2e-7, atol=0)
    _same_up_to_one_step(y, y_ref)
    vt, sv = quantize_fp8_head_t(x)
    vt_ref, sv_ref = quantize_fp8_head_t_ref(x)
    torch.testing.assert_close(sv, sv_ref, rtol=2e-7, atol=0)
    assert vt.shape == vt_ref.shape == (2, 3, 128, 1000)
    _same_up_to_one_step(vt, vt_ref)
    vt, _ = quantize_fp8_head_t(x, wgmma_key_order=True)
    vt_ref, _ = quantize_fp8_head_t_ref(x, wgmma_key_order=True)
    assert vt.shape == vt_ref.shape == (2, 3, 128, 1024)
    _same_up_to_one_step(vt, vt_ref)
    natural = vt[..., torch.argsort(wgmma_fp8_key_order(1024, "cuda"))].float()
    assert torch.equal(natural[..., 1000:], torch.zeros_like(natural[..., 1000:]))


def test_fp8_quantizer_launch_knobs_give_the_same_bytes():
    """V's transposed copy at every tokens-per-program / warps, and the one-launch Q / K / v
    quantizer at every chunk / warps, write the default launch's bytes (B=2, key padding that
    splits a 32 of the key order, N not a multiple of 128)."""
    from xattn_video.kernels import fp8

    g = torch.Generator(device="cuda").manual_seed(4)
    q, k, v = (torch.randn(2, 3, 5000, 128, device="cuda", generator=g).bfloat16() * 3
               for _ in range(3))  # fmt: skip
    lens = torch.tensor([5000, 3001], device="cuda", dtype=torch.int32)
    scale = fp8.fp8_head_scale(v, lens)

    def head_t(block, warps):
        vt, _ = fp8.quantize_fp8_head_t(v, kv_len=lens, scale=scale, wgmma_key_order=True,
                                        block=block, num_warps=warps)  # fmt: skip
        return vt.view(torch.uint8)

    want = head_t(fp8.HEAD_T_BLOCK, fp8.HEAD_T_WARPS)
    for block in fp8.HEAD_T_BLOCKS:
        for warps in (4, 8):
            assert torch.equal(head_t(block, warps), want), (block, warps)

    def inputs(chunk, warps):
        f8, flags = fp8.quantize_fp8_inputs(q, k, v, block=128, kv_len=lens, flags=True,
                                            chunk=chunk, num_warps=warps)  # fmt: skip
        return [t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t
                for t in (*f8, *flags)]  # fmt: skip

    want = inputs(fp8.INPUTS_CHUNK, fp8.INPUTS_WARPS)
    for chunk, warps in ((16, 4), (32, 4), (64, 8), (128, 8), (128, 16)):
        got = inputs(chunk, warps)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True)), (chunk, warps)


def _same_up_to_one_step(a, b):
    a, b = a.float(), b.float()
    step = torch.maximum(b.abs(), a.abs()).clamp(min=2.0**-6) * 2.0**-3  # one e4m3 ulp
    assert ((a - b).abs() <= step).all()
    assert (a != b).float().mean() < 1e-3


@needs_hopper
def test_auto_dispatch_uses_hopper_kernel_and_table():
    q = torch.randn(1, 2, 1000, 128, device="cuda", dtype=torch.bfloat16)
    assert tuning.attention_kernel_for(q, q, q, 128) == "hopper"
    assert tuning.attention_kernel_for(q.float(), q.float(), q.float(), 128) == "portable"
    cfg = tuning.hopper_attention_config(q, 128)
    name = torch.cuda.get_device_name()
    assert cfg == tuning.MEASURED.get((name, "bf16", 128, "small"), tuning.SAFE_HOPPER)


@needs_hopper
def test_hopper_and_portable_agree_with_lse():
    B, H, N, D = 2, 3, 5000, 64
    g = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(B, H, N, D, device="cuda", generator=g).half() for _ in range(3))
    kv_len = torch.tensor([N, 3001], device="cuda")
    nb = math.ceil(N / 64)
    mask = select_blocks(torch.rand(B, H, nb, nb, device="cuda", generator=g), block_size=64,
                         threshold=0.6, kv_len=kv_len)  # fmt: skip
    counts, idx = mask_to_indices(mask)
    kw = dict(block_size=64, kv_len=kv_len, return_lse=True)
    o_h, l_h = block_sparse_attention_fwd(q, k, v, counts, idx, kernel="hopper", **kw)
    o_p, l_p = block_sparse_attention_fwd(q, k, v, counts, idx, kernel="portable", **kw)
    torch.testing.assert_close(l_h, l_p, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(o_h.float(), o_p.float(), rtol=2e-2, atol=4e-3)


@pytest.mark.parametrize("n,stride", [(119056, 8), (119056, 16), (67576, 8), (67576, 16)])
@pytest.mark.parametrize("precision, flatten", [("bf16", True), ("bf16", False), ("fp8", True)])
def test_estimate_variants_mask_agreement(n, stride, precision, flatten):
    if precision == "fp8" and not HOPPER:
        pytest.skip("fp8 estimate needs an sm90+ GPU")
    g = torch.Generator(device="cuda").manual_seed(2)
    q, k = (torch.randn(1, 1, n, 128, device="cuda", generator=g).bfloat16() for _ in range(2))
    kv_len = torch.tensor([n - 100], device="cuda")
    kw = dict(stride=stride, block_size=128, kv_len=kv_len)
    got = estimate_block_scores(q, k, precision=precision, flatten=flatten, **kw)
    want = estimate_block_scores_ref(q, k, **kw)
    m_got = select_blocks(got, block_size=128, threshold=0.9, kv_len=kv_len)
    m_want = select_blocks(want, block_size=128, threshold=0.9, kv_len=kv_len)
    disagree = (m_got != m_want).float().mean().item()
    print(
        f"estimate {precision} flatten={flatten} n={n} S={stride}: mask disagreement {disagree:.2e}"
    )
    if precision == "bf16":
        torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-5)
        assert disagree < 1e-3
    else:
        assert disagree < 2e-2


@needs_hopper
@pytest.mark.parametrize("kernel", ["triton", "gluon"])
@pytest.mark.parametrize("stride", [8, 16])
def test_fp8_estimate_equals_its_pytorch_definition(kernel, stride):
    """The fp8 estimate against :func:`estimate_block_scores_ref` with ``precision="fp8"`` (the
    same e4m3-rounded Q and K, fp32 math): only the tensor cores' accumulation differs. Padded
    keys are zeros, as the op's torch backend gives them to the reference."""
    from xattn_video.kernels.sparse_attention_gluon import HAS_GLUON

    if kernel == "gluon" and not (HAS_GLUON and torch.cuda.get_device_capability()[0] == 9):
        pytest.skip("needs an sm90+ GPU with Triton's Gluon (sm90 exactly)")
    n = 8192
    g = torch.Generator(device="cuda").manual_seed(stride)
    q, k = (torch.randn(2, 2, n, 128, device="cuda", generator=g).bfloat16() for _ in range(2))
    kv_len = torch.tensor([n, n - 300], device="cuda")
    k[1, :, n - 300 :] = 0
    kw = dict(stride=stride, block_size=128, kv_len=kv_len)
    got = estimate_block_scores(q, k, precision="fp8", kernel=kernel, **kw)
    want = estimate_block_scores_ref(q, k, precision="fp8", **kw)
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-4)
    m_got = select_blocks(got, block_size=128, threshold=0.9, kv_len=kv_len)
    m_want = select_blocks(want, block_size=128, threshold=0.9, kv_len=kv_len)
    assert (m_got != m_want).float().mean().item() < 1e-3


@needs_hopper
@pytest.mark.parametrize("kernel, use_tma", [("hopper", None), ("portable", True), ("gluon", None)])
def test_tma_kernels_ignore_nan_in_padded_values(kernel, use_tma):
    """The TMA tile of the last listed block holds padded value rows; their probabilities are 0,
    but 0 * NaN is NaN, so the Triton kernels zero those rows in the masked tile and the Gluon
    one loads that block from a zero-padded copy (before: every row attending the block came
    out NaN -- all 1,000 of the head on the Gluon kernel, H200)."""
    if kernel == "gluon" and torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the Gluon kernel is sm90 only")
    g = torch.Generator(device="cuda").manual_seed(11)
    q, k, v = (torch.randn(1, 2, 1000, 128, device="cuda", generator=g).bfloat16()
               for _ in range(3))  # fmt: skip
    kv_len = torch.tensor([900], device="cuda")
    mask = torch.ones(1, 2, 8, 8, dtype=torch.bool, device="cuda")  # block 7: keys 896-899 valid
    counts, idx = mask_to_indices(mask)
    kw = dict(block_size=128, kv_len=kv_len, kernel=kernel, use_tma=use_tma)
    out = block_sparse_attention_fwd(q, k, v, counts, idx, **kw)
    v2 = v.clone()
    v2[0, 1, 950, 3] = float("nan")
    v2[0, 0, 901, 0] = float("inf")
    assert torch.isfinite(out).all()
    assert torch.equal(block_sparse_attention_fwd(q, k, v2, counts, idx, **kw), out)


def test_fp8_that_no_hopper_kernel_takes_names_what_it_needs():
    """fp8 at head dim 32 or block 32 on sm90 fell to the portable kernel, whose refusal said "an
    sm90+ GPU, fp16/bf16 inputs" -- both true here -- and only after the estimate had run."""
    q = torch.randn(1, 2, 4096, 32, device="cuda", dtype=torch.bfloat16)
    for x, block in [(q, 128), (torch.cat([q, q], -1), 32)]:
        with pytest.raises(ValueError, match="head dim 64 or 128, block_size >= 64"):
            xattention(x, x, x, block_size=block, stride=8, precision="fp8")


@needs_hopper
def test_default_estimate_on_hopper_is_fp8_and_keeps_the_mass():
    """On Hopper, ``estimate_precision="auto"`` (the default) estimates in fp8 under bf16
    attention: the op's mask is the fp8 estimate's, ``"bf16"`` gives the bf16 one, and the
    documented tolerance holds: the masks differ on under 2% of block pairs (random inputs:
    near-uniform attention, many near-ties), and scored with the fp32 estimate of the bf16
    inputs every valid query block's kept mass is within 0.02 of the threshold."""
    from xattn_video.attention import estimate_block_mask

    g = torch.Generator(device="cuda").manual_seed(5)
    B, H, N, D = 2, 2, 9000, 128
    q, k, v = (torch.randn(B, H, N, D, device="cuda", generator=g).bfloat16() for _ in range(3))
    kv_len = torch.tensor([N, N - 500], device="cuda")
    sel = dict(threshold=0.9, stride=8, block_size=128, kv_len=kv_len)
    _, m_auto = xattention(q, k, v, return_mask=True, **sel)
    _, m_bf16 = xattention(q, k, v, return_mask=True, estimate_precision="bf16", **sel)
    assert torch.equal(m_auto, estimate_block_mask(q, k, precision="fp8", **sel))
    assert torch.equal(m_bf16, estimate_block_mask(q, k, precision="bf16", **sel))
    disagree = (m_auto != m_bf16).float().mean().item()
    exact = estimate_block_scores_ref(q.float(), k.float(), stride=8, block_size=128,
                                      kv_len=kv_len)  # fmt: skip
    valid_rows = torch.arange(exact.shape[2], device="cuda")[None, :] * 128 < kv_len[:, None]
    short = {}
    for name, m in (("fp8", m_auto), ("bf16", m_bf16)):
        kept = (exact * m).sum(-1)  # (B, H, Nbq)
        short[name] = (0.9 - kept).masked_select(valid_rows[:, None, :]).max().item()
    print(f"default estimate: mask disagreement {disagree:.2e}, largest mass shortfall "
          f"fp8 {short['fp8']:.2e} bf16 {short['bf16']:.2e}")  # fmt: skip
    assert disagree < 2e-2
    assert short["fp8"] < 0.02 and short["bf16"] < 0.02


@needs_hopper
@pytest.mark.parametrize("head_dim", [16, 32])
def test_default_estimate_below_head_dim_64_is_bf16(head_dim):
    """Below the GPU-tested head dims the default estimate stays bf16 on Hopper: at 16 e4m3
    dots cannot even compile (the default crashed there, e.g. ``--model tiny-hunyuan`` on an
    H100), and an explicit fp8 estimate at 16 is refused by name."""
    from xattn_video.attention import estimate_block_mask

    g = torch.Generator(device="cuda").manual_seed(head_dim)
    q, k, v = (torch.randn(2, 2, 1000, head_dim, device="cuda", generator=g).bfloat16()
               for _ in range(3))  # fmt: skip
    sel = dict(threshold=0.9, stride=8, block_size=64)
    _, mask = xattention(q, k, v, return_mask=True, **sel)
    assert torch.equal(mask, estimate_block_mask(q, k, precision="bf16", **sel))
    if head_dim < 32:
        with pytest.raises(ValueError, match="head dim of at least 32"):
            xattention(q, k, v, estimate_precision="fp8", **sel)


@needs_hopper
@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_hopper_clamped_configs_at_block_64(precision):
    """The table's configs run at block 128; at block_size=64 they are clamped (the H200's fp8
    entry becomes 64 x 64 tiles with fp8 P.V on the Triton Hopper kernel, as the Gluon kernel
    takes block 128 only), a launch shipped_configs() does not list. Against fp64 on sampled
    query blocks, from 32k tokens (the table's large bucket), B=2 with key padding."""
    B, H, N, D, block = 2, 2, 40000, 128, 64
    g = torch.Generator(device="cuda").manual_seed(7)
    q, k, v = (torch.randn(B, H, N, D, device="cuda", generator=g).bfloat16() for _ in range(3))
    kv_len = torch.tensor([N, N - 1000], device="cuda")
    nb = math.ceil(N / block)
    mask = select_blocks(torch.rand(B, H, nb, nb, device="cuda", generator=g), block_size=block,
                         ratio=0.3, kv_len=kv_len)  # fmt: skip
    cfg = tuning.lookup_config(torch.cuda.get_device_name(), precision, D, N, block)
    assert (cfg["BLOCK_M"], cfg["BLOCK_N"]) == (64, 64)
    counts, idx = mask_to_indices(mask)
    out = block_sparse_attention_hopper(q, k, v, counts, idx, block_size=block, kv_len=kv_len,
                                        precision=precision, config=cfg)  # fmt: skip
    key_ok = torch.arange(N, device="cuda")[None, :] < kv_len[:, None]
    diffs, refs = [], []
    for qb in (0, 1, nb // 2, nb - 1):
        r0, r1 = qb * block, min(N, (qb + 1) * block)
        tok = mask[:, :, qb].repeat_interleave(block, -1)[..., :N] & key_ok[:, None, :]
        exact = naive_attention(q[:, :, r0:r1], k, v, tok[:, :, None], dtype=torch.float64)
        if precision == "bf16":
            lowp = naive_attention(q[:, :, r0:r1], k, v, tok[:, :, None], dtype=q.dtype)
            assert_fa_close(out[:, :, r0:r1], exact, lowp, what=f"q-block {qb}")
        diffs.append((out[:, :, r0:r1].double() - exact).flatten())
        refs.append(exact.flatten())
    rel = (torch.cat(diffs).norm() / torch.cat(refs).norm()).item()
    print(f"{precision} block 64 {cfg}: rel_l2 {rel:.3e}")
    assert rel < FP8_REL_L2[bool(cfg.get("FP8_PV"))]
