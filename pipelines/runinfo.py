"""Environment facts recorded in a run directory: GPU name, package versions, git SHA, command.

The run directory format itself (file names, records, atomic writes, lock) is owned by
``xattn_video.rundir``.

Not supported: non-CUDA accelerator names (``gpu_name`` is None off CUDA).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

_PACKAGES = ("torch", "triton", "diffusers", "transformers", "accelerate", "xattn-video")


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
    """Commit SHA of the git checkout that tracks the folder ``path`` (default: this package),
    with ``-dirty`` when tracked files differ from HEAD (uncommitted edits, or a copied tree whose
    .git is older than its files: then the SHA alone would name code that was not run); None
    without git, outside a checkout, or when the checkout around ``path`` does not track it (a
    wheel installed into a git-ignored virtualenv inside some other project)."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode or git("ls-files", "--error-unmatch", "--", ".").returncode:
            return None
        dirty = git("diff", "--quiet", "HEAD", "--").returncode == 1
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")


def command_line() -> list[str]:
    """The command line of this process (for run.json): ``python -m xattn_video.pipelines.cli``
    (and ``accelerate launch -m`` of it) as ``xattn-video``, the command that reruns it (its
    program name was ``cli.py``)."""
    prog = os.path.basename(sys.argv[0])
    if Path(sys.argv[0]).parts[-2:] == ("pipelines", "cli.py"):
        prog = "xattn-video"
    return [prog, *sys.argv[1:]]
