"""How close does XAttention keep the trained tiny DiT's videos to dense attention? (one GPU)

For K conditions / seeds at the training size (17 x 64 x 64 pixels = 17,408 video tokens) it
generates the dense videos, then the XAttention videos for a set of settings, and reports per
setting: PSNR / SSIM (and LPIPS when the AlexNet weights are on disk) against the dense video
of the same seed, the density of the sparse calls and the effective density (dense warm-up
calls count 1.0), and the time per video spent denoising and inside the attention modules
(CUDA events around every double- / single-stream attention module: projections, norms, RoPE,
attention and output projection). A repeated dense run gives the noise floor.

Settings (``--grid oat``, the default): the base tau=0.9, warm-up 2 of 30 steps, stride 8,
raster order, mask refresh 1; then one factor at a time (tau, warm-up, stride, token order,
mask refresh) and a few combinations. ``--grid full`` runs the whole product. ``--quick``: 4
videos and no combinations.

Attention-level view: for a few layers and steps of one dense run, q/k/v are captured (the
HunyuanVideo processor's ``dispatch_attention_fn`` is wrapped while that run lasts) and, for
each (tau, stride, token order), the estimated block mask is compared with the true attention:
the share of the true softmax mass inside the selected blocks, the same for the best possible
mask with as many blocks per row ("oracle"), and the relative L2 error of the block-sparse
output against dense attention.

Preset and precision: ``--preset NAME`` sweeps only that preset's setting from
``xattn_video.config.PRESETS`` (e.g. ``tiny-dit``: tau 0.97 under a 0.357 density budget,
stride 8, Hilbert order, 2 dense warm-up steps, the mask re-estimated every 3rd step; the block
and tile size still come from ``--block-size`` / ``--tile``, and ``auto_dense`` is off as in
the grid), and ``--precision bf16,fp8`` runs every sparse setting once per
attention precision (``XAttentionConfig.precision``), each with every
``--estimate-precision`` (``estimate_precision``; "auto", the default, is what the config's
default resolves to on this GPU: fp8 for fp8 attention, and on Hopper for bf16 too).
fp8 attention needs an sm90+ GPU, the fp8 estimate too on a GPU (the CPU emulates it): runs
that cannot run here are skipped with a message. The JSON's ``vs_bf16`` gives, per setting and
(attention, estimate) precision other than all-bf16, the PSNR of each against dense and the
difference to the all-bf16 run, per video and in the mean (issue 8: within 0.5 dB with >= 8
seeds).

Token orders: ``--orders`` takes raster, tile, hilbert and cluster (the attention-level view
skips cluster: its per-head orders depend on q / k). Density budgets, calibrated per-(layer,
head) thresholds and a held-out evaluation with a Pareto plot per method are in
``benchmarks/sweep_methods.py``.

Recommendation: the setting with the lowest effective density whose mean PSNR vs dense is at
least ``--psnr-target`` (30 dB); if none reaches it, the one with the highest PSNR (and it says
so). Outputs: a printed table, ``sweep_quality.json`` and ``sweep_quality.png`` in ``--out``.

Usage (GPU):  python benchmarks/sweep_quality.py --out runs/sweep [--weights DIR] [--quick]
FP8 vs bf16:  python benchmarks/sweep_quality.py --out runs/fp8 --preset tiny-dit \
                  --precision bf16,fp8 [--estimate-precision bf16,fp8] --no-attention-view
CPU smoke:    python benchmarks/sweep_quality.py --out /tmp/sw --random-weights --device cpu \
                  --frames 5 --height 32 --width 32 --steps 4 --block-size 16 --num-videos 2 --quick

Not supported: several GPUs, other models than the tiny DiT, CFG (guidance 1), comparing
timings across machines (the dense baseline runs in the same process; compare only there).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _attention_view import QKVCapture, aggregate_attention, attention_view  # noqa: E402
from _common import keeping_rows, print_table, save_json  # noqa: E402
from _precisions import (  # noqa: E402
    MIN_VIDEOS,
    compare_precisions,
    precision_label,
    precision_name,
    runnable_pairs,
)
from _quality import Metrics, conditions, denoise, generate  # noqa: E402

import xattn_video as xv  # noqa: E402
from xattn_video.op_checks import ESTIMATE_PRECISIONS, PRECISIONS  # noqa: E402
from xattn_video.pipelines.tiny.factory import random_tiny_pipeline  # noqa: E402
from xattn_video.pipelines.tiny.model import TRAIN_FRAMES, TRAIN_HEIGHT, TRAIN_WIDTH  # noqa: E402
from xattn_video.pipelines.tiny.pipeline import load_tiny_pipeline  # noqa: E402

BASE = {"threshold": 0.9, "warmup_steps": 2, "stride": 8, "token_order": "raster",
        "mask_refresh": 1}  # fmt: skip


# ---------------------------------------------------------------------------------- settings
# fields a preset setting may not carry into the sweep (the command line sets them)
_NOT_FROM_PRESET = ("block_size", "tile_size", "backend", "precision", "estimate_precision",
                    "auto_dense")  # fmt: skip


def _label(s: dict) -> str:
    out = (f"tau={s['threshold']:g} w={s['warmup_steps']} S={s['stride']} "
           f"{s['token_order']} r={s['mask_refresh']}")  # fmt: skip
    if s.get("max_density", 1.0) < 1.0:
        out += f" max_d={s['max_density']:g}"
    return out


def _row_label(s: dict, precision: str, estimate_precision: str) -> str:
    """``s``'s label, then the precisions unless all-bf16 (:func:`_precisions.precision_label`)."""
    return _label(s) + precision_label(precision, estimate_precision)


