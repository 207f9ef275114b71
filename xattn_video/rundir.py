"""The run directory format: file names, typed records, atomic writes, resume checks (the lock:
:mod:`xattn_video.runlock`).

The single owner of the layout that ``xattn-video generate`` writes and ``compare`` reads
(``xattn_video.pipelines`` and ``xattn_video.metrics`` both import this module)::

    RUN_DIR/
      run.json        RunRecord: the run's settings + environment (main process)
      .lock           held (flock) by the generate process(es) writing the directory
      00012/          one folder per prompt, named after the 5-digit prompt index
        video.mp4     for viewing (H.264, lossy)
        frames.npy    lossless uint8 (T, H, W, 3); what metrics read
        meta.json     VideoRecord, written last and atomically: the prompt is finished

Schema versions: ``schema_version`` in run.json and meta.json. Version 1 is xattn-video 0.1.0
(no ``schema_version`` key, no frames checksum); it still reads. Version 2 adds
``frames_sha256`` / ``frames_bytes`` to meta.json so resume can verify finished videos.
Version 3 adds ``compile`` to run.json (``"eager"`` or ``"compiled:<mode>"``); older run.json
files have no key and read as ``None``, which means eager (compiling did not exist). Version 4
adds ``thresholds_sha256`` (the calibration file's digest; absent without one). Version 5 adds
``video_bytes`` to meta.json (video.mp4's size, so resume can tell a deleted or cut viewing copy
and encode it again from frames.npy: :func:`video_problem`), and ``ulysses`` (the sequence
parallel degree) to run.json and to meta.json's ``process``.

Every read error names the file. Every write goes through
:func:`xattn_video.atomic.atomic_path` (temporary name holding :data:`TMP_MARK`, then
``os.replace``).

Not supported: several runs (different settings) in one directory (:func:`resume_differences`
names the fields that differ); schema versions newer than this package's (refused with the
version named).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import tokenize
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import (  # noqa: F401 (atomic_path, remove_partial_files: re-exported)
    TMP_MARK,
    WriteFailed,
    atomic_path,
    remove_partial_files,
    write_failed,
    write_text,
)
from .scalars import is_json_int, json_matches

SCHEMA_VERSION = 5
"""Schema of run.json / meta.json written by this version (1: xattn-video 0.1.0, no key)."""
EAGER = "eager"
"""``RunRecord.compile`` of an uncompiled run; what a missing ``compile`` (schema < 3) means."""

RUN_FILE = "run.json"
META_FILE = "meta.json"
VIDEO_FILE = "video.mp4"
FRAMES_FILE = "frames.npy"
LOCK_FILE = ".lock"

_INDEX_DIR = re.compile(r"[1-9][0-9]{4,}|0[0-9]{4}")
"""A prompt folder's name, :func:`prompt_dir_name`'s: ``00000`` or, past 99999, no zero padding
(``000000`` was read as prompt 0 too, and ``compare`` took it over the real ``00000``)."""

PathLike = str | os.PathLike[str]


class RunDirError(ValueError):
    """A file of a run directory is unreadable, corrupt or from an incompatible run; the
    message names the file."""


class RunDirLocked(RunDirError):
    """Another process holds the run directory's lock."""


def prompt_dir_name(index: int) -> str:
    """The folder name of prompt ``index`` (``12`` -> ``"00012"``)."""
    return f"{index:05d}"


def is_prompt_dir(path: Path) -> bool:
    """True for a prompt folder: a directory named by :func:`prompt_dir_name` (5+ digits)."""
    return path.is_dir() and bool(_INDEX_DIR.fullmatch(path.name))


def write_json(path: PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json_object(path: PathLike) -> dict[str, Any]:
    """Parse a JSON file holding an object.

    Raises:
        RunDirError: unreadable, not valid JSON, or not an object (the file is named).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RunDirError(f"{path} can't be read: {e}") from None
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def start_prompt_dir(folder: PathLike) -> None:
    """Make ``folder`` ready for a prompt's files: created, its ``meta.json`` removed (the
    prompt is redone, so unfinished) and temporary files of an interrupted run deleted. An
    ``OSError`` (a full disk or no free inodes) is raised as :class:`.atomic.WriteFailed`
    naming the folder, like a failed file write (before, a traceback)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / META_FILE).unlink(missing_ok=True)
        remove_partial_files(folder)
    except WriteFailed:
        raise
    except OSError as e:
        raise write_failed(e, f"could not prepare {folder}") from e


