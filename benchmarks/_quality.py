"""What the tiny-DiT quality sweeps (``sweep_quality.py``, ``sweep_methods.py``) measure per
setting: the fixed conditions / seeds of the videos, the videos and the time spent denoising and
inside the attention modules, and their PSNR / SSIM / LPIPS against the dense videos.

Not supported: transformers other than the HunyuanVideo-style tiny DiT (the timer hooks its
double- / single-stream blocks' ``attn`` modules).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from xattn_video.pipelines.tiny.synthetic import MOTIONS, Condition


def conditions(k: int) -> list[Condition]:
    """K fixed conditions cycling through the motion types and photos.

    Each run of 32 shows every (motion, photo) pair once; run ``c = i // 32`` turns the
    directions by ``c``, so the first 64 conditions all differ (zoom and rotate have only
    16 canonical conditions each: they repeat from 64 on, pan and sprite from 256 on). Before,
    the directions did not turn and condition i + 32 was condition i again. The first 32 are
    unchanged (the published sweeps used those), and within them zoom is always "in" and
    rotate always one way."""
    out = []
    for i in range(k):
        motion = i % len(MOTIONS)
        n_dir = 2 if MOTIONS[motion] in ("zoom", "rotate") else 8
        out.append(Condition(motion, (3 * i + i // 4) % 8, (5 * i + 1 + i // 32) % n_dir))
    return out


class AttentionTimer:
    """Sums the time spent in the transformer's double/single-stream attention modules."""

    def __init__(self, transformer: torch.nn.Module, cuda: bool) -> None:
        self.cuda = cuda
        self.pairs: list = []
        self.handles = []
        mods = [b.attn for b in (*transformer.transformer_blocks,
                                 *transformer.single_transformer_blocks)]  # fmt: skip
        for m in mods:
            self.handles.append(m.register_forward_pre_hook(self._pre))
            self.handles.append(m.register_forward_hook(self._post))

    def _now(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def _pre(self, module, args):
        self.pairs.append([self._now(), None])

    def _post(self, module, args, output):
        self.pairs[-1][1] = self._now()

    def seconds(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return sum(a.elapsed_time(b) for a, b in self.pairs) / 1000.0
        return sum(b - a for a, b in self.pairs)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def denoise(pipe, conds, seeds: list[int], a) -> np.ndarray:
    """Videos (K, T, H, W, 3) uint8 of ``conds`` (K), video i from CPU generator ``seeds[i]``,
    at ``a``'s size and step count."""
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    return pipe(condition=conds, height=a.height, width=a.width, num_frames=a.frames,
                num_inference_steps=a.steps, generator=gens, output_type="uint8").frames  # fmt: skip


def generate(pipe, conds, a, device, seeds: list[int]) -> tuple[np.ndarray, float, float]:
    """(videos (K, T, H, W, 3) uint8, denoise seconds per video, attention seconds per video)
    of :func:`denoise` with these ``seeds``, timed."""
    timer = AttentionTimer(pipe.transformer, device.type == "cuda")
    try:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        video = denoise(pipe, conds, seeds, a)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        attn = timer.seconds()
    finally:
        timer.remove()
    return video, wall / len(conds), attn / len(conds)


class Metrics:
    """PSNR / SSIM (and LPIPS when its AlexNet weights resolve) of test videos against
    reference videos, per video and pooled."""

    def __init__(self, device: torch.device, use_lpips: bool) -> None:
        from xattn_video.metrics import psnr, ssim

        self.psnr, self.ssim, self.device = psnr, ssim, device
        self.lpips = None
        self.lpips_note = "disabled (--no-lpips)"
        if use_lpips:
            from xattn_video.metrics import LPIPSWeightsMissing, lpips

            try:
                z = np.zeros((1, 64, 64, 3), np.uint8)
                lpips(z, z, device=str(device))
                self.lpips = lpips
                self.lpips_note = "AlexNet LPIPS v0.1"
            except LPIPSWeightsMissing as exc:
                self.lpips_note = f"skipped: {exc}"
            except Exception as exc:  # noqa: BLE001 - any LPIPS set-up failure only skips it
                self.lpips_note = f"skipped ({type(exc).__name__}: {exc})"

    def __call__(self, ref: np.ndarray, test: np.ndarray) -> dict:
        """Per-video means (K,) and pooled means of PSNR / SSIM / LPIPS."""
        per = {"psnr": [], "ssim": [], "lpips": []}
        for r, t in zip(ref, test, strict=True):
            per["psnr"].append(float(np.mean(self.psnr(r, t, device=self.device))))
            per["ssim"].append(float(np.mean(self.ssim(r, t, device=self.device))))
            if self.lpips is not None:
                per["lpips"].append(float(np.mean(self.lpips(r, t, device=str(self.device)))))
        out = {
            "psnr": float(np.mean(per["psnr"])),
            "psnr_min": float(np.min(per["psnr"])),
            "ssim": float(np.mean(per["ssim"])),
            "lpips": float(np.mean(per["lpips"])) if per["lpips"] else None,
            "per_video": per,
        }
        return out
