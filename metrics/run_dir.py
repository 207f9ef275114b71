"""Read a run directory written by the ``generate`` CLI (format: ``xattn_video.rundir``).

``scan_run`` lists the finished videos of a run directory with their typed records
(``RunRecord`` from run.json, ``VideoRecord`` from each meta.json). Schema-1 directories
(xattn-video 0.1.0) read too. Every error names the file.

Not supported: nested runs, several videos per prompt folder, runs without ``meta.json``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xattn_video import rundir
from xattn_video.rundir import RunDirError, RunRecord, VideoRecord

from .video_io import read_video


@dataclass(frozen=True)
class RunVideo:
    """One finished video of a run.

    Attributes:
        index: prompt index (from the folder name).
        path: the prompt folder.
        record: parsed ``meta.json``.
    """

    index: int
    path: Path
    record: VideoRecord

    @property
    def meta(self) -> dict[str, Any]:
        """``meta.json`` as a dict (the record's JSON form)."""
        return self.record.to_json()

    @property
    def frames_file(self) -> Path:
        """``frames.npy`` when present, else ``video.mp4`` (which may not exist)."""
        npy = self.path / rundir.FRAMES_FILE
        return npy if npy.is_file() else self.path / rundir.VIDEO_FILE

    def load_frames(self) -> np.ndarray:
        """(T, H, W, 3) uint8 frames, lossless when ``frames.npy`` exists.

        Raises:
            FileNotFoundError: neither ``frames.npy`` nor ``video.mp4`` exists.
            RunDirError: the file can't be decoded (truncated, corrupt, wrong shape), or
                fails the size (frames.npy: also the checksum) or shape recorded in meta.json;
                the file is named.
        """
        f = self.frames_file
        if not f.is_file():
            raise FileNotFoundError(
                f"{self.path} has {rundir.META_FILE} but neither {rundir.FRAMES_FILE} nor "
                f"{rundir.VIDEO_FILE}"
            )
        if f.name == rundir.FRAMES_FILE:
            problem = rundir.verify_video(self.path)
        else:  # a cut mp4 decodes to fewer frames without an error: check its recorded size
            problem = rundir.video_problem(self.path)
        if problem is not None:
            raise RunDirError(f"{problem}; {_REDO}")
        try:
            frames = read_video(f)
        except (ValueError, OSError, EOFError, RuntimeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]  # not ffmpeg's banner
            raise RunDirError(f"{f} can't be read: {first}; {_REDO}") from e
        shape = self.record.shape
        if shape is None or f.name == rundir.FRAMES_FILE:
            return frames
        t, h, w = (int(x) for x in shape[:3])
        encoded = [t, h + h % 2, w + w % 2, 3]  # write_video pads odd sizes by one row/column
        if list(frames.shape) != encoded:
            raise RunDirError(
                f"{f} decodes to shape {list(frames.shape)} but {self.path / rundir.META_FILE} "
                f"says {list(shape)}; {_REDO}"
            )
        return frames[:, :h, :w]


_REDO = "rerunning its generate command regenerates that video"


@dataclass(frozen=True)
class Run:
    """A scanned run directory.

    Attributes:
        path: the run directory.
        record: parsed ``run.json`` or ``None`` when absent.
        videos: finished videos by prompt index.
        unfinished: prompt indices whose folder has no ``meta.json`` yet.
        problems: human-readable inconsistencies found while scanning.
        recorded: the keys ``run.json`` has (a ``null`` value counts; older files lack some).
    """

    path: Path
    record: RunRecord | None
    videos: dict[int, RunVideo]
    unfinished: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    recorded: frozenset[str] = frozenset()

    @property
    def info(self) -> dict[str, Any] | None:
        """``run.json`` as a dict (None when absent)."""
        return self.record.to_json() if self.record is not None else None

    @property
    def gpu(self) -> str | None:
        """GPU name from ``run.json``, else from the first video's ``meta.json``."""
        if self.record is not None and self.record.gpu:
            return str(self.record.gpu)
        for v in self.videos.values():
            if v.record.gpu:
                return str(v.record.gpu)
        return None


def scan_run(path: str | os.PathLike[str]) -> Run:
    """Scan ``path`` for finished videos.

    Raises:
        FileNotFoundError: ``path`` is not a directory.
        RunDirError (a ``ValueError``): a ``meta.json`` or ``run.json`` is unreadable, not a
            JSON object, or misses required fields; the file is named.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"run directory {root} does not exist")
    problems: list[str] = []
    record = None
    recorded: frozenset[str] = frozenset()
    if (root / rundir.RUN_FILE).is_file():
        raw = rundir.read_json_object(root / rundir.RUN_FILE)
        record = RunRecord.from_json(raw, root / rundir.RUN_FILE)
        recorded = frozenset(raw)
    else:
        problems.append(f"{root} has no {rundir.RUN_FILE}")
    videos: dict[int, RunVideo] = {}
    unfinished: list[int] = []
    for sub in sorted(p for p in root.iterdir() if rundir.is_prompt_dir(p)):
        index = int(sub.name)
        if not (sub / rundir.META_FILE).is_file():
            unfinished.append(index)
            continue
        meta = VideoRecord.read(sub)
        if meta.prompt_index != index:
            problems.append(
                f"{sub / rundir.META_FILE}: prompt_index {meta.prompt_index} != folder index "
                f"{index}"
            )
        videos[index] = RunVideo(index, sub, meta)
    return Run(root, record, videos, unfinished, problems, recorded)
