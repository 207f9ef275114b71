"""fp8 arithmetic that can never run on this machine (no sm90+ CUDA GPU at all) is refused by
``apply_xattention`` itself, not at the first sparse step after the dense warm-up. CUDA and the
GPUs' compute capabilities are simulated, so these run on any machine."""

from __future__ import annotations

import pytest
import torch

import xattn_video as xv

from ._tiny_models import tiny_wan_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


def _gpus(monkeypatch: pytest.MonkeyPatch, *caps: tuple[int, int]) -> None:
    """Pretend the visible CUDA devices have these compute capabilities (none: no CUDA)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(caps))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(caps))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: caps[i or 0])


CFG = dict(stride=4, block_size=16, warmup_steps=2)


@pytest.mark.parametrize(
    "caps, has",
    [((), "no CUDA device"), (((8, 0),), "only cuda:0 sm80"),
     (((8, 6), (7, 5)), "only cuda:0 sm86, cuda:1 sm75")],
)  # fmt: skip
@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_fp8_attention_without_a_hopper_gpu_fails_at_apply(monkeypatch, caps, has, backend):
    """It applied fine and raised after the warm-up steps (the op's check at the first sparse
    call)."""
    _gpus(monkeypatch, *caps)
    pipe = tiny_wan_pipeline()
    before = dict(pipe.transformer.attn_processors)
    cfg = xv.XAttentionConfig(precision="fp8", backend=backend, **CFG)
    want = (f"precision='fp8' with backend='{backend}' needs an sm90+ CUDA GPU (Hopper: H100 / "
            f"H200) and this machine has {has}: every sparse step would fail after the warm-up; "
            "use precision='bf16'")  # fmt: skip
    with pytest.raises(ValueError) as exc:
        xv.apply_xattention(pipe, cfg)
    assert str(exc.value) == want
    with pytest.raises(ValueError, match="needs an sm90"):
        xv.xattention_processors(pipe.transformer, cfg)
    assert dict(pipe.transformer.attn_processors) == before  # nothing installed


def test_fp8_estimate_on_the_triton_backend_without_a_hopper_gpu_fails_at_apply(monkeypatch):
    _gpus(monkeypatch)
    pipe = tiny_wan_pipeline()
    cfg = xv.XAttentionConfig(estimate_precision="fp8", backend="triton", **CFG)
    with pytest.raises(ValueError, match=r"estimate_precision='fp8' with backend='triton' needs"):
        xv.apply_xattention(pipe, cfg)
    # the torch backend (auto without CUDA) emulates the fp8 estimate: allowed
    xv.apply_xattention(pipe, cfg.replace(backend="auto")).remove()
    xv.apply_xattention(pipe, cfg.replace(backend="torch")).remove()


def test_fp8_estimate_on_auto_with_a_pre_hopper_gpu_fails_at_apply(monkeypatch):
    """backend="auto" runs the Triton backend on CUDA tensors: with only an sm80 GPU the fp8
    estimate was applied and failed at the first sparse step."""
    _gpus(monkeypatch, (8, 0))
    pipe = tiny_wan_pipeline()
    cfg = xv.XAttentionConfig(estimate_precision="fp8", backend="auto", **CFG)
    with pytest.raises(ValueError) as exc:
        xv.apply_xattention(pipe, cfg)
    assert str(exc.value) == (
        "estimate_precision='fp8' with backend='auto' needs an sm90+ CUDA GPU (Hopper: H100 / "
        "H200) and this machine has only cuda:0 sm80: every sparse step would fail after the "
        "warm-up; use precision='bf16' estimates, or backend='torch' (emulated)"
    )
    xv.apply_xattention(pipe, cfg.replace(backend="torch")).remove()
    xv.apply_xattention(pipe, cfg.replace(estimate_precision="auto")).remove()  # bf16 there


@pytest.mark.parametrize("caps", [((9, 0),), ((8, 0), (9, 0)), ((10, 0),)])
def test_fp8_is_applied_where_a_hopper_gpu_exists_even_from_the_cpu(monkeypatch, caps):
    """The parameters' device is no signal: a pipeline applied on the CPU may be moved to the
    GPU afterwards, so only a machine without any sm90+ GPU is refused."""
    _gpus(monkeypatch, *caps)
    pipe = tiny_wan_pipeline()  # on the CPU
    assert next(pipe.transformer.parameters()).device.type == "cpu"
    handle = xv.apply_xattention(pipe, xv.XAttentionConfig(precision="fp8", **CFG))
    assert handle.active
    handle.remove()
    bf16 = xv.XAttentionConfig(**CFG)  # bf16 never looks at the GPUs
    _gpus(monkeypatch)
    xv.apply_xattention(pipe, bf16).remove()


def test_fp8_attention_with_a_triton_without_tma_descriptors_fails_at_apply(monkeypatch):
    """Triton 3.3 (what torch 2.7 pins) has no tensor descriptors, so no Hopper kernel runs:
    fp8 attention was applied on an H100 and every sparse step then failed with a message
    naming the GPU, dtype and head dim, all of which were right."""
    from xattn_video import op_checks

    _gpus(monkeypatch, (9, 0))
    monkeypatch.setattr(op_checks, "HAS_TENSOR_DESC", False)
    pipe = tiny_wan_pipeline()
    with pytest.raises(ValueError, match=r"needs Triton >= 3.4 \(TMA descriptors\); this is "):
        xv.apply_xattention(pipe, xv.XAttentionConfig(precision="fp8", **CFG))
    xv.apply_xattention(pipe, xv.XAttentionConfig(**CFG)).remove()  # bf16 attention: fine


def test_the_missing_fp8_kernels_message_without_triton(monkeypatch):
    """It imported triton for its version: an ImportError where Triton is not installed."""
    import importlib.metadata

    from xattn_video import op_checks

    monkeypatch.setattr(op_checks, "HAS_TENSOR_DESC", False)

    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", absent)
    monkeypatch.setitem(__import__("sys").modules, "triton", None)
    assert op_checks.fp8_kernels_missing() == (
        "precision='fp8' needs Triton >= 3.4 (TMA descriptors); Triton is not installed"
    )


def test_the_triton_backend_without_cuda_or_the_interpreter_fails_at_apply(monkeypatch):
    """The CLI refused it, but apply_xattention accepted it and the first sparse step failed,
    after the warm-up."""
    _gpus(monkeypatch)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    pipe = tiny_wan_pipeline()
    with pytest.raises(ValueError, match=r"backend='triton' needs a CUDA GPU \(or TRITON_INTERP"):
        xv.apply_xattention(pipe, xv.XAttentionConfig(backend="triton", **CFG))
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter runs it on the CPU
    xv.apply_xattention(pipe, xv.XAttentionConfig(backend="triton", **CFG)).remove()
