"""GPU: a sparse transformer forward never synchronises with the host (stats on), compiles with
inductor, and replays from a CUDA graph, with the same output as eager."""

from __future__ import annotations

import pytest
import torch

import xattn_video as xv
from xattn_video.hook import compile_below_hook, detach_step_hook

from ._tiny_models import hv_transformer_inputs, tiny_hv_transformer

pytestmark = pytest.mark.gpu

DTYPE = torch.float16
# tiny HunyuanVideo (2 heads x 64), 3x8x8 = 192 video + 8 text tokens, 16-token blocks
CFG = dict(stride=4, block_size=16, backend="triton", warmup_steps=0, auto_dense=False)


def _model(seed: int = 0):
    return tiny_hv_transformer(seed, head_dim=64).to("cuda", DTYPE)


def _inputs(seed: int = 0, timestep: float = 900.0) -> dict:
    inp = hv_transformer_inputs(lengths=[5, 3], seed=seed, timestep=timestep)
    return {
        k: (v.to("cuda", DTYPE if v.is_floating_point() else v.dtype) if torch.is_tensor(v) else v)
        for k, v in inp.items()
    }


def _sparse_by_hand(tr, **cfg):
    """XAttention applied, step hook removed, sparse phase switched on by hand."""
    handle = xv.apply_xattention(tr, xv.XAttentionConfig(**{**CFG, **cfg}))
    detach_step_hook(tr)
    handle.controller.sparse = True
    return handle


@pytest.mark.parametrize("auto_dense", [False, True])
def test_sparse_forward_never_syncs(auto_dense):
    tr = _model()
    handle = _sparse_by_hand(tr, auto_dense=auto_dense)
    inp = _inputs()
    with torch.no_grad():
        handle.controller.stats.begin(run=0, step=0, branch="pass0")  # as the step hook does
        tr(**inp)  # first call: Triton compiles, the cost model calibrates (both sync)
        handle.controller.stats.begin(run=0, step=1, branch="pass0")
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = tr(**inp)[0]
            handle.controller.stats.begin(run=0, step=2, branch="pass0")
            handle.controller.auto_dense.update()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out).all()
    s = handle.stats.summary()
    n_layers = 3
    if auto_dense:  # 200 tokens: the sparse path cannot win, every call runs dense for cost
        assert s["num_cost_dense_calls"] == 2 * n_layers and s["num_sparse_calls"] == 0
    else:
        assert s["num_sparse_calls"] == 2 * n_layers and 0 < s["sparse_density"] < 1


def test_inductor_compiled_sparse_forward_equals_eager():
    torch._dynamo.reset()
    eager, compiled = _model(), _model()
    # ratio mode: a fixed number of blocks per row, so fused-op rounding cannot change densities
    sel = dict(selection="ratio", ratio=0.5)
    h_eager = _sparse_by_hand(eager, **sel)
    h_comp = xv.apply_xattention(compiled, xv.XAttentionConfig(**{**CFG, **sel}))
    compile_below_hook(compiled, fullgraph=True)
    with torch.no_grad():
        for step, t in enumerate((900.0, 800.0)):
            inp = _inputs(seed=step, timestep=t)
            h_eager.controller.stats.begin(run=0, step=step, branch="pass0")
            want = eager(**inp)[0]
            got = compiled(**inp)[0]
            # fp16 model: inductor fuses the elementwise ops (norms, RoPE, gating) and rounds
            # differently; the attention itself is the same kernel on the same blocks
            torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
    se, sc = h_eager.stats.records, h_comp.stats.records
    assert [r.heads for r in sc if r.sparse] == [r.heads for r in se if r.sparse]  # same masks


def test_dense_kernel_forward_never_syncs_and_compiles_to_the_eager_output():
    """dense_kernel="xattn": a dense forward through the kernel (every block, kv_len from the
    padding mask) never synchronises, and an inductor-compiled (fullgraph) dense forward
    matches it."""
    torch._dynamo.reset()
    eager, compiled = _model(), _model()
    h_eager = _sparse_by_hand(eager, dense_kernel="xattn")
    h_eager.controller.sparse = False
    cfg = xv.XAttentionConfig(**{**CFG, "dense_kernel": "xattn", "warmup_steps": 1000})
    h_comp = xv.apply_xattention(compiled, cfg)
    compile_below_hook(compiled, fullgraph=True)
    inp = _inputs()
    h_eager.controller.stats.begin(run=0, step=0, branch="pass0")
    with torch.no_grad():
        eager(**inp)  # Triton compiles (syncs)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            want = eager(**inp)[0]
        finally:
            torch.cuda.set_sync_debug_mode("default")
        got = compiled(**inp)[0]
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)  # fp16 fused elementwise ops
    for h in (h_eager, h_comp):
        s = h.stats.summary()
        assert s["num_sparse_calls"] == 0 and s["num_dense_calls"] > 0


