"""The Gluon estimate on CPU: argument checks, and that it compiles for sm90 (PTX assembled by the
ptxas that ships with Triton), bf16 and fp8, strides 8 and 16, head dims 64 and 128: three
partitions with register re-allocation, the matmuls on the tensor cores in the input's precision,
MUFU lg2 rather than libdevice's polynomial, no register spills, within Hopper's shared memory.
Its numbers are checked on the GPU (tests/test_gpu_estimate_gluon.py)."""

import pytest
import torch

from xattn_video.kernels import estimate_gluon as eg

from ._gluon_compile import assert_no_spills, assert_ws_partitions, compile_sm90

needs_gluon = pytest.mark.skipif(not eg.HAS_GLUON, reason="Triton without Gluon's Hopper module")


@needs_gluon
def test_rejects_inputs_it_does_not_take():
    q = torch.zeros(1, 1, 256, 128, dtype=torch.bfloat16)
    est = eg.estimate_block_scores_gluon
    with pytest.raises(ValueError, match="block_size 128"):
        est(q, q, stride=8, block_size=64)
    with pytest.raises(ValueError, match="stride"):
        est(q, q, stride=4, block_size=128)
    q32 = torch.zeros(1, 1, 256, 32, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="head dim"):
        est(q32, q32, stride=8, block_size=128)
    with pytest.raises(ValueError, match="block_n 64, 128 or 256"):
        est(q, q, stride=8, block_size=128, block_n=32)
    with pytest.raises(ValueError, match="stages"):
        est(q, q, stride=8, block_size=128, stages=1)
    with pytest.raises(ValueError, match="shared memory"):  # 4 x 64 KB bf16 slots
        est(q, q, stride=8, block_size=128, stages=4)
    with pytest.raises(ValueError, match="precision"):
        est(q, q, stride=8, block_size=128, precision="fp16")
    with pytest.raises(ValueError, match="bf16/fp16"):
        est(q.float(), q.float(), stride=8, block_size=128)
    # a tile's first `pre` chunks hold their slots across the epilogue: pre = stages deadlocks
    with pytest.raises(ValueError, match="pre must be in 0..stages-1"):
        est(q, q, stride=8, block_size=128, stages=3, pre=3)


_COMPILE = """
import sys
from tests._gluon_compile import compile_kernel, tensordesc
from xattn_video.kernels import estimate_gluon as eg

S, d, stages, fp8, pre, bn, out = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                                   sys.argv[4] == "fp8", int(sys.argv[5]), int(sys.argv[6]),
                                   sys.argv[7])
name = "fp8e4nv" if fp8 else "bf16"
sig = dict(q_desc=tensordesc([1, 1, 64, 1, d], name), k_desc=tensordesc([1, 1, bn, 1, d], name),
           SCR="*fp32", OUT="*fp32", KV_LEN="*i32", Q_SCALE="*fp32", K_SCALE="*fp32",
           QP="*" + name, KP="*" + name)
for n in ("stride_qb stride_qh stride_qn stride_kb stride_kh stride_kn stride_sbh stride_sr "
          "stride_ob stride_oh stride_om stride_sq stride_sk H NGQ NBQ NBK").split():
    sig[n] = "i32"
sig["qk_scale"] = "fp32"
consts = dict(S=S, G=128 // S, STAGES=stages, PRE=pre, FP8=fp8, num_warps=4)
compile_kernel(eg._estimate_gluon_kernel, sig, consts, eg.MAXNREG, out)
"""


@needs_gluon
@pytest.mark.parametrize(
    "stride, d, stages, precision, pre, bn",
    [(8, 128, 3, "bf16", 2, 128), (8, 128, 3, "bf16", 0, 128), (16, 128, 2, "bf16", 1, 128),
     (8, 64, 3, "bf16", 2, 128), (8, 128, 4, "bf16", 3, 64), (8, 128, 6, "fp8", 5, 128),
     (16, 128, 4, "fp8", 3, 128)],
)  # fmt: skip
def test_compiles_for_sm90_without_spills(tmp_path, stride, d, stages, precision, pre, bn):
    ptx_text, meta = compile_sm90(tmp_path, _COMPILE, stride, d, stages, precision, pre, bn)
    assert_ws_partitions(ptx_text, meta)
    mma = f"m64n{bn}k32.f32.e4m3.e4m3" if precision == "fp8" else f"m64n{bn}k16.f32.bf16.bf16"
    assert f"wgmma.mma_async.sync.aligned.{mma}" in ptx_text
    # the block log-sum-exps on the MUFU unit, not libdevice's branchy log2f
    assert "lg2.approx.f32" in ptx_text and "__nv_log2f" not in ptx_text
    # with pre > 0, a tile's first chunk matmuls are issued before the previous tile's epilogue
    # (its exp2s), with nothing waiting on them in between
    body = ptx_text[ptx_text.index("setmaxnreg.inc.sync.aligned.u32 \t240;") :]
    first_exp = body.index("ex2.approx")
    before = body[:first_exp]
    tail = before[before.rindex("wgmma.mma_async") :]
    assert ("wgmma.wait_group" not in tail) == (pre > 0)
    assert_no_spills(tmp_path)