def make_config(
    s: dict, a: argparse.Namespace, precision: str, estimate_precision: str
) -> xv.XAttentionConfig:
    """The research config of setting ``s``: every call of the schedule sparse (auto_dense off,
    it would run calls dense), the command line's block and tile size, the precisions."""
    return xv.XAttentionConfig(**s, block_size=a.block_size, tile_size=tuple(a.tile),
                               auto_dense=False, precision=precision,
                               estimate_precision=estimate_precision)  # fmt: skip


def preset_setting(name: str) -> dict:
    """The setting of preset ``name``: the swept fields plus the preset's other fields."""
    if name not in xv.PRESETS:
        raise ValueError(f"--preset: unknown preset {name!r}; known: {sorted(xv.PRESETS)}")
    cfg = xv.XAttentionConfig.from_preset(name)
    keys = [*BASE, *(k for k in xv.PRESETS[name] if k not in BASE)]
    return {k: getattr(cfg, k) for k in keys if k not in _NOT_FROM_PRESET}


def view_args(a: argparse.Namespace) -> argparse.Namespace:
    """The attention view's grid: the swept ``--taus`` / ``--strides`` / ``--orders``, or with
    ``--preset`` the preset's own threshold, stride, order and density budget (the view scored
    the default grid, none of which is the preset's setting)."""
    if not a.preset:
        return a
    s = build_settings(a)[0]
    grid = {"taus": [s["threshold"]], "strides": [s["stride"]], "orders": [s["token_order"]]}
    return argparse.Namespace(**{**vars(a), **grid, "view_max_density": s.get("max_density")})


def build_settings(a: argparse.Namespace) -> list[dict]:
    """The list of XAttention settings (dicts of XAttentionConfig fields) to sweep."""
    if a.preset:
        s = preset_setting(a.preset)
        return [dict(s, warmup_steps=min(s["warmup_steps"], a.steps - 1))]
    base = dict(BASE, warmup_steps=min(BASE["warmup_steps"], a.steps - 1))
    axes = {
        "threshold": a.taus,
        "warmup_steps": [w for w in a.warmups if w < a.steps],
        "stride": [s for s in a.strides if a.block_size % s == 0],
        "token_order": a.orders,
        "mask_refresh": a.refresh,
    }
    if a.grid == "full":
        out = [dict(zip(axes, vals, strict=True)) for vals in itertools.product(*axes.values())]
    else:
        out = [base]
        for key, values in axes.items():
            out += [dict(base, **{key: v}) for v in values if v != base[key]]
        if not a.quick:
            combos = [
                {"threshold": 0.95, "token_order": "tile"},
                {"threshold": 0.8, "warmup_steps": 5},
                {"threshold": 0.9, "token_order": "tile", "mask_refresh": 3},
                {"threshold": 0.95, "warmup_steps": 5, "token_order": "tile"},
                {"threshold": 0.8, "token_order": "tile", "stride": 16},
            ]
            out += [dict(base, **c) for c in combos]
    seen, uniq = set(), []
    for s in out:
        s = dict(s, warmup_steps=min(s["warmup_steps"], a.steps - 1))
        key = _label(s)
        if key not in seen:
            seen.add(key)
            uniq.append(s)
    return uniq


