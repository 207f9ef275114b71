"""Validate video pairs and turn them into float (t, 3, H, W) tensor chunks.

Accepted videos: (T, H, W, 3) arrays/tensors, either uint8 (0..255) or floating point in [0, 1]
(numpy or torch). Videos in a pair must have identical (T, H, W).

Not supported: grayscale or RGBA, channels-first input, (H, W, 3) single images (add a T axis),
HDR or 16-bit video, different frame counts or sizes (never truncated or resized).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

Video = np.ndarray | torch.Tensor
"""(T, H, W, 3) uint8 in 0..255, or floating point in [0, 1]."""

_RANGE_TOL = 1e-6


def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_video(video: Video, name: str = "video") -> None:
    """Raise ``ValueError`` unless ``video`` is a (T, H, W, 3) uint8 or [0, 1] float video."""
    if not isinstance(video, (np.ndarray, torch.Tensor)):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(video).__name__}")
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (T, H, W, 3), got {tuple(video.shape)}")
    if video.shape[0] == 0:
        raise ValueError(f"{name} has no frames")
    if _is_uint8(video):
        return
    if not _is_float(video):
        raise ValueError(f"{name} must be uint8 or floating point, got dtype {video.dtype}")
    lo, hi = float(video.min()), float(video.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{name} is floating point with NaN or infinite values")
    if lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
        raise ValueError(
            f"{name} is floating point with values in [{lo:g}, {hi:g}]; expected [0, 1] "
            "(pass uint8 frames for 0..255 data)"
        )


def check_pair(ref: Video, test: Video) -> tuple[int, int, int]:
    """Validate both videos and return their common (T, H, W).

    Raises:
        ValueError: invalid video, or the two shapes differ (never truncated).
    """
    check_video(ref, "ref")
    check_video(test, "test")
    if tuple(ref.shape) != tuple(test.shape):
        raise ValueError(
            f"Videos differ in shape: ref {tuple(ref.shape)} vs test {tuple(test.shape)} "
            "(T, H, W, 3); they must match exactly, nothing is truncated or resized"
        )
    t, h, w, _ = ref.shape
    return int(t), int(h), int(w)


def to_chunk(
    video: Video, start: int, stop: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Frames ``start:stop`` as a (t, 3, H, W) tensor of ``dtype`` in [0, 1] on ``device``."""
    part = video[start:stop]
    x = torch.from_numpy(np.ascontiguousarray(part)) if isinstance(part, np.ndarray) else part
    x = x.to(device=device, non_blocking=True)
    if x.dtype == torch.uint8:
        x = x.to(dtype) / 255.0
    else:
        x = x.to(dtype).clamp(0.0, 1.0)
    return x.permute(0, 3, 1, 2)


def iter_chunks(
    ref: Video, test: Video, chunk: int, device: torch.device, dtype: torch.dtype
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield matching (t, 3, H, W) chunks of ``ref`` and ``test`` with ``t <= chunk``."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    n = ref.shape[0]
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        yield to_chunk(ref, start, stop, device, dtype), to_chunk(test, start, stop, device, dtype)


def _is_uint8(v: Video) -> bool:
    return v.dtype == np.uint8 if isinstance(v, np.ndarray) else v.dtype == torch.uint8


def _is_float(v: Video) -> bool:
    if isinstance(v, np.ndarray):
        return np.issubdtype(v.dtype, np.floating)
    return v.is_floating_point()
