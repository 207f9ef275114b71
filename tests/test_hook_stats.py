"""The step controller / transformer hook and the density statistics (CPU, no model needed for
most tests)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from diffusers.hooks.hooks import CacheContext

import xattn_video as xv
from xattn_video import cost_model
from xattn_video.hook import XAttentionController, transformer_patch_size
from xattn_video.stats import XAttentionStats, mask_density

from ._spy import stand_in_cost_model
from ._tiny_models import (  # noqa: F401
    hv_inputs,
    one_thread,
    tiny_hv_pipeline,
    tiny_hv_transformer,
    tiny_wan_pipeline,
    tiny_wan_transformer,
    tiny_wan_vae,
    wan_inputs,
)
from ._tiny_models import tiny_cfg as cfg_


def steps_of(ctl: XAttentionController, calls: list[dict]) -> list[tuple[int, str, bool]]:
    out = []
    for kw in calls:
        ctl.begin_forward(**kw)
        out.append((ctl.step, ctl.branch, ctl.sparse))
    return out


# -- controller -----------------------------------------------------------------------------


def test_timestep_matching_fallback():
    ctl = XAttentionController(cfg_(warmup_steps=1))
    ts = [torch.tensor([t, t]) for t in (1000.0, 1000.0, 750.0, 750.0, 500.0, 1000.0, 750.0)]
    got = steps_of(ctl, [{"timestep": t} for t in ts])
    assert got == [
        (0, "pass0", False), (0, "pass1", False), (1, "pass0", True), (1, "pass1", True),
        (2, "pass0", True), (0, "pass0", False), (1, "pass0", True),
    ]  # fmt: skip
    assert ctl.run == 1  # the larger timestep started a second run


def test_timestep_matching_counts_a_branch_repeated_at_one_timestep_as_the_next_step():
    """A cache context without step_index (HunyuanVideo's) falls back to timestep matching.
    HunyuanVideo 1.5's pipelines cast the timestep to bf16, where consecutive steps of a
    shifted schedule round to one value (4 apart between 512 and 1024): a branch seen again at
    the same timestep is the next step. Counting it as the same step merged steps (a 50-step
    call ended at step 45), and a version that started a new run there restarted the warm-up
    several times within one call."""
    ctl = XAttentionController(cfg_(warmup_steps=2))
    sigmas = torch.linspace(1.0, 0.0, 51)[:-1]
    ts = (9 * sigmas / (1 + 8 * sigmas) * 1000).to(torch.bfloat16)  # shift 9, bf16
    assert (ts[1:] == ts[:-1]).sum() >= 2  # the rounding collides
    got = steps_of(ctl, [{"timestep": t.reshape(1), "context": CacheContext(name)}
                         for t in ts for name in ("pred_cond", "pred_uncond")])  # fmt: skip
    assert got == [(s, b, s >= 2) for s in range(50) for b in ("pred_cond", "pred_uncond")]
    assert ctl.run == 0


def test_timestep_matching_uses_the_max_of_per_token_timesteps():
    ctl = XAttentionController(cfg_(warmup_steps=0))
    t = torch.zeros(1, 10)
    got = []
    for v in (900.0, 800.0, 800.0):
        t[:, 2:] = v  # first-frame tokens keep timestep 0 (Wan 2.2 TI2V)
        ctl.begin_forward(timestep=t.clone())
        got.append(ctl.step)
    assert got == [0, 1, 1]


def test_only_registered_layers_outside_dense_layers_run_sparse():
    ctl = XAttentionController(cfg_(warmup_steps=0, dense_layers=(1,)))
    ctl.begin_forward(timestep=torch.tensor([900.0]))
    assert ctl.sparse
    assert [ctl.is_sparse(i) for i in (-1, 0, 1, 2)] == [False, True, False, True]


def test_a_scheduler_at_its_last_index_says_nothing_about_the_forward():
    """A scheduler whose step_index equals len(timesteps) ran its last step: a forward now is
    another caller's, counted by timestep matching from step 0 (dense warm-up), not as step 4."""
    from xattn_video import schedule

    ts = torch.tensor([999.0, 900.0, 750.0, 500.0])
    assert [schedule.finished(SimpleNamespace(step_index=i, timesteps=ts)) for i in (3, 4, 5)] == [
        False, True, True
    ]  # fmt: skip
    assert not schedule.finished(SimpleNamespace(step_index=None, timesteps=ts))
    ctl = XAttentionController(cfg_(warmup_steps=1))
    done = SimpleNamespace(step_index=4, timesteps=ts, begin_index=None)
    got = steps_of(
        ctl, [{"timestep": torch.tensor([t]), "scheduler": done} for t in (900.0, 800.0)]
    )
    assert got == [(0, "pass0", False), (1, "pass0", True)]


def test_scheduler_step_index_is_authoritative():
    ctl = XAttentionController(cfg_(warmup_steps=1, dense_last_steps=1))
    sched = SimpleNamespace(step_index=None, timesteps=torch.arange(4))
    got = []
    for i, idx in enumerate((None, None, 1, 1, 2, 2, 3, 3)):
        sched.step_index = idx
        ctx = CacheContext("uncond" if i % 2 else "cond")
        # timesteps deliberately constant: the scheduler wins over timestep matching
        ctl.begin_forward(timestep=torch.tensor([5.0]), scheduler=sched, context=ctx)
        got.append((ctl.step, ctl.branch, ctl.sparse, ctl.num_steps))
    assert got == [
        (0, "cond", False, 4), (0, "uncond", False, 4), (1, "cond", True, 4),
        (1, "uncond", True, 4), (2, "cond", True, 4), (2, "uncond", True, 4),
        (3, "cond", False, 4), (3, "uncond", False, 4),
    ]  # fmt: skip
    sched.step_index = None  # a new pipeline call without reset in between (e.g. interrupted)
    attn = torch.nn.Identity()
    ctl.masks.put(attn, torch.ones(1, 1, 1, 1, dtype=torch.bool), None)
    ctl.begin_forward(scheduler=sched)
    assert (ctl.step, ctl.sparse, ctl.run, len(ctl.masks)) == (0, False, 1, 0)


def scheduler_steps(ctl, sched, indices, timestep=None):
    """(step, sparse, num_steps) of a cond and an uncond forward at each scheduler index."""
    got = []
    for idx in indices:
        sched.step_index = idx
        for name in ("cond", "uncond"):
            ctl.begin_forward(timestep=timestep, scheduler=sched, context=CacheContext(name))
            got.append((ctl.step, ctl.sparse, ctl.num_steps))
    return got[::2]


def test_steps_count_from_where_a_video_to_video_call_starts():
    """strength 0.5 of 10 steps runs timesteps[5:] with no begin index (WanVideoToVideo): the
    first forward's timestep places it at index 5, so warm-up counts the steps actually run.
    Before, that forward read step_index None as step 0 and the next ones as steps 6-9."""
    ts = torch.linspace(999.0, 99.0, 10)
    sched = SimpleNamespace(step_index=None, timesteps=ts)
    ctl = XAttentionController(cfg_(warmup_steps=3, dense_last_steps=1))
    got = scheduler_steps(ctl, sched, (None, 6, 7, 8, 9), timestep=ts[5:6])
    assert got == [(0, False, 5), (1, False, 5), (2, False, 5), (3, True, 5), (4, False, 5)]
    # the same call with a begin index instead of a timestep to match
    ctl = XAttentionController(cfg_(warmup_steps=3, dense_last_steps=1))
    sched = SimpleNamespace(step_index=None, timesteps=ts, begin_index=5)
    assert scheduler_steps(ctl, sched, (None, 6, 7, 8, 9)) == got


def test_steps_count_from_the_first_step_index_when_the_start_is_unknown():
    """A timestep that is not in ``timesteps`` (a pipeline that rescales it) leaves the first
    forward's position unknown: it is step 0, and the first step_index is one step past it."""
    ts = torch.linspace(999.0, 99.0, 10)
    sched = SimpleNamespace(step_index=None, timesteps=ts)
    ctl = XAttentionController(cfg_(warmup_steps=2))
    got = scheduler_steps(ctl, sched, (None, 6, 7, 8, 9), timestep=ts[5:6] / 1000)
    assert got == [(0, False, 10), (1, False, 5), (2, True, 5), (3, True, 5), (4, True, 5)]
    sched.step_index = None  # the next call (same timesteps object: no set_timesteps seen)
    ctl.begin_forward(timestep=ts[:1], scheduler=sched)
    assert (ctl.step, ctl.run, ctl.num_steps) == (0, 1, 10)


def test_warmup_counts_the_steps_a_wan_video_to_video_call_runs():
    import numpy as np
    import PIL.Image
    from diffusers import WanVideoToVideoPipeline

    wan = tiny_wan_pipeline()
    pipe = WanVideoToVideoPipeline(
        tokenizer=None, text_encoder=None, vae=tiny_wan_vae(0), scheduler=wan.scheduler,
        transformer=wan.transformer,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    video = [PIL.Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))] * 9
    kw = {k: v for k, v in wan_inputs(steps=6).items() if k != "num_frames"}
    with xv.apply_xattention(pipe, cfg_(threshold=0.5, warmup_steps=2)) as h:
        pipe(video=video, strength=0.5, **kw)  # runs 3 of the 6 steps
        steps = sorted({(r.step, r.sparse) for r in h.stats.records})
    assert steps == [(0, False), (1, False), (2, True)]


