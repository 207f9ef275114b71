"""CUDA-only checks at real sizes (run with ``pytest -m gpu`` on a GPU machine).

bf16 against fp64/fp32 references with the flash-attention tolerance rule, up to N = 119,056
(HunyuanVideo 720p x 129 frames + 256 text tokens). At that size the exact reference is
computed for a sample of query blocks (the last, partial one included).
"""

import math

import pytest
import torch

import xattn_video as xv
from xattn_video.kernels.estimate import estimate_block_scores, estimate_block_scores_ref
from xattn_video.kernels.select import mask_to_indices, select_blocks, valid_key_blocks
from xattn_video.kernels.sparse_attention import block_sparse_attention_fwd

from ._tolerance import assert_fa_close, naive_attention

pytestmark = pytest.mark.gpu


def _qkv(B, H, N, D, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(B, H, N, D, device="cuda", generator=g).to(dtype) for _ in range(3)]


def _sampled_reference_check(q, k, v, mask, block, kv_len, out, rows_blocks):
    B, H, N, D = q.shape
    key_ok = torch.arange(N, device="cuda")[None, :] < kv_len[:, None]
    for qb in rows_blocks:
        r0, r1 = qb * block, min(N, (qb + 1) * block)
        tok = mask[:, :, qb].repeat_interleave(block, -1)[..., :N] & key_ok[:, None, :]
        tok = tok[:, :, None, :]
        qs = q[:, :, r0:r1]
        exact = naive_attention(qs, k, v, tok, dtype=torch.float64)
        lowp = naive_attention(qs, k, v, tok, dtype=q.dtype)
        assert_fa_close(out[:, :, r0:r1], exact, lowp, what=f"q-block {qb}")


