"""Rerunning ``generate`` on a run directory: whether its settings match, what is left to do.

A run directory resumes only with the settings that made it (``RunRecord.RESUME_FIELDS``).
What the record holds is made comparable first:

- paths are absolute: the ``--prompts`` file (suite names stay names) and the config's
  ``thresholds_file``, so ``p.txt`` and ``/abs/p.txt`` are one setting; relative paths in an
  older run.json are resolved against the current directory;
- the thresholds file is identified by its SHA-256 too (``thresholds_sha256``), so recalibrating
  into the same file between two runs of one directory is a difference, not a silent mix (an
  older run.json has no digest: not compared); within a run, a change is caught after each
  video (:func:`thresholds_changed`: that video is not written);
- configs written before a field existed get its old default (:func:`_with_full_config`).

Finished prompts are skipped only if :func:`xattn_video.rundir.verify_video` passes and their
prompt text is unchanged (:func:`prompts_to_do`); a skipped prompt whose video.mp4 is missing or
cut (:func:`xattn_video.rundir.video_problem`) gets it encoded again from its verified
frames.npy (:func:`restore_videos`), not generated again.

A directory that holds finished prompts but no run.json (deleted, say, after it was damaged)
does not resume: the settings of its videos can't be checked (:func:`check_resume`). One whose
run finished no prompt (its first video failed) takes any settings and selection, with a
warning: there is nothing its record protects.

The prompt selection (``--dimension`` / ``--sample`` / ``--limit``, the prompt file's length) may
change only to one that still holds every prompt folder of the directory
(:func:`_check_selection`), so that run.json, which records the last selection, describes them all.

Not supported: noticing a prompt *file* edited between runs except through the texts of the
selected prompts (the selection itself is by position).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from xattn_video import rundir
from xattn_video.config import XAttentionConfig

from .options import SetupError

_log = logging.getLogger(__name__)


def prompts_label(prompts: str | os.PathLike[str]) -> str:
    """What run.json records for ``--prompts``: a suite name as given, a file's absolute path."""
    from xattn_video.prompts import SUITES

    key = os.fspath(prompts)
    return key if key in SUITES else str(Path(key).resolve())


def config_record(
    config: XAttentionConfig | None,
    device: torch.device | str | None = None,
    head_dim: int | None = None,
) -> dict[str, Any] | None:
    """What run.json records for ``config`` run on ``device`` (None: no GPU) with a model of
    attention ``head_dim``: ``resolved(device, head_dim)``, ``thresholds_file`` absolute."""
    if config is None:
        return None
    cfg = config.resolved(device, head_dim)
    if cfg.thresholds_file:
        cfg = cfg.replace(thresholds_file=str(Path(cfg.thresholds_file).resolve()))
    return cfg.to_dict()


def thresholds_changed(config: XAttentionConfig | None, recorded: str | None) -> str | None:
    """Why ``config``'s thresholds file is not the one a run recorded (``recorded``: its
    SHA-256) any more, None when it is: checked after each video, as the processors re-read a
    file that changes (a recalibration into the same file) at their next sparse step."""
    try:
        digest = thresholds_digest(config)
    except OSError as e:  # removed or unreadable
        digest = f"unreadable ({e.strerror})"
    if digest == recorded:
        return None
    return (
        f"thresholds file {config.thresholds_file} changed during the run (sha256 {recorded} -> "
        f"{digest}), whose run.json names the one it started with; a new calibration goes to "
        "another --out"
    )


def thresholds_digest(config: XAttentionConfig | None) -> str | None:
    """SHA-256 of ``config.thresholds_file`` (None without one)."""
    if config is None or not config.thresholds_file:
        return None
    return rundir.file_sha256(Path(config.thresholds_file))


