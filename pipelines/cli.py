"""The ``xattn-video`` command line: ``generate``, ``compare`` and ``demo``.

Usage::

    xattn-video generate --model hunyuanvideo --prompts vbench-augmented --sample 20 \\
        --attention dense --out runs/hv-dense
    xattn-video generate --model hunyuanvideo --prompts vbench-augmented --sample 20 \\
        --attention xattn --threshold 0.9 --warmup-steps 5 --out runs/hv-xattn
    xattn-video compare runs/hv-dense runs/hv-xattn --out runs/hv-report
    xattn-video demo                     # trained tiny model on the CPU, 1-2 minutes
    accelerate launch -m xattn_video.pipelines.cli generate ...   # prompts split over GPUs

``generate-video ...`` is ``xattn-video generate ...``. Every ``XAttentionConfig`` field is a
``generate`` flag (``warmup_steps`` -> ``--warmup-steps``; booleans get ``--no-...``; tuples
are comma separated: ``--dense-layers 0,1,2``, ``--tile-size 2,8,8``); unset flags take the
model's preset. Exit status: 0 done, 2 bad input, 130 interrupted (rerun to resume).

Not supported: XAttention flags with ``--attention dense`` (an error, not ignored), several
models or attention modes in one ``generate`` call (run it twice, as ``demo`` does).
"""

from __future__ import annotations

import argparse
import os
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xattn_video.config import XAttentionConfig, config_fields, field_docs

from .models import MODELS, get_model_spec

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
METRICS = ("psnr", "ssim", "lpips")
DEMO_PROMPTS = 4
DEMO_SIZES = {"tiny-hunyuan": 64}
"""Demo video height = width where it is not the model's default: tiny-hunyuan's 32x32 gives
only 3 blocks of 16 video tokens, 64x64 gives 12."""


class CLIError(Exception):
    """Bad input found after parsing; printed as ``xattn-video: error: ...`` (exit 2)."""


# ---------------------------------------------------------------------------------------------
# XAttentionConfig <-> flags (1:1, generated from the dataclass)
# ---------------------------------------------------------------------------------------------


def flag_name(field_name: str) -> str:
    """``warmup_steps`` -> ``--warmup-steps``."""
    return "--" + field_name.replace("_", "-")


