"""The one-launch selection, CSR and non-finite kernels (interpreter on CPU) against the batched
torch code they replace in the op's Triton path: same masks, same lists, same NaN rows."""

import pytest
import torch

from xattn_video.kernels import select_fused
from xattn_video.kernels.nonfinite import nonfinite_flags, nonfinite_rows_ref, propagate_nan
from xattn_video.kernels.select import mask_to_indices, select_blocks, valid_key_blocks
from xattn_video.kernels.select_fused import mask_to_csr, select_blocks_fused

from ._block_masks import torch_selection


def _scores(B, H, nbq, nbk, seed, ties=False):
    g = torch.Generator().manual_seed(seed)
    if ties:  # integer masses: many exact ties and exact float64 sums
        return torch.randint(0, 4, (B, H, nbq, nbk), generator=g).float()
    return torch.rand(B, H, nbq, nbk, generator=g) ** 3


CASES = [  # (B, H, nbq, nbk, kv_len, dense_from)
    (1, 1, 5, 5, [80], None),
    (2, 3, 3, 9, [9 * 16, 5 * 16 - 3], None),  # B != H: a swapped (b, h) split shows
    (2, 2, 6, 6, [96, 70], 64),  # text from token 64 (blocks 4, 5 dense)
    (2, 2, 6, 6, [96, 70], torch.tensor([64, 40])),  # per-sample text start
    (1, 2, 3, 17, [17 * 16], 16 * 16 + 3),  # 17 key blocks: padded sort lanes
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("threshold", [0.05, 0.9, 0.97, 1.0])
@pytest.mark.parametrize("ties", [False, True])
def test_fused_threshold_equals_torch(case, threshold, ties):
    B, H, nbq, nbk, lens, df = case
    scores = _scores(B, H, nbq, nbk, seed=nbk + H, ties=ties)
    kv_len = torch.tensor(lens)
    got = select_blocks_fused(scores, block_size=16, threshold=threshold, kv_len=kv_len,
                              dense_from=df)  # fmt: skip
    want = torch_selection(scores, 16, kv_len, df, threshold=threshold)
    assert torch.equal(got, want)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("max_density", [0.05, 0.357, 0.8])
@pytest.mark.parametrize("ties", [False, True])
def test_fused_budget_equals_torch(case, max_density, ties):
    B, H, nbq, nbk, lens, df = case
    scores = _scores(B, H, nbq, nbk, seed=3 * nbk, ties=ties)
    kv_len = torch.tensor(lens)
    for min_blocks in (1, 2):
        kw = dict(threshold=0.97, max_density=max_density, min_blocks=min_blocks)
        got = select_blocks_fused(scores, block_size=16, kv_len=kv_len, dense_from=df, **kw)
        assert torch.equal(got, torch_selection(scores, 16, kv_len, df, **kw))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("ratio", [0.01, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("ties", [False, True])
def test_fused_ratio_equals_torch(case, ratio, ties):
    """Ratio mode ranks by counting (no sort) without a budget, by the sort with one: both
    keep exactly the torch selection's blocks, ties at the cut-off by ascending index."""
    B, H, nbq, nbk, lens, df = case
    scores = _scores(B, H, nbq, nbk, seed=5 * nbk + H, ties=ties)
    scores[0, 0, 0] = 0.0  # an all-zero row: its first blocks by index
    kv_len = torch.tensor(lens)
    for kw in (dict(ratio=ratio), dict(ratio=ratio, max_density=0.357, min_blocks=2)):
        got = select_blocks_fused(scores, block_size=16, kv_len=kv_len, dense_from=df, **kw)
        assert torch.equal(got, torch_selection(scores, 16, kv_len, df, **kw))


def test_fused_ratio_pinned_rows():
    """By hand: 2 of 5 valid blocks (ceil(0.3 * 5)); row 0 has a tie at the cut-off (3.0 at
    blocks 1 and 3: the lower index wins), row 1 only zeros past its top block, row 2 is
    all zero (blocks 0 and 1); block 5 holds no valid key (kv_len 80 = 5 blocks of 16)."""
    scores = torch.tensor(
        [[[[1.0, 3.0, 5.0, 3.0, 0.0, 9.0], [0.0, 0.0, 0.0, 2.0, 0.0, 0.0], [0.0] * 6]]]
    )
    got = select_blocks_fused(scores, block_size=16, ratio=0.3, kv_len=torch.tensor([80]))
    assert got[0, 0].int().tolist() == [[0, 1, 1, 0, 0, 0], [1, 0, 0, 1, 0, 0], [1, 1, 0, 0, 0, 0]]


def test_fused_negative_zero_scores_tie_with_zeros():
    """-0.0 passed the ``s >= 0`` clamp and its int32 pattern (0x80000000) ranked it below every
    other lane: ratio 0.6 kept blocks 1 and 4 of the zero ties, not 0 and 1 as torch does."""
    scores = torch.tensor([[[[-0.0, 0.0, -0.0, 2.0, 0.0], [-0.0] * 5]]])
    got = select_blocks_fused(scores, block_size=16, ratio=0.6)
    assert got[0, 0].int().tolist() == [[1, 1, 0, 1, 0], [1, 1, 1, 0, 0]]
    assert torch.equal(got, torch_selection(scores, 16, torch.tensor([80]), None, ratio=0.6))
    for kw in (dict(threshold=0.9), dict(threshold=0.9, max_density=0.5, min_blocks=2)):
        got = select_blocks_fused(scores, block_size=16, **kw)
        assert torch.equal(got, torch_selection(scores, 16, torch.tensor([80]), None, **kw))


def test_fused_selection_takes_one_mode():
    scores = torch.rand(1, 1, 2, 2)
    for kw in (dict(), dict(threshold=0.9, ratio=0.3)):
        with pytest.raises(ValueError, match="exactly one"):
            select_blocks_fused(scores, block_size=16, **kw)


def test_fused_per_head_threshold_and_zero_rows():
    scores = _scores(2, 3, 4, 6, seed=9)
    scores[0, 1, 2] = 0.0  # an all-zero row keeps its first block only
    thr = torch.tensor([0.5, 0.9, 1.0], dtype=torch.float64)
    kv_len = torch.tensor([96, 50])
    got = select_blocks_fused(scores, block_size=16, threshold=thr, kv_len=kv_len)
    assert torch.equal(got, select_blocks(scores, block_size=16, threshold=thr, kv_len=kv_len))
    assert got[0, 1, 2].tolist() == [True] + [False] * 5


def test_fused_threshold_pinned_row():
    """One row by hand: masses 4, 3, 2, 1 (share .4 .3 .2 .1); tau 0.65 keeps the first two ranks
    (mass before rank 2 is .7 >= .65), in key-block order."""
    scores = torch.tensor([[[[1.0, 4.0, 2.0, 3.0]]]])
    got = select_blocks_fused(scores, block_size=16, threshold=0.65)
    assert got.flatten().tolist() == [False, True, False, True]


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 1, 4, 33)])
def test_csr_equals_mask_to_indices(shape):
    B, H, nbq, nbk = shape
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(B, H, nbq, nbk, generator=g) < 0.4
    kv_len = torch.tensor([nbk * 16 - 5, 3 * 16 + 1][:B])
    counts, idx = mask_to_csr(mask, block_size=16, kv_len=kv_len, n_k=nbk * 16)
    valid = mask & valid_key_blocks(kv_len, nbk, 16)[:, None, None, :]
    want_c, want_i = mask_to_indices(valid)
    assert torch.equal(counts, want_c) and torch.equal(idx, want_i)
    # a mask broadcast over batch and heads
    bc = mask[:1, :1].expand(B, H, nbq, nbk)
    counts, idx = mask_to_csr(bc, block_size=16, kv_len=kv_len, n_k=nbk * 16)
    want_c, want_i = mask_to_indices(bc & valid_key_blocks(kv_len, nbk, 16)[:, None, None, :])
    assert torch.equal(counts, want_c) and torch.equal(idx, want_i)


