"""Training figures of the tiny DiT: the sample strip (data vs. model) and the loss curve.

Written by :mod:`~xattn_video.pipelines.tiny.train` next to the weights (``samples.png``,
``loss_curve.png``); matplotlib (Agg backend) is imported on first use.

Not supported: interactive display, video output (the strip shows a few frames per clip).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .pipeline import TinyVideoPipeline
from .synthetic import Condition, make_batch

__all__ = ["SAMPLE_CONDITIONS", "frame_strip", "loss_plot"]

SAMPLE_CONDITIONS = (
    Condition(0, 1, 4),  # pan left over coffee
    Condition(1, 2, 0),  # zoom in on cat
    Condition(2, 0, 1),  # rotate clockwise on astronaut
    Condition(3, 4, 2),  # sprite moving up over motorcycle
)
"""The conditions of ``samples.png``."""


def frame_strip(
    pipe: TinyVideoPipeline, path: Path, *, frames: int, height: int, width: int, steps: int
) -> np.ndarray:
    """Rows: (training clip, sample) per condition of ``SAMPLE_CONDITIONS``; columns: frames
    spread over the clip. Writes a PNG to ``path``; returns the samples (B, T, H, W, 3) uint8."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conds = list(SAMPLE_CONDITIONS)
    gen = [torch.Generator("cpu").manual_seed(1000 + i) for i in range(len(conds))]
    video = pipe(
        condition=conds,
        height=height,
        width=width,
        num_frames=frames,
        num_inference_steps=steps,
        generator=gen,
        output_type="uint8",
    ).frames
    data = make_batch(
        conds, [7 + i for i in range(len(conds))], frames=frames, height=height, width=width
    )
    data = ((data + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 4, 1).numpy()
    cols = sorted({int(round(x)) for x in np.linspace(0, frames - 1, min(6, frames))})
    fig, axes = plt.subplots(
        2 * len(conds), len(cols), squeeze=False, figsize=(1.4 * len(cols), 1.5 * 2 * len(conds))
    )
    for i, c in enumerate(conds):
        for r, (clip, what) in enumerate(((data[i], "data"), (video[i], "sample"))):
            for j, t in enumerate(cols):
                ax = axes[2 * i + r, j]
                ax.imshow(clip[t])
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(what, fontsize=7)
                if r == 0 and j == 0:
                    ax.set_title(c.describe(), fontsize=7, loc="left")
                if 2 * i + r == len(axes) - 1:
                    ax.set_xlabel(f"frame {t}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return video


def loss_plot(curve: dict, path: Path) -> None:
    """Loss against step (log scale), a dashed line where the clip length changes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(curve["step"], curve["loss"], lw=1)
    frames = curve.get("frames") or []
    if frames and len(set(frames)) > 1:
        switch = curve.get("short_steps") or next(
            st for st, f in zip(curve["step"], frames, strict=True) if f == frames[-1]
        )
        ax.axvline(switch, color="k", lw=0.8, ls="--")
        ax.annotate(
            f" {frames[0]} -> {frames[-1]} frames",
            (switch, max(curve["loss"])),
            fontsize=7,
            va="top",
        )
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"flow-matching loss (mean over {curve['every']} steps)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
