"""The ``xattn-video`` command line: ``generate``, ``compare``, ``demo`` and ``calibrate``.

Usage::

    xattn-video generate --model hunyuanvideo --prompts vbench-augmented --sample 20 \\
        --attention dense --out runs/hv-dense
    xattn-video generate --model hunyuanvideo --prompts vbench-augmented --sample 20 \\
        --attention xattn --threshold 0.9 --warmup-steps 5 --out runs/hv-xattn
    xattn-video compare runs/hv-dense runs/hv-xattn --out runs/hv-report
    xattn-video generate ... --compile default   # torch.compile (dense runs too); see compiling
    xattn-video demo                     # trained tiny model on the CPU, 1-2 minutes
    accelerate launch -m xattn_video.pipelines.cli generate ...   # prompts split over GPUs

``generate-video ...`` is ``xattn-video generate ...``. Every ``XAttentionConfig`` field is a
``generate`` flag (``warmup_steps`` -> ``--warmup-steps``; booleans get ``--no-...``; tuples
are comma separated: ``--dense-layers 0,1,2``, ``--tile-size 2,8,8``); unset flags take the
model's preset. Exit status: 0 done, 1 some videos had NaN / inf values (not written; a rerun
retries them), 2 bad input, 130 interrupted (rerun generate or demo to resume).

Warnings and log messages print as one ``xattn-video: warning: ...`` line; every user error
exits 2 with one ``xattn-video: error: ...`` line before any work. Argument parsing lives in
``cli_args``.

Not supported: XAttention flags with ``--attention dense`` (an error, not ignored), several
models or attention modes in one ``generate`` call (run it twice, as ``demo`` does).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from xattn_video import rundir
from xattn_video.atomic import WriteFailed

from .cli_args import (
    DEMO_SIZES,
    METRICS,
    CLIError,
    add_config_flags,
    build_generate_parser,
    build_parser,
    config_from_args,
    config_overrides,
    flag_name,
)
from .cli_checks import check_cli_device, check_lpips_weights, check_out_dir, parse_metrics
from .models import get_model_spec

__all__ = [
    "CLIError",
    "add_config_flags",
    "build_generate_parser",
    "build_parser",
    "config_from_args",
    "config_overrides",
    "flag_name",
    "generate_main",
    "main",
]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


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
        ulysses=args.ulysses,
        compile=args.compile,
    )


def _run_generate(opts: Any) -> int:
    from .generate import generate

    res = generate(opts)
    who = f"process {res.process_index}/{res.num_processes}: " if res.num_processes > 1 else ""
    redone = f" ({len(res.redone)} redone, see the warnings)" if res.redone else ""
    video = f" ({len(res.reencoded)} video.mp4 not as written)" if res.reencoded else ""
    ran = f"generated {len(res.generated)}"
    if res.writer is not None:  # a --ulysses peer: the group's first process wrote the files
        ran = f"ran {len(res.generated)} for process {res.writer} to write"
    print(
        f"{who}{ran}{redone}, skipped {len(res.skipped)} finished{video}, "
        f"of {res.assigned} prompts ({res.compile}) -> {res.out}"
    )
    if res.interrupted:
        print(
            f"{who}interrupted: the unfinished prompt is not marked done; rerun the same "
            "command to resume.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if res.failed:
        print(
            f"{who}error: {len(res.failed)} videos had NaN / inf values and were not written "
            f"(prompts {', '.join(f'{i:05d}' for i in sorted(res.failed))}); rerun to retry them.",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """``generate``: one run directory."""
    return _run_generate(_options_from_args(args))


def _compare(
    dense: str | os.PathLike[str],
    sparse: str | os.PathLike[str],
    out: str | os.PathLike[str],
    metrics: tuple[str, ...],
    lpips_required: bool,
    lpips_weights: str | None,
    device: str | None,
    progress: bool = True,
    allow_mismatch: bool = False,
) -> dict:
    from xattn_video.metrics import RunMismatch, compare_runs

    for d in (dense, sparse):
        if not Path(d).exists():
            raise CLIError(f"{d} does not exist; make a run directory with generate")
        if not Path(d).is_dir():
            raise CLIError(f"{d} is a file, not a run directory; make one with generate")
        if not (Path(d) / rundir.RUN_FILE).is_file():
            raise CLIError(f"{d} is not a run directory (no run.json); make one with generate")
    if Path(dense).resolve() == Path(sparse).resolve():
        raise CLIError(f"{dense} is given twice; compare a dense run with another run")
    check_out_dir(out)
    check_cli_device(device)
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
            allow_mismatch=allow_mismatch,
        )
    except RunMismatch as e:
        remedy = (
            ", or pass --allow-mismatch to compare anyway (with a warning)"
            if e.allowable
            else " (their videos differ in size, frame count, seed or device type, so not even "
            "--allow-mismatch can pair them frame by frame)"
        )
        raise CLIError(
            f"{dense} and {sparse} were generated with different settings: {e.describe()}; "
            "their quality and speed-up would not compare like with like. Generate them with "
            f"the same settings{remedy}"
        ) from None
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(f"compare failed: {e}") from e


def _mean(agg: dict[str, Any], key: str) -> float | None:
    value = agg.get(key)
    return value.get("mean") if isinstance(value, dict) else None


def _print_report(out: str | os.PathLike[str], report: Any) -> None:
    """One summary line (means over videos; the speed-up: total dense time / total sparse
    time) and where the report files are."""
    from xattn_video.metrics.report_tables import psnr_capped_frames  # needs torch: not at import

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
            capped, total, cap = psnr_capped_frames(report) if key == "psnr" else (0, 0, 0)
            if capped:
                parts[-1] += f" ({capped} of {total} frames at the {cap:g} dB cap)"
    if report.get("lpips_skipped"):
        parts.append("LPIPS skipped (see the report)")
    for key, label in (("sparse_density", "sparse density"), ("effective_density", "effective")):
        value = _mean(agg, key)
        if value is not None:
            parts.append(f"{label} {value:.3f}")
    speed = agg.get("speedup", {}).get("denoise")
    if isinstance(speed, dict) and speed.get("ratio_of_sums"):
        modes = report.get("modes") or {}
        dense, sparse = modes.get("dense", rundir.EAGER), modes.get("sparse", rundir.EAGER)
        both = dense if dense == sparse else f"{dense} vs {sparse}: not comparable"
        ratio = speed["ratio_of_sums"]
        parts.append(f"denoise speedup {ratio:.2f}x (ratio of total times, {both})")
    if report.get("mismatched_settings"):
        parts.append("settings differ: " + ", ".join(report["mismatched_settings"]))
    print("Compared " + ", ".join(parts))
    print(f"Report: {Path(out) / 'report.html'} (also report.md, report.json)")


def cmd_compare(args: argparse.Namespace) -> int:
    """``compare``: metrics of a sparse run against its dense reference."""
    metrics, required = parse_metrics(args.metrics)
    report = _compare(
        args.dense_dir,
        args.sparse_dir,
        args.out,
        metrics,
        required,
        args.lpips_weights,
        args.device,
        progress=not args.no_progress,
        allow_mismatch=args.allow_mismatch,
    )
    _print_report(args.out, report)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``demo``: tiny model, a few VBench prompts, dense and XAttention, then the report."""
    from .generate import GenerateOptions

    out = Path(args.out)
    check_out_dir(out)
    check_cli_device(args.device)
    check_lpips_weights(args.lpips_weights)
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
        compile=args.compile,
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
        args.lpips_weights,
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


