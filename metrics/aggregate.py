"""The aggregate of a comparison: quality, density and speed-up over the compared videos.

Only pairs made from the same prompt text and seed (``same_input``) count. Quality aggregates
weight every video equally (``mean`` / ``std`` / ``min`` / ``max`` over per-video means;
``frame_*`` pool all frames). Speed-ups leave out pairs whose timing includes a process's
one-off costs (``timing_warm`` false: CUDA context, Triton compile and autotune) when other
pairs exist; when every pair is such a pair, ``speedup.includes_first_in_process`` counts them
and the reports say so.

Not supported: weighting videos by length, confidence intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def comparable(videos: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The compared videos that count: same prompt text and seed in both runs."""
    return [v for v in videos if v.get("same_input", True)]


def summary(values: list[float]) -> dict[str, float] | None:
    """``mean`` / ``min`` / ``max`` / ``std`` of ``values``; ``None`` when empty."""
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(a.mean()),
        "min": float(a.min()),
        "max": float(a.max()),
        "std": float(a.std()),
    }


def aggregate(videos: list[dict[str, Any]], metrics: Sequence[str]) -> dict[str, Any]:
    """The report's ``aggregate`` from its ``videos`` entries (see the module docstring)."""
    same = comparable(videos)
    agg: dict[str, Any] = {
        "num_videos": len(same),
        "num_frames": int(sum(v["num_frames"] for v in same)),
        "excluded_different_input": len(videos) - len(same),
    }
    for m in metrics:
        rows = [v[m] for v in same if v.get(m) is not None]
        if not rows:
            agg[m] = None
            continue
        stats = summary([r["mean"] for r in rows])
        frames = np.concatenate([np.asarray(r["per_frame"]) for r in rows])
        stats.update(
            frame_mean=float(frames.mean()),
            frame_min=float(frames.min()),
            frame_max=float(frames.max()),
        )
        agg[m] = stats
    for key in ("effective_density", "sparse_density", "cost_dense_share"):
        agg[key] = summary([v[key] for v in same if isinstance(v.get(key), (int, float))])
    agg["speedup"] = _speedup(same)
    return agg


def left_out_of_speedup(videos: list[dict[str, Any]]) -> set[int]:
    """Prompt indices of the pairs the aggregate speed-up leaves out: those timed first in
    their process (``timing_warm`` false: compile, autotune) while warm pairs exist (when none
    is warm, every pair counts and the aggregate says so)."""
    cold = {v["prompt_index"] for v in videos if not v.get("timing_warm", True)}
    return cold if len(cold) < len(videos) else set()


def _speedup(videos: list[dict[str, Any]]) -> dict[str, Any]:
    warm = [v for v in videos if v.get("timing_warm", True)]
    timed = warm or videos
    speed: dict[str, Any] = {
        "excluded_first_in_process": len(videos) - len(timed),
        # every pair paid one-off costs: the speed-up includes them (the reports say so)
        "includes_first_in_process": 0 if warm else len(videos),
    }
    for key, tkey in (("total", "total_s"), ("denoise", "denoise_s")):
        both = [v for v in timed if v["speedup"][key] is not None]
        stats = summary([v["speedup"][key] for v in both])
        if stats is not None:
            dense_sum = sum(v["timings"]["dense"][tkey] for v in both)
            sparse_sum = sum(v["timings"]["sparse"][tkey] for v in both)
            stats["ratio_of_sums"] = dense_sum / sparse_sum
        speed[key] = stats
    return speed
