"""The op's argument handling found by an API review (CPU, torch backend): values that got past
the checks and failed deep inside torch, a given mask that skipped the estimate's checks, a
broadcast mask returned unexpanded, numpy integers refused, a non-tensor q."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xattn_video as xv


def _qkv(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, 2, n, 64, generator=g) for _ in range(3))


@pytest.mark.parametrize("arg", [{"block_size": 64.0}, {"stride": 8.0}, {"block_size": True}])
def test_a_float_block_size_or_stride_is_refused_naming_it(arg):
    """64.0 == 64 passed the membership test, then torch's pad / expand raised a TypeError."""
    q, k, v = _qkv()
    name = next(iter(arg))
    with pytest.raises(ValueError, match=f"{name} must be an int, one of"):
        xv.xattention(q, k, v, **{"block_size": 64, **arg})
    if name == "block_size":
        mask = torch.ones(2, 2, 5, 5, dtype=torch.bool)
        with pytest.raises(ValueError, match="block_size must be an int, one of"):
            xv.block_sparse_attention(q, k, v, mask, **arg)


def test_numpy_integers_are_taken_like_python_ints():
    q, k, v = _qkv()
    want = xv.xattention(q, k, v, block_size=64, stride=8, dense_from=250, return_mask=True)
    got = xv.xattention(q, k, v, block_size=np.int64(64), stride=np.int32(8),
                        dense_from=np.int64(250), return_mask=True)  # fmt: skip
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])


@pytest.mark.parametrize(
    "arg, message",
    [
        ({"stride": 3}, "stride must be an int, one of"),
        ({"threshold": 5.0}, r"threshold must be in \(0, 1\]"),
        ({"ratio": -1.0}, r"ratio must be in \(0, 1\]"),
        ({"threshold": 0.5, "ratio": 0.5}, "exactly one of `threshold` and `ratio`"),
        ({"max_density": 9}, "max_density must be a float in"),
        ({"dense_from": -7}, r"dense_from must be in \[0, 300\]"),
    ],
)
def test_a_given_mask_does_not_skip_the_estimates_argument_checks(arg, message):
    """With mask= every estimate argument was accepted unchecked (and unused)."""
    q, k, v = _qkv()
    mask = torch.ones(2, 2, 5, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match=message):
        xv.xattention(q, k, v, block_size=64, mask=mask, **arg)
    with pytest.raises(ValueError, match=message):  # the same refusal as without a mask
        xv.xattention(q, k, v, block_size=64, **arg)


def test_a_given_mask_is_attended_as_given_and_returned_expanded():
    """A (1, 1, Nbq, Nbk) mask came back as (1, 1, ...), not the documented (B, H, Nbq, Nbk);
    and dense_from forces nothing on a given mask (documented)."""
    q, k, v = _qkv()
    mask = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    mask[..., 0] = True
    out, got = xv.xattention(q, k, v, block_size=64, mask=mask, dense_from=100, return_mask=True)
    assert got.shape == (2, 2, 5, 5) and torch.equal(got, mask.expand(2, 2, 5, 5))
    want = xv.block_sparse_attention(q, k, v, mask.expand(2, 2, 5, 5), block_size=64)
    assert torch.equal(out, want)


def test_q_k_v_that_are_not_tensors_and_mismatched_dtypes_are_named():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="q must be a torch.Tensor .*, got list"):
        xv.xattention(q.tolist(), k, v)
    with pytest.raises(TypeError, match="k must be a torch.Tensor .*, got ndarray"):
        xv.xattention(q, k.numpy(), v)
    with pytest.raises(TypeError, match="v must be a torch.Tensor"):
        xv.block_sparse_attention(q, k, None, torch.ones(2, 2, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="got q torch.float32 on cpu and k torch.float64 on cpu"):
        xv.xattention(q, k.double(), v)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.int32])
