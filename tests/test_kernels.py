"""Triton kernels (interpreter on CPU) against their PyTorch references, and the references
against first principles. Small shapes: odd N, 1 head, batch 2 with different valid key lengths.
"""

import math

import pytest
import torch

from xattn_video.kernels._common import cdiv
from xattn_video.kernels.estimate import estimate_block_scores, estimate_block_scores_ref
from xattn_video.kernels.select import (
    mask_to_indices,
    select_blocks,
    select_blocks_ref,
    valid_key_blocks,
)
from xattn_video.kernels.sparse_attention import (
    block_sparse_attention_fwd,
    block_sparse_attention_ref,
)

from ._tolerance import assert_fa_close, naive_attention

# (B, H, N, D, stride, block_size, kv_len per sample)
EST_SHAPES = [
    (1, 1, 200, 16, 4, 16, [200]),  # odd N, 1 head
    (2, 2, 130, 32, 8, 32, [130, 93]),  # batch 2, different valid lengths, partial group
    (1, 2, 64, 16, 16, 64, [64]),  # exactly one block
    (2, 1, 97, 16, 2, 16, [97, 1]),  # a single valid key
    (2, 1, 128, 16, 4, 16, [128, 64]),  # kv_len a multiple of S and of the block, < N
]


def _rand_qkv(B, H, N, D, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, N, D, generator=g).to(dtype) for _ in range(3)]