def _plant(x, where, value):
    x = x.clone()
    x[where] = value
    return x


@pytest.mark.parametrize("nan_block", [0, 16])
def test_nonfinite_flags_and_propagation_equal_the_policy(nan_block):
    B, H, N, D = 2, 2, 150, 16
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, generator=g) for _ in range(3))
    kv_len = torch.tensor([150, 100], dtype=torch.int32)
    q = _plant(q, (0, 1, 37, 3), float("nan"))  # one query row (its block with nan_block)
    k = _plant(k, (1, 0, 70, 2), float("inf"))  # a valid key: head (1, 0) all NaN
    v = _plant(v, (1, 1, 120, 5), float("nan"))  # padding (>= kv_len 100): ignored
    v = _plant(v, (1, 1, 100, 1), float("nan"))  # the first padded key, exactly at kv_len
    k = _plant(k, (1, 1, 100, 4), float("inf"))  # (an off-by-one there flagged the whole head)
    q = _plant(q, (0, 0, 149, 0), float("-inf"))  # the last, partial query block
    flags = nonfinite_flags(q, k, v, kv_len)
    out = torch.randn(B, H, N, D, generator=g)
    lse = torch.randn(B, H, N, generator=g)
    out0, lse0 = out.clone(), lse.clone()
    propagate_nan(out, lse, *flags, nan_block=nan_block)
    want = nonfinite_rows_ref(q, k, v, kv_len, nan_block)
    assert int(want.sum()) == (22 if nan_block else 2) + N  # rows, plus a whole head
    assert torch.equal(out.isnan().all(-1), want) and torch.equal(out.isnan().any(-1), want)
    assert torch.equal(lse.isnan(), want)
    assert torch.equal(out[~want], out0[~want]) and torch.equal(lse[~want], lse0[~want])


