"""Render a compare report dict as Markdown (``report.md``).

Not supported: embedded figures (see ``report.html``), per-frame tables (see ``report.json``).
"""

from __future__ import annotations

import html
import re
from typing import Any

from .report_tables import aggregate_table, lpips_line, method_text, run_summary, video_table

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_|~\[\]$])")  # $: GitHub renders $...$ as maths


def _cell(text: str) -> str:
    """``text`` as literal Markdown text (table cells, list items): HTML-escaped (a prompt's
    ``<open>`` was a raw tag in the rendered file) and Markdown's emphasis, strikethrough,
    code, link and cell characters backslashed (a run folder ``__dense__`` came out bold)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(text, quote=False)).replace("\n", " ")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    """The whole ``report.md`` text."""
    agg = report["aggregate"]
    out = ["# Dense vs sparse attention: video quality report", ""]
    items = [
        f"Dense (reference) run: {run_summary(report, 'dense')}",
        f"Sparse run: {run_summary(report, 'sparse')}",
        f"Videos compared: {agg['num_videos']} ({agg['num_frames']} frames)",
    ]
    lp = lpips_line(report)
    if lp:
        items.append(lp)
    unpaired = report["unpaired"]
    if unpaired["dense_only"] or unpaired["sparse_only"]:
        items.append(
            f"Unpaired (skipped): only dense {unpaired['dense_only']}, "
            f"only sparse {unpaired['sparse_only']}"
        )
    unfinished = report["unfinished"]
    if unfinished["dense"] or unfinished["sparse"]:
        items.append(f"Unfinished: dense {unfinished['dense']}, sparse {unfinished['sparse']}")
    items.append(method_text(report))
    out += [f"- {_cell(item)}" for item in items]
    out += ["", "## Aggregate", "", markdown_table(*aggregate_table(report)), ""]
    out += ["## Per video", "", markdown_table(*video_table(report)), ""]
    if report["warnings"]:
        out += ["## Warnings", ""] + [f"- {_cell(w)}" for w in report["warnings"]] + [""]
    return "\n".join(out)
