"""Atomic file writes: write to a temporary name beside the target, then ``os.replace``.

One helper for every file the toolkit writes where a half-written file would be trusted later:
run directories (:mod:`xattn_video.rundir`), reports, the prompt and LPIPS-weight caches and the
cost-model cache. Temporary names hold :data:`TMP_MARK`, so leftovers of a killed process can be
found and removed.

:func:`locked` serializes read-modify-write updates of one file by several processes (the
cost-model cache, which ranks of one machine may extend at once).

Not supported: atomicity across file systems (the temporary file is always beside the target);
the lock where ``fcntl`` is missing (Windows) or the file system refuses ``flock``: :func:`locked`
then holds none and the update goes on unlocked.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

TMP_MARK = ".partial"
"""In the name of every temporary file (``.<stem>.<pid>.<random>.partial<suffix>``)."""


class WriteFailed(OSError):
    """An atomic write failed (a full disk, a quota, a device error) and left its file as it was;
    the message names the file. An ``OSError`` (``errno`` kept), so callers that catch those
    still do: numpy's "27648 requested and 12160 written" on a full disk named no file and
    reached the command line as a traceback."""


def write_failed(e: OSError, what: str) -> WriteFailed:
    """``e`` as a :class:`WriteFailed` whose message is ``what`` (naming the file or folder)
    and the OS's reason; ``errno`` kept."""
    why = f"{what}: {e.strerror or e}"
    return WriteFailed(e.errno, why) if e.errno else WriteFailed(why)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix: ffmpeg picks the muxer by it); on
    success it replaces ``path``.

    On any exception (including ``KeyboardInterrupt``) the temporary file is removed and
    ``path`` is left as it was, so a reader never sees a half-written file; an ``OSError`` is
    raised again as :class:`WriteFailed` naming ``path``.
    """
    path = Path(path)
    tmp = path.with_name(
        f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_MARK}{path.suffix}"
    )
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, WriteFailed):
            raise write_failed(e, f"could not write {path}") from e
        raise


def remove_partial_files(folder: str | os.PathLike[str], *, strict: bool = True) -> int:
    """Delete the temporary files (:func:`atomic_path`'s ``.<stem>...partial<suffix>`` names) a
    killed process left in ``folder``; returns how many. ``strict=False``: a file that can't be
    removed stays (best effort), else its ``OSError`` is raised."""
    n = 0
    for p in Path(folder).glob(f".*{TMP_MARK}*"):
        try:
            if p.is_file():
                p.unlink(missing_ok=True)
                n += 1
        except OSError:
            if strict:
                raise
    return n


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def locked(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``<path>.lock`` (created if missing) for a
    read-modify-write of ``path``; other processes calling this for the same path wait."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    path = Path(path)
    with open(path.with_name(path.name + ".lock"), "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:  # a file system without flock (ENOLCK): go on without the lock
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