def test_fp8_or_integer_q_k_v_are_refused_on_every_public_path(dtype):
    """float8 tensors count as floating point, so they passed the check and failed inside torch
    ("masked_fill" not implemented for 'Float8_e4m3fn'); fp8 arithmetic is precision="fp8"."""
    q, k, v = (x.to(dtype) for x in _qkv(64))
    hint = "precision='fp8'" if dtype.is_floating_point else ""
    mask = torch.ones(2, 2, 1, 1, dtype=torch.bool)
    calls = (
        lambda: xv.xattention(q, k, v, block_size=64, stride=8),
        lambda: xv.estimate_block_mask(q, k, block_size=64, stride=8),
        lambda: xv.block_sparse_attention(q, k, v, mask, block_size=64),
    )
    for call in calls:
        with pytest.raises(ValueError, match=f"q must be float16, bfloat16, .*{dtype}.*{hint}"):
            call()


def test_block_density_of_a_mask_without_pairs_is_an_error_not_a_zero_division():
    with pytest.raises(ValueError, match=r"mask \(1, 1, 0, 0\) has no"):
        xv.block_density(torch.zeros(1, 1, 0, 0, dtype=torch.bool), block_size=64)


@pytest.mark.parametrize("lens", [[0, 300], [300, 301]])
def test_kv_len_is_checked_once_on_every_public_path(lens):
    """block_sparse_attention checks kv_len itself; xattention through the estimate's checks,
    with or without a given mask (the attention no longer checks it a second time)."""
    q, k, v = _qkv()
    mask = torch.ones(2, 2, 5, 5, dtype=torch.bool)
    kv_len = torch.tensor(lens)
    for call in (
        lambda: xv.block_sparse_attention(q, k, v, mask, block_size=64, kv_len=kv_len),
        lambda: xv.xattention(q, k, v, block_size=64, mask=mask, kv_len=kv_len),
        lambda: xv.xattention(q, k, v, block_size=64, kv_len=kv_len),
    ):
        with pytest.raises(ValueError, match=r"kv_len values must be in \[1, 300\]"):
            call()


@pytest.mark.parametrize("arg", ["kv_len", "threshold", "dense_from"])
def test_tensor_arguments_without_values_give_shapes_not_a_host_read(arg):
    """On the meta device (and as fake tensors) a kv_len, per-head threshold or dense_from
    tensor crashed the value check ("Tensor.item() cannot be called on meta tensors"), though
    q, k and v alone inferred the output's shape."""
    value = {
        "kv_len": torch.tensor([40, 21]),
        "threshold": torch.full((2,), 0.9),
        "dense_from": torch.tensor([30, 35]),
    }[arg]
    kw = dict(block_size=16, stride=4, backend="torch")
    q, k, v = (torch.empty(2, 2, 40, 16, device="meta") for _ in range(3))
    out = xv.xattention(q, k, v, **kw, **{arg: value.to("meta")})
    assert out.shape == (2, 2, 40, 16) and out.is_meta
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fq, fk, fv = (mode.from_tensor(torch.randn(2, 2, 40, 16)) for _ in range(3))
        out = xv.xattention(fq, fk, fv, **kw, **{arg: mode.from_tensor(value)})
        assert out.shape == (2, 2, 40, 16)


def test_block_density_checks_kv_len_as_the_op_does():
    """A (1,) or (B, 1) kv_len broadcast against the mask: density 2.0 or 0.8 where 0.4 is
    right; a list failed with AttributeError."""
    import xattn_video as xv

    mask = torch.zeros(2, 1, 1, 4, dtype=torch.bool)
    mask[0, 0, 0, :2] = True
    mask[1, 0, 0, 0] = True
    good = torch.tensor([64, 16])
    assert xv.block_density(mask, block_size=16, kv_len=good) == 0.6  # (2 + 1) of (4 + 1)
    for bad in (torch.tensor([16]), torch.tensor([[64], [16]]), [64, 16]):
        with pytest.raises(ValueError, match=r"kv_len must be an int tensor of shape \(2,\)"):
            xv.block_density(mask, block_size=16, kv_len=bad)
