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


@pytest.mark.gpu
@pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9),
    reason="needs an sm90+ GPU",
)
def test_op_fp8_matches_bf16_within_budget():
    """Same mask as bf16 (the estimate stays bf16); output within the fp8 error budget."""
    g = torch.Generator(device="cuda").manual_seed(0)
    B, H, N, D = 2, 4, 9000, 128
    q, k, v = (torch.randn(B, H, N, D, device="cuda", generator=g).bfloat16() for _ in range(3))
    kv_len = torch.tensor([N, N - 500], device="cuda")
    kw = dict(threshold=0.9, stride=8, block_size=128, kv_len=kv_len, return_mask=True)
    out16, m16 = xv.xattention(q, k, v, **kw)
    out8, m8 = xv.xattention(q, k, v, precision="fp8", **kw)
    assert torch.equal(m16, m8)
    exact = xv.block_sparse_attention(q.double(), k.double(), v.double(), m16, block_size=128,
                                      kv_len=kv_len, backend="torch")  # fmt: skip
    rel = ((out8.double() - exact).norm() / exact.norm()).item()
    rel16 = ((out16.double() - exact).norm() / exact.norm()).item()
    print(f"op fp8 rel_l2 {rel:.3e} (bf16 {rel16:.3e})")
    assert rel < 0.08 and rel16 < 1e-2
    assert math.isfinite(rel)