def _int_tuple(text: str) -> tuple[int, ...]:
    text = text.strip()
    if not text:
        return ()
    try:
        return tuple(int(x) for x in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _preset_defaults(name: str) -> str:
    values = {}
    for preset in sorted({spec.preset for spec in MODELS.values()}):
        value = getattr(XAttentionConfig.from_preset(preset), name)
        if isinstance(value, tuple):
            value = ",".join(map(str, value)) or '""'
        values[preset] = value
    if len(set(map(str, values.values()))) == 1:
        return f"default: {next(iter(values.values()))}"
    return "default: " + ", ".join(f"{k} {v}" for k, v in values.items())


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ``XAttentionConfig`` field; values land in ``args.cfg_<field>`` (None: unset).

    Raises ``TypeError`` for a field type the CLI does not know how to parse, so a new field
    can't silently miss its flag.
    """
    group = parser.add_argument_group(
        "XAttention settings (--attention xattn only; unset flags take the model's preset)"
    )
    hints = typing.get_type_hints(XAttentionConfig)
    docs = field_docs()
    for f in config_fields():
        hint = hints[f.name]
        origin = typing.get_origin(hint)
        doc = docs.get(f.name, "").replace("%", "%%")
        kw: dict[str, Any] = {
            "dest": f"cfg_{f.name}",
            "default": None,
            "help": f"{doc} ({_preset_defaults(f.name)})",
        }
        if hint is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif origin is typing.Literal:
            kw["choices"] = typing.get_args(hint)
        elif hint in (int, float):
            kw["type"] = hint
            kw["metavar"] = hint.__name__.upper()
        elif origin is tuple and all(a in (int, Ellipsis) for a in typing.get_args(hint)):
            kw["type"] = _int_tuple
            kw["metavar"] = "I,J,..."
        else:
            raise TypeError(f"no CLI flag type for XAttentionConfig.{f.name}: {hint!r}")
        group.add_argument(flag_name(f.name), **kw)


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The XAttention fields set on the command line."""
    out = {}
    for f in config_fields():
        value = getattr(args, f"cfg_{f.name}", None)
        if value is not None:
            out[f.name] = value
    return out


def config_from_args(args: argparse.Namespace) -> XAttentionConfig | None:
    """The run's ``XAttentionConfig`` (model preset + flags), None for dense runs.

    Raises:
        CLIError: XAttention flags with ``--attention dense``, unknown model, invalid values.
    """
    overrides = config_overrides(args)
    if args.attention == "dense":
        if overrides:
            flags = ", ".join(flag_name(k) for k in overrides)
            verb = "applies" if len(overrides) == 1 else "apply"
            raise CLIError(f"{flags} {verb} only to --attention xattn, not to dense runs")
        return None
    try:
        return XAttentionConfig.from_preset(get_model_spec(args.model).preset, **overrides)
    except ValueError as e:
        raise CLIError(f"invalid XAttention setting: {e}") from None


# ---------------------------------------------------------------------------------------------
# Parsers
# ---------------------------------------------------------------------------------------------


def _add_generate_args(p: argparse.ArgumentParser) -> None:
    models = ", ".join(
        f"{s.name} {s.height}x{s.width}x{s.frames}, {s.steps} steps" for s in MODELS.values()
    )
    p.add_argument(
        "--model", required=True, choices=list(MODELS), help=f"model (defaults: {models})"
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model-path", help="local diffusers pipeline folder (save_pretrained)")
    src.add_argument("--model-id", help="Hugging Face repo id (default: the model's)")
    p.add_argument(
        "--prompts",
        required=True,
        help="suite (vbench, vbench-augmented, vbench-hunyuan) or a .txt/.json file",
    )
    p.add_argument(
        "--prompts-dir",
        help="folder with the VBench files (else $XATTN_VIDEO_PROMPTS_DIR, cache, download)",
    )
    p.add_argument("--limit", type=int, help="keep the first N prompts (after --sample)")
    p.add_argument("--sample", type=int, help="keep N prompts spread evenly over the suite")
    p.add_argument("--dimension", help="keep prompts of this VBench dimension")
    p.add_argument("--attention", required=True, choices=["dense", "xattn"])
    add_config_flags(p)
    g = p.add_argument_group("video")
    g.add_argument("--height", type=int, help="pixels, multiple of 16 (default: model's)")
    g.add_argument("--width", type=int, help="pixels, multiple of 16 (default: model's)")
    g.add_argument("--frames", type=int, help="4k+1 frames (default: model's)")
    g.add_argument("--steps", type=int, help="denoising steps (default: model's)")
    g.add_argument("--seed", type=int, default=0, help="seed of every prompt (default: 0)")
    g.add_argument("--fps", type=int, help="frames per second of video.mp4 (default: model's)")
    p.add_argument("--out", required=True, help="run directory (resumed if it exists)")
    p.add_argument("--device", help="e.g. cuda, cuda:1, cpu (default: accelerate's device)")
    p.add_argument(
        "--dtype",
        choices=["bfloat16", "float16", "float32"],
        help="transformer dtype (default: bfloat16 on CUDA, float32 on CPU)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dense_dir", help="run directory of the dense run (the reference)")
    p.add_argument("sparse_dir", help="run directory of the run to evaluate")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument(
        "--metrics",
        help="comma-separated subset of psnr,ssim,lpips (default: all; LPIPS is skipped with "
        "a note when its weights are missing, but required when listed here)",
    )
    p.add_argument("--lpips-weights", help="AlexNet backbone file for LPIPS (offline use)")
    p.add_argument("--device", help="device for the metrics (default: CUDA if available)")


def _add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="demo folder (default: runs/demo)")
    p.add_argument(
        "--model",
        default="tiny",
        choices=[n for n, s in MODELS.items() if s.is_tiny],
        help="tiny model (default: tiny, the trained one; the others have random weights)",
    )
    p.add_argument("--prompts", default="vbench", help="prompt suite or file (default: vbench)")
    p.add_argument("--prompts-dir", help="folder with the VBench files")
    p.add_argument("--num-prompts", type=int, default=DEMO_PROMPTS, help="prompts (default: 4)")
    sizes = ", ".join(f"{size} for {name}" for name, size in DEMO_SIZES.items())
    for name in ("height", "width"):
        p.add_argument(f"--{name}", type=int, help=f"video {name} (default: the model's; {sizes})")
    for name in ("frames", "steps"):
        p.add_argument(f"--{name}", type=int, help=f"video {name} (default: the model's)")
    p.add_argument("--device", help="default: CUDA if available, else CPU")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The ``xattn-video`` parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="xattn-video",
        description="XAttention for video DiTs: generate dense/sparse runs, compare, demo.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_generate_args(
        sub.add_parser("generate", help="generate one video per prompt into a run directory")
    )
    _add_compare_args(sub.add_parser("compare", help="PSNR/SSIM/LPIPS of two run directories"))
    _add_demo_args(sub.add_parser("demo", help="tiny model, dense vs XAttention, report"))
    return parser


