"""The registered ops (xattn_video.library): opcheck (schema, fake tensors, dispatcher), equality
with the direct kernels, and a fullgraph torch.compile of estimate -> select -> attention."""

from __future__ import annotations

import pytest
import torch

import xattn_video as xv
from xattn_video import library
from xattn_video.kernels._common import interpreter_enabled
from xattn_video.kernels.estimate import estimate_block_scores_ref
from xattn_video.kernels.select import mask_to_indices, select_blocks
from xattn_video.kernels.sparse_attention import block_sparse_attention_ref

from ._tolerance import assert_fa_close, naive_attention

# opcheck's default tests minus the autograd ones (the ops are forward-only)
OPCHECK_TESTS = ("test_schema", "test_faketensor", "test_aot_dispatch_static")


def _qkv(B=2, H=2, N=70, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, N, D, generator=g) for _ in range(3)]


def _sparse_inputs(bs=16, S=4):
    q, k, v = _qkv()
    kv_len = torch.tensor([70, 41], dtype=torch.int32)
    scores = estimate_block_scores_ref(q, k, stride=S, block_size=bs, kv_len=kv_len)
    mask = select_blocks(scores, block_size=bs, threshold=0.8, kv_len=kv_len)
    counts, indices = mask_to_indices(mask)
    return q, k, v, mask, counts, indices, kv_len


def test_indices_to_mask_inverts_mask_to_indices():
    *_, mask, counts, indices, _ = _sparse_inputs()
    assert torch.equal(library.indices_to_mask(counts, indices, mask.shape[-1]), mask)


@pytest.mark.parametrize("use_triton", [False, True])
def test_opcheck_estimate(use_triton):
    if use_triton and not interpreter_enabled():
        pytest.skip("the Triton path needs the interpreter on CPU")
    q, k, _ = _qkv()
    kv_len = torch.tensor([70, 41], dtype=torch.int32)
    args = (q, k, kv_len, [], 4, 16, use_triton)
    torch.library.opcheck(library.estimate_block_scores_op, args, test_utils=OPCHECK_TESTS)
    got = library.estimate_block_scores_op(*args)
    want = estimate_block_scores_ref(q, k, stride=4, block_size=16, kv_len=kv_len)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("use_triton", [False, True])
def test_opchecks_with_fewer_queries_than_keys(use_triton):
    """Nq != Nk (cross-attention shapes): the fakes' scores and lse take their sizes from the
    right tensors (every opcheck used Nq == Nk, so a fake sized from the other one passed)."""
    if use_triton and not interpreter_enabled():
        pytest.skip("the Triton path needs the interpreter on CPU")
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 2, 48, 16, generator=g)
    k, v = (torch.randn(2, 2, 80, 16, generator=g) for _ in range(2))
    kv_len = torch.tensor([80, 50], dtype=torch.int32)
    est = (q, k, kv_len, [], 4, 16, use_triton)
    torch.library.opcheck(library.estimate_block_scores_op, est, test_utils=OPCHECK_TESTS)
    scores = library.estimate_block_scores_op(*est)
    assert scores.shape == (2, 2, 3, 5)
    mask = select_blocks(scores, block_size=16, threshold=0.8, kv_len=kv_len)
    counts, indices = mask_to_indices(mask)
    args = (q, k, v, counts, indices, kv_len, [], 16, 0.25, True, use_triton)
    torch.library.opcheck(library.block_sparse_attention_op, args, test_utils=OPCHECK_TESTS)
    out, lse = library.block_sparse_attention_op(*args)
    assert out.shape == q.shape and lse.shape == (2, 2, 48)


@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("budget", [0.0, 0.4])
@pytest.mark.parametrize("ratio", [0.0, 0.35])
def test_opcheck_select_and_csr(per_head, budget, ratio):
    if not interpreter_enabled():
        pytest.skip("the Triton ops need the interpreter on CPU")
    q, k, *_, kv_len = _sparse_inputs()
    scores = estimate_block_scores_ref(q, k, stride=4, block_size=16, kv_len=kv_len)
    thr = torch.tensor([0.8, 0.6], dtype=torch.float64) if per_head else None
    df = torch.tensor([64, 40]) if per_head else None
    args = (scores, kv_len, thr, 0.8, df, -1 if per_head else 48, 16, budget, 1, ratio, 70, 70)
    torch.library.opcheck(library.select_block_mask_op, args, test_utils=OPCHECK_TESTS)
    mask = library.select_block_mask_op(*args)
    from xattn_video.attention import dense_blocks

    start = df if per_head else 48
    want = select_blocks(
        scores, block_size=16, kv_len=kv_len,
        **(dict(ratio=ratio) if ratio else dict(threshold=thr if per_head else 0.8)),
        force_rows=dense_blocks(start, 2, 70, 16, "cpu"),
        force_cols=dense_blocks(start, 2, 70, 16, "cpu"),
        max_density=budget or None,
    )  # fmt: skip
    assert torch.equal(mask, want)
    csr_args = (mask, kv_len, 16, 70)
    torch.library.opcheck(library.block_csr_op, csr_args, test_utils=OPCHECK_TESTS)
    counts, indices = library.block_csr_op(*csr_args)
    assert torch.equal(counts, mask_to_indices(mask)[0])
    assert torch.equal(indices, mask_to_indices(mask)[1])