ESTIMATE_BASE = dict(is_cuda=True, capability=9, dtype=torch.bfloat16, head_dim=128,
                     block_size=128, stride=8, aligned=True, n=119056, has_gluon=True,
                     measured=True)  # fmt: skip


@pytest.mark.parametrize(
    "change, want",
    [({}, "gluon"), ({"head_dim": 64}, "gluon"), ({"stride": 16}, "gluon"),
     ({"dtype": torch.float16}, "gluon"), ({"n": 32768}, "gluon"),
     ({"measured": False}, "triton"), ({"n": 32767}, "triton"), ({"capability": 10}, "triton"),
     ({"capability": 8}, "triton"), ({"has_gluon": False}, "triton"), ({"is_cuda": False}, "triton"),
     ({"dtype": torch.float32}, "triton"), ({"head_dim": 32}, "triton"),
     ({"block_size": 64}, "triton"), ({"stride": 4}, "triton"), ({"aligned": False}, "triton"),
     ({"kernel": "triton"}, "triton"), ({"kernel": "gluon", "measured": False, "n": 10}, "gluon"),
     ({"stride": 32}, "gluon"), ({"stride": 32, "kernel": "gluon", "measured": False}, "gluon"),
     ({"stride": 64}, "triton"), ({"block_size": 256}, "triton")],
)  # fmt: skip
def test_estimate_kernel_choice(change, want):
    from xattn_video.kernels import tuning

    assert tuning.choose_estimate_kernel(**{**ESTIMATE_BASE, **change}) == want


def test_measured_gluon_estimate_entries_are_launchable():
    """Every entry of the measured table is a (tile, ring) the wrapper accepts: its ring fits
    sm90's shared memory, and the choice picks the Gluon kernel there from 32k tokens only."""
    from xattn_video.kernels import estimate_gluon as eg
    from xattn_video.kernels import tuning

    assert tuning.GLUON_ESTIMATE, "the H200 entries are measured (probe_estimate_gluon)"
    for (_gpu, precision, stride, d), (block_n, stages) in tuning.GLUON_ESTIMATE.items():
        assert precision in ("bf16", "fp8") and stride in eg.STRIDES and d in (64, 128)
        assert block_n in (64, 128, 256) and 2 <= stages <= 8
        assert eg.ring_bytes(block_n, stages, d, precision) <= eg.SMEM_RING_MAX
        base = {**ESTIMATE_BASE, "stride": stride, "head_dim": d}
        assert tuning.choose_estimate_kernel(**base) == "gluon"
        assert tuning.choose_estimate_kernel(**{**base, "n": 17411}) == "triton"
    assert eg.ring_bytes(128, 3, 128, "bf16") == 196608  # 3 x (32 KB q chunk + 32 KB k chunk)
    assert eg.ring_bytes(128, 7, 128, "fp8") > eg.SMEM_RING_MAX


def test_auto_estimate_stays_on_triton_while_the_gluon_stall_is_open(monkeypatch):
    """GLUON_ESTIMATE_AUTO is off (a GPU test run stalled in the Gluon estimate): "auto" runs the
    Triton estimate even on a GPU / precision / stride with a measured Gluon entry, and hands
    back that entry's tile / ring for a forced call."""
    from xattn_video.kernels import tuning

    assert tuning.GLUON_ESTIMATE_AUTO is False
    monkeypatch.setattr(tuning, "gpu_name", lambda t: "NVIDIA H200")
    q = torch.zeros(1, 2, 40000, 128, dtype=torch.bfloat16)
    assert tuning.estimate_kernel_for(q, q, 8, 128, "bf16") == ("triton", (128, 3))
    assert tuning.estimate_kernel_for(q, q, 16, 128, "fp8") == ("triton", (128, 6))
    assert tuning.estimate_kernel_for(q, q, 16, 128, "bf16") == ("triton", (128, 3))  # no entry


