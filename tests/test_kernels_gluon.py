"""The Gluon kernel on CPU: argument checks, and that it compiles for sm90 (PTX assembled by
the ptxas that ships with Triton), bf16 and fp8, with its three partitions and register
re-allocation, without register spills and within Hopper's shared memory. Its numbers are checked
on the GPU (tests/test_gpu_gluon.py)."""

import re

import pytest
import torch

from xattn_video.kernels import gluon_ptx
from xattn_video.kernels import sparse_attention_gluon as sag

from ._gluon_compile import (
    assert_no_spills,
    assert_ws_partitions,
    compile_sm90,
    loops_and_local_accesses,
)

needs_gluon = pytest.mark.skipif(not sag.HAS_GLUON, reason="Triton without Gluon's Hopper module")


@pytest.mark.parametrize(
    "version, ok",
    [("3.6.0", True), ("3.8.0+git1a2b3c", True), ("4.0.1", True), ("3.5.1", False),
     ("3.4.0", False), ("2.3.1", False), ("dev", False)],
)  # fmt: skip
def test_only_triton_versions_it_was_checked_on(version, ok):
    """Gluon's API moves between releases: older Triton falls back to the Triton kernels."""
    assert sag.gluon_supported(version) is ok


@needs_gluon
def test_rejects_inputs_it_does_not_take():
    q = torch.zeros(1, 1, 256, 128, dtype=torch.bfloat16)
    counts = torch.zeros(1, 1, 2, dtype=torch.int32)
    idx = torch.zeros(1, 1, 2, 2, dtype=torch.int32)
    with pytest.raises(ValueError, match="block_size 128"):
        sag.block_sparse_attention_gluon(q, q, q, counts, idx, block_size=64)
    q32 = torch.zeros(1, 1, 256, 32, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="head dim"):
        sag.block_sparse_attention_gluon(q32, q32, q32, counts, idx, block_size=128)
    with pytest.raises(ValueError, match="stages 2 or 3"):
        sag.block_sparse_attention_gluon(q, q, q, counts, idx, block_size=128, stages=4)
    with pytest.raises(ValueError, match="bf16/fp16"):
        sag.block_sparse_attention_gluon(q.float(), q, q, counts, idx, block_size=128)
    with pytest.raises(ValueError, match="pairs=True takes"):
        sag.block_sparse_attention_gluon(q, q, q, counts, idx, block_size=128, pairs=True)
    with pytest.raises(ValueError, match="pairs=True takes"):
        sag.block_sparse_attention_gluon(q, q, q, counts, idx, block_size=128, precision="fp8",
                                         stages=3, pairs=True)  # fmt: skip


_COMPILE = """
import sys
from tests._gluon_compile import compile_kernel, tensordesc
from xattn_video.kernels import sparse_attention_gluon as sag

d, stages, fp8 = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "fp8"
pairs, tail, out = sys.argv[4] == "1", sys.argv[5] == "1", sys.argv[6]
name = "fp8e4nv" if fp8 else "bf16"
sig = dict(q_desc=tensordesc([1, 1, 64, d], name), k_desc=tensordesc([1, 1, 128, d], name),
           v_desc=tensordesc([1, 1, d, 128] if fp8 else [1, 1, 128, d], name),
           o_desc=tensordesc([1, 1, 64, d], "bf16"), LSE="*fp32", COUNTS="*i32",
           INDICES="*i32", KV_LEN="*i32", Q_SCALE="*fp32", K_SCALE="*fp32", V_SCALE="*fp32",
           stride_cbh="i32", stride_ibh="i32", stride_im="i32", stride_sq="i32", stride_sk="i32",
           H="i32", N_Q="i32", qk_scale="fp32")
sig["vt_desc"] = sig["v_desc"]
compile_kernel(sag._bsa_gluon_kernel, sig,
               dict(STAGES=stages, FP8=fp8, PAIRS=pairs, TAIL=tail, num_warps=4), sag.MAXNREG, out)
"""


