"""Ulysses sequence parallelism: one HunyuanVideo forward on 1 GPU vs P GPUs, dense and XAttention.

Run with torchrun, one process per GPU (P = the world size, default 2)::

    NCCL_NVLS_ENABLE=0 torchrun --nproc_per_node 2 benchmarks/bench_ulysses.py \\
        --out docs/results/bench_ulysses_h200x2.json

What it does (every rank builds the same RANDOM-weight model from one seed):
1. rank 0 alone: one forward of the full-size ``HunyuanVideoTransformer3DModel`` (bf16, 720p x
   129 frames = 118,800 video + 256 text tokens) dense (diffusers default processor) and with
   XAttention (``selection="ratio"``, ratio 0.3, no warm-up, ``auto_dense`` off), each after a
   warm-up forward; on P GPUs dense runs inside the XAttention processors (see ``dense_layout``:
   diffusers' processor is inexact there with text padding) with their torch q / k norm and
   RoPE, diffusers' computation, not the fused kernel (which would speed up one side only);
2. all ranks: ``xattn_video.parallel.enable_context_parallel(model, P)`` (our plan), then the
   same two forwards on P GPUs (XAttention applied *after* enabling parallelism);
3. speed-ups (1-GPU time / P-GPU time) for dense and XAttention, and the XAttention-vs-dense
   ratio on 1 and on P GPUs; the P-GPU outputs against the 1-GPU ones (max / relative error,
   per-head densities of the XAttention stats);
4. the tolerance rule (tests/_tolerance.py), dense, on a shallow model (``--check-blocks``
   double + single blocks, full width, same input): the P-GPU bf16 output's error against an
   fp32 one-GPU reference (TF32 off) must be at most 2x the one-GPU bf16 error plus the fp32
   rounding floor. XAttention has no fp32 reference at 720p (the PyTorch sparse reference
   would materialise N x N scores); its P-GPU output is compared with the one-GPU XAttention
   output (max / relative error) and its per-head densities with the one-GPU ones.

The issue's targets: speed-up >= 1.8x for dense and XAttention; P-GPU XAttention-vs-dense
ratio >= the 1-GPU ratio minus 10%.

``--small``: a tiny model (2 heads x 16) on the CPU (gloo) or GPU at 64x64x9 -- the code path
only, for checking this script without GPUs:
``torchrun --nproc_per_node 2 benchmarks/bench_ulysses.py --small --out /tmp/u.json``.
Numbers from ``--small`` are not measurements of anything.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, print_table, qk_prep_fused, save_json  # noqa: E402

import xattn_video as xv  # noqa: E402
from xattn_video import parallel  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(args, device: torch.device, dtype: torch.dtype, blocks: tuple[int, int] | None = None):
    """Same random weights on every rank (seed 0 on the build device)."""
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(0)
    if args.small:
        kw = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16,
                  num_layers=1, num_single_layers=2, num_refiner_layers=1, patch_size=1,
                  text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(4, 6, 6))  # fmt: skip
    else:
        kw = {}
    if blocks is not None:
        kw.update(num_layers=blocks[0], num_single_layers=blocks[1])
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = HunyuanVideoTransformer3DModel(**kw)
    finally:
        torch.set_default_dtype(prev)
    return model.eval().requires_grad_(False)


def make_inputs(args, device: torch.device, dtype: torch.dtype) -> dict:
    g = torch.Generator(device=device).manual_seed(1)
    if args.small:
        lat, txt, pooled, L = (4, 3, 8, 8), 16, 8, 8
    else:
        lat = (16, (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8)
        txt, pooled, L = 4096, 768, 256
    mask = torch.zeros(1, L, dtype=torch.bool, device=device)
    mask[:, : min(args.text_valid, L)] = True
    return dict(
        hidden_states=torch.randn(1, *lat, device=device, dtype=dtype, generator=g),
        timestep=torch.tensor([900], device=device),
        encoder_hidden_states=torch.randn(1, L, txt, device=device, dtype=dtype, generator=g),
        encoder_attention_mask=mask,
        pooled_projections=torch.randn(1, pooled, device=device, dtype=dtype, generator=g),
        guidance=torch.tensor([6000.0], device=device, dtype=dtype),
        return_dict=False,
    )


def token_count(inputs: dict, small: bool) -> int:
    """Video plus text tokens of one :func:`make_inputs` sample (patch 1x2x2; 1x1x1 small)."""
    n_video = inputs["hidden_states"][0, 0].numel() // (1 if small else 4)
    return n_video + inputs["encoder_hidden_states"].shape[1]


def rounding_floor(ref: torch.Tensor) -> float:
    """The tolerance rule's floor (tests/_tolerance.py): twice fp32's rounding of ``ref``,
    whatever its dtype (the fp64 reference's own floor is ~1e-16)."""
    ref = ref.float()
    return 2 * (ref + 0.3 - 0.3 - ref).abs().max().item()


def forward(model, inputs, device, repeats: int) -> tuple[float, torch.Tensor]:
    """(median seconds of ``repeats`` timed forwards after one warm-up, the output)."""
    with torch.inference_mode():
        out = model(**inputs)[0]
        times = []
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            out = model(**inputs)[0]
            _sync(device)
            times.append(time.perf_counter() - t0)
    return statistics.median(times), out.float()


def xattn_cfg(args) -> xv.XAttentionConfig:
    """Ratio mode pins the density; auto_dense off so every layer runs the sparse path (the
    cost model would otherwise calibrate first and may keep layers dense)."""
    if args.small:
        return xv.XAttentionConfig(warmup_steps=0, selection="ratio", ratio=args.ratio,
                                   stride=4, block_size=16, backend="torch",
                                   auto_dense=False)  # fmt: skip
    return xv.XAttentionConfig(
        warmup_steps=0, selection="ratio", ratio=args.ratio, stride=8, block_size=128,
        auto_dense=False,
    )  # fmt: skip


def dense_layout(model) -> xv.XAttentionHandle | None:
    """On P GPUs, dense attention inside the XAttention processors (every forward dense): they
    put the ranks' tokens in one-GPU order first. diffusers' own processor applies the
    whole-sequence key-padding mask to the rank-interleaved keys, exact only when the padding
    fits in the last rank's text share (not with --text-valid 64 of 256)."""
    if getattr(model, "_parallel_config", None) is None:
        return None
    from xattn_video.pipelines.multiprocess import dense_layout_config

    return xv.apply_xattention(model, dense_layout_config(steps=10**9))  # more steps than any run


def run_pair(model, inputs, args, device, one_gpu: bool) -> dict:
    """Dense and XAttention forwards; on rank 0 only when ``one_gpu``."""
    res: dict = {}
    if one_gpu and dist.get_rank() != 0:
        return res
    handle = dense_layout(model)
    try:  # P GPUs: the processors' torch q / k preparation, as diffusers' on one GPU (the
        # fused one would make the dense speed-up part kernel, not parallelism)
        with qk_prep_fused(handle is None):
            res["dense_s"], res["dense_out"] = forward(model, inputs, device, args.repeats)
    finally:
        if handle is not None:
            handle.remove()
    handle = xv.apply_xattention(model, xattn_cfg(args))
    try:
        res["xattn_s"], res["xattn_out"] = forward(model, inputs, device, args.repeats)
        summ = handle.stats.summary()
        res["density"], res["per_head"] = summ["sparse_density"], summ["per_head"]
    finally:
        handle.remove()
    return res


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def tolerance_check(args, device, P) -> dict:
    """Dense tolerance rule on a shallow full-width model: P-GPU bf16 vs fp32 one-GPU ref."""
    blocks = (args.check_blocks, args.check_blocks)
    out: dict = {"blocks": list(blocks)}
    if dist.get_rank() == 0:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        ref_model = build(args, device, torch.float32, blocks)
        with torch.inference_mode():
            ref = ref_model(**make_inputs(args, device, torch.float32))[0].double()
        del ref_model
        m1 = build(args, device, torch.bfloat16, blocks)
        with torch.inference_mode():
            one = m1(**make_inputs(args, device, torch.bfloat16))[0]
        del m1
        out.update(one_gpu_err=max_err(one, ref))
        out["floor"] = rounding_floor(ref)
    dist.barrier()
    mp = build(args, device, torch.bfloat16, blocks)
    parallel.enable_context_parallel(mp, P)
    dense_layout(mp)
    with torch.inference_mode():
        many = mp(**make_inputs(args, device, torch.bfloat16))[0]
    if dist.get_rank() == 0:
        out["p_gpu_err"] = max_err(many, ref)
        out["ok"] = out["p_gpu_err"] <= 2 * out["one_gpu_err"] + out["floor"]
    del mp
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--frames", type=int, default=129)
    p.add_argument("--text-valid", type=int, default=64, help="valid prompt tokens of 256")
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--check-blocks", type=int, default=1, help="0: skip the tolerance check")
    p.add_argument("--small", action="store_true", help="tiny model: the code path only")
    p.add_argument("--out", default="docs/results/bench_ulysses.json")
    args = p.parse_args(argv)

    cuda = torch.cuda.is_available()
    if not cuda and not args.small:
        sys.exit("bench_ulysses needs CUDA GPUs (or --small for the CPU code path)")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    P = dist.get_world_size()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    if dist.get_rank() == 0:
        print(environment(), f"world size {P}", flush=True)

    model = build(args, device, dtype)
    inputs = make_inputs(args, device, dtype)
    one = run_pair(model, inputs, args, device, one_gpu=True)
    dist.barrier()
    parallel.enable_context_parallel(model, P)
    many = run_pair(model, inputs, args, device, one_gpu=False)
    del model
    if cuda:
        torch.cuda.empty_cache()
    check = tolerance_check(args, device, P) if args.check_blocks > 0 else None

    if dist.get_rank() == 0:
        rows = []
        for mode in ("dense", "xattn"):
            rows.append(dict(
                mode=mode, one_gpu_s=one[f"{mode}_s"], p_gpu_s=many[f"{mode}_s"],
                speedup=one[f"{mode}_s"] / many[f"{mode}_s"],
                vs_dense_one=one["dense_s"] / one[f"{mode}_s"],
                vs_dense_p=many["dense_s"] / many[f"{mode}_s"],
                max_abs_diff=max_err(many[f"{mode}_out"], one[f"{mode}_out"]),
                rel_l2=((many[f"{mode}_out"] - one[f"{mode}_out"]).norm()
                        / one[f"{mode}_out"].norm()).item(),
            ))  # fmt: skip
        head_diff = max(abs(a - b) for a, b in zip(one["per_head"], many["per_head"], strict=True))
        ratio_one, ratio_p = rows[1]["vs_dense_one"], rows[1]["vs_dense_p"]
        targets = {
            "speedup_dense_ge_1.8": rows[0]["speedup"] >= 1.8,
            "speedup_xattn_ge_1.8": rows[1]["speedup"] >= 1.8,
            "p_gpu_xattn_ratio_ge_one_gpu_minus_10pct": ratio_p >= 0.9 * ratio_one,
            "tolerance_rule_dense": None if check is None else check["ok"],
        }
        print_table(rows, [
            ("mode", "mode", "{}"), ("one_gpu_s", "1 GPU s", "{:.2f}"),
            ("p_gpu_s", f"{P} GPUs s", "{:.2f}"), ("speedup", "speed-up", "{:.2f}"),
            ("vs_dense_p", f"x vs dense ({P} GPUs)", "{:.2f}"),
            ("max_abs_diff", "max |diff| vs 1 GPU", "{:.3e}"), ("rel_l2", "rel L2", "{:.2e}"),
        ])  # fmt: skip
        print(f"density 1 GPU {one['density']:.4f}, {P} GPUs {many['density']:.4f}; "
              f"per-head max diff {head_diff:.2e}; tolerance check {check}")  # fmt: skip
        print("targets:", targets)
        save_json(args.out, {
            "what": f"HunyuanVideo transformer (random weights) one forward, 1 vs {P} GPUs "
                    "(Ulysses), dense and XAttention ratio mode",
            "small_code_path_only": args.small, "world_size": P, "tokens": token_count(inputs, args.small),
            "config": vars(args), "rows": rows, "density_one_gpu": one["density"],
            "density_p_gpus": many["density"], "per_head_density_max_diff": head_diff,
            "tolerance_check": check, "targets": targets,
        })  # fmt: skip
        print(f"wrote {args.out}")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
