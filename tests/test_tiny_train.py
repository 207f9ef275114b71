"""Training the tiny DiT (``pipelines/tiny/train.py``, ``train_plots.py``): the loss, its
convention against the scheduler, and the training command end to end on CPU."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from xattn_video.pipelines.tiny import synthetic as syn
from xattn_video.pipelines.tiny import train as train_mod
from xattn_video.pipelines.tiny.factory import build_tiny_pipeline
from xattn_video.pipelines.tiny.pipeline import TinyVideoPipeline, load_tiny_pipeline
from xattn_video.pipelines.tiny.train import flow_matching_loss, main, sample_sigmas

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"num_layers": 1, "num_single_layers": 1}  # fewer blocks: fast CPU training tests


def test_training_overfits_a_fixed_batch():
    torch.manual_seed(0)
    pipe = build_tiny_pipeline(0, init="dit", **SMALL)
    tr, emb = pipe.transformer.train(), pipe.condition_embedder.train()
    x0, tokens, _ = syn.sample_batch(np.random.default_rng(0), 2, frames=3, height=16, width=16)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=g)
    sigmas = sample_sigmas(2, g, 3.0, torch.device("cpu"))
    opt = torch.optim.AdamW([*tr.parameters(), *emb.parameters()], lr=1e-3)
    losses = []
    for _ in range(20):
        loss = flow_matching_loss(pipe, x0, tokens, noise, sigmas)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses


def test_flow_matching_convention_matches_scheduler():
    # a perfect velocity predictor (v = e - x0) must carry x_1 = e to x0 with the scheduler
    from diffusers import FlowMatchEulerDiscreteScheduler

    x0 = torch.rand(1, 3, 2, 4, 4) * 2 - 1
    e = torch.randn_like(x0)
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(sigmas=np.linspace(1.0, 0.0, 6)[:-1])
    x = e.clone()
    for t in sched.timesteps:
        x = sched.step(e - x0, t, x, return_dict=False)[0]
    torch.testing.assert_close(x, x0, atol=1e-5, rtol=0)


def test_train_cli_smoke(tmp_path):
    out = tmp_path / "run"
    rc = main(["--out", str(out), "--device", "cpu", "--max-steps", "2", "--frames", "2",
               "--height", "16", "--width", "16", "--batch-size", "1", "--log-every", "1",
               "--sample-steps", "1"])  # fmt: skip
    assert rc == 0
    for f in ("tiny_dit.json", "loss_curve.json", "loss_curve.png", "samples.png",
              "train_info.json", "transformer/diffusion_pytorch_model.safetensors"):  # fmt: skip
        assert (out / f).is_file(), f
    pipe = load_tiny_pipeline(out)
    assert isinstance(pipe, TinyVideoPipeline)
    assert pipe.transformer.dtype == torch.float32


def test_planned_run_repeats_bitwise_with_max_steps_and_counts_clips(tmp_path, monkeypatch):
    """Without --max-steps the run plans its step count after timing a few full-length steps;
    passing that ``planned_steps`` as --max-steps must retrace the same learning rates and give
    the same weights bit for bit on the CPU. ``clips_seen`` counts the short phase's windows."""
    monkeypatch.setattr(train_mod, "CALIBRATION_STEPS", (1, 3))  # plan after 3 full steps
    ticks = itertools.count()  # a clock of 10 ms per reading: the plan does not depend on load
    monkeypatch.setattr(train_mod, "time", SimpleNamespace(perf_counter=lambda: next(ticks) / 100))
    common = (
        "--device cpu --frames 2 --height 8 --width 8 --batch-size 1 --short-frames 1 "
        "--short-batch-size 3 --warmup-steps 1 --log-every 1 --sample-steps 1"
    ).split()

    def run(name: str, *argv: str) -> tuple[dict, dict]:
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["--out", str(tmp_path / name), *common, *argv]) == 0
        info = json.loads((tmp_path / name / "train_info.json").read_text())
        curve = json.loads((tmp_path / name / "loss_curve.json").read_text())
        weights = load_file(tmp_path / name / "transformer/diffusion_pytorch_model.safetensors")
        return info, {"lr": curve["lr"], "weights": weights}

    a, ra = run("planned", "--minutes", "0.008", "--short-steps", "2")
    short, n = a["config"]["short_steps"], a["planned_steps"]
    # the run stopped at the steps it planned (it said "max_steps", which was never passed)
    assert n is not None and a["steps"] == n and a["stop_reason"] == "planned steps"
    assert n > short + 3  # the cosine part after the plan is exercised
    b, rb = run("repeat", "--minutes", "10", "--max-steps", str(n), "--short-steps", str(short))
    assert b["steps"] == n and b["planned_steps"] == n and b["stop_reason"] == "max_steps"
    assert ra["weights"].keys() == rb["weights"].keys()
    assert all(torch.equal(ra["weights"][k], rb["weights"][k]) for k in ra["weights"])
    assert ra["lr"] == rb["lr"]  # the logged learning rate of every step
    assert a["clips_seen"] == b["clips_seen"] == short * 3 + (n - short) * 1


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)
def test_a_short_max_steps_run_still_decays_its_learning_rate():
    """With --max-steps at or below the short phase plus calibration (1,530 steps by default) the
    cosine never started: --max-steps 1000 ended at the peak 4e-4, not 4e-5."""
    cfg = train_mod.TrainConfig(out="unused")
    lr_at = train_mod._lr_at
    peak, low = cfg.lr, cfg.lr * cfg.min_lr_ratio
    assert lr_at(cfg.warmup_steps - 1, 1000, cfg) == peak
    assert lr_at(cfg.warmup_steps, 1000, cfg) == peak  # the cosine starts after the warm-up
    assert lr_at(600, 1000, cfg) == pytest.approx((peak + low) / 2)
    assert lr_at(999, 1000, cfg) == pytest.approx(low, rel=1e-4)
    # planned runs (total past the calibration) keep their schedule, whatever the total
    start = cfg.short_steps + train_mod.CALIBRATION_STEPS[1]
    for step in (0, 199, 200, 1000, start - 1):
        assert lr_at(step, start + 1, cfg) == lr_at(step, 5000, cfg) == lr_at(step, 10**9, cfg)
    assert lr_at(start - 1, 5000, cfg) == peak
    assert lr_at(4999, 5000, cfg) == pytest.approx(low, rel=1e-4)


