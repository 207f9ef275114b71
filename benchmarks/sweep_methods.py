"""More quality per kept block? Token orders, budgets and calibrated per-head thresholds on the
trained tiny DiT, evaluated on held-out videos (one GPU).

Methods (each a curve: PSNR vs effective density), by default without dense warm-up, stride 8
and a fresh mask every step (``--points`` modifiers change that per setting; dense warm-up steps
count as density 1 in the effective density):

- ``uniform``: one threshold for every layer and head (the paper), 3-D tile order;
  (all methods run with ``auto_dense=False``, so every call runs the schedule: no cost-model
  dense calls inflate the density or the quality);
- ``hilbert`` / ``cluster``: the same with the Hilbert-curve or per-head k-means order
  (the k-means permutation is computed inside every attention call, so its cost is in the
  attention time);
- ``budget``: tau 0.97 capped by ``max_density`` per call (blocks admitted by their share of
  their row's estimated mass);
- ``cal-mass`` / ``cal-density``: per-(layer, head) thresholds calibrated on *other* videos
  (other conditions and seeds) for a target true mass per head, or for a mean density spent
  where it keeps the most true mass; ``cal-density-cluster``: the same calibrated for the
  cluster order. Calibration time is reported separately (it is paid once per model).

For each setting: mean / worst-video PSNR, SSIM and LPIPS (when the AlexNet weights resolve)
against the dense video of the same condition and seed, sparse and effective density, the time
per video in the attention modules (CUDA events, incl. permutations and the estimate) and in
the denoising loop. Goal: mean >= 30 dB and worst >= 25 dB at effective density <= 0.40.
Results are written after every setting (``sweep_methods.json``), so a time limit
(``--time-limit``) still leaves a complete file; ``sweep_methods.png`` is the Pareto plot.

Usage (GPU): python benchmarks/sweep_methods.py --out runs/methods [--time-limit 150]
CPU smoke:   python benchmarks/sweep_methods.py --out /tmp/m --random-weights --device cpu \\
                 --frames 5 --height 32 --width 32 --steps 3 --eval-videos 2 --calib-videos 1 \\
                 --quick

Not supported: other models than the tiny DiT, CFG, comparing timings across machines.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save_json  # noqa: E402
from _quality import Metrics, conditions, denoise, generate  # noqa: E402

import xattn_video as xv  # noqa: E402
from xattn_video import thresholds as th  # noqa: E402
from xattn_video.calibrate import calibrate_pipeline  # noqa: E402
from xattn_video.config import TOKEN_ORDERS  # noqa: E402

# method -> (token order, kind, values); kind: "tau" | "budget" | "mass" | "density"
METHODS: dict[str, tuple[str, str, list[float]]] = {
    "uniform": ("tile", "tau", [0.8, 0.85, 0.9]),
    "cal-density": ("tile", "density", [0.3, 0.35, 0.4]),
    "budget": ("tile", "budget", [0.3, 0.35, 0.4]),
    "cal-mass": ("tile", "mass", [0.85, 0.9, 0.95]),
    "cluster": ("cluster", "tau", [0.85, 0.9]),
    "hilbert": ("hilbert", "tau", [0.85, 0.9]),
    "cal-density-cluster": ("cluster", "density", [0.35, 0.4]),
}
QUICK = {"uniform": [0.9], "cluster": [0.9], "budget": [0.35], "cal-density": [0.35]}


def settings(a) -> list[dict]:
    """The settings to run: ``--points``, else the grid of ``--methods`` (``--quick``: one
    value each, the main methods' by default)."""
    out = []
    if a.points:  # "METHOD:VALUE[:MOD...]" in the given order, see parse_point
        return [parse_point(pt) for pt in a.points]
    if a.quick:  # the middle value where QUICK has none (--methods was ignored with --quick)
        middle = {m: [v[len(v) // 2]] for m, (_, _, v) in METHODS.items()}
        table = {m: QUICK.get(m, middle[m]) for m in (a.methods or QUICK)}
    else:
        table = {m: METHODS[m][2] for m in (a.methods or METHODS)}
    for method, values in table.items():
        order, kind, _ = METHODS[method]
        for v in values:
            out.append({"method": method, "order": order, "knob": kind, "value": v})
    return out


MODIFIERS = {"w": "warmup_steps", "r": "mask_refresh", "s": "stride"}
STRIDE = xv.XAttentionConfig().stride
"""A setting's stride without an ``s<N>`` modifier."""


def stride_of(s: dict) -> int:
    return s.get("stride", STRIDE)


def parse_point(pt: str) -> dict:
    """``METHOD:VALUE[:MOD...]`` -> a setting. MOD: ``w<N>`` dense warm-up steps, ``r<N>``
    mask refresh, ``s<N>`` stride, or a token order name (overrides the method's). A point
    with modifiers is its own curve (method name + modifiers), e.g. ``budget:0.35:w2:r3``."""
    method, *rest = pt.split(":")
    if method not in METHODS:
        raise SystemExit(f"--points: unknown method {method!r} (one of {sorted(METHODS)})")
    try:
        value, *mods = rest
        value = float(value)
    except ValueError:  # "budget" or "budget:abc": a traceback after the model loaded
        raise SystemExit(f"--points: {pt!r} is not METHOD:VALUE[:MOD...] with a number") from None
    order, kind, _ = METHODS[method]
    s = {"method": method, "order": order, "knob": kind, "value": value}
    for mod in mods:
        if mod in TOKEN_ORDERS:
            s["order"] = mod
        elif mod[:1] in MODIFIERS and mod[1:].isdigit():
            s[MODIFIERS[mod[0]]] = int(mod[1:])
        else:
            raise SystemExit(f"--points: bad modifier {mod!r} in {pt!r} (w<N>, r<N>, s<N>, "
                             f"or an order: {TOKEN_ORDERS})")  # fmt: skip
    if mods:
        s["method"] = f"{method}[{':'.join(mods)}]"
    return s


def config_for(s: dict, a, thr_files: dict) -> xv.XAttentionConfig:
    base = dict(stride=stride_of(s), block_size=a.block_size,
                warmup_steps=s.get("warmup_steps", 0), mask_refresh=s.get("mask_refresh", 1),
                token_order=s["order"], tile_size=tuple(a.tile), auto_dense=False)  # fmt: skip
    if s["knob"] == "tau":
        return xv.XAttentionConfig(threshold=s["value"], **base)
    if s["knob"] == "budget":
        return xv.XAttentionConfig(threshold=0.97, max_density=s["value"], **base)
    path = thr_files[(s["order"], stride_of(s), s["knob"], s["value"])]
    return xv.XAttentionConfig(thresholds_file=str(path), **base)


def plot(rows: list[dict], path: Path, videos: str) -> None:
    """The Pareto plot; ``videos`` names the evaluation set in the panel titles. Each curve has
    its own colour and marker (the colour cycle alone repeats after 10 curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharex=True)
    methods = sorted({r["method"] for r in rows if r["kind"] == "xattention"})
    colours, markers = plt.get_cmap("tab10").colors, "osD^vP*X"
    for ax, key, title in ((axes[0], "psnr", "mean PSNR"), (axes[1], "psnr_min", "worst video")):
        for i, m in enumerate(methods):
            rs = sorted((r for r in rows if r.get("method") == m),
                        key=lambda r: r["effective_density"])  # fmt: skip
            style = {"color": colours[i % 10], "marker": markers[i // 10 % len(markers)]}
            ax.plot([r["effective_density"] for r in rs], [min(r[key], 60) for r in rs],
                    ms=4, label=m, **style)  # fmt: skip
        ax.axhline(30 if key == "psnr" else 25, color="r", lw=0.8, ls="--")
        ax.axvline(0.40, color="gray", lw=0.8, ls=":")
        ax.set_xlabel("effective density")
        ax.set_ylabel(f"{title} vs dense (dB)")
        ax.set_title(f"{title}, {videos}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    from xattn_video.pipelines.tiny.model import TRAIN_FRAMES, TRAIN_HEIGHT, TRAIN_WIDTH

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--weights", default=None, help="tiny DiT dir (default: the shipped assets)")
    p.add_argument("--random-weights", action="store_true", help="random init (smoke tests)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="default: cuda if available, else cpu")  # fmt: skip
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--frames", type=int, default=TRAIN_FRAMES)
    p.add_argument("--height", type=int, default=TRAIN_HEIGHT)
    p.add_argument("--width", type=int, default=TRAIN_WIDTH)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--tile", type=int, nargs=3, default=(2, 8, 8))
    p.add_argument("--eval-videos", type=int, default=16, help="held-out videos")
    p.add_argument("--eval-seed", type=int, default=100, help="seed of held-out video i: + i")
    p.add_argument("--eval-start", type=int, default=8,
                   help="first condition of the held-out videos (a confirmation run of a "
                        "chosen setting uses other conditions and seeds than the sweep)")  # fmt: skip
    p.add_argument("--calib-videos", type=int, default=4, help="calibration videos")
    p.add_argument("--calib-seed", type=int, default=1000)
    p.add_argument("--calib-every", type=int, default=3, help="measure every N-th step")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), help="default: all")
    p.add_argument("--quick", action="store_true",
                   help="one point per method (default: the main ones)")  # fmt: skip
    p.add_argument("--points", nargs="+",
                   help="METHOD:VALUE[:MOD...] settings instead of the grid; MOD: w<N> dense "
                        "warm-up steps, r<N> mask refresh, s<N> stride, or a token order")  # fmt: skip
    p.add_argument("--time-limit", type=float, default=None, help="stop starting settings (s)")
    p.add_argument("--no-lpips", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    plan = settings(a)  # a bad --points entry: before the model loads
    calibrated = [s for s in plan if s["knob"] in ("mass", "density")]
    t_all = time.perf_counter()
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.random_weights:
        from xattn_video.pipelines.tiny.factory import random_tiny_pipeline

        pipe = random_tiny_pipeline(0, device=device, dtype=dtype)
    else:
        from xattn_video.pipelines.tiny.pipeline import load_tiny_pipeline

        pipe = load_tiny_pipeline(a.weights, device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    # held-out videos: conditions eval_start.. with seeds eval_seed + i; calibration: other
    # conditions (from index 8 + eval_videos on) with other seeds
    all_conds = conditions(max(8 + a.eval_videos + a.calib_videos, a.eval_start + a.eval_videos))
    ev_conds = all_conds[a.eval_start : a.eval_start + a.eval_videos]
    ev_seeds = [a.eval_seed + i for i in range(a.eval_videos)]
    c0 = 8 + a.eval_videos
    cal_conds = all_conds[c0 : c0 + a.calib_videos]
    shared = {c.canonical() for c in ev_conds} & {c.canonical() for c in cal_conds}
    if shared and calibrated:  # by value: the same condition can sit at two indices
        raise SystemExit(f"--eval-start {a.eval_start}: held-out conditions overlap the "
                         f"calibration conditions {c0}..{c0 + a.calib_videos - 1}: "
                         f"{sorted(c.describe() for c in shared)}")  # fmt: skip
    cal_seeds = [a.calib_seed + i for i in range(a.calib_videos)]
    metrics = Metrics(device, not a.no_lpips)
    n_tok = a.frames * (a.height // 2) * (a.width // 2)
    gpu = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"[methods] {len(plan)} settings, {a.eval_videos} held-out videos, {a.steps} steps, "
          f"{n_tok} video tokens, {gpu}; LPIPS: {metrics.lpips_note}", flush=True)  # fmt: skip

    # warm-up (Triton compile) per order, 2 steps, outside every timing
    warm = argparse.Namespace(**{**vars(a), "steps": 2})
    denoise(pipe, ev_conds, ev_seeds, warm)
    for order in sorted({s["order"] for s in plan}):
        cfg = xv.XAttentionConfig(token_order=order, warmup_steps=0, block_size=a.block_size,
                                  tile_size=tuple(a.tile), max_density=0.5,
                                  auto_dense=False)  # fmt: skip
        with xv.apply_xattention(pipe, cfg):
            denoise(pipe, ev_conds, ev_seeds, warm)

    dense, dense_s, dense_attn = generate(pipe, ev_conds, a, device, ev_seeds)
    rows = [{"kind": "dense", "label": "dense", "effective_density": 1.0, "denoise_s": dense_s,
             "attn_s": dense_attn}]  # fmt: skip
    print(f"[methods] dense: {dense_s:.3f} s/video, attention {dense_attn:.3f} s/video "
          f"({time.perf_counter() - t_all:.0f}s)", flush=True)  # fmt: skip

    # calibration, once per order and stride, on the calibration videos; thresholds per target
    # (a point's s<N> was calibrated at stride 8, and the file's stride check refused it)
    thr_files, calib = {}, {}
    tmp = Path(tempfile.mkdtemp())  # re-targeted files (rebuild them from the saved curves)
    for order, stride in sorted({(s["order"], stride_of(s)) for s in calibrated}):
        name = order if stride == STRIDE else f"{order}_s{stride}"
        try:
            cfg = xv.XAttentionConfig(warmup_steps=0, block_size=a.block_size, token_order=order,
                                      tile_size=tuple(a.tile), stride=stride)  # fmt: skip
            kw = dict(condition=cal_conds, height=a.height, width=a.width, num_frames=a.frames,
                      num_inference_steps=a.steps, output_type="uint8",
                      generator=[torch.Generator("cpu").manual_seed(s) for s in cal_seeds])  # fmt: skip
            t0 = time.perf_counter()
            data = calibrate_pipeline(
                pipe, cfg, [kw], model="tiny", target_mass=0.9,
                steps=range(0, a.steps, a.calib_every),
                meta={"conditions": [c.describe() for c in cal_conds], "seeds": cal_seeds,
                      "size": [a.frames, a.height, a.width], "steps": a.steps},
            )  # fmt: skip
            if cuda:
                torch.cuda.synchronize()
            sec = time.perf_counter() - t0
            th.save_thresholds(out / f"thresholds_{name}.json", data)
            calib[name] = {"seconds": round(sec, 2), "calls_measured": data["calls_measured"],
                           "measure_seconds": data["measure_seconds"]}  # fmt: skip
            print(f"[methods] calibrated {name} in {sec:.1f}s: {th.summary(data)}", flush=True)
            for s in calibrated:
                if (s["order"], stride_of(s)) == (order, stride):
                    tgt = {f"target_{s['knob']}": s["value"]}
                    path = tmp / f"thresholds_{name}_{s['knob']}{s['value']:g}.json"
                    th.save_thresholds(path, th.retarget(data, **tgt))
                    thr_files[(order, stride, s["knob"], s["value"])] = path
        except Exception as exc:  # noqa: BLE001 - the uncalibrated methods still run
            print(f"[methods] calibration of {name} failed: {type(exc).__name__}: {exc}")
            calib[name] = {"error": f"{type(exc).__name__}: {exc}"}

    payload = {"args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(a).items()},
               "video_tokens": n_tok, "lpips": metrics.lpips_note, "calibration": calib,
               "eval_conditions": [c.describe() for c in ev_conds], "eval_seeds": ev_seeds,
               "calib_conditions": [c.describe() for c in cal_conds], "calib_seeds": cal_seeds,
               "rows": rows, "skipped": []}  # fmt: skip
    for i, s in enumerate(plan):
        if a.time_limit is not None and time.perf_counter() - t_all > a.time_limit:
            payload["skipped"].append(s)
            continue
        try:
            cfg = config_for(s, a, thr_files)
            with xv.apply_xattention(pipe, cfg) as handle:
                handle.stats.reset()
                video, sec, attn = generate(pipe, ev_conds, a, device, ev_seeds)
                summ = handle.stats.summary()
        except Exception as exc:  # noqa: BLE001 - one failing setting must not lose the others
            print(f"[methods] {s} failed: {type(exc).__name__}: {exc}", flush=True)
            payload["skipped"].append({**s, "error": f"{type(exc).__name__}: {exc}"})
            continue
        m = metrics(dense, video)
        row = {"kind": "xattention", "label": f"{s['method']} {s['knob']}={s['value']:g}", **s,
               "sparse_density": summ["sparse_density"],
               "effective_density": summ["effective_density"], "denoise_s": sec,
               "attn_s": attn, "speedup_attn": dense_attn / attn, **m}  # fmt: skip
        rows.append(row)
        print(f"[methods] {i + 1}/{len(plan)} {row['label']}: PSNR {m['psnr']:.2f} (min "
              f"{m['psnr_min']:.2f}) SSIM {m['ssim']:.4f} eff. density "
              f"{row['effective_density']:.3f} attn {attn * 1e3:.1f} ms/video "
              f"({time.perf_counter() - t_all:.0f}s)", flush=True)  # fmt: skip
        payload["seconds"] = round(time.perf_counter() - t_all, 1)
        save_json(out / "sweep_methods.json", payload)

    sparse = [r for r in rows if r["kind"] == "xattention"]
    ok = [r for r in sparse if r["psnr"] >= 30 and r["psnr_min"] >= 25
          and r["effective_density"] <= 0.40]  # fmt: skip
    best = min(ok, key=lambda r: (r["effective_density"], -r["psnr"])) if ok else None
    payload["goal_met_by"] = best["label"] if best else None
    payload["seconds"] = round(time.perf_counter() - t_all, 1)
    save_json(out / "sweep_methods.json", payload)
    last = a.eval_start + a.eval_videos - 1
    plot(rows, out / "sweep_methods.png", f"videos of conditions {a.eval_start}..{last}")
    cols = [("label", "setting", "{}"), ("psnr", "PSNR", "{:.2f}"), ("psnr_min", "min", "{:.2f}"),
            ("ssim", "SSIM", "{:.4f}"), ("lpips", "LPIPS", "{:.4f}"),
            ("effective_density", "eff. dens.", "{:.3f}"), ("attn_s", "attn s/video", "{:.4f}"),
            ("denoise_s", "s/video", "{:.3f}")]  # fmt: skip
    print()
    print_table(rows, cols)
    print(f"\ngoal (>= 30 dB mean, >= 25 dB worst, eff. density <= 0.40) met by: "
          f"{payload['goal_met_by']}; {payload['seconds']} s", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
