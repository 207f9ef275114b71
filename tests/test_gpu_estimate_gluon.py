"""GPU checks of the Gluon estimate (``pytest -m gpu`` on an sm90 GPU): block scores against the
fp32 reference (the tolerance of the Triton estimate's test) with key padding that splits a
stride group, token counts the stride does not divide, B=2, head dims 64 / 128, strides 8 / 16,
64 / 128-key tiles, ring depths 2-4 with and without the epilogue overlap (``pre``), up to
119,056 tokens; key blocks past kv_len exactly zero; the threshold masks
agreeing up to near-ties; and the fp8 path equal to the Triton fp8 estimate (same
quantization) up to fp32 summation order."""

import pytest
import torch

from xattn_video.kernels.estimate import estimate_block_scores, estimate_block_scores_ref
from xattn_video.kernels.select import select_blocks, valid_key_blocks
from xattn_video.kernels.sparse_attention_gluon import HAS_GLUON

from ._spy import record_kwarg

pytestmark = pytest.mark.gpu

SM90_GLUON = HAS_GLUON and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
needs_sm90_gluon = pytest.mark.skipif(
    not SM90_GLUON, reason="needs a CUDA GPU of sm90 (wgmma) and Triton >= 3.6"
)

CASES = [  # (B, n, head dim, kv_len per sample)
    (2, 1000, 128, (999, 1)),
    (2, 3000, 128, (3000, 2345)),
    (2, 2056, 64, (2056, 1999)),
    (1, 67576, 128, (67476,)),
    (1, 119056, 128, (118957,)),
]


def _qk(B, n, d, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(B, 2, n, d, device="cuda", generator=g).bfloat16() for _ in range(2))


@needs_sm90_gluon
@pytest.mark.parametrize("B, n, d, lens", CASES)
@pytest.mark.parametrize("stride", [8, 16])
@pytest.mark.parametrize(
    "block_n, stages, pre", [(128, 2, 1), (128, 3, 2), (128, 3, 0), (64, 4, 3)]
)
def test_gluon_estimate_matches_reference(B, n, d, lens, stride, block_n, stages, pre):
    from xattn_video.kernels.estimate_gluon import estimate_block_scores_gluon

    q, k = _qk(B, n, d, seed=n + stride)
    kv_len = torch.tensor(lens, device="cuda")
    kw = dict(stride=stride, block_size=128, kv_len=kv_len)
    got = estimate_block_scores_gluon(q, k, block_n=block_n, stages=stages, pre=pre, **kw)
    want = estimate_block_scores_ref(q, k, **kw)
    torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-5)
    valid = valid_key_blocks(kv_len, got.shape[-1], 128)
    assert (got.masked_select(~valid[:, None, None, :]) == 0).all()
    m_got = select_blocks(got, block_size=128, threshold=0.9, kv_len=kv_len)
    m_want = select_blocks(want, block_size=128, threshold=0.9, kv_len=kv_len)
    assert (m_got != m_want).float().mean() < 1e-3


@needs_sm90_gluon
@pytest.mark.parametrize("B, n, d, lens", [CASES[1], CASES[2], CASES[4]])
@pytest.mark.parametrize("stride", [8, 16])
def test_gluon_fp8_estimate_equals_triton_fp8(B, n, d, lens, stride):
    from xattn_video.kernels.estimate_gluon import estimate_block_scores_gluon

    q, k = _qk(B, n, d, seed=n - stride)
    kw = dict(stride=stride, block_size=128, kv_len=torch.tensor(lens, device="cuda"),
              precision="fp8")  # fmt: skip
    want = estimate_block_scores(q, k, kernel="triton", **kw)
    for block_n, stages, pre in ((128, 4, 3), (128, 6, 5), (128, 6, 0), (64, 8, 7)):
        got = estimate_block_scores_gluon(q, k, block_n=block_n, stages=stages, pre=pre, **kw)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=5e-5)


@needs_sm90_gluon
@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_gluon_and_triton_estimates_take_the_attention_scale(precision):
    """``scale`` 0.03 (not 1/sqrt(128)): both GPU estimates, Gluon and Triton, equal the
    reference at that scale (bf16; fp8: the Triton fp8 estimate, as above)."""
    from xattn_video.kernels.estimate_gluon import estimate_block_scores_gluon

    q, k = _qk(2, 3000, 128, seed=11)
    kw = dict(stride=8, block_size=128, kv_len=torch.tensor((3000, 2345), device="cuda"),
              precision=precision, scale=0.03)  # fmt: skip
    gluon = estimate_block_scores_gluon(q, k, **kw)
    triton_scores = estimate_block_scores(q, k, kernel="triton", **kw)
    if precision == "bf16":
        want = estimate_block_scores_ref(q, k, **kw)
        torch.testing.assert_close(triton_scores, want, rtol=2e-3, atol=2e-5)
        torch.testing.assert_close(gluon, want, rtol=2e-3, atol=2e-5)
    else:
        torch.testing.assert_close(gluon, triton_scores, rtol=1e-4, atol=5e-5)
    default = estimate_block_scores(q, k, kernel="triton", **{**kw, "scale": None})
    assert (default - triton_scores).abs().max() > 0.02  # 0.04 here: far above the tolerance