def test_select_with_dense_from_0_keeps_every_valid_block():
    """dense_from 0: every token is a forced (text) token, so every valid block is kept; a
    0 read as 'no text' (as the -1 sentinel) kept only the threshold's blocks."""
    if not interpreter_enabled():
        pytest.skip("the Triton ops need the interpreter on CPU")
    q, k, *_, kv_len = _sparse_inputs()
    scores = estimate_block_scores_ref(q, k, stride=4, block_size=16, kv_len=kv_len)
    args = (scores, kv_len, None, 0.5, None, 0, 16, 0.0, 1, 0.0, 70, 70)
    mask = library.select_block_mask_op(*args)
    valid = torch.arange(5) < torch.tensor([5, 3])[:, None]  # key blocks of 70 and 41 tokens
    assert torch.equal(mask, valid[:, None, None, :].expand(2, 2, 5, 5))
    sparse = library.select_block_mask_op(*args[:5], -1, *args[6:])
    assert sparse.sum() < mask.sum()  # the same call without text keeps fewer


@pytest.mark.parametrize("use_triton", [False, True])
def test_the_ops_nan_block_spreads_a_nan_query_over_its_block(use_triton):
    """nan_block=16: a NaN query row makes its whole 16-row block NaN, on both paths (the torch
    path ignored nan_block: only the row itself)."""
    if use_triton and not interpreter_enabled():
        pytest.skip("the Triton path needs the interpreter on CPU")
    q, k, v, _, counts, indices, kv_len = _sparse_inputs()
    q[0, 1, 21, 3] = float("nan")
    out, _ = library.block_sparse_attention_op(
        q, k, v, counts, indices, kv_len, [], 16, 0.25, False, use_triton, "bf16", 16
    )
    bad = out.isnan().any(-1)
    want = torch.zeros_like(bad)
    want[0, 1, 16:32] = True
    assert torch.equal(bad, want) and bool(out[0, 1, 16:32].isnan().all())


def test_the_torch_paths_ignore_non_finite_padding():
    """NaN / Inf at keys >= kv_len: the ops' torch path passed them to SDPA (0 * NaN: every row
    NaN) and to the reference estimate (Inf in the last, partial stride group: NaN scores), where
    the Triton path zeroes padding as the op's policy says."""
    q, k, v, _, counts, indices, kv_len = _sparse_inputs()  # kv_len [70, 41]
    want, _ = library.block_sparse_attention_op(
        q, k, v, counts, indices, kv_len, [], 16, 0.25, False, False
    )
    want_scores = library.estimate_block_scores_op(q, k, kv_len, [], 4, 16, False)
    k[1, :, 42], v[1, :, 50] = float("inf"), float("nan")  # padding of sample 1 only
    out, _ = library.block_sparse_attention_op(
        q, k, v, counts, indices, kv_len, [], 16, 0.25, False, False
    )
    assert torch.equal(out, want)
    scores = library.estimate_block_scores_op(q, k, kv_len, [], 4, 16, False)
    assert torch.equal(scores, want_scores)


def test_a_second_scale_compiles_fullgraph():
    """math.isfinite(scale) in the op's checks: the second scale, a SymFloat under dynamo,
    failed a fullgraph compile ("torch.* op returned non-Tensor")."""
    q, k, v = _qkv(1, 2, 64, 16)

    def fn(q, k, v, scale):
        return xv.xattention(
            q, k, v, scale=scale, threshold=0.8, block_size=16, stride=4, backend="torch"
        )

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    for scale in (0.25, 0.3, 0.35):
        torch.testing.assert_close(compiled(q, k, v, scale), fn(q, k, v, scale))


