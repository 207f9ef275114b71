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

import errno
import os
import subprocess
import tempfile
from fractions import Fraction
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
        _encode(tmp, frames, fps, crf)


def _encode(out: Path, frames: np.ndarray, fps: float, crf: int) -> None:
    """Encode (T, H, W, 3) uint8 ``frames`` (even sizes) to ``out`` with imageio-ffmpeg's
    ffmpeg, checking its exit status: ``imageio_ffmpeg.write_frames`` does not, so a failed
    encode (a full disk) left a cut mp4 that was renamed into place and trusted by resumes.
    OSError (ENOSPC when ffmpeg says so) with ffmpeg's last error line; ffmpeg's messages go to
    a temporary file, not the terminal."""
    import imageio_ffmpeg

    t, h, w, _ = frames.shape
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-f", "rawvideo",
        "-vcodec", "rawvideo", "-s", f"{w}x{h}", "-pix_fmt", "rgb24",
        "-r", str(Fraction(fps).limit_denominator()), "-i", "-", "-an", "-vcodec", "libx264",
        "-pix_fmt", "yuv420p", "-crf", str(crf), "-movflags", "+faststart", str(out),
    ]  # fmt: skip
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        try:
            for i in range(t):
                proc.stdin.write(np.ascontiguousarray(frames[i]).data)
            proc.stdin.close()
        except BrokenPipeError:  # ffmpeg stopped early: its exit status says why
            pass
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        status = proc.wait()
        if status != 0:
            err.seek(0)
            lines = err.read().decode(errors="replace").strip().splitlines()
            last = lines[-1].strip() if lines else f"exit status {status}"
            full = any("No space left" in line for line in lines)
            raise OSError(errno.ENOSPC if full else errno.EIO, f"ffmpeg failed: {last}")


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