# ---------------------------------------------------------------------------------- plot
def plot(rows: list[dict], attn_rows: list[dict], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    ax = axes[0]
    sparse = [r for r in rows if r["kind"] == "xattention"]
    xs = [r["effective_density"] for r in sparse]
    ys = [min(r["psnr"], 60.0) for r in sparse]
    ax.scatter(xs, ys, c=[r["threshold"] for r in sparse], cmap="viridis", s=30)
    for r, x, y in zip(sparse, xs, ys, strict=True):
        ax.annotate(r["label"], (x, y), fontsize=5, alpha=0.8, xytext=(3, 2),
                    textcoords="offset points")  # fmt: skip
    ax.axhline(target, color="r", lw=0.8, ls="--", label=f"{target:g} dB")
    ax.set_xlabel("effective density (dense warm-up calls count 1)")
    ax.set_ylabel("PSNR vs dense (dB, mean over videos)")
    ax.set_title("video quality vs density")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[1]
    if attn_rows:
        orders = dict.fromkeys(r["order"] for r in attn_rows)  # hilbert's rows were left out
        for order, marker in zip(orders, "osD^v", strict=False):
            rs = [r for r in attn_rows if r["order"] == order]
            if rs:
                ax.scatter([r["density"] for r in rs], [r["mass_kept"] for r in rs],
                           marker=marker, label=f"{order}: estimated mask", s=30)  # fmt: skip
                ax.scatter([r["density"] for r in rs], [r["oracle_mass"] for r in rs],
                           marker=marker, facecolors="none", edgecolors="k", s=30,
                           label=f"{order}: oracle, same block count")  # fmt: skip
                for r in rs:
                    ax.annotate(f"tau={r['threshold']:g} S={r['stride']}",
                                (r["density"], r["mass_kept"]), fontsize=5,
                                xytext=(3, -6), textcoords="offset points")  # fmt: skip
        ax.legend(fontsize=7)
    ax.set_xlabel("block density of the sparse call")
    ax.set_ylabel("share of true attention mass kept")
    ax.set_title("attention level (mean over sampled layers / steps)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ---------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--weights", default=None, help="tiny DiT dir (default: the shipped assets)")
    p.add_argument("--random-weights", action="store_true", help="random init (smoke tests)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="default: cuda if available, else cpu")  # fmt: skip
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--num-videos", type=int, default=None,
                   help="K conditions / seeds (default 8, 4 with --quick)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of video i is seed + i")
    p.add_argument("--steps", type=int, default=30, help="denoising steps")
    p.add_argument("--frames", type=int, default=TRAIN_FRAMES)
    p.add_argument("--height", type=int, default=TRAIN_HEIGHT)
    p.add_argument("--width", type=int, default=TRAIN_WIDTH)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--tile", type=int, nargs=3, default=(2, 8, 8), help="tile (t, h, w) tokens")
    p.add_argument("--taus", type=float, nargs="+", default=[0.8, 0.9, 0.95])
    p.add_argument("--warmups", type=int, nargs="+", default=[0, 2, 5])
    p.add_argument("--strides", type=int, nargs="+", default=[8, 16])
    p.add_argument("--orders", nargs="+", default=["raster", "tile"])
    p.add_argument("--refresh", type=int, nargs="+", default=[1, 3])
    p.add_argument("--grid", choices=["oat", "full"], default="oat",
                   help="one-at-a-time around the base (+ combos), or the full product")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="4 videos, no combinations")
    p.add_argument("--preset", default=None,
                   help="sweep only this preset's setting (e.g. tiny-dit) instead of the grid")  # fmt: skip
    p.add_argument(
        "--precision",
        default="bf16",
        help="comma list of sparse precisions, from bf16,fp8 (fp8: Hopper only)",
    )
    p.add_argument("--estimate-precision", default="auto",
                   help="comma list of estimate precisions, from auto,bf16,fp8 (auto: the "
                        "config's default on this GPU)")  # fmt: skip
    p.add_argument("--psnr-target", type=float, default=30.0)
    p.add_argument("--attn-layers", type=int, nargs="+", default=[0, 2, 5])
    p.add_argument("--attn-steps", type=int, nargs="+", default=[2, 10, 20, 29])
    p.add_argument("--no-attention-view", action="store_true")
    p.add_argument("--no-lpips", action="store_true")
    a = p.parse_args(argv)
    if a.num_videos is None:  # an explicit --num-videos 8 was taken for the default with --quick
        a.num_videos = 4 if a.quick else 8
    if a.quick and a.grid == "full":
        p.error("--quick and --grid full exclude each other")
    if a.grid == "full" and a.preset is None:  # an empty axis made an empty product, found
        # only once the dense references had run (max() of no sparse row)
        if not any(w < a.steps for w in a.warmups):
            p.error(f"--warmups: no value below --steps {a.steps}, so --grid full has no setting")
        if not any(a.block_size % s == 0 for s in a.strides):
            p.error(f"--strides: none divides --block-size {a.block_size}, so --grid full has "
                    "no setting")  # fmt: skip
    for name, allowed in (("precision", PRECISIONS), ("estimate_precision", ESTIMATE_PRECISIONS)):
        vals = [x.strip() for x in getattr(a, name).split(",") if x.strip()]
        if not vals or any(x not in allowed for x in vals) or len(set(vals)) != len(vals):
            p.error(f"--{name.replace('_', '-')}: a comma list of distinct values from "
                    f"{allowed}, got {','.join(vals) or 'nothing'}")  # fmt: skip
        setattr(a, name, vals)
    if a.preset is not None and a.preset not in xv.PRESETS:
        p.error(f"--preset: unknown preset {a.preset!r}; known: {sorted(xv.PRESETS)}")
    a.attn_steps = [s for s in a.attn_steps if s < a.steps] or [a.steps - 1]
    for s, prec in itertools.product(build_settings(a), a.precision):  # not after the dense
        try:  # references ran
            make_config(s, a, prec, a.estimate_precision[0])
        except ValueError as e:
            p.error(f"setting {_label(s)}: {e}")
    return a


