"""Several processes: ``accelerate launch -m xattn_video.pipelines.cli generate`` splits the prompts.

On a CPU-only machine ``accelerate launch --cpu --num_processes 2`` starts a single process
unless MPI is set up (accelerate's simple launcher only spawns several CPU processes through
``mpirun``), so the test launches with ``--multi_gpu``: torchrun starts 2 processes and the CLI
(``PartialState(cpu=True)`` when CUDA is absent) joins them into a gloo group. The test checks
that two processes really ran, that each prompt was generated exactly once, and that the frames
are byte-identical to a one-process run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xattn_video.pipelines.cli import main

from ._vbench import SUBSET_INFO_JSON

REPO = Path(__file__).resolve().parents[1]
NUM_PROMPTS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accelerate() -> list[str]:
    """This interpreter's ``accelerate`` CLI, whether or not its bin folder is on PATH (the
    old fallback, ``-m accelerate.commands.launch launch``, took "launch" for the script)."""
    return [sys.executable, "-m", "accelerate.commands.accelerate_cli"]


# the shipped VBench subset as a user file (VBench's JSON format): no suite count override
# is needed in the launched processes
GENERATE = ["generate", "--model", "tiny-hunyuan", "--prompts", str(SUBSET_INFO_JSON)]
GENERATE += ["--limit", str(NUM_PROMPTS), "--attention", "xattn", "--block-size", "16"]
GENERATE += ["--stride", "4", "--warmup-steps", "1"]
GENERATE += ["--backend", "torch", "--no-progress"]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU launch recipe; GPUs use NCCL")
def test_two_processes_split_prompts_and_match_one_process(tmp_path, monkeypatch):
    multi, single = tmp_path / "multi", tmp_path / "single"
    env = {
        **os.environ,
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
    }
    launch = [*_accelerate(), "launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(_free_port())]
    cmd = [*launch, "-m", "xattn_video.pipelines.cli", *GENERATE, "--out", str(multi)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # both processes ran and together generated every prompt once
    for rank in (0, 1):
        assert f"process {rank}/2: generated 2, skipped 0 finished, of 2 prompts" in res.stdout

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same CPU kernels as the OMP_NUM_THREADS=1 processes
    try:
        assert main([*GENERATE, "--out", str(single)]) == 0
    finally:
        torch.set_num_threads(threads)

    dirs = sorted(p.name for p in multi.iterdir() if p.is_dir())
    assert dirs == sorted(p.name for p in single.iterdir() if p.is_dir())
    assert len(dirs) == NUM_PROMPTS
    ranks = []
    for name in dirs:
        meta = json.loads((multi / name / "meta.json").read_text())
        ranks.append(meta["process"]["index"])
        assert meta["process"]["count"] == 2
        assert (multi / name / "frames.npy").read_bytes() == (
            single / name / "frames.npy"
        ).read_bytes()
    assert ranks == [0, 1, 0, 1]  # prompts[rank::world], by position
    run = json.loads((multi / "run.json").read_text())
    assert run["num_processes"] == 2 and run["num_prompts"] == NUM_PROMPTS
    assert not [p for p in multi.rglob("*") if ".partial" in p.name]