def _with_full_config(old: rundir.RunRecord) -> rundir.RunRecord:
    """``old`` with its config completed by the defaults of fields added since it was written,
    "auto" resolved and paths made absolute as in new records, so they don't block a resume.
    The defaults are what ran before the field existed: ``estimate_precision`` "bf16" (its
    default before "auto") and ``auto_dense`` off (a run from before it never went dense for
    cost; today's default, on, was filled in, so the old command resumed with dense-for-cost
    calls the finished videos never had, and ``--no-auto-dense`` was refused)."""
    if not isinstance(old.config, dict):
        return old
    try:
        cfg = {"estimate_precision": "bf16", "auto_dense": False, **old.config}
        full = config_record(XAttentionConfig.from_dict(cfg))
    except (ValueError, TypeError, OSError):
        return old  # a config this version can't read: reported as a difference
    return dataclasses.replace(old, config=full)


def check_resume(
    out: Path,
    old: rundir.RunRecord | None,
    run: rundir.RunRecord,
    indices: list[int],
    *,
    warn: bool = True,
) -> None:
    """Raise :class:`SetupError` naming each setting in which ``run`` differs from ``old``, the
    record already in ``out`` (None: a new directory), or the prompt folders of ``out`` that
    its selection (the prompt ``indices``) leaves out (:func:`_check_selection`), or finished
    prompts in an ``out`` without a record, whose settings can't be checked. A record whose run
    finished no prompt (its first video failed: a compile error, out of memory) protects
    nothing: other settings and another selection replace it, with a warning (``warn``: this
    process prints it; the main one of several)."""
    finished = [] if not out.is_dir() else sorted(
        d.name for d in out.iterdir()
        if rundir.is_prompt_dir(d) and (d / rundir.META_FILE).is_file()
    )  # fmt: skip
    if old is None:
        if finished:
            raise SetupError(
                f"{out} holds {len(finished)} finished prompt(s) ({', '.join(finished[:3])}"
                f"{', ...' if len(finished) > 3 else ''}) but no {rundir.RUN_FILE}, so the "
                "settings that made them can't be checked. Restore its run.json (a copy, or the "
                "run's first command rerun elsewhere) or choose another --out directory."
            )
        return
    old = _with_full_config(old)
    if old.prompts is not None:
        old = dataclasses.replace(old, prompts=prompts_label(old.prompts))
    diffs = old.resume_differences(run)
    detail = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diffs.items())
    if not finished:  # its first video failed (a compile error, out of memory): nothing to keep,
        if diffs and warn:  # its unfinished folders are generated again or left
            warnings.warn(
                f"{out / rundir.RUN_FILE} records a run with other settings ({detail}) that "
                "finished no prompt: replaced by this run's settings",
                stacklevel=2,
            )
        return
    if diffs:
        hint = ""
        if diffs.get("config.estimate_precision") == ("bf16", "fp8"):
            hint = (
                " Since 6208e35 the default estimate of bf16 attention on Hopper GPUs is the fp8"
                " one: add --estimate-precision bf16 to resume a run made before it."
            )
        raise SetupError(
            f"{out / rundir.RUN_FILE} belongs to a run with other settings ({detail}). "
            f"Resume with the same settings or choose another --out directory.{hint}"
        )
    _check_selection(out, old, run, indices)


_SELECTION_WORDS = {
    "dimension": "dimension {!r}",
    "sample": "a strided sample of {}",
    "limit": "the first {}",
}


def _selection_label(selection: dict[str, Any] | None) -> str:
    """``{"dimension": "color", "sample": 3, "limit": 2}`` -> ``"dimension 'color', a strided
    sample of 3, the first 2"``: in words, not flags, since ``generate`` selects with
    ``--sample`` and ``demo`` with ``--num-prompts``."""
    parts = [
        _SELECTION_WORDS.get(k, f"{k} {{}}").format(v)
        for k, v in (selection or {}).items()
        if v is not None
    ]
    return ", ".join(parts) or "every prompt"