@pytest.mark.parametrize("n", [119056, 67576])
@pytest.mark.parametrize("density", [0.1, 0.3, 1.0])
@pytest.mark.parametrize("use_tma", [True, False])
def test_sparse_attention_bf16_large(n, density, use_tma):
    B, H, D, block = 1, 2, 128, 128
    q, k, v = _qkv(B, H, n, D, torch.bfloat16)
    kv_len = torch.tensor([n - 200], device="cuda")  # padded text tail
    nb = math.ceil(n / block)
    scores = torch.rand(B, H, nb, nb, device="cuda")
    mask = select_blocks(scores, block_size=block, ratio=density, kv_len=kv_len)
    counts, idx = mask_to_indices(mask)
    out = block_sparse_attention_fwd(
        q, k, v, counts, idx, block_size=block, kv_len=kv_len, use_tma=use_tma
    )
    rows = [0, 1, nb // 2, nb - 2, nb - 1]
    _sampled_reference_check(q, k, v, mask, block, kv_len, out, rows)


@pytest.mark.parametrize("B,H,N,D,block", [(2, 3, 1000, 64, 64), (2, 1, 777, 128, 128),
                                           (1, 2, 4099, 128, 64), (3, 2, 300, 32, 128)])  # fmt: skip
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sparse_attention_odd_shapes(B, H, N, D, block, dtype):
    q, k, v = _qkv(B, H, N, D, dtype, seed=1)
    if B == 2:  # the (B, N, H, D) -> (B, H, N, D) view the diffusers processors produce
        q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    kv_len = torch.tensor([N, N // 3 + 1, 5][:B], device="cuda")
    nb = math.ceil(N / block)
    mask = select_blocks(torch.rand(B, H, nb, nb, device="cuda"), block_size=block,
                         threshold=0.5, kv_len=kv_len)  # fmt: skip
    out, lse = xv.block_sparse_attention(q, k, v, mask, block_size=block, kv_len=kv_len,
                                         return_lse=True)  # fmt: skip
    tok = mask.repeat_interleave(block, -2).repeat_interleave(block, -1)[..., :N, :N]
    tok = tok & (torch.arange(N, device="cuda")[None, :] < kv_len[:, None])[:, None, None, :]
    assert_fa_close(out, naive_attention(q, k, v, tok, dtype=torch.float64),
                    naive_attention(q, k, v, tok))  # fmt: skip
    logits = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(D)
    lse_ref = torch.logsumexp(logits.masked_fill(~tok, float("-inf")), -1)
    torch.testing.assert_close(lse.double(), lse_ref, rtol=1e-4, atol=2e-2)


@pytest.mark.parametrize("n,stride", [(119056, 8), (119056, 16), (67576, 8), (5000, 4)])
def test_estimate_bf16_matches_reference(n, stride):
    q, k, _ = _qkv(1, 1, n, 128, torch.bfloat16, seed=2)
    kv_len = torch.tensor([n - 100], device="cuda")
    got = estimate_block_scores(q, k, stride=stride, block_size=128, kv_len=kv_len)
    want = estimate_block_scores_ref(q, k, stride=stride, block_size=128, kv_len=kv_len)
    torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-5)
    valid = valid_key_blocks(kv_len, got.shape[-1], 128)
    assert (got.masked_select(~valid[:, None, None, :]) == 0).all()
    # Selection from kernel scores vs reference scores: they may differ only at near-ties.
    thr = 0.9
    m_got = select_blocks(got, block_size=128, threshold=thr, kv_len=kv_len)
    m_want = select_blocks(want, block_size=128, threshold=thr, kv_len=kv_len)
    assert (m_got != m_want).float().mean() < 1e-3


def test_op_backends_agree_on_gpu():
    q, k, v = _qkv(2, 4, 3000, 64, torch.float16, seed=3)
    kv_len = torch.tensor([3000, 2100], device="cuda")
    # the estimate pinned to bf16 on both backends ("auto" is fp8 on Hopper's Triton backend)
    kw = dict(threshold=0.9, stride=8, block_size=64, kv_len=kv_len, return_mask=True,
              dense_from=2800, estimate_precision="bf16")  # fmt: skip
    out_t, mask_t = xv.xattention(q.float(), k.float(), v.float(), backend="torch", **kw)
    out_k, mask_k = xv.xattention(q, k, v, backend="triton", **kw)
    assert (mask_t != mask_k).float().mean() < 1e-3
    same_rows = (mask_t == mask_k).all(-1)  # compare outputs where the rows' masks agree
    rows = same_rows.repeat_interleave(64, -1)[..., :3000]
    lowp = xv.block_sparse_attention(q, k, v, mask_k, block_size=64, kv_len=kv_len,
                                     backend="torch")  # fmt: skip
    exact = xv.block_sparse_attention(q.double(), k.double(), v.double(), mask_k, block_size=64,
                                      kv_len=kv_len, backend="torch")  # fmt: skip
    assert_fa_close(out_k[rows], exact[rows], lowp[rows])


def test_last_sample_of_a_batch_past_2_31_elements():
    """The kernels' per-(b, h) base offsets are int64: here the last sample's q / k / v start
    past 2**31 elements (in int32, ``b * stride`` wrapped there) and so do the estimate's
    scratch rows of the last heads. The op's last sample, bf16 and fp8, equals the same sample
    run alone; its sampled rows (the text rows, and the key block holding kv_len, dense) match
    fp64, as do the portable (pointer) kernel's; a NaN in it NaNs its query block only. B=9, H=16,
    N=139,264, D=128: 5.1 GB per bf16 tensor, ~11 GB of estimate scratch, under ~55 GB in all.
    """
    B, H, N, D, block = 9, 16, 139264, 128, 128
    if torch.cuda.get_device_properties(0).total_memory < 70 * 2**30:
        pytest.skip("needs a GPU of 80 GB")
    assert (B - 1) * H * N * D >= 2**31  # the last sample's first element
    g = torch.Generator(device="cuda").manual_seed(9)
    q, k, v = (torch.randn(B, H, N, D, device="cuda", generator=g, dtype=torch.bfloat16)
               for _ in range(3))  # fmt: skip
    nan_head, nan_block = 3, 5
    q[-1, nan_head, nan_block * block + 17, 5] = float("nan")
    kv_len = torch.full((B,), N, device="cuda")
    kv_len[-1] = N - 200  # the last sample's key block 1086 holds kv_len, 1087 is padding
    nb = math.ceil(N / block)
    kw = dict(stride=8, block_size=block, ratio=0.1, dense_from=N - 300, return_mask=True)
    rows = [0, nb // 2, nb - 1]  # nb - 1: a dense text row

    def check_nan_block(out):
        bad = torch.zeros(H, N, dtype=torch.bool, device="cuda")
        bad[nan_head, nan_block * block : (nan_block + 1) * block] = True
        assert out[-1][bad].isnan().all()
        assert out[-1][~bad].isfinite().all()

    def check_alone(out, mask, **extra):
        out1, mask1 = xv.xattention(q[-1:], k[-1:], v[-1:], kv_len=kv_len[-1:], **kw, **extra)
        assert torch.equal(mask[-1:], mask1)
        torch.testing.assert_close(out[-1:], out1, rtol=0, atol=0, equal_nan=True)

    out, mask = xv.xattention(q, k, v, kv_len=kv_len, **kw)
    check_alone(out, mask)
    check_nan_block(out)
    last = (q[-1:], k[-1:], v[-1:], mask[-1:], block, kv_len[-1:])
    _sampled_reference_check(*last, out[-1:], rows)
    del out
    counts, idx = mask_to_indices(mask)
    out = block_sparse_attention_fwd(
        q, k, v, counts, idx, block_size=block, kv_len=kv_len, kernel="portable", use_tma=False
    )  # the pointer kernel
    _sampled_reference_check(*last, out[-1:], rows)
    del out, counts, idx, mask
    if torch.cuda.get_device_capability()[0] >= 9:  # fp8: both quantizers, the fp8 estimate
        out, mask = xv.xattention(q, k, v, kv_len=kv_len, precision="fp8", **kw)
        check_alone(out, mask, precision="fp8")
        check_nan_block(out)
