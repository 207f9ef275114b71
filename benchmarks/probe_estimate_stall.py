"""Probe (GPU): which Gluon estimate variant stalls, if any.

One run of ``tests/test_gpu_estimate_gluon.py`` on the H200 stalled inside its fp8 test at
119,056 tokens (stride 16, key padding), which cycles through four (tile, ring, overlap)
variants; another run of the same code passed. This probe launches each variant many times on
the test's inputs (2 heads, key padding that splits a stride group, B=1 and B=2), synchronizing
after every launch, in a child process watched by this one: a child that makes no progress for
``--stall-s`` seconds is killed, the variant it was running is recorded as stalled (with the
launch index), and a new child goes on with the next variant. Prints a table and writes JSON
(GPU, versions, git SHA).

Usage: python benchmarks/probe_estimate_stall.py [--launches 300] [--stall-s 30]
       [--configs bf16:128,3,0 fp8:128,6,0 ...] [--cases 0 2] [--out results/...json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save_json  # noqa: E402
from probe_estimate_gluon import CONFIGS, parse_configs  # noqa: E402

CASES = [(1, 119056, 128, (118957,)), (1, 67576, 128, (67476,)), (2, 3000, 128, (3000, 2345))]


def variants(configs: dict, strides: list[int], cases: list[int] | None = None) -> list[tuple]:
    """(precision, block_n, stages, pre, B, n, d, lens, stride) in a fixed order; ``cases``:
    indices into CASES (all by default)."""
    out = []
    picked = [CASES[i] for i in cases] if cases is not None else CASES
    for (prec, cfgs), case, s in itertools.product(configs.items(), picked, strides):
        out += [(prec, *cfg, *case, s) for cfg in cfgs]
    return out


def child(todo: list[tuple], launches: int) -> None:
    """Run the variants in ``todo``; print BEGIN / LAUNCH / DONE lines the parent watches."""
    import torch

    from xattn_video.kernels.estimate_gluon import estimate_block_scores_gluon

    for i, (prec, bn, st, pre, B, n, d, lens, s) in todo:
        print(f"BEGIN {i}", flush=True)
        g = torch.Generator(device="cuda").manual_seed(n - s)
        q, k = (torch.randn(B, 2, n, d, device="cuda", generator=g).bfloat16() for _ in range(2))
        kv = torch.tensor(lens, device="cuda")
        for j in range(launches):
            estimate_block_scores_gluon(q, k, stride=s, block_size=128, kv_len=kv, precision=prec,
                                        block_n=bn, stages=st, pre=pre)  # fmt: skip
            torch.cuda.synchronize()
            if j % 25 == 0:
                print(f"LAUNCH {i} {j}", flush=True)
        print(f"DONE {i}", flush=True)


def child_cmd(rest: list[tuple], launches: int) -> list[str]:
    """The command of a child that runs the variants ``rest`` ((index, variant) pairs)."""
    return [sys.executable, "-P", __file__, "--child", json.dumps(rest), "--launches",
            str(launches)]  # fmt: skip


def watch(todo: list[tuple], launches: int, stall_s: float) -> list[dict]:
    """Run ``todo`` in children; restart after the variant a stalled child was running."""
    rows: list[dict] = []
    rest = list(enumerate(todo))
    while rest:
        proc = subprocess.Popen(child_cmd(rest, launches), stdout=subprocess.PIPE, text=True)
        lines: queue.Queue = queue.Queue()

        def read(out=proc.stdout, lines=lines):
            for line in out:
                lines.put(line)
            lines.put(None)  # end of the child's output

        threading.Thread(target=read, daemon=True).start()
        current, last_launch, t0 = None, -1, time.monotonic()
        while True:
            try:
                line = lines.get(timeout=stall_s)
            except queue.Empty:  # no progress: the running variant stalled
                proc.kill()
                break
            if line is None:
                break
            word, *nums = line.split() or [""]
            if word == "BEGIN":
                current, last_launch, t0 = int(nums[0]), -1, time.monotonic()
            elif word == "LAUNCH":
                last_launch = int(nums[1])
            elif word == "DONE":
                rows.append(row(todo[current], "ok", launches, time.monotonic() - t0))
                rest = [r for r in rest if r[0] != current]
                current = None
        code = proc.wait()
        if current is not None:
            status = "stalled" if code == -9 else f"exit {code}"
            rows.append(row(todo[current], status, last_launch, time.monotonic() - t0))
            rest = [r for r in rest if r[0] != current]
        elif rest:  # the child ended without starting a variant: do not loop forever
            raise SystemExit(f"the probe's child exited with {code} before its first variant")
    return rows


def row(v: tuple, status: str, launches: int, seconds: float) -> dict:
    prec, bn, st, pre, B, n, d, lens, s = v
    name = f"{prec} bn={bn} st={st} pre={pre} B={B} n={n} d={d} S={s}"
    print(f"  {name}: {status} ({launches} launches, {seconds:.1f} s)", flush=True)
    return dict(variant=name, status=status, launches=launches, seconds=seconds)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--launches", type=int, default=300)
    p.add_argument("--stall-s", type=float, default=30.0)
    p.add_argument("--strides", type=int, nargs="+", default=[8, 16])
    p.add_argument("--configs", nargs="+", metavar="PREC:BN,STAGES,PRE")
    p.add_argument(
        "--cases",
        type=int,
        nargs="+",
        choices=range(len(CASES)),
        help="indices into CASES (default: all)",
    )
    p.add_argument("--out", default="results/probe_estimate_stall.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child([(i, tuple(v[:7]) + (tuple(v[7]), v[8])) for i, v in json.loads(args.child)],
              args.launches)  # fmt: skip
        return
    configs = parse_configs(args.configs) if args.configs else CONFIGS
    rows = watch(variants(configs, args.strides, args.cases), args.launches, args.stall_s)
    print_table(rows, [("variant", "variant", "{}"), ("status", "status", "{}"),
                       ("launches", "launches", "{}"), ("seconds", "s", "{:.1f}")])  # fmt: skip
    save_json(args.out, {"benchmark": "probe_estimate_stall", "config": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
