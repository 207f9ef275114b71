"""Train the tiny video DiT on synthetic clips (rectified flow), within a wall-clock budget.

    python -m xattn_video.pipelines.tiny.train --out pipelines/tiny/assets/tiny_dit --minutes 8.5

(8.5 minutes of training keep the whole command, start-up and final samples included, under
10 minutes on one H100: about 1,500 short-clip steps at 5.5 it/s, then ~950 full-clip steps at
4.1 it/s with batch 8, i.e. ~35 full-length 17-frame clips/s.)

Objective (consistent with ``FlowMatchEulerDiscreteScheduler``): clips x0 in [-1, 1], noise e,
x_t = (1 - s) x0 + s e, the model predicts v = e - x0 from (x_t, timestep = 1000 s); the
scheduler's Euler step x_next = x + (s_next - s) v then integrates from s = 1 to 0. Training
sigmas are logit-normal(0, 1) pushed through the same shift (3.0) the sampler uses, with 20 %
drawn uniformly so the low-noise end is trained too. Clips are rendered on the training device
by :mod:`xattn_video.pipelines.tiny.synthetic`, a fresh batch every step. AdamW, linear warm-up,
constant, then cosine decay to 10 %, gradient clipping, bf16 autocast on CUDA, an EMA of the
weights (the EMA is what is saved and sampled), 10 % of the conditions dropped to the null
tokens (so classifier-free guidance is available).

Curriculum: attention over 17,408 tokens dominates the cost, so the first ``--short-steps``
steps train on random windows of ``--short-frames`` (5) consecutive frames of the 17-frame
clips (same per-frame motion; ~5x more clips per second on an H100): the photos and motion are
learned there, at a constant learning rate; the rest of the run uses full 17-frame clips and
carries the cosine decay, which starts once the step budget is known (``CALIBRATION_STEPS[1]``
= 30 steps into the full-length phase, or at the end of the warm-up if that is later).
RoPE makes the model the same at both lengths.

Step budget: with ``--max-steps N`` the cosine ends at step N; otherwise the run times 20 steps
of the full-length phase and plans the rest of the budget at that speed (printed as
``planned_steps``). Until then the learning rate does not depend on the step count, in both
modes, so passing ``planned_steps`` as ``--max-steps`` (with the ``short_steps`` that
``train_info.json`` records, should the time guard below have ended the short phase early, and
a ``--minutes`` budget that does not run out first) repeats the run exactly. Training stops at
the planned step count or when ``--minutes`` of training have passed, whichever is first;
Ctrl-C also stops and saves.

Written to ``--out``: the weights in the layout ``load_tiny_pipeline(out)`` reads (fp16
safetensors + configs), ``train_info.json``, ``loss_curve.json`` (step, loss, lr, seconds,
frames), ``loss_curve.png`` and ``samples.png`` (dense samples of the EMA model: per condition
a row of training data and a row of the sample, several frames side by side).

Determinism: data, initialisation, noise and sigmas all derive from ``--seed`` (and the step),
and the CPU run is bitwise repeatable; on CUDA the attention backward and atomics make runs
differ in the last bits, so two GPU runs agree closely but not exactly.

Not supported: multi-GPU / distributed training, resuming from a checkpoint, gradient
accumulation, ``torch.compile`` by default (``--compile`` is opt-in and was not tried on
the GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

from .factory import build_tiny_pipeline
from .model import DEFAULT_SHIFT, TRAIN_FRAMES, TRAIN_HEIGHT, TRAIN_WIDTH
from .pipeline import TinyVideoPipeline
from .synthetic import sample_batch
from .train_plots import frame_strip, loss_plot

__all__ = ["TrainConfig", "flow_matching_loss", "main", "sample_sigmas", "train"]

CALIBRATION_STEPS = (10, 30)
"""Steps (after the short phase) between which the speed is timed to plan the step budget."""
SHORT_PHASE_MAX = 0.6
"""The short-clip phase ends early if it would use more than this share of ``--minutes``."""


@dataclass
class TrainConfig:
    """All knobs of :func:`train` (the CLI flags map 1:1)."""

    out: str
    minutes: float = 8.5
    max_steps: int | None = None
    batch_size: int = 8
    short_steps: int = 1500
    short_frames: int = 5
    short_batch_size: int = 32
    lr: float = 4e-4
    weight_decay: float = 0.01
    warmup_steps: int = 200
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    p_uncond: float = 0.1
    p_uniform_sigma: float = 0.2
    shift: float = DEFAULT_SHIFT
    frames: int = TRAIN_FRAMES
    height: int = TRAIN_HEIGHT
    width: int = TRAIN_WIDTH
    seed: int = 0
    device: str = "cuda"
    log_every: int = 25
    sample_steps: int = 30
    compile: bool = False
    unmasked_attention: bool = True


class _UnmaskedAttnProcessor(HunyuanVideoAttnProcessor2_0):
    """Training-only: the condition tokens are never padded, so the key mask is all True and
    dropping it is exact; without a mask SDPA can use its flash kernel (faster backward)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 image_rotary_emb=None):  # fmt: skip
        return super().__call__(attn, hidden_states, encoder_hidden_states, None, image_rotary_emb)


