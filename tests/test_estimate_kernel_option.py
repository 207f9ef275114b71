"""``estimate_kernel="prefer-gluon"`` (op argument, config field, CLI flag): the opt-in to the
experimental Gluon estimate where it was measured faster. CPU: the kernel choice and that the
value travels from the config and the op down to the estimate kernel's entry point
(``tests/test_gpu_estimate_gluon.py`` runs the Gluon kernel through it on an sm90 GPU)."""

from __future__ import annotations

import pytest
import torch

import xattn_video as xv
from xattn_video import attention, library
from xattn_video.kernels import tuning

from ._spy import record_kwarg
from ._tiny_models import run_sparse_steps

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = dict(is_cuda=True, capability=9, dtype=torch.bfloat16, head_dim=128, block_size=128,
            stride=8, aligned=True, n=119056, has_gluon=True, measured=True)  # fmt: skip


@pytest.mark.parametrize(
    "change, want",
    [({}, "gluon"), ({"n": 32768}, "gluon"), ({"n": 32767}, "triton"),
     ({"measured": False}, "triton"), ({"capability": 10}, "triton"), ({"stride": 4}, "triton"),
     ({"has_gluon": False}, "triton"), ({"is_cuda": False}, "triton")],
)  # fmt: skip
def test_prefer_gluon_picks_it_only_where_it_fits_and_was_measured(change, want):
    """Unlike a forced "gluon", "prefer-gluon" falls back to Triton instead of raising."""
    assert tuning.choose_estimate_kernel(**{**BASE, **change, "kernel": "prefer-gluon"}) == want


@pytest.mark.parametrize("auto_gate", [False, True])
def test_prefer_gluon_opens_the_gate_that_auto_keeps_closed(monkeypatch, auto_gate):
    """With GLUON_ESTIMATE_AUTO off, "auto" never consults the choice (Triton); "prefer-gluon"
    does wherever the table has this GPU / precision / stride / head dim."""
    asked = []

    def choose(**kw):
        asked.append(kw["kernel"])
        return "gluon"

    monkeypatch.setattr(tuning, "GLUON_ESTIMATE_AUTO", auto_gate)
    monkeypatch.setattr(tuning, "gpu_name", lambda t: "NVIDIA H200")
    monkeypatch.setattr(tuning, "choose_estimate_kernel", choose)
    q = torch.zeros(1, 1, 256, 128)
    hit = tuning.GLUON_ESTIMATE[("NVIDIA H200", "bf16", 8, 128)]
    assert tuning.estimate_kernel_for(q, q, 8, 128, "bf16", "prefer-gluon") == ("gluon", hit)
    auto = tuning.estimate_kernel_for(q, q, 8, 128, "bf16", "auto")
    assert auto == (("gluon", hit) if auto_gate else ("triton", hit))
    # no table entry (bf16 stride 16 on the H200): Triton without asking
    assert tuning.estimate_kernel_for(q, q, 16, 128, "bf16", "prefer-gluon")[0] == "triton"
    assert asked == (["prefer-gluon", "auto"] if auto_gate else ["prefer-gluon"])


def test_prefer_gluon_on_the_h100_only_for_the_fp8_stride_8_estimate(monkeypatch):
    """The H100's one Gluon entry (bench_attention_h100_2680fd0*: fp8 S=8 faster at 119k and
    67k; fp8 S=16 faster at 119k only, bf16 slower): "prefer-gluon" consults the choice there
    with the entry's tile / ring, and runs Triton without asking everywhere else."""
    asked = []

    def choose(**kw):
        asked.append((kw["stride"], kw["measured"]))
        return "gluon"

    monkeypatch.setattr(tuning, "gpu_name", lambda t: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(tuning, "choose_estimate_kernel", choose)
    q = torch.zeros(1, 1, 256, 128)
    got = tuning.estimate_kernel_for(q, q, 8, 128, "fp8", "prefer-gluon")
    assert got == ("gluon", (128, 6))
    for precision, stride in [("fp8", 16), ("bf16", 8), ("bf16", 16)]:
        got = tuning.estimate_kernel_for(q, q, stride, 128, precision, "prefer-gluon")
        assert got[0] == "triton"
    assert tuning.estimate_kernel_for(q, q, 8, 128, "fp8", "auto")[0] == "triton"  # gate closed
    assert asked == [(8, True)]
    h100 = {key[1:] for key in tuning.GLUON_ESTIMATE if key[0] == "NVIDIA H100 80GB HBM3"}
    assert h100 == {("fp8", 8, 128)}


@pytest.mark.parametrize("value", ["auto", "prefer-gluon"])
def test_the_op_hands_estimate_kernel_to_the_estimate(monkeypatch, value):
    """Triton backend (the interpreter on CPU, where "prefer-gluon" runs the Triton kernel): the
    value reaches the estimate kernel's entry point, and the output is the same either way."""
    seen = record_kwarg(monkeypatch, library, "_estimate_triton", "kernel", "auto")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 96, 16, generator=g) for _ in range(3))
    kw = dict(threshold=0.9, stride=4, block_size=16, backend="triton")
    out = xv.xattention(q, k, v, estimate_kernel=value, **kw)
    assert seen == [value]
    assert torch.equal(xv.estimate_block_mask(q, k, kernel=value, threshold=0.9, stride=4,
                                              block_size=16, backend="triton"),
                       xv.estimate_block_mask(q, k, threshold=0.9, stride=4, block_size=16,
                                              backend="triton"))  # fmt: skip
    assert torch.equal(out, xv.xattention(q, k, v, **kw))


def test_bad_estimate_kernel_values_are_refused():
    q = torch.randn(1, 1, 64, 16)
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="estimate_kernel must be one of"):
        xv.xattention(q, q, q, stride=4, block_size=16, backend="torch", estimate_kernel="gluon")
    with pytest.raises(ValueError, match="estimate_kernel must be one of"):  # even with a mask
        xv.xattention(q, q, q, block_size=16, mask=mask, backend="torch", estimate_kernel="x")
    with pytest.raises(ValueError, match="kernel must be one of"):
        xv.estimate_block_mask(q, q, stride=4, block_size=16, backend="torch", kernel="triton")
    with pytest.raises(ValueError, match="estimate_kernel must be one of"):
        xv.XAttentionConfig(estimate_kernel="gluon")


def test_config_field_round_trips_and_old_dicts_load():
    cfg = xv.XAttentionConfig(estimate_kernel="prefer-gluon")
    assert xv.XAttentionConfig.from_dict(cfg.to_dict()) == cfg
    old = xv.XAttentionConfig().to_dict()
    del old["estimate_kernel"]  # a run directory written before the field existed
    assert xv.XAttentionConfig.from_dict(old).estimate_kernel == "auto"


def test_processors_run_the_config_estimate_kernel(monkeypatch):
    seen = record_kwarg(monkeypatch, attention, "xattention", "estimate_kernel", "auto")
    run_sparse_steps(estimate_kernel="prefer-gluon")
    assert seen and set(seen) == {"prefer-gluon"}
