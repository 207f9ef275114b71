"""The public op's arguments in the forms callers hand them over: a strided or expanded
``kv_len`` view and NumPy integers for ``block_size`` / ``stride`` give what the plain forms give
on both backends, and a ``TRITON_INTERPRET`` set after the kernels were built is refused with
the variable named, not failed inside a launch."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import xattn_video as xv

BACKENDS = ["torch", "triton"]  # "triton" runs in the interpreter on CPU


def _qkv(B: int = 2, H: int = 2, N: int = 64, D: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, N, D, generator=g) for _ in range(3)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_strided_or_expanded_kv_len_is_read_per_sample(backend):
    """The kernels read KV_LEN + b: a column of a (B, 2) table (stride 2) gave sample 1 another
    sample's length, an expanded one (stride 0) read past its storage."""
    q, k, v = _qkv()
    table = torch.tensor([[20, 0], [48, 0]], dtype=torch.int32)
    kw = dict(threshold=0.9, stride=4, block_size=16, backend=backend, return_mask=True)
    for view, plain in ((table[:, 0], torch.tensor([20, 48], dtype=torch.int32)),
                        (torch.tensor([20], dtype=torch.int32).expand(2),
                         torch.tensor([20, 20], dtype=torch.int32))):  # fmt: skip
        assert not view.is_contiguous()
        out, mask = xv.xattention(q, k, v, kv_len=view, **kw)
        want, want_mask = xv.xattention(q, k, v, kv_len=plain, **kw)
        assert torch.equal(mask, want_mask) and torch.equal(out, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_numpy_block_size_and_stride_run_as_ints(backend):
    """np.int64 from a sweep grid passed the checks, then the Triton launch raised 'cannot
    convert 15 of type numpy.int64 to tensor'."""
    q, k, v = _qkv(B=1)
    kw = dict(threshold=0.9, backend=backend, return_mask=True)
    out, mask = xv.xattention(q, k, v, stride=np.int64(4), block_size=np.int64(16), **kw)
    want, want_mask = xv.xattention(q, k, v, stride=4, block_size=16, **kw)
    assert torch.equal(out, want) and torch.equal(mask, want_mask)
    got = xv.estimate_block_mask(q, k, stride=np.int32(4), block_size=np.int64(16),
                                 backend=backend)  # fmt: skip
    assert torch.equal(got, want_mask)
    att = xv.block_sparse_attention(q, k, v, mask, block_size=np.int64(16), backend=backend)
    assert torch.equal(att, want)
    with pytest.raises(ValueError, match="block_size must be an int"):
        xv.xattention(q, k, v, stride=4, block_size=np.float64(16.0), **kw)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU case")
def test_an_interpreter_switched_on_after_import_is_refused_with_its_name():
    """interpreter_enabled() read the variable live while the kernels had been built compiled
    at import: backend='triton' on CPU got past the check and failed with '0 active drivers'."""
    code = (
        "import os, torch, xattn_video as xv\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "q = torch.randn(1, 1, 32, 16)\n"
        "try:\n"
        "    xv.xattention(q, q, q, stride=4, block_size=16, backend='triton')\n"
        "except ValueError as e:\n"
        "    print(e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout  # fmt: skip
    assert "TRITON_INTERPRET=1, set before xattn_video is imported" in out