def sample_sigmas(
    n: int,
    generator: torch.Generator,
    shift: float,
    device: torch.device,
    p_uniform: float = 0.0,
) -> torch.Tensor:
    """(n,) training sigmas: logit-normal(0, 1) pushed through the scheduler's shift
    s -> k s / (1 + (k - 1) s); a ``p_uniform`` share is uniform in (0, 1) instead, so the
    low-noise end (fine detail) is not starved by the shift."""
    u = torch.sigmoid(torch.randn(n, generator=generator, device=device))
    sig = shift * u / (1 + (shift - 1) * u)
    if p_uniform > 0:
        flat = torch.rand(n, generator=generator, device=device)
        pick = torch.rand(n, generator=generator, device=device) < p_uniform
        sig = torch.where(pick, flat, sig)
    return sig


def flow_matching_loss(
    pipe: TinyVideoPipeline,
    x0: torch.Tensor,
    tokens: torch.Tensor,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
) -> torch.Tensor:
    """Mean squared error of the velocity prediction. x0, noise: (B, 3, T, H, W); tokens (B, K);
    sigmas (B,) in [0, 1]."""
    s = sigmas.view(-1, 1, 1, 1, 1).to(x0.dtype)
    xt = (1 - s) * x0 + s * noise
    ehs, mask, pooled = pipe.condition_embedder(tokens)
    pred = pipe.transformer(
        hidden_states=xt,
        timestep=sigmas.float() * 1000.0,
        encoder_hidden_states=ehs,
        encoder_attention_mask=mask,
        pooled_projections=pooled,
        return_dict=False,
    )[0]
    return F.mse_loss(pred.float(), (noise - x0).float())


def _lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up, constant through the short-clip phase and the calibration steps after it,
    then cosine to min_lr_ratio at step ``total``. Before the cosine starts the value does not
    depend on ``total``: a planned run (``total`` unknown until the calibration ends) and its
    ``--max-steps`` repeat follow the same schedule. A ``--max-steps`` run that ends before the
    calibration steps do starts its cosine after the warm-up, so it still decays (a run no longer
    than its warm-up never reaches the peak)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    start = max(cfg.warmup_steps, cfg.short_steps + CALIBRATION_STEPS[1])
    if total <= start:  # it stayed at the peak to the end (4e-4, not 4e-5, at --max-steps 1000)
        start = cfg.warmup_steps
    if step < start:
        return cfg.lr
    frac = min(1.0, (step - start) / max(1, total - start))
    return cfg.lr * (
        cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
    )


def _log(msg: str) -> None:
    print(msg, flush=True)


def _cpu_gb(cfg: TrainConfig) -> float:
    """Rough CPU memory of a training step (GB): ~0.94 GB per 64x64 5-frame window of the short
    phase (measured on 2 cores: 3.5 GB at 2 windows, 5.4 at 4, so ~1.5 GB besides), the full
    phase scaled by its frames; the larger of the two phases."""
    per_frame = 0.94 / 5 * (cfg.height * cfg.width) / (64 * 64)
    short = cfg.short_batch_size * cfg.short_frames * per_frame if cfg.short_steps else 0.0
    return max(short, cfg.batch_size * cfg.frames * per_frame) + 1.5


