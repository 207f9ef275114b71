"""Ulysses sequence parallelism (xattn_video.parallel) on CPU: 2 processes over gloo.

Each test spawns one 2-rank run (tests/_dist.py) doing several checks, and compares with the
single-process result computed here. Outputs follow the flash-attention tolerance rule
(tests/_tolerance.py): the 2-rank result differs from the one-process one only by
floating-point order, so its error against an fp64 reference may be at most twice the fp32
reference's, plus the rounding floor.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import xattn_video as xv
from tests._dist import run_distributed
from tests._tiny_models import (
    hv_inputs,
    one_thread,  # noqa: F401  (fixture)
    tiny_cfg,
    tiny_hv_pipeline,
    tiny_wan_pipeline,
    wan_inputs,
)
from tests._tolerance import assert_fa_close
from xattn_video import parallel

P = 2


def _sdpa(q, k, v, kv_len):
    """[B, N, H, D] attention with keys >= kv_len[b] masked, in the inputs' dtype."""
    N = k.shape[1]
    m = (torch.arange(N)[None, :] < kv_len[:, None])[:, None, None, :]
    out = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)), attn_mask=m)
    return out.transpose(1, 2)


def _local(x: torch.Tensor, n_video: int, rank: int) -> torch.Tensor:
    """Rank ``rank``'s [video_r, text_r] slice of a global [B, N, ...] [video, text] tensor."""
    v, t = x[:, :n_video], x[:, n_video:]
    return torch.cat([v.chunk(P, dim=1)[rank], t.chunk(P, dim=1)[rank]], dim=1)


def _op_inputs(NT: int = 8):
    g = torch.Generator().manual_seed(0)
    B, NV, H, D = 2, 96, 4, 16
    q, k, v = (torch.randn(B, NV + NT, H, D, generator=g) for _ in range(3))
    kv_len = torch.tensor([NV + min(5, NT - 1), NV + NT])
    return q, k, v, kv_len, NV


def _op_worker(rank: int, world: int, nt: int):
    import torch.distributed as dist

    q, k, v, kv_len, nv = _op_inputs(nt)
    group = dist.group.WORLD
    lq, lk, lv = (_local(x, nv, rank) for x in (q, k, v))
    nt_local = (q.shape[1] - nv) // world
    dense = parallel.ulysses_attention(
        lambda a, b, c: _sdpa(a, b, c, kv_len), lq, lk, lv, group=group, degree=world,
        n_text=nt_local,
    )  # fmt: skip
    masks = []

    def sparse(a, b, c):
        out, mask = xv.xattention(
            *(x.transpose(1, 2).contiguous() for x in (a, b, c)), threshold=0.8, stride=4,
            block_size=16, kv_len=kv_len, dense_from=nv, backend="torch", return_mask=True,
        )  # fmt: skip
        masks.append(mask)
        return out.transpose(1, 2)

    sp = parallel.ulysses_attention(sparse, lq, lk, lv, group=group, degree=world, n_text=nt_local)
    stats = xv.XAttentionStats()
    gs = parallel.GatheredStats(stats, group, torch.device("cpu"))
    local_heads = xv.stats.mask_density(masks[0], 16, kv_len, q.shape[1])[1]
    gs.record(run=0, step=1, layer=0, branch="pass0", density=0.0, sparse=True, heads=local_heads)
    return {"dense": dense, "sparse": sp, "mask": masks[0], "record": stats.records[0]}