def test_cuda_graph_replay_of_sparse_forward_equals_eager():
    tr = _model()
    _sparse_by_hand(tr, collect_stats=False)
    static = _inputs(seed=0)
    with torch.no_grad():
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                tr(**static)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = tr(**static)[0]
        for seed in (1, 2):
            new = _inputs(seed=seed, timestep=700.0)
            for k, v in new.items():
                if torch.is_tensor(v):
                    static[k].copy_(v)
            graph.replay()
            want = tr(**new)[0]
            torch.testing.assert_close(static_out, want, rtol=0, atol=0)


def test_reduce_overhead_with_mask_reuse_equals_eager():
    """``mode="reduce-overhead"`` (CUDA graphs) with ``mask_refresh=2``: the estimating and the
    reusing sparse forwards are each warmed up, captured and replayed; outputs follow eager,
    reuse flags equal; auto_dense switched to graph timing."""
    torch._dynamo.reset()  # the transformer's forward code is shared with the other tests
    eager, compiled = _model(), _model()
    cfg = dict(selection="ratio", ratio=0.5, mask_refresh=2, warmup_steps=1)
    h_eager = xv.apply_xattention(eager, xv.XAttentionConfig(**{**CFG, **cfg}))
    h_comp = xv.apply_xattention(compiled, xv.XAttentionConfig(**{**CFG, **cfg}))
    compile_below_hook(compiled, fullgraph=True, mode="reduce-overhead")
    assert h_comp.controller.auto_dense.graph_timing
    with torch.no_grad():  # dense, then estimate / reuse alternating: each variant 3 times
        for step, t in enumerate((900.0, 800.0, 700.0, 600.0, 500.0, 400.0, 300.0)):
            inp = _inputs(seed=step, timestep=t)
            want = eager(**inp)[0].clone()
            got = compiled(**inp)[0].clone()  # cudagraph outputs are overwritten by a replay
            torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
    reuse = lambda h: [(r.step, r.reused) for r in h.stats.records if r.sparse]  # noqa: E731
    assert reuse(h_comp) == reuse(h_eager) and any(r for _, r in reuse(h_eager))


@pytest.mark.parametrize("hooked", [False, True])
def test_graph_outputs_survive_a_second_forward_in_the_step(hooked):
    """Classifier-free guidance (Wan's pipeline) calls the transformer twice per step and reads
    the first output after the second. With CUDA graphs each call of a compiled function starts
    a new iteration whose replay writes the previous outputs' memory ("accessing tensor output
    of CUDAGraphs that has been overwritten"): compile_below_hook (XAttention) and generate's
    dense compile now clone them."""
    from xattn_video.pipelines.compiling import compile_transformer

    torch._dynamo.reset()
    eager, compiled = _model(), _model()
    if hooked:
        cfg = xv.XAttentionConfig(**{**CFG, "selection": "ratio", "ratio": 0.5})
        xv.apply_xattention(eager, cfg)
        xv.apply_xattention(compiled, cfg)
    compile_transformer(compiled, "reduce-overhead")  # below the hook when there is one
    with torch.no_grad():
        for step, t in enumerate((900.0, 800.0, 700.0, 600.0)):
            pair = [_inputs(seed=2 * step + i, timestep=t) for i in (0, 1)]
            want = [eager(**inp)[0] for inp in pair]
            got = [compiled(**inp)[0] for inp in pair]  # both read after the second call
            for g, w in zip(got, want, strict=True):
                torch.testing.assert_close(g, w, rtol=2e-2, atol=2e-2)


def test_cost_model_measures_eager_and_graph_times():
    from xattn_video import cost_model as cm

    key = cm.cost_key(torch.device("cuda"), torch.bfloat16, 2, 64, 128, 8)
    cal = cm.calibrate(key)
    assert cal.has_graph() and len(cal.n) >= 3
    assert len(cal.cluster) == len(cal.n) and min(cal.cluster) > 0  # eager only
    for name in ("dense", "dense_padded", "overhead", "attn_min", "attn_full", "gather"):
        eager, graph = getattr(cal, name), getattr(cal, f"{name}_graph")
        assert len(eager) == len(graph) == len(cal.n) and min(eager + graph) > 0
