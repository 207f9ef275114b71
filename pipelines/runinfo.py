"""Run-directory bookkeeping: environment facts (GPU, versions, git SHA), atomic files, run.json.

A run directory (written by ``xattn-video generate``, read by ``xattn_video.metrics.compare_runs``)::

    RUN_DIR/
      run.json        settings of the run + environment (written by the main process)
      00012/          one folder per prompt, named after the 5-digit prompt index
        video.mp4
        frames.npy    lossless uint8 (T, H, W, 3)
        meta.json     written last and atomically: its presence means the prompt is finished

Not supported: several runs (different settings) in one directory: :func:`check_compatible`
refuses to resume a directory whose run.json differs in a setting that changes the videos.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

RUN_FILE = "run.json"
META_FILE = "meta.json"
VIDEO_FILE = "video.mp4"
FRAMES_FILE = "frames.npy"
TMP_MARK = ".partial"
"""Every temporary file in a run directory has this in its name (removed on resume)."""

RESUME_KEYS = (
    "model",
    "model_source",
    "attention",
    "config",
    "height",
    "width",
    "frames",
    "steps",
    "seed",
    "dtype",
    "prompts",
)
"""run.json keys that must match to resume a run directory (they change the videos)."""

_PACKAGES = ("torch", "triton", "diffusers", "transformers", "accelerate", "xattn-video")


def prompt_dir_name(index: int) -> str:
    """The folder name of prompt ``index`` (``12`` -> ``"00012"``)."""
    return f"{index:05d}"


def versions() -> dict[str, str | None]:
    """Versions of Python, CUDA and the packages that decide the numbers (None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["cuda"] = torch.version.cuda
    return out


def gpu_name(device: str | torch.device | None = None) -> str | None:
    """Name of the CUDA device ``device`` (default: the current one); None on CPU."""
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type != "cuda":
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(dev)


def git_sha(path: str | os.PathLike[str] | None = None) -> str | None:
    """Commit SHA of the checkout holding ``path`` (default: this package), with ``-dirty`` when
    tracked files are modified; None outside a git checkout or without git."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    suffix = "-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else ""
    return sha.stdout.strip() + suffix


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); on success it replaces ``path``.

    On any exception (including ``KeyboardInterrupt``) the temporary file is removed and
    ``path`` is left as it was, so a reader never sees a half-written file.
    """
    path = Path(path)
    tmp = path.with_name(
        f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_MARK}{path.suffix}"
    )
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (temporary file + ``os.replace``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def remove_partial_files(folder: str | os.PathLike[str]) -> int:
    """Delete temporary files left in ``folder`` by an interrupted run; returns how many."""
    n = 0
    for p in Path(folder).glob(f"*{TMP_MARK}*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n


def is_finished(prompt_folder: str | os.PathLike[str]) -> bool:
    """True when the prompt folder holds its ``meta.json`` (written last)."""
    return (Path(prompt_folder) / META_FILE).is_file()


def check_compatible(out_dir: str | os.PathLike[str], run: dict[str, Any]) -> None:
    """Raise ``ValueError`` if ``out_dir/run.json`` exists with different :data:`RESUME_KEYS`."""
    path = Path(out_dir) / RUN_FILE
    if not path.is_file():
        return
    old = read_json(path)
    diffs = [k for k in RESUME_KEYS if old.get(k) != run.get(k)]
    if diffs:
        detail = "; ".join(f"{k}: {old.get(k)!r} -> {run.get(k)!r}" for k in diffs)
        raise ValueError(
            f"{path} belongs to a run with other settings ({detail}). "
            "Resume with the same settings or choose another --out directory."
        )


def command_line() -> list[str]:
    """The command line of this process (for run.json)."""
    return [os.path.basename(sys.argv[0]), *sys.argv[1:]]
