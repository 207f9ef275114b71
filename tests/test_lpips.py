"""LPIPS: weight lookup and loading (real layout, fake values) and plumbing with a random backbone.

Tests marked PLUMBING use ``LPIPSMetric.random_for_tests``: their numbers are not LPIPS; they only
check batching, scaling and the distance's basic properties.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from xattn_video.metrics import LPIPSMetric, LPIPSWeightsMissing, lpips
from xattn_video.metrics import lpips_metric as lm

ALEX_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"


@pytest.fixture(autouse=True)
def _no_user_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Hide any real checkpoint: env var unset and torch hub pointed at an empty folder."""
    monkeypatch.delenv(lm.ENV_LPIPS_WEIGHTS, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))
    lm._cached_metric.cache_clear()


@pytest.fixture(scope="module")
def fake_alexnet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A torchvision-format AlexNet checkpoint with random values (the real key layout)."""
    torch.manual_seed(123)
    state = torchvision.models.alexnet(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "alexnet-owt-7be5be79.pth"
    torch.save(state, path)
    return path, {k: v for k, v in state.items() if k.startswith("features.")}


@pytest.fixture(scope="module")
def plumbing_metric() -> LPIPSMetric:
    return LPIPSMetric.random_for_tests(seed=0, device="cpu")


def video_pair(noise: float, seed: int = 0, shape=(4, 48, 64, 3)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[1], 0 : shape[2]]
    base = np.stack([xx * 4 % 256, yy * 4 % 256, (xx + yy) * 2 % 256], -1)
    a = np.broadcast_to(base, shape).astype(np.uint8)
    b = np.clip(a + rng.normal(0, noise, shape), 0, 255).astype(np.uint8)
    return a, b


# ------------------------------------------------------------ weight lookup


def test_missing_weights_message_names_everything() -> None:
    with pytest.raises(LPIPSWeightsMissing) as exc:
        LPIPSMetric.from_weights()
    msg = str(exc.value)
    assert "alexnet-owt-7be5be79.pth" in msg
    assert ALEX_URL in msg
    assert str(lm.hub_checkpoint_dir()) in msg and "torch-hub" in msg
    assert "--lpips-weights" in msg and "XATTN_VIDEO_LPIPS_WEIGHTS" in msg
    assert isinstance(exc.value, FileNotFoundError)


def test_missing_weights_from_each_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    a, b = video_pair(5.0)
    with pytest.raises(LPIPSWeightsMissing, match="nope.pth"):
        lpips(a, b, weights=tmp_path / "nope.pth")
    monkeypatch.setenv(lm.ENV_LPIPS_WEIGHTS, str(tmp_path / "env.pth"))
    with pytest.raises(LPIPSWeightsMissing, match=r"env\.pth.*XATTN_VIDEO_LPIPS_WEIGHTS"):
        lpips(a, b)
    with pytest.raises(LPIPSWeightsMissing, match="vgg16-397923af.pth"):
        lm.resolve_weights(tmp_path, net="vgg")


def test_resolution_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    hub = lm.hub_checkpoint_dir()
    hub.mkdir(parents=True)
    (hub / "alexnet-owt-7be5be79.pth").write_bytes(b"hub")
    assert lm.resolve_weights() == hub / "alexnet-owt-7be5be79.pth"
    env_dir = tmp_path / "envdir"
    env_dir.mkdir()
    (env_dir / "alexnet-owt-7be5be79.pth").write_bytes(b"env")
    monkeypatch.setenv(lm.ENV_LPIPS_WEIGHTS, str(env_dir))  # a directory works too
    assert lm.resolve_weights() == env_dir / "alexnet-owt-7be5be79.pth"
    explicit = tmp_path / "mine.pth"
    explicit.write_bytes(b"x")
    assert lm.resolve_weights(explicit) == explicit
    with pytest.raises(ValueError, match="Unsupported LPIPS net"):
        lm.resolve_weights(net="squeeze")


# ------------------------------------------------------------ loading the backbone


def test_loader_maps_torchvision_features_into_lpips(fake_alexnet) -> None:
    path, features = fake_alexnet
    metric = LPIPSMetric.from_weights(path, device="cpu", check_hash=False)
    net = metric.model.net.state_dict()
    copied = 0
    for key, value in net.items():
        _slice, idx, param = key.split(".")
        torch.testing.assert_close(value, features[f"features.{idx}.{param}"], rtol=0, atol=0)
        copied += 1
    assert copied == 10
    assert not metric.is_random and metric.describe()["weights"] == str(path.resolve())
    # the linear layers are the ones shipped in the lpips wheel (v0.1, alex)
    lin_file = Path(lm.lpips_pkg.__file__).parent / "weights" / "v0.1" / "alex.pth"
    lins = torch.load(lin_file, map_location="cpu", weights_only=True)
    own = metric.model.state_dict()
    assert len(lins) == 5
    for k, v in lins.items():
        torch.testing.assert_close(own[k], v, rtol=0, atol=0)


def test_loader_checks_hash(fake_alexnet) -> None:
    path, _ = fake_alexnet
    with pytest.raises(ValueError, match="sha256 prefix .* expected 7be5be79"):
        LPIPSMetric.from_weights(path, device="cpu")


def test_loader_rejects_incomplete_checkpoint(fake_alexnet, tmp_path: Path) -> None:
    path, features = fake_alexnet
    partial = dict(features)
    del partial["features.8.weight"]
    bad = tmp_path / "partial.pth"
    torch.save(partial, bad)
    with pytest.raises(ValueError, match=r"features\.8\.weight"):
        LPIPSMetric.from_weights(bad, device="cpu", check_hash=False)
    wrong = dict(features)
    wrong["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(wrong, bad)
    with pytest.raises(ValueError, match="shape"):
        LPIPSMetric.from_weights(bad, device="cpu", check_hash=False)


def test_lpips_function_with_loaded_weights(fake_alexnet, monkeypatch: pytest.MonkeyPatch) -> None:
    """``lpips()`` resolves, hash-checks, loads once (cached) and computes per-frame values."""
    path, _ = fake_alexnet
    prefix = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    bb = dataclasses.replace(lm.BACKBONES["alex"], sha256_prefix=prefix)
    monkeypatch.setitem(lm.BACKBONES, "alex", bb)
    monkeypatch.setenv(lm.ENV_LPIPS_WEIGHTS, str(path.parent))
    a, b = video_pair(20.0)
    got = lpips(a, b, device="cpu", chunk=4)
    direct = LPIPSMetric.from_weights(path, device="cpu", check_hash=False)(a, b)
    assert got.shape == (4,) and got.dtype == np.float64
    np.testing.assert_allclose(got, direct, rtol=0, atol=1e-6)
    lpips(a, a, device="cpu")
    assert lm._cached_metric.cache_info().hits >= 1


# ------------------------------------------------------------ PLUMBING (random backbone)


def test_plumbing_identical_is_zero(plumbing_metric: LPIPSMetric) -> None:
    a, _ = video_pair(0.0)
    got = plumbing_metric(a, a.copy())
    assert got.shape == (4,) and got.dtype == np.float64
    np.testing.assert_array_equal(got, np.zeros(4))


def test_plumbing_chunk_size_does_not_change_values(plumbing_metric: LPIPSMetric) -> None:
    a, b = video_pair(15.0)
    ref = plumbing_metric(a, b, chunk=4)
    for chunk in (1, 3):
        np.testing.assert_allclose(plumbing_metric(a, b, chunk=chunk), ref, rtol=1e-5, atol=1e-7)


def test_plumbing_more_noise_is_larger(plumbing_metric: LPIPSMetric) -> None:
    values = [plumbing_metric(*video_pair(s, seed=1)).mean() for s in (2.0, 10.0, 40.0)]
    assert 0 < values[0] < values[1] < values[2]


def test_plumbing_input_scaling(plumbing_metric: LPIPSMetric) -> None:
    """uint8 and [0, 1] float inputs give the same values (both mapped to [-1, 1])."""
    a, b = video_pair(10.0)
    as_float = plumbing_metric(torch.from_numpy(a) / 255.0, torch.from_numpy(b) / 255.0)
    np.testing.assert_allclose(as_float, plumbing_metric(a, b), rtol=1e-5, atol=1e-7)


def test_plumbing_is_seeded_and_flagged(plumbing_metric: LPIPSMetric) -> None:
    a, b = video_pair(10.0)
    same_seed = LPIPSMetric.random_for_tests(seed=0, device="cpu")
    other_seed = LPIPSMetric.random_for_tests(seed=1, device="cpu")
    np.testing.assert_array_equal(same_seed(a, b), plumbing_metric(a, b))
    assert not np.allclose(other_seed(a, b), plumbing_metric(a, b))
    assert same_seed.is_random and "RANDOM" in same_seed.describe()["backbone"]


def test_plumbing_shape_mismatch(plumbing_metric: LPIPSMetric) -> None:
    a, b = video_pair(10.0)
    with pytest.raises(ValueError, match="differ in shape"):
        plumbing_metric(a, b[:3])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_plumbing_gpu_matches_cpu() -> None:
    a, b = video_pair(15.0, shape=(10, 96, 128, 3))
    cpu = LPIPSMetric.random_for_tests(seed=0, device="cpu")(a, b)
    gpu = LPIPSMetric.random_for_tests(seed=0, device="cuda")(a, b, chunk=3)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-2, atol=1e-4)


# ------------------------------------------------------------ real weights (optional)

_REAL = Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth"


@pytest.mark.skipif(not _REAL.is_file(), reason=f"real AlexNet weights not at {_REAL}")
def test_real_weights_sanity() -> None:
    metric = LPIPSMetric.from_weights(_REAL, device="cpu")
    a, b = video_pair(25.0)
    assert metric(a, a).max() == 0.0
    d = metric(a, b)
    assert np.all(d > 0.01) and np.all(d < 1.0)
