"""The fp8 estimate (``estimate_precision="fp8"``): its PyTorch definition (Q and K rounded to
per-block e4m3, then the fp32 estimate), the op and the processors passing it through, and the
inputs it refuses. CPU only: the Triton fp8 estimate runs on sm90 GPUs
(``tests/test_gpu_hopper.py`` compares it with this reference there)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import xattn_video as xv
from xattn_video import library
from xattn_video.kernels.estimate import estimate_block_scores_ref
from xattn_video.kernels.fp8 import FP8_MAX, quantize_fp8_blocks_ref
from xattn_video.kernels.select import select_blocks
from xattn_video.op_checks import check_estimate_precision

from ._spy import record_kwarg
from ._tiny_models import run_sparse_steps

pytestmark = pytest.mark.usefixtures("one_thread")


def _dequant(x: torch.Tensor, block: int, kv_len: torch.Tensor | None = None) -> torch.Tensor:
    x8, scale = quantize_fp8_blocks_ref(x, block, kv_len)
    scale = scale.repeat_interleave(block, -1)[..., : x.shape[2], None]
    return x8.float() * scale


@pytest.mark.parametrize("n, kv", [(96, None), (100, 77)])
def test_fp8_reference_is_the_estimate_of_the_e4m3_rounded_inputs(n, kv):
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 3, n, 16, generator=g) for _ in range(2))
    kv_len = None if kv is None else torch.tensor([n, kv])
    kw = dict(stride=4, block_size=16, kv_len=kv_len)
    fp8 = estimate_block_scores_ref(q, k, precision="fp8", **kw)
    want = estimate_block_scores_ref(_dequant(q, 16), _dequant(k, 16, kv_len), **kw)
    torch.testing.assert_close(fp8, want, rtol=0, atol=0)
    bf16 = estimate_block_scores_ref(q, k, **kw)
    assert not torch.equal(fp8, bf16)  # the rounding is applied ...
    torch.testing.assert_close(fp8, bf16, rtol=0, atol=0.05)  # ... and small


@pytest.mark.parametrize("value", [1e4, float("inf"), float("nan")])
def test_padded_keys_take_no_part_in_the_fp8_scales(value):
    """Keys past kv_len are quantized as zeros outside their block's scale: a large, infinite
    or NaN padded key changes neither the quantized valid keys nor the fp8 estimate (before, a
    large padded key coarsened its block's scale and an Inf made the block's scale infinite)."""
    g = torch.Generator().manual_seed(3)
    q, k = (torch.randn(2, 3, 100, 16, generator=g) for _ in range(2))
    kv_len = torch.tensor([100, 77])
    k2 = k.clone()
    k2[1, :, 78, 5] = value  # in the last valid key's block (keys 64-79), past kv_len
    k8, scale = quantize_fp8_blocks_ref(k, 16, kv_len)
    k8_2, scale_2 = quantize_fp8_blocks_ref(k2, 16, kv_len)
    assert torch.equal(scale, scale_2)
    assert torch.equal(k8.float(), k8_2.float())
    assert (k8[1, :, 77:].float() == 0).all()
    kw = dict(stride=4, block_size=16, kv_len=kv_len, precision="fp8")
    assert torch.equal(
        estimate_block_scores_ref(q, k, **kw), estimate_block_scores_ref(q, k2, **kw)
    )


def test_nonfinite_values_leave_the_rest_of_their_block_on_its_scale():
    """Scales come from the finite values: an Inf in one row leaves its block's scale and the
    other rows' e4m3 values as they were (the op's policy NaNs that row); before, the block's
    scale became Inf and every other row of the block quantized to zero."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 2, 32, 16, generator=g)
    x[0, 1, 3, 0] = 0.0
    x2 = x.clone()
    x2[0, 1, 3, 0] = float("inf")
    x8, scale = quantize_fp8_blocks_ref(x, 16)
    x8_2, scale_2 = quantize_fp8_blocks_ref(x2, 16)
    assert torch.equal(scale, scale_2)
    torch.testing.assert_close(scale[0, 1, 0], x[0, 1, :16].abs().amax() / FP8_MAX, rtol=0, atol=0)
    rows = torch.arange(32) != 3
    assert torch.equal(x8_2[0, 1, rows].float(), x8[0, 1, rows].float())


def test_inputs_on_the_e4m3_grid_give_the_bf16_estimate_exactly():
    """Blocks whose largest magnitude is 448 get scale 1; values already e4m3 are kept."""
    g = torch.Generator().manual_seed(1)
    grid = torch.randn(1, 2, 64, 16, generator=g).to(torch.float8_e4m3fn).float()
    grid[..., 0, 0] = FP8_MAX  # a 448 in every 16-token block
    for b in range(1, 4):
        grid[..., b * 16, 0] = -FP8_MAX
    q, k = grid / 64, grid.flip(2) / 64  # powers of two keep the grid; scale 448/64
    kw = dict(stride=4, block_size=16)
    torch.testing.assert_close(
        estimate_block_scores_ref(q, k, precision="fp8", **kw),
        estimate_block_scores_ref(q, k, **kw),
        rtol=0,
        atol=0,
    )


