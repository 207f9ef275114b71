"""The tiny trainable video DiT: synthetic data, pipeline, save / load, training loop (CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xattn_video.pipelines.tiny import synthetic as syn
from xattn_video.pipelines.tiny.factory import build_tiny_pipeline, random_tiny_pipeline
from xattn_video.pipelines.tiny.model import TRAIN_FRAMES, TRAIN_HEIGHT, TRAIN_WIDTH
from xattn_video.pipelines.tiny.pipeline import ASSETS_DIR, TinyVideoPipeline, load_tiny_pipeline
from xattn_video.pipelines.tiny.train import flow_matching_loss, main, sample_sigmas

SMALL = {"num_layers": 1, "num_single_layers": 1}  # fewer blocks: fast CPU training tests


# ---------------------------------------------------------------------------------- data
def test_clip_is_deterministic_and_well_formed():
    cond = syn.Condition(0, 1, 4)
    a = syn.make_clip(cond, 9, 32, 48, seed=3)
    b = syn.make_clip(cond, 9, 32, 48, seed=3)
    assert a.shape == (9, 32, 48, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, syn.make_clip(cond, 9, 32, 48, seed=4))


def test_conditions_give_different_clips():
    clips = [
        syn.make_clip(syn.Condition(m, i, d), 5, 32, 32, seed=0)
        for m, i, d in [(0, 0, 0), (0, 1, 0), (0, 0, 4), (1, 0, 0), (2, 0, 0), (3, 0, 0)]
    ]
    for i in range(len(clips)):
        for j in range(i + 1, len(clips)):
            assert np.abs(clips[i].astype(int) - clips[j].astype(int)).mean() > 1.0, (i, j)


@pytest.mark.parametrize("motion", range(len(syn.MOTIONS)))
def test_frames_move_but_stay_correlated(motion):
    clip = syn.make_clip(syn.Condition(motion, 0, 1), 9, 48, 48, seed=1).astype(np.float64)
    diffs = np.abs(np.diff(clip, axis=0)).mean(axis=(1, 2, 3))
    assert (diffs > 0.2).all(), diffs  # every frame changes
    for t in range(len(clip) - 1):
        a, b = clip[t].ravel(), clip[t + 1].ravel()
        assert np.corrcoef(a, b)[0, 1] > 0.5  # neighbouring frames share content
    first, last = clip[0].ravel(), clip[-1].ravel()
    assert np.corrcoef(first, last)[0, 1] < np.corrcoef(clip[0].ravel(), clip[1].ravel())[0, 1]


def test_pan_direction_moves_content_opposite_to_camera():
    # camera heading right (direction 0): content shifts left, so frame t+1 ~ frame t shifted
    clip = syn.make_clip(syn.Condition(0, 0, 0), 2, 64, 64, seed=5).astype(np.float64)
    a, b = clip[0], clip[1]
    errs = {dx: np.abs(a[:, dx:] - b[:, : 64 - dx]).mean() for dx in range(0, 8)}
    errs_wrong = {dx: np.abs(a[:, : 64 - dx] - b[:, dx:]).mean() for dx in range(1, 8)}
    assert min(errs, key=errs.get) > 0
    assert min(errs.values()) < min(errs_wrong.values())


def test_sample_batch_seeded_and_in_range():
    v1, t1, c1 = syn.sample_batch(np.random.default_rng(7), 3, frames=3, height=16, width=16)
    v2, t2, c2 = syn.sample_batch(np.random.default_rng(7), 3, frames=3, height=16, width=16)
    assert v1.shape == (3, 3, 3, 16, 16) and t1.shape == (3, 3) and c1 == c2
    assert torch.equal(v1, v2) and torch.equal(t1, t2)
    assert float(v1.min()) >= -1 and float(v1.max()) <= 1


def test_short_windows_are_crops_of_long_clips():
    v, _, conds = syn.sample_batch(
        np.random.default_rng(3), 2, frames=3, height=16, width=16, clip_frames=9
    )
    assert v.shape == (2, 3, 3, 16, 16)
    rng = np.random.default_rng(3)
    [syn.sample_condition(rng) for _ in range(2)]
    seeds = [int(x) for x in rng.integers(0, 2**31 - 1, size=2)]
    full = syn.make_batch(conds, seeds, frames=9, height=16, width=16)
    for b, start in enumerate(rng.integers(0, 7, size=2)):
        assert torch.equal(v[b], full[b, :, start : start + 3])


def test_condition_from_prompt():
    f = syn.condition_from_prompt
    assert f("A cat zooming out") == f("a  cat zooming OUT")  # deterministic, normalised
    c = f("a cat zooming out")
    assert (syn.MOTIONS[c.motion], syn.IMAGES[c.image], c.direction) == ("zoom", "cat", 1)
    c = f("camera pans left over a cup of coffee")
    assert (syn.MOTIONS[c.motion], syn.IMAGES[c.image], c.direction) == ("pan", "coffee", 4)
    c = f("the astronaut spins clockwise")
    assert (syn.MOTIONS[c.motion], syn.IMAGES[c.image], c.direction) == ("rotate", "astronaut", 1)
    # arbitrary text maps somewhere valid, deterministically
    for text in ["", "A beautiful coastal beach in spring, waves lapping on sand", "x" * 500]:
        c = f(text)
        assert c == f(text)
        assert c.tokens() == c.canonical().tokens()
    assert len({f(f"prompt number {i}") for i in range(40)}) > 10


# ---------------------------------------------------------------------------------- pipeline
def test_pipeline_output_and_step_index():
    pipe = random_tiny_pipeline(0)
    seen = []

    def cb(p, i, t, kw):
        seen.append((i, p.scheduler.step_index))
        return kw

    out = pipe(
        ["a cat", "a rocket"], height=16, width=16, num_frames=3, num_inference_steps=4,
        generator=torch.Generator().manual_seed(0), callback_on_step_end=cb,
    )  # fmt: skip
    frames = out.frames
    assert frames.shape == (2, 3, 16, 16, 3) and frames.dtype == np.float32
    assert frames.min() >= 0 and frames.max() <= 1
    assert seen == [(i, i + 1) for i in range(4)]  # one scheduler step per denoising step
    u8 = pipe(condition=syn.Condition(3, 2, 0), height=16, width=16, num_frames=3,
              num_inference_steps=2, output_type="uint8").frames  # fmt: skip
    assert u8.shape == (1, 3, 16, 16, 3) and u8.dtype == np.uint8
    with pytest.raises(ValueError, match="multiples of 2"):
        pipe("x", height=15, width=16, num_frames=3, num_inference_steps=1)


def test_one_transformer_forward_per_step_and_cfg_two():
    pipe = random_tiny_pipeline(0, **SMALL)
    calls = []
    h = pipe.transformer.register_forward_pre_hook(
        lambda m, a, k: calls.append(1), with_kwargs=True
    )
    pipe("x", height=8, width=8, num_frames=2, num_inference_steps=3)
    assert len(calls) == 3
    pipe("x", height=8, width=8, num_frames=2, num_inference_steps=3, guidance_scale=3.0)
    assert len(calls) == 9
    h.remove()


def test_save_load_round_trip(tmp_path):
    pipe = random_tiny_pipeline(1, **SMALL)
    kw = dict(height=16, width=16, num_frames=3, num_inference_steps=3)
    ref = pipe("a cat", generator=torch.Generator().manual_seed(2), **kw).frames
    pipe.save_pretrained(tmp_path / "fp32", dtype=None)
    back = load_tiny_pipeline(tmp_path / "fp32")
    out = back("a cat", generator=torch.Generator().manual_seed(2), **kw).frames
    np.testing.assert_array_equal(ref, out)
    # the shipped format: fp16 safetensors, loaded back close to the fp32 model
    pipe.save_pretrained(tmp_path / "fp16")
    half = load_tiny_pipeline(tmp_path / "fp16")
    assert half.transformer.dtype == torch.float32
    out16 = half("a cat", generator=torch.Generator().manual_seed(2), **kw).frames
    assert np.abs(out16 - ref).max() < 0.05


def test_missing_weights_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="tiny.train"):
        load_tiny_pipeline(tmp_path / "nothing")


def test_model_size_fits_budget():
    pipe = build_tiny_pipeline(0)
    n = sum(p.numel() for p in pipe.transformer.parameters())
    n += sum(p.numel() for p in pipe.condition_embedder.parameters())
    assert 5e6 < n and 2 * n < 30e6  # fp16 bytes
    cfg = pipe.transformer.config
    assert cfg.attention_head_dim == 64 and sum(cfg.rope_axes_dim) == 64
    assert TRAIN_FRAMES * (TRAIN_HEIGHT // 2) * (TRAIN_WIDTH // 2) >= 16_000


# ---------------------------------------------------------------------------------- training
def test_training_overfits_a_fixed_batch():
    torch.manual_seed(0)
    pipe = build_tiny_pipeline(0, init="dit", **SMALL)
    tr, emb = pipe.transformer.train(), pipe.condition_embedder.train()
    x0, tokens, _ = syn.sample_batch(np.random.default_rng(0), 2, frames=3, height=16, width=16)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=g)
    sigmas = sample_sigmas(2, g, 3.0, torch.device("cpu"))
    opt = torch.optim.AdamW([*tr.parameters(), *emb.parameters()], lr=1e-3)
    losses = []
    for _ in range(20):
        loss = flow_matching_loss(pipe, x0, tokens, noise, sigmas)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses


def test_flow_matching_convention_matches_scheduler():
    # a perfect velocity predictor (v = e - x0) must carry x_1 = e to x0 with the scheduler
    from diffusers import FlowMatchEulerDiscreteScheduler

    x0 = torch.rand(1, 3, 2, 4, 4) * 2 - 1
    e = torch.randn_like(x0)
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(sigmas=np.linspace(1.0, 0.0, 6)[:-1])
    x = e.clone()
    for t in sched.timesteps:
        x = sched.step(e - x0, t, x, return_dict=False)[0]
    torch.testing.assert_close(x, x0, atol=1e-5, rtol=0)


def test_train_cli_smoke(tmp_path):
    out = tmp_path / "run"
    rc = main(["--out", str(out), "--device", "cpu", "--max-steps", "2", "--frames", "2",
               "--height", "16", "--width", "16", "--batch-size", "1", "--log-every", "1",
               "--sample-steps", "1"])  # fmt: skip
    assert rc == 0
    for f in ("tiny_dit.json", "loss_curve.json", "loss_curve.png", "samples.png",
              "train_info.json", "transformer/diffusion_pytorch_model.safetensors"):  # fmt: skip
        assert (out / f).is_file(), f
    pipe = load_tiny_pipeline(out)
    assert isinstance(pipe, TinyVideoPipeline)
    assert pipe.transformer.dtype == torch.float32


# ---------------------------------------------------------------------------------- trained weights
@pytest.mark.slow
@pytest.mark.skipif(not (ASSETS_DIR / "tiny_dit.json").is_file(), reason="no trained weights")
def test_trained_model_makes_structured_video():
    """At 5 x 64 x 64 (the short training windows) so the CPU run takes ~10 s. Noise from a
    random model has no spatial or temporal correlation (~0); a panned photo has both."""
    pipe = load_tiny_pipeline()
    cond = syn.Condition(0, 1, 4)  # pan left over coffee
    video = pipe(condition=cond, height=64, width=64, num_frames=5, num_inference_steps=4,
                 generator=torch.Generator().manual_seed(0)).frames[0]  # fmt: skip
    x = video.mean(-1)
    spatial = np.corrcoef(x[:, :, :-1].ravel(), x[:, :, 1:].ravel())[0, 1]
    temporal = np.corrcoef(x[:-1].ravel(), x[1:].ravel())[0, 1]
    assert spatial > 0.5, spatial
    assert temporal > 0.3, temporal
    assert video.std() > 0.03
