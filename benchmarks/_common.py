"""Shared benchmark helpers: environment record, timing, table printing, JSON output."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from pathlib import Path

import torch

from xattn_video.pipelines.runinfo import git_sha

_SHA_AT_START = git_sha(Path(__file__).resolve().parent)
"""The checkout's SHA when the benchmark started (imported this module): a commit or edit
made in the checkout during a long run is not recorded as the code that ran."""


def auto_estimate_of_bf16() -> dict[str, str]:
    """What ``estimate_precision="auto"`` runs for bf16 attention on this machine's GPU (the
    CPU without one), per head dim: since ``6208e35`` the fp8 estimate on Hopper at 64 / 128.
    Recorded with every result, so a row that names no estimate precision can be read."""
    from xattn_video.op_checks import resolve_estimate_precision

    device = "cuda" if torch.cuda.is_available() else None
    return {
        str(d): resolve_estimate_precision(
            "auto", "bf16", backend="auto", device=device, head_dim=d
        )  # fmt: skip
        for d in (16, 32, 64, 128)
    }


def environment() -> dict:
    """GPU name, library versions and git SHA, stored with every benchmark result."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:  # pragma: no cover
        triton_version = None
    try:
        import diffusers

        diffusers_version = diffusers.__version__
    except ImportError:  # pragma: no cover
        diffusers_version = None
    # XATTN_VIDEO_GIT_SHA: set by callers that copy the tree (the copy may carry a stale .git)
    sha = os.environ.get("XATTN_VIDEO_GIT_SHA") or _SHA_AT_START
    return {
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "auto_estimate_of_bf16": auto_estimate_of_bf16(),
        "torch": torch.__version__,
        "triton": triton_version,
        "diffusers": diffusers_version,
        "cuda": torch.version.cuda,
        "git_sha": sha,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


@contextlib.contextmanager
def qk_prep_fused(fused: bool):
    """With ``fused=False``, the processors prepare q and k with their torch code (what they ran
    before the fused kernel, :mod:`xattn_video.qk_prep`) until the block exits; True: as is."""
    from xattn_video import qk_prep

    real = qk_prep.fused_available
    if not fused:
        qk_prep.fused_available = lambda *args, **kw: False
    try:
        yield
    finally:
        qk_prep.fused_available = real


def bench_ms(fn, *, warmup_ms: int = 100, rep_ms: int = 500, min_reps: int = 5) -> float:
    """Median milliseconds of ``fn()`` over at least ``min_reps`` calls timed with CUDA events
    (triton.testing.do_bench, L2 cleared before each call). do_bench times about
    ``rep_ms / (one call)`` calls, one for a call over ``rep_ms / 2`` (a 119k-token dense
    attention): such a call is timed again over ``1.5 * min_reps`` calls' worth of time."""
    import statistics

    import triton.testing

    rep = rep_ms
    for _ in range(3):
        times = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep, return_mode="all")
        if len(times) >= min_reps:
            break
        rep = 1.5 * min_reps * statistics.median(times)
    return float(statistics.median(times))


def baseline_ms(fn, warm_calls: int = 3) -> float:
    """:func:`bench_ms` of a dense baseline after ``warm_calls`` untimed calls, a synchronize and
    one more call timed and dropped (:func:`median_ms` with one rep): on an H100 a process's
    first back-to-back timing of cuDNN at 67k tokens ran 6% slower without them (105.8 ms at
    ``2868e99`` against 99.7 at ``604572e``, docs/attention-kernels.md)."""
    median_ms(fn, 1, warmup=warm_calls)
    return bench_ms(fn)


def profile_one_call(fn) -> None:
    """Call ``fn()`` once to compile, then once more between ``cudaProfilerStart`` /
    ``cudaProfilerStop``, so ``ncu --profile-from-start off`` sees exactly that call."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    fn()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


def call_times_ms(fn, reps: int) -> list[float]:
    """Each of ``reps`` calls of ``fn`` timed with CUDA events, synchronized after each."""
    import torch

    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def median_ms(fn, reps: int, warmup: int = 1) -> float:
    """Median of ``reps`` CUDA-event timings of ``fn`` after ``warmup`` calls (a fixed count,
    where :func:`bench_ms` repeats for a fixed time)."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    return statistics.median(call_times_ms(fn, reps))


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """rows: dicts; columns: (key, header, format) e.g. ("ms", "median ms", "{:.2f}")."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append(["" if r.get(k) is None else fmt.format(r[k]) for k, _, fmt in columns])
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    for n, line in enumerate(cells):
        print(" | ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))
        if n == 0:
            print("-|-".join("-" * w for w in widths))


def report(rows: list[dict], columns: list[tuple[str, str, str]], out: str | Path,
           config: dict) -> None:  # fmt: skip
    """The end of a benchmark: print the table of ``rows``, write them with ``config`` (and the
    environment) as JSON to ``out`` (``"complete": true``), say where."""
    print()
    print_table(rows, columns)
    save_json(out, {"config": config, "rows": rows, "complete": True})
    print(f"\nwrote {out}")


@contextlib.contextmanager
def keeping_rows(out: str | Path, config: dict):
    """``with keeping_rows(out, config) as (rows, save):`` the rows list a benchmark fills.
    ``save()`` after each finished group of rows (a length, a resolution) writes them to
    ``out`` with ``"complete": false``, so a crash or a kill keeps them; an exception or
    Ctrl-C inside writes the rows measured so far with its ``"error"``, then goes on. The
    complete file is :func:`report`'s."""
    rows: list[dict] = []

    def save(error: str | None = None) -> None:
        extra = {} if error is None else {"error": error}
        save_json(out, {"config": config, "rows": rows, "complete": False, **extra})

    try:
        yield rows, save
    except BaseException as e:
        save(f"{type(e).__name__}: {e}")  # no rows yet: the error is still the run's record
        print(f"\nwrote the {len(rows)} rows measured before the error to {out}", flush=True)
        raise


def save_json(path: str | Path, payload: dict) -> None:
    """Write ``payload`` (with the environment record added) as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"environment": environment(), **payload}, indent=2))
