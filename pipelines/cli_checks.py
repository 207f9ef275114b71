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
    """LPIPS weights that ``compare`` would fail on, found before any work (the compare step
    failed on them after both runs): a configured ``--lpips-weights`` (or
    ``$XATTN_VIDEO_LPIPS_WEIGHTS``) that holds no weights, or weights, configured or found in a
    cache, that are not AlexNet's (hash, digest, a damaged ``.safetensors``; a ``.tar.gz``
    sdist by its sha256, compare converts it): :class:`CLIError`. Nothing found: nothing
    checked (compare fetches the default, or skips LPIPS with a note)."""
    from xattn_video.metrics.lpips_weights import (
        SDIST_SHA256,
        LPIPSWeightsMissing,
        file_sha256,
        load_weights,
        resolve_weights,
    )

    try:
        found = resolve_weights(weights, fetch=False)
    except LPIPSWeightsMissing as e:
        if e.configured:
            raise CLIError(str(e)) from None
        return
    if found.path.name.endswith(".tar.gz"):
        digest = file_sha256(found.path)
        if digest != SDIST_SHA256:
            raise CLIError(
                f"LPIPS weights from {found.source}: {found.path} has sha256 {digest}, "
                f"expected {SDIST_SHA256}"
            )
        return
    try:
        load_weights(found, "alex")
    except ValueError as e:
        raise CLIError(f"LPIPS weights from {found.source}: {e}") from None
