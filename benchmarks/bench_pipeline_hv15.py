"""Whole-transformer speed for HunyuanVideo 1.5: one forward, dense vs XAttention (one GPU).

Builds a full-size ``HunyuanVideo15Transformer3DModel`` (diffusers' default config: 54
double-stream blocks of 16 heads x 128, ~8.3 B parameters, the published HunyuanVideo 1.5
shape) with RANDOM weights in bf16, and times one text-to-video forward at 720p x 121 frames
(31 x 45 x 80 = 111,600 video tokens; its 16x VAE, patch 1) with the text slots its pipeline
makes: 1,000 prompt slots (``--text-valid`` valid), 256 ByT5 slots (``--byt5-valid`` valid) and
729 image slots (all padding in text-to-video), for:
  - dense, diffusers default processor (``native`` SDPA; its stock processor builds a
    [B, 1, N, N] bool mask from the text mask, 12.9 GB at this size, and keeps two: with SDPA's
    float copy of it this row may not fit an 80 GB H100, run it on an H200);
  - dense, cuDNN SDPA backend (``set_attention_backend("_native_cudnn")``, a note if it fails);
  - dense through XAttention's kernel with every block (``dense_kernel="xattn"``: the text
    padding as key lengths, no N x N mask);
  - XAttention at pinned densities (ratio mode, default 0.3) on every block, in bf16 and
    (``--precisions bf16 fp8``) FP8, each with the estimate in the config's default precision
    on this GPU or as ``--estimate-precisions`` lists.
Then projects a 50-step generation with 5 dense warm-up steps (``--steps``, ``--warmup-steps``),
as ``bench_pipeline.py`` does (:func:`bench_pipeline.add_projections`). Random weights give
near-uniform attention: only the pinned-density rows are meaningful speed numbers. Prints a
table and writes JSON with GPU, versions and git SHA.

Usage: python benchmarks/bench_pipeline_hv15.py [--frames 121] [--out results/pipeline_hv15.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, keeping_rows, report  # noqa: E402
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

HEAD_DIM = 128  # HunyuanVideo15Transformer3DModel()'s default attention_head_dim
TEXT_SLOTS = {"prompt": 1000, "byt5": 256, "image": 729}
"""Text slots of ``HunyuanVideo15Pipeline``: its tokenizers' max lengths and the image
embedder's token count (``vision_num_semantic_tokens``)."""


def build_transformer(config: dict | None = None, device: str = "cuda"):
    """``HunyuanVideo15Transformer3DModel(**config)`` (default: diffusers' defaults, the
    published model's shape) in bf16, eval mode, without gradients."""
    from diffusers import HunyuanVideo15Transformer3DModel

    return build_bf16(HunyuanVideo15Transformer3DModel, config, device).to(torch.bfloat16)


def make_inputs(
    height: int,
    width: int,
    frames: int,
    text_valid: int,
    byt5_valid: int,
    config=None,
    device: str = "cuda",
) -> dict:
    """One text-to-video forward's inputs (``config``: the transformer's config, default the
    class defaults): latents + condition + mask channels on the 16x / 4x latent grid, the text
    slots of :data:`TEXT_SLOTS` with ``text_valid`` / ``byt5_valid`` valid, zero image
    embeddings (text-to-video: the image slots are padding)."""
    cfg = dict(_defaults(), **(config or {}))
    g = torch.Generator(device=device).manual_seed(0)
    t, h, w = (frames - 1) // 4 + 1, height // 16, width // 16
    bf = torch.bfloat16

    def mask(n: int, valid: int) -> torch.Tensor:
        return (torch.arange(n, device=device) < valid).long()[None]

    return dict(
        hidden_states=torch.randn(1, cfg["in_channels"], t, h, w, device=device, dtype=bf,
                                  generator=g),
        timestep=torch.tensor([900.0], device=device, dtype=bf),
        encoder_hidden_states=torch.randn(1, TEXT_SLOTS["prompt"], cfg["text_embed_dim"],
                                          device=device, dtype=bf, generator=g),
        encoder_attention_mask=mask(TEXT_SLOTS["prompt"], text_valid),
        encoder_hidden_states_2=torch.randn(1, TEXT_SLOTS["byt5"], cfg["text_embed_2_dim"],
                                            device=device, dtype=bf, generator=g),
        encoder_attention_mask_2=mask(TEXT_SLOTS["byt5"], byt5_valid),
        image_embeds=torch.zeros(1, TEXT_SLOTS["image"], cfg["image_embed_dim"], device=device,
                                 dtype=bf),
        return_dict=False,
    )  # fmt: skip


