"""``precision="fp8"`` through the op and the config: argument checks on CPU, results on Hopper."""

import math

import pytest
import torch

import xattn_video as xv
from xattn_video.config import XAttentionConfig


def test_config_precision_field():
    assert XAttentionConfig().precision == "bf16"
    assert XAttentionConfig(precision="fp8").precision == "fp8"
    with pytest.raises(ValueError, match="precision"):
        XAttentionConfig(precision="int8")
    with pytest.raises(ValueError, match="precision='fp8'"):
        XAttentionConfig(precision="fp8", backend="torch")
    assert (
        XAttentionConfig.from_dict(XAttentionConfig(precision="fp8").to_dict()).precision == "fp8"
    )


def test_op_rejects_fp8_off_the_triton_backend():
    q = torch.randn(1, 1, 64, 16)
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="precision='fp8'"):
        xv.block_sparse_attention(q, q, q, mask, block_size=16, precision="fp8")
    with pytest.raises(ValueError, match="precision must be"):
        xv.block_sparse_attention(q, q, q, mask, block_size=16, precision="e5m2")
    with pytest.raises(ValueError, match="precision='fp8'"):
        xv.xattention(q, q, q, threshold=0.9, stride=4, block_size=16, precision="fp8")


def test_op_rejects_fp8_on_the_triton_backend_off_a_gpu(monkeypatch):
    """backend='triton' on CPU tensors (the interpreter) reached CUDA's capability query: a
    RuntimeError about a missing NVIDIA driver, after a whole bf16 estimate had run."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    q = torch.randn(1, 1, 64, 64)
    mask = torch.ones(1, 1, 1, 1, dtype=torch.bool)
    kw = dict(block_size=64, backend="triton", precision="fp8")
    with pytest.raises(ValueError, match="precision='fp8' needs the Hopper kernels"):
        xv.block_sparse_attention(q, q, q, mask, **kw)
    with pytest.raises(ValueError, match="precision='fp8' needs the Hopper kernels"):
        xv.xattention(q, q, q, mask=mask, **kw)
    with pytest.raises(ValueError, match="precision='fp8' needs the Hopper kernels"):
        xv.xattention(q, q, q, estimate_precision="bf16", **kw)


@pytest.mark.gpu
@pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9),
    reason="needs an sm90+ GPU",
)
def test_op_fp8_matches_bf16_within_budget():
    """Same mask as bf16 (the estimate asked for in bf16); output within the fp8 error budget."""
    g = torch.Generator(device="cuda").manual_seed(0)
    B, H, N, D = 2, 4, 9000, 128
    q, k, v = (torch.randn(B, H, N, D, device="cuda", generator=g).bfloat16() for _ in range(3))
    kv_len = torch.tensor([N, N - 500], device="cuda")
    kw = dict(threshold=0.9, stride=8, block_size=128, kv_len=kv_len, return_mask=True)
    out16, m16 = xv.xattention(q, k, v, estimate_precision="bf16", **kw)
    out8, m8 = xv.xattention(q, k, v, precision="fp8", estimate_precision="bf16", **kw)
    assert torch.equal(m16, m8)
    exact = xv.block_sparse_attention(q.double(), k.double(), v.double(), m16, block_size=128,
                                      kv_len=kv_len, backend="torch")  # fmt: skip
    rel = ((out8.double() - exact).norm() / exact.norm()).item()
    rel16 = ((out16.double() - exact).norm() / exact.norm()).item()
    print(f"op fp8 rel_l2 {rel:.3e} (bf16 {rel16:.3e})")
    assert rel < 0.08 and rel16 < 1e-2
    assert math.isfinite(rel)


needs_sm90 = pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9),
    reason="needs an sm90+ GPU",
)


def _bf16_qkv(B, H, N, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(B, H, N, 128, device="cuda", generator=g).bfloat16() for _ in range(3)]


@pytest.mark.gpu
@needs_sm90
@pytest.mark.parametrize("estimate_precision", ["bf16", "fp8"])
def test_op_fp8_ignores_padded_keys(estimate_precision):
    """Keys past kv_len take no part in the fp8 scales and quantize to zero: planted NaN, Inf
    and 1e4 there leave the mask and the output bit-identical. Before, V's head scale came from
    every key (a padded NaN made the whole head NaN, a padded 1e4 coarsened it) and K's block
    scale from the whole block."""
    q, k, v = _bf16_qkv(2, 2, 3000, seed=1)
    kv_len = torch.tensor([3000, 2900], device="cuda")
    kw = dict(ratio=0.5, stride=8, block_size=128, kv_len=kv_len, precision="fp8",
              estimate_precision=estimate_precision, return_mask=True)  # fmt: skip
    out, mask = xv.xattention(q, k, v, **kw)
    k2, v2 = k.clone(), v.clone()
    k2[1, 0, 2950, 3] = float("inf")
    k2[1, 1, 2990, 0] = 1e4
    v2[1, 0, 2999, 1] = float("nan")
    v2[1, 1, 2901, 2] = 1e4
    out2, mask2 = xv.xattention(q, k2, v2, **kw)
    assert torch.isfinite(out).all()
    assert torch.equal(mask, mask2) and torch.equal(out, out2)


@pytest.mark.gpu
@needs_sm90
def test_fp8_inf_in_one_query_row_leaves_its_block_alone():
    """With a given mask the policy NaNs only the row; before, the Inf made its block's fp8
    scale infinite and all 128 rows of the block NaN."""
    q, k, v = _bf16_qkv(1, 2, 1000, seed=2)
    mask = torch.ones(1, 1, 8, 8, dtype=torch.bool, device="cuda")
    out = xv.block_sparse_attention(q, k, v, mask, block_size=128, precision="fp8")
    q2 = q.clone()
    q2[0, 1, 200, 5] = float("inf")
    out2 = xv.block_sparse_attention(q2, k, v, mask, block_size=128, precision="fp8")
    bad = torch.zeros(1, 2, 1000, dtype=torch.bool, device="cuda")
    bad[0, 1, 200] = True
    assert torch.equal(out2.isnan().all(-1), bad) and torch.equal(out2.isnan().any(-1), bad)
    assert torch.equal(out2[~bad], out[~bad])


@pytest.mark.gpu
@needs_sm90
def test_fp8_op_quantizes_once_and_equals_the_composed_calls(monkeypatch):
    """precision and estimate_precision both "fp8": q, k and v are quantized once (one
    launch, flags included) for the estimate and the attention, with the result of the two
    calls composed by hand (each quantizing for itself); eager equals torch.compile."""
    from xattn_video import library

    q, k, v = _bf16_qkv(1, 3, 5000, seed=3)
    kv_len = torch.tensor([4900], device="cuda")
    sel = dict(ratio=0.3, stride=8, block_size=128, kv_len=kv_len)
    calls = []
    real = library.quantize_fp8_inputs
    monkeypatch.setattr(
        library, "quantize_fp8_inputs", lambda *a, **kw: calls.append(1) or real(*a, **kw)
    )
    out, mask = xv.xattention(q, k, v, precision="fp8", estimate_precision="fp8",
                              return_mask=True, **sel)  # fmt: skip
    assert len(calls) == 1
    # the default estimate precision ("auto") is the attention's: the same call
    out_auto, mask_auto = xv.xattention(q, k, v, precision="fp8", return_mask=True, **sel)
    assert len(calls) == 2 and torch.equal(mask_auto, mask) and torch.equal(out_auto, out)
    want_mask = xv.estimate_block_mask(q, k, precision="fp8", **sel)
    want = xv.block_sparse_attention(q, k, v, want_mask, block_size=128, kv_len=kv_len,
                                     precision="fp8")  # fmt: skip
    assert torch.equal(mask, want_mask) and torch.equal(out, want)
    args = (q, k, v, kv_len.int(), 128)
    torch.library.opcheck(library.quantize_fp8_op, args,
                          test_utils=("test_schema", "test_faketensor"))  # fmt: skip
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda q, k, v: xv.xattention(q, k, v, precision="fp8", estimate_precision="fp8", **sel),
        fullgraph=True,
    )
    assert torch.equal(compiled(q, k, v), out)


@pytest.mark.gpu
@needs_sm90
def test_bf16_op_with_fp8_estimate_takes_flags_from_the_quantization(monkeypatch):
    """bf16 attention with the fp8 estimate: one quantization launch reads q, k and v for the
    estimate and the non-finite flags (no separate flag pass); the output equals the composed
    calls bit for bit, the policy holds (a NaN in a valid value NaNs its head, an Inf in a query
    row its query block), and torch.compile equals eager."""
    from xattn_video import library

    q, k, v = _bf16_qkv(1, 3, 5000, seed=4)
    kv_len = torch.tensor([4900], device="cuda")
    sel = dict(ratio=0.3, stride=8, block_size=128, kv_len=kv_len)
    quant, flag_passes = [], []
    real_q, real_f = library.quantize_fp8_inputs, library.nonfinite_flags
    monkeypatch.setattr(
        library, "quantize_fp8_inputs", lambda *a, **kw: quant.append(1) or real_q(*a, **kw)
    )
    monkeypatch.setattr(
        library, "nonfinite_flags", lambda *a, **kw: flag_passes.append(1) or real_f(*a, **kw)
    )
    out, mask = xv.xattention(q, k, v, estimate_precision="fp8", return_mask=True, **sel)
    assert len(quant) == 1 and not flag_passes
    want = xv.block_sparse_attention(q, k, v, mask, block_size=128, kv_len=kv_len)
    assert len(flag_passes) == 1  # the composed call runs its own flag pass
    assert torch.isfinite(out).all() and torch.equal(out, want)
    q2, v2 = q.clone(), v.clone()
    v2[0, 1, 4000, 7] = float("nan")
    q2[0, 2, 300, 0] = float("inf")
    out2 = xv.xattention(q2, k, v2, estimate_precision="fp8", **sel)
    bad = torch.zeros(1, 3, 5000, dtype=torch.bool, device="cuda")
    bad[0, 1] = True
    bad[0, 2, 256:384] = True  # the query block of row 300
    assert torch.equal(out2.isnan().all(-1), bad) and torch.equal(out2.isnan().any(-1), bad)
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda q, k, v: xv.xattention(q, k, v, estimate_precision="fp8", **sel), fullgraph=True
    )
    assert torch.equal(compiled(q, k, v), out)