def test_new_scheduler_timesteps_start_a_new_run():
    """A call that raised at step 0 leaves step_index at 0; the next call's set_timesteps gives
    a new timesteps tensor, which starts a new run (no masks reused from the failed call)."""
    ctl = XAttentionController(cfg_(warmup_steps=0, mask_refresh=3))
    attn = torch.nn.Identity()
    sched = SimpleNamespace(step_index=None, timesteps=torch.arange(4))
    ctl.begin_forward(scheduler=sched, context=CacheContext("cond"))
    ctl.masks.put(attn, torch.ones(1, 1, 1, 1, dtype=torch.bool), None)
    ctl.begin_forward(scheduler=sched, context=CacheContext("uncond"))  # same call, same step
    assert (ctl.run, len(ctl.masks)) == (0, 1)
    sched.timesteps = torch.arange(4)  # set_timesteps of the next call
    ctl.begin_forward(scheduler=sched, context=CacheContext("cond"))
    assert (ctl.step, ctl.run, len(ctl.masks)) == (0, 1, 0)


def test_repeated_branch_at_the_same_context_step_starts_a_new_run():
    ctl = XAttentionController(cfg_(warmup_steps=0))
    for name in ("cond", "uncond", "cond"):
        ctl.begin_forward(context=CacheContext(name, step_index=0))
    assert (ctl.step, ctl.branch, ctl.run) == (0, "cond", 1)


def test_cache_context_step_index_and_num_steps():
    ctl = XAttentionController(cfg_(warmup_steps=0, dense_last_steps=1))
    got = steps_of(
        ctl,
        [{"context": CacheContext("cond", step_index=i, num_inference_steps=3)} for i in range(3)],
    )
    assert got == [(0, "cond", True), (1, "cond", True), (2, "cond", False)]


