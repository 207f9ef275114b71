"""Turn a compare report dict into plain table rows (strings), shared by the Markdown and HTML views.

Not supported: localisation, custom column sets.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Any

from xattn_video.rundir import clipped

from .aggregate import comparable, left_out_of_speedup
from .psnr import MSE_FLOOR

METRIC_LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS"}
_DIGITS = {"psnr": 2, "ssim": 4, "lpips": 4}


def fmt(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals, ``n/a`` for ``None``."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


_BIDI = frozenset("\u200e\u200f\u061c\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _visible(c: str) -> str:
    if unicodedata.category(c) == "Cc":
        return f"\\x{ord(c):02x}"
    return f"\\u{ord(c):04x}" if c in _BIDI else c


def short(text: str | None, limit: int = 70) -> str:
    """One-line text cut to ``limit`` characters; control characters (ESC, BEL, NUL, ... of a
    prompt) shown as ``\\xNN`` and bidi controls (a right-to-left override reversed the rest
    of a report.md row: a PSNR of 38.56 read 65.83) as ``\\uNNNN``, so a report neither runs
    terminal sequences, reads as binary nor shows its numbers reordered."""
    if not text:
        return ""
    text = " ".join(text.split())
    return "".join(_visible(c) for c in clipped(text, limit))  # cut, then escaped: none cut


def aggregate_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per metric, density and speed-up."""
    header = ["quantity", "mean", "std", "min", "max", "all-frames mean", "worst frame"]
    rows = []
    agg = report["aggregate"]
    for m in report["metrics"]:
        s, d = agg.get(m), _DIGITS[m]
        if s is None:
            reason = "skipped" if m == "lpips" and report.get("lpips_skipped") else "n/a"
            rows.append([METRIC_LABELS[m], reason, "", "", "", "", ""])
            continue
        worst = s["frame_max"] if m == "lpips" else s["frame_min"]
        rows.append(
            [METRIC_LABELS[m]]
            + [fmt(s[k], d) for k in ("mean", "std", "min", "max", "frame_mean")]
            + [fmt(worst, d)]
        )
    for key, label in (
        ("effective_density", "effective density"),
        ("sparse_density", "sparse-call density"),
        ("cost_dense_share", "calls run dense by auto_dense"),
    ):
        s = agg.get(key)
        rows.append(
            [label]
            + ([fmt(s[k], 3) for k in ("mean", "std", "min", "max")] if s else ["n/a", "", "", ""])
            + ["", ""]
        )
    skipped = agg["speedup"].get("excluded_first_in_process") or 0
    included = agg["speedup"].get("includes_first_in_process") or 0
    notes = [f"{skipped} first-in-process video(s) left out"] if skipped else []
    if included:
        notes.append(
            f"all {included} pair(s) hold a first-in-process video: includes compile / "
            "autotune / start-up"
        )
    note = " (" + "; ".join([modes_text(report), *notes]) + ")"
    for key, label in (("total", "speed-up, end to end"), ("denoise", "speed-up, denoising")):
        label += note
        s = agg["speedup"].get(key)
        if s is None:
            rows.append([label, "n/a", "", "", "", "", ""])
        else:
            rows.append(
                [label]
                + [fmt(s[k], 2) for k in ("mean", "std", "min", "max")]
                + [f"{fmt(s['ratio_of_sums'], 2)} (total time ratio)", ""]
            )
    return header, rows