def remove_leftovers(run: PathLike) -> None:
    """Best effort (what can't be read or removed stays), under the run's lock: temporary files
    a killed run left in ``run`` and its prompt folders (run.json's, a re-encoded video's)."""
    with contextlib.suppress(OSError):  # an unreadable folder
        for folder in [Path(run), *(p for p in Path(run).iterdir() if is_prompt_dir(p))]:
            remove_partial_files(folder, strict=False)


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


def _schema(data: Mapping[str, Any], path: PathLike | None) -> int:
    version = data.get("schema_version", 1)
    if not is_json_int(version) or version < 1:
        raise RunDirError(
            f"{path or 'record'}: schema_version must be an int >= 1, got {version!r}"
        )
    if version > SCHEMA_VERSION:
        raise RunDirError(
            f"{path or 'record'} has schema_version {version}, newer than this xattn-video "
            f"reads ({SCHEMA_VERSION}); upgrade xattn-video"
        )
    return version


def _from_json(cls: type, data: Mapping[str, Any], path: PathLike | None, required: tuple) -> Any:
    version = _schema(data, path)
    missing = [k for k in required if k not in data]
    if missing:
        raise RunDirError(f"{path or cls.__name__}: missing {', '.join(missing)}")
    names = {f.name for f in dataclasses.fields(cls)} - {"extra", "schema_version"}
    known = {k: data[k] for k in names if k in data}
    hints = _field_hints(cls)
    bad = [k for k, v in known.items() if not json_matches(v, hints[k])]
    if bad:  # a wrong type crashed resume and compare later with a traceback
        k = sorted(bad)[0]
        raise RunDirError(
            f"{path or cls.__name__}: {k} must be {_hint_name(hints[k])}, got "
            f"{type(known[k]).__name__} {known[k]!r:.40}"
        )
    extra = {k: v for k, v in data.items() if k not in names and k != "schema_version"}
    return cls(**known, schema_version=version, extra=extra)


@functools.cache
def _field_hints(cls: type) -> dict[str, Any]:
    """A record class's field annotations, evaluated once (not per file read)."""
    return typing.get_type_hints(cls)


def _hint_name(hint: Any) -> str:
    name = hint.__name__ if isinstance(hint, type) else str(hint)
    return name.replace("typing.", "").replace("NoneType", "null")


