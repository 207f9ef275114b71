"""torch.compile of whole tiny transformers with XAttention applied (CPU, aot_eager,
fullgraph=True): a dense and sparse steps trace without graph breaks, equal eager, and the
dense/sparse switch compiles two variants, not one per step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import xattn_video as xv
from xattn_video.hook import compile_below_hook, detach_step_hook

from ._tiny_models import (
    hv_transformer_inputs,
    tiny_cfg,
    tiny_hv_transformer,
    tiny_wan_pipeline,
    tiny_wan_transformer,
    wan_inputs,
    wan_transformer_inputs,
)

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = Path(__file__).parent / "data"


class CountingBackend:
    """aot_eager (or dynamo's graph run as is: ``aot=False``), counting the graphs it is given
    (one per compile or recompile)."""

    def __init__(self, aot: bool = True) -> None:
        self.graphs = 0
        self.aot = aot

    def __call__(self, gm, example_inputs):
        from torch._dynamo.backends.debugging import aot_eager

        self.graphs += 1
        return aot_eager(gm, example_inputs) if self.aot else gm.forward


@pytest.mark.parametrize("thresholds_file", [None, DATA / "thresholds_tiny.json"])
def test_hunyuan_compiled_below_the_step_hook_equals_eager(thresholds_file):
    """Steps 0 (dense, warm-up), 1-3 (sparse): one compiled graph per phase, outputs as eager.
    With per-head thresholds from a file: its sparse step died in dynamo (an ``os.stat`` of the
    file in every traced call); the controller now reads it eagerly (steps 0 and 1 only)."""
    cfg = tiny_cfg(warmup_steps=1)
    steps = (900.0, 800.0, 700.0, 600.0)
    if thresholds_file is not None:
        cfg = tiny_cfg(warmup_steps=1, thresholds_file=str(thresholds_file))
        steps = steps[:2]
    eager, compiled = tiny_hv_transformer(), tiny_hv_transformer()
    h_eager, h_comp = xv.apply_xattention(eager, cfg), xv.apply_xattention(compiled, cfg)
    torch._dynamo.reset()
    backend = CountingBackend()
    compile_below_hook(compiled, backend=backend, fullgraph=True)
    with torch.no_grad():
        for t in steps:
            inp = hv_transformer_inputs(lengths=[5, 3], timestep=t)
            want = eager(**inp)[0]
            got = compiled(**inp)[0]
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert backend.graphs == 2  # dense + sparse, no recompile per step
    s_eager, s_comp = h_eager.stats.summary(), h_comp.stats.summary()
    assert s_comp["num_sparse_calls"] == s_eager["num_sparse_calls"] == 3 * (len(steps) - 1)
    assert [r["step"] for r in s_comp["per_step"]] == list(range(len(steps)))
    assert abs(s_comp["sparse_density"] - s_eager["sparse_density"]) < 1e-9


def test_wan_plain_torch_compile_fullgraph_dense_and_sparse():
    """torch.compile(transformer, fullgraph=True) with the processors driven by the controller's
    bool (no hook; the test stamps the stats per forward as the hook does): the dense and the
    sparse variant each trace as one graph and equal eager."""
    cfg = tiny_cfg(warmup_steps=0)
    tr = tiny_wan_transformer()
    handle = xv.apply_xattention(tr, cfg)
    detach_step_hook(tr)  # drive the phase by hand
    ctl = handle.controller
    inp = wan_transformer_inputs()
    torch._dynamo.reset()
    backend = CountingBackend()
    compiled = torch.compile(tr, backend=backend, fullgraph=True)
    with torch.no_grad():
        for step, sparse in enumerate((False, True, True, False)):
            ctl.sparse = sparse
            ctl.stats.begin(run=0, step=step, branch="pass0")  # what the step hook does
            want = tr(**inp)[0]
            got = compiled(**inp)[0]
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert backend.graphs == 2
    # the sparse phase differs from dense (the mask drops blocks), so both variants really ran
    ctl.sparse = False
    with torch.no_grad():
        dense = tr(**inp)[0]
        ctl.sparse = True
        assert not torch.allclose(tr(**inp)[0], dense)


@pytest.mark.parametrize("refresh", [2, 3])
def test_mask_reuse_compiles_a_bounded_number_of_variants(refresh):
    """mask_refresh=r: estimate, reuse x (r-1), estimate, ... -- three compiled variants (dense,
    estimate, reuse) whatever r is, each compiled once and reused by the later steps (no retrace
    per step or per mask age; the first and later estimates share one graph); outputs and reuse
    flags equal eager. (A graph per mask age made the inductor compile of the tiny DiT at
    17,408 tokens take over 6 minutes on an H200.)"""
    cfg = tiny_cfg(warmup_steps=1, mask_refresh=refresh)
    eager, compiled = tiny_hv_transformer(), tiny_hv_transformer()
    h_eager, h_comp = xv.apply_xattention(eager, cfg), xv.apply_xattention(compiled, cfg)
    torch._dynamo.reset()
    backend = CountingBackend(aot=False)  # counting retraces needs dynamo only
    compile_below_hook(compiled, backend=backend, fullgraph=True)
    graphs = []
    with torch.no_grad():
        for t in (900.0, 800.0, 700.0, 600.0, 500.0, 400.0, 300.0):
            inp = hv_transformer_inputs(lengths=[5, 3], timestep=t)
            torch.testing.assert_close(compiled(**inp)[0], eager(**inp)[0], rtol=1e-5, atol=1e-5)
            graphs.append(backend.graphs)
    # dense, estimate, reuse: each compiled once, then reused
    assert graphs == [1, 2, 3, 3, 3, 3, 3]
    reused = [r.reused for r in h_comp.stats.records if r.sparse]
    assert reused == [r.reused for r in h_eager.stats.records if r.sparse]
    # 6 sparse steps from step 1: r=2 reuses at 2, 4, 6; r=3 at 2, 3, 5, 6 (3 layers each)
    assert reused.count(True) == 3 * {2: 3, 3: 4}[refresh]


def test_mask_reuse_under_guidance_compiles_the_same_three_variants():
    """The mask cache was keyed by CFG branch inside the graph, so guidance compiled estimate
    and reuse once per branch: 5 graphs here, 9 with Wan 2.2's two experts (past dynamo's
    recompile limit of 8: `generate --compile` failed mid-run with FailOnRecompileLimitHit).
    Steps alternate cond / uncond forwards, as a guided pipeline runs them."""

    cfg = tiny_cfg(warmup_steps=1, mask_refresh=2)
    eager, compiled = tiny_wan_transformer(), tiny_wan_transformer()
    h_eager, h_comp = xv.apply_xattention(eager, cfg), xv.apply_xattention(compiled, cfg)
    torch._dynamo.reset()
    backend = CountingBackend(aot=False)
    compile_below_hook(compiled, backend=backend, fullgraph=True)
    with torch.no_grad():
        for t in (900.0, 800.0, 700.0, 600.0, 500.0):
            for branch, seed in (("cond", 0), ("uncond", 1)):
                inp = {**wan_transformer_inputs(seed=seed), "timestep": torch.tensor([t])}
                outs = []
                for tr in (eager, compiled):
                    with tr.cache_context(branch):
                        outs.append(tr(**inp)[0])
                torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    assert backend.graphs == 3  # dense, estimate, reuse: for both branches
    reused = [(r.branch, r.reused) for r in h_comp.stats.records if r.sparse]
    assert reused == [(r.branch, r.reused) for r in h_eager.stats.records if r.sparse]
    assert {b for b, used in reused if used} == {"cond", "uncond"}


def test_cost_dense_steps_and_later_warm_up_steps_replay_one_graph(monkeypatch):
    """auto_dense decided every layer dense for cost: the next sampling run's warm-up steps
    (dense by schedule) replay the graph of the cost-dense steps instead of a second graph (two
    CUDA graphs alternating made a compiled demo video ~6% slower than dense on an H200), and
    the stats still name each dense call's reason."""
    from xattn_video import cost_model
    from xattn_video.auto_dense import AutoDense

    def decide_dense(self, layer):
        self.decisions[layer] = True
        return True

    monkeypatch.setattr(cost_model, "applies", lambda backend, device: True)
    monkeypatch.setattr(AutoDense, "_decide", decide_dense)
    tr = tiny_hv_transformer()
    handle = xv.apply_xattention(tr, tiny_cfg(warmup_steps=1, auto_dense=True))
    torch._dynamo.reset()
    ran: list[int] = []
    graphs: list[int] = []

    def backend(gm, example_inputs):
        gid = len(graphs)
        graphs.append(gid)

        def run(*args):
            ran.append(gid)
            return gm.forward(*args)

        return run

    compile_below_hook(tr, backend=backend, fullgraph=True)
    per_run = []
    with torch.no_grad():
        for _ in range(2):
            ran.clear()
            for t in (900.0, 800.0, 700.0, 600.0):
                tr(**hv_transformer_inputs(lengths=[5, 3], timestep=t))
            per_run.append(list(ran))
    # run 1: warm-up, sparse (not yet decided under compile), cost-dense x2; run 2: all one graph
    assert per_run[0] == [0, 1, 2, 2]
    assert per_run[1] == [2, 2, 2, 2] and len(graphs) == 3
    reasons = [(r.run, r.step, r.dense_reason) for r in handle.stats.records if r.layer == 0]
    assert reasons == [
        (0, 0, "schedule"), (0, 1, None), (0, 2, "cost"), (0, 3, "cost"),
        (1, 0, "schedule"), (1, 1, "cost"), (1, 2, "cost"), (1, 3, "cost"),
    ]  # fmt: skip