def _sweep(a, pipe, conds, seeds, runs, metrics, device, rows, save, t_all) -> None:
    """The dense reference, its repeat and every (setting, precisions) run, each row appended
    to ``rows`` and saved as it is measured (a crash or Ctrl-C keeps them)."""
    dense, dense_s, dense_attn_s = generate(pipe, conds, a, device, seeds)
    dense2, dense2_s, dense2_attn_s = generate(pipe, conds, a, device, seeds)
    rows += [
        {"kind": "dense", "label": "dense", "denoise_s": dense_s, "attn_s": dense_attn_s,
         "effective_density": 1.0, "sparse_density": None},
        {"kind": "dense repeat", "label": "dense repeat", "denoise_s": dense2_s,
         "attn_s": dense2_attn_s, "effective_density": 1.0, "sparse_density": None,
         **metrics(dense, dense2)},
    ]  # fmt: skip
    save()
    print(f"[sweep] dense: {dense_s:.3f} s/video denoising, {dense_attn_s:.3f} s/video in "
          "attention", flush=True)  # fmt: skip
    for i, (s, (prec, est)) in enumerate(runs):
        cfg = make_config(s, a, prec, est)
        handle = xv.apply_xattention(pipe, cfg)
        try:
            handle.stats.reset()
            video, sec, attn_sec = generate(pipe, conds, a, device, seeds)
            summ = handle.stats.summary()
        finally:
            handle.remove()
        row = {
            "kind": "xattention", "label": _row_label(s, prec, est), "setting": _label(s),
            "precision": prec, "estimate_precision": est, **s,
            "sparse_density": summ["sparse_density"],
            "effective_density": summ["effective_density"],
            "num_sparse_calls": summ["num_sparse_calls"],
            "num_dense_calls": summ["num_dense_calls"],
            "denoise_s": sec, "attn_s": attn_sec,
            "speedup_denoise": dense_s / sec, "speedup_attn": dense_attn_s / attn_sec,
            **metrics(dense, video),
        }  # fmt: skip
        rows.append(row)
        save()
        if i == 0:
            t_first = time.perf_counter()
        eta = ((time.perf_counter() - t_first) / i * (len(runs) - 1 - i)) if i else None
        print(f"[sweep] {i + 1}/{len(runs)} {row['label']}: PSNR {row['psnr']:.2f} dB "
              f"SSIM {row['ssim']:.4f} eff. density {row['effective_density']:.3f} "
              f"({time.perf_counter() - t_all:.0f}s elapsed"
              + (f", ~{eta:.0f}s to go)" if eta is not None else ")"), flush=True)  # fmt: skip