def _to_json(record: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"schema_version": record.schema_version}
    later = getattr(record, "LATER_FIELDS", ())
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if f.name not in ("schema_version", "extra") and not (f.name in later and value is None):
            out[f.name] = value
    out.update(record.extra)
    return out


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """``run.json``: the settings that decide the videos, plus the environment that made them.
    Fields are in the file's key order (0.1.0's), after ``schema_version``."""

    model: str
    model_source: str | None = None
    attention: str
    """``"dense"`` or ``"xattn"``."""
    config: dict[str, Any] | None = None
    """``XAttentionConfig.to_dict()``; None for dense runs."""
    height: int
    width: int
    frames: int
    steps: int
    seed: int
    fps: int | None = None
    dtype: str | None = None
    prompts: str | None = None
    """The ``--prompts`` argument (suite name or file path)."""
    selection: dict[str, Any] | None = None
    num_prompts: int | None = None
    num_processes: int | None = None
    gpu: str | None = None
    versions: dict[str, Any] | None = None
    git_sha: str | None = None
    command: list[str] | None = None
    compile: str | None = None
    """``"eager"`` or ``"compiled:<mode>"`` (``pipelines.compiling.compile_label``; schema 3);
    None in older files, meaning eager (:attr:`compile_mode`)."""
    thresholds_sha256: str | None = None
    """SHA-256 of the config's ``thresholds_file`` (schema 4); None without one, or unknown in
    older files (then not compared on resume)."""
    ulysses: int | None = None
    """``--ulysses``, the sequence-parallel degree P (1: none; schema 5); None in older files,
    where it is unknown (then not compared on resume)."""
    schema_version: int = SCHEMA_VERSION
    """The schema of the file the record was read from (:data:`SCHEMA_VERSION` for new ones)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys this version does not know (kept on a round trip)."""

    RESUME_FIELDS = ("model", "model_source", "attention", "config", "height", "width")
    RESUME_FIELDS += ("frames", "steps", "seed", "fps", "dtype", "prompts", "compile")
    RESUME_FIELDS += ("thresholds_sha256", "ulysses")
    """Fields that must match to resume a run directory (they change the videos or, for
    ``compile`` and ``ulysses``, what the timings measure). The config is compared field by
    field, also fields that this config or device ignores (``ratio`` in threshold mode,
    ``estimate_kernel`` on the CPU): run.json records one config, which must describe every
    video of the directory."""
    LATER_FIELDS = ("compile", "thresholds_sha256", "ulysses")
    """Fields added after schema 1: left out of :meth:`to_json` when None (read from an older
    file), so an old run.json round-trips unchanged."""

    @property
    def device_type(self) -> str:
        """``"cuda"`` when :attr:`gpu` names a GPU, else ``"cpu"`` (``generate`` records
        ``null`` off CUDA). Runs of two device types share no video: CPU and CUDA generators
        draw different noise for the same seed."""
        return "cuda" if self.gpu else "cpu"

    @property
    def compile_mode(self) -> str:
        """:attr:`compile`, with :data:`EAGER` for files written before it existed."""
        return self.compile or EAGER

    def to_json(self) -> dict[str, Any]:
        """The run.json object (keys in 0.1.0's order, ``schema_version`` first)."""
        return _to_json(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: PathLike | None = None) -> RunRecord:
        """Parse a run.json object (schema 1 to 3); ``path`` is named in errors."""
        return _from_json(
            cls, data, path, ("model", "attention", "height", "width", "frames", "steps", "seed")
        )

    @classmethod
    def read(cls, run_dir: PathLike) -> RunRecord:
        """Read ``run_dir/run.json`` (:class:`RunDirError` naming the file if bad)."""
        path = Path(run_dir) / RUN_FILE
        return cls.from_json(read_json_object(path), path)

    def write(self, run_dir: PathLike) -> None:
        """Write ``run_dir/run.json`` atomically."""
        write_json(Path(run_dir) / RUN_FILE, self.to_json())

    def resume_differences(self, new: RunRecord) -> dict[str, tuple[Any, Any]]:
        """``{field: (old, new)}`` for each of :attr:`RESUME_FIELDS` that differs; inside two
        configs, per config field (``"config.threshold"``); then ``"device"``, the
        :attr:`device_type` (a CUDA run resumed on the CPU, or the reverse, mixed two noise
        sources in one directory). Pass records whose configs carry every field
        (``XAttentionConfig.to_dict()``), so a field added later with its default is not a
        difference."""
        old_j, new_j = (json.loads(json.dumps(r.to_json())) for r in (self, new))
        out = {}
        old_j["compile"], new_j["compile"] = self.compile_mode, new.compile_mode
        if self.schema_version < 4:  # no digest recorded: unknown, not a difference
            new_j["thresholds_sha256"] = old_j.get("thresholds_sha256")
        if self.ulysses is None:  # not recorded (schema < 5): unknown, not a difference
            new_j["ulysses"] = None
        for k in self.RESUME_FIELDS:
            a, b = old_j.get(k), new_j.get(k)
            if k == "config" and isinstance(a, dict) and isinstance(b, dict):
                for name in dict.fromkeys([*a, *b]):
                    if a.get(name) != b.get(name):
                        out[f"config.{name}"] = (a.get(name), b.get(name))
            elif a != b:
                out[k] = (a, b)
        if self.device_type != new.device_type:
            out["device"] = (self.device_type, new.device_type)
        return out


