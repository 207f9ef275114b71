"""Attention-level speed: dense baselines vs our block-sparse kernel and estimate (one GPU).

For each sequence length (HunyuanVideo 720p and 544p at 129 frames, 24 heads, head dim 128,
bf16, B=1) it times, in one process:
  - PyTorch SDPA with the cuDNN backend and with the flash (FA2) backend (dense baselines);
    cuDNN first after 3 untimed calls (without them a process's first back-to-back timing of
    cuDNN ran 6% slow at 67k tokens on one H100, see docs/attention-kernels.md), then call by
    call (8 calls, each synchronized) and once more, back to back, after every other row (the
    baseline's drift within the run); the ratios are against the first row;
  - FlexAttention (compiled) with the same block mask as ours, at each pinned density;
  - our block-sparse kernel at pinned densities (ratio mode over random scores): the kernel
    picked on this GPU (on sm90 at these sizes the Gluon one, then also the Triton Hopper kernel
    it replaced), the portable one, and fp8 (on sm90 both the Gluon and the Triton fp8 kernel);
    and the mask-to-index-list conversion it needs (torch code, and the op's CSR kernel);
  - our fused estimate at S=8 and S=16 (bf16 and fp8; on sm90 also the other of the Triton and
    the experimental Gluon estimate), and the selection step (torch code, and the op's fused
    selection at tau 0.9 and ratio 0.3);
  - the whole op (estimate + select at ratio 0.3 + sparse attention), bf16 and fp8, composed
    from the op's kernels and through ``xattention`` (also with ``estimate_precision="fp8"``, and on
    sm90 with ``estimate_kernel="prefer-gluon"``).
Prints a table (median ms, ratio to cuDNN dense, density, effective TFLOP/s = density x dense
FLOPs / time, and what the card ran at during the row: median SM clock, mean power, the share
of samples the power cap held the clock down, from ``nvidia-smi``, see ``_gpu_monitor.py``) and
writes JSON with the GPU, versions and git SHA.

Usage: python benchmarks/bench_attention.py [--seq 119056 67576] [--out results/attn.json]
"""

from __future__ import annotations

import argparse
import math
import sys
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import baseline_ms, bench_ms, environment, keeping_rows, median_ms, report  # noqa: E402
from _gpu_monitor import COLUMNS as GPU_COLUMNS  # noqa: E402
from _gpu_monitor import GpuMonitor, RowWindows, attach  # noqa: E402

from xattn_video.attention import attention_flops, xattention  # noqa: E402
from xattn_video.config import XAttentionConfig  # noqa: E402
from xattn_video.kernels.estimate import estimate_block_scores  # noqa: E402
from xattn_video.kernels.select import mask_to_indices, select_blocks  # noqa: E402
from xattn_video.kernels.select_fused import mask_to_csr, select_blocks_fused  # noqa: E402
from xattn_video.kernels.sparse_attention import block_sparse_attention_fwd  # noqa: E402
from xattn_video.kernels.tuning import attention_kernel_for, estimate_kernel_for  # noqa: E402

BLOCK = 128


def _sdpa(backend):
    from torch.nn.attention import sdpa_kernel

    def run(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v)

    return run


def _flex_runner(counts, indices, n):
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    bm = BlockMask.from_kv_blocks(
        counts, indices, BLOCK_SIZE=BLOCK, seq_lengths=(n, n)
    )  # every listed block is computed; no mask_mod (fastest flex path)
    flex = torch.compile(flex_attention, dynamic=False)
    return lambda q, k, v: flex(q, k, v, block_mask=bm)


def _gluon_estimate_runs(q, k, stride) -> bool:
    """Whether the Gluon estimate can run on these inputs (sm90, supported shape)."""
    try:
        estimate_kernel_for(q, k, stride, BLOCK, kernel="gluon")
    except ValueError:
        return False
    return True


def _whole_op(q, k, v, precision, est_precision, ratio=0.3, stride=8):
    """The op composed from its kernels: estimate, fused selection, CSR lists, attention."""
    scores = estimate_block_scores(q, k, stride=stride, block_size=BLOCK, precision=est_precision)
    mask = select_blocks_fused(scores, block_size=BLOCK, ratio=ratio)
    counts, indices = mask_to_csr(mask, block_size=BLOCK, n_k=k.shape[2])
    return block_sparse_attention_fwd(
        q, k, v, counts, indices, block_size=BLOCK, precision=precision
    )


