"""``load_prompts``: a suite name or a file path in, a filtered list of ``Prompt`` out.

Selection happens in this order: dimension filter, then ``sample``, then ``limit``. Indices are
always the suite's (or file's) original 0-based indices.

Not supported: random sampling (``sample`` is deterministic, strided like the XAttention paper's
scripts), filtering by text, de-duplication (VBench repeats some prompts across dimensions; each
repeat keeps its own index).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from .fetch import locate_data_file
from .parse import (
    pair_with_standard,
    prompts_from_json,
    prompts_from_lines,
    read_json_prompts,
    read_text_prompts,
)
from .prompt import Prompt
from .suites import STANDARD_FILE, SUITES, VBENCH_NUM_PROMPTS, Suite

PathLike = str | os.PathLike[str]


def load_prompts(
    suite_or_path: PathLike,
    *,
    data_dir: PathLike | None = None,
    dimension: str | Iterable[str] | None = None,
    limit: int | None = None,
    sample: int | None = None,
) -> list[Prompt]:
    """Load a prompt suite or a user prompt file.

    Args:
        suite_or_path: a name in ``SUITES`` (``"vbench"``, ``"vbench-augmented"``,
            ``"vbench-hunyuan"``) or the path of a ``.txt`` / ``.json`` prompt file.
        data_dir: directory holding the VBench files, searched before ``$XATTN_VIDEO_PROMPTS_DIR``,
            the cache and a download (see ``xattn_video.prompts.fetch``). Ignored for user files.
        dimension: keep prompts tagged with this dimension (or any of these dimensions).
        sample: keep ``N`` prompts, exactly like the XAttention paper's scripts:
            ``prompts[:: len(prompts) // N][:N]`` (step at least 1), spread over the suite only
            for ``N <= len / 2``: above, the step is 1 and these are the first ``N``. Applied
            after ``dimension``.
        limit: keep the first ``N`` prompts; applied last.

    Returns:
        The selected prompts in suite order.

    Raises:
        ValueError: unknown suite name (the message lists the valid ones), unknown dimension (the
            message lists the valid ones), non-positive ``sample``/``limit``, malformed file.
        FileNotFoundError: a user file path that does not exist.
        PromptDataMissing: a suite's data file is not available offline and cannot be fetched.
    """
    prompts = _load_all(suite_or_path, data_dir)
    if dimension is not None:
        prompts = filter_dimension(prompts, dimension, str(suite_or_path))
    if sample is not None:
        prompts = sample_strided(prompts, sample)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        prompts = prompts[:limit]
    return prompts


def _load_all(suite_or_path: PathLike, data_dir: PathLike | None) -> list[Prompt]:
    key = os.fspath(suite_or_path)
    if key in SUITES:
        return _load_suite(SUITES[key], data_dir)
    path = Path(key)
    if path.suffix.lower() in (".txt", ".json"):
        if not path.is_file():
            what = ("is a directory, not a file" if path.is_dir()
                    else "is not a regular file" if path.exists() else "does not exist")  # fmt: skip
            raise FileNotFoundError(f"Prompt file {path} {what}")
        if path.suffix.lower() == ".txt":
            prompts = prompts_from_lines(read_text_prompts(path))
        else:
            prompts = read_json_prompts(path)
        if not prompts:
            raise ValueError(f"Prompt file {path} holds no prompts")
        return prompts
    raise ValueError(
        f"Unknown prompt suite {key!r}. Valid suites: {', '.join(SUITES)}; "
        "or pass the path of a .txt (one prompt per line) or .json prompt file."
    )


def _load_suite(suite: Suite, data_dir: PathLike | None) -> list[Prompt]:
    info_path = locate_data_file(STANDARD_FILE.name, data_dir)
    try:
        with info_path.open(encoding="utf-8-sig") as f:  # a copy saved with a BOM
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:  # a cut download said only "line 217"
        raise ValueError(
            f"{info_path} is not valid JSON ({e}): a cut or damaged copy? Delete it to fetch it "
            "again (or replace it with VBench's VBench_full_info.json)"
        ) from None
    except OSError as e:  # no permission, an I/O error: the CLI's one-line error
        raise ValueError(f"{info_path} cannot be read: {e.strerror or e}") from None
    standard = prompts_from_json(data, str(info_path))
    if len(standard) != VBENCH_NUM_PROMPTS:
        raise ValueError(
            f"{info_path} has {len(standard)} prompts, expected {VBENCH_NUM_PROMPTS}; "
            "is it VBench's VBench_full_info.json?"
        )
    if suite.text_file is None:
        return standard
    path = locate_data_file(suite.text_file.name, data_dir)
    return pair_with_standard(standard, read_text_prompts(path), str(path))


def all_dimensions(prompts: Iterable[Prompt]) -> list[str]:
    """Sorted distinct dimension tags of ``prompts``."""
    return sorted({d for p in prompts for d in p.dimensions})


def filter_dimension(
    prompts: list[Prompt], dimension: str | Iterable[str], source: str = "prompts"
) -> list[Prompt]:
    """Prompts tagged with ``dimension`` (or any of several).

    Raises:
        ValueError: a requested dimension appears in no prompt; the message lists the valid ones.
    """
    wanted = {dimension} if isinstance(dimension, str) else set(dimension)
    if not wanted:
        raise ValueError("dimension filter is empty")
    valid = all_dimensions(prompts)
    unknown = sorted(wanted.difference(valid))
    if unknown:
        listing = ", ".join(valid) if valid else "none (this source has no dimension tags)"
        raise ValueError(f"Unknown dimension(s) {unknown} for {source}. Valid: {listing}")
    return [p for p in prompts if wanted.intersection(p.dimensions)]


def sample_strided(prompts: list[Prompt], n: int) -> list[Prompt]:
    """``prompts[:: len // n][:n]`` (step at least 1), the XAttention paper's subsampling."""
    if n < 1:
        raise ValueError(f"sample must be >= 1, got {n}")
    step = max(1, len(prompts) // n)
    return prompts[::step][:n]