def test_cuda_without_cuda_is_a_usage_error_not_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train_mod.main(["--out", str(tmp_path), "--device", "cuda"])
    assert exc.value.code == 2
    assert "CUDA is not available (use --device cpu)" in capsys.readouterr().err


def test_the_start_line_says_what_the_run_will_do(tmp_path, capsys):
    """With no short phase it announced "first 0 steps: 32 windows of 5 frames"; on the CPU it
    said nothing of memory, and the default batch sizes (~32 GB) were killed by the OOM killer
    with no message."""
    argv = ["--out", str(tmp_path / "o"), "--device", "cpu", "--frames", "2", "--height", "8",
            "--width", "8", "--batch-size", "1", "--short-steps", "0", "--max-steps", "1",
            "--sample-steps", "1"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    start = next(line for line in out.splitlines() if line.startswith("[train] device="))
    assert start.endswith("; no short phase") and "windows" not in start
    assert "[train] note: on the CPU a step holds ~2 GB" in out  # 8x8 clips: the baseline
    assert "--short-batch-size 4 --batch-size 1" in out
    cfg = train_mod.TrainConfig(out="", device="cpu")  # the defaults: ~32 GB
    assert 28 < train_mod._cpu_gb(cfg) < 36


@pytest.mark.parametrize("flag, value", [
    ("--log-every", "0"), ("--batch-size", "0"), ("--short-frames", "0"), ("--max-steps", "-1"),
    ("--minutes", "0"), ("--sample-steps", "0"), ("--frames", "0"),
])  # fmt: skip
def test_non_positive_sizes_are_usage_errors(tmp_path, capsys, flag, value):
    """--log-every 0 divided by zero after the model was built, --batch-size 0 failed in the
    data, and --max-steps -1 / --minutes 0 trained nothing and saved the untrained model."""
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path), "--device", "cpu", flag, value])
    assert exc.value.code == 2
    assert f"{flag} must be positive" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_run_that_trains_no_step_leaves_the_out_folder_as_it_was(tmp_path, monkeypatch):
    """An untrained model replaced the weights already in --out (the shipped assets, in the
    module docstring's own command) when the time budget ran out before the first step."""
    import dataclasses

    out = tmp_path / "run"
    out.mkdir()
    (out / "tiny_dit.json").write_text("{}")
    cfg = train_mod.TrainConfig(out=str(out), device="cpu", max_steps=1, frames=2, height=16,
                                width=16, batch_size=1, sample_steps=1)  # fmt: skip
    cfg = dataclasses.replace(cfg, minutes=1e-9, max_steps=None)  # the budget is gone at once
    with pytest.raises(RuntimeError, match="no training step ran"):
        train_mod.train(cfg)
    assert sorted(p.name for p in out.iterdir()) == ["tiny_dit.json"]