@needs_sm90_gluon
def test_forced_gluon_estimate_through_the_kernel_entry_point():
    """estimate_block_scores(kernel="gluon") runs the Gluon kernel (bit-identical to calling it)
    and kernel="triton" the Triton one, at a size where "auto" would consult the table."""
    from xattn_video.kernels.estimate_gluon import estimate_block_scores_gluon

    q, k = _qk(1, 40000, 128, seed=5)
    kw = dict(stride=8, block_size=128)
    forced = estimate_block_scores(q, k, kernel="gluon", **kw)
    assert torch.equal(forced, estimate_block_scores_gluon(q, k, **kw))
    triton_scores = estimate_block_scores(q, k, kernel="triton", **kw)
    torch.testing.assert_close(forced, triton_scores, rtol=2e-3, atol=2e-5)


@needs_sm90_gluon
@pytest.mark.parametrize("precision, stride", [("bf16", 8), ("bf16", 16), ("fp8", 8), ("fp8", 16)])
def test_auto_estimate_follows_the_measured_table(precision, stride):
    """kernel="auto" at a large N runs the Gluon kernel with the table's tile / ring where this
    GPU, precision and stride have an entry and GLUON_ESTIMATE_AUTO is on (bit-identical), the
    Triton kernel otherwise; kernel="gluon" runs the table's tile / ring."""
    from xattn_video.kernels.estimate_gluon import estimate_block_scores_gluon
    from xattn_video.kernels.tuning import GLUON_ESTIMATE, GLUON_ESTIMATE_AUTO, gpu_name

    q, k = _qk(1, 40000, 128, seed=stride)
    kw = dict(stride=stride, block_size=128, precision=precision)
    auto = estimate_block_scores(q, k, **kw)
    hit = GLUON_ESTIMATE.get((gpu_name(q), precision, stride, 128))
    if hit is None or not GLUON_ESTIMATE_AUTO:
        want = estimate_block_scores(q, k, kernel="triton", **kw)
    else:
        want = estimate_block_scores_gluon(q, k, block_n=hit[0], stages=hit[1], **kw)
    assert torch.equal(auto, want)
    if hit is not None:
        forced = estimate_block_scores(q, k, kernel="gluon", **kw)
        assert torch.equal(forced, estimate_block_scores_gluon(q, k, block_n=hit[0],
                                                               stages=hit[1], **kw))  # fmt: skip


@needs_sm90_gluon
@pytest.mark.parametrize("precision, stride", [("bf16", 8), ("bf16", 16), ("fp8", 8)])
def test_prefer_gluon_through_the_op(monkeypatch, precision, stride):
    """xattention(estimate_kernel="prefer-gluon") at 40k tokens: the Gluon estimate runs where
    the measured table has this GPU / precision / stride (bf16 stride 16 has no entry on the
    H200: the Triton one then), never with "auto"; the mask agrees with "auto"'s up to
    near-ties, and the output is the attention inside the mask it returns."""
    import xattn_video as xv
    from xattn_video.kernels import estimate_gluon
    from xattn_video.kernels.tuning import GLUON_ESTIMATE, gpu_name

    calls = record_kwarg(monkeypatch, estimate_gluon, "estimate_block_scores_gluon", "precision",
                         None)  # fmt: skip
    q, k = _qk(1, 40000, 128, seed=stride)
    v = torch.randn_like(q)
    kw = dict(threshold=0.9, stride=stride, block_size=128)
    m_auto = xv.estimate_block_mask(q, k, precision=precision, **kw)
    assert calls == []
    m_pg = xv.estimate_block_mask(q, k, precision=precision, kernel="prefer-gluon", **kw)
    hit = GLUON_ESTIMATE.get((gpu_name(q), precision, stride, 128))
    assert calls == ([precision] if hit else [])
    assert (m_auto != m_pg).float().mean() < 1e-3
    out, mask = xv.xattention(q, k, v, estimate_kernel="prefer-gluon", estimate_precision=precision,
                              return_mask=True, **kw)  # fmt: skip
    assert torch.equal(mask, m_pg)
    assert torch.equal(out, xv.xattention(q, k, v, mask=mask, block_size=128))
