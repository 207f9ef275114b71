"""CUDA checks of the one-launch selection / CSR / non-finite kernels at real sizes (``-m gpu``):
the tiny DiT's 136 key blocks, HunyuanVideo 720p's 931 (1,024 lanes) and 1,500 (2,048 lanes)."""

import pytest
import torch

import xattn_video as xv
from xattn_video.kernels.nonfinite import nonfinite_flags, nonfinite_rows_ref, propagate_nan
from xattn_video.kernels.select import mask_to_indices, valid_key_blocks
from xattn_video.kernels.select_fused import mask_to_csr, select_blocks_fused
from xattn_video.library import estimate_scores

from ._block_masks import torch_selection

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize(
    "shape",  # 256, 1,024 and 2,048 lanes (the last: MAX_BLOCKS' 8-warp rows)
    [
        (2, 4, 136, [17411, 16000], 17408),
        (1, 24, 931, [119056], 118800),
        (1, 2, 1500, [191930], 191700),
    ],
)
@pytest.mark.parametrize("max_density", [None, 0.3])
@pytest.mark.parametrize("mode", [dict(threshold=0.9), dict(ratio=0.3)])
def test_fused_select_and_csr_equal_torch_at_size(shape, max_density, mode):
    B, H, nb, lens, text = shape
    g = torch.Generator(device="cuda").manual_seed(0)
    scores = torch.rand(B, H, nb, nb, device="cuda", generator=g) ** 4
    scores[:, :, ::7] = torch.round(scores[:, :, ::7] * 8) / 8  # rows with many exact ties
    kv_len = torch.tensor(lens, device="cuda", dtype=torch.int32)
    kw = dict(max_density=max_density, **mode)
    got = select_blocks_fused(scores, block_size=128, kv_len=kv_len, dense_from=text, **kw)
    want = torch_selection(scores, 128, kv_len, text, **kw)
    assert torch.equal(got, want)
    counts, idx = mask_to_csr(got, block_size=128, kv_len=kv_len, n_k=max(lens))
    ref = mask_to_indices(got & valid_key_blocks(kv_len, nb, 128)[:, None, None, :])
    assert torch.equal(counts, ref[0]) and torch.equal(idx, ref[1])


def test_op_mask_equals_estimate_thentorch_selection():
    """The op's Triton path (fused selection) keeps exactly the blocks the torch selection keeps
    from the same estimate, at the tiny DiT's shape with text and a budget."""
    g = torch.Generator(device="cuda").manual_seed(1)
    n, text = 17411, 17408
    base = torch.randn(1, 4, n, 8, device="cuda", generator=g)
    q, k, v = (
        (base @ torch.randn(1, 4, 8, 64, device="cuda", generator=g)
         + 0.5 * torch.randn(1, 4, n, 64, device="cuda", generator=g)).bfloat16()
        for _ in range(3)
    )  # fmt: skip
    kw = dict(threshold=0.97, stride=8, block_size=128, dense_from=text, max_density=0.357)
    _, mask = xv.xattention(q, k, v, return_mask=True, estimate_precision="bf16", **kw)
    lens = torch.full((1,), n, dtype=torch.int32, device="cuda")
    scores = estimate_scores(q, k, kv_len=lens, stride=8, block_size=128, use_triton=True)
    want = torch_selection(scores, 128, lens, text, threshold=0.97, max_density=0.357)
    assert torch.equal(mask, want)


