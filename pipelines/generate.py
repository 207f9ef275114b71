"""Generate one video per prompt, dense or with XAttention, into a resumable run directory.

``generate(GenerateOptions(...))`` loads the prompts and the pipeline, optionally applies
XAttention (``xattn_video.apply_xattention``), and writes per prompt ``video.mp4``,
``frames.npy`` and, last and atomically, ``meta.json`` (see ``xattn_video.pipelines.runinfo``
for the layout).

Determinism: every prompt is generated with the same seed, ``seed``, through a
``torch.Generator`` on the pipeline's device, so a dense and a sparse run (and a one-process
and a multi-process run) start every prompt from the same noise. CPU and CUDA generators give
different noise for the same seed: compare runs made on the same device type.

Timings (``meta.json["timings"]``): ``total_s`` is the whole pipeline call (text encoding,
denoising, VAE decoding); ``per_step_s`` are the denoising steps, from the first transformer
forward to each ``callback_on_step_end``; ``denoise_s`` is their sum. The device is
synchronised before every clock read. The first prompt of each process also pays for kernel
compilation / autotuning (``meta.json["first_in_process"]`` is true): leave it out of speed
comparisons.

Several processes (``accelerate launch``): the selected prompts are split by position,
``prompts[rank::world]``, before finished ones are skipped, so each prompt belongs to exactly
one process and the split does not depend on timing. Only the main process writes run.json.

Resume and interruption: prompts whose ``meta.json`` exists are skipped; every file is
written to a temporary name and renamed, so an interrupted prompt is never marked finished and
is generated again on the next run. ``KeyboardInterrupt`` stops after cleaning up the current
prompt and returns ``interrupted=True``.

Not supported: batching several prompts into one pipeline call, several videos per prompt,
negative prompts, changing the guidance scale (the pipelines' defaults are used), CPU offload.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xattn_video.config import XAttentionConfig

from . import runinfo
from .models import ModelSpec, get_model_spec, load_pipeline

ATTENTIONS = ("dense", "xattn")


class SetupError(ValueError):
    """Bad input found before generation started (options, prompts, model, config, out dir)."""


DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class GenerateOptions:
    """Everything ``generate`` needs; ``None`` sizes mean the model's defaults (``MODELS``)."""

    model: str
    prompts: str
    out: str | os.PathLike[str]
    attention: str = "dense"
    config: XAttentionConfig | None = None
    """XAttention settings (``attention="xattn"`` only); None: the model's preset."""
    model_path: str | os.PathLike[str] | None = None
    model_id: str | None = None
    prompts_dir: str | os.PathLike[str] | None = None
    limit: int | None = None
    sample: int | None = None
    dimension: str | None = None
    height: int | None = None
    width: int | None = None
    frames: int | None = None
    steps: int | None = None
    seed: int = 0
    fps: int | None = None
    device: str | None = None
    """None: the accelerate process's device (CUDA if available, else CPU)."""
    dtype: str | None = None
    """``bfloat16`` / ``float16`` / ``float32``; None: bfloat16 on CUDA, float32 on CPU."""
    progress: bool = True


@dataclass
class GenerateResult:
    """What one process did."""

    out: Path
    total: int
    """Prompts selected (all processes)."""
    assigned: int
    """Prompts of this process."""
    generated: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    interrupted: bool = False
    process_index: int = 0
    num_processes: int = 1


