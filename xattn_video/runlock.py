"""The run directory's lock: one ``generate`` process (or process group) writes a run directory
at a time, and a read-only directory is found by trying, not guessed.

``RUN_DIR/.lock`` (:data:`.rundir.LOCK_FILE`) holds the holder's pid under an exclusive
``flock``; the lock dies with its process, so a crash leaves no stale lock. It is created with
the umask's permissions (a group-shared folder's other users can take it too); one that another
user created read-only is locked through a read-only descriptor (its pid then not rewritten).

Not supported: locking on file systems without ``flock`` (Windows, NFS mounted ``nolock``):
``generate`` warns and goes on unlocked there, so nothing stops a second writer.
"""

from __future__ import annotations

import errno
import logging
import os
import uuid
from pathlib import Path

from .atomic import TMP_MARK, write_failed
from .rundir import LOCK_FILE, PathLike, RunDirLocked

logger = logging.getLogger(__name__)

_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


def _open_lock_file(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides (shared folders)


class RunLock:
    """An exclusive ``flock`` on ``RUN_DIR/.lock`` held while a process writes the directory.

    ``acquire`` never waits: a second writer gets :class:`RunDirLocked` naming the holder's pid.
    A read-only directory can't be locked (nor written): ``acquire`` returns False and the
    caller may only read. The lock dies with its process (no stale locks after a crash).
    """

    def __init__(self, run_dir: PathLike) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; False when the directory is not writable (a True does not say it
        is: a read-only lock file can be locked; :func:`writable_dir` tries a write).

        Raises:
            RunDirLocked: another process holds it.
        """
        import fcntl

        writable = True
        try:
            fd = _open_lock_file(self.path)
        except OSError as e:
            if e.errno not in _DENIED:
                raise
            try:  # another user's read-only lock file in a folder we may still write to
                fd = os.open(self.path, os.O_RDONLY)
            except OSError:
                return False
            writable = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):  # no flock here (ENOLCK)
                os.close(fd)
                logger.warning(
                    "%s: this file system cannot lock files (%s); going on without the run "
                    "lock, so nothing stops a second generate process from writing here",
                    self.path.parent, os.strerror(e.errno or 0),
                )  # fmt: skip
                return True
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunDirLocked(
                f"{self.path.parent} is being written by another generate process (pid "
                f"{holder}); wait for it to finish, then rerun to resume, or choose another --out"
            ) from None
        if writable:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError as e:  # a full disk: not held (a retry in this process would be
                os.close(fd)  # refused as "another generate process"), and the file named
                raise write_failed(e, f"could not write {self.path}") from e
        self._fd = fd
        return True

    def release(self) -> None:
        """Release the lock (the file stays; it is empty of meaning without a holder)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def writable_dir(path: PathLike) -> bool:
    """Whether a new file can be created in the existing directory ``path`` (tried, not guessed
    from permission bits, so it is right for root and read-only mounts)."""
    probe = Path(path) / f".probe.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_MARK}"
    try:
        fd = _open_lock_file(probe)
    except OSError:
        return False
    os.close(fd)
    probe.unlink(missing_ok=True)
    return True
