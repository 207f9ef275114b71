"""Whole-transformer speed for Wan: one Wan 2.1 14B forward, dense vs XAttention (one GPU).

Builds a full-size ``WanTransformer3DModel`` with Wan 2.1 T2V 14B's shape (40 layers, 40 heads
x 128, FFN 13,824) and RANDOM weights in bf16, and times one forward at 720p x 81 frames
(21 x 45 x 80 = 75,600 video tokens, 512 text tokens) for:
  - dense, diffusers default processor (``native`` SDPA);
  - dense, cuDNN SDPA backend (``set_attention_backend("_native_cudnn")``);
  - dense through XAttention's kernel with every block (``dense_kernel="xattn"``);
  - XAttention at pinned densities (ratio mode, default 0.3) on every self-attention, in bf16
    and (``--precisions bf16 fp8``) FP8, each with the estimate in the config's default
    precision on this GPU (fp8 for fp8 attention, and on Hopper for bf16 too) or as
    ``--estimate-precisions bf16 fp8`` lists; the bf16 rows with the default estimate also
    with the processor's torch code for the q / k preparation (the Wan processor before the fused
    kernel, :mod:`xattn_video.qk_prep`; ``--no-compare-unfused`` skips them).
Then projects a 50-step generation with 5 dense warm-up steps (``--steps``, ``--warmup-steps``),
as ``bench_pipeline.py`` does
(:func:`bench_pipeline.add_projections`). Cross-attention stays dense (stock) throughout.

The rotary tables are what ``.to(torch.bfloat16)`` leaves them (bf16); a model loaded with
``from_pretrained`` keeps its ``rope`` module out of the cast (fp64 tables, which the processor
hands to the kernel as fp32; ``probe_norm_rope.py --model wan`` times all three). Random
weights give near-uniform attention: only the pinned-density rows are meaningful speed numbers.
Prints a table and writes JSON with GPU, versions and git SHA.

Usage: python benchmarks/bench_pipeline_wan.py [--frames 81] [--out results/pipeline_wan.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, keeping_rows, qk_prep_fused, report  # noqa: E402
from _gpu_monitor import COLUMNS as GPU_COLUMNS  # noqa: E402
from _gpu_monitor import GpuMonitor, RowWindows, attach  # noqa: E402
from _precisions import precision_label, precision_pairs  # noqa: E402
from bench_pipeline import (  # noqa: E402
    add_projections,
    add_row_args,
    build_bf16,
    check_fp8_runs,
    check_row_args,
    projection_columns,
    time_dense,
    time_xattention,
)

import xattn_video as xv  # noqa: E402

WAN_14B = dict(
    patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16,
    out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40,
    cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)  # fmt: skip
"""``WanTransformer3DModel`` config of Wan 2.1 T2V 14B (Wan-AI/Wan2.1-T2V-14B-Diffusers)."""
HEAD_DIM = WAN_14B["attention_head_dim"]
UNFUSED = " (q / k prep: torch code)"


def build_transformer(config: dict, device: str = "cuda"):
    from diffusers import WanTransformer3DModel

    return build_bf16(WanTransformer3DModel, config, device).to(torch.bfloat16)


def make_inputs(height: int, width: int, frames: int, text_len: int = 512, device="cuda") -> dict:
    g = torch.Generator(device=device).manual_seed(0)
    t, h, w = (frames - 1) // 4 + 1, height // 8, width // 8
    bf = torch.bfloat16
    return dict(
        hidden_states=torch.randn(1, 16, t, h, w, device=device, dtype=bf, generator=g),
        timestep=torch.tensor([900], device=device),
        encoder_hidden_states=torch.randn(1, text_len, 4096, device=device, dtype=bf, generator=g),
        return_dict=False,
    )


def run(model, args, monitor: GpuMonitor | None = None, rows: list | None = None) -> list[dict]:
    """The rows (appended to ``rows`` as they are measured), each with the GPU's clock and
    power over its warm-up and timing."""
    inputs = make_inputs(args.height, args.width, args.frames)
    tokens = inputs["hidden_states"][0, 0].numel() // 4  # patch 1x2x2
    rows = [] if rows is None else rows
    windows = RowWindows()

    def add(method, seconds, density=None):
        rows.append(dict(tokens=tokens, method=method, s=seconds, effective_density=density,
                         window=windows.next()))  # fmt: skip
        print(f"  {method}: {seconds:.2f} s", flush=True)

    time_dense(model, inputs, len(model.blocks), args.repeats, add)
    device = inputs["hidden_states"].device
    default_est = precision_pairs(["bf16"], ["auto"], device, HEAD_DIM)[0][1]  # bf16's here
    for ratio in args.ratios:
        for precision, est in precision_pairs(
            args.precisions, args.estimate_precisions, device, HEAD_DIM
        ):
            cfg = xv.XAttentionConfig.from_preset(
                "wan", warmup_steps=0, selection="ratio", ratio=ratio, stride=args.stride,
                block_size=128, auto_dense=False, precision=precision, estimate_precision=est,
            )  # fmt: skip
            label = f"xattn ratio={ratio}" + precision_label(precision, est)
            bf16 = precision == "bf16" and est == default_est
            for fused in (False, True) if bf16 and args.compare_unfused else (True,):
                with qk_prep_fused(fused):
                    sec, summ = time_xattention(model, inputs, cfg, args.repeats)
                add(label + ("" if fused else UNFUSED), sec, summ.get("effective_density"))
    add_projections(rows, args.steps, args.warmup_steps)
    attach(rows, monitor)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.3])
    add_row_args(p)
    p.add_argument("--compare-unfused", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the bf16 rows with the default estimate with the torch q / k "
                        "preparation")  # fmt: skip
    p.add_argument("--out", default="results/bench_pipeline_wan.json")
    args = p.parse_args(argv)
    check_row_args(p, args)
    if args.frames < 1 or args.frames % 4 != 1 or args.height % 16 or args.width % 16:
        p.error("--frames must be 4k+1 and --height / --width multiples of 16")
    if not torch.cuda.is_available():
        sys.exit("bench_pipeline_wan needs a CUDA GPU")
    check_fp8_runs(args)
    print(environment(), flush=True)
    model = build_transformer(WAN_14B)
    # each row's SM clock and power, sampled by nvidia-smi; the rows kept on an error
    with GpuMonitor() as monitor, keeping_rows(args.out, vars(args)) as (rows, _):
        run(model, args, monitor, rows)
    if monitor.error:
        print(f"GPU clocks not recorded: {monitor.error}", flush=True)
    columns = [
        ("tokens", "tokens", "{}"), ("method", "method", "{}"), ("s", "s / forward", "{:.2f}"),
        ("effective_density", "density", "{:.3f}"),
        ("speedup_vs_default", "x vs default", "{:.2f}"),
        ("speedup_vs_best_dense", "x vs best dense", "{:.2f}"),
        *(c for c in projection_columns(args.steps, args.warmup_steps)
          if c[0] in ("projected_speedup_vs_default", "projected_speedup_kernel_dense_vs_default")),
        *GPU_COLUMNS,
    ]  # fmt: skip
    report(rows, columns, args.out, vars(args))


if __name__ == "__main__":
    main()
