"""Hopper sparse-attention kernel in the CPU interpreter, fp8 helpers, and the kernel dispatch.

The interpreter runs the same Triton source as the GPU (TMA descriptors, the warp-specialized
loop, lazy rescaling, the fp8 paths); small shapes and tiles keep it fast.
"""

import math

import pytest
import torch

from xattn_video.kernels import tuning
from xattn_video.kernels._common import cdiv
from xattn_video.kernels.fp8 import (
    FP8_MAX,
    quantize_fp8_blocks,
    quantize_fp8_blocks_ref,
    quantize_fp8_head_t,
    wgmma_fp8_key_order,
)
from xattn_video.kernels.select import mask_to_indices, valid_key_blocks
from xattn_video.kernels.sparse_attention import block_sparse_attention_fwd
from xattn_video.kernels.sparse_attention_hopper import block_sparse_attention_hopper

from ._tolerance import assert_fa_close, naive_attention


def _problem(B, H, N, D, bs, lens, density, seed, dtype=torch.float16):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, N, D, generator=g).to(dtype) for _ in range(3))
    kv_len = torch.tensor(lens)
    nb = cdiv(N, bs)
    valid = valid_key_blocks(kv_len, nb, bs)[:, None, None, :]
    mask = (torch.rand(B, H, nb, nb, generator=g) < density) & valid
    mask[..., 0] = True
    tok = mask.repeat_interleave(bs, -2).repeat_interleave(bs, -1)[..., :N, :N]
    tok = tok & (torch.arange(N)[None, :] < kv_len[:, None])[:, None, None, :]
    return q, k, v, kv_len, mask, tok


def _cfg(**kw):
    return dict(tuning.SAFE_HOPPER, BLOCK_M=32, BLOCK_N=16, num_warps=4, num_stages=1, **kw)


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.mark.parametrize("threshold", [0.0, 8.0])
@pytest.mark.parametrize("warp_spec", [False, True])
@pytest.mark.parametrize("shape", [(2, 2, 130, 32, 64, [130, 93]), (1, 1, 200, 16, 64, [200])])
def test_hopper_kernel_fa_rule(threshold, warp_spec, shape):
    B, H, N, D, bs, lens = shape
    q, k, v, kv_len, mask, tok = _problem(B, H, N, D, bs, lens, 0.5, seed=1)
    counts, idx = mask_to_indices(mask)
    out, lse = block_sparse_attention_hopper(
        q, k, v, counts, idx, block_size=bs, kv_len=kv_len, return_lse=True,
        config=_cfg(WARP_SPEC=warp_spec, RESCALE_THRESHOLD=threshold),
    )  # fmt: skip
    assert_fa_close(
        out, naive_attention(q, k, v, tok, dtype=torch.float64), naive_attention(q, k, v, tok)
    )
    logits = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(D)
    lse_ref = torch.logsumexp(logits.masked_fill(~tok, float("-inf")), -1)
    torch.testing.assert_close(lse.double(), lse_ref, rtol=1e-5, atol=1e-3)


def test_hopper_kernel_lazy_rescale_with_growing_max():
    """Later key blocks with much larger logits force the lazy path to rescale (exact result)."""
    B, H, N, D, bs = 1, 1, 128, 16, 64
    q, k, v, kv_len, mask, tok = _problem(B, H, N, D, bs, [N], 1.0, seed=2)
    k[..., 64:, :] *= 6.0  # the second key block's logits are far larger than the first's
    counts, idx = mask_to_indices(mask)
    out = block_sparse_attention_hopper(q, k, v, counts, idx, block_size=bs,
                                        config=_cfg(RESCALE_THRESHOLD=8.0))  # fmt: skip
    assert_fa_close(
        out, naive_attention(q, k, v, tok, dtype=torch.float64), naive_attention(q, k, v, tok)
    )


def test_hopper_kernel_padded_keys_and_empty_rows():
    B, H, N, D, bs = 2, 1, 128, 16, 64
    q, k, v, kv_len, mask, _ = _problem(B, H, N, D, bs, [128, 41], 1.0, seed=3)
    mask[0, 0, 1] = False  # an empty query-block row
    counts, idx = mask_to_indices(mask)
    kw = dict(block_size=bs, kv_len=kv_len, config=_cfg(RESCALE_THRESHOLD=8.0))
    out = block_sparse_attention_hopper(q, k, v, counts, idx, **kw)
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 41:], v2[1, :, 41:] = 50.0, 1e4
    assert torch.equal(out, block_sparse_attention_hopper(q, k2, v2, counts, idx, **kw))
    assert (out[0, 0, 64:] == 0).all()


