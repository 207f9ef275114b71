"""Options of a ``generate`` run and every check that can fail before any work is done.

``resolve_options`` validates a :class:`GenerateOptions` and fills in the model's defaults;
``resolve_device``, ``check_backend`` and ``check_out`` check the device, the kernel backend
and the output directory. They all raise :class:`SetupError` (the CLI prints it on one line and
exits 2) before a model is loaded or a file is written.

Not supported: devices other than CUDA and CPU for generation; ``backend="triton"`` on the CPU
unless ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import os
import warnings
from argparse import ArgumentTypeError
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from xattn_video import rundir
from xattn_video.config import XAttentionConfig
from xattn_video.scalars import is_json_int

from .models import ModelSpec, get_model_spec

ATTENTIONS = ("dense", "xattn")


SEED_END = 2**64
"""Seeds are in [0, SEED_END): what ``torch.Generator.manual_seed`` takes (a negative seed
would alias a positive one)."""


class SetupError(ValueError):
    """Bad input found before generation started (options, prompts, model, config, out dir)."""


DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def dtype_name_for(dtype: str | None, device: str | torch.device) -> str:
    """``dtype`` (a :data:`DTYPES` name), or the default on ``device``: bf16 on CUDA, else fp32."""
    return dtype or ("bfloat16" if str(device).startswith("cuda") else "float32")


SIZE_FIELDS = ("height", "width", "frames", "steps", "fps")


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
    """Seed of every prompt, in [0, ``SEED_END``)."""
    fps: int | None = None
    device: str | None = None
    """None: the accelerate process's device (CUDA if available, else CPU)."""
    dtype: str | None = None
    """``bfloat16`` / ``float16`` / ``float32``; None: bfloat16 on CUDA, float32 on CPU."""
    progress: bool = True
    ulysses: int = 1
    """Ulysses sequence-parallel degree P: each prompt runs on P processes (its tokens split
    over them, one video written by the first); the process count must be a multiple of P."""
    compile: str = "off"
    """``torch.compile`` mode of the transformer (``pipelines.compiling.COMPILE_MODES``),
    applied after XAttention; ``off``: eager. Recorded in run.json."""
    compile_backend: str = "inductor"
    """``torch.compile`` backend (Python API only; e.g. ``aot_eager`` for quick CPU tests)."""


def check_model_path(model_path: str | os.PathLike[str] | None) -> None:
    """``SetupError`` when ``model_path`` (to be loaded) is not a folder: a typo read as "not a
    diffusers pipeline folder (... save_pretrained)", after the run directory was set up."""
    if model_path is not None and not Path(model_path).is_dir():
        what = "is not a directory" if Path(model_path).exists() else "does not exist"
        raise SetupError(f"--model-path {model_path} {what}")


def resolve_options(opts: GenerateOptions) -> tuple[ModelSpec, dict[str, Any]]:
    """Validate ``opts`` and fill in the model defaults.

    Returns the model spec and a dict with ``height``, ``width``, ``frames``, ``steps``, ``fps``
    and ``config`` (an ``XAttentionConfig`` or None for dense).

    Raises:
        SetupError: unknown model or attention, sizes the pipelines can't do (0 and negative
            sizes included), a config given for a dense run, a ``device`` torch can't parse.
    """
    try:
        spec = get_model_spec(opts.model)
    except ValueError as e:
        raise SetupError(str(e)) from None
    if opts.attention not in ATTENTIONS:
        raise SetupError(f"attention must be one of {ATTENTIONS}, got {opts.attention!r}")
    if isinstance(opts.out, str) and not opts.out.strip():  # Path("") is the working directory
        raise SetupError("out is empty")
    if opts.model_path is not None and opts.model_id is not None:
        raise SetupError("pass either --model-path or --model-id, not both")
    if not is_json_int(opts.ulysses) or opts.ulysses < 1:
        raise SetupError(f"ulysses must be a positive integer, got {opts.ulysses!r}")
    if not is_json_int(opts.seed) or not 0 <= opts.seed < SEED_END:
        raise SetupError(f"seed must be an integer in [0, 2**64), got {opts.seed!r}")
    for name in ("limit", "sample"):  # run.json records them: plain ints, as the sizes
        value = getattr(opts, name)
        if value is not None and (not is_json_int(value) or value < 1):
            raise SetupError(f"{name} must be a positive integer, got {value!r}")
    if opts.dtype is not None and opts.dtype not in DTYPES:
        raise SetupError(f"dtype must be one of {tuple(DTYPES)}, got {opts.dtype!r}")
    if opts.device is not None:
        try:
            torch.device(opts.device)
        except (RuntimeError, ValueError, TypeError):
            raise SetupError(
                f"device {opts.device!r} is not a torch device (e.g. cpu, cuda, cuda:1)"
            ) from None
    sizes = {}
    for name in SIZE_FIELDS:
        value = getattr(opts, name)
        if value is not None and (not is_json_int(value) or value < 1):
            raise SetupError(f"{name} must be a positive integer, got {value!r}")
        sizes[name] = getattr(spec, name) if value is None else value
    for name in ("height", "width"):
        if sizes[name] < 16 or sizes[name] % 16:
            raise SetupError(f"{name} must be a positive multiple of 16, got {sizes[name]}")
    if sizes["frames"] < 1 or sizes["frames"] % 4 != 1:
        raise SetupError(f"frames must be 4k+1 (1, 5, 9, ..., 129), got {sizes['frames']}")
    if opts.attention == "dense":
        if opts.config is not None:
            raise SetupError("an XAttention config was given for a dense run (--attention dense)")
        config = None
    else:
        config = opts.config or XAttentionConfig.from_preset(spec.preset)
        dense_steps = config.warmup_steps + config.dense_last_steps
        if dense_steps >= sizes["steps"]:
            fields = f"warmup_steps={config.warmup_steps}"
            if config.dense_last_steps:
                fields += f" + dense_last_steps={config.dense_last_steps}"
            warnings.warn(
                f"{fields} >= steps={sizes['steps']}: every step runs dense attention",
                stacklevel=2,
            )
    return spec, {**sizes, "config": config}


