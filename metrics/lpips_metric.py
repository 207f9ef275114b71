"""Per-frame LPIPS (Zhang et al. 2018, v0.1) with the backbone loaded from a local file only.

The ``lpips`` wheel ships only the linear calibration layers; the ImageNet backbone is torchvision's
checkpoint (``alexnet-owt-7be5be79.pth`` for ``net="alex"``, the default and the convention;
``vgg16-397923af.pth`` for ``net="vgg"``). It is looked up, in order, at:

1. the explicit ``weights=`` path (CLI ``--lpips-weights``), a file or a directory holding it;
2. ``$XATTN_VIDEO_LPIPS_WEIGHTS`` (file or directory);
3. ``torch.hub.get_dir()/checkpoints/<file>`` (where torchvision itself would cache it).

Nothing is ever downloaded: ``lpips.LPIPS(pnet_rand=True)`` builds the network offline, then the
torchvision ``features.{i}.*`` tensors are copied into ``net.slice{k}.{i}.*`` and every backbone
tensor must be found (10 for AlexNet, 26 for VGG16). The file's sha256 prefix is checked against
the one in its canonical name. A missing file raises ``LPIPSWeightsMissing``. A random backbone is
only reachable through ``LPIPSMetric.random_for_tests`` (plumbing tests; never for reported
numbers).

Inputs are scaled to [-1, 1] (``2x - 1``) and run in float32 in chunks; on CUDA, convolutions
follow torch's global TF32 settings.

Not supported: LPIPS v0.0, SqueezeNet, the spatial (per-pixel) map, downloading weights.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import lpips as lpips_pkg
import numpy as np
import torch

from .inputs import Video, check_pair, default_device, iter_chunks

ENV_LPIPS_WEIGHTS = "XATTN_VIDEO_LPIPS_WEIGHTS"
"""Environment variable with the backbone checkpoint path (file, or directory holding it)."""

CLI_FLAG = "--lpips-weights"


@dataclass(frozen=True)
class Backbone:
    """A torchvision checkpoint usable as an LPIPS backbone."""

    filename: str
    url: str
    sha256_prefix: str
    num_tensors: int


BACKBONES: dict[str, Backbone] = {
    "alex": Backbone(
        "alexnet-owt-7be5be79.pth",
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        "7be5be79",
        10,
    ),
    "vgg": Backbone(
        "vgg16-397923af.pth",
        "https://download.pytorch.org/models/vgg16-397923af.pth",
        "397923af",
        26,
    ),
}


class LPIPSWeightsMissing(FileNotFoundError):
    """The torchvision backbone checkpoint needed for LPIPS is not on disk."""


def hub_checkpoint_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints``, the default place for backbone checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _backbone(net: str) -> Backbone:
    if net not in BACKBONES:
        raise ValueError(f"Unsupported LPIPS net {net!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[net]


def resolve_weights(weights: str | os.PathLike[str] | None = None, net: str = "alex") -> Path:
    """Locate the backbone checkpoint for ``net`` (see the module docstring for the order).

    Raises:
        LPIPSWeightsMissing: the file is not where the first configured source points; the message
            names the file, its download URL, the directory to put it in, the flag and env var.
    """
    bb = _backbone(net)
    if weights is not None:
        source, candidate = f"{CLI_FLAG}/weights=", Path(weights)
    elif os.environ.get(ENV_LPIPS_WEIGHTS):
        source, candidate = f"${ENV_LPIPS_WEIGHTS}", Path(os.environ[ENV_LPIPS_WEIGHTS])
    else:
        source, candidate = "torch hub cache", hub_checkpoint_dir() / bb.filename
    if candidate.is_dir():
        candidate = candidate / bb.filename
    if candidate.is_file():
        return candidate
    target_dir = hub_checkpoint_dir()
    raise LPIPSWeightsMissing(
        f"LPIPS ({net}) needs the torchvision backbone checkpoint {bb.filename}, not found at "
        f"{candidate} (from {source}). Download it from {bb.url} and put it in {target_dir}/, "
        f"or pass its path with {CLI_FLAG} PATH or set {ENV_LPIPS_WEIGHTS}=PATH."
    )


def _sha256_prefix(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(functools.partial(f.read, 1 << 22), b""):
            h.update(block)
    return h.hexdigest()[: len(BACKBONES["alex"].sha256_prefix)]


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
    expected = _backbone(net).num_tensors
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
        weights: Path | None,
        device: torch.device,
    ) -> None:
        self.model = model.to(device)
        self.net = net
        self.weights = weights
        self.device = device

    @property
    def is_random(self) -> bool:
        """True for the seeded random backbone (plumbing tests only)."""
        return self.weights is None

    def describe(self) -> dict[str, str | None]:
        """JSON-friendly description of the backbone, for reports."""
        return {
            "net": self.net,
            "version": "0.1",
            "weights": str(self.weights) if self.weights else None,
            "backbone": "RANDOM (testing only, not LPIPS)"
            if self.is_random
            else "torchvision ImageNet",
        }

    @classmethod
    def from_weights(
        cls,
        weights: str | os.PathLike[str] | None = None,
        *,
        net: str = "alex",
        device: str | torch.device | None = None,
        check_hash: bool = True,
    ) -> LPIPSMetric:
        """Load the real metric from a local torchvision checkpoint.

        Raises:
            LPIPSWeightsMissing: checkpoint not found (see ``resolve_weights``).
            ValueError: wrong file (hash prefix or tensor layout).
        """
        bb = _backbone(net)
        path = resolve_weights(weights, net)
        if check_hash:
            prefix = _sha256_prefix(path)
            if prefix != bb.sha256_prefix:
                raise ValueError(
                    f"{path} has sha256 prefix {prefix}, expected {bb.sha256_prefix}: it is not "
                    f"torchvision's {bb.filename} ({bb.url})"
                )
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = _build_offline(net)
        load_backbone_state(model, state, net)
        return cls(model, net=net, weights=path.resolve(), device=default_device(device))

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
        """
        check_pair(ref, test)
        out = []
        for a, b in iter_chunks(ref, test, chunk, self.device, torch.float32):
            d = self.model(a * 2 - 1, b * 2 - 1, normalize=False)
            out.append(d.reshape(-1).to("cpu", torch.float64))
        return torch.cat(out).numpy()


@functools.lru_cache(maxsize=2)
def _cached_metric(path: str, mtime_ns: int, net: str, device: str) -> LPIPSMetric:
    del mtime_ns  # part of the cache key only: a replaced file is reloaded
    return LPIPSMetric.from_weights(path, net=net, device=device)


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
        weights: backbone checkpoint path or directory (else env var, else the torch hub cache).
        net: ``"alex"`` (default) or ``"vgg"``.
        device: default CUDA if available, else CPU.
        chunk: frames per forward pass.

    Returns:
        (T,) float64 numpy array.

    Raises:
        LPIPSWeightsMissing: no backbone checkpoint on disk.
        ValueError: shapes differ or an input is invalid.
    """
    check_pair(ref, test)
    path = resolve_weights(weights, net)
    metric = _cached_metric(
        str(path.resolve()), path.stat().st_mtime_ns, net, str(default_device(device))
    )
    return metric(ref, test, chunk=chunk)
