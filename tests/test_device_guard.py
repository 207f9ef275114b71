"""Kernels launch on their tensors' CUDA device, not the current one: Triton launches on the
current device and a custom op sets no guard, so a model on ``cuda:1`` (``generate --device
cuda:1``) ran every kernel on device 0 with pointers into device 1. On the CPU: the guard's
behaviour and that each of the op layer's kernel entry points takes it; with two GPUs: the op
on ``cuda:1`` equals the op on ``cuda:0``."""

from __future__ import annotations

import pytest
import torch

import xattn_video as xv
from xattn_video import library, qk_prep
from xattn_video.kernels._common import on_tensor_device


class _OnCuda1:
    """A stand-in for a tensor on cuda:1 (the wrapped function fails on it at once)."""

    is_cuda = True
    device = torch.device("cuda", 1)

    def get_device(self) -> int:
        return 1


@pytest.fixture
def guards(monkeypatch):
    """The devices made current (``torch.cuda.device``), device 0 current before."""
    entered: list[torch.device] = []

    class Guard:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            entered.append("exit")

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", Guard)
    return entered


def test_the_guard_makes_the_tensors_device_current_only_when_it_is_not(guards):
    @on_tensor_device
    def f(q, x, *, y):
        guards.append(("ran", x, y))
        return x + y

    assert f(_OnCuda1(), 1, y=2) == 3
    assert guards == [torch.device("cuda", 1), ("ran", 1, 2), "exit"]
    guards.clear()
    assert f(q=_OnCuda1(), x=1, y=2) == 3  # the tensor by name (norm_rope(x=...) raised)
    assert guards == [torch.device("cuda", 1), ("ran", 1, 2), "exit"]
    guards.clear()
    assert f(torch.zeros(1), 1, y=2) == 3  # a CPU tensor: no guard
    assert guards == [("ran", 1, 2)]


@pytest.mark.parametrize(
    "entry",
    [
        library._quantize_fp8_impl,
        library._estimate_impl,
        library._attention_impl,
        library._select_impl,
        library._csr_impl,
        qk_prep.norm_rope,
    ],
    ids=lambda f: f.__name__,
)
def test_every_kernel_entry_point_runs_on_its_tensors_device(guards, entry):
    with pytest.raises((AttributeError, TypeError, ValueError, RuntimeError)):
        entry(_OnCuda1(), *[None] * 12)  # enters the guard, then fails on the stand-in
    assert guards[0] == torch.device("cuda", 1) and guards[-1] == "exit"


def _two_gpus() -> None:
    """Skip on a one-GPU machine (in the test: without CUDA the gpu marker's skip applies,
    the one CI accepts)."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA GPUs")


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_the_op_on_the_second_gpu_equals_it_on_the_first(precision):
    _two_gpus()
    if precision == "fp8" and torch.cuda.get_device_capability(1)[0] < 9:
        pytest.skip("fp8 needs sm90")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 1000, 64, generator=g).bfloat16() for _ in range(3))
    kw = dict(threshold=0.9, stride=8, block_size=64, precision=precision, return_mask=True)
    want, want_mask = xv.xattention(*(t.to("cuda:0") for t in (q, k, v)), **kw)
    with torch.cuda.device(0):  # device 0 current, the tensors on device 1
        got, mask = xv.xattention(*(t.to("cuda:1") for t in (q, k, v)), **kw)
    assert got.device == torch.device("cuda", 1)
    assert torch.equal(mask.cpu(), want_mask.cpu()) and torch.equal(got.cpu(), want.cpu())


@pytest.mark.gpu
def test_stats_of_layers_on_two_gpus_are_read_together():
    """Wan 2.2's two experts on two GPUs: the summary joined their densities with one
    torch.cat, which refuses tensors of two devices."""
    from xattn_video.stats import XAttentionStats

    _two_gpus()
    st = XAttentionStats()
    for step, device in enumerate(("cuda:0", "cuda:1")):
        st.begin(run=0, step=step, branch="pass0")
        st.add(0, heads=torch.tensor([0.25, 0.75], device=device))
    assert st.summary()["sparse_density"] == 0.5