@needs_gluon
@pytest.mark.parametrize(
    "d, stages, precision, pairs, tail",
    [
        (128, 2, "bf16", 0, 0),
        (128, 2, "bf16", 0, 1),
        (128, 3, "bf16", 0, 1),
        (64, 2, "bf16", 0, 1),
        (128, 2, "fp8", 0, 0),
        (128, 3, "fp8", 0, 0),
        (128, 4, "fp8", 0, 0),
        (128, 2, "fp8", 1, 0),
    ],
)
def test_compiles_for_sm90_without_spills(tmp_path, d, stages, precision, pairs, tail):
    """The fp8 pair loop at Triton 3.6 (the GPU machine's) has no spills either; Triton 3.8
    spills 12 bytes of it: three scalars, stored before its main loop and reloaded after it and
    in the last pair's mask branch (inside the loop, taken once); no other local-memory access
    is inside any loop (checked in its SASS, disassembled on CPU).
    ``tail``: bf16 with key padding (the block holding kv_len loaded from its zero-padded
    copy)."""
    import triton

    ptx_text, meta = compile_sm90(tmp_path, _COMPILE, d, stages, precision, pairs, tail)
    assert_ws_partitions(ptx_text, meta)
    # fp8: both matmuls on the e4m3 tensor cores
    assert ("wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3" in ptx_text) == (
        precision == "fp8"
    )
    assert_no_spills(tmp_path, 16 if pairs and not triton.__version__.startswith("3.6") else 0)
    loops, local = loops_and_local_accesses(tmp_path)
    assert len(loops) >= 2, loops  # both consumers' main loops (and the producer's, if long)
    in_loops = [(a, op) for a, op in local if any(lo <= a <= hi for lo, hi in loops)]
    if pairs and not triton.__version__.startswith("3.6"):  # the last pair's branch reloads
        assert [op for _, op in in_loops].count("LDL") <= 1, (loops, local)  # one scalar
        in_loops = [(a, op) for a, op in in_loops if op != "LDL"]
    assert not in_loops, (loops, local)
    assert_pingpong_and_rescale(ptx_text, stages)
    if precision == "fp8":  # P.V's A operand: registers (one-block loop) or shared memory
        wgmmas = re.findall(r"wgmma\.mma_async[^;]*;", ptx_text)
        register_a = [w for w in wgmmas if re.search(r"\}\s*,\s*\{", w)]
        assert (len(register_a) == 0) == bool(pairs), (len(register_a), len(wgmmas))
        # pairs: P stored by stmatrix, 2 x 16 per pair next to the epilogue's 16 for O
        assert ptx_text.count("stmatrix") == (48 if pairs else 16)


def assert_pingpong_and_rescale(ptx: str, stages: int) -> None:
    """The consumers take turns on hardware named barriers of 256 threads whose ids no barrier
    of Triton's own uses; the ring has one "empty" mbarrier per slot (K and V released
    together: 2 + 3 x stages mbarriers, was 2 + 2 + 4 x stages with separate K / V releases and
    the two mbarrier turns); the rescale sits behind a warp vote."""
    fixed_ids = {int(i) for i in re.findall(r"\b(?:bar|barrier)\.(?:sync|arrive)\s+(\d+)", ptx)}
    assert fixed_ids and not fixed_ids & set(gluon_ptx.PINGPONG_BARRIERS), fixed_ids
    assert re.search(r"bar\.sync %r\d+, 256;", ptx) and re.search(r"bar\.arrive %r\d+, 256;", ptx)
    assert ptx.count("mbarrier.init") == 2 + 3 * stages
    assert "vote.sync.any.pred" in ptx and "@!q bra.uni SKIP;" in ptx


def test_rescale_ptx_multiplies_every_value_by_its_own_alpha_behind_the_flag():
    assert gluon_ptx.rescale_asm(2) == (
        "{ .reg .pred q; setp.neu.f32 q, $6, 0f00000000; @!q bra.uni SKIP; "
        "mul.f32 $0, $0, $4; mul.f32 $1, $1, $5; SKIP: }"
    )
    assert gluon_ptx.rescale_constraints(2) == "=r,=r,0,1,r,r,r,r"


@needs_gluon
def test_fp8_p_reaches_the_pv_operand_without_moving_between_threads(tmp_path):
    """fp8 P is reordered (keys within each 32) so that each thread already holds the values
    of the e4m3 A operand: the fp8 kernel has no more warp shuffles than the bf16 one (their
    row reductions); without the reorder the conversion added 64 shuffles."""
    fp8_ptx, _ = compile_sm90(tmp_path, _COMPILE, 128, 3, "fp8", 0, 0)
    bf16_ptx, _ = compile_sm90(tmp_path, _COMPILE, 128, 3, "bf16", 0, 0)
    assert fp8_ptx.count("shfl.sync") == bf16_ptx.count("shfl.sync") > 0


@needs_gluon
def test_padded_tail_block_is_the_kv_len_block_with_padding_zeroed():
    """The bf16 kernel's copy of the V block holding kv_len (interpreter on CPU): that block's
    valid rows as they are, its padded rows (NaN / Inf planted) as zeros; a kv_len on a block
    boundary gives the next, all-padding block (never listed) as zeros too."""
    from xattn_video.kernels.gluon_attention_parts import padded_tail_block

    v = torch.randn(2, 3, 300, 16, generator=torch.Generator().manual_seed(12))
    v[1, :, 150:] = float("nan")
    v[0, 2, 299, 0] = float("inf")
    lens = torch.tensor([300, 150], dtype=torch.int32)
    got = padded_tail_block(v, lens, 64)
    want = torch.zeros(2, 3, 64, 16)
    want[0, :, :44] = v[0, :, 256:300]  # block 4 (256-319): 44 rows below N = kv_len = 300
    want[1, :, :22] = v[1, :, 128:150]  # block 2 (128-191): 22 valid rows
    want[0, 2, 43, 0] = float("inf")  # a valid row keeps its value
    assert torch.equal(got, want)
    assert torch.equal(padded_tail_block(v, torch.tensor([256, 128], dtype=torch.int32), 64),
                       torch.zeros(2, 3, 64, 16))  # fmt: skip