def video_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and one row per compared video."""
    header = ["prompt", "text", "frames"]
    for m in report["metrics"]:
        worst = "max" if m == "lpips" else "min"
        header += [f"{METRIC_LABELS[m]} mean", f"{METRIC_LABELS[m]} {worst}"]
    header += ["eff. density", "sparse density", "speed-up total", "speed-up denoise"]
    marked = any(not v.get("same_input", True) for v in report["videos"])
    if marked:
        header.append("in aggregate")
    cold = left_out_of_speedup(comparable(report["videos"]))
    if cold:
        header.append("in speed-up")
    rows = []
    for v in report["videos"]:
        row = [f"{v['prompt_index']:05d}", short(v.get("prompt")), str(v["num_frames"])]
        for m in report["metrics"]:
            s, d = v.get(m), _DIGITS[m]
            worst = "max" if m == "lpips" else "min"
            row += [fmt(s["mean"], d), fmt(s[worst], d)] if s else ["n/a", "n/a"]
        row += [
            fmt(v.get("effective_density"), 3),
            fmt(v.get("sparse_density"), 3),
            fmt(v["speedup"]["total"], 2),
            fmt(v["speedup"]["denoise"], 2),
        ]
        if marked:
            differ = " and ".join(v.get("differs") or ["prompt or seed"])
            theirs = ", ".join(
                f"{k} '{short(x, 40)}'" if isinstance(x, str) else f"{k} {x}"  # escaped once
                for k, x in (v.get("sparse_input") or {}).items()
            )  # the row's prompt and seed are the dense run's
            theirs = f" (sparse: {theirs})" if theirs else ""
            row.append("yes" if v.get("same_input", True) else f"no: {differ} differs{theirs}")
        if cold:
            if not v.get("same_input", True):
                row.append("no: not in the aggregate")
            elif all(v["speedup"][k] is None for k in ("total", "denoise")):
                row.append("no: no timings")
            else:
                row.append("no: first in its process" if v["prompt_index"] in cold else "yes")
        rows.append(row)
    return header, rows


def method_text(report: dict[str, Any]) -> str:
    """How the metrics were computed: on which frames (lossless ``frames.npy`` or decoded mp4),
    averaged how."""
    lossy = [
        v["prompt_index"]
        for v in report["videos"]
        if "video.mp4" in (v.get("frames_source") or {}).values()
    ]
    if not lossy:
        frames = "on lossless frames (frames.npy)"
    elif len(lossy) == len(report["videos"]):
        frames = "on decoded video.mp4 (lossy: codec noise bounds PSNR)"
    else:
        frames = (
            f"on lossless frames (frames.npy), except decoded video.mp4 (lossy) for prompts "
            f"{', '.join(f'{i:05d}' for i in lossy)}"
        )
    text = (
        f"Metrics are computed per frame {frames} and averaged per video; aggregates weight "
        "videos equally. Speed-up = dense time / sparse time."
    )
    capped, total, cap = psnr_capped_frames(report)
    if capped:
        text += (
            f" PSNR is capped at {cap:g} dB where a frame's MSE is below the floor (identical "
            f"frames, or nearly): {capped} of {total} frames here."
        )
    return text


def psnr_capped_frames(report: dict[str, Any]) -> tuple[int, int, float]:
    """(frames whose PSNR is the cap, frames with a PSNR, the cap in dB) over the report's
    videos in the aggregate (a pair left out for another prompt or seed is not): a frame whose
    MSE is below ``mse_floor`` (identical, or a few values one level off at video sizes) gets
    ``10 * log10(1 / mse_floor)`` (100 dB), which the means average like a measurement."""
    floor = ((report.get("settings") or {}).get("psnr") or {}).get("mse_floor", MSE_FLOOR)
    cap = 10 * math.log10(1 / floor)
    videos = comparable(report.get("videos") or [])
    per_frame = [x for v in videos if v.get("psnr") for x in v["psnr"]["per_frame"]]
    return sum(x >= cap - 1e-9 for x in per_frame), len(per_frame), cap


def modes_text(report: dict[str, Any]) -> str:
    """``"both eager"`` / ``"both compiled:default"``, or ``"dense eager vs sparse
    compiled:default: not comparable"`` (reports from before ``modes`` existed: eager)."""
    modes = report.get("modes") or {}
    dense, sparse = modes.get("dense", "eager"), modes.get("sparse", "eager")
    if dense == sparse:
        return f"both {dense}"
    return f"dense {dense} vs sparse {sparse}: not comparable"


def run_summary(report: dict[str, Any], role: str) -> str:
    """One line about the dense or sparse run: path, model, attention, mode, GPU."""
    info = report.get(f"{role}_run") or {}
    parts = [report[f"{role}_dir"]]
    for key in ("model", "attention"):
        if info.get(key):
            parts.append(f"{key}={info[key]}")
    parts.append(f"mode={(report.get('modes') or {}).get(role, 'eager')}")
    gpu = report["gpu"][role]  # null: run off CUDA (generate's convention, RunRecord.device_type)
    parts.append(f"GPU={gpu}" if gpu else "device=CPU")
    return ", ".join(parts)


def lpips_line(report: dict[str, Any]) -> str | None:
    """How LPIPS was computed or why it was skipped; ``None`` when not requested."""
    if "lpips" not in report["metrics"]:
        return None
    if report.get("lpips_skipped"):
        return f"LPIPS skipped: {report['lpips_skipped']}"
    b = report.get("lpips_backbone") or {}
    line = f"LPIPS {b.get('net')} v{b.get('version')}, backbone: {b.get('backbone')}, weights: {b.get('weights')}"
    if b.get("features_sha256"):  # the tensors' digest: the same weights in any file format
        line += f" ({b.get('source')}; tensors sha256 {b['features_sha256'][:16]}"
        if b.get("file_sha256"):
            line += f", file sha256 {b['file_sha256'][:16]}"
        line += ")"
    return line