def test_nonfinite_flags_cover_keys_past_the_query_length():
    """Fewer queries than keys (64 vs 300): key chunks are counted over max(Nq, Nk); counted
    over Nq, a NaN in valid key 250 was missed and the output stayed finite."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 64, 16, generator=g)
    k, v = (torch.randn(1, 1, 300, 16, generator=g) for _ in range(2))
    k = _plant(k, (0, 0, 250, 3), float("nan"))
    lens = torch.tensor([300], dtype=torch.int32)
    q_bad, kv_bad = nonfinite_flags(q, k, v, lens)
    assert kv_bad.tolist() == [[0, 1, 0]] and not bool(q_bad.any())
    out, lse = torch.zeros(1, 1, 64, 16), torch.zeros(1, 1, 64)
    propagate_nan(out, lse, q_bad, kv_bad, nan_block=0)
    want = nonfinite_rows_ref(q, k, v, lens)
    assert bool(want.all()) and bool(out.isnan().all()) and bool(lse.isnan().all())


def test_op_falls_back_to_torch_selection_beyond_the_fused_row_length(monkeypatch):
    """Rows longer than the kernels take run the torch selection and lists: same mask, same
    output."""
    import xattn_video as xv
    from xattn_video import attention

    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, 100, 16, generator=g) for _ in range(3))
    kw = dict(threshold=0.9, stride=4, block_size=16, dense_from=90, max_density=0.5,
              backend="triton", return_mask=True)  # fmt: skip
    out, mask = xv.xattention(q, k, v, **kw)
    monkeypatch.setattr(attention, "MAX_FUSED_BLOCKS", 4)  # 7 key blocks: torch code
    monkeypatch.setattr(select_fused, "MAX_BLOCKS", 4)

    def fused(*args, **kwargs):
        raise AssertionError("the fused kernels ran")

    monkeypatch.setattr(attention, "select_block_mask", fused)
    monkeypatch.setattr(select_fused, "_csr_kernel", _Unlaunchable())
    out2, mask2 = xv.xattention(q, k, v, **kw)
    assert torch.equal(mask, mask2) and torch.equal(out, out2)


class _Unlaunchable:
    def __getitem__(self, grid):
        raise AssertionError("the CSR kernel was launched")


def test_block_csr_runs_torch_lists_beyond_the_kernel_row_length(monkeypatch):
    """Regression (H200): the cost model's calibration asked block_csr for 4,096 key blocks and
    the Triton lists raised; rows over MAX_BLOCKS now get the torch lists, equal to the
    kernel's."""
    from xattn_video.library import block_csr

    g = torch.Generator().manual_seed(5)
    mask = torch.rand(2, 3, 5, 7, generator=g) < 0.5
    lens = torch.tensor([100, 70], dtype=torch.int32)  # 7 and 5 valid key blocks of 16
    want = block_csr(mask, kv_len=lens, block_size=16, n_k=100)
    monkeypatch.setattr(select_fused, "MAX_BLOCKS", 4)
    monkeypatch.setattr(select_fused, "_csr_kernel", _Unlaunchable())
    got = block_csr(mask, kv_len=lens, block_size=16, n_k=100)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert torch.equal(got[0][1], mask[1, :, :, :5].sum(-1, dtype=torch.int32))  # kv_len 70


