"""Per-frame PSNR between two videos.

``PSNR_t = 10 * log10(1 / max(mse_t, 1e-10))`` on pixels scaled to [0, 1] (data range 1), so
identical frames give the 100 dB cap instead of infinity. mse is taken over H, W and the 3 RGB
channels of frame t, in float64.

Not supported: Y-channel-only PSNR, other data ranges, pooled-MSE PSNR (average the returned
per-frame values instead; that is the convention, and it differs from the pooled value).
"""

from __future__ import annotations

import numpy as np
import torch

from .inputs import Video, check_pair, default_device, iter_chunks

MSE_FLOOR = 1e-10
"""Lower bound on the per-frame mse; caps PSNR at 100 dB."""


@torch.no_grad()
def psnr(
    ref: Video, test: Video, *, device: str | torch.device | None = None, chunk: int = 16
) -> np.ndarray:
    """Per-frame PSNR in dB.

    Args:
        ref: (T, H, W, 3) uint8, or float in [0, 1] (numpy or torch).
        test: same shape as ``ref``.
        device: where to compute (default CUDA if available, else CPU).
        chunk: frames moved to ``device`` at a time.

    Returns:
        (T,) float64 numpy array, at most ``10 * log10(1 / MSE_FLOOR)`` = 100.

    Raises:
        ValueError: shapes differ or an input is not a valid video.
    """
    check_pair(ref, test)
    dev = default_device(device)
    out = []
    for a, b in iter_chunks(ref, test, chunk, dev, torch.float64):
        mse = (a - b).square().mean(dim=(1, 2, 3)).clamp_min(MSE_FLOOR)
        out.append((-10.0 * torch.log10(mse)).cpu())
    return torch.cat(out).numpy().astype(np.float64)
