"""The public op: input checks, both backends, planted patterns, padding, text rows/columns."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import xattn_video as xv
from xattn_video.attention import block_scores, dense_blocks
from xattn_video.kernels._common import cdiv
from xattn_video.kernels.select import select_blocks
from xattn_video.layout import inverse_permutation, tile_permutation

from ._tolerance import assert_fa_close, naive_attention

BACKENDS = ["torch", "triton"]  # "triton" runs in the interpreter on CPU


def _qkv(B, H, N, D, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, N, D, generator=g).to(dtype) for _ in range(3)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_blocks_equals_dense_sdpa(backend):
    q, k, v = _qkv(2, 2, 150, 16)
    out, mask = xv.xattention(
        q, k, v, threshold=1.0, stride=4, block_size=32, backend=backend, return_mask=True
    )
    assert mask.all()
    want = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    assert_fa_close(out, want, naive_attention(q, k, v))


@pytest.mark.parametrize("backend", BACKENDS)
def test_given_mask_equals_masked_sdpa(backend):
    B, H, N, D, bs = 2, 2, 100, 32, 16
    q, k, v = _qkv(B, H, N, D, seed=1)
    nb = cdiv(N, bs)
    mask = torch.rand(B, H, nb, nb, generator=torch.Generator().manual_seed(2)) < 0.35
    mask[..., 3] = True
    kv_len = torch.tensor([100, 60])
    out = xv.block_sparse_attention(q, k, v, mask, block_size=bs, kv_len=kv_len, backend=backend)
    tok = mask.repeat_interleave(bs, -2).repeat_interleave(bs, -1)[..., :N, :N]
    tok = tok & (torch.arange(N)[None, :] < kv_len[:, None])[:, None, None, :]
    want = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=tok)
    assert_fa_close(out, want, naive_attention(q, k, v, tok))


def test_backends_agree_on_mask_and_output():
    q, k, v = _qkv(2, 3, 190, 16, seed=3)
    kv_len = torch.tensor([190, 111])
    kw = dict(threshold=0.8, stride=8, block_size=32, kv_len=kv_len, return_mask=True)
    out_t, mask_t = xv.xattention(q, k, v, backend="torch", **kw)
    out_k, mask_k = xv.xattention(q, k, v, backend="triton", **kw)
    assert torch.equal(mask_t, mask_k)
    assert_fa_close(out_k, out_t.double(), naive_attention(q, k, v, None))
    assert 0.0 < xv.block_density(mask_k, block_size=32, kv_len=kv_len) < 1.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("threshold", [0.5, 0.9, 0.99])
def test_planted_pattern_is_always_selected(backend, threshold):
    """Each query block made to attend one chosen key block: that block is always selected."""
    B, H, N, D, bs, S = 1, 2, 128, 16, 16, 4
    nb = N // bs
    g = torch.Generator().manual_seed(4)
    target = torch.randperm(nb, generator=g)
    dirs = torch.linalg.qr(torch.randn(D, D, generator=g))[0][:, :nb].T  # orthonormal
    q = 0.1 * torch.randn(B, H, N, D, generator=g)
    k = 0.1 * torch.randn(B, H, N, D, generator=g)
    for i in range(nb):
        q[:, :, i * bs : (i + 1) * bs] += 6.0 * dirs[i]
        k[:, :, target[i] * bs : (target[i] + 1) * bs] += 6.0 * dirs[i]
    mask = xv.estimate_block_mask(
        q, k, threshold=threshold, stride=S, block_size=bs, backend=backend
    )
    assert mask[:, :, torch.arange(nb), target].all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_padded_keys_never_selected_nor_attended(backend):
    B, H, N, D, bs = 2, 2, 120, 16, 16
    q, k, v = _qkv(B, H, N, D, seed=5)
    kv_len = torch.tensor([120, 50])
    kw = dict(threshold=0.9, stride=4, block_size=bs, kv_len=kv_len, backend=backend)
    out, mask = xv.xattention(q, k, v, return_mask=True, **kw)
    assert not mask[1, :, :, cdiv(50, bs) :].any()
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 50:] = 30.0
    v2[1, :, 50:] = -1e4
    out2, mask2 = xv.xattention(q, k2, v2, return_mask=True, **kw)
    assert torch.equal(mask, mask2) and torch.equal(out, out2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dense_from_keeps_text_rows_and_columns(backend):
    B, H, N, D, bs = 2, 1, 100, 16, 16
    q, k, v = _qkv(B, H, N, D, seed=6)
    n_video = 70
    kv_len = torch.tensor([90, 75])  # text valid up to 90 / 75, padded after
    mask = xv.estimate_block_mask(
        q, k, threshold=0.2, stride=4, block_size=bs, kv_len=kv_len, dense_from=n_video,
        backend=backend,
    )  # fmt: skip
    text_blocks = range(n_video // bs, cdiv(N, bs))
    for b, L in enumerate(kv_len.tolist()):
        valid_cols = cdiv(L, bs)
        for j in text_blocks:
            assert mask[b, :, j, :valid_cols].all()  # text query rows dense
            if j < valid_cols:
                assert mask[b, :, :, j].all()  # valid text key columns dense
        assert not mask[b, :, :, valid_cols:].any()
    assert not mask[:, :, : n_video // bs, : n_video // bs].all()  # video part is sparse


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_mask_is_estimated_at_the_attention_scale(backend):
    """xattention's ``scale`` reached only the attention: the mask was estimated at 1/sqrt(D),
    so ``threshold`` measured another softmax's mass (0.02 here: the same 0.40 density, but
    67% of the true mass kept instead of 90%)."""
    q, k, v = _qkv(1, 2, 256, 16, seed=9)
    kw = dict(threshold=0.9, stride=4, block_size=32, backend=backend)
    for scale in (0.02, 0.5):
        want = xv.estimate_block_mask(q, k, scale=scale, **kw)
        assert not torch.equal(want, xv.estimate_block_mask(q, k, **kw))
        out, mask = xv.xattention(q, k, v, scale=scale, return_mask=True, **kw)
        assert torch.equal(mask, want)
        ref = xv.xattention(q, k, v, scale=scale, mask=want, block_size=32, backend=backend)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dense_from_at_the_end_forces_nothing(backend):
    """dense_from = N (valid: no text) forced the last partial block's row and column dense:
    its padded end (13 * 16 = 208) passes 200. N - 1 forces exactly that row and column."""
    q, k, _ = _qkv(1, 2, 200, 16, seed=8)
    kw = dict(threshold=0.3, stride=4, block_size=16, backend=backend)
    plain = xv.estimate_block_mask(q, k, **kw)
    assert not plain[..., 12, :].all() and not plain[..., 12].all()  # else the test shows nothing
    for df in (200, torch.tensor([200]), torch.tensor(200, dtype=torch.int32)):
        assert torch.equal(xv.estimate_block_mask(q, k, dense_from=df, **kw), plain)
    last = xv.estimate_block_mask(q, k, dense_from=199, **kw)
    expected = plain.clone()
    expected[..., 12, :] = True
    expected[..., 12] = True
    assert torch.equal(last, expected)


def test_dense_blocks_helper():
    got = dense_blocks(torch.tensor([33, 64]), 2, 80, 16, "cpu")
    assert got.tolist() == [[False, False, True, True, True], [False, False, False, False, True]]
    assert dense_blocks(None, 2, 80, 16, "cpu") is None
    assert dense_blocks(75, 1, 75, 16, "cpu").tolist() == [[False] * 5]  # last block ends at 75
    assert dense_blocks(74, 1, 75, 16, "cpu").tolist() == [[False] * 4 + [True]]


def test_ratio_mode_pins_density():
    q, k, _ = _qkv(1, 2, 256, 16, seed=7)
    mask = xv.estimate_block_mask(q, k, threshold=None, ratio=0.25, stride=4, block_size=16)
    assert (mask.sum(-1) == 4).all()
    assert xv.block_density(mask, block_size=16) == pytest.approx(0.25)


def test_mask_reuse_and_return_lse():
    q, k, v = _qkv(1, 2, 96, 16, seed=8)
    out1, mask = xv.xattention(q, k, v, stride=4, block_size=16, return_mask=True)
    out2, lse = xv.xattention(q, k, v, block_size=16, mask=mask, return_lse=True)
    assert torch.equal(out1, out2) and lse.shape == (1, 2, 96)


def test_threshold_monotone_density_through_op():
    q, k, _ = _qkv(1, 2, 160, 16, seed=9)
    dens = [
        xv.block_density(xv.estimate_block_mask(q, k, threshold=t, stride=4, block_size=16),
                         block_size=16)
        for t in (0.3, 0.6, 0.9, 0.97, 1.0)
    ]  # fmt: skip
    assert dens == sorted(dens) and dens[-1] == 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(threshold=0.0), "threshold"),
        (dict(threshold=1.5), "threshold"),
        (dict(stride=3), "stride"),
        (dict(stride=16, block_size=16), None),  # valid: stride == block
        (dict(stride=32, block_size=16), "stride"),
        (dict(block_size=48), "block_size"),
        (dict(backend="cuda"), "backend"),
        (dict(threshold=0.5, ratio=0.5), "exactly one"),
        (dict(ratio=0.0), "ratio"),
        (dict(kv_len=torch.tensor([0])), "kv_len"),
        (dict(kv_len=torch.tensor([65])), "kv_len"),
        (dict(kv_len=torch.tensor([3.0])), "kv_len"),
        (dict(kv_len=torch.tensor([3, 4])), "kv_len"),
        (dict(kv_len=torch.tensor([True])), "kv_len"),
        (dict(kv_len=torch.tensor([[3]])), "kv_len"),  # B values, but not of shape (B,)
        (dict(threshold=torch.tensor([0.5, 0.9])), r"threshold.*shape \(1,\)"),
        (dict(threshold=torch.full((1, 1), 0.5)), r"threshold.*shape \(1,\)"),
        (dict(threshold=torch.tensor([0.0])), "threshold"),
        (dict(threshold=torch.tensor([0.5])), None),  # valid: one per head
        (dict(threshold=True), "threshold"),
        (dict(dense_from=-5), "dense_from"),
        (dict(dense_from=65), "dense_from"),
        (dict(dense_from=64), None),  # valid: nothing dense
        (dict(dense_from=3.5), "dense_from"),
        (dict(dense_from=torch.tensor([1.0])), "dense_from"),
        (dict(dense_from=torch.tensor([3, 4])), "dense_from"),
        # strings and bools were taken by float() (the torch backend then failed in torch.tensor)
        (dict(threshold="0.5"), "threshold"),
        (dict(max_density="0.5"), "max_density"),
        (dict(max_density=True), "max_density"),
        (dict(max_density=np.float32(0.5)), None),
        (dict(ratio=np.float32(0.5)), None),  # a NumPy scalar is a number
        (dict(stride=None), "stride"),  # was a raw TypeError
        # the kernels mask padded keys with -inf before scaling: 0 * -inf = NaN rows
        (dict(scale=0.0), "scale"),
        (dict(scale=-0.125), "scale"),
        (dict(scale=float("nan")), "scale"),
        (dict(scale=float("inf")), "scale"),
        (dict(scale="0.125"), "scale"),
        (dict(scale=0.125), None),
    ],
)
def test_bad_input_raises_value_error(kwargs, match):
    q, k, v = _qkv(1, 1, 64, 16)
    kwargs = {"block_size": 16, "stride": 4, **kwargs}
    if match is None:
        xv.xattention(q, k, v, backend="torch", **kwargs)
        return
    with pytest.raises(ValueError, match=match):
        xv.xattention(q, k, v, **{"backend": "torch", **kwargs})


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_numpy_float64_threshold_is_the_float(backend):
    """np.float64 (what np.linspace sweeps give) is a float subclass whose comparisons return
    np.bool_: the selection's ``bool tensor | np.bool_`` raised NotImplementedError."""
    q, k, v = _qkv(1, 2, 64, 16)
    kw = dict(block_size=16, stride=4, backend=backend, return_mask=True)
    want_out, want_mask = xv.xattention(q, k, v, threshold=0.8, **kw)
    out, mask = xv.xattention(q, k, v, threshold=np.float64(0.8), **kw)
    assert torch.equal(mask, want_mask) and torch.equal(out, want_out)
    scores = block_scores(q, k, stride=4, block_size=16, backend="torch")
    assert torch.equal(
        select_blocks(scores, block_size=16, threshold=np.float64(0.8)),
        select_blocks(scores, block_size=16, threshold=0.8),
    )