@pytest.mark.parametrize("shape", EST_SHAPES)
def test_estimate_reference_matches_definition(shape):
    """The vectorised reference equals a direct loop over the antidiagonal definition."""
    B, H, N, D, S, bs, lens = shape
    q, k, _ = _rand_qkv(B, H, N, D, torch.float64)
    kv_len = torch.tensor(lens)
    got = estimate_block_scores_ref(q, k, stride=S, block_size=bs, kv_len=kv_len)
    ng = cdiv(N, S)
    for b in range(B):
        n_valid_groups = cdiv(lens[b], S)
        for h in range(H):
            R = torch.zeros(ng, n_valid_groups, dtype=torch.float64)
            for i in range(ng):
                for j in range(n_valid_groups):
                    for s in range(S):
                        qi, kj = i * S + (S - 1 - s), j * S + s
                        if qi < N and kj < lens[b]:
                            R[i, j] += q[b, h, qi] @ k[b, h, kj]
            P = torch.softmax(R / (math.sqrt(D) * S), dim=-1)
            want = torch.zeros(cdiv(N, bs), cdiv(N, bs), dtype=torch.float64)
            for i in range(ng):
                for j in range(n_valid_groups):
                    want[i * S // bs, j * S // bs] += P[i, j]
            torch.testing.assert_close(got[b, h].double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", EST_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_estimate_triton_matches_reference(shape, dtype):
    B, H, N, D, S, bs, lens = shape
    q, k, _ = _rand_qkv(B, H, N, D, dtype, seed=1)
    kv_len = torch.tensor(lens)
    got = estimate_block_scores(q, k, stride=S, block_size=bs, kv_len=kv_len)
    want = estimate_block_scores_ref(q, k, stride=S, block_size=bs, kv_len=kv_len)
    # Row sums: the number of query groups per block (softmax rows sum to one).
    groups = torch.tensor([min(bs, N - i * bs) for i in range(cdiv(N, bs))])
    torch.testing.assert_close(
        want.sum(-1), (groups.float() / S).ceil().expand_as(want.sum(-1)), rtol=1e-5, atol=1e-5
    )
    # fp16 inputs are upcast exactly by both; differences are fp32 accumulation order only.
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # Key blocks without a valid key get exactly zero mass.
    valid = valid_key_blocks(kv_len, got.shape[-1], bs)
    assert (got.masked_select(~valid[:, None, None, :]) == 0).all()


@pytest.mark.parametrize("launch", [(256, 128, 16, 2), (128, 256, 8, 2)])
@pytest.mark.parametrize("S", [8, 16])
def test_estimate_wide_tiles_match_reference(launch, S):
    """The wide tiles ``benchmarks/probe_estimate_tiles.py`` tries by default (256 query groups
    x 128 key groups, 128 x 256: fewer L2 bytes per FLOP) give the reference's block scores,
    with key padding that splits a stride group."""
    q, k, _ = _rand_qkv(2, 1, 1100, 32, seed=3)
    kv_len = torch.tensor([1100, 777])
    kw = dict(stride=S, block_size=128, kv_len=kv_len)
    got = estimate_block_scores(q, k, launch=launch, flatten=True, kernel="triton", **kw)
    torch.testing.assert_close(got, estimate_block_scores_ref(q, k, **kw), rtol=1e-4, atol=1e-5)


def test_estimate_ignores_padded_keys():
    """Changing padded keys (>= kv_len) changes nothing in the estimate."""
    B, H, N, D, S, bs = 2, 2, 150, 16, 4, 16
    q, k, _ = _rand_qkv(B, H, N, D, seed=2)
    kv_len = torch.tensor([150, 70])
    k2 = k.clone()
    k2[1, :, 70:] = 1e3 * torch.randn_like(k2[1, :, 70:])
    a = estimate_block_scores(q, k, stride=S, block_size=bs, kv_len=kv_len)
    b = estimate_block_scores(q, k2, stride=S, block_size=bs, kv_len=kv_len)
    assert torch.equal(a, b)


@pytest.mark.parametrize("scale", [0.02, 0.5])
def test_estimate_takes_the_attention_scale(scale):
    """``scale`` s: the strided logits are s / S times the products, the default estimate of
    q * s * sqrt(D). (The op estimated at 1/sqrt(D) whatever its ``scale``.)"""
    B, H, N, D, S, bs, lens = EST_SHAPES[1]
    q, k, _ = _rand_qkv(B, H, N, D, seed=3)
    kw = dict(stride=S, block_size=bs, kv_len=torch.tensor(lens))
    want = estimate_block_scores_ref(q, k, scale=scale, **kw)
    same = estimate_block_scores_ref(q * (scale * math.sqrt(D)), k, **kw)
    torch.testing.assert_close(want, same, rtol=1e-5, atol=1e-6)
    assert (want - estimate_block_scores_ref(q, k, **kw)).abs().max() > 0.05
    got = estimate_block_scores(q, k, scale=scale, **kw)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def _random_scores(B, H, nbq, nbk, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, H, nbq, nbk, generator=g) ** 3


@pytest.mark.parametrize("threshold", [0.05, 0.5, 0.9, 0.99, 1.0])
def test_select_threshold_matches_reference_exactly(threshold):
    scores = _random_scores(2, 3, 7, 9, seed=3)
    kv_len = torch.tensor([9 * 16, 5 * 16 - 3])
    kw = dict(block_size=16, threshold=threshold, kv_len=kv_len)
    assert torch.equal(select_blocks(scores, **kw), select_blocks_ref(scores, **kw))


@pytest.mark.parametrize("per_head", [False, True])
def test_select_threshold_one_keeps_every_valid_block(per_head):
    """tau >= 1 keeps every valid block, zero-scored ones too, also as per-head thresholds."""
    scores = torch.tensor([3.0, 1.0, 0.0, 0.0, 0.0]).view(1, 1, 1, 5).repeat(2, 2, 2, 1)
    kv_len = torch.tensor([5 * 16, 4 * 16 - 3])
    threshold = torch.tensor([1.0, 1.0]) if per_head else 1.0
    mask = select_blocks(scores, block_size=16, threshold=threshold, kv_len=kv_len)
    assert mask.sum(-1).tolist() == [[[5, 5]] * 2, [[4, 4]] * 2]


@pytest.mark.parametrize("ratio", [1e-10, 1e-3, 0.3, 0.5, 1.0])
def test_select_ratio_matches_reference_exactly(ratio):
    scores = _random_scores(2, 2, 5, 11, seed=4)
    kv_len = torch.tensor([11 * 16, 6 * 16])
    kw = dict(block_size=16, ratio=ratio, kv_len=kv_len)
    mask = select_blocks(scores, **kw)
    assert torch.equal(mask, select_blocks_ref(scores, **kw))
    n_keep = [max(1, math.ceil(ratio * n)) for n in (11, 6)]
    for b in range(2):
        assert (mask[b].sum(-1) == n_keep[b]).all()


def test_select_forced_rows_and_cols():
    scores = _random_scores(2, 2, 6, 6, seed=5)
    kv_len = torch.tensor([96, 70])
    force_rows = torch.zeros(2, 6, dtype=torch.bool)
    force_rows[:, 4:] = True
    force_cols = torch.zeros(2, 6, dtype=torch.bool)
    force_cols[0, 5] = True
    force_cols[1, 4] = True
    kw = dict(block_size=16, threshold=0.3, kv_len=kv_len, force_rows=force_rows)
    mask = select_blocks(scores, force_cols=force_cols, **kw)
    assert torch.equal(mask, select_blocks_ref(scores, force_cols=force_cols, **kw))
    valid = valid_key_blocks(kv_len, 6, 16)
    assert torch.equal(mask[:, :, 4:], valid[:, None, None, :].expand(2, 2, 2, 6))
    assert mask[0, :, :, 5].all() and mask[1, :, :, 4].all()
    assert not mask[1, :, :, 5].any()  # block 5 of sample 1 holds only padding


def test_select_no_implicit_block_zero():
    scores = torch.zeros(1, 1, 3, 4)
    scores[0, 0, :, 2] = 1.0
    scores[0, 0, :, 0] = 1e-6
    mask = select_blocks(scores, block_size=16, threshold=0.9)
    assert mask[0, 0, :, 2].all() and not mask[0, 0, :, 0].any()


@pytest.mark.parametrize("seed", range(4))
def test_select_threshold_monotone(seed):
    """A higher threshold keeps a superset of blocks (so density never falls)."""
    scores = _random_scores(1, 2, 8, 8, seed=seed)
    prev = None
    for thr in (0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 1.0):
        mask = select_blocks(scores, block_size=16, threshold=thr)
        if prev is not None:
            assert (mask | ~prev).all() and mask.sum() >= prev.sum()
        prev = mask


def test_mask_to_indices_exact():
    mask = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(6)) < 0.4
    counts, idx = mask_to_indices(mask)
    for b in range(2):
        for h in range(3):
            for i in range(5):
                want = mask[b, h, i].nonzero().flatten().tolist()
                assert counts[b, h, i] == len(want)
                assert idx[b, h, i, : len(want)].tolist() == want
                assert (idx[b, h, i, len(want) :] == 7).all()


# (B, H, N, D, block_size, kv_len)
ATTN_SHAPES = [
    (1, 1, 200, 16, 32, [200]),  # partial last block, 1 head
    (2, 2, 130, 32, 64, [130, 93]),  # batch 2 with different valid key lengths
    (2, 1, 100, 64, 16, [100, 17]),
]
DENSITIES = ["one_per_row", 0.3, "all"]


def _make_mask(B, H, nb, kv_len, block, density, seed):
    valid = valid_key_blocks(kv_len, nb, block)[:, None, None, :].expand(B, H, nb, nb)
    g = torch.Generator().manual_seed(seed)
    if density == "all":
        return valid.clone()
    if density == "one_per_row":
        n_valid = valid[:, :, :1].sum(-1, keepdim=True)  # (B,H,1,1)
        pick = (torch.rand(B, H, nb, 1, generator=g) * n_valid).long()
        return torch.zeros(B, H, nb, nb, dtype=torch.bool).scatter_(-1, pick, True)
    mask = (torch.rand(B, H, nb, nb, generator=g) < density) & valid
    mask[..., 0] = True  # every row keeps at least one block
    return mask


def _token_mask(mask, block, n, kv_len):
    tok = mask.repeat_interleave(block, -2).repeat_interleave(block, -1)[..., :n, :n]
    return tok & (torch.arange(n)[None, :] < kv_len[:, None])[:, None, None, :]


@pytest.mark.parametrize("shape", ATTN_SHAPES)
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize(
    "dtype, use_tma",
    [(torch.float32, False), (torch.float16, False), (torch.float16, True)],
)
def test_sparse_attention_triton_fa_rule(shape, density, dtype, use_tma):
    B, H, N, D, bs, lens = shape
    q, k, v = _rand_qkv(B, H, N, D, dtype, seed=7)
    kv_len = torch.tensor(lens)
    nb = cdiv(N, bs)
    mask = _make_mask(B, H, nb, kv_len, bs, density, seed=8)
    counts, idx = mask_to_indices(mask)
    launch = (min(32, bs), 16, 4, 1)  # small tiles keep the interpreter fast
    out, lse = block_sparse_attention_fwd(
        q, k, v, counts, idx, block_size=bs, kv_len=kv_len, return_lse=True, use_tma=use_tma,
        launch=launch,
    )  # fmt: skip
    tok = _token_mask(mask, bs, N, kv_len)
    exact = naive_attention(q, k, v, tok, dtype=torch.float64)
    lowp = naive_attention(q, k, v, tok, dtype=dtype)
    assert_fa_close(out, exact, lowp)
    logits = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(D)
    lse_exact = torch.logsumexp(logits.masked_fill(~tok, float("-inf")), dim=-1)
    torch.testing.assert_close(lse.double(), lse_exact, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("shape", ATTN_SHAPES)
def test_sparse_reference_matches_masked_sdpa(shape):
    B, H, N, D, bs, lens = shape
    q, k, v = _rand_qkv(B, H, N, D, torch.float64, seed=9)
    kv_len = torch.tensor(lens)
    nb = cdiv(N, bs)
    mask = _make_mask(B, H, nb, kv_len, bs, 0.4, seed=10)
    mask[0, 0, 1] = False  # a query block with no key block
    last = B - 1  # a query block whose only key blocks are padding (none when nothing is padded)
    mask[last, -1, 0] = valid_key_blocks(kv_len, nb, bs)[last].logical_not()
    out, lse = block_sparse_attention_ref(q, k, v, mask, block_size=bs, kv_len=kv_len,
                                          return_lse=True)  # fmt: skip
    tok = _token_mask(mask, bs, N, kv_len)
    empty = ~tok.any(-1)  # (B, H, N)
    assert empty[0, 0, bs : 2 * bs].all() and empty[last, -1, :bs].all()
    want = naive_attention(q, k, v, tok).masked_fill(empty[..., None], 0.0)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    logits = (q @ k.transpose(-1, -2)) / math.sqrt(D)
    lse_exact = torch.logsumexp(logits.masked_fill(~tok, float("-inf")), dim=-1)
    torch.testing.assert_close(lse.double(), lse_exact, rtol=1e-6, atol=1e-6)
    assert torch.isneginf(lse[empty]).all() and torch.isfinite(lse[~empty]).all()


def test_sparse_attention_empty_rows_give_zero():
    q, k, v = _rand_qkv(1, 1, 64, 16, seed=11)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, 1, 2] = True
    counts, idx = mask_to_indices(mask)
    out, lse = block_sparse_attention_fwd(q, k, v, counts, idx, block_size=16, return_lse=True)
    assert (out[0, 0, :16] == 0).all() and (out[0, 0, 32:] == 0).all()
    assert torch.isinf(lse[0, 0, :16]).all() and torch.isfinite(lse[0, 0, 16:32]).all()
    ref = naive_attention(q[:, :, 16:32], k[:, :, 32:48], v[:, :, 32:48], dtype=torch.float64)
    torch.testing.assert_close(out[:, :, 16:32].double(), ref, rtol=1e-5, atol=1e-6)


def test_sparse_attention_padded_keys_never_attended():
    B, H, N, D, bs = 2, 2, 100, 16, 16
    q, k, v = _rand_qkv(B, H, N, D, seed=12)
    kv_len = torch.tensor([100, 41])
    mask = _make_mask(B, H, cdiv(N, bs), kv_len, bs, "all", seed=0)
    counts, idx = mask_to_indices(mask)
    out = block_sparse_attention_fwd(q, k, v, counts, idx, block_size=bs, kv_len=kv_len)
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 41:] = 50.0
    v2[1, :, 41:] = 1e4
    out2 = block_sparse_attention_fwd(q, k2, v2, counts, idx, block_size=bs, kv_len=kv_len)
    assert torch.equal(out, out2)