def main(argv=None) -> int:
    a = parse_args(argv)
    device = torch.device(a.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    if a.random_weights:
        pipe = random_tiny_pipeline(0, device=device, dtype=dtype)
    else:
        pipe = load_tiny_pipeline(a.weights, device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    conds = conditions(a.num_videos)
    settings = build_settings(a)
    metrics = Metrics(device, not a.no_lpips)
    p = int(pipe.transformer.config.patch_size)
    grid = (a.frames, a.height // p, a.width // p)
    n_video = grid[0] * grid[1] * grid[2]
    pairs = runnable_pairs(pipe, a, device, say=lambda m: print(m, flush=True))
    if not pairs:
        print("[sweep] nothing left to run (every run asked for needs fp8)", flush=True)
        return 1
    runs = [(s, pair) for s in settings for pair in pairs]
    names = ", ".join(precision_name(p, e) for p, e in pairs)
    print(f"[sweep] {len(settings)} settings x {len(pairs)} precision(s) "
          f"({names}) x {len(conds)} videos, {a.steps} steps, "
          f"{a.frames}x{a.height}x{a.width} px = {n_video} video tokens, {a.dtype} on "
          f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}; "
          f"LPIPS: {metrics.lpips_note}", flush=True)  # fmt: skip

    # warm-up: kernels / autotuning for each stride and order, outside the timed runs
    warm_args = argparse.Namespace(**{**vars(a), "steps": 2})
    seeds = [a.seed + i for i in range(len(conds))]
    denoise(pipe, conds, seeds, warm_args)
    for stride, order, (prec, est) in itertools.product(
        sorted({s["stride"] for s in settings}),
        sorted({s["token_order"] for s in settings}),
        pairs,
    ):
        cfg = xv.XAttentionConfig(stride=stride, token_order=order, warmup_steps=0,
                                  block_size=a.block_size, tile_size=tuple(a.tile),
                                  auto_dense=False, precision=prec,
                                  estimate_precision=est)  # fmt: skip
        with xv.apply_xattention(pipe, cfg):
            denoise(pipe, conds, seeds, warm_args)

    # dense reference (+ q/k/v capture of video 0 is done in a separate B=1 run below)
    args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(a).items()}
    with keeping_rows(out_dir / "sweep_quality.json", args) as (rows, save):
        _sweep(a, pipe, conds, seeds, runs, metrics, device, rows, save, t_all)

    attn_rows, attn_agg = [], []
    if not a.no_attention_view:
        cap = QKVCapture(pipe, a.attn_layers, a.attn_steps)
        cap.run(lambda: denoise(pipe, conds[:1], seeds[:1], a))
        attn_rows = attention_view(cap.captures, view_args(a), n_video, grid)
        attn_agg = aggregate_attention(attn_rows)
        cap.captures.clear()

    # recommendation
    sparse = [r for r in rows if r["kind"] == "xattention"]
    ok = [r for r in sparse if r["psnr"] >= a.psnr_target]
    if ok:
        best = min(ok, key=lambda r: (r["effective_density"], -r["psnr"]))
        why = f"lowest effective density with mean PSNR >= {a.psnr_target:g} dB vs dense"
    else:
        best = max(sparse, key=lambda r: r["psnr"])
        why = f"no setting reached {a.psnr_target:g} dB; this one has the highest PSNR"
    rec_cfg = make_config({k: best[k] for k in settings[0]}, a, best["precision"],
                          best["estimate_precision"])  # fmt: skip
    cmp = compare_precisions(rows)

    cols = [("label", "setting", "{}"), ("psnr", "PSNR dB", "{:.2f}"),
            ("psnr_min", "min", "{:.2f}"), ("ssim", "SSIM", "{:.4f}"),
            ("lpips", "LPIPS", "{:.4f}"), ("sparse_density", "sparse dens.", "{:.3f}"),
            ("effective_density", "eff. dens.", "{:.3f}"), ("denoise_s", "s/video", "{:.3f}"),
            ("attn_s", "attn s/video", "{:.3f}"), ("speedup_attn", "attn x", "{:.2f}")]  # fmt: skip
    print()
    print_table(rows, cols)
    if attn_agg:
        print("\nattention level (mean over layers", a.attn_layers, "and steps", a.attn_steps, ")")
        print_table(attn_agg, [("threshold", "tau", "{:g}"), ("stride", "S", "{}"),
                               ("order", "order", "{}"), ("density", "density", "{:.3f}"),
                               ("mass_kept", "mass kept", "{:.4f}"),
                               ("oracle_mass", "oracle", "{:.4f}"),
                               ("rel_l2", "rel L2", "{:.4f}")])  # fmt: skip
    for c in cmp:
        name = precision_name(c["precision"], c["estimate_precision"])
        print(f"\n{name} vs all-bf16, {c['setting']} ({c['num_videos']} videos): PSNR vs dense "
              f"{c['psnr']:.2f} vs {c['psnr_bf16']:.2f} dB ({c['delta_psnr']:+.2f} dB, per "
              f"video up to {c['max_abs_delta_per_video']:.2f} dB; mean within 0.5 dB: "
              f"{'yes' if c['within_0p5_db'] else 'NO'}, every video: "
              f"{'yes' if c['every_video_within_0p5_db'] else 'NO'}"
              f"{'' if c['enough_videos'] else f'; fewer than {MIN_VIDEOS} videos'}), "
              f"effective density "
              f"{c['effective_density']:.3f} vs {c['effective_density_bf16']:.3f}, attention "
              f"{c['attn_s']:.3f} vs {c['attn_s_bf16']:.3f} s/video")  # fmt: skip
    print(f"\nrecommended: {best['label']} ({why}): PSNR {best['psnr']:.2f} dB, effective "
          f"density {best['effective_density']:.3f}")  # fmt: skip

    payload = {
        "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(a).items()},
        "conditions": [c.describe() for c in conds],
        "video_tokens": n_video,
        "lpips": metrics.lpips_note,
        "precisions": [list(pair) for pair in pairs],
        "rows": rows,
        "vs_bf16": cmp,
        "attention_view": {"per_capture": attn_rows, "aggregate": attn_agg},
        "recommended": {"label": best["label"], "reason": why, "config": rec_cfg.to_dict(),
                        "psnr": best["psnr"], "ssim": best["ssim"],
                        "effective_density": best["effective_density"]},
        "seconds": round(time.perf_counter() - t_all, 1),
    }  # fmt: skip
    save_json(out_dir / "sweep_quality.json", payload)
    plot(rows, attn_agg, a.psnr_target, out_dir / "sweep_quality.png")
    print(f"[sweep] wrote {out_dir / 'sweep_quality.json'} and {out_dir / 'sweep_quality.png'} "
          f"in {payload['seconds']} s", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
