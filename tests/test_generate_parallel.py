"""``generate`` over several processes on the CPU (gloo): what ``pipelines.multiprocess`` fixes.

- a data-parallel group with no prompt left to run hung the others in the collective set-up
  of sequence parallelism (4 processes, ``--ulysses 2``, 1 prompt);
- dense HunyuanVideo under ``--ulysses`` used diffusers' processor, whose key-padding mask is
  wrong for rank-interleaved keys (frames off by up to 4 uint8 levels from one process);
- head counts the Ulysses degree does not divide raised a traceback in every process after
  run.json was written;
- the last barrier ran on the default group, whose timeout (NCCL: 10 min) is shorter than a
  video, so a process with one prompt fewer aborted the job.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from xattn_video.pipelines import multiprocess

from .test_parallel import _free_port

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(), reason="the CPU launch recipe; GPUs use NCCL"
)

ARGS = ["generate", "--model", "tiny-hunyuan", "--height", "64", "--width", "64"]
ARGS += ["--steps", "2", "--no-progress"]


def _launch(n: int, args: list[str], tmp_path, timeout: int = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "XDG_CACHE_HOME": str(tmp_path / "cache")}  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n)]
    cmd += ["--master_port", str(_free_port()), "-m", "xattn_video.pipelines.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=tmp_path)  # fmt: skip


@pytest.mark.slow
def test_idle_group_sets_up_and_dense_ulysses_equals_one_process(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red fox\n")  # short: most of the text tokens are padding
    args = [*ARGS, "--attention", "dense", "--prompts", str(prompts)]
    res = _launch(4, [*args, "--ulysses", "2", "--out", str(tmp_path / "multi")], tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for rank, n in ((0, 1), (2, 0)):  # group 1 (processes 2, 3) has no prompt
        assert f"process {rank}/4: generated {n}, skipped 0 finished, of {n} prompts" in res.stdout
    for rank, n in ((1, 1), (3, 0)):  # the peers write nothing
        ran = f"process {rank}/4: ran {n} for process {rank - 1} to write, skipped 0 finished"
        assert f"{ran}, of {n} prompts" in res.stdout
    res = _launch(1, [*args, "--out", str(tmp_path / "single")], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = (np.load(tmp_path / d / "00000" / "frames.npy") for d in ("multi", "single"))
    assert np.array_equal(a, b)  # was up to 4 levels off: the stock processor's padding mask
    meta = json.loads((tmp_path / "multi" / "00000" / "meta.json").read_text())
    assert meta["attention"] == "dense" and meta["density"] is None
    assert json.loads((tmp_path / "multi" / "run.json").read_text())["config"] is None


@pytest.mark.slow
def test_heads_the_degree_does_not_divide_exit_2_before_run_json(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red fox\n")
    out = tmp_path / "run"
    args = [*ARGS, "--attention", "dense", "--prompts", str(prompts), "--out", str(out)]
    res = _launch(4, [*args, "--ulysses", "4"], tmp_path)  # tiny-hunyuan has 2 heads
    assert res.returncode != 0
    message = "xattn-video: error: --ulysses 4: tiny-hunyuan's transformer has 2 attention heads"
    # torchrun stops the other processes (SIGTERM) once the first one exits, so 1 to 4 of them
    # get to print it (a fresh-clone CI run saw 3); the first failure is our exit code 2
    assert 1 <= res.stderr.count(message) <= 4, res.stderr[-3000:]
    assert re.search(r"exitcode\s*:\s*2\b", res.stderr), res.stderr[-3000:]
    assert "generate.py" not in res.stderr  # no traceback of ours (torchrun prints its own)
    assert not (out / "run.json").exists() and not (out / "00000").exists()


_WAN22 = """
import sys
import torch.distributed as dist
from xattn_video.pipelines.generate import GenerateOptions, generate
from xattn_video.pipelines.tiny.factory import build_tiny_wan_pipeline, wan_transformer

pipe = build_tiny_wan_pipeline()
pipe.register_modules(transformer_2=wan_transformer(1))
pipe.register_to_config(boundary_ratio=0.5)  # half the steps on each expert
seen = {"transformer": set(), "transformer_2": set()}
for name in seen:
    getattr(pipe, name).blocks[0].attn1.register_forward_pre_hook(
        lambda m, a, kw, name=name: seen[name].add(kw.get("hidden_states", a[0]).shape[1]),
        with_kwargs=True)
generate(GenerateOptions(model="tiny-wan", prompts=sys.argv[1], out=sys.argv[2],
                         attention="dense", steps=4, progress=False, ulysses=2), pipe=pipe)
