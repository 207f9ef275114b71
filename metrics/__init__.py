"""Video quality metrics for dense-vs-sparse attention comparisons.

Public API:
- ``psnr``, ``ssim``, ``lpips``: per-frame metrics of two (T, H, W, 3) videos (uint8, or float in
  [0, 1]), returned as (T,) float64 numpy arrays;
- ``LPIPSMetric``, ``LPIPSWeightsMissing``: the LPIPS network loaded from a local torchvision
  checkpoint, and the error raised when it is absent;
- ``read_video``, ``write_video``, ``save_frames``: mp4 / lossless ``.npy`` IO;
- ``compare_runs``: compare a dense and a sparse run directory and write JSON/Markdown/HTML reports
  (``RunMismatch`` when the two runs were generated with other settings).

Conventions (skimage's and the lpips package's): per-frame metrics on [0, 1] RGB with data range 1,
PSNR with an mse floor of 1e-10, skimage-equivalent Gaussian SSIM (valid crop), LPIPS AlexNet v0.1.

Not supported: FVD, VBench scores, CLIP scores, temporal metrics.
"""

from .compare import DEFAULT_METRICS, CompareWarning, compare_runs
from .lpips_metric import ENV_LPIPS_WEIGHTS, LPIPSMetric, LPIPSWeightsMissing, lpips
from .psnr import psnr
from .run_dir import scan_run
from .run_match import RunMismatch
from .ssim import ssim
from .video_io import read_video, save_frames, write_video

__all__ = [
    "DEFAULT_METRICS",
    "ENV_LPIPS_WEIGHTS",
    "CompareWarning",
    "RunMismatch",
    "LPIPSMetric",
    "LPIPSWeightsMissing",
    "compare_runs",
    "lpips",
    "psnr",
    "read_video",
    "save_frames",
    "scan_run",
    "ssim",
    "write_video",
]