def test_the_fp8_quantize_fake_sizes_the_key_flags_from_the_longer_side():
    """One key flag per FLAG_ROWS chunk of max(Nq, Nk) rows, as the real flags: a fake sized
    from Nq alone gave (1, 1) for 64 queries and 300 keys where the real flags are (1, 3)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from xattn_video.kernels.nonfinite import nonfinite_flags

    if not interpreter_enabled():
        pytest.skip("the flag kernel needs the interpreter on CPU")
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 64, 16, generator=g)
    k, v = (torch.randn(1, 1, 300, 16, generator=g) for _ in range(2))
    lens = torch.tensor([300], dtype=torch.int32)
    q_bad, kv_bad = nonfinite_flags(q, k, v, lens)
    with FakeTensorMode():
        fake = library.quantize_fp8_op(
            *(torch.empty(x.shape) for x in (q, k, v)), torch.empty(1, dtype=torch.int32), 16
        )
    assert [tuple(t.shape) for t in fake[:2]] == [(1, 1, 64, 16), (1, 1, 300, 16)]
    assert tuple(fake[5].shape) == tuple(q_bad.shape) and tuple(fake[6].shape) == (1, 3)
    assert tuple(kv_bad.shape) == (1, 3)


@pytest.mark.parametrize("use_triton", [False, True])
@pytest.mark.parametrize("return_lse", [False, True])
def test_opcheck_block_sparse_attention(use_triton, return_lse):
    if use_triton and not interpreter_enabled():
        pytest.skip("the Triton path needs the interpreter on CPU")
    q, k, v, mask, counts, indices, kv_len = _sparse_inputs()
    scale = 0.25
    args = (q, k, v, counts, indices, kv_len, [], 16, scale, return_lse, use_triton)
    torch.library.opcheck(library.block_sparse_attention_op, args, test_utils=OPCHECK_TESTS)
    out, lse = library.block_sparse_attention_op(*args)
    want = block_sparse_attention_ref(
        q.double(), k.double(), v.double(), mask, block_size=16, kv_len=kv_len, scale=scale,
        return_lse=True,
    )  # fmt: skip
    tok = mask.repeat_interleave(16, -2)[:, :, :70].repeat_interleave(16, -1)[..., :70]
    tok = tok & (torch.arange(70)[None, :] < kv_len[:, None])[:, None, None, :]
    lowp = naive_attention(q, k, v, tok, scale=scale)
    assert_fa_close(out, want[0], lowp)
    if return_lse:
        torch.testing.assert_close(lse, want[1].float(), rtol=1e-5, atol=1e-5)
    else:
        assert lse.shape == (0,)


def test_fakes_give_the_strides_of_the_real_outputs_for_transposed_inputs():
    """The torch path's output was contiguous where the fake said q's strides (q a (B, N, H, D)
    -> (B, H, N, D) view, as the processors pass it), and select's fake copied transposed
    scores' strides where the op's mask is contiguous: opcheck and Inductor's stride asserts
    failed."""
    q, k, v, mask, counts, indices, kv_len = _sparse_inputs()
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    args = (q, k, v, counts, indices, kv_len, [], 16, 0.25, False, False)
    torch.library.opcheck(library.block_sparse_attention_op, args, test_utils=OPCHECK_TESTS)
    out = library.block_sparse_attention_op(*args)[0]
    assert out.stride() == q.stride()
    want = block_sparse_attention_ref(q, k, v, mask, block_size=16, kv_len=kv_len, scale=0.25)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    if not interpreter_enabled():
        return  # the select op runs its Triton kernel, in the interpreter on CPU
    scores = estimate_block_scores_ref(q, k, stride=4, block_size=16, kv_len=kv_len)
    scores_t = scores.transpose(-1, -2).contiguous().transpose(-1, -2)
    sel = (scores_t, kv_len, None, 0.8, None, 48, 16, 0.0, 1, 0.0, 70, 70)
    torch.library.opcheck(library.select_block_mask_op, sel, test_utils=OPCHECK_TESTS)
    assert library.select_block_mask_op(*sel).is_contiguous()


def test_wrappers_compile_fullgraph_and_match_eager():
    """estimate -> select -> indices -> attention traces as one graph (aot_eager) and equals eager."""
    q, k, v = _qkv()
    kv_len = torch.tensor([70, 41], dtype=torch.int32)

    def fn(q, k, v, kv_len):
        scores = library.estimate_scores(
            q, k, kv_len=kv_len, stride=4, block_size=16, use_triton=False
        )
        mask = select_blocks(scores, block_size=16, threshold=0.8, kv_len=kv_len)
        counts, indices = mask_to_indices(mask)
        return library.sparse_attention(
            q, k, v, counts, indices, kv_len=kv_len, block_size=16, scale=None,
            return_lse=False, use_triton=False,
        )  # fmt: skip

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v, kv_len), fn(q, k, v, kv_len))


@pytest.mark.skipif(not interpreter_enabled(), reason="the CPU interpreter's own case")
def test_the_triton_backend_compiles_fullgraph_in_the_interpreter():
    """xattention(backend="triton") on the CPU: the op's checks read TRITON_INTERPRET through
    triton.knobs, which dynamo can't trace, so every fullgraph compile failed there."""
    q, k, v = _qkv()

    def fn(q, k, v):
        return xv.xattention(q, k, v, backend="triton", threshold=0.8, block_size=16, stride=4)

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(q, k, v), fn(q, k, v))