line = f"rank {dist.get_rank()}: {sorted(seen['transformer'])} {sorted(seen['transformer_2'])}"
sys.stdout.write(line + "\\n")  # one write: the two ranks' lines do not interleave
sys.stdout.flush()
"""


@pytest.mark.slow
def test_both_experts_of_a_two_expert_wan_run_sequence_parallel(tmp_path):
    """Wan 2.2 A14B's second expert ran the whole sequence on every rank under --ulysses 2 (no
    speed-up, no memory split for its steps): both experts see N/2 tokens per rank."""
    script = tmp_path / "wan22.py"
    script.write_text(_WAN22)
    (tmp_path / "p.txt").write_text("a red fox runs\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "XDG_CACHE_HOME": str(tmp_path / "cache")}  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(_free_port()), str(script), "p.txt", "run"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    seen = re.findall(r"rank (\d): (\[[\d, ]*\]) (\[[\d, ]*\])", res.stdout)
    assert sorted(rank for rank, _, _ in seen) == ["0", "1"], res.stdout
    for _, first, second in seen:
        assert first == second, res.stdout  # the same per-rank token count for both experts
    assert (tmp_path / "run" / "00000" / "meta.json").is_file()


def _barrier_worker(rank: int, init_file: str, default: bool, result_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
        timeout=datetime.timedelta(seconds=2),
    )  # fmt: skip
    group = multiprocess.finish_group(2)
    if rank == 1:
        time.sleep(5)  # the last video of the slower process: longer than the default timeout
    try:
        dist.barrier() if default else multiprocess.wait_for_everyone(group)
        outcome = "ok"
    except Exception as e:  # noqa: BLE001 - the outcome is the test's subject
        outcome = type(e).__name__
    with open(os.path.join(result_dir, f"{rank}"), "w") as f:
        f.write(outcome)


@pytest.mark.parametrize("default", [True, False])
def test_the_last_barrier_outlasts_the_default_timeout(tmp_path, default):
    """A process waiting 5 s for the other on a group whose timeout is 2 s fails (the default
    group, as the NCCL one fails after 10 min); on ``finish_group``'s group it waits."""
    mp.spawn(
        _barrier_worker, args=(str(tmp_path / "init"), default, str(tmp_path)), nprocs=2,
        join=True,
    )  # fmt: skip
    outcome = (tmp_path / "0").read_text()
    assert (outcome != "ok") if default else (outcome == "ok"), outcome
    assert multiprocess.FINISH_TIMEOUT >= datetime.timedelta(days=1)


def test_a_pipeline_already_context_parallel_is_reused_or_refused():
    """A pipeline passed to ``generate`` again after a ``--ulysses 2`` run is already context
    parallel: the same degree reuses it (a second ``enable_parallelism`` raised diffusers'
    "cannot be called twice"), another degree or ``--ulysses 1`` is refused (the data-parallel
    split then exchanged tokens between processes running different prompts: wrong frames)."""
    from types import SimpleNamespace

    from xattn_video.pipelines.options import SetupError

    def tr(degree):
        cp = SimpleNamespace(ulysses_degree=degree) if degree else None
        return SimpleNamespace(_parallel_config=SimpleNamespace(context_parallel_config=cp))

    plain, fresh = SimpleNamespace(), tr(None)
    assert multiprocess.experts_to_parallelize([plain, fresh], 2) == [plain, fresh]
    assert multiprocess.experts_to_parallelize([plain], 1) == []
    assert multiprocess.experts_to_parallelize([tr(2), tr(2)], 2) == []
    for experts, ulysses in (([tr(2)], 1), ([tr(2)], 4), ([tr(2), plain], 2)):
        with pytest.raises(SetupError, match="already runs Ulysses sequence parallelism"):
            multiprocess.experts_to_parallelize(experts, ulysses)


def test_generate_refuses_a_context_parallel_pipe_without_ulysses(tmp_path):
    from types import SimpleNamespace

    from xattn_video.pipelines.generate import GenerateOptions, generate
    from xattn_video.pipelines.options import SetupError
    from xattn_video.pipelines.tiny.factory import build_tiny_hunyuan_pipeline

    pipe = build_tiny_hunyuan_pipeline()
    cp = SimpleNamespace(ulysses_degree=2)
    pipe.transformer._parallel_config = SimpleNamespace(context_parallel_config=cp)
    (tmp_path / "p.txt").write_text("a red fox\n")
    opts = GenerateOptions(model="tiny-hunyuan", prompts=str(tmp_path / "p.txt"),
                           out=tmp_path / "run", attention="dense", steps=1, device="cpu",
                           progress=False)  # fmt: skip
    with pytest.raises(SetupError, match="asks for --ulysses 1: load the pipeline again"):
        generate(opts, pipe=pipe)
    assert not (tmp_path / "run" / "00000" / "meta.json").exists()