@dataclass(frozen=True, kw_only=True)
class VideoRecord:
    """``meta.json`` of one finished prompt (fields in the file's key order)."""

    prompt_index: int
    prompt: str
    dimensions: list[str] | None = None
    seed: int | None = None
    attention: str | None = None
    config: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None
    """``{"total_s", "denoise_s", "per_step_s"}`` (see ``pipelines.generate``)."""
    density: dict[str, Any] | None = None
    """``XAttentionStats.summary()``; None for dense runs."""
    shape: list[int] | None = None
    """(T, H, W, 3) of frames.npy."""
    frames_bytes: int | None = None
    """Size of frames.npy in bytes (schema 2)."""
    frames_sha256: str | None = None
    """SHA-256 of frames.npy (schema 2)."""
    video_bytes: int | None = None
    """Size of video.mp4 in bytes (schema 5)."""
    first_in_process: bool | None = None
    process: dict[str, Any] | None = None
    gpu: str | None = None
    versions: dict[str, Any] | None = None
    git_sha: str | None = None
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The meta.json object (``schema_version`` first, then 0.1.0's keys in order)."""
        return _to_json(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: PathLike | None = None) -> VideoRecord:
        """Parse a meta.json object (schema 1 to 3); ``path`` is named in errors."""
        return _from_json(cls, data, path, ("prompt_index", "prompt"))

    @classmethod
    def read(cls, prompt_dir: PathLike) -> VideoRecord:
        """Read ``prompt_dir/meta.json`` (:class:`RunDirError` naming the file if bad)."""
        path = Path(prompt_dir) / META_FILE
        return cls.from_json(read_json_object(path), path)

    def write(self, prompt_dir: PathLike) -> None:
        """Write ``prompt_dir/meta.json`` atomically (last: it marks the prompt finished)."""
        write_json(Path(prompt_dir) / META_FILE, self.to_json())


# ---------------------------------------------------------------------------------------------
# Finished videos
# ---------------------------------------------------------------------------------------------


def file_sha256(path: PathLike) -> str:
    """Hex SHA-256 of a file (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def npy_shape(path: PathLike) -> tuple[tuple[int, ...], int]:
    """(shape, expected file size in bytes) from a ``.npy`` header (the data is not read)."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        version = fmt.read_magic(f)
        read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read_header(f)
        header = f.tell()
    return tuple(shape), header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def verify_video(prompt_dir: PathLike, prompt: str | None = None) -> str | None:
    """Why the finished prompt in ``prompt_dir`` can't be trusted, or None when it can.

    Checks meta.json parses, its prompt text equals ``prompt`` (when given), frames.npy
    exists, its header matches ``meta.shape`` and the file is as long as its header says
    (catches truncation, also for schema-1 metas), and, when meta records them (schema 2), its
    size and SHA-256.
    """
    folder = Path(prompt_dir)
    try:
        meta = VideoRecord.read(folder)
    except RunDirError as e:
        return str(e)
    if prompt is not None and meta.prompt != prompt:
        return (f"the prompt changed since {folder / META_FILE}: {clipped(meta.prompt)!r} -> "
                f"{clipped(prompt)!r} ({first_difference(meta.prompt, prompt)})")  # fmt: skip
    frames = folder / FRAMES_FILE
    if not frames.is_file():
        return f"{frames} is missing"
    size = frames.stat().st_size
    try:
        shape, expected = npy_shape(frames)
    except (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError) as e:
        return f"{frames} is not a valid .npy file: {e}"  # numpy's header parser: TokenError
    if size != expected:
        return f"{frames} is truncated or padded: {size} bytes, its header implies {expected}"
    if meta.shape is not None and list(shape) != list(meta.shape):
        return f"{frames} has shape {list(shape)} but {folder / META_FILE} says {meta.shape}"
    if meta.frames_bytes is not None and size != meta.frames_bytes:
        return f"{frames} has {size} bytes but {folder / META_FILE} says {meta.frames_bytes}"
    if meta.frames_sha256 is not None and file_sha256(frames) != meta.frames_sha256:
        return f"{frames} does not match the SHA-256 in {folder / META_FILE}"
    return None


def video_problem(prompt_dir: PathLike) -> str | None:
    """Why the viewing copy (video.mp4) of a finished prompt is not as written: missing, empty,
    or (schema 5) not the size meta.json records; None when it is. Its frames are
    :func:`verify_video`'s job: what metrics read is frames.npy."""
    folder = Path(prompt_dir)
    video = folder / VIDEO_FILE
    if not video.is_file():
        return f"{video} is missing"
    size = video.stat().st_size
    if size == 0:
        return f"{video} is empty"
    expected = VideoRecord.read(folder).video_bytes
    if expected is not None and size != expected:
        return f"{video} has {size} bytes but {folder / META_FILE} says {expected}"
    return None


def first_difference(old: str, new: str) -> str:
    """Where two texts first differ, by code point, so texts that print alike (NFC against NFD
    accents, a Cyrillic letter for a Latin one) are told apart in a message."""
    i = next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b),
             min(len(old), len(new)))  # fmt: skip
    points = [" ".join(f"U+{ord(c):04X}" for c in t[i : i + 2]) or "end" for t in (old, new)]
    return f"first difference at character {i}: {points[0]} -> {points[1]}"


def clipped(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters for a message (a 10 KB prompt made one warning line
    of 20 KB); the files keep it whole."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