@pytest.mark.parametrize("use_tma", [False, True])
def test_sparse_attention_ignores_nan_and_inf_in_padded_keys_and_values(use_tma):
    """NaN / inf past kv_len (inside the last, partial key block and beyond) never reach the
    output, on the pointer and the TMA loads: dropping the TMA path's zeroing of padded value
    rows (0 * NaN is NaN) passed the CPU tests, which padded with finite values only."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 64, 16, generator=g).half() for _ in range(3))
    kv_len = torch.tensor([40])  # key block 2 (keys 32..47) holds 8 padded keys
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool) & (torch.arange(4) < 3)
    counts, idx = mask_to_indices(mask)
    kw = dict(block_size=16, kv_len=kv_len, use_tma=use_tma, launch=(16, 16, 4, 1))
    want = block_sparse_attention_fwd(q, k, v, counts, idx, **kw)
    k2, v2 = k.clone(), v.clone()
    v2[0, 0, 45, 3], v2[0, 0, 40, 0], k2[0, 0, 41, 1] = float("nan"), float("inf"), float("inf")
    v2[0, 0, 50:] = float("nan")  # a whole padded block, not listed
    got = block_sparse_attention_fwd(q, k2, v2, counts, idx, **kw)
    assert not want.isnan().any() and torch.equal(got, want)


def test_estimate_accepts_transposed_views():
    """The (B, N, H, D) -> (B, H, N, D) views diffusers processors hand over are fine."""
    g = torch.Generator().manual_seed(13)
    q, k = (torch.randn(1, 64, 2, 16, generator=g).transpose(1, 2) for _ in range(2))
    kw = dict(stride=4, block_size=16)
    want = estimate_block_scores_ref(q.contiguous(), k.contiguous(), **kw)
    torch.testing.assert_close(estimate_block_scores_ref(q, k, **kw), want)
    torch.testing.assert_close(estimate_block_scores(q, k, **kw), want, rtol=1e-5, atol=1e-6)