_COMPILE_ONES = """
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler.compiler import ASTSource
from xattn_video.kernels import select_fused as sf

out = sys.argv[1]
i32 = {n: "i32" for n in "H NBQ NBK N_Q N_K stride_sb stride_sh stride_sq L".split()}
rows = dict(SCORES="*fp32", MASK="*i8", PRIO="*fp64", KV_LEN="*i32", THR="*fp64", DF="*i32")
rows.update({n: i32[n] for n in "H NBQ NBK N_Q N_K stride_sb stride_sh stride_sq".split()})
ptx = []
for ratio in (False, True):  # thr_bits and df_value of 1: what the launcher makes a constexpr
    consts = dict(thr_bits=1, df_value=1, BLOCK=128, NP=16, THR_PER_HEAD=False, DF_MODE=1,
                  BUDGET=True, MIN_BLOCKS=1, RATIO=ratio)
    sig = dict(rows, **{n: "constexpr" for n in consts})
    k = triton.compile(ASTSource(sf._select_rows_kernel, sig, consts), target=GPUTarget("cuda", 90, 32))
    ptx.append(k.asm["ptx"])
keep = dict(RANKED="*fp64", ORDER="*i64", MASK="*i8", KV_LEN="*i32", H="i32", NBQ="i32",
            NBK="i32", L="i32")
consts = dict(md_bits=1, BLOCK=128, TILE=1024)
sig = dict(keep, **{n: "constexpr" for n in consts})
k = triton.compile(ASTSource(sf._budget_keep_kernel, sig, consts), target=GPUTarget("cuda", 90, 32))
ptx.append(k.asm["ptx"])
open(out + ".ptx", "w").write("\\n".join(ptx))
json.dump({}, open(out + ".json", "w"))
"""


def test_scalar_arguments_of_one_compile_for_a_gpu(tmp_path):
    """Triton's launcher passes an int argument equal to 1 as a constexpr, so ``dense_from=1``
    (or a threshold / max_density whose float64 bits are 1) must compile with it: calling
    ``.to()`` on such an argument failed on the H200 (``'int' object has no attribute 'to'``),
    and the interpreter never showed it. Compiled for sm90 here, without a GPU."""
    from ._gluon_compile import compile_sm90

    ptx, _ = compile_sm90(tmp_path, _COMPILE_ONES)
    assert ptx.count(".entry _select_rows_kernel") == 2 and ".entry _budget_keep_kernel" in ptx
