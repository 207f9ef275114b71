"""PSNR, SSIM and video IO of xattn_video.metrics, checked against scikit-image."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from xattn_video.metrics import psnr, read_video, save_frames, ssim, write_video

SK_SSIM = dict(
    gaussian_weights=True,
    sigma=1.5,
    use_sample_covariance=False,
    data_range=1.0,
    channel_axis=-1,
)


def sk_ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame skimage SSIM of uint8 videos, on [0, 1] floats."""
    return np.array(
        [structural_similarity(x / 255.0, y / 255.0, **SK_SSIM) for x, y in zip(a, b, strict=True)]
    )


def sk_psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array(
        [peak_signal_noise_ratio(x, y, data_range=255) for x, y in zip(a, b, strict=True)]
    )


def random_pair(shape, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    b = np.clip(a + rng.normal(0, noise, shape), 0, 255).astype(np.uint8)
    return a, b


def gradient_video(t: int, h: int, w: int, shift: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    frames = []
    for i in range(t):
        r = (xx + shift + 3 * i) * 255 // (w + shift + 3 * t)
        g = yy * 255 // h
        bch = ((np.sin((xx + shift) / 3.0 + i) + 1) * 127.5).astype(int)
        frames.append(np.stack([r, g, bch], axis=-1))
    return np.asarray(frames, dtype=np.uint8)


def structured_pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    g = gradient_video(4, 23, 37)
    shifted = gradient_video(4, 23, 37, shift=2)
    big = gradient_video(3, 40, 64)
    blocky = np.repeat(np.repeat(big[:, ::8, ::8], 8, axis=1), 8, axis=2)
    return [
        ("gradient-vs-shifted-23x37", g, shifted),
        ("gradient-vs-blocky-40x64", big, blocky),
        ("random-23x37", *random_pair((3, 23, 37, 3), 25.0, 1)),
        ("random-low-noise-32x48", *random_pair((5, 32, 48, 3), 2.0, 2)),
        ("inverted", g, 255 - g),
    ]


@pytest.mark.parametrize(
    "name,a,b", structured_pairs(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_psnr_matches_skimage(name: str, a: np.ndarray, b: np.ndarray) -> None:
    got = psnr(a, b, device="cpu")
    assert got.dtype == np.float64 and got.shape == (a.shape[0],)
    np.testing.assert_allclose(got, sk_psnr(a, b), rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    "name,a,b", structured_pairs(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_ssim_matches_skimage(name: str, a: np.ndarray, b: np.ndarray) -> None:
    got = ssim(a, b, device="cpu")
    assert got.dtype == np.float64 and got.shape == (a.shape[0],)
    np.testing.assert_allclose(got, sk_ssim(a, b), rtol=0, atol=1e-4)
    # float64 on CPU is in fact exact to rounding
    np.testing.assert_allclose(got, sk_ssim(a, b), rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "name,a,b", structured_pairs(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_ssim_float32_path_within_1e4(name: str, a: np.ndarray, b: np.ndarray) -> None:
    """The GPU path computes in float32; the same numerics on CPU must stay within 1e-4."""
    got = ssim(a, b, device="cpu", dtype=torch.float32)
    np.testing.assert_allclose(got, sk_ssim(a, b), rtol=0, atol=1e-4)


def test_ssim_float32_smooth_low_contrast() -> None:
    """Worst case for float32 variance cancellation: near-constant bright frames."""
    yy, xx = np.mgrid[0:48, 0:64]
    base = 0.9 + 0.002 * np.sin(xx / 5.0) + 0.001 * yy / 48
    a = np.repeat(base[None, :, :, None], 3, axis=-1).repeat(2, axis=0)
    b = a + np.random.default_rng(3).normal(0, 0.0005, a.shape)
    b = np.clip(b, 0, 1)
    ref = np.array([structural_similarity(x, y, **SK_SSIM) for x, y in zip(a, b, strict=True)])
    got = ssim(torch.from_numpy(a), torch.from_numpy(b), device="cpu", dtype=torch.float32)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)


@settings(max_examples=25, deadline=None, database=None)
@given(
    t=st.integers(1, 3),
    h=st.integers(11, 30),
    w=st.integers(11, 30),
    noise=st.floats(0.5, 80.0),
    seed=st.integers(0, 2**16),
)
def test_psnr_ssim_property_vs_skimage(t: int, h: int, w: int, noise: float, seed: int) -> None:
    a, b = random_pair((t, h, w, 3), noise, seed)
    if np.array_equal(a, b):
        return
    np.testing.assert_allclose(psnr(a, b, device="cpu"), sk_psnr(a, b), atol=1e-9)
    np.testing.assert_allclose(ssim(a, b, device="cpu"), sk_ssim(a, b), atol=1e-10)


def test_identical_videos_hit_the_caps() -> None:
    a = gradient_video(3, 23, 37)
    np.testing.assert_array_equal(psnr(a, a.copy()), np.full(3, 100.0))
    np.testing.assert_allclose(ssim(a, a.copy()), np.ones(3), atol=1e-12)


def test_psnr_floor_caps_tiny_errors() -> None:
    a = torch.full((1, 16, 16, 3), 0.5, dtype=torch.float64)
    b = a + 1e-7  # mse 1e-14 < floor 1e-10
    assert psnr(a, b)[0] == pytest.approx(100.0)
    c = a + 1e-3  # mse 1e-6 -> 60 dB
    assert psnr(a, c)[0] == pytest.approx(60.0, abs=1e-6)


def test_input_kinds_agree() -> None:
    a, b = random_pair((3, 20, 24, 3), 10.0, 4)
    ref_p, ref_s = psnr(a, b, device="cpu"), ssim(a, b, device="cpu")
    for conv in (
        torch.from_numpy,
        lambda x: torch.from_numpy(x).float() / 255,
        lambda x: torch.from_numpy(x).double() / 255,
        lambda x: x.astype(np.float64) / 255,
    ):
        np.testing.assert_allclose(psnr(conv(a), conv(b), device="cpu"), ref_p, atol=1e-4)
        np.testing.assert_allclose(ssim(conv(a), conv(b), device="cpu"), ref_s, atol=1e-6)
    # mixed: uint8 numpy reference, float tensor test
    mixed = psnr(a, torch.from_numpy(b).double() / 255, device="cpu")
    np.testing.assert_allclose(mixed, ref_p, atol=1e-9)


def test_chunking_does_not_change_results() -> None:
    a, b = random_pair((7, 16, 20, 3), 15.0, 5)
    np.testing.assert_array_equal(psnr(a, b, device="cpu", chunk=1), psnr(a, b, device="cpu"))
    np.testing.assert_allclose(
        ssim(a, b, device="cpu", chunk=1), ssim(a, b, device="cpu", chunk=3), atol=1e-14
    )


@pytest.mark.parametrize("fn", [psnr, ssim])
def test_shape_mismatch_raises(fn) -> None:
    a, _ = random_pair((4, 20, 24, 3), 1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        fn(a, a[:3])  # fewer frames: never truncated
    with pytest.raises(ValueError, match="differ in shape"):
        fn(a, a[:, :, :20])


@pytest.mark.parametrize("fn", [psnr, ssim])
def test_invalid_inputs_raise(fn) -> None:
    a, _ = random_pair((2, 20, 24, 3), 1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fn(a.astype(np.float32), a.astype(np.float32))  # 0..255 floats
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        fn(a[0], a[0])
    with pytest.raises(ValueError, match="uint8 or floating"):
        fn(a.astype(np.int32), a.astype(np.int32))


@pytest.mark.parametrize("hw", [(10, 30), (30, 10)])
def test_ssim_rejects_frames_smaller_than_window(hw) -> None:
    """Too narrow as well as too low (a width check dropped returned NaN silently)."""
    a = np.zeros((1, *hw, 3), np.uint8)
    with pytest.raises(ValueError, match=f"at least 11x11, got {hw[0]}x{hw[1]}"):
        ssim(a, a)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_matches_skimage_and_cpu() -> None:
    for _name, a, b in structured_pairs():
        np.testing.assert_allclose(ssim(a, b, device="cuda"), sk_ssim(a, b), rtol=0, atol=1e-4)
        np.testing.assert_allclose(psnr(a, b, device="cuda"), psnr(a, b, device="cpu"), atol=1e-9)
    a, b = random_pair((20, 180, 320, 3), 12.0, 9)  # several GPU chunks
    np.testing.assert_allclose(ssim(a, b, device="cuda"), sk_ssim(a, b), rtol=0, atol=1e-4)


# ---------------------------------------------------------------- video IO


def test_save_frames_roundtrip_is_exact_and_atomic(tmp_path: Path) -> None:
    a, _ = random_pair((3, 23, 37, 3), 1.0, 6)
    path = tmp_path / "sub" / "frames.npy"
    save_frames(path, a)
    assert [p.name for p in path.parent.iterdir()] == ["frames.npy"]  # no temp file left
    np.testing.assert_array_equal(read_video(path), a)
    save_frames(path, a[:1])  # replaces
    assert read_video(path).shape == (1, 23, 37, 3)


def test_save_frames_rejects_non_uint8(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        save_frames(tmp_path / "f.npy", np.zeros((1, 4, 4, 3), np.float32))
    assert not list(tmp_path.iterdir())


def test_read_video_rejects_bad_npy_and_missing_file(tmp_path: Path) -> None:
    np.save(tmp_path / "bad.npy", np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        read_video(tmp_path / "bad.npy")
    with pytest.raises(FileNotFoundError):
        read_video(tmp_path / "nope.mp4")


@pytest.mark.parametrize("h,w", [(32, 48), (23, 37)])
def test_write_read_mp4(tmp_path: Path, h: int, w: int) -> None:
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.stack(
        [
            np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 40 + 20 * i)], -1)
            for i in range(6)
        ]
    ).astype(np.uint8)
    path = tmp_path / "video.mp4"
    write_video(path, frames, fps=8)
    assert [p.name for p in tmp_path.iterdir()] == ["video.mp4"]
    back = read_video(path)
    # yuv420p needs even sizes: odd sizes are padded by one edge row/column, never rescaled
    assert back.shape == (6, h + h % 2, w + w % 2, 3)
    # H.264 (4:2:0) is lossy, but smooth colour gradients must survive well at CRF 18
    got = psnr(frames, back[:, :h, :w])
    assert got.min() > 35, got
    # RGB order and orientation preserved: red grows left to right, green top to bottom
    assert back[0, :, -3:, 0].mean() > back[0, :, :3, 0].mean() + 100
    assert back[0, -3:, :, 1].mean() > back[0, :3, :, 1].mean() + 100


def test_write_video_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "v.mp4", np.zeros((2, 8, 8, 3), np.float32), fps=8)
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "v.mp4", np.zeros((2, 8, 8, 3), np.uint8), fps=0)


def test_a_failed_encode_raises_and_leaves_no_video(tmp_path: Path, monkeypatch) -> None:
    """ffmpeg failing (here a stand-in that writes a cut file and says the disk is full, as a
    real ffmpeg does on a full disk) is a WriteFailed naming the video with ffmpeg's error,
    and nothing is left at the path. Before, imageio-ffmpeg's writer ignored ffmpeg's exit
    status: the cut file was renamed into place and a resume trusted it."""
    import imageio_ffmpeg

    from xattn_video.atomic import WriteFailed

    fake = tmp_path / "ffmpeg"
    fake.write_text(
        '#!/bin/sh\ncat > /dev/null\nfor last; do :; done\nprintf half > "$last"\n'
        "echo '[out#0/mp4] Error writing trailer: No space left on device' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", lambda: str(fake))
    monkeypatch.setattr(imageio_ffmpeg._io, "get_ffmpeg_exe", lambda: str(fake))
    out = tmp_path / "run"
    path = out / "video.mp4"
    with pytest.raises(WriteFailed) as exc:
        write_video(path, np.zeros((3, 16, 16, 3), np.uint8), fps=8)
    assert exc.value.errno == errno.ENOSPC
    assert exc.value.strerror == (
        f"could not write {path}: ffmpeg failed: [out#0/mp4] Error writing trailer: "
        "No space left on device"
    )
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_a_non_finite_float_video_is_named_as_such(bad, kind):
    """It said "values in [nan, nan]; expected [0, 1]", as if the range were the problem."""
    video = np.full((2, 8, 8, 3), 0.5, dtype=np.float32)
    video[1, 2, 3, 0] = bad
    ref = video if kind == "numpy" else torch.from_numpy(video)
    with pytest.raises(ValueError, match=r"^ref is floating point with NaN or infinite values$"):
        psnr(ref, np.zeros_like(video))
    good = np.zeros_like(video)
    with pytest.raises(ValueError, match=r"values in \[0, 2\]; expected \[0, 1\]"):
        psnr(good + np.float32(2) * (np.arange(2)[:, None, None, None] == 1), good)
