"""Probe (GPU): how a card's power cap moves cuDNN dense and the whole op, by how they are timed.

On one H100 (700 W cap) ``bench_attention``'s back-to-back cuDNN row at 67k tokens ran 6-10%
slower than cuDNN timed call by call. Per sequence length (B=1, 24 heads, head dim 128, bf16)
and per function (cuDNN SDPA dense; ``xattention`` at ratio 0.3, S=8, bf16) this times:
  - ``cold``: after ``--idle`` seconds of an idle card, ``--calls`` calls one by one, each timed
    with CUDA events and synchronized (every call's time kept: the first ones show how long the
    clock stays up after idle);
  - ``back-to-back``: ``bench_ms`` (do_bench, ~0.5 s of calls, what ``bench_attention`` uses);
  - ``warm call by call``: right after, 8 synchronized calls (``median_ms``, what
    ``bench_attention``'s "call by call" row and ``probe_op_ab.py`` use, there after idle).
For each phase the SM clock, power and power-capped share from ``nvidia-smi``
(``_gpu_monitor.py``). Prints a table; writes JSON with the GPU, versions and git SHA.

Not supported: other shapes, fp8 (edit the constants), and setting clocks (it measures the card
as it is).

Usage: python benchmarks/probe_power_cap.py [--seq 67576 119056] [--out results/power.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_ms, call_times_ms, median_ms, report  # noqa: E402
from _gpu_monitor import COLUMNS as GPU_COLUMNS  # noqa: E402
from _gpu_monitor import GpuMonitor, row_fields  # noqa: E402

from xattn_video.attention import xattention  # noqa: E402


def run(n: int, idle_s: float, calls: int, monitor: GpuMonitor) -> list[dict]:
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (
        torch.randn(1, 24, n, 128, device="cuda", dtype=torch.bfloat16, generator=g)
        for _ in range(3)
    )

    def cudnn():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v)

    def op():  # all-bf16, as bench_attention's row ("auto" is the fp8 estimate on Hopper)
        return xattention(q, k, v, ratio=0.3, stride=8, block_size=128, estimate_precision="bf16")

    rows = []
    for name, fn in (("cuDNN dense", cudnn), ("xattention bf16 ratio=0.3 S=8", op)):
        fn()  # compile / plan outside the timings
        torch.cuda.synchronize()
        time.sleep(idle_s)
        t0 = time.time()
        cold = call_times_ms(fn, calls)
        t1 = time.time()
        hot = bench_ms(fn)
        t2 = time.time()
        warm = median_ms(fn, 8, warmup=0)
        t3 = time.time()
        for phase, ms, window, extra in (
            ("cold", statistics.median(cold), (t0, t1), {"per_call_ms": cold}),
            ("back-to-back", hot, (t1, t2), {}),
            ("warm call by call", warm, (t2, t3), {}),
        ):
            first = [round(x, 1) for x in cold[:4]] if phase == "cold" else None
            gpu = row_fields(monitor.window(*window))
            rows.append(dict(n=n, what=name, phase=phase, ms=ms, **extra, first_calls_ms=first,
                             **gpu))  # fmt: skip
            print(f"  N={n} {name} {phase}: {ms:.2f} ms {gpu['gpu_clocks']}", flush=True)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seq", type=int, nargs="+", default=[67576, 119056])
    p.add_argument("--idle", type=float, default=5.0, help="idle seconds before the cold calls")
    p.add_argument("--calls", type=int, default=16, help="calls timed one by one after idle")
    p.add_argument("--out", default="results/probe_power_cap.json")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("probe_power_cap needs a CUDA GPU")
    rows = []
    with GpuMonitor(period_ms=50) as monitor:
        for n in args.seq:
            rows += run(n, args.idle, args.calls, monitor)
    if monitor.error:
        print(f"GPU clocks not recorded: {monitor.error}", flush=True)
    columns = [("n", "N", "{}"), ("what", "what", "{}"), ("phase", "phase", "{}"),
               ("ms", "median ms", "{:.2f}"), *GPU_COLUMNS,
               ("first_calls_ms", "first calls after idle, ms", "{}")]  # fmt: skip
    report(rows, columns, args.out, vars(args))


if __name__ == "__main__":
    main()