def test_a_per_batch_dense_from_is_checked_in_every_batch():
    q, k, v = _qkv(2, 1, 64, 16)
    for bad in ([10, 65], [10, -5]):
        with pytest.raises(ValueError, match=r"dense_from must be in \[0, 64\]"):
            xv.xattention(q, k, v, block_size=16, stride=4, backend="torch",
                          dense_from=torch.tensor(bad))  # fmt: skip


def test_bad_shapes_raise_value_error():
    q, k, v = _qkv(1, 2, 64, 16)
    k32, v32 = torch.randn(1, 2, 64, 32), torch.randn(1, 2, 64, 32)
    with pytest.raises(ValueError, match="agree on B, H and D"):  # a raw RuntimeError before
        xv.xattention(q, k32, v32, block_size=16, stride=4, backend="torch")
    with pytest.raises(ValueError, match="agree on B, H and D"):
        xv.block_sparse_attention(q, k32, v32, torch.ones(1, 2, 4, 4, dtype=torch.bool),
                                  block_size=16, backend="torch")  # fmt: skip
    with pytest.raises(ValueError, match="share dtype and device"):
        xv.xattention(q, k.to("meta"), v.to("meta"), block_size=16, stride=4, backend="torch")
    with pytest.raises(ValueError, match="at least one token"):
        xv.xattention(q, k[:, :, :0], v[:, :, :0], block_size=16, stride=4, backend="torch")
    with pytest.raises(ValueError, match="rank 4"):
        xv.xattention(q[0], k[0], v[0])
    with pytest.raises(ValueError, match="GQA"):
        xv.xattention(q, k[:, :1], v[:, :1])
    with pytest.raises(ValueError, match=r"D \(one head dim\)"):  # not "GQA"
        xv.xattention(q, k, v[..., :8])
    with pytest.raises(ValueError, match=r"D \(one batch\)"):
        xv.xattention(q, torch.cat([k, k]), torch.cat([v, v]))
    q80 = torch.randn(1, 1, 64, 80)
    with pytest.raises(ValueError, match="head dim 80"):
        xv.xattention(q80, q80, q80, block_size=16, stride=4, backend="triton")
    with pytest.raises(ValueError, match="mask must be"):
        xv.block_sparse_attention(q, k, v, torch.ones(1, 2, 3, 3, dtype=torch.bool), block_size=16)
    for shape in [(2, 2, 4, 4), (1, 3, 4, 4)]:  # wrong batch / heads (was a raw RuntimeError)
        with pytest.raises(ValueError, match=r"mask must be.*\(1 or 1, 2 or 1, 4, 4\)"):
            xv.block_sparse_attention(q, k, v, torch.ones(shape, dtype=torch.bool), block_size=16)
    with pytest.raises(ValueError, match="mask must be"):
        xv.xattention(q, k, v, block_size=16, mask=torch.ones(1, 3, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="scale"):
        xv.block_sparse_attention(q, k, v, torch.ones(1, 2, 4, 4, dtype=torch.bool), block_size=16,
                                  scale=0.0)  # fmt: skip


def test_triton_dtypes_on_cuda_are_checked_before_any_kernel():
    """fp64 on CUDA reached a raw Triton CompilationError (only fp32 was refused, and only after
    the estimate ran); the estimate alone also takes fp32. A stand-in for a CUDA tensor."""
    from types import SimpleNamespace

    from xattn_video.op_checks import check_triton_dtype

    for dtype in (torch.float16, torch.bfloat16):
        check_triton_dtype("triton", SimpleNamespace(is_cuda=True, dtype=dtype))
    check_triton_dtype(
        "triton", SimpleNamespace(is_cuda=True, dtype=torch.float32), attention=False
    )
    for dtype, attention in [(torch.float64, False), (torch.float64, True), (torch.float32, True)]:
        with pytest.raises(ValueError, match=f"{str(dtype)[6:]}: cast q, k, v first"):
            check_triton_dtype(
                "triton", SimpleNamespace(is_cuda=True, dtype=dtype), attention=attention
            )
    check_triton_dtype("torch", SimpleNamespace(is_cuda=True, dtype=torch.float64))


def test_bf16_triton_under_the_interpreter_is_refused():
    """Issue 11 #1: the interpreter's bf16 tl.dot gave garbage (max diff 8e8), silently."""
    q, k, v = (x.bfloat16() for x in _qkv(2, 2, 200, 64))
    m = torch.ones(1, 1, 7, 7, dtype=torch.bool)
    with pytest.raises(ValueError, match="bf16.*interpreter.*float32 or float16"):
        xv.block_sparse_attention(q, k, v, m, block_size=32, backend="triton")
    with pytest.raises(ValueError, match="bf16.*interpreter"):
        xv.estimate_block_mask(q, k, threshold=0.9, stride=8, block_size=32, backend="triton")
    with pytest.raises(ValueError, match="bf16.*interpreter"):
        xv.xattention(q, k, v, block_size=32, backend="triton")
    out = xv.block_sparse_attention(q, k, v, m, block_size=32, backend="torch")  # the reference
    want = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    assert_fa_close(out, want, naive_attention(q, k, v))


def _plant(x: torch.Tensor, index: tuple, value: float) -> torch.Tensor:
    x = x.clone()
    x[index] = value
    return x


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "where, value",
    [("k", float("nan")), ("k", float("inf")), ("v", float("nan")), ("v", float("-inf")),
     ("q", float("nan"))],
)  # fmt: skip
def test_nonfinite_input_propagates_like_dense_attention(backend, where, value):
    """Issue 11 #2: a NaN in a key made the estimate keep only block 0 and the Triton output
    finite (torch leaked NaN). Policy, both backends: a non-finite valid key/value makes its
    (batch, head) all NaN, a non-finite query row its row; everything else is unchanged."""
    B, H, N, D, bs = 2, 2, 200, 16, 32
    clean = _qkv(B, H, N, D, seed=10)
    kv_len = torch.tensor([200, 170])
    kw = dict(threshold=0.9, stride=4, block_size=bs, kv_len=kv_len, backend=backend)
    ref = xv.xattention(*clean, **kw)
    i = {"q": 0, "k": 1, "v": 2}[where]
    qkv = list(clean)
    qkv[i] = _plant(qkv[i], (0, 1, 150, 3), value)
    out, lse = xv.xattention(*qkv, return_lse=True, **kw)
    nan = torch.zeros(B, H, N, dtype=torch.bool)
    if where == "q":
        nan[0, 1, 128:160] = True  # the row's query block (its mask row came from the row)
    else:
        nan[0, 1] = True  # the whole head
    assert torch.equal(out.isnan().all(-1), nan) and torch.equal(out.isnan().any(-1), nan)
    assert torch.equal(lse.isnan(), nan)
    assert torch.equal(out[~nan], ref[~nan])  # the other rows / heads / samples untouched
    dense = F.scaled_dot_product_attention(*(x.double() for x in qkv)).isnan().any(-1)
    dense[1] = False  # sample 1 is padded in ours; nothing planted there
    assert (nan | ~dense).all()  # NaN wherever dense attention gives NaN
    if where == "q":  # with a given mask, only the row (exact attention inside the mask)
        _, mask = xv.xattention(*clean, return_mask=True, **kw)
        out = xv.block_sparse_attention(*qkv, mask, block_size=bs, kv_len=kv_len, backend=backend)
        assert torch.equal(out.isnan().any(-1), dense) and dense.sum() == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_nonfinite_values_in_padding_are_ignored(backend):
    q, k, v = _qkv(2, 2, 120, 16, seed=11)
    kv_len = torch.tensor([120, 50])
    kw = dict(threshold=0.9, stride=4, block_size=16, kv_len=kv_len, backend=backend)
    out, mask = xv.xattention(q, k, v, return_mask=True, **kw)
    k2 = _plant(k, (1, 0, 70, 2), float("nan"))
    v2 = _plant(v, (1, 1, 90, 5), float("inf"))
    out2, mask2 = xv.xattention(q, k2, v2, return_mask=True, **kw)
    assert torch.equal(mask, mask2) and torch.equal(out, out2)


