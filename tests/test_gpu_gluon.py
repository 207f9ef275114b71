"""GPU checks of the experimental Gluon kernel (``pytest -m gpu`` on an sm90 GPU): outputs of
sampled query blocks against fp64 with the flash-attention rule, LSE against the portable
kernel's, empty rows, key padding, B=2, both pipeline depths, head dims 64 and 128."""

import math

import pytest
import torch

from xattn_video.kernels.select import mask_to_indices, select_blocks
from xattn_video.kernels.sparse_attention import block_sparse_attention_fwd

from ._tolerance import assert_fa_close, naive_attention

pytestmark = pytest.mark.gpu

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9
needs_hopper = pytest.mark.skipif(not HOPPER, reason="needs an sm90+ GPU")


def _gluon(stages, late_wait):
    from xattn_video.kernels.sparse_attention_gluon import block_sparse_attention_gluon

    return lambda *a, **kw: block_sparse_attention_gluon(*a, stages=stages, late_wait=late_wait,
                                                         **kw)  # fmt: skip


def _gluon_ws(stages, pingpong=False):
    from xattn_video.kernels.sparse_attention_gluon_ws import block_sparse_attention_gluon_ws

    return lambda *a, **kw: block_sparse_attention_gluon_ws(*a, stages=stages,
                                                            pingpong=pingpong, **kw)  # fmt: skip


VARIANTS = {"loop-2": lambda: _gluon(2, False), "loop-3": lambda: _gluon(3, False),
            "ws-2": lambda: _gluon_ws(2), "ws-3": lambda: _gluon_ws(3),
            "pp-2": lambda: _gluon_ws(2, True), "pp-3": lambda: _gluon_ws(3, True)}  # fmt: skip


@needs_hopper
@pytest.mark.parametrize("n, d", [(1000, 128), (8192, 128), (3000, 64), (67576, 128)])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("density", [0.3, 1.0])
def test_gluon_kernel_matches_fp64(n, d, variant, density):
    kernel = VARIANTS[variant]()
    B, H = 2, 2
    g = torch.Generator(device="cuda").manual_seed(n + d)
    q, k, v = (torch.randn(B, H, n, d, device="cuda", generator=g).bfloat16() for _ in range(3))
    kv_len = torch.tensor([n, n - 77], device="cuda")
    nb = math.ceil(n / 128)
    mask = select_blocks(torch.rand(B, H, nb, nb, device="cuda", generator=g), block_size=128,
                         ratio=density, kv_len=kv_len)  # fmt: skip
    mask[0, 1, 1] = False  # an empty row: zeros and -inf LSE
    counts, idx = mask_to_indices(mask)
    out, lse = kernel(q, k, v, counts, idx, block_size=128, kv_len=kv_len, return_lse=True)
    ref, ref_lse = block_sparse_attention_fwd(q, k, v, counts, idx, block_size=128,
                                              kv_len=kv_len, return_lse=True, kernel="portable")  # fmt: skip
    assert torch.equal(out[0, 1, 128:256], torch.zeros_like(out[0, 1, 128:256]))
    assert torch.isinf(lse[0, 1, 128:256]).all()
    ok = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[ok], ref_lse[ok], rtol=0, atol=2e-2)
    key_ok = torch.arange(n, device="cuda")[None, :] < kv_len[:, None]
    for qb in sorted({0, nb // 2, nb - 1}):
        r0, r1 = qb * 128, min(n, (qb + 1) * 128)
        tok = (mask[:, :, qb].repeat_interleave(128, -1)[..., :n] & key_ok[:, None, :])[:, :, None]
        exact = naive_attention(q[:, :, r0:r1], k, v, tok, dtype=torch.float64)
        lowp = naive_attention(q[:, :, r0:r1], k, v, tok, dtype=q.dtype)
        exact, lowp = exact.nan_to_num(0.0), lowp.nan_to_num(0.0)  # the empty row
        assert_fa_close(out[:, :, r0:r1], exact, lowp, what=f"q-block {qb}")