def resolve_options(opts: GenerateOptions) -> tuple[ModelSpec, dict[str, Any]]:
    """Validate ``opts`` and fill in the model defaults.

    Returns the model spec and a dict with ``height``, ``width``, ``frames``, ``steps``, ``fps``
    and ``config`` (an ``XAttentionConfig`` or None for dense).

    Raises:
        SetupError: unknown model or attention, sizes the pipelines can't do, a config given
            for a dense run.
    """
    try:
        spec = get_model_spec(opts.model)
    except ValueError as e:
        raise SetupError(str(e)) from None
    if opts.attention not in ATTENTIONS:
        raise SetupError(f"attention must be one of {ATTENTIONS}, got {opts.attention!r}")
    if opts.model_path is not None and opts.model_id is not None:
        raise SetupError("pass either --model-path or --model-id, not both")
    if opts.dtype is not None and opts.dtype not in DTYPES:
        raise SetupError(f"dtype must be one of {tuple(DTYPES)}, got {opts.dtype!r}")
    sizes = {
        "height": opts.height or spec.height,
        "width": opts.width or spec.width,
        "frames": opts.frames or spec.frames,
        "steps": opts.steps or spec.steps,
        "fps": opts.fps or spec.fps,
    }
    for name in ("height", "width"):
        if sizes[name] < 16 or sizes[name] % 16:
            raise SetupError(f"{name} must be a positive multiple of 16, got {sizes[name]}")
    if sizes["frames"] < 1 or sizes["frames"] % 4 != 1:
        raise SetupError(f"frames must be 4k+1 (1, 5, 9, ..., 129), got {sizes['frames']}")
    for name in ("steps", "fps"):
        if sizes[name] < 1:
            raise SetupError(f"{name} must be >= 1, got {sizes[name]}")
    if opts.attention == "dense":
        if opts.config is not None:
            raise SetupError("an XAttention config was given for a dense run (--attention dense)")
        config = None
    else:
        config = opts.config or XAttentionConfig.from_preset(spec.preset)
        if config.warmup_steps >= sizes["steps"]:
            warnings.warn(
                f"warmup_steps={config.warmup_steps} >= steps={sizes['steps']}: every step runs "
                "dense attention",
                stacklevel=2,
            )
    return spec, {**sizes, "config": config}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Per-step wall times from a transformer pre-forward hook and ``callback_on_step_end``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start: float | None = None
        self.ends: list[float] = []

    def reset(self) -> None:
        self.start, self.ends = None, []

    def pre_forward(self, module: Any, args: Any) -> None:
        if self.start is None:
            _sync(self.device)
            self.start = time.perf_counter()

    def callback(self, pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict:
        _sync(self.device)
        self.ends.append(time.perf_counter())
        return kwargs

    def per_step(self) -> list[float]:
        if self.start is None:
            return []
        marks = [self.start, *self.ends]
        return [b - a for a, b in zip(marks, marks[1:], strict=False)]


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) floats in [0, 1] -> uint8, rounded to nearest."""
    return np.clip(np.rint(np.asarray(frames, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def _process_state() -> Any:
    """accelerate's process state. Without CUDA, ``cpu=True`` makes a torchrun-style launch
    (``accelerate launch --multi_gpu``, ``torchrun``) a gloo multi-CPU group instead of several
    independent single processes that would all generate every prompt."""
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if state.num_processes != world:
        raise SetupError(
            f"launched as {world} processes (WORLD_SIZE) but accelerate sees "
            f"{state.num_processes}; refusing to run, every process would generate every prompt"
        )
    return state


def generate(opts: GenerateOptions, *, pipe: Any = None) -> GenerateResult:
    """Run ``opts`` (this process's share of the prompts); see the module docstring.

    Args:
        opts: the run settings.
        pipe: an already loaded pipeline to use instead of ``load_pipeline`` (tests, notebooks).

    Raises:
        SetupError: bad options, prompts, model or config, or ``out`` holds a run with other
            settings (all found before the first video).
        xattn_video.prompts.PromptDataMissing: the prompt suite is not available.
    """
    from xattn_video.prompts import PromptDataMissing, load_prompts

    spec, r = resolve_options(opts)
    state = _process_state()
    device = torch.device(state.device)
    if opts.device:  # "cuda" under accelerate means this process's GPU
        asked = torch.device(opts.device)
        device = device if asked.type == device.type and asked.index is None else asked
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SetupError(f"--device {opts.device} asked for CUDA, but no CUDA GPU is available")
    dtype_name = opts.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    try:
        prompts = load_prompts(
            opts.prompts,
            data_dir=opts.prompts_dir,
            dimension=opts.dimension,
            limit=opts.limit,
            sample=opts.sample,
        )
    except PromptDataMissing:
        raise
    except (ValueError, FileNotFoundError) as e:
        raise SetupError(str(e)) from e
    out = Path(opts.out)
    config: XAttentionConfig | None = r["config"]
    source = opts.model_id or (str(Path(opts.model_path).resolve()) if opts.model_path else None)
    env = {
        "gpu": runinfo.gpu_name(device),
        "versions": runinfo.versions(),
        "git_sha": runinfo.git_sha(),
    }
    run = {
        "model": spec.name,
        "model_source": source or spec.default_id,
        "attention": opts.attention,
        "config": config.to_dict() if config is not None else None,
        "height": r["height"],
        "width": r["width"],
        "frames": r["frames"],
        "steps": r["steps"],
        "seed": opts.seed,
        "fps": r["fps"],
        "dtype": dtype_name,
        "prompts": os.fspath(opts.prompts),
        "selection": {"dimension": opts.dimension, "sample": opts.sample, "limit": opts.limit},
        "num_prompts": len(prompts),
        "num_processes": state.num_processes,
        **env,
        "command": runinfo.command_line(),
    }
    try:
        runinfo.check_compatible(out, run)
    except ValueError as e:
        raise SetupError(str(e)) from e
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        runinfo.write_json(out / runinfo.RUN_FILE, run)

    mine = prompts[state.process_index :: state.num_processes]
    result = GenerateResult(
        out=out,
        total=len(prompts),
        assigned=len(mine),
        process_index=state.process_index,
        num_processes=state.num_processes,
    )
    todo = [p for p in mine if not runinfo.is_finished(out / runinfo.prompt_dir_name(p.index))]
    result.skipped = [p.index for p in mine if p not in todo]
    if todo:
        _generate_prompts(opts, spec, r, run, env, todo, device, dtype_name, state, result, pipe)
    if not result.interrupted and state.num_processes > 1:
        state.wait_for_everyone()
    return result


def _generate_prompts(
    opts: GenerateOptions,
    spec: ModelSpec,
    r: dict[str, Any],
    run: dict[str, Any],
    env: dict[str, Any],
    todo: list[Any],
    device: torch.device,
    dtype_name: str,
    state: Any,
    result: GenerateResult,
    pipe: Any,
) -> None:
    from tqdm.auto import tqdm

    from xattn_video.metrics import save_frames, write_video

    show = opts.progress and state.is_main_process
    if pipe is None:
        try:
            pipe = load_pipeline(
                spec.name,
                model_path=opts.model_path,
                model_id=opts.model_id,
                dtype=DTYPES[dtype_name],
                device=device,
            )
        except (ValueError, FileNotFoundError) as e:
            raise SetupError(str(e)) from e
    if spec.random_weights and spec.family == "hunyuanvideo":
        # tiny-hunyuan's character-level CLIP truncates nearly every prompt at 77 tokens
        logging.getLogger("diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video").setLevel(
            logging.ERROR
        )
    # the pipeline's own bar over the steps: only for real models (tiny steps are short)
    pipe.set_progress_bar_config(disable=not show or spec.is_tiny, leave=False, position=1)
    handle = None
    if r["config"] is not None:
        from xattn_video import apply_xattention

        try:
            handle = apply_xattention(pipe, r["config"])
        except ValueError as e:
            raise SetupError(f"XAttention can't be applied: {e}") from e
    timer = StepTimer(device)
    hook = pipe.transformer.register_forward_pre_hook(timer.pre_forward)
    bar = tqdm(
        total=len(todo), desc=f"{run['attention']} {spec.name}", unit="video", disable=not show
    )
    current: Path | None = None
    try:
        for n, prompt in enumerate(todo):
            current = result.out / runinfo.prompt_dir_name(prompt.index)
            current.mkdir(parents=True, exist_ok=True)
            runinfo.remove_partial_files(current)
            if handle is not None:
                handle.stats.reset()
            timer.reset()
            generator = torch.Generator(device=device).manual_seed(opts.seed)
            _sync(device)
            t0 = time.perf_counter()
            frames = pipe(
                prompt.text,
                height=r["height"],
                width=r["width"],
                num_frames=r["frames"],
                num_inference_steps=r["steps"],
                generator=generator,
                output_type="np",
                callback_on_step_end=timer.callback,
                **spec.call_kwargs,
            ).frames[0]
            _sync(device)
            total_s = time.perf_counter() - t0
            video = to_uint8(frames)
            with runinfo.atomic_path(current / runinfo.VIDEO_FILE) as tmp:
                write_video(tmp, video, r["fps"])
            with runinfo.atomic_path(current / runinfo.FRAMES_FILE) as tmp:
                save_frames(tmp, video)
            per_step = timer.per_step()
            meta = {
                "prompt_index": prompt.index,
                "prompt": prompt.text,
                "dimensions": list(prompt.dimensions),
                "seed": opts.seed,
                "attention": run["attention"],
                "config": run["config"],
                "timings": {
                    "total_s": total_s,
                    "denoise_s": sum(per_step),
                    "per_step_s": per_step,
                },
                "density": handle.stats.summary() if handle is not None else None,
                "shape": list(video.shape),
                "first_in_process": n == 0,
                "process": {"index": state.process_index, "count": state.num_processes},
                **env,
            }
            runinfo.write_json(current / runinfo.META_FILE, meta)
            result.generated.append(prompt.index)
            bar.set_postfix(last=f"{total_s:.1f}s")
            bar.update(1)
            current = None
    except KeyboardInterrupt:
        result.interrupted = True
        if current is not None:
            runinfo.remove_partial_files(current)
    finally:
        bar.close()
        hook.remove()
        if handle is not None:
            handle.remove()
