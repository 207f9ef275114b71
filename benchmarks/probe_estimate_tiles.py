"""Probe (GPU): launch configurations of the Triton estimate, timed interleaved in one process.

For each precision and stride, every (BLOCK_M, BLOCK_N, num_warps, num_stages) of ``--configs``
runs the Triton estimate (:func:`xattn_video.kernels.estimate.estimate_block_scores` with
``kernel="triton"``, the key-tile x stride loop flattened) at video size (B=1, 24 heads, head dim
128, no key padding). Correctness against the measured table's launch first: max |diff| of the
block scores and the share of blocks whose threshold-0.9 selection differs. Then ``--rounds``
rounds, each timing every config once (median of ``bench_ms``), so a config and the table's
launch see the same clocks; the table reports the median over rounds, its share of cuDNN's
dense attention time measured in the same run, and its ratio to the table's launch. fp8 runs
take q and k quantized once beforehand (``fp8_inputs``, as the op shares them), so the rows
time the estimate kernel alone. Prints a table and writes JSON (GPU, versions, git SHA).

Usage: python benchmarks/probe_estimate_tiles.py [--n 119056] [--precisions bf16 fp8]
       [--strides 8 16] [--configs 64,128,4,4 128,128,8,3 ...] [--rounds 3]
       [--out results/probe_estimate_tiles.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import baseline_ms, bench_ms, print_table, save_json  # noqa: E402

from xattn_video.op_checks import PRECISIONS  # noqa: E402

# The wide tiles last (256 x 128 on 16 warps, 128 x 256 on 8; two stages fill sm90's shared
# memory in bf16): a tile of BM x BN groups does BM*BN/(BM+BN) FLOPs per byte of query and key
# chunks it loads, 64 for 128 x 128 and 85 for these, and at 119k tokens the bf16 S=8 estimate
# with 128 x 128 tiles loads ~170 GB (6.9 TB/s from the L2 in 25 ms). On an H100
# (docs/results/probe_estimate_tiles_*_h100_3019f3a.json) they lost in bf16 (1.11-1.50x the
# table's time) but 128 x 256 won for fp8 S=8 (0.94x at 119k, 0.82x at 67k): now its H100 entry.
CONFIGS = ["128,128,8,3", "64,128,4,4", "64,128,4,3", "64,128,4,5", "64,128,4,6", "64,64,4,6",
           "128,64,4,4", "64,256,8,3", "128,128,8,4", "256,128,16,2", "128,256,8,2"]  # fmt: skip


def parse_config(spec: str) -> tuple[int, int, int, int]:
    """``"64,128,4,4"`` -> (BLOCK_M, BLOCK_N, num_warps, num_stages); powers of two for the
    tiles and warps, 1-8 stages."""
    parts = spec.split(",")
    if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"a config is BLOCK_M,BLOCK_N,warps,stages, got {spec!r}")
    bm, bn, warps, stages = (int(p) for p in parts)
    pow2 = all(x > 0 and x & (x - 1) == 0 for x in (bm, bn, warps))
    if not (pow2 and 16 <= bm <= 256 and 16 <= bn <= 256 and warps <= 16 and 1 <= stages <= 8):
        raise argparse.ArgumentTypeError(f"tiles 16-256 and warps <= 16 (powers of two), stages "
                                         f"1-8, got {spec!r}")  # fmt: skip
    return bm, bn, warps, stages


def summarize(times: dict[str, list[float]], base_key: str, cudnn_ms: float) -> list[dict]:
    """Per config: median ms over the rounds, % of cuDNN's dense time, ratio to ``base_key``."""
    base = statistics.median(times[base_key])
    rows = []
    for key, ms in times.items():
        med = statistics.median(ms)
        rows.append(dict(config=key, ms=med, rounds=ms, pct_of_cudnn=100 * med / cudnn_ms,
                         vs_table=med / base))  # fmt: skip
    return rows