def test_dense_last_steps_without_step_count_is_ignored(caplog):
    ctl = XAttentionController(cfg_(warmup_steps=0, dense_last_steps=2))
    with caplog.at_level("WARNING"):
        got = steps_of(ctl, [{"timestep": torch.tensor(t)} for t in (3.0, 2.0, 1.0)])
    assert [s for _, _, s in got] == [True, True, True]
    assert sum("dense_last_steps" in r.message for r in caplog.records) == 1


def test_grid_from_hidden_states_and_patch_size():
    assert transformer_patch_size(tiny_hv_transformer()) == (1, 1, 1)
    assert transformer_patch_size(tiny_wan_transformer(num_layers=1)) == (1, 2, 2)
    ctl = XAttentionController(cfg_())
    ctl.begin_forward(hidden_states=torch.zeros(1, 16, 5, 12, 20), patch_size=(1, 2, 2))
    assert ctl.grid == (5, 6, 10)


# -- stats ----------------------------------------------------------------------------------


def test_mask_density_matches_block_density():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(2, 3, 5, 5, generator=g) > 0.5
    kv = torch.tensor([80, 37])
    valid = (torch.arange(5) * 16)[None, :] < kv[:, None]
    mask &= valid[:, None, None, :]
    d, heads = mask_density(mask, 16, kv, 80)
    assert d == pytest.approx(xv.block_density(mask, block_size=16, kv_len=kv, n_k=80), abs=1e-12)
    assert len(heads) == 3
    for h in range(3):
        ref = xv.block_density(mask[:, h : h + 1], block_size=16, kv_len=kv, n_k=80)
        assert heads[h] == pytest.approx(ref, abs=1e-12)
    dense = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    assert mask_density(dense, 16, None, 64)[0] == 1.0


def test_stats_summary_and_serialisation():
    s = XAttentionStats()
    empty = s.summary()
    assert empty["sparse_density"] is None and empty["effective_density"] is None
    assert empty["num_sparse_calls"] == 0 and empty["per_step"] == []
    for layer in range(2):
        s.record(run=0, step=0, layer=layer, branch="cond")
        s.record(run=0, step=1, layer=layer, branch="cond", density=0.2 + 0.2 * layer,
                 sparse=True, heads=[0.1 + 0.2 * layer, 0.3 + 0.2 * layer])  # fmt: skip
    out = s.summary()
    assert out["sparse_density"] == pytest.approx(0.3)
    assert out["effective_density"] == pytest.approx((1 + 1 + 0.2 + 0.4) / 4)
    assert (out["num_sparse_calls"], out["num_dense_calls"], out["num_runs"]) == (2, 2, 1)
    assert [(p["step"], p["density"]) for p in out["per_step"]] == [
        (0, 1.0), (1, pytest.approx(0.3))
    ]  # fmt: skip
    assert [p["layer"] for p in out["per_layer"]] == [0, 1]
    assert out["per_layer"][1]["sparse_density"] == pytest.approx(0.4)
    assert out["per_head"] == pytest.approx([0.2, 0.4])
    full = json.loads(json.dumps(s.to_dict()))
    assert len(full["records"]) == 4 and full["records"][1]["heads"] == [0.1, 0.3]
    assert s.density(1, 1) == pytest.approx(0.4) and s.density(5, 0) is None
    s.reset()
    assert len(s) == 0
    off = XAttentionStats(enabled=False)
    off.record(run=0, step=0, layer=0, branch="cond")
    assert len(off) == 0