def _planted(seed: int, B=2, H=3, N=5000, D=128):
    """q, k, v (B, H, N, D) bf16 with a NaN query row, an Inf in the last valid key of sample 1
    and a NaN in its padding (kv_len 5000 / 3000); the generator for more draws."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (torch.randn(B, H, N, D, device="cuda", generator=g).bfloat16() for _ in range(3))
    kv_len = torch.tensor([5000, 3000], device="cuda", dtype=torch.int32)
    q[0, 2, 4999, 7] = float("nan")
    k[1, 1, 2999, 0] = float("inf")  # the last valid key
    v[1, 0, 3000, 0] = float("nan")  # padding: ignored
    return q, k, v, kv_len, g


@pytest.mark.parametrize("nan_block", [0, 128])
def test_nonfinite_kernels_equal_the_policy_bf16(nan_block):
    B, H, N, D = 2, 3, 5000, 128
    q, k, v, kv_len, g = _planted(2)
    out = torch.randn(B, H, N, D, device="cuda", generator=g).bfloat16()
    out0 = out.clone()
    propagate_nan(out, None, *nonfinite_flags(q, k, v, kv_len), nan_block=nan_block)
    want = nonfinite_rows_ref(q, k, v, kv_len, nan_block)
    assert int(want.sum()) == (N - 39 * 128 if nan_block else 1) + N
    assert torch.equal(out.isnan().all(-1), want) and torch.equal(out.isnan().any(-1), want)
    assert torch.equal(out[~want], out0[~want])


@pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9),
    reason="fp8 needs an sm90+ GPU",
)
def test_fp8_quantizer_flags_equal_the_flag_kernel():
    """The fp8 quantizer's non-finite flags (taken from its own reads of q, k, v) equal
    :func:`nonfinite_flags` bit for bit; its scales equal the references' (padding outside)."""
    from xattn_video.kernels.fp8 import _head_scale, quantize_fp8_blocks_ref, quantize_fp8_inputs

    B, H = 2, 3
    q, k, v, kv_len, _ = _planted(5)
    k[1, 2, 3100, 1] = 1e4  # padding: outside the scale
    res, flags = quantize_fp8_inputs(q, k, v, block=128, kv_len=kv_len, flags=True)
    want = nonfinite_flags(q, k, v, kv_len)
    assert torch.equal(flags[0], want[0]) and torch.equal(flags[1], want[1])
    torch.testing.assert_close(res.q_scale, quantize_fp8_blocks_ref(q, 128)[1].reshape(B * H, -1),
                               rtol=2e-7, atol=0)  # fmt: skip
    k_ref = quantize_fp8_blocks_ref(k, 128, kv_len)[1].reshape(B * H, -1)
    torch.testing.assert_close(res.k_scale, k_ref, rtol=2e-7, atol=0)
    torch.testing.assert_close(res.v_scale, _head_scale(v, kv_len), rtol=2e-7, atol=0)
    assert (res.k8[1, :, 3000:].float() == 0).all()


@pytest.mark.parametrize("dense_from", [1, 2])
def test_scalar_arguments_of_one_run_on_the_gpu(dense_from):
    """Triton passes an int argument of 1 as a constexpr: ``dense_from=1`` failed to compile
    (``'int' object has no attribute 'to'``). The fused selection equals torch's for 1 and 2."""
    g = torch.Generator(device="cuda").manual_seed(1)
    scores = torch.rand(2, 3, 12, 12, device="cuda", generator=g) ** 4
    kv_len = torch.tensor([12 * 128, 11 * 128 - 5], device="cuda", dtype=torch.int32)
    for mode in (dict(threshold=0.9), dict(ratio=0.3, max_density=0.5)):
        got = select_blocks_fused(
            scores, block_size=128, kv_len=kv_len, dense_from=dense_from, **mode
        )
        assert torch.equal(got, torch_selection(scores, 128, kv_len, dense_from, **mode))


def test_dtypes_the_kernels_cannot_take_are_refused_before_the_estimate():
    """fp64 reached a Triton CompilationError; fp32 was refused only after the estimate ran."""
    q = torch.randn(1, 2, 1024, 128, device="cuda", dtype=torch.float64)
    for dtype in (torch.float64, torch.float32):
        x = q.to(dtype)
        with pytest.raises(ValueError, match="cast q, k, v first"):
            xv.xattention(x, x, x, backend="triton")
    with pytest.raises(ValueError, match="cast q, k, v first"):
        xv.estimate_block_mask(q, q, backend="triton")