@pytest.mark.parametrize("pv", [False, True])
def test_hopper_kernel_fp8_error_bound(pv):
    """fp8 Q.K (and optionally P.V): error vs fp64 within the e4m3 budget (3 mantissa bits)."""
    B, H, N, D, bs = 1, 2, 192, 32, 64
    q, k, v, kv_len, mask, tok = _problem(B, H, N, D, bs, [N], 0.6, seed=4)
    counts, idx = mask_to_indices(mask)
    out = block_sparse_attention_hopper(q, k, v, counts, idx, block_size=bs, precision="fp8",
                                        config=_cfg(FP8_PV=pv))  # fmt: skip
    ref = naive_attention(q, k, v, tok, dtype=torch.float64)
    rel = ((out.double() - ref).norm() / ref.norm()).item()
    assert rel < (0.12 if pv else 0.06), rel
    assert torch.isfinite(out).all()


def test_fp8_quantizers_roundtrip():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 200, 16, generator=g) * torch.linspace(0.1, 10, 200)[:, None]
    x[0, 0, :64] = 0  # an all-zero block keeps scale 1
    x8, s = quantize_fp8_blocks(x, 64)
    assert x8.dtype == torch.float8_e4m3fn and s.shape == (2, 3, 4)
    assert s[0, 0, 0] == 1.0
    back = x8.float() * s.repeat_interleave(64, -1)[..., :200, None]
    amax = x.abs().reshape(2, 3, -1).amax(-1)[..., None, None]
    assert (back - x).abs().max() <= 2.0**-4 * amax.max()
    assert x8.float().abs().max() <= FP8_MAX
    vt8, sv = quantize_fp8_head_t(x)
    assert vt8.shape == (2, 3, 16, 200) and vt8.stride(-2) % 16 == 0
    torch.testing.assert_close(vt8.float().transpose(-1, -2) * sv[..., None, None], x,
                               rtol=2.0**-3, atol=2.0**-9 * float(sv.max()))  # fmt: skip


def test_fp8_block_quantization_multiplies_by_the_scale_s_reciprocal():
    """The reference (and the kernel) compute x * (1 / scale) in fp32, then e4m3 (the kernel's
    division per element cost 5-6% of the fp8 call's quantization on an H100). Pinned on a tie:
    with amax 3.875, x = 1.453125 gives exactly 168.0 by the multiply (to even: 160) where the
    correctly rounded x / scale is 168.00002 (176)."""
    x = torch.zeros(1, 1, 128, 16, dtype=torch.bfloat16)
    x[0, 0, 0, 0], x[0, 0, 5, 3] = 3.875, 1.453125
    x8, scale = quantize_fp8_blocks_ref(x, 128)
    assert scale.item() == pytest.approx(3.875 / 448, rel=1e-7)
    assert (x8[0, 0, 0, 0].item(), x8[0, 0, 5, 3].item()) == (448.0, 160.0)
    assert (x[0, 0, 5, 3].float() / scale).to(torch.float8_e4m3fn).item() == 176.0


def test_wgmma_fp8_key_order_pinned():
    """Within each 32 keys, column 32i+16h+4q+2c+e holds key 32i+16h+8c+2q+e: a thread's keys of
    an accumulator row (2q, 2q+1, 8+2q, 9+2q) become 4 consecutive operand columns."""
    order = wgmma_fp8_key_order(64)
    first = [0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15]
    assert order[:16].tolist() == first
    assert order[16:32].tolist() == [16 + k for k in first]
    assert order[32:].tolist() == [32 + k for k in order[:32].tolist()]
    assert sorted(order.tolist()) == list(range(64))
    with pytest.raises(ValueError, match="32"):
        wgmma_fp8_key_order(48)