def build_generate_parser() -> argparse.ArgumentParser:
    """The ``generate-video`` parser (the ``generate`` subcommand on its own)."""
    parser = argparse.ArgumentParser(
        prog="generate-video", description="Generate one video per prompt (dense or XAttention)."
    )
    _add_generate_args(parser)
    return parser


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


def _options_from_args(args: argparse.Namespace) -> Any:
    from .generate import GenerateOptions

    return GenerateOptions(
        model=args.model,
        prompts=args.prompts,
        out=args.out,
        attention=args.attention,
        config=config_from_args(args),
        model_path=args.model_path,
        model_id=args.model_id,
        prompts_dir=args.prompts_dir,
        limit=args.limit,
        sample=args.sample,
        dimension=args.dimension,
        height=args.height,
        width=args.width,
        frames=args.frames,
        steps=args.steps,
        seed=args.seed,
        fps=args.fps,
        device=args.device,
        dtype=args.dtype,
        progress=not args.no_progress,
    )


def _run_generate(opts: Any) -> int:
    from .generate import generate

    res = generate(opts)
    who = f"process {res.process_index}/{res.num_processes}: " if res.num_processes > 1 else ""
    print(
        f"{who}generated {len(res.generated)}, skipped {len(res.skipped)} finished, "
        f"of {res.assigned} prompts -> {res.out}"
    )
    if res.interrupted:
        print(
            f"{who}interrupted: the unfinished prompt is not marked done; rerun the same "
            "command to resume.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """``generate``: one run directory."""
    return _run_generate(_options_from_args(args))


def _parse_metrics(text: str | None) -> tuple[tuple[str, ...], bool]:
    if text is None:
        return METRICS, False
    names = tuple(m.strip().lower() for m in text.split(",") if m.strip())
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise CLIError(f"--metrics takes a comma-separated subset of {','.join(METRICS)}")
    return names, "lpips" in names


def _compare(
    dense: str | os.PathLike[str],
    sparse: str | os.PathLike[str],
    out: str | os.PathLike[str],
    metrics: tuple[str, ...],
    lpips_required: bool,
    lpips_weights: str | None,
    device: str | None,
    progress: bool = True,
) -> dict:
    from xattn_video.metrics import compare_runs

    for d in (dense, sparse):
        if not (Path(d) / "run.json").is_file():
            raise CLIError(f"{d} is not a run directory (no run.json); make one with generate")
    try:
        return compare_runs(
            dense,
            sparse,
            out,
            metrics=metrics,
            lpips_weights=lpips_weights,
            device=device,
            lpips_required=lpips_required,
            progress=progress,
        )
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(f"compare failed: {e}") from e


def _mean(agg: dict[str, Any], key: str) -> float | None:
    value = agg.get(key)
    return value.get("mean") if isinstance(value, dict) else None


def _print_report(out: str | os.PathLike[str], report: Any) -> None:
    """One summary line (means over videos) and where the report files are."""
    agg = report.get("aggregate", {}) if isinstance(report, dict) else {}
    parts = [f"{agg.get('num_videos', '?')} videos"]
    for key, fmt in (
        ("psnr", "PSNR {:.2f} dB"),
        ("ssim", "SSIM {:.4f}"),
        ("lpips", "LPIPS {:.4f}"),
    ):
        value = _mean(agg, key)
        if value is not None:
            parts.append(fmt.format(value))
    if report.get("lpips_skipped"):
        parts.append("LPIPS skipped (see the report)")
    for key, label in (("sparse_density", "sparse density"), ("effective_density", "effective")):
        value = _mean(agg, key)
        if value is not None:
            parts.append(f"{label} {value:.3f}")
    speed = agg.get("speedup", {}).get("denoise")
    if isinstance(speed, dict) and speed.get("ratio_of_sums"):
        parts.append(f"denoise speedup {speed['ratio_of_sums']:.2f}x")
    print("Compared " + ", ".join(parts))
    print(f"Report: {Path(out) / 'report.html'} (also report.md, report.json)")


def cmd_compare(args: argparse.Namespace) -> int:
    """``compare``: metrics of a sparse run against its dense reference."""
    metrics, required = _parse_metrics(args.metrics)
    report = _compare(
        args.dense_dir,
        args.sparse_dir,
        args.out,
        metrics,
        required,
        args.lpips_weights,
        args.device,
    )
    _print_report(args.out, report)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``demo``: tiny model, a few VBench prompts, dense and XAttention, then the report."""
    from .generate import GenerateOptions

    out = Path(args.out)
    spec = get_model_spec(args.model)
    common = dict(
        model=args.model,
        prompts=args.prompts,
        prompts_dir=args.prompts_dir,
        sample=args.num_prompts,
        height=args.height or DEMO_SIZES.get(spec.name),
        width=args.width or DEMO_SIZES.get(spec.name),
        frames=args.frames,
        steps=args.steps,
        device=args.device,
        progress=not args.no_progress,
    )
    for attention in ("dense", "xattn"):
        print(f"[demo] {attention} run -> {out / attention}")
        rc = _run_generate(GenerateOptions(attention=attention, out=out / attention, **common))
        if rc:
            return rc
    print(f"[demo] comparing -> {out / 'report'}")
    report = _compare(
        out / "dense",
        out / "xattn",
        out / "report",
        METRICS,
        False,
        None,
        args.device,
        progress=not args.no_progress,
    )
    _print_report(out / "report", report)
    if spec.random_weights:
        print(
            f"[demo] {spec.name} has random weights: these numbers show the whole job working "
            "(generate, XAttention, compare, report), not XAttention's quality or speed on a "
            "real model."
        )
    elif spec.is_tiny:
        print(
            f"[demo] {spec.name} is a small trained video DiT (synthetic camera-motion clips over "
            "scikit-image photos; the prompt text is only keyword/hash-mapped to its 3 "
            "condition tokens). The quality numbers are real for this model, not for "
            "HunyuanVideo or Wan. "
            + (
                "The speed numbers are not meaningful on CPU: the sparse path there is the "
                "PyTorch reference, not the Triton kernel."
                if _demo_on_cpu(args.device)
                else "At this size the speed numbers say little about large models."
            )
        )
    return 0


def _demo_on_cpu(device: str | None) -> bool:
    import torch

    return torch.device(device).type == "cpu" if device else not torch.cuda.is_available()


_COMMANDS = {"generate": cmd_generate, "compare": cmd_compare, "demo": cmd_demo}


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from xattn_video.prompts import ENV_PROMPTS_DIR, PromptDataMissing

    from .generate import SetupError

    try:
        return _COMMANDS[getattr(args, "command", "generate")](args)
    except PromptDataMissing as e:
        parser.exit(
            EXIT_USAGE,
            f"{parser.prog}: error: {e}\nSet {ENV_PROMPTS_DIR} (or --prompts-dir) to a folder "
            "holding the VBench prompt files, or allow the one-time download.\n",
        )
    except (CLIError, SetupError) as e:
        parser.exit(EXIT_USAGE, f"{parser.prog}: error: {e}\n")
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume.", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0  # unreachable: parser.exit raises


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``xattn-video``."""
    parser = build_parser()
    return _dispatch(parser, parser.parse_args(argv))


def generate_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``generate-video`` (= ``xattn-video generate``)."""
    parser = build_generate_parser()
    args = parser.parse_args(argv)
    args.command = "generate"
    return _dispatch(parser, args)


if __name__ == "__main__":
    sys.exit(main())