def test_collect_stats_false_records_nothing():
    pipe = tiny_hv_pipeline(num_single_layers=1)
    with xv.apply_xattention(pipe, cfg_(threshold=0.5, warmup_steps=1, collect_stats=False)) as h:
        out = pipe(**hv_inputs(steps=2)).frames
        assert len(h.stats) == 0 and h.stats.summary()["sparse_density"] is None
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["FlowMatchHeunDiscreteScheduler", "KDPM2DiscreteScheduler"])
def test_a_second_order_scheduler_counts_denoising_steps_not_forwards(name):
    """Heun / KDPM2 (``order`` 2) run 2N-1 forwards for N steps and move ``step_index`` at
    each: the steps were counted in forwards, so warmup_steps=2 kept only step 0 dense and
    num_steps read 7 for 4 steps."""
    import diffusers

    sched = getattr(diffusers, name)()
    sched.set_timesteps(4)
    ctl = XAttentionController(cfg_(warmup_steps=2, dense_last_steps=1))
    got = []
    for i, t in enumerate(sched.timesteps):
        sched._step_index = None if i == 0 else i
        ctl.begin_forward(timestep=t[None], scheduler=sched)
        got.append((ctl.step, ctl.sparse, ctl.num_steps))
    assert got == [
        (0, False, 4), (0, False, 4), (1, False, 4), (1, False, 4), (2, True, 4), (2, True, 4),
        (3, False, 4),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "label, t_start, rescale, begin",
    [("text-to-video", 0, False, 0), ("no begin index", 0, False, None),
     ("video-to-video from step 2", 2, False, None), ("timestep not in timesteps", 0, True, None)],
)  # fmt: skip
def test_heun_steps_count_from_where_the_call_starts(label, t_start, rescale, begin):
    """A real Heun scheduler stepped after each forward, as a pipeline loop does. A start that
    is not known at the first forward (a rescaled timestep) was put a whole denoising step (2
    positions) before the first known step_index instead of one position, and a repeated
    timestep matched its first copy where diffusers starts at the second."""
    from diffusers import FlowMatchHeunDiscreteScheduler

    s = FlowMatchHeunDiscreteScheduler()
    s.set_timesteps(5)  # 9 forwards
    ts = s.timesteps[t_start * s.order :]  # WanVideoToVideo's get_timesteps
    if begin is not None:
        s.set_begin_index(begin)
    ctl = XAttentionController(cfg_(warmup_steps=2))
    x, got = torch.zeros(1, 4), []
    for t in ts:
        ctl.begin_forward(timestep=(t * 1.5 + 7 if rescale else t)[None], scheduler=s)
        got.append(ctl.step)
        x = s.step(torch.zeros_like(x), t, x).prev_sample
    assert got == [i // 2 for i in range(len(ts))] and ctl.num_steps == -(-len(ts) // 2)


def test_a_repeated_timestep_is_matched_where_diffusers_starts():
    """HeunDiscreteScheduler in a video-to-video call (add_noise, no begin index): the first
    forward's timestep, held twice in timesteps, was placed at its first copy, one position
    early, so each step's second forward counted as the next step."""
    from xattn_video import schedule

    ts = torch.tensor([999.0, 666.0, 666.0, 333.0, 333.0, 0.0, 0.0])
    sched = SimpleNamespace(step_index=None, timesteps=ts)
    assert schedule.scheduler_index(sched, torch.tensor([333.0])) == 4
    assert schedule.scheduler_index(sched, torch.tensor([999.0])) == 0
    assert schedule.scheduler_index(sched, torch.tensor([500.0])) is None


def test_close_timesteps_are_matched_to_the_nearest():
    """A shifted flow schedule of many steps holds its first timesteps within 1e-3 of each other
    (shift 7, 150 steps: 1000.0, 999.04, 998.07): the first forward of a call without a begin
    index (I2V / V2V pipelines) was placed at index 1, as if it were a repeated timestep, so
    the warm-up ran one step longer and every step number was one off."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from xattn_video import schedule

    sched = FlowMatchEulerDiscreteScheduler(shift=7.0)
    sched.set_timesteps(150)
    assert float(sched.timesteps[0] - sched.timesteps[1]) < 1.0  # within the tolerance
    for i in (0, 1, 2, 75):
        assert schedule.scheduler_index(sched, sched.timesteps[i : i + 1]) == i
    # not exact (a bf16 cast of the timestep, say): still the nearest
    assert schedule.scheduler_index(sched, sched.timesteps[1:2] + 0.3) == 1


def test_warmup_counts_heun_steps_in_a_wan_pipeline():
    from diffusers import FlowMatchHeunDiscreteScheduler

    pipe = tiny_wan_pipeline()
    pipe.scheduler = FlowMatchHeunDiscreteScheduler(shift=3.0)
    cfg = cfg_(threshold=0.5, warmup_steps=2, dense_last_steps=1)
    with xv.apply_xattention(pipe, cfg) as h:
        pipe(**wan_inputs(steps=4, cfg=False))
        steps = sorted({(r.step, r.sparse) for r in h.stats.records})
    assert steps == [(0, False), (1, False), (2, True), (3, False)]


def test_dense_last_steps_in_a_pipeline():
    pipe = tiny_hv_pipeline(num_single_layers=1)
    cfg = cfg_(threshold=0.5, warmup_steps=1, dense_last_steps=1)
    with xv.apply_xattention(pipe, cfg) as h:
        pipe(**hv_inputs(steps=4))
        sparse_steps = {r.step for r in h.stats.records if r.sparse}
        dense_steps = {r.step for r in h.stats.records if not r.sparse}
    assert sparse_steps == {1, 2} and dense_steps == {0, 3}


def test_reset_state_runs_at_the_end_of_each_pipeline_call():
    pipe = tiny_hv_pipeline(num_single_layers=1)
    with xv.apply_xattention(pipe, cfg_(threshold=0.5, warmup_steps=0)) as h:
        pipe(**hv_inputs(steps=2))
        ctl = h.controller
        assert (ctl.step, ctl.sparse, len(ctl.masks)) == (0, False, 0)
        assert ctl.forwards == 2


def test_reuse_masks_flag_follows_the_refresh_period_from_the_first_sparse_step():
    ctl = XAttentionController(cfg_(warmup_steps=2, mask_refresh=3))
    sched = SimpleNamespace(step_index=None, timesteps=torch.arange(9))
    flags = []
    for step in range(9):
        sched.step_index = step
        ctl.begin_forward(scheduler=sched, context=CacheContext("cond"))
        flags.append((ctl.sparse, ctl.reuse_masks))
        ctl.begin_forward(scheduler=sched, context=CacheContext("uncond"))  # same step
        assert (ctl.sparse, ctl.reuse_masks) == flags[-1]
    # dense warm-up 0-1; estimate at 2, 5, 8; reuse at 3-4 and 6-7
    assert [r for s, r in flags] == [False, False, False, True, True, False, True, True, False]
    assert [s for s, r in flags] == [False, False] + [True] * 7
    once = XAttentionController(cfg_(warmup_steps=0))
    once.begin_forward(scheduler=SimpleNamespace(step_index=1, timesteps=torch.arange(3)))
    assert once.sparse and not once.reuse_masks  # mask_refresh=1 never reuses


@pytest.mark.parametrize("model", ["hunyuanvideo", "wan"])
def test_hand_built_processors_record_only_registered_layers(model):
    """A hand-built processor (no ``layer``) before the step hook registers its attention
    module: layer -1, dense, and no record (they used to land under layer -1 and be summed in
    with the hooked run's layers)."""
    from xattn_video.hook import attach_step_hook
    from xattn_video.processors import PROCESSOR_CLASSES

    from ._tiny_models import hv_transformer_inputs, wan_transformer_inputs

    tr = tiny_hv_transformer() if model == "hunyuanvideo" else tiny_wan_transformer()
    inputs = hv_transformer_inputs if model == "hunyuanvideo" else wan_transformer_inputs
    proc = PROCESSOR_CLASSES[model](cfg_(warmup_steps=1, threshold=0.5))
    tr.set_attn_processor(proc)
    with torch.no_grad():
        tr(**inputs())
    assert len(proc.stats) == 0
    attach_step_hook(tr, proc.controller)
    with torch.no_grad():
        for t in (900.0, 800.0):
            kw = inputs()
            kw["timestep"] = torch.full_like(kw["timestep"], t)
            tr(**kw)
    got = sorted({(r.step, r.layer, r.sparse) for r in proc.stats.records})
    n = tr.config.num_layers + getattr(tr.config, "num_single_layers", 0)
    assert got == [(s, i, s == 1) for s in (0, 1) for i in range(n)]


def test_hand_built_processors_with_a_layer_record_nothing_before_the_hook():
    """Processors given ``layer`` recorded their calls before any step hook existed, and those
    were stamped into the first hooked run's step 0 (15 calls for 6)."""
    from xattn_video.hook import XAttentionController, attach_step_hook
    from xattn_video.processors import PROCESSOR_CLASSES
    from xattn_video.targets import target_layers

    from ._tiny_models import hv_transformer_inputs

    tr = tiny_hv_transformer()
    ctl = XAttentionController(cfg_(warmup_steps=1, threshold=0.5))
    for _, module, layer in target_layers(tr, "hunyuanvideo"):
        module.set_processor(PROCESSOR_CLASSES["hunyuanvideo"](controller=ctl, layer=layer))
    with torch.no_grad():
        for _ in range(3):
            tr(**hv_transformer_inputs())
    attach_step_hook(tr, ctl)
    with torch.no_grad():
        for t in (900.0, 800.0):
            tr(**hv_transformer_inputs(timestep=t))
    n = tr.config.num_layers + tr.config.num_single_layers
    got = sorted((r.step, r.layer, r.sparse) for r in ctl.stats.records)
    assert got == [(s, i, s == 1) for s in (0, 1) for i in range(n)]


def test_auto_dense_decides_again_at_another_input_size(monkeypatch):
    """A layer sent dense for cost at a small size used to stay dense in every later call,
    whatever its size (``is_sparse`` read the stored decision, so the cost model was never asked
    again). Decisions now hold for the input size they were made at: a larger call decides
    afresh (sparse here), and the small size goes dense for cost again. Stand-in cost model
    (the real one is GPU-only): sparse wins from 100 tokens on."""
    from ._tiny_models import hv_transformer_inputs

    sizes = []
    stand_in_cost_model(
        monkeypatch,
        lambda cal, n, density, **k: sizes.append(n) or cost_model.Prediction(1.0, 1.0, n >= 100),
    )
    tr = tiny_hv_transformer()
    handle = xv.apply_xattention(tr, cfg_(warmup_steps=1, auto_dense=True))
    grids = [(1, 8, 8), (3, 8, 8), (3, 8, 8), (1, 8, 8)]  # 72 and 200 joint tokens
    with torch.no_grad():
        for grid in grids:
            for t in (900.0, 800.0):  # a new run each time (timestep matching)
                tr(**hv_transformer_inputs(grid=grid, timestep=t))
    got = [(r.run, r.sparse, r.dense_reason) for r in handle.stats.records if r.step == 1]
    assert got == [
        *[(0, False, "cost")] * 3, *[(1, True, None)] * 3, *[(2, True, None)] * 3,
        *[(3, False, "cost")] * 3,
    ]  # fmt: skip
    assert sorted(set(sizes)) == [72, 200]


@pytest.mark.parametrize("neg_len", [8, 6])
def test_auto_dense_keeps_each_cfg_branch_s_densities_at_other_text_lengths(neg_len, monkeypatch):
    """True CFG whose negative prompt has another text length than the prompt alternates the
    forward's input size: every forward used to forget the decisions and the measured
    densities, so each layer was decided from the most optimistic density again and kept
    running sparse where its measured density (~0.95) loses. Each size's own come back now,
    as with one text length. Stand-in cost model: sparse wins at density <= 0.3."""
    from ._tiny_models import hv_inputs, hv_text

    asked = []
    stand_in_cost_model(
        monkeypatch,
        lambda cal, n, density, **k: (
            asked.append(density) or cost_model.Prediction(1.0, 1.0, density <= 0.3)
        ),
    )
    pipe = tiny_hv_pipeline(num_single_layers=1)
    kw = hv_inputs(steps=5, true_cfg=True)
    neg = hv_text([3], seed=7, total=neg_len)
    kw.update(negative_prompt_embeds=neg["embeds"], negative_prompt_attention_mask=neg["mask"])
    with xv.apply_xattention(pipe, cfg_(threshold=0.9, warmup_steps=1, auto_dense=True)) as h:
        pipe(**kw)
        calls = [(r.step, r.sparse, r.dense_reason) for r in h.stats.records if r.layer == 0]
    # step 1's first branch runs sparse (one block per row expected) and is measured; the
    # other branch of another size too (its first call at its size), then dense for cost
    first_uncond = (1, True, None) if neg_len != 8 else (1, False, "cost")
    assert calls[2:4] == [(1, True, None), first_uncond]
    assert calls[4:] == [(s, False, "cost") for s in (2, 3, 4) for _ in "cu"]
    assert max(asked) > 0.5  # a measured density reached the cost model


def test_auto_dense_keeps_the_last_sizes_decisions_and_densities():
    """Each input size's decisions and measured densities come back when that size does, for
    the last SIZES_KEPT sizes; an older one is decided afresh."""
    from xattn_video.auto_dense import SIZES_KEPT, AutoDense

    auto = AutoDense(cfg_(auto_dense=True), XAttentionStats())
    feedback = auto.stats.feedback
    for size in range(SIZES_KEPT + 1):
        auto.update(size)
        assert auto.decisions == {} and feedback.get(0) is None  # a size not seen
        auto.decisions[0] = True  # dense: update() does not re-decide it
        feedback.update(0, torch.tensor([float(size)]))
        feedback.publish()
    for size in range(SIZES_KEPT, 0, -1):  # the current size, then the kept ones
        auto.update(size)
        assert (auto.decisions, feedback.get(0)) == ({0: True}, float(size))
    auto.update(0)  # the least recently used, dropped
    assert (auto.decisions, feedback.get(0)) == ({}, None)


def test_a_size_change_leaves_the_copy_just_started_in_flight(monkeypatch):
    """At a size change (true CFG with two text lengths: every forward) the densities copy that
    publish() had just started -- a whole forward of GPU work away -- was waited for at once.
    It now stays in flight with its size's values and lands when that size comes back, a
    forward later; each size reads only its own densities. A stand-in event logs the waits."""
    from xattn_video.auto_dense import AutoDense

    waited, forward = [], [0]

    class Event:
        def __init__(self, tag: float) -> None:
            self.tag = tag

        def synchronize(self) -> None:
            waited.append((forward[0], self.tag))

    stats = XAttentionStats()
    feedback = stats.feedback
    monkeypatch.setattr(feedback, "_start_copy", lambda vals: (vals, Event(float(vals[0]))))
    auto = AutoDense(cfg_(auto_dense=True), stats)
    seen = []
    for t, size in enumerate("ABABAB"):
        forward[0] = t
        feedback.publish()  # as stats.begin does, then the step hook's update
        auto.update(size)
        seen.append((size, feedback.get(0)))
        feedback.update(0, torch.tensor([10.0 * t + (1 if size == "A" else 2)]))
    assert seen == [("A", None), ("B", None), ("A", 1.0), ("B", 12.0), ("A", 21.0), ("B", 32.0)]
    assert waited == [(2, 1.0), (3, 12.0), (4, 21.0), (5, 32.0)]  # each a forward after its start


def test_auto_dense_decides_again_after_the_model_changes_dtype(monkeypatch):
    """Decisions were keyed by the input shapes only: a model moved to another dtype or device
    (another GPU, the CPU) with the same shapes kept the first one's dense-for-cost layers.
    Stand-in cost model: dense wins in fp32, sparse in fp64."""
    from ._tiny_models import hv_transformer_inputs

    stand_in_cost_model(
        monkeypatch, lambda cal, n, density, **k: cost_model.Prediction(1.0, 1.0, cal != "fp32")
    )
    monkeypatch.setattr(cost_model, "cost_key", lambda device, dtype, *a, **k: dtype)
    monkeypatch.setattr(cost_model, "lookup", lambda key: str(key).replace("torch.float", "fp"))
    tr = tiny_hv_transformer()
    handle = xv.apply_xattention(tr, cfg_(warmup_steps=1, auto_dense=True))
    with torch.no_grad():
        for dtype in (torch.float32, torch.float64):
            tr.to(dtype)
            for t in (900.0, 800.0):  # a new run each time (timestep matching)
                kw = hv_transformer_inputs(timestep=t)
                floats = {
                    k: v.to(dtype) for k, v in kw.items() if getattr(v, "is_floating_point", bool)()
                }
                tr(**{**kw, **floats})
    got = [(r.run, r.sparse, r.dense_reason) for r in handle.stats.records if r.step == 1]
    assert got == [*[(0, False, "cost")] * 3, *[(1, True, None)] * 3]


@pytest.mark.parametrize("family", ["hunyuanvideo", "wan"])
def test_auto_dense_predicts_padded_calls_against_masked_sdpa(family, monkeypatch):
    """HunyuanVideo's text padding makes a dense-for-cost call masked SDPA; its decision was
    made against unmasked SDPA (1.44x faster at 119k tokens on an H200). Wan has no padding.
    The call sent dense computes SDPA over the valid keys: the stock processor's output."""
    from ._tiny_models import hv_transformer_inputs, tiny_wan_transformer, wan_transformer_inputs

    padded = []
    stand_in_cost_model(
        monkeypatch,
        lambda cal, n, density, **k: (
            padded.append(k["padded"]) or cost_model.Prediction(1.0, 2.0, False)
        ),
    )
    if family == "wan":
        tr, kw = tiny_wan_transformer(), wan_transformer_inputs()
    else:
        tr, kw = tiny_hv_transformer(), hv_transformer_inputs(lengths=[5, 3])
    with torch.no_grad():
        want = tr(**kw)[0]
    handle = xv.apply_xattention(tr, cfg_(warmup_steps=0, auto_dense=True))
    with torch.no_grad():
        got = tr(**kw)[0]
    assert padded and set(padded) == {family == "hunyuanvideo"}
    assert {r.dense_reason for r in handle.stats.records} == {"cost"}
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["hunyuanvideo", "wan"])
def test_calls_sent_dense_for_cost_stay_sdpa_with_the_xattn_dense_kernel(family, monkeypatch):
    """dense_kernel="xattn": auto_dense decides against SDPA (cost_model.dense_call), which a
    layer's first dense-for-cost call ran; from its second forward on the call ran the
    XAttention kernel instead. Warm-up ("schedule") calls still take the kernel."""
    from xattn_video import processors

    from ._tiny_models import hv_transformer_inputs, tiny_wan_transformer, wan_transformer_inputs

    kernel = []
    real = processors.dense_attention
    monkeypatch.setattr(
        processors, "dense_attention", lambda *a, **k: kernel.append(1) or real(*a, **k)
    )
    stand_in_cost_model(
        monkeypatch, lambda cal, n, density, **k: cost_model.Prediction(1.0, 2.0, False)
    )
    if family == "wan":
        tr, kw = tiny_wan_transformer(), wan_transformer_inputs()
    else:
        tr, kw = tiny_hv_transformer(), hv_transformer_inputs(lengths=[5, 3])
    handle = xv.apply_xattention(tr, cfg_(warmup_steps=1, auto_dense=True, dense_kernel="xattn"))
    per_step = []
    with torch.no_grad():
        for t in (900.0, 800.0, 700.0):
            tr(**{**kw, "timestep": torch.tensor([t])})
            per_step.append(len(kernel))
    layers = sum(r.step == 0 for r in handle.stats.records)
    assert layers >= 2 and per_step == [layers] * 3  # the warm-up step's calls only
    assert {(r.step, r.dense_reason) for r in handle.stats.records} == {
        (0, "schedule"),
        (1, "cost"),
        (2, "cost"),
    }


@pytest.mark.parametrize("pipe_a_ran", [True, False])
def test_a_transformer_run_by_another_pipeline_counts_its_steps(pipe_a_ran):
    """Applied through pipe_a, run through pipe_b (pipe_a's components, its own scheduler):
    the hook read pipe_a's finished scheduler, so every forward was step 5 -- no warm-up, no
    mask reuse; and a pipe_a that never ran had its scheduler's 1,000 training timesteps
    matched, steps 0, 200, 400, ... (one dense step, no reuse). Now pipe_b's steps count as if
    XAttention had been applied to pipe_b."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline

    from ._tiny_models import hv_inputs, tiny_cfg, tiny_hv_pipeline

    cfg = tiny_cfg(threshold=0.5, warmup_steps=1, mask_refresh=2)
    pipe_a = tiny_hv_pipeline()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    pipe_b = HunyuanVideoPipeline(**{**pipe_a.components, "scheduler": scheduler})
    pipe_b.set_progress_bar_config(disable=True)
    steps = lambda h: sorted({(r.step, r.sparse, r.reused) for r in h.stats.records})  # noqa: E731
    with xv.apply_xattention(pipe_a, cfg) as handle, torch.no_grad():
        if pipe_a_ran:
            pipe_a(**hv_inputs(steps=5))
            handle.stats.reset()
        got = pipe_b(**hv_inputs(steps=5)).frames
        got_steps = steps(handle)
    with xv.apply_xattention(pipe_b, cfg) as handle, torch.no_grad():
        want = pipe_b(**hv_inputs(steps=5)).frames
        assert got_steps == steps(handle) == [
            (0, False, False), (1, True, False), (2, True, True), (3, True, False), (4, True, True)
        ]  # fmt: skip
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("reapply", [False, True], ids=["same", "reapplied"])
@pytest.mark.parametrize("model", ["wan", "hv"])
@pytest.mark.parametrize("stop", ["raise", "raise-in-step", "interrupt"])
def test_a_pipeline_stopped_part_way_does_not_count_another_pipelines_steps(stop, model, reapply):
    """Applied through pipe_a; a call of pipe_a stopped at step 2 of 4 (a callback that raised,
    or diffusers' ``pipe._interrupt``) left its scheduler mid-run, so every forward of pipe_b
    (same transformer, own scheduler) was counted as pipe_a's step 2 or 3: no warm-up, one
    branch repeated, masks reused from pipe_a's call. Now pipe_b counts as if run alone.
    "raise-in-step": it raised inside the step's last transformer forward. "reapplied":
    XAttention applied again between the calls; the new controller had not seen the stopped
    call, so it took pipe_a's scheduler as running (the stop state was per controller)."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        UniPCMultistepScheduler,
        WanPipeline,
    )

    from ._tiny_models import hv_inputs, tiny_hv_pipeline, tiny_wan_pipeline, wan_inputs

    cfg = cfg_(threshold=0.5, warmup_steps=2, mask_refresh=4)
    rows = lambda recs: [(r.step, r.branch, r.sparse, r.reused) for r in recs]  # noqa: E731
    inputs = wan_inputs if model == "wan" else hv_inputs

    def pipes():
        if model == "wan":
            pipe_a = tiny_wan_pipeline()
            sched = UniPCMultistepScheduler.from_config(pipe_a.scheduler.config)
            pipe_b = WanPipeline(**{**pipe_a.components, "scheduler": sched})
        else:
            pipe_a = tiny_hv_pipeline()
            sched = FlowMatchEulerDiscreteScheduler(shift=7.0)
            pipe_b = HunyuanVideoPipeline(**{**pipe_a.components, "scheduler": sched})
        pipe_b.set_progress_bar_config(disable=True)
        return pipe_a, pipe_b

    def at_step_2(pipe, i, t, kwargs):
        if i == 2 and stop == "raise":
            raise KeyboardInterrupt
        if i == 2 and stop == "interrupt":
            pipe._interrupt = True
        return {}

    def raise_in_step_3(module, args, kwargs):
        if pipe_a.scheduler.step_index == 3:
            raise KeyboardInterrupt

    pipe_a, pipe_b = pipes()
    with xv.apply_xattention(pipe_a, cfg) as handle, torch.no_grad():
        want = pipe_b(**inputs(steps=4)).frames
        want_rows = rows(handle.stats.records)
    pipe_a, pipe_b = pipes()
    with xv.apply_xattention(pipe_a, cfg) as handle, torch.no_grad():
        tr = pipe_a.transformer
        blocks = tr.transformer_blocks if model == "hv" else tr.blocks
        pre = blocks[-1].register_forward_pre_hook(raise_in_step_3, with_kwargs=True)
        if stop != "raise-in-step":
            pre.remove()
        try:
            pipe_a(**inputs(steps=4), callback_on_step_end=at_step_2)
        except KeyboardInterrupt:
            pass
        pre.remove()
        assert pipe_a.scheduler.step_index == 3
        handle.stats.reset()
        if reapply:
            handle = xv.apply_xattention(pipe_a, cfg)
        got = pipe_b(**inputs(steps=4)).frames
        got_rows = rows(handle.stats.records)
        handle.remove()
    assert got_rows == want_rows
    branches = ("cond", "uncond") if model == "wan" else ("cond",)
    assert {r[:3] for r in want_rows} == {(s, b, s >= 2) for s in range(4) for b in branches}
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("a_stopped", [None, "interrupt", "raise"])
def test_a_pipeline_sharing_the_scheduler_is_counted_by_it(a_stopped):
    """pipe_b built from pipe_a's components, scheduler included: once pipe_a had run (its
    _current_timestep None), pipe_b's forwards lost the scheduler, so dense_last_steps was
    ignored and pipe_b's last step ran sparse. Also after pipe_a was stopped by _interrupt, and
    after it raised (Ctrl-C, a callback's error: its _current_timestep kept its last t, and
    pipe_b's forwards were taken for that stopped call's)."""
    from diffusers import HunyuanVideoPipeline

    from ._tiny_models import hv_inputs, tiny_hv_pipeline

    cfg = cfg_(threshold=0.5, warmup_steps=1, dense_last_steps=1)
    pipe_a = tiny_hv_pipeline()
    pipe_b = HunyuanVideoPipeline(**pipe_a.components)
    pipe_b.set_progress_bar_config(disable=True)
    rows = lambda h: sorted({(r.step, r.sparse) for r in h.stats.records})  # noqa: E731

    def stop_at_1(pipe, i, t, kwargs):
        if i == 1 and a_stopped == "interrupt":
            pipe._interrupt = True
        if i == 1 and a_stopped == "raise":
            raise KeyboardInterrupt
        return {}

    with xv.apply_xattention(pipe_a, cfg) as handle, torch.no_grad():
        try:
            pipe_a(**hv_inputs(steps=4), callback_on_step_end=stop_at_1)
        except KeyboardInterrupt:
            assert a_stopped == "raise"
        handle.stats.reset()
        pipe_b(**hv_inputs(steps=4))
        assert rows(handle) == [(0, False), (1, True), (2, True), (3, False)]


def test_auto_dense_decides_each_wan22_expert_on_its_own(monkeypatch):
    """One controller for Wan 2.2's two experts (same layer numbers): expert 2 inherited expert
    1's dense-for-cost decisions and densities, so it ran dense without being measured. Stand-in
    cost model: sparse wins at density <= 0.4; expert 1 attends uniformly (density 0.5),
    expert 2 is peaked (~0.15). Experts switch at step 4 of 8 (boundary 0.8)."""
    from ._tiny_models import tiny_wan_pipeline, wan_inputs

    stand_in_cost_model(
        monkeypatch,
        lambda cal, n, density, **k: cost_model.Prediction(1.0, 1.0, density <= 0.4),
    )
    pipe = tiny_wan_pipeline(two_stage=True)
    with torch.no_grad():
        for blk in pipe.transformer.blocks:
            blk.attn1.norm_q.weight.zero_()
        for blk in pipe.transformer_2.blocks:
            blk.attn1.norm_q.weight.mul_(30)
            blk.attn1.norm_k.weight.mul_(30)
    with xv.apply_xattention(pipe, cfg_(threshold=0.5, warmup_steps=0, auto_dense=True)) as h:
        pipe(**wan_inputs(steps=8))
        calls = [(r.step, r.sparse, r.dense_reason) for r in h.stats.records]
    assert {c for c in calls if c[0] in (1, 2, 3)} == {(s, False, "cost") for s in (1, 2, 3)}
    second = [c for c in calls if c[0] >= 4]
    assert len(second) >= 8 and all(sparse for _, sparse, _ in second)


class _Scheduler:
    """A scheduler stand-in that can be weakly referenced (SimpleNamespace cannot)."""

    def __init__(self, timesteps: torch.Tensor, begin_index: int | None = None) -> None:
        self.timesteps = timesteps
        self.step_index: int | None = None
        self.begin_index = begin_index


def test_a_controller_first_run_mid_call_counts_from_the_call_start():
    """Two controllers, one scheduler (Wan 2.2's transformer and transformer_2, each with its own
    processors): the second's first forward comes after ``scheduler.step`` ran. It counts from
    where the call started -- noted by the first controller (here a video-to-video start at 2,
    matched from the timestep), else ``begin_index``, else 0 -- not from its own first forward."""
    ts = torch.linspace(999.0, 99.0, 6)
    cfg = cfg_(warmup_steps=2, dense_last_steps=1)
    for start, indices in ((0, (None, 1, 2)), (2, (None, 3))):
        sched = _Scheduler(ts)
        first, second = XAttentionController(cfg), XAttentionController(cfg)
        got = scheduler_steps(first, sched, indices, timestep=ts[start : start + 1])
        got += scheduler_steps(second, sched, range(indices[-1] + 1, 6), timestep=ts[3:4])
        n = 6 - start
        assert got == [(i, 2 <= i < n - 1, n) for i in range(n)]
    # no first controller (or a scheduler that cannot be noted): its begin_index, else 0
    for begin, steps in ((None, [3, 4, 5]), (1, [2, 3, 4])):
        ctl = XAttentionController(cfg)
        sched = _Scheduler(ts, begin_index=begin)
        assert [s for s, _, _ in scheduler_steps(ctl, sched, (3, 4, 5))] == steps
