"""Read and write videos: ``.mp4`` (H.264 via imageio-ffmpeg) and lossless ``.npy`` frames.

- ``read_video``: ``.npy`` (uint8 (T, H, W, 3), as written by ``save_frames``) or any container
  ffmpeg decodes (``.mp4`` etc.), decoded to RGB24.
- ``write_video``: H.264 ``yuv420p`` (plays in browsers), CRF 18. yuv420p needs even sizes, so an
  odd height/width is padded by repeating the last row/column; frames are never rescaled.
- ``save_frames``: ``.npy``.

Both writers are atomic (``xattn_video.atomic.atomic_path``: temporary file + ``os.replace``).

Metrics should read ``frames.npy``: H.264 is lossy and its noise alone caps PSNR.

Not supported: audio, variable frame rate, alpha, >8-bit video, reading only a frame range.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from xattn_video.atomic import atomic_path

PathLike = str | os.PathLike[str]


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}"
        )
    if frames.shape[0] == 0:
        raise ValueError("frames has no frames")
    return frames


def read_video(path: PathLike) -> np.ndarray:
    """Load a video.

    Args:
        path: ``.npy`` (lossless frames) or a video file (``.mp4``).

    Returns:
        (T, H, W, 3) uint8 RGB frames.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a ``.npy`` file with another dtype/shape, or a video with no frames.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file {path} does not exist")
    if path.suffix.lower() == ".npy":
        return _check_frames(np.load(path, allow_pickle=False))
    import imageio_ffmpeg  # here, not at import: the metrics need no ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(reader)
    w, h = meta["size"]
    frames = [np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3) for buf in reader]
    if not frames:
        raise ValueError(f"{path} decoded to zero frames")
    return np.stack(frames)


def write_video(path: PathLike, frames: np.ndarray, fps: float, *, crf: int = 18) -> None:
    """Encode frames as H.264 (yuv420p) mp4, atomically.

    Args:
        path: output file (``.mp4``).
        frames: (T, H, W, 3) uint8 RGB.
        fps: frames per second.
        crf: x264 constant rate factor (lower = better quality).
    """
    frames = _check_frames(frames)
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    t, h, w, _ = frames.shape
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        import imageio_ffmpeg

        writer = imageio_ffmpeg.write_frames(
            str(tmp),
            (w, h),
            fps=fps,
            codec="libx264",
            pix_fmt_out="yuv420p",
            quality=None,
            macro_block_size=1,
            output_params=["-crf", str(crf), "-movflags", "+faststart"],
        )
        writer.send(None)
        for i in range(t):
            writer.send(np.ascontiguousarray(frames[i]))
        writer.close()


def save_frames(path: PathLike, frames: np.ndarray) -> None:
    """Save frames losslessly as ``.npy``, atomically (temporary file, then ``os.replace``).

    Args:
        path: output file, normally ``frames.npy``.
        frames: (T, H, W, 3) uint8.
    """
    frames = _check_frames(frames)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        np.save(f, np.ascontiguousarray(frames), allow_pickle=False)