@pytest.mark.parametrize("change", [{"capability": 10}, {"stride": 4}, {"aligned": False}])
def test_forced_gluon_estimate_that_cannot_run_is_an_error(change):
    from xattn_video.kernels import tuning

    with pytest.raises(ValueError, match="kernel='gluon' needs an sm90 GPU"):
        tuning.choose_estimate_kernel(**{**ESTIMATE_BASE, **change, "kernel": "gluon"})
    with pytest.raises(ValueError, match="kernel must be one of"):
        tuning.choose_estimate_kernel(**{**ESTIMATE_BASE, "kernel": "cuda"})


def test_estimate_rejects_an_unknown_kernel_name():
    from xattn_video.kernels.estimate import estimate_block_scores

    q = torch.zeros(1, 1, 256, 64)
    with pytest.raises(ValueError, match="kernel must be"):
        estimate_block_scores(q, q, stride=8, block_size=128, kernel="cuda")


def test_estimate_log2_follows_the_measured_table():
    """lg2.approx everywhere except the launches measured faster with libdevice's log2f (the
    H200's bf16 stride-16 tiles spill with it): a field of that measured entry, so another
    N bucket's entry or another GPU does not inherit it."""
    from xattn_video.kernels.tuning import SAFE_ESTIMATE, estimate_config

    assert estimate_config("NVIDIA H200", "bf16", 16, 128).fast_log2 is False
    assert estimate_config("NVIDIA H200", "bf16", 16, 128, 119056).fast_log2 is False
    assert estimate_config("NVIDIA H200", "bf16", 8, 128).fast_log2 is True
    assert estimate_config("NVIDIA H200", "fp8", 16, 128).fast_log2 is True
    assert estimate_config("NVIDIA H200", "bf16", 8, 64, 17411).fast_log2 is True
    assert estimate_config("NVIDIA H100 80GB HBM3", "bf16", 16, 128).fast_log2 is True
    assert estimate_config(None, "bf16", 16, 128) == SAFE_ESTIMATE
    assert SAFE_ESTIMATE.fast_log2 is True


def test_the_h100_gets_its_measured_flattened_estimate_launches():
    """H100 entries (docs/results/probe_estimate_{tiles,flatten}_h100_*.json): flattened, with
    the tiles measured there; a GPU outside the table still gets the unflattened fallback."""
    from xattn_video.kernels.tuning import SAFE_ESTIMATE, EstimateLaunch, estimate_config

    h100 = "NVIDIA H100 80GB HBM3"
    assert estimate_config(h100, "bf16", 8, 128, 119056) == EstimateLaunch((128, 128, 8, 3), True)
    assert estimate_config(h100, "bf16", 16, 128, 67576) == EstimateLaunch((64, 128, 4, 3), True)
    assert estimate_config(h100, "fp8", 8, 128) == EstimateLaunch((128, 256, 8, 3), True)
    assert estimate_config(h100, "fp8", 16, 128) == EstimateLaunch((64, 128, 4, 4), True)
    assert estimate_config(h100, "bf16", 8, 64, 17411) == SAFE_ESTIMATE  # not measured there
    assert estimate_config("NVIDIA H100 NVL", "bf16", 8, 128) == SAFE_ESTIMATE
    assert SAFE_ESTIMATE.flatten is False


def test_the_h200_fp8_s8_estimate_takes_the_measured_wide_tiles():
    """H200 fp8 S=8 (docs/results/probe_estimate_tiles_fp8_s8_h200_1ce56b9*.json): 128x256 tiles
    on 8 warps, 4 stages at both lengths; the other H200 entries keep their tiles."""
    from xattn_video.kernels.tuning import EstimateLaunch, estimate_config

    h200 = "NVIDIA H200"
    for n in (67576, 119056):
        assert estimate_config(h200, "fp8", 8, 128, n) == EstimateLaunch((128, 256, 8, 4), True)
    assert estimate_config(h200, "fp8", 16, 128) == EstimateLaunch((64, 128, 4, 4), True)
    assert estimate_config(h200, "bf16", 8, 128) == EstimateLaunch((128, 128, 8, 3), True)
