"""PNG figures for the compare report, drawn with matplotlib's object API (Agg, no pyplot state).

Each function writes one PNG and returns ``True``, or returns ``False`` without writing when the
data it needs is absent (e.g. no density recorded), so the report can say so instead of showing a
broken image.

Not supported: interactive plots, SVG/PDF output, plots across more than two runs.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from xattn_video.atomic import atomic_path

DPI = 100
_LABELS = {"psnr": "PSNR (dB) ↑", "ssim": "SSIM ↑", "lpips": "LPIPS ↓"}


def _save(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:  # a stopped compare leaves no cut PNG
        fig.savefig(tmp, dpi=DPI, format="png")


def _mean(video: dict[str, Any], metric: str) -> float | None:
    m = video.get(metric)
    return None if m is None else m["mean"]


def quality_vs_density(videos: Sequence[dict[str, Any]], path: Path) -> bool:
    """Scatter of per-video mean PSNR against effective density (labelled by prompt index)."""
    pts = [
        (v["effective_density"], _mean(v, "psnr"), v["prompt_index"])
        for v in videos
        if v.get("effective_density") is not None and _mean(v, "psnr") is not None
    ]
    if not pts:
        return False
    fig = Figure(figsize=(6, 4.2))
    ax = fig.subplots()
    x, y, idx = zip(*pts, strict=True)
    ax.scatter(x, y, s=28, color="tab:blue")
    if len(pts) <= 40:
        for xi, yi, i in pts:
            ax.annotate(f"{i}", (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xlabel("effective attention density (1.0 = dense)")
    ax.set_ylabel("PSNR vs dense (dB)")
    ax.set_title("Quality vs density, one point per prompt")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    return True


def metric_bars(videos: Sequence[dict[str, Any]], metrics: Sequence[str], path: Path) -> bool:
    """One bar panel per metric (PSNR/SSIM/LPIPS), one bar per prompt (mean over frames)."""
    present = [m for m in metrics if any(_mean(v, m) is not None for v in videos)]
    if not present or not videos:
        return False
    n = len(videos)
    width = min(max(6.0, 0.28 * n + 2), 40.0)
    fig = Figure(figsize=(width, 2.4 * len(present) + 0.6))
    axes = np.atleast_1d(fig.subplots(len(present), 1, sharex=True))
    labels = [str(v["prompt_index"]) for v in videos]
    pos = np.arange(n)
    for ax, m in zip(axes, present, strict=True):
        vals = [_mean(v, m) if _mean(v, m) is not None else np.nan for v in videos]
        ax.bar(pos, vals, color="tab:green" if m != "lpips" else "tab:red")
        ax.set_ylabel(_LABELS.get(m, m))
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(pos)
    axes[-1].set_xticklabels(labels if n <= 80 else [""] * n, rotation=90, fontsize=7)
    axes[-1].set_xlabel("prompt index")
    axes[0].set_title("Sparse vs dense, per prompt (mean over frames)")
    fig.tight_layout()
    _save(fig, path)
    return True


def speedup_bars(
    videos: Sequence[dict[str, Any]], path: Path, left_out: Collection[int] = ()
) -> bool:
    """Grouped bars of end-to-end and denoising speed-up (dense time / sparse time) per prompt;
    the prompts in ``left_out`` (first in their process, not in the aggregate speed-up) pale
    and hatched, and the title says so."""
    rows = [v for v in videos if any(v["speedup"].get(k) is not None for k in ("total", "denoise"))]
    if not rows:
        return False
    n = len(rows)
    fig = Figure(figsize=(min(max(6.0, 0.35 * n + 2), 40.0), 3.6))
    ax = fig.subplots()
    pos = np.arange(n)
    for off, key, color in ((-0.2, "total", "tab:blue"), (0.2, "denoise", "tab:orange")):
        vals = [v["speedup"].get(key) for v in rows]
        bars = ax.bar(pos + off, [np.nan if s is None else s for s in vals], 0.4, label=key,
                      color=color)  # fmt: skip
        for bar, v in zip(bars, rows, strict=True):
            if v["prompt_index"] in left_out:
                bar.set_alpha(0.35)
                bar.set_hatch("//")
    if any(v["prompt_index"] in left_out for v in rows):
        ax.set_title("hatched: first in its process (compile, autotune), not in the speed-up",
                     fontsize=9)  # fmt: skip
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(pos)
    ax.set_xticklabels([str(v["prompt_index"]) if n <= 80 else "" for v in rows], rotation=90)
    ax.set_xlabel("prompt index")
    ax.set_ylabel("speed-up (dense s / sparse s)")
    # the key's own patches: a legend built from the first bars drew them hatched whenever the
    # first prompt was left out
    handles = [
        Patch(color=c, label=k) for k, c in (("total", "tab:blue"), ("denoise", "tab:orange"))
    ]
    ax.legend(handles=handles, title="timing", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    return True


def strip_frame_ids(num_frames: int, n: int) -> list[int]:
    """Up to ``n`` distinct frame indices evenly spaced over ``0..num_frames-1``."""
    return sorted({int(round(i)) for i in np.linspace(0, num_frames - 1, max(1, n))})


def frame_strip(
    dense: np.ndarray, sparse: np.ndarray, title: str, path: Path, n_frames: int = 4
) -> bool:
    """Two rows (dense above, sparse below) of evenly spaced frames.

    Args:
        dense: (T, H, W, 3) uint8.
        sparse: (T, H, W, 3) uint8, same shape.
    """
    ids = strip_frame_ids(dense.shape[0], n_frames)
    h, w = dense.shape[1:3]
    panel_w = 2.8
    panel_h = panel_w * h / w
    fig = Figure(figsize=(panel_w * len(ids), 2 * panel_h + 0.7))
    axes = np.asarray(fig.subplots(2, len(ids), squeeze=False))
    for col, t in enumerate(ids):
        for row, (name, video) in enumerate((("dense", dense), ("sparse", sparse))):
            ax = axes[row, col]
            ax.imshow(video[t], interpolation="antialiased")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}, frame {t}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    return True
