"""Parse prompt files into ``Prompt`` lists.

Formats:
- VBench's ``VBench_full_info.json``: a list of ``{"prompt_en": str, "dimension": [str, ...]}``.
- A ``.txt`` file: one prompt per line (lines end at ``\n``, ``\r\n`` or ``\r``; other
  Unicode line breaks such as U+2028 stay inside the prompt); surrounding whitespace is stripped
  and blank lines are skipped (indices count the kept prompts, 0-based).
- A user ``.json`` file: a list of strings, or a list of objects with ``"prompt"`` or
  ``"prompt_en"`` (a non-blank ``"prompt_en"`` wins where both are given) and an optional
  ``"dimension"`` (a string, kept whole as one tag, or a list of strings; null: none). VBench's
  own file is a special case of this.

Not supported: CSV/YAML, nested ``{"prompts": [...]}`` objects, per-prompt seeds or indices.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .prompt import Prompt

_LINE_END = re.compile(r"\r\n|\r|\n")
"""What ends a line of a prompt file (``str.splitlines`` also splits at U+2028, U+0085, form
feeds, ..., which would make one prompt several and shift the indices after it)."""


def read_text_prompts(path: Path) -> list[str]:
    """Prompts of a one-per-line UTF-8 text file, stripped, blank lines skipped.

    Raises:
        ValueError: the file is not UTF-8 (a Latin-1 or UTF-16 file) or cannot be read (no
            permission, an I/O error); the message names it.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e}); save it as UTF-8") from None
    except OSError as e:
        raise ValueError(f"Prompt file {path} cannot be read: {e.strerror or e}") from None
    # a BOM inside the text (files joined with cat) is no more a prompt's than the first one
    lines = (line.strip().strip("\ufeff").strip() for line in _LINE_END.split(text))
    return [line for line in lines if line]


def prompts_from_lines(lines: Sequence[str]) -> list[Prompt]:
    """``Prompt``s without dimension tags, indexed 0..len-1."""
    return [Prompt(i, text) for i, text in enumerate(lines)]


def prompts_from_json(data: Any, source: str) -> list[Prompt]:
    """``Prompt``s from parsed JSON (see the module docstring for the accepted shapes).

    Raises:
        ValueError: the JSON has another shape; the message names ``source`` and the entry.
    """
    if not isinstance(data, list):
        raise ValueError(f"{source}: expected a JSON list of prompts, got {type(data).__name__}")
    prompts = []
    for i, entry in enumerate(data):
        if isinstance(entry, str):
            text, dims = entry, ()
        elif isinstance(entry, dict):
            text = entry.get("prompt_en")
            if text is None or (isinstance(text, str) and not text.strip()):
                # null, missing or blank: an export's empty column (a blank one with no
                # "prompt" beside it stays, for the "empty prompt" error)
                text = entry.get("prompt", text)
            if not isinstance(text, str):
                raise ValueError(f"{source}: entry {i} has no string 'prompt' or 'prompt_en'")
            dim = entry.get("dimension")
            dims = () if dim is None else _dimensions(dim, source, i)  # null: no tags
        else:
            raise ValueError(
                f"{source}: entry {i} must be a string or an object, got {type(entry).__name__}"
            )
        text = text.strip().strip("\ufeff").strip()  # as a .txt line: the same prompt text
        if not text:
            raise ValueError(f"{source}: entry {i} has an empty prompt")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate ("\ud83d"): tokenizers fail on it
            raise ValueError(
                f"{source}: entry {i} is not valid Unicode text (a lone surrogate, e.g. half of "
                "an emoji)"
            ) from None
        prompts.append(Prompt(i, text, dims))
    return prompts


def _dimensions(value: Any, source: str, i: int) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"{source}: entry {i} 'dimension' must be a string or a list of strings")


def read_json_prompts(path: Path) -> list[Prompt]:
    """``Prompt``s of a ``.json`` file."""
    try:
        with path.open(encoding="utf-8-sig") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a valid JSON prompt file: {e}") from None
    except OSError as e:
        raise ValueError(f"Prompt file {path} cannot be read: {e.strerror or e}") from None
    return prompts_from_json(data, str(path))


def pair_with_standard(
    standard: Sequence[Prompt], lines: Sequence[str], source: str
) -> list[Prompt]:
    """Give augmented prompt line i the index and dimension tags of standard prompt i.

    VBench's augmented lists are in the same order as ``VBench_full_info.json``.

    Raises:
        ValueError: the two lists differ in length.
    """
    if len(lines) != len(standard):
        raise ValueError(
            f"{source} has {len(lines)} prompts but the standard VBench list has "
            f"{len(standard)}; they must pair line by line"
        )
    return [Prompt(p.index, text, p.dimensions) for p, text in zip(standard, lines, strict=True)]
