"""Denoising time of the trained tiny DiT: dense vs XAttention, eager and torch.compile (one GPU).

The shipped ``tiny`` model (pipelines/tiny/assets/tiny_dit), bf16, preset ``tiny-dit``, at its
training size (17 frames x 64x64 px = 17,408 tokens, 30 steps) and at the demo's size (9 frames
x 32x32 px = 2,304 tokens, 12 steps). Per variant: one warm-up video (Triton / inductor
compilation, cost-model calibration), then ``--prompts`` videos timed one by one (CUDA
synchronised wall time of the pipeline call with latent output = the denoising loop). Variants:

- ``dense``: the plain pipeline (``compiled``: ``transformer.compile(fullgraph=True)``);
- ``xattn``: ``apply_xattention(pipe, preset)`` with ``auto_dense`` on (the default)
  (``compiled``: :func:`xattn_video.hook.compile_below_hook`, ``fullgraph=True``);
- ``xattn-raw``: the same with ``auto_dense=False`` (the sparse path in every call);
- ``-r<N>`` suffix (``xattn-r3``, ``xattn-raw-r3``): ``mask_refresh=N`` (a mask serves N steps).

``--compile-mode reduce-overhead`` compiles with CUDA graphs (both dense and XAttention).

Ratios are dense time / variant time in the same process and mode (> 1: XAttention faster).
Prints a table and writes JSON with GPU, versions and git SHA.

Usage: python benchmarks/bench_tiny_compile.py [--prompts 4] [--modes eager compiled]
           [--sizes train demo] [--out docs/results/bench_tiny_compile_h200.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save_json  # noqa: E402

import xattn_video as xv  # noqa: E402
from xattn_video.hook import compile_below_hook  # noqa: E402

PROMPTS = [
    "a cat wearing sunglasses and working as a lifeguard at pool",
    "a boat sailing leisurely along the Seine River with the Eiffel Tower in background, zoom in",
    "an astronaut flying in space, pan left",
    "a beautiful coastal beach in spring, waves lapping on sand, rotate",
    "a panda drinking coffee in a cafe in Paris",
    "a car slowly turning in a parking lot, zoom out",
]
SIZES = {  # name -> (frames, height, width, steps)
    "train": (17, 64, 64, 30),
    "demo": (9, 32, 32, 12),
}


def load_pipe():
    from xattn_video.pipelines.tiny.pipeline import load_tiny_pipeline

    return load_tiny_pipeline(device="cuda", dtype=torch.bfloat16)


def variant_config(variant: str) -> xv.XAttentionConfig | None:
    """``dense`` -> None; ``xattn[-raw][-r<N>]`` -> the preset, ``-raw``: ``auto_dense=False``,
    ``-r<N>``: ``mask_refresh=N``."""
    if variant == "dense":
        return None
    parts = variant.split("-")
    if parts[0] != "xattn" or any(p != "raw" and not (p[:1] == "r" and p[1:].isdigit())
                                  for p in parts[1:]):  # fmt: skip
        raise SystemExit(f"unknown variant {variant!r}: dense or xattn[-raw][-r<N>]")
    refresh = next((int(p[1:]) for p in parts[1:] if p != "raw"), 1)
    return xv.XAttentionConfig.from_preset(
        "tiny-dit", auto_dense="raw" not in parts, mask_refresh=refresh
    )


def build(variant: str, mode: str, compile_mode: str = "default"):
    pipe = load_pipe()
    handle = None
    cfg = variant_config(variant)
    if cfg is not None:
        handle = xv.apply_xattention(pipe, cfg)
    if mode == "compiled":
        # every variant compiles the same forward code: without a reset, the graphs of earlier
        # variants count towards dynamo's recompile limit (fatal with fullgraph=True)
        torch._dynamo.reset()
        if handle is None:
            pipe.transformer.compile(fullgraph=True, mode=compile_mode)
        else:
            compile_below_hook(pipe.transformer, fullgraph=True, mode=compile_mode)
    return pipe, handle


def run_variant(
    variant: str, mode: str, size: str, n_prompts: int, compile_mode: str = "default"
) -> dict:
    frames, height, width, steps = SIZES[size]
    pipe, handle = build(variant, mode, compile_mode)

    def video(i: int):
        g = torch.Generator("cpu").manual_seed(100 + i)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = pipe(PROMPTS[i % len(PROMPTS)], height=height, width=width, num_frames=frames,
                   num_inference_steps=steps, generator=g, output_type="latent").frames  # fmt: skip
        torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    t_warm0 = time.perf_counter()
    video(0)  # compile / calibrate
    warm_s = time.perf_counter() - t_warm0
    if handle is not None:
        handle.stats.reset()
    times, latents = [], []
    for i in range(n_prompts):
        t, out = video(i)
        times.append(t)
        latents.append(out.float().cpu())
    row = {
        "size": size,
        "tokens": frames * (height // 2) * (width // 2),
        "steps": steps,
        "mode": mode if mode == "eager" else f"compiled ({compile_mode})",
        "variant": variant,
        "warmup_s": warm_s,
        "video_s": times,
        "total_s": sum(times),
    }
    if handle is not None:
        s = handle.stats.summary()
        row.update(
            sparse_density=s["sparse_density"],
            effective_density=s["effective_density"],
            num_sparse_calls=s["num_sparse_calls"],
            num_cost_dense_calls=s["num_cost_dense_calls"],
            num_calls=s["num_sparse_calls"] + s["num_dense_calls"],
        )
    torch.cuda.empty_cache()
    return row, latents


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=4)
    # choices: any other word would run eager but be recorded as compiled
    ap.add_argument(
        "--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"]
    )
    ap.add_argument("--sizes", nargs="+", default=["train", "demo"], choices=list(SIZES))
    ap.add_argument("--compiled-sizes", nargs="+", default=["train"], choices=list(SIZES),
                    help="sizes that also run compiled (compilation costs ~1 min per variant)")  # fmt: skip
    ap.add_argument(
        "--compiled-variants",
        nargs="+",
        default=["dense", "xattn"],
        help="dense or xattn[-raw][-r<N>] (-raw: auto_dense off; -rN: mask_refresh N)",
    )
    ap.add_argument("--eager-variants", nargs="+", default=["dense", "xattn", "xattn-raw"])
    ap.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
    )
    ap.add_argument("--out", default="docs/results/bench_tiny_compile.json")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_tiny_compile needs a CUDA GPU")

    rows: list[dict] = []
    for size in args.sizes:
        for mode in args.modes:
            if mode == "compiled" and size not in args.compiled_sizes:
                continue
            ref, ref_lat = None, None
            variants = args.eager_variants if mode == "eager" else args.compiled_variants
            for variant in variants:
                try:
                    row, lat = run_variant(variant, mode, size, args.prompts, args.compile_mode)
                except Exception as err:  # recorded, the other variants still run
                    rows.append({"size": size, "mode": mode, "variant": variant,
                                 "error": f"{type(err).__name__}: {err}"[:2000]})  # fmt: skip
                    print(f"[bench] {size} {mode} {variant} failed: {err}", flush=True)
                    continue
                if variant == "dense":
                    ref = row
                elif ref is not None and ref_lat is not None:
                    row["speedup_vs_dense"] = ref["total_s"] / row["total_s"]
                    row["max_abs_latent_diff_vs_dense"] = max(
                        float((a - b).abs().max()) for a, b in zip(lat, ref_lat, strict=True)
                    )
                if variant == "dense":
                    ref_lat = lat
                rows.append(row)
                print(f"[bench] {row}", flush=True)
                save_json(args.out, {"benchmark": "bench_tiny_compile", "args": vars(args),
                                     "rows": rows, "complete": False})  # fmt: skip
    print_table(
        [r for r in rows if "error" not in r],
        [
            ("size", "size", "{}"),
            ("tokens", "tokens", "{}"),
            ("mode", "mode", "{}"),
            ("variant", "variant", "{}"),
            ("total_s", f"{args.prompts} videos s", "{:.3f}"),
            ("speedup_vs_dense", "vs dense", "{:.3f}x"),
            ("sparse_density", "sparse dens.", "{:.3f}"),
            ("num_cost_dense_calls", "cost-dense calls", "{}"),
            ("num_calls", "calls", "{}"),
            ("warmup_s", "warm-up s", "{:.1f}"),
        ],
    )
    failed = [r for r in rows if "error" in r]
    save_json(args.out, {"benchmark": "bench_tiny_compile", "args": vars(args), "rows": rows,
                         "complete": not failed})  # fmt: skip
    print(f"wrote {args.out}")
    if failed:  # a scripted run must see it (every variant failing printed an empty table)
        sys.exit(f"bench_tiny_compile: {len(failed)} of {len(rows)} variants failed, see above")


if __name__ == "__main__":
    main()