def test_op_masks_come_from_the_fp8_estimate():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 128, 16, generator=g) for _ in range(3))
    kv_len = torch.tensor([113])
    _, mask = xv.xattention(q, k, v, threshold=0.6, stride=4, block_size=16, kv_len=kv_len,
                            backend="torch", estimate_precision="fp8", return_mask=True)  # fmt: skip
    kz = k.clone()
    kz[:, :, 113:] = 0  # the torch backend zeroes padded keys before estimating
    scores = estimate_block_scores_ref(q, kz, stride=4, block_size=16, kv_len=kv_len,
                                       precision="fp8")  # fmt: skip
    assert torch.equal(mask, select_blocks(scores, block_size=16, threshold=0.6, kv_len=kv_len))
    bf16 = xv.estimate_block_mask(q, k, threshold=0.6, stride=4, block_size=16, kv_len=kv_len,
                                  backend="torch")  # fmt: skip
    assert not torch.equal(mask, bf16)  # random inputs: near-ties flip a few blocks


def test_planted_pattern_survives_the_fp8_estimate():
    B, H, N, D, bs, S = 1, 2, 128, 16, 16, 4
    nb = N // bs
    g = torch.Generator().manual_seed(4)
    target = torch.randperm(nb, generator=g)
    dirs = torch.linalg.qr(torch.randn(D, D, generator=g))[0][:, :nb].T
    q = 0.1 * torch.randn(B, H, N, D, generator=g)
    k = 0.1 * torch.randn(B, H, N, D, generator=g)
    for i in range(nb):
        q[:, :, i * bs : (i + 1) * bs] += 6.0 * dirs[i]
        k[:, :, target[i] * bs : (target[i] + 1) * bs] += 6.0 * dirs[i]
    kw = dict(threshold=0.9, stride=S, block_size=bs, backend="torch")
    mask = xv.estimate_block_mask(q, k, precision="fp8", **kw)
    assert torch.equal(mask, xv.estimate_block_mask(q, k, **kw))
    assert mask[:, :, torch.arange(nb), target].all()


def test_bad_estimate_precision_and_devices_are_refused():
    q = torch.randn(1, 1, 64, 16)
    with pytest.raises(ValueError, match="estimate precision must be"):
        xv.estimate_block_mask(q, q, stride=4, block_size=16, backend="torch", precision="fp16")
    with pytest.raises(ValueError, match="needs an sm90"):
        xv.xattention(q, q, q, stride=4, block_size=16, backend="triton", estimate_precision="fp8")
    with pytest.raises(ValueError, match="estimate_precision must be"):
        xv.XAttentionConfig(estimate_precision="e5m2")
    with pytest.raises(ValueError, match="estimate_precision must be a string"):
        xv.XAttentionConfig(estimate_precision=8)


def _gpu_major(monkeypatch, major: int) -> None:
    """CUDA devices report compute capability ``major``.x (no GPU needed)."""
    props = lambda device=None: SimpleNamespace(major=major, minor=0)  # noqa: E731
    monkeypatch.setattr(torch.cuda, "get_device_properties", props)


def test_auto_estimate_precision_is_the_attentions_off_hopper(monkeypatch):
    """estimate_precision="auto" (the op's and the config's default) estimates in the
    attention's precision off Hopper GPUs: bf16 for bf16, fp8 for fp8; explicit values win."""
    from xattn_video.op_checks import resolve_estimate_precision

    assert xv.XAttentionConfig().estimate_precision == "auto"
    assert xv.XAttentionConfig(precision="fp8").estimate_precision == "auto"
    for est, prec, want in [("auto", "bf16", "bf16"), ("auto", "fp8", "fp8"),
                            ("bf16", "fp8", "bf16"), ("fp8", "bf16", "fp8")]:  # fmt: skip
        assert (
            resolve_estimate_precision(est, prec, backend="auto", device=None, head_dim=128) == want
        )
        assert (
            resolve_estimate_precision(est, prec, backend="triton", device="cpu", head_dim=128)
            == want
        )
    with pytest.raises(ValueError, match="precision must be 'bf16' or 'fp8'"):
        resolve_estimate_precision("auto", "fp16", backend="auto", device=None, head_dim=128)
    seen = record_kwarg(monkeypatch, library, "_estimate_ref", "precision", "bf16")
    q = torch.randn(1, 2, 64, 16)
    kw = dict(stride=4, block_size=16, backend="torch", ratio=0.5)
    xv.xattention(q, q, q, **kw)
    xv.xattention(q, q, q, estimate_precision="fp8", **kw)
    # the fp8 attention refuses the torch backend before the estimate spends anything (it ran
    # the fp8 estimate first, emulated, and then refused)
    with pytest.raises(ValueError, match="precision='fp8' needs backend='triton'"):
        xv.xattention(q, q, q, precision="fp8", **kw)
    assert seen == ["bf16", "fp8"]
    with pytest.raises(ValueError, match="estimate_precision must be one of"):
        xv.xattention(q, q, q, estimate_precision="e4m3", **kw)
    # other GPUs than Hopper: not measured, the attention's precision
    for major in (8, 10, 12):
        _gpu_major(monkeypatch, major)
        got = resolve_estimate_precision(
            "auto", "bf16", backend="triton", device="cuda", head_dim=128
        )
        assert got == "bf16"


