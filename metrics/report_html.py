"""Render a compare report dict as a static HTML page (``report.html``).

The page has no scripts and no external resources; figures are PNG files next to it, referenced by
relative path, so the folder can be copied or zipped as a whole.

Not supported: interactive tables, viewing the mp4s inline, embedding the PNGs into the HTML.
"""

from __future__ import annotations

from html import escape
from typing import Any

from .aggregate import comparable
from .report_tables import aggregate_table, lpips_line, method_text, run_summary, video_table

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td.text { text-align: left; max-width: 28em; }
.warn { background: #fff4e5; border-left: 4px solid #f0a030; padding: 0.5em 1em; }
.danger { background: #fde8e8; border-left: 4px solid #d33; padding: 0.5em 1em; }
figure { margin: 1.5em 0; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; }
"""


def html_table(header: list[str], rows: list[list[str]], text_col: int | None = None) -> str:
    """An escaped HTML table; column ``text_col`` is left-aligned."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            cls = ' class="text"' if i == text_col or i == 0 else ""
            cells.append(f"<td{cls}>{escape(c)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(src: str | None, alt: str, caption: str, missing: str) -> str:
    if src is None:
        return f"<p><em>{escape(missing)}</em></p>"
    return (
        f'<figure><img src="{escape(src)}" alt="{escape(alt)}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def _no_density_plot(report: dict[str, Any]) -> str:
    """Why the quality-vs-density plot (PSNR against effective density) is missing."""
    if "psnr" not in report["metrics"]:
        return "Quality vs density: not drawn, PSNR was not computed (not in the metrics)."
    if not any(v.get("effective_density") is not None for v in comparable(report["videos"])):
        return "Quality vs density: no density recorded in the sparse run's meta.json."
    return "Quality vs density: no video has both a PSNR value and a density."


def render_html(report: dict[str, Any]) -> str:
    """The whole ``report.html`` text (HTML5, UTF-8)."""
    agg, figs = report["aggregate"], report["figures"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        "<title>Dense vs sparse attention: video quality report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Dense vs sparse attention: video quality report</h1>",
    ]
    backbone = report.get("lpips_backbone") or {}
    if backbone.get("weights") is None and report.get("lpips_backbone"):
        parts.append(
            '<p class="danger"><strong>LPIPS below uses a RANDOM backbone (testing only). '
            "Its values are not LPIPS and must not be reported.</strong></p>"
        )
    items = [
        f"Dense (reference) run: {run_summary(report, 'dense')}",
        f"Sparse run: {run_summary(report, 'sparse')}",
        f"Videos compared: {agg['num_videos']} ({agg['num_frames']} frames)",
    ]
    lp = lpips_line(report)
    if lp:
        items.append(lp)
    un = report["unpaired"]
    if un["dense_only"] or un["sparse_only"]:
        items.append(
            f"Unpaired (skipped): only dense {un['dense_only']}, only sparse {un['sparse_only']}"
        )
    unf = report["unfinished"]
    if unf["dense"] or unf["sparse"]:
        items.append(f"Unfinished: dense {unf['dense']}, sparse {unf['sparse']}")
    parts.append("<ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>")
    parts.append(f"<p>{escape(method_text(report))}</p>")
    if report["warnings"]:
        parts.append(
            '<div class="warn"><strong>Warnings</strong><ul>'
            + "".join(f"<li>{escape(w)}</li>" for w in report["warnings"])
            + "</ul></div>"
        )
    parts += ["<h2>Aggregate</h2>", html_table(*aggregate_table(report))]
    header, rows = video_table(report)
    parts += ["<h2>Per video</h2>", html_table(header, rows, text_col=1)]
    parts.append("<h2>Figures</h2>")
    parts.append(
        _figure(
            figs.get("quality_vs_density"),
            "PSNR versus effective density",
            "Per-prompt mean PSNR against the effective attention density of the sparse run.",
            _no_density_plot(report),
        )
    )
    parts.append(
        _figure(
            figs.get("per_prompt"),
            "Per-prompt metric bars",
            "Per-prompt mean over frames of each metric.",
            "Per-prompt bars: no metric values.",
        )
    )
    parts.append(
        _figure(
            figs.get("speedup"),
            "Speed-up per prompt",
            "Dense time / sparse time, end to end and for denoising only.",
            "Speed-up: no timings recorded in meta.json.",
        )
    )
    for strip in figs.get("strips", []):
        parts.append(
            _figure(
                strip["file"],
                f"{strip['label']} prompt frames, dense above sparse",
                f"{strip['label'].capitalize()} prompt by PSNR: {strip['prompt_index']:05d} "
                f"(mean {strip['psnr_mean']:.2f} dB). Top row dense, bottom row sparse.",
                "",
            )
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
