"""Quality guard on the trained tiny DiT: the recommended config stays close to dense, a bad one
does not.

Setting: the shipped trained model (``pipelines/tiny/assets/tiny_dit``), 32x32 pixels x 9 frames
(9x16x16 = 2,304 video tokens, 18 blocks of 128), 8 steps, seed 0, three prompts (the bad
config: the first one), CPU with the torch backend. The recommended config is the one the H100
sweep over the training resolution chose (``docs/results/sweep_quality_full_h100.json``: tau 0.9, S=8, no warm-up,
tile order; 31.4 dB at effective density 0.54 there).

Measured here (CPU, torch 2.14, 2026-12-06), per prompt, PSNR / SSIM against dense:
  recommended: 32.09 / 0.9480, 23.68 / 0.8636, 22.57 / 0.8807  (mean 26.11 / 0.8975; sparse
  density 0.69)
  tau=0.3, no warm-up: 17.10 / 0.5177, 13.19 / 0.4418, 10.36 / 0.4105  (mean 13.55 / 0.4567)
The bounds below are the recommended config's measured means less 1 dB / 0.02 (room for
floating-point differences between CPUs, not for a worse selection); the bad config must fall
below them, so the test can fail either way. (12 steps until 2026-12-06: 25.59 / 0.8968 and
13.36 / 0.4638, at half again the test time.)
"""

import numpy as np
import pytest
import torch

import xattn_video as xv
from xattn_video.metrics import psnr, ssim

tiny_dit = pytest.importorskip("xattn_video.pipelines.tiny.pipeline")

PROMPTS = ["zoom in on cat", "pan left over coffee", "rotate clockwise on astronaut"]
CALL = dict(height=32, width=32, num_frames=9, num_inference_steps=8, output_type="uint8")
RECOMMENDED = xv.XAttentionConfig(
    threshold=0.9, stride=8, block_size=128, warmup_steps=0, token_order="tile",
    tile_size=(2, 8, 8), backend="torch",
)  # fmt: skip
BAD = xv.XAttentionConfig(threshold=0.3, stride=8, block_size=128, warmup_steps=0, backend="torch")
PSNR_BOUND = 26.11 - 1.0
SSIM_BOUND = 0.8975 - 0.02


@pytest.fixture(scope="module")
def pipe():
    try:
        return tiny_dit.load_tiny_pipeline()
    except FileNotFoundError as exc:
        pytest.fail(f"the trained tiny DiT must ship with the repo: {exc}")


def _videos(pipe, prompts=PROMPTS):
    return [pipe(p, generator=torch.Generator().manual_seed(0), **CALL).frames[0] for p in prompts]


@pytest.fixture(scope="module")
def dense(pipe):
    return _videos(pipe)


def _scores(pipe, dense, cfg, prompts=PROMPTS):
    with xv.apply_xattention(pipe, cfg) as handle:
        videos = _videos(pipe, prompts)
        density = handle.stats.summary()["sparse_density"]
    p = float(np.mean([psnr(d, v).mean() for d, v in zip(dense, videos, strict=True)]))
    s = float(np.mean([ssim(d, v).mean() for d, v in zip(dense, videos, strict=True)]))
    return p, s, density


def test_recommended_config_stays_close_to_dense(pipe, dense):
    p, s, density = _scores(pipe, dense, RECOMMENDED)
    assert density < 0.8, f"recommended config should be sparse here, density {density:.3f}"
    assert p >= PSNR_BOUND and s >= SSIM_BOUND, f"PSNR {p:.2f} dB, SSIM {s:.4f}"


def test_bad_config_falls_below_the_bound(pipe, dense):
    p, s, _ = _scores(pipe, dense[:1], BAD, PROMPTS[:1])  # 17.1 dB / 0.52: far below
    assert p < PSNR_BOUND and s < SSIM_BOUND, f"PSNR {p:.2f} dB, SSIM {s:.4f}"