def test_triton_backend_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v = _qkv(1, 1, 64, 16)
    with pytest.raises(ValueError, match="CUDA"):
        xv.xattention(q, k, v, block_size=16, stride=4, backend="triton")


@pytest.mark.parametrize("grid, tile", [((3, 5, 7), (2, 2, 4)), ((4, 8, 8), (2, 4, 4))])
def test_tile_permutation_is_a_tiling(grid, tile):
    perm = tile_permutation(grid, tile)
    T, H, W = grid
    n = T * H * W
    assert torch.equal(torch.sort(perm).values, torch.arange(n))
    x = torch.arange(n)
    assert torch.equal(x[perm][inverse_permutation(perm)], x)
    # the first tile is the first tt*th*tw raster positions of the corner cube
    t, h, w = perm[: tile[0] * tile[1] * tile[2]] // (H * W), (perm // W) % H, perm % W
    assert (t < tile[0]).all()
    n0 = tile[0] * tile[1] * tile[2]
    assert (h[:n0] < tile[1]).all() and (w[:n0] < tile[2]).all()
    if all(g % s == 0 for g, s in zip(grid, tile, strict=True)):
        vol = math.prod(tile)
        tiles = perm.view(-1, vol)
        spans = [(tiles // (H * W)).amax(1) - (tiles // (H * W)).amin(1)]
        assert (spans[0] < tile[0]).all()


# ----------------------------------------------------------------- audit fixes (stop 40)


def test_gradients_never_silently_vanish():
    """Eager Triton calls returned outputs detached from q, k and v: a loss through them ran
    backward with no error and no gradient for v. Now the backward raises, naming no_grad;
    the torch backend (the reference) still differentiates with the mask held fixed."""
    from xattn_video.library import NO_BACKWARD

    q, k, v = (t.requires_grad_() for t in _qkv(1, 1, 32, 16, seed=3))
    out = xv.xattention(q, k, v, threshold=0.9, block_size=16, stride=4, backend="triton")
    assert out.requires_grad
    with pytest.raises(RuntimeError, match="no backward") as exc:
        (out.square().sum() + q.square().sum()).backward()
    assert str(exc.value) == NO_BACKWARD and "torch.no_grad()" in NO_BACKWARD
    with torch.no_grad():  # inference: the direct path, no graph
        assert not xv.xattention(q, k, v, block_size=16, stride=4, backend="triton").requires_grad
    ref_q, ref_k, ref_v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out, mask = xv.xattention(
        ref_q, ref_k, ref_v, threshold=0.9, block_size=16, stride=4, backend="torch",
        return_mask=True,
    )  # fmt: skip
    out.sum().backward()
    tok = mask.repeat_interleave(16, -2).repeat_interleave(16, -1)
    want = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    F.scaled_dot_product_attention(*want, attn_mask=tok).sum().backward()
    for got, w in zip((ref_q, ref_k, ref_v), want, strict=True):
        torch.testing.assert_close(got.grad, w.grad)


@pytest.mark.parametrize(("n_q", "n_k", "df"), [(40, 20, 20), (40, 20, 18), (20, 40, 20)])
def test_dense_from_with_other_query_and_key_lengths_agrees_across_backends(n_q, n_k, df):
    """The fused selection forced key block 1 of 20 keys for dense_from = 20 (its padded end,
    32, passed 20) while the torch selection, clamping to the key length, did not."""
    q, _, _ = _qkv(1, 2, n_q, 16, seed=11)
    _, k, _ = _qkv(1, 2, n_k, 16, seed=12)
    kw = dict(threshold=0.3, stride=4, block_size=16, dense_from=df)
    got = xv.estimate_block_mask(q, k, backend="triton", **kw)
    want = xv.estimate_block_mask(q, k, backend="torch", **kw)
    assert torch.equal(got, want)
    rows = dense_blocks(df, 1, n_q, 16, "cpu")[0]
    cols = dense_blocks(df, 1, n_k, 16, "cpu")[0]
    assert got[0][:, rows].all() and got[0][:, :, cols].all()
    plain = xv.estimate_block_mask(q, k, backend="torch", **{**kw, "dense_from": None})
    expected = plain | rows[None, :, None] | cols[None, None, :]
    assert torch.equal(got[0], expected[0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("ratio", "n_blocks", "keep"), [(0.28, 25, 7), (0.07, 100, 7),
                                                          (0.56, 25, 14), (0.3, 10, 3)])  # fmt: skip
def test_ratio_keeps_the_exact_count_despite_float_rounding(backend, ratio, n_blocks, keep):
    """0.28 * 25 = 7.000000000000001 in floats: ceil kept 8 blocks per row (density 0.32)."""
    q, k, _ = _qkv(1, 1, 16 * n_blocks, 16, seed=13)
    kw = dict(ratio=ratio, stride=4, block_size=16, backend=backend)
    mask = xv.estimate_block_mask(q, k, **kw)
    assert (mask.sum(-1) == keep).all()
    assert xv.block_density(mask, block_size=16) == pytest.approx(keep / n_blocks)


def test_block_density_counts_only_blocks_with_a_valid_key():
    """An all-True mask over padded blocks gave 1.5 (dense over valid keys is 1.0)."""
    mask = torch.ones(2, 1, 3, 3, dtype=torch.bool)
    assert xv.block_density(mask, block_size=16, kv_len=torch.tensor([40, 10])) == 1.0
    mask[1, :, :, 0] = False  # sample 1's only valid key block: 3 of 12 valid pairs dropped
    assert xv.block_density(mask, block_size=16, kv_len=torch.tensor([40, 10])) == 0.75


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_is_refused_clearly(backend):
    """B = 0 crashed the Triton backend in a reshape ("cannot reshape tensor of 0 elements")."""
    q = torch.randn(0, 2, 40, 16)
    with pytest.raises(ValueError, match="at least one sample, head and channel"):
        xv.xattention(q, q, q, block_size=16, stride=4, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_density_caps_the_ops_mask(backend):
    """The op applies ``max_density`` itself (only a pipeline test noticed it dropped): the
    capped mask is the selection of the same scores with that budget, and the output is
    attention over it."""
    from xattn_video.kernels.estimate import estimate_block_scores_ref
    from xattn_video.kernels.select import select_blocks

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 512, 32, generator=g) for _ in range(3))
    kw = dict(threshold=0.99, block_size=32, stride=8, backend=backend)
    free = xv.estimate_block_mask(q, k, **kw)
    capped = xv.estimate_block_mask(q, k, **kw, max_density=0.25)
    assert xv.block_density(free, block_size=32) > 0.5
    assert xv.block_density(capped, block_size=32) <= 0.25
    scores = estimate_block_scores_ref(q, k, stride=8, block_size=32)
    want = select_blocks(scores, block_size=32, threshold=0.99, max_density=0.25)
    assert torch.equal(capped, want)
    out, mask = xv.xattention(q, k, v, **kw, max_density=0.25, return_mask=True)
    assert torch.equal(mask, capped)
