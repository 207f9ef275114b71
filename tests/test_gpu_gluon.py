"""GPU checks of the Gluon kernel (``pytest -m gpu`` on an sm90 GPU): outputs of sampled query
blocks against fp64 with the flash-attention rule, LSE against the portable kernel's, empty
rows, key padding, B=2, both ring depths, head dims 64 and 128, up to 119,056 tokens; and that
the op's automatic choice runs it where the table says."""

import math
from functools import partial

import pytest
import torch

from xattn_video.kernels.select import mask_to_indices, select_blocks
from xattn_video.kernels.sparse_attention import block_sparse_attention_fwd
from xattn_video.kernels.sparse_attention_gluon import HAS_GLUON

from ._tolerance import assert_fa_close, naive_attention

pytestmark = pytest.mark.gpu

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9
needs_hopper = pytest.mark.skipif(not HOPPER, reason="needs an sm90+ GPU")
# the kernel itself: sm90 only (wgmma) and a Triton it supports
SM90_GLUON = HAS_GLUON and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
needs_sm90_gluon = pytest.mark.skipif(
    not SM90_GLUON, reason="needs a CUDA GPU of sm90 (wgmma) and Triton >= 3.6"
)


@needs_sm90_gluon
@pytest.mark.parametrize(
    "n, d", [(1000, 128), (8192, 128), (3000, 64), (67576, 128), (119056, 128)]
)
@pytest.mark.parametrize("stages", [2, 3])
@pytest.mark.parametrize("density", [0.3, 1.0])
def test_gluon_kernel_matches_fp64(n, d, stages, density):
    from xattn_video.kernels.sparse_attention_gluon import block_sparse_attention_gluon

    kernel = partial(block_sparse_attention_gluon, stages=stages)
    B, H = 2, 2
    g = torch.Generator(device="cuda").manual_seed(n + d)
    q, k, v = (torch.randn(B, H, n, d, device="cuda", generator=g).bfloat16() for _ in range(3))
    kv_len = torch.tensor([n, n - 77], device="cuda")
    nb = math.ceil(n / 128)
    mask = select_blocks(torch.rand(B, H, nb, nb, device="cuda", generator=g), block_size=128,
                         ratio=density, kv_len=kv_len)  # fmt: skip
    mask[0, 1, 1] = False  # an empty row: zeros and -inf LSE
    counts, idx = mask_to_indices(mask)
    out, lse = kernel(q, k, v, counts, idx, block_size=128, kv_len=kv_len, return_lse=True)
    ref, ref_lse = block_sparse_attention_fwd(q, k, v, counts, idx, block_size=128,
                                              kv_len=kv_len, return_lse=True, kernel="portable")  # fmt: skip
    assert torch.equal(out[0, 1, 128:256], torch.zeros_like(out[0, 1, 128:256]))
    assert torch.isinf(lse[0, 1, 128:256]).all()
    ok = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[ok], ref_lse[ok], rtol=0, atol=2e-2)
    key_ok = torch.arange(n, device="cuda")[None, :] < kv_len[:, None]
    for qb in sorted({0, nb // 2, nb - 1}):
        r0, r1 = qb * 128, min(n, (qb + 1) * 128)
        tok = (mask[:, :, qb].repeat_interleave(128, -1)[..., :n] & key_ok[:, None, :])[:, :, None]
        exact = naive_attention(q[:, :, r0:r1], k, v, tok, dtype=torch.float64)
        lowp = naive_attention(q[:, :, r0:r1], k, v, tok, dtype=q.dtype)
        exact, lowp = exact.nan_to_num(0.0), lowp.nan_to_num(0.0)  # the empty row
        assert_fa_close(out[:, :, r0:r1], exact, lowp, what=f"q-block {qb}")


@needs_hopper
def test_auto_dispatch_runs_the_gluon_kernel_on_sm90_at_video_sizes():
    from xattn_video.kernels import tuning
    from xattn_video.kernels.sparse_attention_gluon import block_sparse_attention_gluon

    n = 40000
    g = torch.Generator(device="cuda").manual_seed(3)
    q, k, v = (torch.randn(1, 2, n, 128, device="cuda", generator=g).bfloat16() for _ in range(3))
    nb = math.ceil(n / 128)
    mask = select_blocks(torch.rand(1, 2, nb, nb, device="cuda", generator=g), block_size=128,
                         ratio=0.2, n_k=n)  # fmt: skip
    counts, idx = mask_to_indices(mask)
    want = "gluon" if SM90_GLUON else "hopper"
    assert tuning.attention_kernel_for(q, k, v, 128) == want
    assert tuning.attention_kernel_for(q, k, v, 128, precision="fp8") == want
    if want == "gluon":
        stages = tuning.gluon_stages(torch.cuda.get_device_name(), 128)
        fp8_stages = tuning.gluon_stages(torch.cuda.get_device_name(), 128, "fp8")
        fp8 = block_sparse_attention_gluon(q, k, v, counts, idx, block_size=128,
                                           precision="fp8", stages=fp8_stages)  # fmt: skip
        assert torch.equal(
            block_sparse_attention_fwd(q, k, v, counts, idx, block_size=128, precision="fp8"),
            fp8,
        )
        direct = block_sparse_attention_gluon(q, k, v, counts, idx, block_size=128, stages=stages)
        assert torch.equal(block_sparse_attention_fwd(q, k, v, counts, idx, block_size=128),
                           direct)  # fmt: skip


@needs_hopper
def test_gluon_kernel_replays_in_a_cuda_graph():
    """reduce-overhead compiles capture the op in a CUDA graph: the Gluon launch (host TMA
    descriptors, warp-specialized partitions) must replay on new values of the same buffers."""
    n = 40000
    g = torch.Generator(device="cuda").manual_seed(5)
    q, k, v = (torch.randn(1, 2, n, 128, device="cuda", generator=g).bfloat16() for _ in range(3))
    nb = math.ceil(n / 128)
    scores = torch.rand(1, 2, nb, nb, device="cuda", generator=g)
    counts, idx = mask_to_indices(select_blocks(scores, block_size=128, ratio=0.3, n_k=n))
    run = partial(block_sparse_attention_fwd, q, k, v, counts, idx, block_size=128)
    run()  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run()
    q.copy_(torch.randn(q.shape, device="cuda", generator=g))
    c2, i2 = mask_to_indices(select_blocks(scores.flip(-1), block_size=128, ratio=0.3, n_k=n))
    counts.copy_(c2)
    idx[..., : i2.shape[-1]].copy_(i2)
    graph.replay()
    assert torch.equal(out, block_sparse_attention_fwd(q, k, v, counts, idx, block_size=128))


# e4m3 keeps 3 mantissa bits: Q.K and P.V in fp8 -> ~5-8% relative L2 error of the output
FP8_REL_L2 = 0.12


@needs_sm90_gluon
@pytest.mark.parametrize("n", [3000, 67576, 119056])
@pytest.mark.parametrize("stages, pairs", [(2, False), (3, False), (4, False), (2, True)])
def test_gluon_fp8_error_budget_and_agreement_with_the_triton_fp8_kernel(n, stages, pairs):
    """precision='fp8': against fp64 on sampled query blocks within the fp8 budget and no
    worse than the Triton Hopper kernel's fp8 path on the same blocks (errors printed); LSE
    equal to that kernel's, outputs close to it: both round P to e4m3, but at different scales
    (the Gluon kernel's lazy row maximum and 2**6 shift against the running maximum and 2**8),
    so their difference is two independent roundings (measured 2.8-3.2e-2 relative L2) where
    it was 1.6e-5 with the same scale; empty rows, key padding, B=2."""
    from xattn_video.kernels.sparse_attention_gluon import block_sparse_attention_gluon
    from xattn_video.kernels.sparse_attention_hopper import block_sparse_attention_hopper
    from xattn_video.kernels.tuning import SAFE_HOPPER

    B, H, D = 2, 2, 128
    g = torch.Generator(device="cuda").manual_seed(n + stages)
    q, k, v = (torch.randn(B, H, n, D, device="cuda", generator=g).bfloat16() for _ in range(3))
    kv_len = torch.tensor([n, n - 77], device="cuda")
    nb = math.ceil(n / 128)
    mask = select_blocks(torch.rand(B, H, nb, nb, device="cuda", generator=g), block_size=128,
                         ratio=0.3, kv_len=kv_len)  # fmt: skip
    mask[0, 1, 1] = False
    counts, idx = mask_to_indices(mask)
    kw = dict(block_size=128, kv_len=kv_len, return_lse=True, precision="fp8")
    out, lse = block_sparse_attention_gluon(q, k, v, counts, idx, stages=stages, pairs=pairs, **kw)
    cfg = dict(SAFE_HOPPER, FP8_PV=True)
    t_out, t_lse = block_sparse_attention_hopper(q, k, v, counts, idx, config=cfg, **kw)
    assert torch.equal(out[0, 1, 128:256], torch.zeros_like(out[0, 1, 128:256]))
    assert torch.isinf(lse[0, 1, 128:256]).all()
    ok = torch.isfinite(t_lse)
    assert torch.equal(ok, torch.isfinite(lse))
    torch.testing.assert_close(lse[ok], t_lse[ok], rtol=0, atol=1e-3)
    agree = ((out.float() - t_out.float()).norm() / t_out.float().norm()).item()
    key_ok = torch.arange(n, device="cuda")[None, :] < kv_len[:, None]
    diffs, t_diffs, refs = [], [], []
    for qb in sorted({0, 2, nb // 2, nb - 1}):
        r0, r1 = qb * 128, min(n, (qb + 1) * 128)
        tok = (mask[:, :, qb].repeat_interleave(128, -1)[..., :n] & key_ok[:, None, :])[:, :, None]
        exact = naive_attention(q[:, :, r0:r1], k, v, tok, dtype=torch.float64).nan_to_num(0.0)
        diffs.append((out[:, :, r0:r1].double() - exact).flatten())
        t_diffs.append((t_out[:, :, r0:r1].double() - exact).flatten())
        refs.append(exact.flatten())
    diff, ref = torch.cat(diffs), torch.cat(refs)
    rel = (diff.norm() / ref.norm()).item()
    t_rel = (torch.cat(t_diffs).norm() / ref.norm()).item()
    print(f"gluon fp8 n={n} stages={stages} pairs={pairs}: max {diff.abs().max():.3e} "
          f"mean {diff.abs().mean():.3e} rel_l2 {rel:.3e} (triton fp8 {t_rel:.3e}) "
          f"vs triton fp8 {agree:.1e}")  # fmt: skip
    assert rel < FP8_REL_L2
    assert rel < 1.1 * t_rel, (rel, t_rel)
    assert agree < 0.05, agree


@needs_sm90_gluon
def test_gluon_fp8_pairs_take_short_and_odd_lists():
    """The pair loop (two key blocks per step) on lists of 0-5 blocks, odd ones ending in a
    filler copy of the last block that must add nothing, the last block padded: equal LSE and
    outputs as close to the single-block fp8 kernel's as two e4m3 roundings of P allow, and
    within the fp8 budget against fp64."""
    from xattn_video.kernels.sparse_attention_gluon import block_sparse_attention_gluon

    B, H, n, D = 2, 3, 6 * 128 - 50, 128
    g = torch.Generator(device="cuda").manual_seed(7)
    q, k, v = (torch.randn(B, H, n, D, device="cuda", generator=g).bfloat16() for _ in range(3))
    kv_len = torch.tensor([n, n - 77], device="cuda")
    nb = 6
    mask = torch.zeros(B, H, nb, nb, dtype=torch.bool, device="cuda")
    for qb in range(nb):  # query block qb lists qb blocks (0-5), the last one padded
        mask[:, :, qb, nb - qb :] = True
    counts, idx = mask_to_indices(mask)
    kw = dict(block_size=128, kv_len=kv_len, return_lse=True, precision="fp8", stages=2)
    out, lse = block_sparse_attention_gluon(q, k, v, counts, idx, pairs=True, **kw)
    # pairs=False: at stages=2 the default is the pair loop, which this compared with itself
    one, one_lse = block_sparse_attention_gluon(q, k, v, counts, idx, pairs=False, **kw)
    assert torch.equal(out[:, :, :128], torch.zeros_like(out[:, :, :128]))
    assert torch.isinf(lse[:, :, :128]).all()
    ok = torch.isfinite(one_lse)
    assert torch.equal(ok, torch.isfinite(lse))
    torch.testing.assert_close(lse[ok], one_lse[ok], rtol=0, atol=1e-3)
    key_ok = torch.arange(n, device="cuda")[None, :] < kv_len[:, None]
    for qb in range(1, nb):
        r0, r1 = qb * 128, min(n, (qb + 1) * 128)
        tok = (mask[:, :, qb].repeat_interleave(128, -1)[..., :n] & key_ok[:, None, :])[:, :, None]
        exact = naive_attention(q[:, :, r0:r1], k, v, tok, dtype=torch.float64)
        rel = ((out[:, :, r0:r1].double() - exact).norm() / exact.norm()).item()
        one_rel = ((one[:, :, r0:r1].double() - exact).norm() / exact.norm()).item()
        assert rel < FP8_REL_L2 and rel < 1.25 * one_rel + 1e-3, (qb, rel, one_rel)