def cmd_calibrate(args: argparse.Namespace) -> int:
    """``calibrate``: per-(layer, head) thresholds; input errors before the model loads."""
    from .calibrate_cli import cmd_calibrate as run

    check_cli_device(args.device)
    try:
        return run(args, config_overrides(args))
    except ValueError as e:
        raise CLIError(str(e)) from None


_COMMANDS = {
    "generate": cmd_generate,
    "compare": cmd_compare,
    "demo": cmd_demo,
    "calibrate": cmd_calibrate,
}


def _installed_package(filename: str) -> str | None:
    """The top-level package an installed file belongs to (the folder after site-packages),
    or None for a file outside site-packages (this repository's own, in an editable install)."""
    parts = Path(filename).parts
    for i, part in enumerate(parts[:-1]):
        if part in ("site-packages", "dist-packages"):
            return parts[i + 1].removesuffix(".py")
    return None


@contextlib.contextmanager
def _one_line_warnings(prog: str) -> Iterator[None]:
    """Python warnings and ``xattn_video`` log records as ``prog: warning: message`` lines on
    stderr (no source lines, no logger names) while a command runs; a warning raised inside
    another installed package says which (``prog: warning from huggingface_hub: ...``), so
    that it is not read as ours."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        origin = _installed_package(str(filename))
        source = f" from {origin}" if origin not in (None, "xattn_video") else ""
        print(f"{prog}: warning{source}: {message}", file=file or sys.stderr)

    class OneLine(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return f"{prog}: {record.levelname.lower()}: {record.getMessage()}"

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLine())
    log = logging.getLogger("xattn_video")
    with warnings.catch_warnings():
        warnings.showwarning = show
        log.addHandler(handler)
        try:
            yield
        finally:
            log.removeHandler(handler)


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from xattn_video.prompts import ENV_PROMPTS_DIR, PromptDataMissing

    from .generate import SetupError

    command = getattr(args, "command", "generate")
    resumes = command in ("generate", "demo")  # a rerun of the same command resumes
    try:
        with _one_line_warnings(parser.prog):
            return _COMMANDS[command](args)
    except PromptDataMissing as e:
        parser.exit(
            EXIT_USAGE,
            f"{parser.prog}: error: {e}\nSet {ENV_PROMPTS_DIR} (or --prompts-dir) to a folder "
            "holding the VBench prompt files (or a clone of VBench), or allow the one-time "
            "download.\n",
        )
    except (CLIError, SetupError) as e:
        parser.exit(EXIT_USAGE, f"{parser.prog}: error: {e}\n")
    except WriteFailed as e:  # a full disk: one line, not a traceback
        then = "rerun the same command to resume (finished videos are kept)" if resumes else "rerun"
        parser.exit(
            EXIT_FAILED,
            f"{parser.prog}: error: {e.strerror or e}. Free space (or fix that) and {then}.\n",
        )
    except KeyboardInterrupt:
        print("interrupted" + ("; rerun the same command to resume." if resumes else "."),
              file=sys.stderr)  # fmt: skip
        return EXIT_INTERRUPTED
    return 0  # unreachable: parser.exit raises


def _parse_command(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace:
    """``parser.parse_args``, except that a flag the chosen subcommand does not know is reported
    with that subcommand's usage (argparse reports it with the top-level one, which lists no
    flags)."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``xattn-video``."""
    parser = build_parser()
    return _dispatch(parser, _parse_command(parser, argv))


def generate_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``generate-video`` (= ``xattn-video generate``)."""
    parser = build_generate_parser()
    args = parser.parse_args(argv)
    args.command = "generate"
    return _dispatch(parser, args)


if __name__ == "__main__":
    sys.exit(main())
