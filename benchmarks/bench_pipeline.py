"""Whole-transformer speed: one HunyuanVideo forward, dense vs XAttention (one GPU).

Builds the full-size ``HunyuanVideoTransformer3DModel`` (12.8 B parameters, 20 double + 40
single-stream blocks) with RANDOM weights in bf16, and times one forward at 544p and 720p x 129
frames (67,320 / 118,800 video tokens + 256 text slots) for:
  - dense, diffusers default processor (``native`` SDPA with the key-padding mask);
  - dense, cuDNN SDPA backend (``set_attention_backend("_native_cudnn")``);
  - dense through XAttention's kernel with every block (``dense_kernel="xattn"``, every layer in
    ``dense_layers``): what the toolkit's dense warm-up steps run with that setting;
  - XAttention at pinned densities (ratio mode 0.5 and 0.3) and in threshold mode (tau 0.9),
    in bf16 and (``--precisions bf16 fp8``) FP8, each with the estimate in the config's default
    precision on this GPU (``--estimate-precisions auto``: fp8 for fp8 attention, and on Hopper
    for bf16 attention too) or as ``--estimate-precisions bf16 fp8`` lists.
Then projects a 50-step generation with 5 dense warm-up steps (``--steps``, ``--warmup-steps``;
:func:`add_projections`): with
the stock processor's dense steps (5 x the faster of the two SDPA rows + 45 x sparse) and with
``dense_kernel="xattn"`` (5 x the kernel's dense row + 45 x sparse), each against 50 diffusers
default forwards and against 50 forwards of the best dense row.

Random weights give near-uniform attention, so the threshold-mode density here is NOT what a
trained model shows (trained models are far more concentrated); the pinned-density rows are
the meaningful speed numbers. Each row also records the GPU's SM clock, power draw and
power-capped share over its warm-up and timing (``_gpu_monitor.py``; an H100 runs heavy work at
its 700 W cap). Prints a table and writes JSON with GPU, versions and git SHA.

Usage: python benchmarks/bench_pipeline.py [--res 544p 720p] [--out results/pipeline.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, keeping_rows, report  # noqa: E402
from _gpu_monitor import COLUMNS as GPU_COLUMNS  # noqa: E402
from _gpu_monitor import GpuMonitor, RowWindows, attach  # noqa: E402
from _precisions import precision_label, precision_pairs  # noqa: E402

import xattn_video as xv  # noqa: E402
from xattn_video.op_checks import ESTIMATE_PRECISIONS, PRECISIONS  # noqa: E402

RESOLUTIONS = {"544p": (544, 960), "720p": (720, 1280)}
KERNEL_DENSE = 'dense, XAttention kernel (dense_kernel="xattn")'
HEAD_DIM = 128  # HunyuanVideoTransformer3DModel()'s default attention_head_dim


def build_bf16(cls, config: dict | None = None, device: str = "cuda"):
    """``cls(**config)`` with its parameters created directly in bf16 on ``device`` (no fp32
    copy of billions of parameters first), eval mode, without gradients."""
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = cls(**(config or {}))
    finally:
        torch.set_default_dtype(prev)
    return model.eval().requires_grad_(False)


def build_transformer(device: str = "cuda"):
    from diffusers import HunyuanVideoTransformer3DModel

    return build_bf16(HunyuanVideoTransformer3DModel, device=device)  # 12.8 B parameters


def make_inputs(height: int, width: int, frames: int, text_valid: int, device: str = "cuda"):
    g = torch.Generator(device=device).manual_seed(0)
    t, h, w = (frames - 1) // 4 + 1, height // 8, width // 8
    bf = torch.bfloat16
    mask = torch.zeros(1, 256, dtype=torch.bool, device=device)
    mask[:, :text_valid] = True
    return dict(
        hidden_states=torch.randn(1, 16, t, h, w, device=device, dtype=bf, generator=g),
        timestep=torch.tensor([900], device=device),
        encoder_hidden_states=torch.randn(1, 256, 4096, device=device, dtype=bf, generator=g),
        encoder_attention_mask=mask,
        pooled_projections=torch.randn(1, 768, device=device, dtype=bf, generator=g),
        guidance=torch.tensor([6000.0], device=device, dtype=bf),
        return_dict=False,
    )


def time_forward(model, inputs, repeats: int = 1) -> float:
    """Seconds per forward (median over ``repeats`` after the caller warmed up)."""
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            model(**inputs)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_xattention(model, inputs, cfg, repeats: int) -> tuple[float, dict]:
    """(seconds per forward, stats summary) with XAttention applied as ``cfg``, then removed."""
    handle = xv.apply_xattention(model, cfg)
    try:
        with torch.inference_mode():
            model(**inputs)  # compiles the Triton kernels for this shape on first use
        handle.stats.reset()
        return time_forward(model, inputs, repeats), handle.stats.summary()
    finally:
        handle.remove()


def time_dense(model, inputs, n_layers: int, repeats: int, add) -> None:
    """``add(method, seconds)`` the dense rows: diffusers' default processor (after a warm-up
    forward), the cuDNN SDPA backend (a note instead if it fails), and XAttention's kernel with
    every block in all ``n_layers`` attention layers (:data:`KERNEL_DENSE`)."""
    with torch.inference_mode():
        model(**inputs)  # warm-up: CUDA context, cuBLAS/cuDNN handles
    add("dense, diffusers default", time_forward(model, inputs, repeats))
    try:
        model.set_attention_backend("_native_cudnn")
        with torch.inference_mode():
            model(**inputs)
        add("dense, cuDNN SDPA", time_forward(model, inputs, repeats))
    except Exception as exc:  # noqa: BLE001 - report the failure, keep benchmarking
        print(f"  cuDNN backend failed: {type(exc).__name__}: {exc}", flush=True)
    finally:
        model.reset_attention_backend()
    cfg = xv.XAttentionConfig(
        dense_layers=tuple(range(n_layers)), dense_kernel="xattn", auto_dense=False
    )  # every call dense, through the kernel with every block
    add(KERNEL_DENSE, time_xattention(model, inputs, cfg, repeats)[0])


def run_resolution(
    model, name: str, args, monitor: GpuMonitor | None = None, sink: list[dict] | None = None
) -> list[dict]:
    """The rows of one resolution, each with the GPU's clock and power over its warm-up and
    timing (``monitor``, see ``_gpu_monitor.py``). ``sink``: a list each row also goes into as
    it is measured (the run's, which :func:`_common.keeping_rows` writes on an error)."""
    height, width = RESOLUTIONS[name]
    inputs = make_inputs(height, width, args.frames, args.text_valid)
    n_video = inputs["hidden_states"][0, 0].numel() // 4  # patch 1x2x2
    rows: list[dict] = []
    windows = RowWindows()

    def add(method, seconds, density=None, sparse_density=None):
        rows.append(dict(res=name, tokens=n_video + 256, method=method, s=seconds,
                         effective_density=density, sparse_density=sparse_density,
                         window=windows.next()))  # fmt: skip
        if sink is not None:
            sink.append(rows[-1])
        print(f"  {name} {method}: {seconds:.2f} s", flush=True)

    n_layers = len(model.transformer_blocks) + len(model.single_transformer_blocks)
    time_dense(model, inputs, n_layers, args.repeats, add)

    settings = [(f"xattn ratio={r}", dict(selection="ratio", ratio=r)) for r in args.ratios]
    settings += [(f"xattn tau={t}", dict(selection="threshold", threshold=t)) for t in args.taus]
    settings = [
        (label + precision_label(p, e), {**kw, "precision": p, "estimate_precision": e})
        for p, e in precision_pairs(
            args.precisions, args.estimate_precisions, inputs["hidden_states"].device, HEAD_DIM
        )
        for label, kw in settings
    ]
    for label, kw in settings:
        cfg = xv.XAttentionConfig(
            warmup_steps=0, stride=args.stride, block_size=128, auto_dense=False, **kw
        )  # pinned settings: every call sparse
        sec, summ = time_xattention(model, inputs, cfg, args.repeats)
        add(label, sec, summ.get("effective_density"), summ.get("sparse_density"))

    add_projections(rows, args.steps, args.warmup_steps)
    attach(rows, monitor)
    return rows


def add_projections(rows: list[dict], steps: int, warm: int) -> None:
    """Add speed-ups and ``steps``-step projections to ``rows`` (in place). rows[0] is the
    diffusers default; "dense" rows run every step dense, the others ``warm`` dense steps then
    sparse ones: ``projected_steps_s`` with the stock processor's dense steps (the faster SDPA
    row), ``projected_steps_kernel_dense_s`` with the :data:`KERNEL_DENSE` row's; each row also
    records ``projected_steps`` and ``projected_warmup_steps``. (Results before these keys
    named them ``projected_50_steps_s`` / ``projected_50_steps_kernel_dense_s``.)"""
    dense = {r["method"]: r["s"] for r in rows if r["method"].startswith("dense")}
    default = rows[0]["s"]
    best = min(dense.values())
    stock = min(t for m, t in dense.items() if m != KERNEL_DENSE)
    kernel = dense.get(KERNEL_DENSE)
    for r in rows:
        r["speedup_vs_default"] = default / r["s"]
        r["speedup_vs_best_dense"] = best / r["s"]
        is_dense = r["method"] in dense
        r["projected_steps"], r["projected_warmup_steps"] = steps, warm
        for key, warm_s in (("projected_steps_s", stock),
                            ("projected_steps_kernel_dense_s", kernel)):  # fmt: skip
            if warm_s is None:
                continue
            r[key] = steps * r["s"] if is_dense else warm * warm_s + (steps - warm) * r["s"]
        r["projected_speedup_vs_default"] = steps * default / r["projected_steps_s"]
        r["projected_speedup_vs_best_dense"] = steps * best / r["projected_steps_s"]
        if kernel is not None:
            total = r["projected_steps_kernel_dense_s"]
            r["projected_speedup_kernel_dense_vs_default"] = steps * default / total
            r["projected_speedup_kernel_dense_vs_best_dense"] = steps * best / total


def projection_columns(steps: int, warm: int) -> list[tuple[str, str, str]]:
    """Table columns (key, header, format) of :func:`add_projections`' fields, headed by the
    projection's ``steps`` and ``warm`` dense steps."""
    return [
        ("projected_steps_s", f"{steps} steps ({warm} stock dense) s", "{:.0f}"),
        ("projected_speedup_vs_default", f"{steps}-step x vs default", "{:.2f}"),
        ("projected_steps_kernel_dense_s", f"{steps} steps ({warm} kernel dense) s", "{:.0f}"),
        ("projected_speedup_kernel_dense_vs_default",
         f"{steps}-step x ({warm} kernel dense) vs default", "{:.2f}"),
        ("projected_speedup_kernel_dense_vs_best_dense",
         f"{steps}-step x ({warm} kernel dense) vs best dense", "{:.2f}"),
    ]  # fmt: skip


def add_row_args(p: argparse.ArgumentParser) -> None:
    """The options of the sparse rows and the 50-step projection that this script and
    ``bench_pipeline_wan.py`` share (stride, precisions, steps, warm-up steps, repeats)."""
    p.add_argument("--stride", type=int, default=8)
    p.add_argument("--precisions", nargs="+", default=["bf16"], choices=PRECISIONS,
                   help="XAttention precision of the sparse rows (fp8: sm90+)")  # fmt: skip
    p.add_argument("--estimate-precisions", nargs="+", default=["auto"],
                   choices=ESTIMATE_PRECISIONS,
                   help="precision of the mask estimate in the sparse rows (auto: the "
                        "config's default on this GPU; fp8: sm90+)")  # fmt: skip
    p.add_argument("--steps", type=int, default=50, help="denoising steps of the projection")
    p.add_argument("--warmup-steps", type=int, default=5,
                   help="dense warm-up steps of the projection")  # fmt: skip
    p.add_argument("--repeats", type=int, default=1)


def check_row_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage error (exit 2) for a projection :func:`add_projections` can't make (more warm-up
    steps than steps: a negative count of sparse steps; no steps, or no repeat) and for a
    sparse row's setting that ``XAttentionConfig`` refuses (``--stride 3``, ``--ratios 1.5``),
    before the model is built and the dense rows are timed, not at the first sparse row."""
    if args.steps < 1 or args.repeats < 1:
        p.error("--steps and --repeats must be at least 1")
    if not 0 <= args.warmup_steps <= args.steps:
        p.error(f"--warmup-steps must be between 0 and --steps ({args.steps})")
    selections = [dict(selection="ratio", ratio=r) for r in args.ratios]
    selections += [dict(selection="threshold", threshold=t) for t in getattr(args, "taus", [])]
    for kw in selections:
        for prec in args.precisions:
            for est in args.estimate_precisions:
                try:
                    xv.XAttentionConfig(stride=args.stride, block_size=128, precision=prec,
                                        estimate_precision=est, **kw)  # fmt: skip
                except ValueError as err:
                    p.error(str(err))


def check_fp8_runs(args: argparse.Namespace) -> None:
    """Exit with a message when a sparse row asks for fp8 (attention or estimate) and this
    GPU is not sm90+ (the rows would fail after the model is built and the dense rows run)."""
    asked = "fp8" in (*args.precisions, *args.estimate_precisions)  # "auto" is fp8 on sm90 only
    if asked and torch.cuda.get_device_capability() < (9, 0):
        sys.exit(f"fp8 rows need an sm90+ GPU (Hopper); this is {torch.cuda.get_device_name()}: "
                 "run with --precisions bf16 --estimate-precisions bf16")  # fmt: skip


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--res", nargs="+", default=["544p", "720p"], choices=sorted(RESOLUTIONS))
    p.add_argument("--frames", type=int, default=129)
    p.add_argument("--text-valid", type=int, default=64, help="valid prompt tokens of 256")
    p.add_argument("--ratios", type=float, nargs="*", default=[0.5, 0.3])
    p.add_argument("--taus", type=float, nargs="*", default=[0.9])
    add_row_args(p)
    p.add_argument("--out", default="results/bench_pipeline.json")
    args = p.parse_args(argv)
    check_row_args(p, args)
    if not 1 <= args.text_valid <= 256:  # a negative one sliced from the end
        p.error(f"--text-valid must be in 1..256, got {args.text_valid}")
    if args.frames < 1 or args.frames % 4 != 1:  # found inside the 12.8 B model
        p.error(f"--frames must be 4k+1 (1, 5, ..., 129), got {args.frames}")
    if not torch.cuda.is_available():
        sys.exit("bench_pipeline needs a CUDA GPU")
    check_fp8_runs(args)
    print(environment(), flush=True)
    model = build_transformer()
    # each row's SM clock and power, sampled by nvidia-smi; each resolution's rows kept on disk
    with GpuMonitor() as monitor, keeping_rows(args.out, vars(args)) as (rows, save):
        for name in args.res:
            run_resolution(model, name, args, monitor, sink=rows)
            save()
    if monitor.error:
        print(f"GPU clocks not recorded: {monitor.error}", flush=True)
    columns = [
        ("res", "res", "{}"), ("tokens", "tokens", "{}"), ("method", "method", "{}"),
        ("s", "s / forward", "{:.2f}"), ("effective_density", "density", "{:.3f}"),
        ("speedup_vs_default", "x vs default", "{:.2f}"),
        ("speedup_vs_best_dense", "x vs best dense", "{:.2f}"),
        *projection_columns(args.steps, args.warmup_steps),
        *GPU_COLUMNS,
    ]  # fmt: skip
    report(rows, columns, args.out, vars(args))


if __name__ == "__main__":
    main()