def test_remove_after_compile_below_hook_restores_the_stock_forward():
    """handle.remove() after compile_below_hook: diffusers put the hook's (compiled) inner
    forward back as the module's forward, so the transformer stayed compiled. Now the instance
    has no forward of its own again and calls run the stock, uncompiled forward."""
    tr = tiny_wan_transformer()
    inp = wan_transformer_inputs()
    with torch.no_grad():
        want = tr(**inp)[0]
    handle = xv.apply_xattention(tr, tiny_cfg(warmup_steps=1))
    torch._dynamo.reset()
    backend = CountingBackend(aot=False)
    compile_below_hook(tr, backend=backend)
    compile_below_hook(tr, backend=backend)  # twice: still the stock forward underneath
    with torch.no_grad():
        tr(**inp)
    assert backend.graphs == 1
    handle.remove()
    assert "forward" not in tr.__dict__
    with torch.no_grad():
        got = tr(**inp)[0]
    assert backend.graphs == 1  # nothing compiled after remove()
    assert torch.equal(got, want)


def test_the_torch_backend_compiled_with_dynamic_shapes_equals_eager():
    """inductor, dynamic=True, N not a multiple of the block: rows of the last, partial query
    block came out wrong (up to ~0.9 off at N = 130 and 140, block 16) while the bias of each
    SDPA call was a row sliced from one bias of several query blocks. (One length: inductor
    takes ~20 s per compile here.)"""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(7)

    def op(q, k, v, mask):
        return xv.block_sparse_attention(q, k, v, mask, block_size=16, backend="torch")

    n = 140
    q, k, v = (torch.randn(1, 1, n, 16, generator=gen) for _ in range(3))
    mask = torch.ones(1, 1, 9, 9, dtype=torch.bool)
    want = op(q, k, v, mask)
    got = torch.compile(op, dynamic=True)(q, k, v, mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_removing_a_cache_enabled_first_then_xattention_leaves_no_stale_hook():
    """A diffusers cache enabled before XAttention, then compile_below_hook: disable_cache()
    puts the plain forward under the step hook (diffusers' remove_hook), and remove() then put
    back the forward saved at compile time -- the disabled cache's root wrapper, which kept
    running (in fail-open mode). remove() now leaves the module as it was."""
    from diffusers.hooks import SeaCacheConfig

    pipe = tiny_wan_pipeline()
    tr = pipe.transformer
    plain = pipe(**wan_inputs(steps=3)).frames
    tr.enable_cache(SeaCacheConfig(threshold=5.0, retention_steps=1, cache_end_steps=1))
    handle = xv.apply_xattention(pipe, tiny_cfg(threshold=0.5, warmup_steps=100))
    compile_below_hook(tr, backend="eager")
    tr.disable_cache()
    handle.remove()
    assert "forward" not in vars(tr)  # no hook registry wrapper left on the module
    assert torch.equal(pipe(**wan_inputs(steps=3)).frames, plain)