def load_prompts_or_fail(prompts: str | os.PathLike[str], **selection: Any) -> list[Any]:
    """``xattn_video.prompts.load_prompts`` with a bad name, file or selection as
    :class:`SetupError` (``PromptDataMissing``, a suite not available offline, passes through:
    the CLI says how to get it)."""
    from xattn_video.prompts import PromptDataMissing, load_prompts

    try:
        return load_prompts(prompts, **selection)
    except PromptDataMissing:
        raise
    except (ValueError, FileNotFoundError) as e:
        raise SetupError(str(e)) from e


def resolve_device(opts: GenerateOptions, state: Any) -> torch.device:
    device = torch.device(state.device)
    if opts.device:  # "cuda" under accelerate means this process's GPU
        asked = torch.device(opts.device)
        device = device if asked.type == device.type and asked.index is None else asked
    check_device(device, opts.device)
    return device


def check_device(device: torch.device, asked: str | None) -> None:
    """Refuse a CUDA device that is not there, or a device type the commands don't run on
    (``asked``: the ``--device`` text, for the message; None: the launcher's device)."""
    name = repr(asked) if asked is not None else f"{device} (the launcher's; no --device given)"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SetupError(f"device {name} asked for CUDA, but no CUDA GPU is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SetupError(f"device {name}: only {torch.cuda.device_count()} CUDA GPU(s) visible")
    elif device.type in ("mps", "xpu"):  # untested best effort, where torch has the device
        backend = getattr(torch.backends, "mps", None) if device.type == "mps" else None
        module = backend if backend is not None else getattr(torch, device.type, None)
        if module is None or not module.is_available():
            raise SetupError(
                f"device {name}: no {device.type} device is available here; generate runs "
                "on cuda or cpu"
            )
    elif device.type != "cpu":
        raise SetupError(f"device {name}: generate runs on cuda or cpu")


def check_backend(config: XAttentionConfig | None, device: torch.device) -> None:
    """Refuse ``backend="triton"`` on a device the kernels can't run on, and fp8 arithmetic
    without a Hopper GPU (:func:`xattn_video.apply.check_kernels_run`), before any loading."""
    if config is None:
        return
    if config.backend == "triton":
        from xattn_video.attention import resolve_backend

        try:
            resolve_backend("triton", torch.empty(0, device=device))
        except ValueError:
            raise SetupError(
                f"backend 'triton' needs a CUDA device (or TRITON_INTERPRET=1 on the CPU); "
                f"this run uses {device}: pass --backend torch or auto"
            ) from None
    from xattn_video.apply import check_kernels_run

    try:
        check_kernels_run(config)
    except ValueError as e:
        raise SetupError(str(e)) from None


def check_compile_options(opts: GenerateOptions, device: torch.device) -> None:
    """Refuse a compile mode that can't run here (see ``compiling.check_compile``)."""
    from .compiling import check_compile

    problem = check_compile(opts.compile, opts.compile_backend, device, opts.ulysses)
    if problem is not None:
        raise SetupError(problem)


def out_path(text: str) -> str:
    """argparse type: an ``--out`` that names something (``--out "$OUT"`` with ``OUT`` unset
    was ``Path("")``, the working directory, where the run or report was written)."""
    if not text.strip():
        raise ArgumentTypeError("is empty (an unset shell variable?)")
    return text


def check_out(out: Path) -> rundir.RunRecord | None:
    """The run already in ``out`` (None when new). Raises SetupError for a file or a bad
    run.json."""
    if out.exists() and not out.is_dir():
        raise SetupError(f"--out {out} is an existing file, not a run directory")
    if not (out / rundir.RUN_FILE).is_file():
        return None
    try:
        return rundir.RunRecord.read(out)
    except rundir.RunDirError as e:
        raise SetupError(
            f"can't resume: {e}. Restore it from a copy or choose another --out directory "
            "(without run.json the finished videos' settings can't be checked)"
        ) from None


def flag_name(field_name: str) -> str:
    """The CLI flag of a config field: ``warmup_steps`` -> ``--warmup-steps``."""
    return "--" + field_name.replace("_", "-")
