"""Masks of the fp8 estimate against the bf16 one, on the trained tiny DiT's own attention.

Generates videos with the tiny DiT through XAttention's sparse path with every block kept
(the calibration config: exact attention, so the run is the dense one), and at every call of
the measured steps estimates the block mask of ``--preset``'s setting (threshold, density
budget, stride, block size, token order) twice, with ``estimate_precision`` "bf16" and "fp8"
(torch backend: the fp8 estimate emulated exactly, e4m3-rounded Q and K then fp32 math, so the
run needs no GPU). Reports, pooled over calls: the share of block pairs the two masks decide
differently, the density of each, and the share of the true attention mass (softmax(QK^T)
summed per block) each keeps. Prints a table and writes JSON (machine, versions, git SHA).

Usage: python benchmarks/estimate_fp8_masks.py [--videos 2] [--start 0] [--frames 9] [--steps 8]
       [--device cpu] [--out results/estimate_fp8_masks.json]

Not supported: other models than the tiny DiT, per-layer thresholds files.
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
from xattn_video.calibrate import calibration_config, true_block_mass  # noqa: E402
from xattn_video.pipelines.tiny.model import TRAIN_HEIGHT, TRAIN_WIDTH  # noqa: E402
from xattn_video.pipelines.tiny.pipeline import load_tiny_pipeline  # noqa: E402
from xattn_video.pipelines.tiny.synthetic import MOTIONS, Condition  # noqa: E402


class MaskCompare:
    """The sparse path's observer: both estimates' masks per call, against the true mass."""

    def __init__(self, cfg: xv.XAttentionConfig, steps: set[int]) -> None:
        self.cfg, self.steps = cfg, steps
        self.rows: list[dict] = []

    def wants(self, step: int) -> bool:
        return int(step) in self.steps

    def observe(self, layer, step, q, k, kv_len, dense_from) -> None:
        cfg = self.cfg
        kw = dict(threshold=cfg.threshold, stride=cfg.stride, block_size=cfg.block_size,
                  kv_len=kv_len, dense_from=dense_from, backend="torch",
                  max_density=cfg.max_density if cfg.max_density < 1.0 else None)  # fmt: skip
        masks = {p: xv.estimate_block_mask(q, k, precision=p, **kw) for p in ("bf16", "fp8")}
        true = true_block_mass(q, k, block_size=cfg.block_size, kv_len=kv_len)
        total = float(true.sum())
        row = dict(layer=int(layer), step=int(step), pairs=masks["bf16"].numel(),
                   differ=int((masks["bf16"] != masks["fp8"]).sum()))  # fmt: skip
        for p, m in masks.items():
            row[f"density_{p}"] = float(m.float().mean())
            row[f"kept_mass_{p}"] = float((true * m).sum()) / total
        self.rows.append(row)


def pooled(rows: list[dict]) -> dict:
    """Block-pair-weighted means over calls."""
    pairs = sum(r["pairs"] for r in rows)
    out = {"calls": len(rows), "differ_share": sum(r["differ"] for r in rows) / pairs}
    for key in ("density_bf16", "density_fp8", "kept_mass_bf16", "kept_mass_fp8"):
        out[key] = sum(r[key] * r["pairs"] for r in rows) / pairs
    out["max_differ_share_per_call"] = max(r["differ"] / r["pairs"] for r in rows)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny-dit", help="XAttentionConfig preset")
    p.add_argument("--videos", type=int, default=2)
    p.add_argument("--start", type=int, default=0, help="index of the first video (its seed)")
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--steps", type=int, default=8, help="denoising steps")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="results/estimate_fp8_masks.json")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    cfg = xv.XAttentionConfig.from_preset(a.preset, backend="torch")
    pipe = load_tiny_pipeline(device=a.device)
    obs = MaskCompare(cfg, set(range(cfg.warmup_steps, a.steps)))  # the steps that run sparse
    t0 = time.perf_counter()
    with xv.apply_xattention(pipe, calibration_config(cfg)) as handle:
        handle.controller.observer = obs
        for i in range(a.start, a.start + a.videos):
            cond = Condition(i % len(MOTIONS), (3 * i) % 8, (5 * i + 1) % 8)
            pipe(condition=[cond], height=TRAIN_HEIGHT, width=TRAIN_WIDTH, num_frames=a.frames,
                 num_inference_steps=a.steps, output_type="latent",
                 generator=torch.Generator("cpu").manual_seed(i))  # fmt: skip
            print(f"video {i - a.start + 1}/{a.videos}: {len(obs.rows)} calls measured", flush=True)
    summary = pooled(obs.rows)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    print_table([summary], [("calls", "calls", "{}"), ("differ_share", "blocks differ", "{:.2e}"),
                            ("max_differ_share_per_call", "worst call", "{:.2e}"),
                            ("density_bf16", "density bf16", "{:.4f}"),
                            ("density_fp8", "density fp8", "{:.4f}"),
                            ("kept_mass_bf16", "true mass kept bf16", "{:.4f}"),
                            ("kept_mass_fp8", "true mass kept fp8", "{:.4f}")])  # fmt: skip
    save_json(a.out, {"benchmark": "estimate_fp8_masks", "config": vars(a),
                      "xattention": cfg.to_dict(), "summary": summary, "rows": obs.rows})  # fmt: skip


if __name__ == "__main__":
    main()