def _check_selection(
    out: Path, old: rundir.RunRecord, run: rundir.RunRecord, indices: list[int]
) -> None:
    """Raise :class:`SetupError` if ``out`` holds prompt folders that the selection of ``run``
    (the prompt ``indices``) leaves out: run.json records one selection, which must cover every
    video in the directory. A selection that grows (a longer ``--limit``, lines added to a
    prompt file) resumes and is recorded."""
    kept = set(indices)
    left_out = sorted(
        int(d.name) for d in out.iterdir() if rundir.is_prompt_dir(d) and int(d.name) not in kept
    )
    if left_out:
        shown = ", ".join(rundir.prompt_dir_name(i) for i in left_out[:8])
        more = f" and {len(left_out) - 8} more" if len(left_out) > 8 else ""
        now, then = _selection_label(run.selection), _selection_label(old.selection)
        moved = " move a strided sample" if (run.selection or {}).get("sample") else ""
        why = (
            f"run.json records the same selection, so the prompt file changed since (lines "
            f"added or removed{moved})"
            if now == then
            else f"its run.json records {then}"
        )
        raise SetupError(
            f"{out} holds prompt folder(s) {shown}{more} that this selection ({now}: "
            f"{len(indices)} prompt(s)) leaves out; {why}. A run directory keeps one "
            "selection: resume with one that includes them or choose another --out directory."
        )


def prompts_to_do(out: Path, mine: list[Any], result: Any, progress: bool = False) -> list[Any]:
    """The prompts of ``mine`` to generate: unfinished ones and finished ones that fail
    :func:`rundir.verify_video` or whose prompt text changed (logged, in ``result.redone``;
    the others in ``result.skipped``). ``progress``: a bar over the finished videos checked
    (each frames.npy is hashed: ~0.4 GB per 720p video). Skipped prompts whose video.mp4 is
    not as written go in ``result.reencoded`` with the reason (:func:`restore_videos`)."""
    from tqdm.auto import tqdm

    folders = {p.index: out / rundir.prompt_dir_name(p.index) for p in mine}
    finished = {i for i, folder in folders.items() if (folder / rundir.META_FILE).is_file()}
    bar = tqdm(total=len(finished), desc="checking finished videos", unit="video", leave=False,
               disable=not progress or not finished)  # fmt: skip
    todo = []
    for p in mine:
        folder = folders[p.index]
        if p.index not in finished:
            todo.append(p)
            continue
        problem = rundir.verify_video(folder, prompt=p.text)
        bar.update(1)
        if problem is None:
            result.skipped.append(p.index)
            video = rundir.video_problem(folder)
            if video is not None:
                result.reencoded[p.index] = video
            continue
        todo.append(p)
        result.redone[p.index] = problem
        _log.warning("prompt %s is generated again: %s", folder.name, problem)
    bar.close()
    return todo


def restore_videos(out: Path, problems: dict[int, str], fps: int, writable: bool) -> None:
    """Encode video.mp4 again from the verified frames.npy of each finished prompt index in
    ``problems`` (the reason, logged) and record its size where meta.json has the field
    (schema 5). ``writable``: False for a read-only directory or a sequence-parallel peer
    (nothing written; a read-only one is only logged)."""
    import numpy as np

    from xattn_video.metrics import write_video

    for index, problem in problems.items():
        folder = out / rundir.prompt_dir_name(index)
        if not writable:
            _log.warning("prompt %s: %s; not encoded again here", folder.name, problem)
            continue
        _log.warning("prompt %s: %s; encoding it again from %s", folder.name, problem,
                     rundir.FRAMES_FILE)  # fmt: skip
        video = folder / rundir.VIDEO_FILE
        write_video(video, np.load(folder / rundir.FRAMES_FILE, allow_pickle=False), fps)
        meta = rundir.VideoRecord.read(folder)
        if meta.schema_version >= 5:
            dataclasses.replace(meta, video_bytes=video.stat().st_size).write(folder)
