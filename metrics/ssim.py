"""Per-frame SSIM (Wang et al. 2004) between two videos, in torch, on CPU or GPU.

Definition (equal to ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1)`` per frame):
- pixels in [0, 1], Gaussian window 11x11 with sigma 1.5 (normalised), K1=0.01, K2=0.03;
- local means/variances/covariance by a separable Gaussian filter, "valid" region only (no
  padding; the 5-pixel border is cropped, as skimage does);
- the SSIM map is averaged per channel, then over the 3 RGB channels.

Numerics: float64 on CPU, float32 on CUDA. Each (frame, channel) is centred on its mean before
the second moments are filtered (variance is shift-invariant), which keeps float32 within 1e-4 of
the float64 result. The filter is written as shifted multiply-adds, not ``conv2d``, so cuDNN's TF32
mode cannot reduce precision.

Not supported: frames smaller than 11x11, other windows/sigmas/K, MS-SSIM, grayscale/luma-only
SSIM, sample covariance (skimage's default ``use_sample_covariance=True``).
"""

from __future__ import annotations

import numpy as np
import torch

from .inputs import Video, check_pair, default_device, iter_chunks

WIN_SIZE = 11
SIGMA = 1.5
K1 = 0.01
K2 = 0.03


def gaussian_taps(win_size: int = WIN_SIZE, sigma: float = SIGMA) -> list[float]:
    """Normalised 1-D Gaussian weights, length ``win_size`` (as scipy's gaussian_filter)."""
    x = np.arange(win_size, dtype=np.float64) - (win_size - 1) / 2
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return (w / w.sum()).tolist()


def _filter_valid(x: torch.Tensor, taps: list[float]) -> torch.Tensor:
    """Separable 'valid' filtering of the last two dims: (..., H, W) -> (..., H-k+1, W-k+1)."""
    k = len(taps)
    wv = x.shape[-1] - k + 1
    h = x[..., 0:wv] * taps[0]
    for i in range(1, k):
        h.add_(x[..., i : i + wv], alpha=taps[i])
    hv = h.shape[-2] - k + 1
    v = h[..., 0:hv, :] * taps[0]
    for i in range(1, k):
        v.add_(h[..., i : i + hv, :], alpha=taps[i])
    return v


def ssim_chunk(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM of matching frames.

    Args:
        x, y: (t, 3, H, W) float tensors in [0, 1], same dtype and device, H and W >= 11.

    Returns:
        (t,) float64 tensor on the same device.
    """
    t, c = x.shape[:2]
    taps = gaussian_taps()
    cx = x.mean(dim=(2, 3), keepdim=True)
    cy = y.mean(dim=(2, 3), keepdim=True)
    xc, yc = x - cx, y - cy
    moments = torch.cat([xc, yc, xc * xc, yc * yc, xc * yc], dim=1)
    f = _filter_valid(moments, taps)
    mxc, myc, exx, eyy, exy = f.split(c, dim=1)
    sxx = exx - mxc * mxc
    syy = eyy - myc * myc
    sxy = exy - mxc * myc
    mx, my = mxc + cx, myc + cy
    c1, c2 = K1**2, K2**2
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    s = num / den
    return s.to(torch.float64).mean(dim=(2, 3)).mean(dim=1)


@torch.no_grad()
def ssim(
    ref: Video,
    test: Video,
    *,
    device: str | torch.device | None = None,
    chunk: int | None = None,
    dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Per-frame SSIM (see the module docstring for the exact definition).

    Args:
        ref: (T, H, W, 3) uint8, or float in [0, 1] (numpy or torch); H, W >= 11.
        test: same shape as ``ref``.
        device: default CUDA if available, else CPU.
        chunk: frames per batch (default 16 on CUDA, 1 on CPU, where small batches stay in cache).
        dtype: compute dtype (default float32 on CUDA, float64 on CPU).

    Returns:
        (T,) float64 numpy array in [-1, 1]; 1 for identical frames.

    Raises:
        ValueError: shapes differ, an input is invalid, or frames are smaller than 11x11.
    """
    _, h, w = check_pair(ref, test)
    if h < WIN_SIZE or w < WIN_SIZE:
        raise ValueError(f"SSIM needs frames of at least {WIN_SIZE}x{WIN_SIZE}, got {h}x{w}")
    dev = default_device(device)
    if dtype is None:
        dtype = torch.float32 if dev.type == "cuda" else torch.float64
    if chunk is None:
        chunk = 16 if dev.type == "cuda" else 1
    out = [ssim_chunk(a, b).cpu() for a, b in iter_chunks(ref, test, chunk, dev, dtype)]
    return torch.cat(out).numpy().astype(np.float64)