@pytest.mark.parametrize("estimate_kernel", ["auto", "prefer-gluon"])
def test_the_op_lowers_under_inductor(estimate_kernel):
    """Inductor (not only aot_eager) compiles the public op, ops as fallback kernels: it passes
    an op's arguments as keywords beside its own ``kernel`` parameter, so an op argument named
    ``kernel`` (the estimate op's, 2861c39) failed to lower -- torch.compile of every
    ``xattention`` call broke while aot_eager and opcheck passed."""
    import xattn_video as xv

    q, k, v = _qkv(B=1, N=96)
    kw = dict(threshold=0.8, stride=4, block_size=16, estimate_kernel=estimate_kernel)

    def fn(q, k, v):
        return xv.xattention(q, k, v, **kw)

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="inductor", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), fn(q, k, v), rtol=0, atol=0)


def test_inductor_lse_with_key_padding_equals_eager():
    """Inductor (torch 2.14, CPU) compiled the NaN-block expansion of the non-finite policy
    (``repeat_interleave`` then a slice) wrongly at B = H = 2: the LSE rows of the last,
    partial query block came out 8.7 instead of 3.7; the output itself was right."""
    import xattn_video as xv

    q, k, v = _qkv(B=2, H=2, N=40)
    lens = torch.tensor([40, 25])
    kw = dict(threshold=0.7, stride=4, block_size=16, backend="torch", kv_len=lens)

    def fn(q, k, v):
        return xv.xattention(q, k, v, return_lse=True, **kw)

    torch._dynamo.reset()
    out, lse = torch.compile(fn, backend="inductor", fullgraph=True)(q, k, v)
    want_out, want_lse = fn(q, k, v)
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(lse, want_lse)
    # and both are the true log-sum-exp over the selected valid keys
    _, mask = xv.xattention(q, k, v, return_mask=True, **kw)
    rows = torch.arange(40) // 16
    keep = mask[:, :, rows][..., rows] & (torch.arange(40) < lens[:, None])[:, None, None, :]
    logits = (q @ k.transpose(-1, -2) / 4).masked_fill(~keep, float("-inf"))
    torch.testing.assert_close(lse, torch.logsumexp(logits, -1))


def test_no_op_argument_shadows_inductors_fallback_parameters():
    """Every registered op, the GPU-only ones included (select, CSR, fp8 quantization lower only
    on CUDA), keeps its argument names clear of ``FallbackKernel.create``'s own parameters,
    which Inductor passes beside an op's defaulted arguments given as keywords."""
    import inspect

    from torch._inductor.ir import FallbackKernel

    reserved = {
        name
        for name, p in inspect.signature(FallbackKernel.create).parameters.items()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    assert reserved  # {"kernel"} in torch 2.11-2.14
    namespace = getattr(torch.ops, library.NAMESPACE)
    names = {n for n in dir(namespace) if hasattr(getattr(namespace, n), "default")}
    assert {
        "quantize_fp8", "estimate_block_scores", "select_block_mask", "block_csr",
        "block_sparse_attention",
    } <= names  # fmt: skip
    for name in sorted(names):
        clash = {a.name for a in getattr(namespace, name).default._schema.arguments} & reserved
        assert not clash, f"xattn_video::{name} has arguments named {clash}"


@pytest.mark.parametrize(
    ("value", "on"), [("1", True), ("TRUE", True), ("on", True), ("false", False), ("off", False)]
)
def test_triton_interpret_is_read_as_triton_reads_it(monkeypatch, value, on):
    """TRITON_INTERPRET=false meant "interpreter on" to us and "off" to Triton: CPU calls then
    skipped the torch fallback / the clear error and crashed in Triton ("0 active drivers")."""
    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert interpreter_enabled() is on
    if not on:
        q, mask = torch.zeros(1, 1, 16, 16), torch.ones(1, 1, 1, 1, dtype=torch.bool)
        with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors"):
            xv.block_sparse_attention(q, q, q, mask, block_size=16, backend="triton")
