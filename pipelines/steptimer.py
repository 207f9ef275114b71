"""Per-step wall times of a diffusers pipeline call (what ``generate`` records per video).

The clock starts at the transformer's first forward (a pre-forward hook: text encoding and
latent preparation are not a step) and marks each step's end from ``callback_on_step_end``,
synchronizing a CUDA device at each mark so that the times are the GPU's.

Not supported: pipelines without ``callback_on_step_end``; per-layer times.
"""

from __future__ import annotations

import time
from typing import Any

import torch


def sync(device: torch.device) -> None:
    """Wait for ``device``'s queued work (CUDA); nothing elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Per-step wall times from a transformer pre-forward hook and ``callback_on_step_end``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start: float | None = None
        self.ends: list[float] = []

    def reset(self) -> None:
        self.start, self.ends = None, []

    def pre_forward(self, module: Any, args: Any) -> None:
        if self.start is None:
            sync(self.device)
            self.start = time.perf_counter()

    def callback(self, pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict:
        sync(self.device)
        self.ends.append(time.perf_counter())
        return kwargs

    def per_step(self) -> list[float]:
        if self.start is None:
            return []
        marks = [self.start, *self.ends]
        return [b - a for a, b in zip(marks, marks[1:], strict=False)]