def _defaults() -> dict:
    """``HunyuanVideo15Transformer3DModel.__init__``'s default arguments."""
    import inspect

    from diffusers import HunyuanVideo15Transformer3DModel

    sig = inspect.signature(HunyuanVideo15Transformer3DModel.__init__)
    return {n: p.default for n, p in sig.parameters.items() if n != "self"}


def run(model, args, monitor: GpuMonitor | None = None, rows: list | None = None) -> list[dict]:
    """The rows (appended to ``rows`` as they are measured), each with the GPU's clock and
    power over its warm-up and timing."""
    inputs = make_inputs(args.height, args.width, args.frames, args.text_valid, args.byt5_valid)
    tokens = inputs["hidden_states"][0, 0].numel() + sum(TEXT_SLOTS.values())
    rows = [] if rows is None else rows
    windows = RowWindows()

    def add(method, seconds, density=None):
        rows.append(dict(tokens=tokens, method=method, s=seconds, effective_density=density,
                         window=windows.next()))  # fmt: skip
        print(f"  {method}: {seconds:.2f} s", flush=True)

    time_dense(model, inputs, len(model.transformer_blocks), args.repeats, add)
    device = inputs["hidden_states"].device
    for ratio in args.ratios:
        for precision, est in precision_pairs(
            args.precisions, args.estimate_precisions, device, HEAD_DIM
        ):
            cfg = xv.XAttentionConfig.from_preset(
                "hunyuanvideo15", warmup_steps=0, selection="ratio", ratio=ratio,
                stride=args.stride, block_size=128, auto_dense=False, precision=precision,
                estimate_precision=est,
            )  # fmt: skip
            sec, summ = time_xattention(model, inputs, cfg, args.repeats)
            add(f"xattn ratio={ratio}" + precision_label(precision, est), sec,
                summ.get("effective_density"))  # fmt: skip
    add_projections(rows, args.steps, args.warmup_steps)
    attach(rows, monitor)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--frames", type=int, default=121)
    p.add_argument("--text-valid", type=int, default=256,
                   help=f"valid prompt tokens of the {TEXT_SLOTS['prompt']} slots")  # fmt: skip
    p.add_argument("--byt5-valid", type=int, default=8,
                   help=f"valid ByT5 tokens of the {TEXT_SLOTS['byt5']} slots")  # fmt: skip
    p.add_argument("--ratios", type=float, nargs="+", default=[0.3])
    add_row_args(p)
    p.add_argument("--out", default="results/bench_pipeline_hv15.json")
    args = p.parse_args(argv)
    check_row_args(p, args)
    if args.frames < 1 or args.frames % 4 != 1 or args.height % 16 or args.width % 16:
        p.error("--frames must be 4k+1 and --height / --width multiples of 16")
    if not 1 <= args.text_valid <= TEXT_SLOTS["prompt"]:
        p.error(f"--text-valid must be between 1 and {TEXT_SLOTS['prompt']}")
    if not 0 <= args.byt5_valid <= TEXT_SLOTS["byt5"]:
        p.error(f"--byt5-valid must be between 0 and {TEXT_SLOTS['byt5']}")
    if not torch.cuda.is_available():
        sys.exit("bench_pipeline_hv15 needs a CUDA GPU")
    check_fp8_runs(args)
    print(environment(), flush=True)
    model = build_transformer()
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
