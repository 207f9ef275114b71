"""Which (attention, estimate) precisions the tiny-DiT quality sweep (and the pipeline
benchmarks) run and how their rows are labelled, whether fp8 runs on this machine, and how each
run compares with the all-bf16 run of its setting (issue 8: the fp8 run's PSNR against dense
within 0.5 dB of the bf16 run's).

Not supported: precisions other than bf16 and fp8 (the kernels have no others).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

import xattn_video as xv
from xattn_video.op_checks import resolve_estimate_precision


def precision_pairs(
    precisions: Sequence[str],
    estimate_precisions: Sequence[str],
    device: torch.device | str | None = None,
    head_dim: int | None = None,
) -> list[tuple[str, str]]:
    """The (attention, estimate) precisions to run on ``device`` (None: no GPU), backend "auto",
    for a model of attention ``head_dim``: each attention precision with each estimate
    precision, "auto" resolved as the config's default resolves it there
    (:func:`xattn_video.op_checks.resolve_estimate_precision`: fp8 for fp8 attention, and on
    Hopper GPUs at head dim 64 / 128 for bf16 too), in order, without repeats."""
    pairs = [
        (p, resolve_estimate_precision(e, p, backend="auto", device=device, head_dim=head_dim))
        for p in precisions
        for e in estimate_precisions
    ]
    return list(dict.fromkeys(pairs))


def with_baseline(pairs: list[tuple[str, str]], asked: Sequence[str]) -> list[tuple[str, str]]:
    """``pairs`` with the all-bf16 run first when fp8 was ``asked`` for (the precisions the
    command line listed) and a run with fp8 has none to be compared with
    (:func:`compare_precisions`): on Hopper "auto" is the fp8 estimate for bf16 attention too,
    so ``--precision bf16,fp8`` alone had no baseline and ``vs_bf16`` came out empty. The
    default sweep (bf16, "auto") is not doubled: its fp8 estimate there is just the default."""
    if "fp8" in asked and any("fp8" in pair for pair in pairs) and ("bf16", "bf16") not in pairs:
        return [("bf16", "bf16"), *pairs]
    return pairs


def runnable_pairs(pipe, a: argparse.Namespace, device: torch.device, say=print):
    """The sweep's (attention, estimate) precisions: :func:`precision_pairs` of ``a.precision``
    x ``a.estimate_precision`` for the model's head dim, less those that need fp8 where it
    does not run (:func:`fp8_unavailable`, each reason said), then :func:`with_baseline`.
    Empty when nothing is left (every run asked for needs fp8)."""
    head_dim = int(pipe.transformer.config.attention_head_dim)
    pairs = precision_pairs(a.precision, a.estimate_precision, device, head_dim)
    if any("fp8" in pair for pair in pairs):
        why = fp8_unavailable(pipe, a, device)
        for use, reason in why.items():
            say(f"[sweep] skipping the runs with fp8 {use}: {reason}")
        pairs = [(p, e) for p, e in pairs
                 if not (p == "fp8" and "attention" in why or e == "fp8" and "estimate" in why)]  # fmt: skip
    if pairs and pairs != (pairs := with_baseline(pairs, [*a.precision, *a.estimate_precision])):
        say("[sweep] adding the all-bf16 run (bf16 + bf16 estimate): the baseline of vs_bf16")
    return pairs


def precision_name(precision: str, estimate_precision: str) -> str:
    """An (attention, estimate) precision pair in words, both named ("fp8 + fp8 estimate",
    "bf16 + bf16 estimate"), so that a name does not depend on what a default resolves to. One
    scheme for the quality sweep and the pipeline benchmarks."""
    return f"{precision} + {estimate_precision} estimate"


def precision_label(precision: str, estimate_precision: str) -> str:
    """A row label's suffix: nothing for all-bf16 (the rows' baseline), else " " and
    :func:`precision_name`."""
    if precision == estimate_precision == "bf16":
        return ""
    return " " + precision_name(precision, estimate_precision)


def fp8_unavailable(pipe, a: argparse.Namespace, device: torch.device) -> dict[str, str]:
    """Why fp8 does not run here, per use ("attention", "estimate"; absent where it runs):
    each tried on one block of the model's head dim, on the backend the sweep runs."""
    tr = pipe.transformer.config
    d = int(tr.attention_head_dim)
    q = torch.randn(1, 1, a.block_size, d, device=device, dtype=pipe.transformer.dtype)
    mask = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=device)
    tries = {
        "attention": lambda: xv.block_sparse_attention(
            q, q, q, mask, block_size=a.block_size, precision="fp8"
        ),
        "estimate": lambda: xv.estimate_block_mask(
            q, q, stride=min(8, a.block_size), block_size=a.block_size, precision="fp8"
        ),
    }
    why = {}
    for use, run in tries.items():
        try:
            run()
        except ValueError as exc:
            why[use] = str(exc)
    return why


MIN_VIDEOS = 8
"""Issue 8's quality criterion asks for at least this many seeds (videos) per run."""


def compare_precisions(rows: list[dict]) -> list[dict]:
    """Per setting, each (attention, estimate) precision run against the all-bf16 run of that
    setting: PSNR vs dense of each, mean and per-video differences. ``within_0p5_db`` is issue
    8's criterion, on the mean over the videos (it asks for >= 8 seeds:
    ``enough_videos``); ``every_video_within_0p5_db`` the stricter per-video one."""
    runs = [r for r in rows if r["kind"] == "xattention"]
    base = {r["setting"]: r for r in runs if r["precision"] == r["estimate_precision"] == "bf16"}
    out = []
    for r in runs:
        r16 = base.get(r["setting"])
        if r16 is None or r is r16:
            continue
        per = [p - p16 for p16, p in zip(r16["per_video"]["psnr"], r["per_video"]["psnr"],
                                         strict=True)]  # fmt: skip
        out.append({
            "setting": r["setting"], "precision": r["precision"],
            "estimate_precision": r["estimate_precision"], "num_videos": len(per),
            "psnr_bf16": r16["psnr"], "psnr": r["psnr"], "delta_psnr": r["psnr"] - r16["psnr"],
            "delta_psnr_per_video": per, "max_abs_delta_per_video": max(abs(x) for x in per),
            "ssim_bf16": r16["ssim"], "ssim": r["ssim"],
            "effective_density_bf16": r16["effective_density"],
            "effective_density": r["effective_density"],
            "attn_s_bf16": r16["attn_s"], "attn_s": r["attn_s"],
            "within_0p5_db": abs(r["psnr"] - r16["psnr"]) <= 0.5,
            "every_video_within_0p5_db": all(abs(x) <= 0.5 for x in per),
            "enough_videos": len(per) >= MIN_VIDEOS,
        })  # fmt: skip
    return out