@pytest.mark.parametrize("nt", [8, 2])
def test_ulysses_attention_matches_one_process(nt):
    """All-to-alls + reorder around SDPA and XAttention: output, per-head masks and gathered
    stats equal the one-process call (text tokens split over ranks, key padding; one text
    token per rank is reordered too)."""
    q, k, v, kv_len, nv = _op_inputs(nt)
    res = run_distributed(_op_worker, P, nt)
    ref64 = _sdpa(q.double(), k.double(), v.double(), kv_len)
    ref32 = _sdpa(q, k, v, kv_len)
    out, mask = xv.xattention(
        *(x.transpose(1, 2).contiguous() for x in (q, k, v)), threshold=0.8, stride=4,
        block_size=16, kv_len=kv_len, dense_from=nv, backend="torch", return_mask=True,
    )  # fmt: skip
    out = out.transpose(1, 2)
    out64 = xv.block_sparse_attention(
        *(x.double().transpose(1, 2).contiguous() for x in (q, k, v)), mask, block_size=16,
        kv_len=kv_len, backend="torch",
    ).transpose(1, 2)  # fmt: skip
    density, heads = xv.stats.mask_density(mask, 16, kv_len, q.shape[1])
    H = q.shape[2]
    for r, got in enumerate(res):
        assert_fa_close(got["dense"], _local(ref64, nv, r), _local(ref32, nv, r), "dense")
        assert_fa_close(got["sparse"], _local(out64, nv, r), _local(out, nv, r), "sparse")
        assert torch.equal(got["mask"], mask[:, r * H // P : (r + 1) * H // P])
        rec = got["record"]
        assert rec.heads == heads and rec.density == density and rec.sparse


def test_joint_order_roundtrip():
    perm, inv = parallel.joint_order(3, 2, 2, torch.device("cpu"))
    assert perm.tolist() == [0, 1, 2, 5, 6, 7, 3, 4, 8, 9]
    x = torch.arange(10)
    assert torch.equal(x[perm][inv], x)


# -- whole pipelines ------------------------------------------------------------------------------
@contextlib.contextmanager
def _capture_masks(masks: list):
    """Record every block mask the op returns (the sparse path calls attention.xattention)."""
    import xattn_video.attention as A

    orig = A.xattention

    def wrapped(*a, **kw):
        out = orig(*a, **kw)
        masks.append(out[1])
        return out

    A.xattention = wrapped
    try:
        yield masks
    finally:
        A.xattention = orig


def _run_pipeline(model: str, cfg, dtype=torch.float32, *, parallel_first: bool | None = None):
    """(latents, density records, masks) of one tiny pipeline call; parallel_first None: one
    process; True: enable_context_parallel, then the diffusers-native route
    (``set_attn_processor(xattention_processors(...))``); False: apply_xattention, then
    enable_context_parallel."""
    pipe = tiny_hv_pipeline() if model == "hv" else tiny_wan_pipeline()
    pipe.transformer.to(dtype)
    kw = hv_inputs(lengths=[5], steps=4) if model == "hv" else wan_inputs(steps=4)
    for k, v in kw.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            kw[k] = v.to(dtype)
    if parallel_first:
        parallel.enable_context_parallel(pipe.transformer, P)
        procs = xv.xattention_processors(pipe.transformer, cfg, pipe=pipe)
        pipe.transformer.set_attn_processor(procs)
        handle = procs
    else:
        handle = xv.apply_xattention(pipe, cfg)
    if parallel_first is False:
        parallel.enable_context_parallel(pipe.transformer, P)
    with _capture_masks([]) as masks:
        latents = pipe(**kw).frames
    return latents, [vars(r) for r in handle.stats.records], masks


CFG = dict(warmup_steps=1, threshold=0.8, mask_refresh=2)
# HunyuanVideo also with text blocks competing (padded query rows zeroed in the one-GPU order)
# and 3-D tiles (the permutation of the whole video, after the all-to-all)
# Wan's dense step through the dense kernel between the all-to-alls (dense_kernel="xattn")
MODEL_CFG = {"wan": {**CFG, "dense_kernel": "xattn"},
             "hv": {**CFG, "text_policy": "sparse", "token_order": "tile",
                    "tile_size": (1, 4, 4)}}  # fmt: skip


def _pipeline_worker(rank: int, world: int, model: str, parallel_first: bool):
    torch.manual_seed(0)
    return _run_pipeline(model, tiny_cfg(**MODEL_CFG[model]), parallel_first=parallel_first)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "parallel_first"), [("hv", False), ("wan", True)], ids=["hunyuan", "wan"]
)
def test_pipeline_ulysses_equals_one_process(model, parallel_first):
    """Tiny HunyuanVideo (text padded: 5 of 8 tokens) / Wan pipeline, 4 steps (1 dense, 3
    sparse, masks reused every other sparse step), Ulysses degree 2 vs one process: latents
    within the tolerance rule, block masks equal per head, density records equal (HunyuanVideo
    with text_policy="sparse" and tile order). HunyuanVideo: apply_xattention, then parallelism;
    Wan: parallelism, then set_attn_processor(xattention_processors(...))."""
    ref, records, masks = _run_pipeline(model, tiny_cfg(**MODEL_CFG[model]))
    ref64, _, masks64 = _run_pipeline(model, tiny_cfg(**MODEL_CFG[model]), torch.float64)
    assert all(torch.equal(a, b) for a, b in zip(masks, masks64, strict=True))
    assert any(r["sparse"] and r["reused"] for r in records)
    assert any(r["sparse"] and r["density"] < 1 for r in records)
    res = run_distributed(_pipeline_worker, P, model, parallel_first)
    for latents, recs, _ in res:
        assert_fa_close(latents, ref64, ref, f"{model} latents")
        assert recs == records
    for i, m in enumerate(masks):
        H = m.shape[1]
        for r in range(P):
            assert torch.equal(res[r][2][i], m[:, r * H // P : (r + 1) * H // P])


def _write_thresholds(path: str, cfg) -> None:
    """A thresholds file for the tiny HunyuanVideo whose two heads differ in every layer."""
    from xattn_video import thresholds as th

    tr = tiny_hv_pipeline().transformer
    n_layers = len(tr.transformer_blocks) + len(tr.single_transformer_blocks)
    config = {k: v for k, v in cfg.to_dict().items() if k in th.MATCH_FIELDS}
    th.save_thresholds(path, {
        "format": th.FORMAT, "model": "tiny-hunyuan", "config": config, "taus": [0.5, 1.0],
        "layers": [{"layer": i, "thresholds": [0.5, 0.95], "mass": [[0.5, 1.0]] * 2,
                    "density": [[0.5, 1.0]] * 2} for i in range(n_layers)],
    })  # fmt: skip


def _thresholds_worker(rank: int, world: int, path: str):
    torch.manual_seed(0)
    return _run_pipeline("hv", tiny_cfg(**CFG, thresholds_file=path), parallel_first=False)


@pytest.mark.slow
def test_per_head_thresholds_under_ulysses_equal_one_process(tmp_path):
    """A thresholds file raised "has 2 heads for layer 0, the model has 1" on every rank (each
    holds H/P heads): a rank takes its heads' slice, and picks the one-GPU blocks."""
    path = str(tmp_path / "thr.json")
    _write_thresholds(path, tiny_cfg(**CFG))
    torch.manual_seed(0)
    _, records, masks = _run_pipeline("hv", tiny_cfg(**CFG, thresholds_file=path))
    densities = [r["heads"] for r in records if r["sparse"] and not r["reused"]]
    assert densities and all(h[0] < h[1] for h in densities)  # tau 0.5 vs 0.95: heads differ
    res = run_distributed(_thresholds_worker, P, path)
    for _, recs, _ in res:
        assert recs == records
    for i, m in enumerate(masks):
        for r in range(P):
            assert torch.equal(res[r][2][i], m[:, r : r + 1])


def _errors_worker(rank: int, world: int):
    """Messages of the ValueErrors for unsupported inputs and configurations."""
    from diffusers import ContextParallelConfig
    from torch.distributed.device_mesh import init_device_mesh

    from tests._tiny_models import hv_text, hv_transformer_inputs, tiny_wan_transformer

    msgs = {}
    pipe = tiny_hv_pipeline()
    parallel.enable_context_parallel(pipe.transformer, P)
    xv.apply_xattention(pipe, tiny_cfg(**CFG))
    tr = pipe.transformer
    cases = {
        "odd_video": hv_transformer_inputs(grid=(3, 7, 7)),  # 147 video tokens
        "odd_text": {**hv_transformer_inputs(), "encoder_hidden_states": hv_text([5], total=7)[
            "embeds"], "encoder_attention_mask": hv_text([5], total=7)["mask"]},
    }  # fmt: skip
    for name, kw in cases.items():
        with pytest.raises(ValueError) as exc:
            tr(**kw)
        msgs[name] = str(exc.value)
    # context parallelism enabled with diffusers' own call (not enable_context_parallel): the
    # step hook raises the same ValueError instead of diffusers' AssertionError
    direct = tiny_hv_pipeline().transformer
    with parallel._cpu_device_count():
        direct.enable_parallelism(
            config=ContextParallelConfig(ulysses_degree=P, mesh=parallel.make_mesh(P)),
            cp_plan=xv.context_parallel_plan(direct),
        )
    xv.apply_xattention(direct, tiny_cfg(**CFG))
    with pytest.raises(ValueError) as exc:
        direct(**cases["odd_video"])
    msgs["direct_odd_video"] = str(exc.value)
    # generate's check before the first video: the text length too (it failed at the first
    # forward, after run.json); the tiny DiT's 3 condition tokens, its pixels without a VAE
    from xattn_video.pipelines.models import load_pipeline
    from xattn_video.pipelines.multiprocess import check_ulysses_sizes

    size = dict(height=64, width=64, frames=9)
    check_ulysses_sizes(pipe, **size, call_kwargs={"max_sequence_length": 32})
    for name, (p, kw) in {
        "text_pre": (pipe, {"max_sequence_length": 33}),
        "tiny_dit": (load_pipeline("tiny", dtype=torch.float32, device="cpu", progress=False), {}),
    }.items():
        if name == "tiny_dit":
            parallel.enable_context_parallel(p.transformer, P)
        with pytest.raises(ValueError) as exc:
            check_ulysses_sizes(p, **(size if name == "text_pre" else dict(height=32, width=32,
                                frames=9)), call_kwargs=kw)  # fmt: skip
        msgs[name] = str(exc.value)
    budget = tiny_hv_pipeline()  # a max_density budget would be spent per rank's heads: refused
    parallel.enable_context_parallel(budget.transformer, P)  # at apply (it was refused only at
    with pytest.raises(ValueError) as exc:  # the first sparse step, after the warm-up)
        xv.apply_xattention(budget, tiny_cfg(**CFG, max_density=0.5))
    msgs["budget"] = str(exc.value)
    first = tiny_hv_pipeline()  # XAttention first, then context parallelism: refused there
    xv.apply_xattention(first, tiny_cfg(**CFG, max_density=0.5))
    with pytest.raises(ValueError) as exc:
        parallel.enable_context_parallel(first.transformer, P)
    msgs["budget_first"] = str(exc.value)
    # a calibration under Ulysses saw its rank's heads only: each rank wrote a file of H/P heads
    from xattn_video.calibrate import calibrate_pipeline

    with pytest.raises(ValueError) as exc:
        calibrate_pipeline(budget, tiny_cfg(), [hv_inputs(lengths=[5], steps=2)], model="m",
                           target_mass=0.9)  # fmt: skip
    msgs["calibrate"] = str(exc.value)
    ring = tiny_wan_transformer()
    mesh = init_device_mesh("cpu", (P, 1), mesh_dim_names=("ring", "ulysses"))
    with parallel._cpu_device_count():
        ring.enable_parallelism(config=ContextParallelConfig(ring_degree=P, mesh=mesh))
    with pytest.raises(ValueError) as exc:
        xv.apply_xattention(ring, tiny_cfg())
    msgs["ring"] = str(exc.value)
    return msgs


def test_unsupported_inputs_raise_clear_errors():
    """Token counts that do not divide by the Ulysses degree (147 video tokens; 7 text tokens)
    and ring attention raise ValueError naming the problem, before any collective runs."""
    for msgs in run_distributed(_errors_worker, P):
        assert "video token count 147 (latent grid (3, 7, 7)) is not divisible" in msgs["odd_video"]
        assert "text length 7" in msgs["odd_text"]
        assert "video token count 147" in msgs["direct_odd_video"]
        assert "ring_degree=2" in msgs["ring"]
        assert "max_density=0.5 is not supported under Ulysses" in msgs["budget"]
        assert "max_density=0.5 is not supported under Ulysses" in msgs["budget_first"]
        assert "context-parallel" in msgs["calibrate"] and "one process" in msgs["calibrate"]
        assert "the text length 33" in msgs["text_pre"]
        # it advised padding to max_sequence_length, which the tiny DiT does not have
        tiny = "this model's text is 3 condition tokens, a fixed count that the Ulysses degree 2"
        assert tiny in msgs["tiny_dit"] and "--model tiny-hunyuan" in msgs["tiny_dit"]


def _ulysses_config(P: int = 2, **kw):
    """A ContextParallelConfig of degree P whose Ulysses group is a stand-in (no processes)."""
    from types import SimpleNamespace

    from diffusers import ContextParallelConfig

    cfg = ContextParallelConfig(ulysses_degree=P, **kw)
    cfg._ulysses_mesh = SimpleNamespace(get_group=lambda: "group")
    return cfg


def test_the_input_check_splits_hunyuans_text_only_and_reads_positional_inputs():
    """The check hook reads encoder_hidden_states also when passed positionally (the third
    argument), and only HunyuanVideo splits its text over ranks: Wan's cross-attention keys
    are not split, so any text length runs."""
    from tests._tiny_models import hv_transformer_inputs, tiny_wan_transformer

    hv, wan = tiny_hv_pipeline().transformer, tiny_wan_transformer()
    hook = parallel._ParallelCheckHook()
    kw = hv_transformer_inputs()
    odd = torch.zeros(1, 7, kw["encoder_hidden_states"].shape[-1])
    hv._parallel_config = wan._parallel_config = _ulysses_config()
    with pytest.raises(ValueError, match="the text length 7"):
        hook.pre_forward(hv, kw["hidden_states"], kw["timestep"], odd)
    with pytest.raises(ValueError, match="the text length 7"):
        hook.pre_forward(hv, hidden_states=kw["hidden_states"], encoder_hidden_states=odd)
    even = torch.zeros(1, 8, odd.shape[-1])
    hook.pre_forward(hv, kw["hidden_states"], kw["timestep"], even)
    wan_hs = torch.zeros(1, 16, 3, 16, 16)
    hook.pre_forward(wan, wan_hs, kw["timestep"], torch.zeros(1, 7, 32))


def test_unsupported_ulysses_settings_are_refused_before_anything_runs(monkeypatch):
    with pytest.raises(ValueError, match="does not support ulysses_anything"):
        parallel.ulysses_group(_ulysses_config(ulysses_anything=True))
    assert parallel.ulysses_group(_ulysses_config()) == ("group", 2)
    assert parallel.ulysses_group(None) is None
    monkeypatch.setattr(parallel.dist, "is_initialized", lambda: True)
    with pytest.raises(ValueError, match="ulysses_degree must be >= 2, got 1"):
        parallel.enable_context_parallel(tiny_hv_pipeline().transformer, 1)


@pytest.mark.parametrize("attention", ["dense", "xattn"])
def test_the_tiny_dit_under_ulysses_is_refused_first_with_advice_that_works(
    tmp_path, capsys, attention
):
    """--model tiny --attention xattn --ulysses 2 was first refused for the tiny-dit preset's
    max_density, then, once the user passed --max-density 1.0 as told, for its 3 condition
    tokens: the first advice could not make it run. The token count comes before the preset."""
    from xattn_video.pipelines.cli import main
    from xattn_video.pipelines.models import MODELS, load_pipeline

    tables = load_pipeline("tiny", dtype=torch.float32, device="cpu", progress=False)
    assert MODELS["tiny"].text_tokens == len(tables.condition_embedder.tables) == 3
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red fox\n")
    args = ["generate", "--model", "tiny", "--attention", attention, "--ulysses", "2"]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--prompts", str(prompts), "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--ulysses 2: this model's text is 3 condition tokens" in err, err
    assert not (tmp_path / "r").exists()


def test_generates_size_check_takes_the_latent_frames_of_any_frame_count():
    """(frames - 1) // 4 + 1 latent frames: 8 frames give 2 x 7 x 7 = 98 tokens at 56 x 56
    (they split over 2 ranks), 9 frames 3 x 7 x 7 = 147 (they do not)."""
    from xattn_video.pipelines.multiprocess import check_ulysses_sizes

    pipe = tiny_hv_pipeline()
    pipe.transformer._parallel_config = _ulysses_config()
    text = {"max_sequence_length": 32}
    check_ulysses_sizes(pipe, height=56, width=56, frames=8, call_kwargs=text)
    with pytest.raises(ValueError, match=r"147 \(latent grid \(3, 7, 7\)\)"):
        check_ulysses_sizes(pipe, height=56, width=56, frames=9, call_kwargs=text)


def test_the_last_barrier_has_its_own_group_from_two_processes(monkeypatch):
    from xattn_video.pipelines import multiprocess

    made = []
    monkeypatch.setattr(multiprocess.dist, "new_group", lambda **kw: made.append(kw) or "g")
    assert multiprocess.finish_group(1) is None and made == []
    assert multiprocess.finish_group(2) == "g"
    assert made == [{"backend": "gloo", "timeout": multiprocess.FINISH_TIMEOUT}]


def test_a_ranks_first_head_is_its_place_in_the_ulysses_group(monkeypatch):
    """With data parallelism (world 4, Ulysses groups {0, 1} and {2, 3}) global rank 3 is
    place 1 of its group: its heads start at 1 * H/P, not 3 * H/P (past the last head)."""
    ranks = {None: 3, "group": 1}
    monkeypatch.setattr(parallel.dist, "get_rank", lambda group=None: ranks[group])
    monkeypatch.setattr(parallel.dist, "get_world_size", lambda group=None: 2 if group else 4)
    from types import SimpleNamespace

    ctl = SimpleNamespace(stats=xv.XAttentionStats(), auto_dense=SimpleNamespace(group=None))
    state = parallel.GatheredState(ctl, "group", torch.device("cpu"), heads=2)
    assert state.heads == {"first_head": 2, "total_heads": 4}
    assert ctl.auto_dense.group == "group"


def test_plan_for_unsupported_model_raises():
    from diffusers import HunyuanVideoTransformer3DModel

    from tests._tiny_models import tiny_framepack_transformer

    with pytest.raises(ValueError, match="Framepack"):
        xv.context_parallel_plan(tiny_framepack_transformer())
    hv = tiny_hv_pipeline().transformer
    kw = {k: v for k, v in hv.config.items() if not k.startswith("_")}
    i2v = HunyuanVideoTransformer3DModel(**{**kw, "image_condition_type": "token_replace"})
    with pytest.raises(ValueError, match="token_replace"):
        xv.context_parallel_plan(i2v)
    plan = xv.context_parallel_plan(tiny_hv_pipeline().transformer)
    assert set(plan) == {"rope", "transformer_blocks.0", "proj_out"}


# -- the CLI ----------------------------------------------------------------------------------------
CLI = ["generate", "--model", "tiny-hunyuan", "--attention", "xattn", "--block-size", "16"]
CLI += ["--stride", "4", "--warmup-steps", "1", "--backend", "torch", "--no-progress"]
CLI += ["--threshold", "0.5", "--height", "64", "--width", "64"]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU launch recipe; GPUs use NCCL")
def test_cli_ulysses_two_processes_write_each_prompt_once(tmp_path, monkeypatch):
    """``torchrun --nproc_per_node 2 -m xattn_video.pipelines.cli generate --ulysses 2``: one
    data-parallel group of 2 processes runs both prompts together; only its first process
    writes; frames match a one-process run up to uint8 rounding of float-order differences
    (the latents follow the tolerance rule, see the pipeline tests), densities are equal."""
    import json
    import subprocess
    import sys

    from xattn_video.pipelines.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox runs\na blue car drives\n")
    args = [*CLI, "--prompts", str(prompts)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "XDG_CACHE_HOME": str(tmp_path / "cache")}  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(_free_port()), "-m", "xattn_video.pipelines.cli", *args]
    multi, single = tmp_path / "multi", tmp_path / "single"
    res = subprocess.run(
        [*cmd, "--ulysses", "2", "--out", str(multi)], capture_output=True, text=True,
        timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "process 0/2: generated 2, skipped 0 finished, of 2 prompts" in res.stdout
    # the peer wrote nothing: it said "generated 2" too
    assert "process 1/2: ran 2 for process 0 to write, skipped 0 finished, of 2" in res.stdout

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main([*args, "--out", str(single)]) == 0
    dirs = sorted(p.name for p in multi.iterdir() if p.is_dir())
    assert dirs == sorted(p.name for p in single.iterdir() if p.is_dir()) and len(dirs) == 2
    for name in dirs:
        meta = json.loads((multi / name / "meta.json").read_text())
        ref = json.loads((single / name / "meta.json").read_text())
        assert meta["process"] == {"index": 0, "count": 2, "ulysses": 2}  # the group's first
        assert meta["density"]["per_head"] == pytest.approx(ref["density"]["per_head"])
        assert meta["density"]["sparse_density"] < 1
        a, b = (np.load(d / name / "frames.npy").astype(int) for d in (multi, single))
        assert np.abs(a - b).max() <= 1
    assert not [p for p in multi.rglob("*") if ".partial" in p.name]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_data_parallel_groups():
    """--ulysses P: groups of P consecutive processes (the layout of parallel.make_mesh)."""
    from types import SimpleNamespace

    from xattn_video.pipelines.multiprocess import SetupError, data_parallel

    layout = [data_parallel(2, SimpleNamespace(num_processes=4, process_index=i)) for i in range(4)]
    assert layout == [(0, 2, 0), (0, 2, 1), (1, 2, 0), (1, 2, 1)]
    with pytest.raises(SetupError, match="multiple of 2"):
        data_parallel(2, SimpleNamespace(num_processes=3, process_index=0))


def _auto_dense_worker(rank: int, world: int):
    """Each rank's (step, layer, branch) of the processor calls and its final decisions, with
    per-rank calibrations that disagree: rank 0's calls layer 0 dense at its first decision,
    rank 1's calls layer 1 dense once it is measured (the step hook's ``update``)."""
    import faulthandler

    import xattn_video.processors as P_mod
    from xattn_video import auto_dense, cost_model

    faulthandler.dump_traceback_later(120, exit=True)  # a hang fails the run, not the suite
    cost_model.applies = lambda backend, device: True  # as Triton on CUDA

    def decide(self, layer):
        measured = self.stats.feedback.get(layer) is not None
        self.decisions[layer] = (rank, layer) == (0, 0) or ((rank, layer, measured) == (1, 1, True))
        return self.decisions[layer]

    auto_dense.AutoDense._decide = decide
    log = []
    orig = parallel.processor_attention

    def spy(controller, attn, layer, *a, sparse, **kw):
        log.append((controller.step, layer, sparse))
        return orig(controller, attn, layer, *a, sparse=sparse, **kw)

    P_mod.parallel.processor_attention = spy
    torch.manual_seed(0)
    pipe = tiny_hv_pipeline()
    parallel.enable_context_parallel(pipe.transformer, world)
    h = xv.apply_xattention(pipe, tiny_cfg(warmup_steps=1, threshold=0.8, auto_dense=True))
    pipe(**hv_inputs(lengths=[5], steps=4))
    faulthandler.cancel_dump_traceback_later()
    reasons = sorted({(r.step, r.layer, r.dense_reason) for r in h.stats.records})
    return log, dict(h.controller.auto_dense.decisions), reasons


@pytest.mark.slow
def test_auto_dense_decisions_agree_over_the_ulysses_group():
    """The processors branch on ``controller.is_sparse``, which read each rank's own auto_dense
    decisions; only the first call's return value was all-reduced, and update() re-decided per
    rank, so ranks took different branches and hung in the sparse path's collectives. Every
    decision is now all-reduced where it is made (dense if any rank says dense) and stored."""
    res = run_distributed(_auto_dense_worker, P)
    (log0, dec0, reasons0), (log1, dec1, reasons1) = res
    assert log0 == log1 and dec0 == dec1 == {0: True, 1: True, 2: False}
    assert reasons0 == reasons1
    # step 0 warm-up; step 1: all sparse-phase calls (layer 0 goes dense for cost inside);
    # step 2 on: layer 0 dense (agreed at step 1), layer 1 dense (agreed in update at step 2)
    assert log0 == [
        *[(0, i, False) for i in range(3)], *[(1, i, True) for i in range(3)],
        *[(s, i, i == 2) for s in (2, 3) for i in range(3)],
    ]  # fmt: skip
