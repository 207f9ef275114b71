"""Where the time of one XAttention call goes: torch.profiler over the trained tiny DiT (one GPU).

Runs ``--steps`` denoising steps at 17,408 tokens with preset ``tiny-dit`` and ``auto_dense``
off (the sparse path in every call), after a warm-up call, under ``torch.profiler``; prints the
top operators by self CPU time and by device time, and the wall time per attention call.

Usage: python benchmarks/profile_tiny_sparse.py [--steps 3] [--dense] [--rows 25]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

import xattn_video as xv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--dense", action="store_true", help="profile the dense pipeline instead")
    args = ap.parse_args()
    from xattn_video.pipelines.tiny.pipeline import load_tiny_pipeline

    pipe = load_tiny_pipeline(device="cuda", dtype=torch.bfloat16)
    if not args.dense:
        xv.apply_xattention(pipe, xv.XAttentionConfig.from_preset("tiny-dit", auto_dense=False))

    def call():
        g = torch.Generator("cpu").manual_seed(0)
        pipe("a panda drinking coffee", height=64, width=64, num_frames=17,
             num_inference_steps=args.steps, generator=g, output_type="latent")  # fmt: skip

    call()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    call()
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    n_calls = args.steps * len(pipe.transformer.transformer_blocks) + args.steps * len(
        pipe.transformer.single_transformer_blocks
    )
    print(f"wall {wall * 1e3:.1f} ms for {args.steps} steps = {n_calls} attention calls")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    ka = prof.key_averages()
    print(ka.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))
    print(ka.table(sort_by="self_cuda_time_total", row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