def train(cfg: TrainConfig) -> dict:
    """Run training; returns the ``train_info.json`` dict."""
    t_start = time.perf_counter()
    device = torch.device(cfg.device)
    if cfg.short_frames >= cfg.frames or cfg.short_steps < 0:
        cfg = dataclasses.replace(cfg, short_steps=0)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but CUDA is not available (use --device cpu)")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    np_rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    pipe = build_tiny_pipeline(cfg.seed, init="dit", shift=cfg.shift)
    pipe.set_progress_bar_config(disable=True)
    tr, emb = pipe.transformer, pipe.condition_embedder
    if cfg.unmasked_attention:
        procs = {k: (_UnmaskedAttnProcessor() if not k.startswith("context_embedder.") else v)
                 for k, v in tr.attn_processors.items()}  # fmt: skip
        tr.set_attn_processor(procs)
    for m in (tr, emb):
        torch.nn.Module.to(m, device)
        m.train()
    params = [p for m in (tr, emb) for p in m.parameters()]
    n_params = sum(p.numel() for p in tr.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.99), eps=1e-8,
        fused=device.type == "cuda",
    )  # fmt: skip
    ema = [p.detach().clone().float() for p in params]
    forward = flow_matching_loss
    if cfg.compile:
        tr.compile()
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    budget_s = cfg.minutes * 60.0
    planned = cfg.max_steps
    n_tokens = cfg.frames * (cfg.height // 2) * (cfg.width // 2)
    short = (f"; first {cfg.short_steps} steps: {cfg.short_batch_size} windows of "
             f"{cfg.short_frames} frames" if cfg.short_steps else "; no short phase")  # fmt: skip
    _log(f"[train] device={device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}) "
         f"params={n_params / 1e6:.2f}M batch={cfg.batch_size} clip={cfg.frames}x{cfg.height}x"
         f"{cfg.width} ({n_tokens} video tokens) budget={cfg.minutes} min max_steps={planned}"
         + short)  # fmt: skip
    if device.type == "cpu":
        _log(f"[train] note: on the CPU a step holds ~{_cpu_gb(cfg):.0f} GB at these batch sizes "
             "(~0.9 GB per 5-frame window, measured); on a small machine pass e.g. "
             "--short-batch-size 4 --batch-size 1")  # fmt: skip

    curve: dict = {"every": cfg.log_every, "step": [], "loss": [], "lr": [], "seconds": [],
                   "frames": [], "short_steps": cfg.short_steps}  # fmt: skip
    cal = (cfg.short_steps + CALIBRATION_STEPS[0], cfg.short_steps + CALIBRATION_STEPS[1])
    loss_acc = torch.zeros((), device=device)
    n_acc = 0
    step = 0
    clips_seen = 0  # the short phase draws short_batch_size windows per step
    t_train = time.perf_counter()
    t_cal = None
    t_log, step_log = t_train, 0
    stop_reason = "max_steps" if cfg.max_steps is not None else "planned steps"
    try:
        while True:
            if planned is not None and step >= planned:
                break
            if time.perf_counter() - t_train >= budget_s:
                stop_reason = "time budget"
                break
            lr = _lr_at(step, planned or 10**9, cfg)  # total unused until the plan exists
            for g in opt.param_groups:
                g["lr"] = lr
            if (
                step < cfg.short_steps
                and time.perf_counter() - t_train > SHORT_PHASE_MAX * budget_s
            ):
                _log(f"[train] time guard: short phase ends at step {step} (not {cfg.short_steps})")
                cfg = dataclasses.replace(cfg, short_steps=step)
                cal = (step + CALIBRATION_STEPS[0], step + CALIBRATION_STEPS[1])
                curve["short_steps"] = step
            short = step < cfg.short_steps
            bs, frames = (cfg.short_batch_size, cfg.short_frames) if short else (
                cfg.batch_size, cfg.frames)  # fmt: skip
            x0, tokens, _ = sample_batch(np_rng, bs, frames=frames, height=cfg.height,
                                         width=cfg.width, device=device,
                                         clip_frames=cfg.frames)  # fmt: skip
            drop = torch.rand(bs, generator=gen, device=device) < cfg.p_uncond
            tokens = torch.where(drop[:, None], emb.null_tokens(bs, device), tokens)
            noise = torch.randn(x0.shape, generator=gen, device=device)
            sigmas = sample_sigmas(bs, gen, cfg.shift, device, cfg.p_uniform_sigma)
            with autocast:
                loss = forward(pipe, x0, tokens, noise, sigmas)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            d = min(cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach().float() for p in params], 1 - d)
            loss_acc += loss.detach()
            n_acc += 1
            step += 1
            clips_seen += bs

            if cfg.max_steps is None and planned is None:
                if step == cal[0]:
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    t_cal = time.perf_counter()
                elif step == cal[1]:
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    rate = (cal[1] - cal[0]) / (time.perf_counter() - t_cal)
                    left = budget_s - (time.perf_counter() - t_train)
                    planned = step + max(1, int(left * rate * 0.97))
                    _log(f"[train] speed {rate:.2f} it/s -> planned_steps={planned} "
                         f"(repeat exactly with --max-steps {planned} "
                         f"--short-steps {cfg.short_steps})")  # fmt: skip
            if step % cfg.log_every == 0 or (planned is not None and step >= planned):
                mean_loss = float(loss_acc) / max(1, n_acc)
                now = time.perf_counter()
                ips = (step - step_log) / max(1e-9, now - t_log)
                t_log, step_log = now, step
                curve["step"].append(step)
                curve["loss"].append(mean_loss)
                curve["lr"].append(lr)
                curve["seconds"].append(round(now - t_train, 2))
                curve["frames"].append(frames)
                loss_acc.zero_()
                n_acc = 0
                if not math.isfinite(mean_loss):
                    raise FloatingPointError(f"loss is {mean_loss} at step {step}")
                mem = (f" mem {torch.cuda.max_memory_allocated() / 2**30:.1f}GiB"
                       if device.type == "cuda" else "")  # fmt: skip
                _log(f"[train] step {step:6d}/{planned or '?'} loss {mean_loss:.4f} lr {lr:.2e} "
                     f"{ips:.2f} it/s elapsed {now - t_train:.0f}s{mem}")  # fmt: skip
    except KeyboardInterrupt:
        stop_reason = "interrupted"
        _log("[train] interrupted: saving the EMA weights")
    if n_acc:
        curve["step"].append(step)
        curve["loss"].append(float(loss_acc) / n_acc)
        curve["lr"].append(_lr_at(max(0, step - 1), planned or 10**9, cfg))
        curve["seconds"].append(round(time.perf_counter() - t_train, 2))
        curve["frames"].append(cfg.frames if step > cfg.short_steps else cfg.short_frames)
    train_s = time.perf_counter() - t_train

    # EMA weights -> a clean pipeline (stock processors), saved first so nothing can lose them
    final = build_tiny_pipeline(None, init="default", shift=cfg.shift)
    final.set_progress_bar_config(disable=True)
    with torch.no_grad():
        dst = [p for m in (final.transformer, final.condition_embedder) for p in m.parameters()]
        for p, e in zip(dst, ema, strict=True):
            p.copy_(e.to(p.device))
    for m in (final.transformer, final.condition_embedder):
        torch.nn.Module.to(m.eval(), device)
    info = {
        "config": asdict(cfg),
        "steps": step,
        "planned_steps": planned,
        "stop_reason": stop_reason,
        "train_seconds": round(train_s, 1),
        "steps_per_second": round(step / max(train_s, 1e-9), 3),
        "clips_seen": clips_seen,
        "final_loss": curve["loss"][-1] if curve["loss"] else None,
        "transformer_params": n_params,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "peak_memory_gib": (
            round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None
        ),
        "torch": torch.__version__,
    }
    if step == 0:  # an untrained model must not replace the weights already in ``out``
        raise RuntimeError(f"no training step ran ({stop_reason}); {out} is left as it was")
    final.save_pretrained(out, dtype=torch.float16, extra={"training": info})
    (out / "loss_curve.json").write_text(json.dumps(curve) + "\n")
    _log(f"[train] saved EMA weights (fp16) to {out} after {step} steps ({stop_reason})")
    try:
        loss_plot(curve, out / "loss_curve.png")
        with (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if device.type == "cuda"
            else (contextlib.nullcontext())
        ):
            frame_strip(
                final,
                out / "samples.png",
                frames=cfg.frames,
                height=cfg.height,
                width=cfg.width,
                steps=cfg.sample_steps,
            )
        _log(f"[train] wrote {out / 'loss_curve.png'} and {out / 'samples.png'}")
    except Exception as exc:  # plots must never lose a finished training run
        _log(f"[train] WARNING: plotting failed: {type(exc).__name__}: {exc}")
    info["total_seconds"] = round(time.perf_counter() - t_start, 1)
    (out / "train_info.json").write_text(json.dumps(info, indent=2) + "\n")
    _log(f"[train] done in {info['total_seconds']} s")
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xattn_video.pipelines.tiny.train",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--out", required=True, help="output directory (weights, curves, samples)")
    defaults = TrainConfig(out="")
    for name, typ, help_ in (
        ("minutes", float, "wall-clock budget of the training loop"),
        ("max_steps", int, "fixed step count (None: planned from the measured speed)"),
        ("batch_size", int, "clips per step (full-length clips)"),
        ("short_steps", int, "first steps trained on short windows (0: none)"),
        ("short_frames", int, "frames of the short windows"),
        ("short_batch_size", int, "windows per step in the short phase"),
        ("lr", float, "peak learning rate"),
        ("weight_decay", float, "AdamW weight decay (matrices only)"),
        ("warmup_steps", int, "linear learning-rate warm-up steps"),
        ("min_lr_ratio", float, "final learning rate / peak"),
        ("grad_clip", float, "gradient-norm clip"),
        ("ema_decay", float, "EMA decay"),
        ("p_uncond", float, "probability of dropping a condition to the null tokens"),
        ("p_uniform_sigma", float, "share of training sigmas drawn uniformly"),
        ("shift", float, "flow-matching shift (training sigmas and the saved scheduler)"),
        ("frames", int, "clip frames"),
        ("height", int, "clip height in pixels (multiple of 2)"),
        ("width", int, "clip width in pixels (multiple of 2)"),
        ("seed", int, "seed of data, init, noise and sigmas"),
        ("device", str, "cuda or cpu"),
        ("log_every", int, "steps per loss point / progress line"),
        ("sample_steps", int, "denoising steps of the final samples"),
    ):
        p.add_argument("--" + name.replace("_", "-"), type=typ, default=getattr(defaults, name),
                       help=f"{help_} (default: {getattr(defaults, name)})")  # fmt: skip
    p.add_argument("--compile", action="store_true", help="torch.compile the transformer")
    p.add_argument("--masked-attention", action="store_true",
                   help="keep the stock (masked) attention processor while training")  # fmt: skip
    a = p.parse_args(argv)
    kw = {k: v for k, v in vars(a).items() if k != "masked_attention"}
    cfg = TrainConfig(**kw, unmasked_attention=not a.masked_attention)
    names = ("minutes", "batch_size", "short_batch_size", "short_frames", "log_every",
             "sample_steps", "frames", "height", "width", "max_steps")  # fmt: skip
    values = {"--" + n.replace("_", "-"): getattr(cfg, n) for n in names}
    if bad := [flag for flag, v in values.items() if v is not None and v <= 0]:
        p.error(f"{', '.join(bad)} must be positive")
    if cfg.short_steps < 0 or cfg.height % 2 or cfg.width % 2:
        p.error("--short-steps must be >= 0 and --height / --width multiples of 2")
    if torch.device(cfg.device).type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {cfg.device} but CUDA is not available (use --device cpu)")
    info = train(cfg)
    _log(json.dumps({k: info[k] for k in ("steps", "final_loss", "steps_per_second",
                                          "stop_reason")}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