def force_fast_log2(tuning, name: str | None, on: bool) -> None:
    """Set ``fast_log2`` of every :data:`tuning.ESTIMATE_MEASURED` entry of GPU ``name`` (and of
    the fallback, :data:`tuning.SAFE_ESTIMATE`) to ``on``, for this process."""
    for key, launch in list(tuning.ESTIMATE_MEASURED.items()):
        if key[0] == name:
            tuning.ESTIMATE_MEASURED[key] = launch._replace(fast_log2=on)
    tuning.SAFE_ESTIMATE = tuning.SAFE_ESTIMATE._replace(fast_log2=on)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=119056)
    p.add_argument("--heads", type=int, default=24)
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--strides", type=int, nargs="+", default=[8, 16])
    p.add_argument("--configs", type=parse_config, nargs="+", default=None)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--fast-log2",
        choices=["table", "on", "off"],
        default="table",
        help="the block log-sum-exp's log2 on the MUFU unit: as the table says, or "
        "forced on / off for every config (the table entries are patched for the run)",
    )
    p.add_argument("--out", default="results/probe_estimate_tiles.json")
    args = p.parse_args(argv)
    configs = args.configs or [parse_config(c) for c in CONFIGS]

    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from xattn_video.kernels import tuning
    from xattn_video.kernels.estimate import estimate_block_scores
    from xattn_video.kernels.fp8 import quantize_fp8_qk
    from xattn_video.kernels.select import select_blocks
    from xattn_video.kernels.tuning import estimate_config, gpu_name

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k = (torch.randn(1, args.heads, args.n, 128, device="cuda", generator=g).bfloat16()
            for _ in range(2))  # fmt: skip
    v = torch.randn_like(q)
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        cudnn_ms = baseline_ms(lambda: F.scaled_dot_product_attention(q, k, v))
    print(f"cuDNN dense: {cudnn_ms:.2f} ms", flush=True)
    v = None  # free it for the estimate runs
    if args.fast_log2 != "table":
        force_fast_log2(tuning, gpu_name(q), args.fast_log2 == "on")
    rows: list[dict] = []
    for prec in args.precisions:
        f8 = quantize_fp8_qk(q, k, 128) if prec == "fp8" else None
        for s in args.strides:
            table = estimate_config(gpu_name(q), prec, s, 128, args.n)
            launches = {"table " + ",".join(map(str, table.tiles)): table.tiles}
            launches.update({",".join(map(str, c)): c for c in configs if c != table.tiles})

            def run(launch, s=s, prec=prec, f8=f8):
                return estimate_block_scores(q, k, stride=s, block_size=128, precision=prec,
                                             kernel="triton", launch=launch, flatten=True,
                                             fp8_inputs=f8)  # fmt: skip

            base_key = next(iter(launches))
            want = run(table.tiles)
            m_want = select_blocks(want, block_size=128, threshold=0.9)
            checks, ok = {}, {}
            for key, launch in launches.items():
                try:
                    got = run(launch)
                    m = select_blocks(got, block_size=128, threshold=0.9)
                    checks[key] = (float((got - want).abs().max()),
                                   float((m != m_want).float().mean()))  # fmt: skip
                    ok[key] = launch
                except Exception as exc:  # noqa: BLE001 (out of shared memory, ...)
                    print(f"  {prec} S={s} {key}: FAILED {type(exc).__name__}: {exc}"[:200])
            times: dict[str, list[float]] = {key: [] for key in ok}
            for _ in range(args.rounds):
                for key, launch in ok.items():
                    times[key].append(bench_ms(lambda la=launch: run(la)))
            for row in summarize(times, base_key, cudnn_ms):
                row.update(precision=prec, stride=s, fast_log2=args.fast_log2, max_diff=checks[row["config"]][0],
                           mask_diff=checks[row["config"]][1])  # fmt: skip
                rows.append(row)
                print(f"  {prec} S={s} {row['config']}: {row['ms']:.2f} ms "
                      f"({row['vs_table']:.3f}x table)", flush=True)  # fmt: skip
    print_table(rows, [("precision", "prec", "{}"), ("stride", "S", "{}"),
                       ("config", "BM,BN,warps,stages", "{}"), ("ms", "ms", "{:.2f}"),
                       ("pct_of_cudnn", "% cuDNN", "{:.2f}"), ("vs_table", "x table", "{:.3f}"),
                       ("max_diff", "max |diff|", "{:.1e}"), ("mask_diff", "mask diff", "{:.1e}")])  # fmt: skip
    save_json(
        args.out,
        {
            "probe": "probe_estimate_tiles",
            "config": vars(args) | {"configs": [list(c) for c in configs]},
            "cudnn_ms": cudnn_ms,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
