"""``xattn-video calibrate``: per-(layer, head) XAttention thresholds of a model from a few
prompts, written as a thresholds file for ``--thresholds-file`` / ``XAttentionConfig``.

    xattn-video calibrate --model tiny --out thresholds.json [--num-prompts 4] \\
        [--target-mass 0.95 | --target-density 0.35] [--token-order tile ...]

It runs the pipeline once per prompt with exact attention routed through XAttention's sparse
path (the config's token order applied) and measures, for every ``--measure-every``-th sparse
step, how much of the true attention mass each threshold keeps per layer and head (see
:mod:`xattn_video.calibrate`). A progress bar counts the prompts. The curves are stored, so
``--retarget FILE`` re-chooses thresholds for another target without running the model.

Input errors (prompts file, device, sizes, ``--out``) are found before the model loads, with
``generate``'s checks (``options.resolve_options``); ``--out``'s folder is created if needed.

Not supported: resuming an interrupted calibration (rerun it: a few videos), several
processes, CFG-specific thresholds, two-expert pipelines (Wan 2.2 A14B's ``transformer_2``: a
thresholds file holds one transformer's layers; exit 2, before the model loads when
``--model-path``'s ``model_index.json`` lists a ``transformer_2``, else once it is loaded).
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from xattn_video import runlock
from xattn_video.calibrate import CALIBRATION_FIXED, calibration_config
from xattn_video.config import XAttentionConfig

from .models import MODELS, get_model_spec
from .options import (
    DTYPES,
    GenerateOptions,
    check_backend,
    check_model_path,
    dtype_name_for,
    flag_name,
    load_prompts_or_fail,
    out_path,
    resolve_options,
)

_RUN_FLAG_DEFAULTS = {
    "model": None, "model_path": None, "model_id": None, "prompts": "vbench",
    "prompts_dir": None, "num_prompts": 4, "seed": 0, "measure_every": 3, "height": None,
    "width": None, "frames": None, "steps": None, "device": None, "dtype": None,
}  # fmt: skip
"""The flags of a calibration run (not of ``--retarget``) and their defaults: the parser's
(:func:`add_calibrate_args`), and what ``--retarget`` compares with to find flags it would
ignore."""


def add_calibrate_args(
    p: argparse.ArgumentParser, add_config_flags: Callable[[argparse.ArgumentParser, str], None]
) -> None:
    """Flags of ``xattn-video calibrate``, plus one flag per ``XAttentionConfig`` field added by
    ``add_config_flags`` (the CLI's, passed in so this module does not import the parser's)."""
    p.add_argument("--model", choices=list(MODELS), help="model to calibrate")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model-path", help="local pipeline folder (save_pretrained)")
    src.add_argument("--model-id", help="Hugging Face repo id (default: the model's)")
    p.add_argument("--out", required=True, type=out_path, help="thresholds JSON to write")
    p.add_argument(
        "--prompts",
        default=_RUN_FLAG_DEFAULTS["prompts"],
        help="suite or .txt/.json file (default: vbench)",
    )
    p.add_argument("--prompts-dir", help="folder with the VBench files")
    p.add_argument(
        "--num-prompts",
        type=int,
        default=_RUN_FLAG_DEFAULTS["num_prompts"],
        help="prompts, chosen as generate's --sample N (every (len//N)-th, the first N of "
        "those; default: 4)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=_RUN_FLAG_DEFAULTS["seed"],
        help="seed of every prompt (default: 0)",
    )
    tgt = p.add_mutually_exclusive_group()
    tgt.add_argument("--target-mass", type=float,
                     help="true attention mass every head keeps (default: 0.95 when neither "
                          "target is given)")  # fmt: skip
    tgt.add_argument("--target-density", type=float, help="mean density to allocate (0, 1]")
    p.add_argument("--measure-every", type=int, default=_RUN_FLAG_DEFAULTS["measure_every"],
                   help="measure every N-th sparse step (default: 3)")  # fmt: skip
    p.add_argument("--retarget", metavar="FILE", help="re-choose thresholds of FILE; no model run")
    for name in ("height", "width", "frames", "steps"):
        p.add_argument(f"--{name}", type=int, help=f"video {name} (default: the model's)")
    p.add_argument("--device", help="default: CUDA if available, else CPU")
    p.add_argument("--dtype", choices=list(DTYPES), help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_flags(
        p,
        "XAttention settings of the calibration run (unset flags take the model's preset; "
        "those a calibration fixes are ignored with a warning: "
        + ", ".join(map(flag_name, CALIBRATION_FIXED))
        + ")",
    )


def _targets(args: argparse.Namespace) -> dict[str, float | None]:
    """The target flags (mass 0.95 when neither is given), checked: a bad one was refused only
    after the whole calibration had run, and the calibration was lost."""
    from xattn_video.thresholds import check_targets

    if args.target_mass is None and args.target_density is None:
        return {"target_mass": 0.95, "target_density": None}
    check_targets(args.target_mass, args.target_density)
    return {"target_mass": args.target_mass, "target_density": args.target_density}


def cmd_calibrate(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    """Run ``xattn-video calibrate`` with the config fields set on the command line
    (``overrides``); raises ``ValueError`` for bad arguments (the CLI reports it)."""
    from xattn_video import thresholds as th

    out = _check_out(args.out)
    targets = _targets(args)
    if args.retarget:
        extra = _retarget_extras(args, overrides)
        if extra:  # before, ignored without a word: a "tile-order" file came out raster
            raise ValueError(
                f"--retarget re-chooses the thresholds of {args.retarget} from its stored curves "
                "without running the model: it keeps that file's settings and takes only --out "
                f"and --target-mass / --target-density, not {', '.join(extra)}"
            )
        data = th.retarget(th.load_thresholds(args.retarget), **targets)
        out.parent.mkdir(parents=True, exist_ok=True)
        th.save_thresholds(out, data)
        print(f"re-targeted {args.retarget} -> {args.out}: {th.summary(data)}")
        return 0
    if args.model is None:
        raise ValueError("--model is required (unless --retarget)")
    fixed = [flag_name(f) for f in CALIBRATION_FIXED if f in overrides]
    if fixed:
        warnings.warn(
            f"calibrate ignores {', '.join(fixed)}: a calibration keeps every block on every "
            "layer and step and measures the bf16 estimate (xattn_video.calibrate."
            "CALIBRATION_FIXED)",
            stacklevel=2,
        )
    for flag in ("measure_every", "num_prompts"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    data = _calibrate(args, targets, *_check_inputs(args, overrides))
    out.parent.mkdir(parents=True, exist_ok=True)
    th.save_thresholds(out, data)
    print(f"wrote {args.out}: {th.summary(data)} ({data['seconds']} s)")
    return 0


def _retarget_extras(args: argparse.Namespace, overrides: dict[str, Any]) -> list[str]:
    """The flags given with ``--retarget`` that it does not use: run flags away from their
    defaults and every XAttention setting (``overrides``)."""
    run = [k for k, default in _RUN_FLAG_DEFAULTS.items() if getattr(args, k) != default]
    return [f"--{k.replace('_', '-')}" for k in run] + [flag_name(f) for f in overrides]


def _check_out(path: str) -> Path:
    """``--out``: a file in a folder that exists or can be created (made before saving)."""
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; give the thresholds file to write")
    parent = next(p for p in (*out.parents, Path(".")) if p.exists())
    if not parent.is_dir():
        raise ValueError(f"--out {out}: {parent} is a file, not a directory")
    if not runlock.writable_dir(parent):
        raise ValueError(f"--out {out}: {parent} is not writable")
    return out


def _check_inputs(args: argparse.Namespace, overrides: dict[str, Any]) -> tuple[Any, ...]:
    """Everything that can fail before the model loads, with ``generate``'s checks: returns
    the config, video size, measured steps and prompts. Raises ``ValueError``."""
    opts = GenerateOptions(model=args.model, prompts=args.prompts, out=args.out,
                           model_path=args.model_path, model_id=args.model_id, height=args.height,
                           width=args.width, frames=args.frames, steps=args.steps,
                           seed=args.seed, device=args.device, dtype=args.dtype)  # fmt: skip
    spec, r = resolve_options(opts)
    check_model_path(args.model_path)
    _check_one_transformer(args.model_path)
    # the flags a calibration ignores (warned above) are left out, not checked: generate's
    # --thresholds-file, an old calibration being redone, was loaded and refused the run
    kept = {k: v for k, v in overrides.items() if k not in CALIBRATION_FIXED}
    cfg = XAttentionConfig.from_preset(spec.preset, **kept)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")  # as _calibrate
    check_backend(calibration_config(cfg), torch.device(device))
    # the steps that run sparse: after the warm-up, before the last dense_last_steps
    steps = list(range(cfg.warmup_steps, r["steps"] - cfg.dense_last_steps, args.measure_every))
    if not steps:
        raise ValueError(
            f"no denoising step to measure: warmup_steps={cfg.warmup_steps} and "
            f"dense_last_steps={cfg.dense_last_steps} cover all {r['steps']} steps (pass more "
            "--steps or fewer --warmup-steps / --dense-last-steps)"
        )
    prompts = load_prompts_or_fail(args.prompts, data_dir=args.prompts_dir, sample=args.num_prompts)
    size = {"height": r["height"], "width": r["width"], "num_frames": r["frames"],
            "num_inference_steps": r["steps"]}  # fmt: skip
    return cfg, size, steps, prompts


def _check_one_transformer(model_path: str | None) -> None:
    """``ValueError`` if ``model_path``'s ``model_index.json`` lists a ``transformer_2`` (a
    two-expert Wan 2.2 pipeline, which :func:`~xattn_video.calibrate.calibrate_pipeline`
    refuses): said before the model loads."""
    index = Path(model_path) / "model_index.json" if model_path else None
    if index is None or not index.is_file():
        return
    try:
        second = json.loads(index.read_text()).get("transformer_2")
    except (OSError, ValueError, AttributeError):
        return  # load_pipeline reports an unreadable folder
    if isinstance(second, list) and any(x is not None for x in second):
        raise ValueError(
            f"--model-path {model_path} is a two-expert pipeline (transformer_2, Wan 2.2 A14B): "
            "per-expert thresholds are not supported; generate with the uniform --threshold "
            "instead (no --thresholds-file)"
        )


def _calibrate(
    args: argparse.Namespace,
    targets: dict[str, float | None],
    cfg: XAttentionConfig,
    size: dict,
    steps: list[int],
    prompts: list,
) -> dict[str, Any]:
    from xattn_video.calibrate import calibrate_pipeline

    from .models import load_pipeline

    spec = get_model_spec(args.model)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # as generate (load_pipeline's own default is bf16: CPU thresholds were measured in bf16
    # for the fp32 runs that use them)
    dtype = DTYPES[dtype_name_for(args.dtype, device)]
    pipe = load_pipeline(args.model, model_path=args.model_path, model_id=args.model_id,
                         dtype=dtype, device=device, progress=not args.no_progress)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    calls = [
        dict(prompt=p.text, generator=torch.Generator(device=device).manual_seed(args.seed),
             output_type="np", **size, **spec.call_kwargs)
        for p in prompts
    ]  # fmt: skip
    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(calls), desc="calibrate", unit="prompt")
    try:
        data = calibrate_pipeline(
            pipe, cfg, calls, model=args.model, steps=steps, progress=(
                (lambda done, total: bar.update(1)) if bar is not None else None),
            meta={"prompts": [p.text for p in prompts], "seeds": [args.seed],
                  "size": size, "device": str(device),
                  "dtype": str(next(pipe.transformer.parameters()).dtype)},
            **targets,
        )  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    return data
