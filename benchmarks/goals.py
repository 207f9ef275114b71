"""The Hopper-kernel speed goals (issue 8), read off benchmark JSON, so README's at-a-glance
numbers come from the files and not from hand copying.

    python benchmarks/goals.py docs/results/bench_attention_h200_<sha>_{119056,67576}.json \\
        [--pipeline docs/results/bench_pipeline_h200_<sha>.json] [--json out.json]

Prints one Markdown table: a row per goal, a column per length (``bench_attention``) or
resolution (``bench_pipeline``) of each file, each cell the measured value and whether it meets
the goal. Every ratio is to the first "sdpa cuDNN dense"
row of its own file (what ``bench_attention.py`` measures first, in the same process):

- sparse kernels: effective throughput / cuDNN's = density x cuDNN ms / ms, the least over
  the densities measured (bf16: the auto kernel's "ours sparse d=X" rows; fp8: "ours sparse
  fp8 d=X"), and fp8 at density 0.1 on its own (the one the kernels missed);
- estimate: its time as a share of cuDNN's dense time, S=8 and S=16, for the estimate that
  bf16 attention runs by default (the file's ``environment.auto_estimate_of_bf16`` at its
  ``config.dim``, 128 when absent; files from before that field say nothing, and both
  estimates are shown);
- whole op at ratio 0.3, S=8: cuDNN ms / ms, the default (bf16 attention with that estimate)
  and fp8 attention + fp8 estimate;
- pipeline (``bench_pipeline.py``, its ratio-0.3 rows): the 50-step projection with its
  warm-up dense steps against diffusers' default, for the default estimate and all-bf16.

Not supported: files from other benchmarks, or rows the file does not have (they show "-").
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

SPARSE = re.compile(r"ours sparse (fp8 )?d=([0-9.]+)$")
CUDNN = "sdpa cuDNN dense"


def _rows(data: dict) -> dict[str, dict]:
    """method -> row (the first of each name: cuDNN's first, timed at the start)."""
    out: dict[str, dict] = {}
    for row in data.get("rows", []):
        out.setdefault(row["method"], row)
    return out


def split(data: dict, key: str) -> list[tuple[object, dict]]:
    """A file's rows per ``key`` value (``"n"``: a ``bench_attention`` length, ``"res"``: a
    ``bench_pipeline`` resolution), in the file's order, each as a file of its own."""
    groups: dict[object, list[dict]] = {}
    for row in data.get("rows", []):
        groups.setdefault(row.get(key), []).append(row)
    return [(k, {**data, "rows": rows}) for k, rows in groups.items()]


def default_estimate(data: dict) -> str | None:
    """What ``estimate_precision="auto"`` ran for bf16 attention when the file was written
    ("bf16" / "fp8") at the file's head dim (``config.dim``, 128 for the pipelines), or None
    when the file does not record it."""
    auto = data.get("environment", {}).get("auto_estimate_of_bf16")
    head_dim = (data.get("config") or {}).get("dim", 128)
    return auto.get(str(head_dim)) if isinstance(auto, dict) else None


def attention_goals(data: dict) -> dict[str, float | None]:
    """The measured value of each attention goal in one ``bench_attention.py`` file."""
    rows = _rows(data)
    if CUDNN not in rows:
        raise ValueError(f"no {CUDNN!r} row: not a bench_attention.py file")
    cudnn = rows[CUDNN]["ms"]
    eff: dict[str, dict[float, float]] = {"bf16": {}, "fp8": {}}
    for method, row in rows.items():
        m = SPARSE.match(method)
        if m and row.get("density"):
            eff["fp8" if m.group(1) else "bf16"][float(m.group(2))] = (
                row["density"] * cudnn / row["ms"]
            )
    est = default_estimate(data)

    def share(method: str) -> float | None:
        return rows[method]["ms"] / cudnn if method in rows else None

    def speedup(method: str) -> float | None:
        return cudnn / rows[method]["ms"] if method in rows else None

    out: dict[str, float | None] = {
        "bf16_sparse_min": min(eff["bf16"].values(), default=None),
        "fp8_sparse_min_0.3_1.0": min((v for d, v in eff["fp8"].items() if d >= 0.3), default=None),
        "fp8_sparse_0.1": eff["fp8"].get(0.1),
    }
    for s in (8, 16):
        fp8_row, bf16_row = f"ours estimate fp8 S={s}", f"ours estimate S={s}"
        out[f"estimate_S{s}"] = share(fp8_row if est == "fp8" else bf16_row) if est else None
        out[f"estimate_S{s}_bf16"] = share(bf16_row)
        out[f"estimate_S{s}_fp8"] = share(fp8_row)
    bf16_op = "ours whole op xattention ratio=0.3 S=8"
    fp8est_op = "ours whole op xattention bf16 + fp8 estimate ratio=0.3 S=8"
    out["whole_op_bf16"] = speedup(fp8est_op if est == "fp8" else bf16_op) if est else None
    out["whole_op_all_bf16"] = speedup(bf16_op)
    out["whole_op_bf16_fp8_estimate"] = speedup(fp8est_op)
    out["whole_op_fp8"] = speedup("ours whole op xattention fp8 + fp8 estimate ratio=0.3 S=8")
    return out


PIPELINE_DEFAULT = "dense, diffusers default"


def pipeline_goals(data: dict) -> dict[str, float | None]:
    """The 50-step projection against diffusers' default in one ``bench_pipeline.py`` file:
    the default op (bf16 attention, its default estimate), all-bf16 and fp8 + fp8 estimate."""
    rows = _rows(data)
    if PIPELINE_DEFAULT not in rows:
        raise ValueError(f"no {PIPELINE_DEFAULT!r} row: not a bench_pipeline.py file")
    est = default_estimate(data)

    def proj(method: str) -> float | None:
        row = rows.get(method)
        return None if row is None else row.get("projected_speedup_vs_default")

    base = "xattn ratio=0.3"  # the goal's density
    fp8est = proj(f"{base} bf16 + fp8 estimate")
    return {
        "pipeline_default": (fp8est if est == "fp8" else proj(base)) if est else None,
        "pipeline_all_bf16": proj(base),
        "pipeline_bf16_fp8_estimate": fp8est,
        "pipeline_fp8": proj(f"{base} fp8 + fp8 estimate"),
    }


# (key, goal text, target, "min": at least / "max": at most, format)
GOALS = [
    ("bf16_sparse_min", "bf16 sparse, eff. throughput / cuDNN, least over densities", 1.0,
     "min", "{:.2f}x"),
    ("fp8_sparse_min_0.3_1.0", "fp8 sparse, same, densities 0.3-1.0", 1.5, "min", "{:.2f}x"),
    ("fp8_sparse_0.1", "fp8 sparse, same, density 0.1", 1.5, "min", "{:.2f}x"),
    ("estimate_S8", "estimate S=8, share of cuDNN dense (default estimate)", 0.05, "max",
     "{:.1%}"),
    ("estimate_S16", "estimate S=16, same", 0.03, "max", "{:.1%}"),
    ("estimate_S8_bf16", "estimate S=8, bf16 estimate", 0.05, "max", "{:.1%}"),
    ("estimate_S16_bf16", "estimate S=16, bf16 estimate", 0.03, "max", "{:.1%}"),
    ("estimate_S8_fp8", "estimate S=8, fp8 estimate", 0.05, "max", "{:.1%}"),
    ("estimate_S16_fp8", "estimate S=16, fp8 estimate", 0.03, "max", "{:.1%}"),
    ("whole_op_bf16", "whole op ratio 0.3 S=8, bf16 attention (default estimate), speed-up",
     3.0, "min", "{:.2f}x"),
    ("whole_op_all_bf16", "whole op, bf16 attention + bf16 estimate", 3.0, "min", "{:.2f}x"),
    ("whole_op_bf16_fp8_estimate", "whole op, bf16 attention + fp8 estimate", 3.0, "min",
     "{:.2f}x"),
    ("whole_op_fp8", "whole op, fp8 attention + fp8 estimate", 4.0, "min", "{:.2f}x"),
    ("pipeline_default", "pipeline 50 steps (5 dense) vs diffusers' default, default op", 2.5,
     "min", "{:.2f}x"),
    ("pipeline_all_bf16", "pipeline, all-bf16", 2.5, "min", "{:.2f}x"),
    ("pipeline_bf16_fp8_estimate", "pipeline, bf16 attention + fp8 estimate", 2.5, "min",
     "{:.2f}x"),
    ("pipeline_fp8", "pipeline, fp8 + fp8 estimate (reported)", None, "min", "{:.2f}x"),
]  # fmt: skip


def cell(value: float | None, target: float | None, kind: str, fmt: str) -> str:
    """One table cell: the value and, with a target, "met" or "missed by x%" (relative)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = fmt.format(value)
    if target is None:
        return text
    if (value >= target) if kind == "min" else (value <= target):
        return f"{text} met"
    short = (target - value) / target if kind == "min" else (value - target) / target
    return f"{text} **missed** by {short:.1%}"


def table(columns: list[tuple[str, dict[str, float | None]]]) -> str:
    """Markdown: a row per goal any column has a value for, a column per (title, values)."""
    head = "| goal | target | " + " | ".join(t for t, _ in columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 2)]
    for key, text, target, kind, fmt in GOALS:
        if all(vals.get(key) is None for _, vals in columns):
            continue
        goal = "-" if target is None else ("≥ " if kind == "min" else "≤ ") + fmt.format(target)
        cells = [cell(vals.get(key), target, kind, fmt) for _, vals in columns]
        lines.append(f"| {text} | {goal} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _load(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SystemExit(f"goals.py: cannot read {path}: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise SystemExit(f"goals.py: {path} is not a benchmark JSON (no 'rows' list)")
    return data


def rows_table(data: dict) -> str:
    """Markdown: every row of a ``bench_attention.py`` file (each length's rows in the file's
    order) with its median ms, time and effective throughput relative to that length's first
    cuDNN row; whole-op rows' last column is their speed-up (cuDNN ms / ms)."""
    lines = [
        "| N tokens | method | median ms | x cuDNN dense time | density | eff. TFLOP/s "
        "| eff. throughput / cuDNN dense |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    if not all("ms" in row for row in data["rows"]):
        raise ValueError("rows without 'ms': not a bench_attention.py file")
    for n, part in split(data, "n"):
        cudnn = _rows(part).get(CUDNN, {}).get("ms")
        for row in part["rows"]:
            ms, density, tflops = row["ms"], row.get("density"), row.get("tflops")
            time_ratio = f"{ms / cudnn:.3f}" if cudnn else ""
            if not cudnn or density is None or row["method"].startswith("ours estimate"):
                last = ""
            elif "whole op" in row["method"]:
                last = f"**{cudnn / ms:.2f}x faster**"
            else:
                last = f"{density * cudnn / ms:.2f}"
            lines.append(
                f"| {n:,} | {row['method']} | {ms:.{2 if ms < 100 else 1}f} | {time_ratio} | "
                + ("" if density is None else f"{density:.2f}")
                + " | "
                + ("" if tflops is None else f"{tflops:.0f}")
                + f" | {last} |"
            )
    return "\n".join(lines)


def _title(data: dict, what: object) -> str:
    """A column's title: the length (as "119,056 tokens") or resolution, GPU and git SHA."""
    what = f"{what:,} tokens" if isinstance(what, int) else what
    env = data.get("environment", {})
    done = "" if data.get("complete", True) else ", incomplete"
    return f"{what} ({env.get('gpu', '?')}, git {env.get('git_sha') or '?'}{done})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("attention", nargs="*", help="bench_attention.py JSON files")
    ap.add_argument("--pipeline", action="append", default=[],
                    help="a bench_pipeline.py JSON file (repeatable)")  # fmt: skip
    ap.add_argument("--json", help="also write the values to this file")
    ap.add_argument("--rows", action="store_true",
                    help="print every row of the bench_attention.py files instead")  # fmt: skip
    args = ap.parse_args(argv)
    if not args.attention and not args.pipeline:
        ap.error("give at least one bench_attention.py or --pipeline file")
    if args.rows:
        if args.pipeline or not args.attention:
            ap.error("--rows takes bench_attention.py files only")
        tables = []
        for path in args.attention:
            try:
                tables.append(rows_table(_load(path)))
            except ValueError as err:
                raise SystemExit(f"goals.py: {path}: {err}") from err
        print("\n\n".join(tables))
        return 0
    columns = []  # (file, title, values)
    kinds = ((args.attention, "n", attention_goals), (args.pipeline, "res", pipeline_goals))
    for paths, key, goals_of in kinds:
        for path in paths:
            for what, part in split(_load(path), key):
                try:
                    columns.append((path, _title(part, what), goals_of(part)))
                except ValueError as err:
                    raise SystemExit(f"goals.py: {path}: {err}") from err
    print(table([(title, values) for _, title, values in columns]))
    if args.json:  # a list: two runs of one commit on one GPU have the same title
        out = [{"file": f, "title": t, "values": v} for f, t, v in columns]
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