def test_auto_estimate_precision_is_fp8_on_hopper(monkeypatch):
    """On a Hopper GPU (sm90) with the Triton backend, "auto" estimates in fp8 under bf16
    attention too (measured to keep the masks and the quality, 25-42% less estimate time);
    the torch backend, explicit values and CPU devices are unchanged."""
    from xattn_video.op_checks import resolve_estimate_precision
    from xattn_video.pipelines.resume import config_record

    _gpu_major(monkeypatch, 9)
    for backend, device, head_dim, want in [
        ("triton", "cuda", 128, "fp8"), ("auto", "cuda:1", 64, "fp8"), ("torch", "cuda", 128, "bf16"),
        ("auto", "cpu", 128, "bf16"), ("auto", None, 128, "bf16"),
        # e4m3 dots need head dim >= 32 (16 cannot compile); 32 is not GPU-tested
        ("triton", "cuda", 16, "bf16"), ("triton", "cuda", 32, "bf16"), ("auto", "cuda", None, "bf16"),
    ]:  # fmt: skip
        kw = dict(backend=backend, device=device, head_dim=head_dim)
        assert resolve_estimate_precision("auto", "bf16", **kw) == want, kw
    kw = dict(backend="triton", device="cuda", head_dim=128)
    assert resolve_estimate_precision("bf16", "bf16", **kw) == "bf16"
    assert resolve_estimate_precision("auto", "fp8", **kw) == "fp8"
    cfg = xv.XAttentionConfig()
    assert cfg.resolved(torch.device("cuda"), 128).estimate_precision == "fp8"
    assert cfg.resolved(torch.device("cuda"), 16).estimate_precision == "bf16"
    assert cfg.resolved().estimate_precision == "bf16"  # no GPU
    assert cfg.replace(backend="torch").resolved("cuda", 128).estimate_precision == "bf16"
    assert cfg.replace(estimate_precision="bf16").resolved("cuda", 128).estimate_precision == "bf16"
    # what run.json records is what runs on the run's device for the model's head dim
    assert config_record(cfg, torch.device("cuda"), 128)["estimate_precision"] == "fp8"
    assert config_record(cfg, torch.device("cuda"), 16)["estimate_precision"] == "bf16"
    assert config_record(cfg, torch.device("cpu"), 128)["estimate_precision"] == "bf16"


def test_model_specs_know_their_head_dims():
    """``ModelSpec.head_dim`` (what run.json's "auto" estimate precision resolves at) is the
    head dim the models are built with."""
    from xattn_video.pipelines.models import MODELS
    from xattn_video.pipelines.tiny import factory
    from xattn_video.pipelines.tiny.model import tiny_transformer_config

    assert MODELS["tiny"].head_dim == tiny_transformer_config()["attention_head_dim"]
    assert (
        MODELS["tiny-hunyuan"].head_dim == factory.hunyuan_transformer().config.attention_head_dim
    )
    assert MODELS["tiny-wan"].head_dim == factory.wan_transformer().config.attention_head_dim
    assert MODELS["hunyuanvideo"].head_dim == MODELS["wan"].head_dim == 128


def test_an_fp8_estimate_below_head_dim_32_is_refused_by_name():
    """e4m3 tensor-core dots need a head dim of at least 32: an explicit fp8 estimate at 16 on
    the Triton backend is a ValueError naming the way out, not Triton's compile error."""
    q = torch.randn(1, 1, 64, 16, dtype=torch.float16)
    with pytest.raises(ValueError, match="head dim of at least 32 .* got 16: use estimate_prec"):
        check_estimate_precision("fp8", "triton", SimpleNamespace(is_cuda=True, shape=q.shape))


def test_processors_run_the_config_estimate_precision(monkeypatch):
    seen = record_kwarg(monkeypatch, library, "_estimate_ref", "precision", "bf16")
    run_sparse_steps(estimate_precision="fp8")
    assert seen and set(seen) == {"fp8"}
    seen.clear()
    run_sparse_steps()  # the default "auto" with bf16 attention
    assert seen and set(seen) == {"bf16"}