def _cudnn_baseline(cudnn, add) -> None:
    """The first rows: cuDNN back to back (``rows[0]``, the ratios' baseline), after 3 calls
    that build its plan and load the card (on an H100 at 67k tokens a process's first
    back-to-back timing of cuDNN without them ran 6% slower: 105.8 ms at ``2868e99`` against
    99.7 at ``604572e``), then call by call (8 calls, each synchronized)."""
    add("sdpa cuDNN dense", baseline_ms(cudnn))
    add("sdpa cuDNN dense, call by call", median_ms(cudnn, 8, warmup=2))


def run_length(
    n: int,
    heads: int,
    dim: int,
    densities,
    strides,
    args,
    monitor=None,
    device: str = "cuda",
    sink: list[dict] | None = None,
) -> list[dict]:
    """The rows of one sequence length; ``device`` other than CUDA only for the CPU test of
    the rows' arithmetic (its timings faked). ``sink``: a list each row also goes into as it
    is measured (the run's, which :func:`_common.keeping_rows` writes on an error)."""
    dev = device
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (
        torch.randn(1, heads, n, dim, device=dev, dtype=torch.bfloat16, generator=g)
        for _ in range(3)
    )
    flops = attention_flops(1, heads, n, n, dim)
    rows: list[dict] = []
    kernel = attention_kernel_for(q, k, v, BLOCK)  # what "ours sparse" runs
    fp8_kernel = attention_kernel_for(q, k, v, BLOCK, precision="fp8")  # "ours sparse fp8"
    fp8_ok = fp8_kernel in ("gluon", "hopper")

    windows = RowWindows()  # a row's window: from the previous row's end to its own

    def add(name, ms, density=1.0, **extra):
        tflops = None if density is None else density * flops / (ms * 1e-3) / 1e12
        rows.append(dict(n=n, method=name, ms=ms, density=density, tflops=tflops, **extra))
        rows[-1]["window"] = windows.next()
        if sink is not None:
            sink.append(rows[-1])
        print(f"  N={n} {name}: {ms:.2f} ms", flush=True)

    from torch.nn.attention import SDPBackend

    cudnn = partial(_sdpa(SDPBackend.CUDNN_ATTENTION), q, k, v)
    _cudnn_baseline(cudnn, add)
    add("sdpa FA2 dense", bench_ms(lambda: _sdpa(SDPBackend.FLASH_ATTENTION)(q, k, v)))

    nb = math.ceil(n / BLOCK)
    scores = torch.rand(1, heads, nb, nb, device=dev, generator=g)
    for d in densities:
        mask = select_blocks(scores, block_size=BLOCK, ratio=d, n_k=n)
        counts, indices = mask_to_indices(mask)
        dens = float(mask.float().mean())
        attn = partial(block_sparse_attention_fwd, q, k, v, counts, indices, block_size=BLOCK)
        ms = bench_ms(attn)
        add(f"ours sparse d={d}", ms, dens, kernel=kernel)
        if kernel == "gluon":  # the Triton Hopper kernel it replaces, in the same run
            add(f"ours sparse triton-hopper d={d}", bench_ms(partial(attn, kernel="hopper")), dens)
        add(f"ours sparse portable d={d}", bench_ms(partial(attn, kernel="portable")), dens)
        if fp8_ok:
            add(f"ours sparse fp8 d={d}", bench_ms(partial(attn, precision="fp8")), dens,
                kernel=fp8_kernel)  # fmt: skip
            if kernel == "gluon":  # both fp8 kernels run here: the other one, same run
                other = "hopper" if fp8_kernel == "gluon" else "gluon"
                add(f"ours sparse fp8 {other} d={d}",
                    bench_ms(partial(attn, precision="fp8", kernel=other)), dens)  # fmt: skip
        if d == densities[0]:
            ms_idx = bench_ms(partial(mask_to_indices, mask))
            add("ours mask->index lists", ms_idx, None)
        if not args.no_flex:
            try:
                flex = _flex_runner(counts, indices, n)
                ms_flex = bench_ms(partial(flex, q, k, v))
                add(f"flex same mask d={d}", ms_flex, dens)
            except Exception as exc:  # noqa: BLE001 - report, don't hide, a flex failure
                print(f"  flex failed at d={d}: {type(exc).__name__}: {exc}", flush=True)
        if args.sweep and d == 0.3 and n == args.seq[0]:
            for cfg in [(128, 64, 8, 3), (128, 128, 8, 2), (128, 64, 4, 3), (64, 64, 4, 3),
                        (128, 128, 8, 4), (128, 64, 8, 4), (64, 128, 4, 3)]:  # fmt: skip
                try:
                    ms_c = bench_ms(partial(attn, launch=cfg))
                    add(f"  sweep attn TMA d={d} {cfg}", ms_c, dens)
                except Exception as exc:  # noqa: BLE001
                    print(f"  sweep attn {cfg} failed: {exc}", flush=True)

    for s in strides:
        est = partial(estimate_block_scores, q, k, stride=s, block_size=BLOCK)
        ms = bench_ms(est)
        chosen = {"bf16": estimate_kernel_for(q, k, s, BLOCK)[0]}
        add(f"ours estimate S={s}", ms, 1.0 / s / 2, kernel=chosen["bf16"])
        if fp8_ok:
            chosen["fp8"] = estimate_kernel_for(q, k, s, BLOCK, "fp8")[0]
            add(f"ours estimate fp8 S={s}", bench_ms(partial(est, precision="fp8")), 1.0 / s / 2,
                kernel=chosen["fp8"])  # fmt: skip
        if not _gluon_estimate_runs(q, k, s):  # else the other kernel too, in the same run
            chosen = {}
        for prec, kern in chosen.items():
            other = "triton" if kern == "gluon" else "gluon"
            add(f"ours estimate {other} {prec} S={s}",
                bench_ms(partial(est, precision=prec, kernel=other)), 1.0 / s / 2)  # fmt: skip
        if args.sweep and n == args.seq[0]:
            for cfg in [(256, 128, 16, 3), (128, 256, 16, 3), (256, 64, 8, 3), (64, 256, 8, 3),
                        (64, 128, 4, 3), (128, 128, 8, 3), (64, 128, 4, 4)]:  # fmt: skip
                for prec in ("bf16", "fp8") if fp8_ok else ("bf16",):
                    try:
                        ms_c = bench_ms(partial(est, launch=cfg, flatten=True, precision=prec))
                        add(f"  sweep est {prec} flat S={s} {cfg}", ms_c, 1.0 / s / 2)
                    except Exception as exc:  # noqa: BLE001
                        print(f"  sweep est {cfg} failed: {exc}", flush=True)
    scores_est = estimate_block_scores(q, k, stride=8, block_size=BLOCK)
    add("ours select tau=0.9", bench_ms(
        lambda: select_blocks(scores_est, block_size=BLOCK, threshold=0.9, n_k=n)), None)  # fmt: skip
    # what the op runs on the GPU: the fused selection (no sort) and the CSR kernel
    for sel in (dict(threshold=0.9), dict(ratio=0.3)):
        name = f"tau={sel['threshold']}" if "threshold" in sel else f"ratio={sel['ratio']}"
        fused = partial(select_blocks_fused, scores_est, block_size=BLOCK, **sel)
        add(f"ours select fused {name}", bench_ms(fused), None)
    mask_est = select_blocks_fused(scores_est, block_size=BLOCK, ratio=0.3)
    add("ours mask->index lists fused", bench_ms(
        lambda: mask_to_csr(mask_est, block_size=BLOCK, n_k=n)), None)  # fmt: skip

    # The whole op at ratio 0.3, S=8: through the public op (all-bf16: the estimate pinned to
    # bf16, which "auto" is off Hopper; on Hopper "auto" is the "bf16 + fp8 estimate" row below),
    # and composed from the kernels for bf16 and fp8 (fp8 sparse attention; bf16 estimate).
    add("ours whole op xattention ratio=0.3 S=8", bench_ms(
        lambda: xattention(q, k, v, ratio=0.3, stride=8, block_size=BLOCK,
                           estimate_precision="bf16")), 0.3)  # fmt: skip
    for prec in ("bf16", "fp8") if fp8_ok else ("bf16",):
        add(f"ours whole op composed {prec} ratio=0.3 S=8", bench_ms(
            partial(_whole_op, q, k, v, prec, "bf16")), 0.3)  # fmt: skip
    if fp8_ok:
        add("ours whole op composed fp8 + fp8 estimate ratio=0.3 S=8", bench_ms(
            partial(_whole_op, q, k, v, "fp8", "fp8")), 0.3)  # fmt: skip
        for prec in ("bf16", "fp8"):  # the public op with estimate_precision="fp8"
            add(f"ours whole op xattention {prec} + fp8 estimate ratio=0.3 S=8", bench_ms(
                lambda prec=prec: xattention(q, k, v, ratio=0.3, stride=8, block_size=BLOCK,
                                             precision=prec, estimate_precision="fp8")),
                0.3)  # fmt: skip
    if _gluon_estimate_runs(q, k, 8):  # the opt-in Gluon estimate through the public op
        combos = [("bf16", "bf16")] + ([("bf16", "fp8"), ("fp8", "fp8")] if fp8_ok else [])
        for prec, est_prec in combos:
            add(f"ours whole op xattention {prec} + {est_prec} estimate prefer-gluon ratio=0.3 "
                "S=8", bench_ms(lambda prec=prec, est_prec=est_prec: xattention(
                    q, k, v, ratio=0.3, stride=8, block_size=BLOCK, precision=prec,
                    estimate_precision=est_prec, estimate_kernel="prefer-gluon")),
                0.3)  # fmt: skip

    add("sdpa cuDNN dense, again at the end", bench_ms(cudnn))  # the baseline's drift in a run
    base = rows[0]["ms"]
    for r in rows:
        r["ratio_to_cudnn"] = r["ms"] / base
    attach(rows, monitor)
    return rows


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage error (exit 2) before any timing: a density outside (0, 1] (the selection clamps
    it, so a row named ``d=1.5`` ran at 1.0), a stride the estimate refuses (found after every
    dense and sparse row of the first length), sizes below 1."""
    if min(args.seq) < 1 or args.heads < 1 or args.dim < 1:
        p.error("--seq, --heads and --dim must be at least 1")
    bad = [d for d in args.densities if not 0.0 < d <= 1.0]
    if bad:
        p.error(f"--densities must be in (0, 1], got {bad}")
    for stride in args.strides:
        try:
            XAttentionConfig(stride=stride, block_size=128)
        except ValueError as err:
            p.error(f"--strides: {err}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seq", type=int, nargs="+", default=[119056, 67576])
    p.add_argument("--heads", type=int, default=24)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--densities", type=float, nargs="+", default=[1.0, 0.5, 0.3, 0.1])
    p.add_argument("--strides", type=int, nargs="+", default=[8, 16])
    p.add_argument("--no-flex", action="store_true", help="skip FlexAttention")
    p.add_argument("--sweep", action="store_true", help="also time alternative launch configs")
    p.add_argument("--out", default="results/bench_attention.json")
    args = p.parse_args(argv)
    check_args(p, args)
    if not torch.cuda.is_available():
        sys.exit("bench_attention needs a CUDA GPU")
    print(environment(), flush=True)
    # each row's SM clock and power, sampled by nvidia-smi; each length's rows kept on disk
    with GpuMonitor() as monitor, keeping_rows(args.out, vars(args)) as (rows, save):
        for n in args.seq:
            run_length(n, args.heads, args.dim, args.densities, args.strides, args, monitor,
                       sink=rows)  # fmt: skip
            save()
    if monitor.error:
        print(f"GPU clocks not recorded: {monitor.error}", flush=True)
    columns = [("n", "N", "{}"), ("method", "method", "{}"), ("ms", "median ms", "{:.2f}"),
               ("ratio_to_cudnn", "x cuDNN time", "{:.3f}"), ("density", "density", "{:.3f}"),
               ("tflops", "eff. TFLOP/s", "{:.0f}"), *GPU_COLUMNS]  # fmt: skip
    report(rows, columns, args.out, vars(args))


if __name__ == "__main__":
    main()