def test_fp8_head_t_in_wgmma_key_order_is_the_plain_one_gathered():
    """Padded with zero keys to a multiple of 32, then the columns of the key order: the same
    bytes as the plain transposed quantization (N=200: the last 32 is part padding)."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 200, 16, generator=g)
    plain, s = quantize_fp8_head_t(x)
    ordered, s2 = quantize_fp8_head_t(x, wgmma_key_order=True)
    assert torch.equal(s, s2) and ordered.shape == (2, 3, 16, 224) and ordered.is_contiguous()
    padded = torch.zeros(2, 3, 16, 224)
    padded[..., :200] = plain.float()
    assert torch.equal(ordered.float(), padded[..., wgmma_fp8_key_order(224)])


def test_fp8_head_t_kernel_writes_the_key_order():
    """The Triton quantizer (interpreter on CPU, so both runs round alike) in the wgmma key
    order: the plain run's columns, zero-padded to 224, gathered by the order; nothing left
    unwritten (the buffer starts as NaN)."""
    from xattn_video.kernels import fp8

    v = torch.randn(1, 2, 200, 16, generator=torch.Generator().manual_seed(8))
    v[0, 1, 190:] = float("nan")  # padding (kv_len 190): written as zeros
    lens = torch.tensor([190], dtype=torch.int32)
    scale = fp8._head_scale(v, lens).contiguous()

    def run(order: bool, width: int, block: int = 64) -> torch.Tensor:
        buf = torch.full((1, 2, 16, width), float("nan")).to(torch.float8_e4m3fn)
        fp8._quant_head_t_kernel[(cdiv(200, block), 2)](
            v, buf, scale, lens, *v.stride()[:3], *buf.stride()[:3], 2, 200, width,
            BLOCK=block, D=16, WGMMA_ORDER=order,
        )  # fmt: skip
        return buf.float()

    plain = run(False, 208)
    assert (plain[..., 190:200] == 0).all() and not plain[..., :200].isnan().any()
    padded = torch.zeros(1, 2, 16, 224)
    padded[..., :200] = plain[..., :200]
    ordered = run(True, 224)
    assert torch.equal(ordered, padded[..., wgmma_fp8_key_order(224)])
    for block in (32, 128, 256):  # the launch knob: other tokens per program, same bytes
        assert torch.equal(run(True, 224, block), ordered)
        assert torch.equal(run(False, 208, block)[..., :200], plain[..., :200])


def test_fp8_head_t_rejects_a_block_off_the_key_order():
    """Tokens per program must be whole 32s of the key order (one of ``HEAD_T_BLOCKS``)."""
    x = torch.randn(1, 1, 64, 16)
    for block in (48, 16, 512):
        with pytest.raises(ValueError, match="block must be one of"):
            quantize_fp8_head_t(x, block=block)


def test_fp8_inputs_kernel_scales_zeros_and_flags():
    """The one-launch quantizer (interpreter on CPU): Q's and K's block scales and V's head
    scale equal the references' (padded keys and non-finite values outside them), padded keys
    come out as zeros, and its non-finite flags equal :func:`nonfinite_flags` bit for bit (a
    NaN query row, an Inf in a valid key; a NaN and a 1e4 in padding ignored)."""
    from xattn_video.kernels import fp8
    from xattn_video.kernels.nonfinite import nonfinite_flags

    g = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(2, 3, 300, 16, generator=g) for _ in range(3))
    lens = torch.tensor([300, 150], dtype=torch.int32)
    q[0, 1, 37, 3] = float("nan")
    k[1, 0, 140, 2] = float("inf")  # a valid key: its chunk flagged
    v[1, 1, 170, 5] = float("nan")  # padding: neither flagged nor in the scale
    k[1, 2, 160, 0] = 1e4  # padding: not in the scale
    v[1, 2, 160, 0] = 1e4  # padding: not in V's head scale either
    q8, k8, q_scale, k_scale, v_amax, q_bad, kv_bad = fp8._launch(q, k, v, lens, 128, True, 32, 4)
    _, q_ref = fp8.quantize_fp8_blocks_ref(q, 128)
    _, k_ref = fp8.quantize_fp8_blocks_ref(k, 128, lens)
    assert torch.equal(q_scale, q_ref.reshape(6, -1)) and torch.equal(k_scale, k_ref.reshape(6, -1))
    assert torch.equal(fp8._scale_of(v_amax.amax(-1)).reshape(2, 3), fp8._head_scale(v, lens))
    # V's head scale from its valid, finite values: by hand, and in the transposed quantizer
    finite = torch.where(v.isfinite(), v, 0).abs()
    want = torch.stack([finite[0].amax((-1, -2)), finite[1, :, :150].amax((-1, -2))]) / fp8.FP8_MAX
    torch.testing.assert_close(fp8._head_scale(v, lens), want, rtol=1e-6, atol=0)
    assert torch.equal(fp8.quantize_fp8_head_t_ref(v, kv_len=lens)[1], fp8._head_scale(v, lens))
    assert (k8[1, :, 150:].float() == 0).all() and not k8[1, 1:, :150].float().isnan().any()
    want_q, want_kv = nonfinite_flags(q, k, v, lens)
    assert torch.equal(q_bad, want_q) and torch.equal(kv_bad, want_kv)
    assert int(q_bad.sum()) == 1 and int(kv_bad.sum()) == 1


def test_fp8_pv_rejects_lazy_rescale():
    q, k, v, _, mask, _ = _problem(1, 1, 64, 16, 64, [64], 1.0, seed=6)
    counts, idx = mask_to_indices(mask)
    with pytest.raises(ValueError, match="FP8_PV"):
        block_sparse_attention_hopper(q, k, v, counts, idx, block_size=64, precision="fp8",
                                      config=_cfg(FP8_PV=True, RESCALE_THRESHOLD=8.0))  # fmt: skip


BASE = dict(is_cuda=True, capability=9, dtype=torch.bfloat16, head_dim=128, block_size=128,
            aligned=True, interpreter=False, n=4096, precision="bf16", has_gluon=True)  # fmt: skip
LARGE = {"n": 119056}


@pytest.mark.parametrize(
    "change, want",
    [
        ({}, "hopper"),
        ({"dtype": torch.float16, "head_dim": 64, "block_size": 64}, "hopper"),
        ({"capability": 10}, "hopper"),
        ({"capability": 8}, "portable"),  # Ampere / Ada
        ({"dtype": torch.float32}, "portable"),
        ({"head_dim": 32}, "portable"),
        ({"block_size": 32}, "portable"),
        ({"aligned": False}, "portable"),
        ({"is_cuda": False, "capability": 0, "interpreter": True}, "portable"),  # CPU tests
        ({"kernel": "portable"}, "portable"),
        ({"is_cuda": False, "capability": 0, "interpreter": True, "kernel": "hopper"}, "hopper"),
        # the Gluon kernel: sm90, bf16/fp16, block 128, from 32k query tokens (where measured)
        (LARGE, "gluon"),
        ({**LARGE, "dtype": torch.float16, "head_dim": 64}, "gluon"),
        ({"n": 32767}, "hopper"),
        ({"n": 32768}, "gluon"),
        ({**LARGE, "precision": "fp8"}, "gluon"),
        ({"precision": "fp8"}, "hopper"),  # below 32k tokens
        ({**LARGE, "precision": "fp8", "head_dim": 64}, "hopper"),  # Gluon fp8: d=128 only
        ({**LARGE, "precision": "fp8", "head_dim": 64, "kernel": "gluon"}, "gluon"),
        ({**LARGE, "precision": "fp8", "kernel": "hopper"}, "hopper"),
        ({**LARGE, "block_size": 64}, "hopper"),
        ({**LARGE, "capability": 10}, "hopper"),  # Blackwell has no wgmma
        ({**LARGE, "has_gluon": False}, "hopper"),
        ({**LARGE, "aligned": False}, "portable"),
        ({**LARGE, "kernel": "hopper"}, "hopper"),
        ({**LARGE, "kernel": "portable"}, "portable"),
        ({"kernel": "gluon"}, "gluon"),  # forced below 32k tokens
    ],
)
def test_dispatch_choice(change, want):
    assert tuning.choose_kernel(**{**BASE, **change}) == want


@pytest.mark.parametrize("change", [{"capability": 8}, {"head_dim": 32}, {"is_cuda": False}])
def test_dispatch_forced_hopper_rejects(change):
    with pytest.raises(ValueError, match="kernel='hopper'"):
        tuning.choose_kernel(**{**BASE, **change, "kernel": "hopper"})
    with pytest.raises(ValueError, match="kernel must be"):
        tuning.choose_kernel(**{**BASE, "kernel": "fast"})


@pytest.mark.parametrize(
    "change",
    [{"capability": 10}, {"block_size": 64}, {"has_gluon": False}, {"dtype": torch.float32},
     {"is_cuda": False, "interpreter": True}, {"aligned": False}],
)  # fmt: skip
def test_dispatch_forced_gluon_rejects(change):
    with pytest.raises(ValueError, match="kernel='gluon'"):
        tuning.choose_kernel(**{**BASE, **LARGE, **change, "kernel": "gluon"})


def test_gluon_stages_table():
    assert tuning.gluon_stages("NVIDIA H200", 128) == 3
    assert tuning.gluon_stages("NVIDIA H200", 128, "fp8") == 2
    assert tuning.gluon_stages("NVIDIA H200", 64) == 2  # not measured: the smaller ring
    assert tuning.gluon_stages("NVIDIA H100 80GB HBM3", 128) == 2
    assert tuning.gluon_stages(None, 128) == 2


def test_config_table_lookup(monkeypatch):
    tuned = dict(tuning.SAFE_HOPPER, BLOCK_N=64, RESCALE_THRESHOLD=8.0)
    monkeypatch.setattr(tuning, "MEASURED", {("NVIDIA H200", "bf16", 128, "large"): tuned})
    assert tuning.lookup_config("NVIDIA H200", "bf16", 128, 119056, 128) == tuned
    # Unknown GPU, other bucket or precision: the safe fallback, never a guess.
    assert (
        tuning.lookup_config("NVIDIA H100 80GB HBM3", "bf16", 128, 119056, 128)
        == tuning.SAFE_HOPPER
    )
    assert tuning.lookup_config("NVIDIA H200", "bf16", 128, 4096, 128) == tuning.SAFE_HOPPER
    assert tuning.lookup_config("NVIDIA H200", "fp8", 128, 119056, 128) == tuning.SAFE_HOPPER
    assert tuning.SAFE_HOPPER["WARP_SPEC"] is False and tuning.SAFE_HOPPER["RESCALE_THRESHOLD"] == 0
    small = tuning.lookup_config("NVIDIA H200", "bf16", 64, 119056, 64)
    assert small["BLOCK_M"] == 64 and small["BLOCK_N"] == 64 and small["num_warps"] == 4
    # the CPU interpreter's small tiles, still clamped to a small block (32 x 16 raised there)
    cpu = {bs: tuning.lookup_config(None, "bf16", 64, 64, bs) for bs in (16, 32, 128)}
    assert [(c["BLOCK_M"], c["BLOCK_N"]) for c in cpu.values()] == [(16, 16), (32, 16), (32, 16)]
    assert all(c["num_warps"] == 4 and c["num_stages"] == 1 for c in cpu.values())
    assert ("bf16", tuned) in tuning.shipped_configs()


def test_estimate_config_lookup():
    assert tuning.estimate_config("NVIDIA H200", "bf16", 8, 128) == ((128, 128, 8, 3), True, True)
    assert tuning.estimate_config("NVIDIA H200", "fp8", 16, 128)[1] is True
    # 3-deep ring, libdevice log2 (probe_estimate_tiles_*_h200_32a259f.json)
    assert tuning.estimate_config("NVIDIA H200", "bf16", 16, 128) == ((64, 128, 4, 3), True, False)
    assert tuning.estimate_config("Some Future GPU", "bf16", 8, 128) == tuning.SAFE_ESTIMATE
    assert tuning.estimate_config("NVIDIA H200", "bf16", 4, 128) == tuning.SAFE_ESTIMATE
    # per N bucket: the head-dim-64 entry was measured below 32k tokens only
    assert tuning.estimate_config("NVIDIA H200", "bf16", 8, 64, 17411) == (
        (64, 128, 4, 3),
        True,
        True,
    )
    assert tuning.estimate_config("NVIDIA H200", "bf16", 8, 64, 119056) == tuning.SAFE_ESTIMATE
    assert tuning.estimate_config("NVIDIA H200", "bf16", 8, 128, 17411) == (
        (128, 128, 8, 3),
        True,
        True,
    )


def test_small_head_dim_64_entry():
    cfg = tuning.lookup_config("NVIDIA H200", "bf16", 64, 17411, 128)
    assert (cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["num_warps"]) == (64, 128, 4)
    big = tuning.lookup_config("NVIDIA H200", "bf16", 64, 119056, 128)
    assert big["BLOCK_M"] == 128  # not measured at large N: the safe config


def test_portable_entry_point_dispatch_on_cpu():
    """On CPU, ``kernel='auto'`` keeps the portable kernel; 'hopper' runs the Hopper one; fp8
    without the Hopper kernel is an error naming the argument."""
    q, k, v, kv_len, mask, tok = _problem(1, 1, 128, 16, 64, [128], 1.0, seed=7)
    counts, idx = mask_to_indices(mask)
    kw = dict(block_size=64, kv_len=kv_len)
    a = block_sparse_attention_fwd(q, k, v, counts, idx, kernel="portable", **kw)
    b = block_sparse_attention_fwd(q, k, v, counts, idx, kernel="hopper", **kw)
    ref = naive_attention(q, k, v, tok, dtype=torch.float64)
    assert_fa_close(a, ref, naive_attention(q, k, v, tok))
    assert_fa_close(b, ref, naive_attention(q, k, v, tok))
    with pytest.raises(ValueError, match="precision='fp8'"):
        block_sparse_attention_fwd(q, k, v, counts, idx, precision="fp8", **kw)
    with pytest.raises(ValueError, match="precision must be"):
        block_sparse_attention_fwd(q, k, v, counts, idx, precision="int8", **kw)
    with pytest.raises(ValueError, match="kernel='gluon'"):  # Gluon has no interpreter path
        block_sparse_attention_fwd(q, k, v, counts, idx, kernel="gluon", **kw)
