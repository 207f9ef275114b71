"""Read a run directory written by the ``generate`` CLI.

Layout (the contract)::

    RUN_DIR/
      run.json          {"model", "attention": "dense"|"xattn", "config", "gpu", "versions", ...}
      00012/            one folder per prompt, the 5-digit stable prompt index
        video.mp4       for viewing
        frames.npy      lossless uint8 (T, H, W, 3); preferred for metrics
        meta.json       written last; its presence marks the video finished:
                        {"prompt_index", "prompt", "seed", "attention", "config",
                         "timings": {"total_s", "denoise_s", "per_step_s"},
                         "density": {"sparse_density", "effective_density", ...} | null,
                         "gpu", "versions"}

Not supported: nested runs, several videos per prompt folder, runs without ``meta.json``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .video_io import read_video

_INDEX_DIR = re.compile(r"^\d{5,}$")


@dataclass(frozen=True)
class RunVideo:
    """One finished video of a run.

    Attributes:
        index: prompt index (from the folder name).
        path: the prompt folder.
        meta: parsed ``meta.json``.
    """

    index: int
    path: Path
    meta: dict[str, Any]

    @property
    def frames_file(self) -> Path:
        """``frames.npy`` when present, else ``video.mp4`` (which may not exist)."""
        npy = self.path / "frames.npy"
        return npy if npy.is_file() else self.path / "video.mp4"

    def load_frames(self) -> np.ndarray:
        """(T, H, W, 3) uint8 frames, lossless when ``frames.npy`` exists.

        Raises:
            FileNotFoundError: neither ``frames.npy`` nor ``video.mp4`` exists.
        """
        f = self.frames_file
        if not f.is_file():
            raise FileNotFoundError(
                f"{self.path} has meta.json but neither frames.npy nor video.mp4"
            )
        return read_video(f)


@dataclass(frozen=True)
class Run:
    """A scanned run directory.

    Attributes:
        path: the run directory.
        info: parsed ``run.json`` or ``None`` when absent.
        videos: finished videos by prompt index.
        unfinished: prompt indices whose folder has no ``meta.json`` yet.
        problems: human-readable inconsistencies found while scanning.
    """

    path: Path
    info: dict[str, Any] | None
    videos: dict[int, RunVideo]
    unfinished: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def gpu(self) -> str | None:
        """GPU name from ``run.json``, else from the first video's ``meta.json``."""
        if self.info and self.info.get("gpu"):
            return str(self.info["gpu"])
        for v in self.videos.values():
            if v.meta.get("gpu"):
                return str(v.meta["gpu"])
        return None


def _read_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def scan_run(path: str | os.PathLike[str]) -> Run:
    """Scan ``path`` for finished videos.

    Raises:
        FileNotFoundError: ``path`` is not a directory.
        ValueError: a ``meta.json`` or ``run.json`` is not valid JSON (object).
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"run directory {root} does not exist")
    problems: list[str] = []
    info = None
    if (root / "run.json").is_file():
        info = _read_json(root / "run.json")
        if not isinstance(info, dict):
            raise ValueError(f"{root / 'run.json'} must hold a JSON object")
    else:
        problems.append(f"{root} has no run.json")
    videos: dict[int, RunVideo] = {}
    unfinished: list[int] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and _INDEX_DIR.match(p.name)):
        index = int(sub.name)
        meta_path = sub / "meta.json"
        if not meta_path.is_file():
            unfinished.append(index)
            continue
        try:
            meta = _read_json(meta_path)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{meta_path} is not valid JSON: {exc}") from exc
        if not isinstance(meta, dict):
            raise ValueError(f"{meta_path} must hold a JSON object")
        if meta.get("prompt_index") not in (None, index):
            problems.append(
                f"{meta_path}: prompt_index {meta.get('prompt_index')} != folder index {index}"
            )
        videos[index] = RunVideo(index, sub, meta)
    return Run(root, info, videos, unfinished, problems)
