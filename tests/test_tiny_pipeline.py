"""The tiny DiT's sampling pipeline (``pipelines/tiny/pipeline.py``) and model
(``model.py``): outputs, one forward per step, save / load, size, and the shipped weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xattn_video.pipelines.tiny import synthetic as syn
from xattn_video.pipelines.tiny.factory import build_tiny_pipeline, random_tiny_pipeline
from xattn_video.pipelines.tiny.model import TRAIN_FRAMES, TRAIN_HEIGHT, TRAIN_WIDTH
from xattn_video.pipelines.tiny.pipeline import ASSETS_DIR, PIPELINE_FILE, load_tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"num_layers": 1, "num_single_layers": 1}  # fewer blocks: fast CPU tests


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
    kw = dict(condition=syn.Condition(3, 2, 0), height=16, width=16, num_frames=3,
              num_inference_steps=2)  # fmt: skip
    u8 = pipe(**kw, generator=torch.Generator().manual_seed(1), output_type="uint8").frames
    assert u8.shape == (1, 3, 16, 16, 3) and u8.dtype == np.uint8
    f32 = pipe(**kw, generator=torch.Generator().manual_seed(1)).frames
    assert np.array_equal(u8, np.round(f32 * 255).astype(np.uint8))  # rounded, not truncated
    with pytest.raises(ValueError, match="multiples of 2"):
        pipe("x", height=15, width=16, num_frames=3, num_inference_steps=1)


def test_given_latents_and_callback_latents_are_the_ones_denoised():
    """latents= is the noise the generator would have drawn (same video); latents a step-end
    callback returns are what the loop goes on with (zeros stay zeros at the last step)."""
    pipe = random_tiny_pipeline(0)
    kw = dict(condition=syn.Condition(3, 2, 0), height=16, width=16, num_frames=3,
              num_inference_steps=2, output_type="latent")  # fmt: skip
    drawn = pipe(**kw, generator=torch.Generator().manual_seed(5)).frames
    noise = torch.randn((1, 3, 3, 16, 16), generator=torch.Generator().manual_seed(5))
    assert torch.equal(pipe(**kw, latents=noise).frames, drawn)

    def zero_at_the_end(p, i, t, state):
        return {"latents": torch.zeros_like(state["latents"])} if i == 1 else state

    out = pipe(**kw, latents=noise, callback_on_step_end=zero_at_the_end).frames
    assert torch.equal(out, torch.zeros_like(out))


def test_the_scheduler_shift_is_the_one_asked_for():
    assert build_tiny_pipeline(0, shift=7.0).scheduler.config.shift == 7.0


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


def test_interrupt_skips_the_remaining_steps():
    """``pipe._interrupt`` set by a callback (diffusers' way) stops the loop; the tiny
    pipeline ran every step anyway."""
    pipe = random_tiny_pipeline(0, **SMALL)
    calls = []
    h = pipe.transformer.register_forward_pre_hook(
        lambda m, a, k: calls.append(1), with_kwargs=True
    )

    def stop_after_1(p, i, t, kw):
        p._interrupt = i == 1
        return kw

    pipe("x", height=8, width=8, num_frames=2, num_inference_steps=4,
         callback_on_step_end=stop_after_1)  # fmt: skip
    h.remove()
    assert len(calls) == 2 and pipe._current_timestep is None


@pytest.mark.parametrize("stop", ["raise", "interrupt"])
def test_a_stopped_call_does_not_count_another_pipelines_steps(stop):
    """pipe_a's call stopped at step 1 left its scheduler mid-run; the tiny pipeline never set
    ``_current_timestep``, so the step hook could not tell, and every forward of pipe_b (same
    transformer, its own scheduler) was counted as pipe_a's step 2: no warm-up, masks reused
    from the stopped call. Now pipe_b counts as if it ran alone."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    import xattn_video as xv
    from xattn_video.pipelines.tiny.pipeline import TinyVideoPipeline

    cfg = xv.XAttentionConfig.from_preset(
        "tiny", threshold=0.5, warmup_steps=2, mask_refresh=4, backend="torch"
    )
    kw = dict(prompt="pan left", height=16, width=16, num_frames=5, num_inference_steps=4,
              guidance_scale=3.0, output_type="latent")  # fmt: skip

    def rows(handle):
        return [(r.step, r.branch, r.sparse, r.reused) for r in handle.stats.records]

    def pipes():
        a = random_tiny_pipeline(0, **SMALL)
        sched = FlowMatchEulerDiscreteScheduler.from_config(a.scheduler.config)
        b = TinyVideoPipeline(a.transformer, sched, a.condition_embedder)
        b.set_progress_bar_config(disable=True)
        return a, b

    def at_step_1(p, i, t, state):
        if i == 1 and stop == "raise":
            raise KeyboardInterrupt
        p._interrupt = i == 1
        return state

    pipe_a, pipe_b = pipes()
    with xv.apply_xattention(pipe_a, cfg) as handle:
        want = pipe_b(**kw, generator=torch.Generator().manual_seed(0)).frames
        want_rows = rows(handle)
    pipe_a, pipe_b = pipes()
    with xv.apply_xattention(pipe_a, cfg) as handle:
        try:
            pipe_a(**kw, callback_on_step_end=at_step_1)
        except KeyboardInterrupt:
            pass
        handle.stats.reset()
        got = pipe_b(**kw, generator=torch.Generator().manual_seed(0)).frames
        assert rows(handle) == want_rows
    assert {r[:3] for r in want_rows} == {(s, f"pass{b}", s >= 2) for s in range(4) for b in (0, 1)}
    assert torch.equal(got, want)


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


def test_resaving_a_loaded_pipeline_keeps_its_training_record(tmp_path):
    """save_pretrained after load wrote tiny_dit.json without the "training" entry."""
    pipe = random_tiny_pipeline(1, **SMALL)
    record = {"steps": 123, "final_loss": 0.25}
    pipe.save_pretrained(tmp_path / "a", extra={"training": record})
    loaded = load_tiny_pipeline(tmp_path / "a")
    loaded.save_pretrained(tmp_path / "b")
    first = json.loads((tmp_path / "a" / PIPELINE_FILE).read_text())
    again = json.loads((tmp_path / "b" / PIPELINE_FILE).read_text())
    assert again == first and again["training"] == record
    loaded.save_pretrained(tmp_path / "c", extra={"training": {"steps": 7}})  # extra wins
    assert json.loads((tmp_path / "c" / PIPELINE_FILE).read_text())["training"] == {"steps": 7}


def test_saved_weights_record_the_size_they_were_trained_at(tmp_path):
    """tiny_dit.json's train_size was always the default 17 x 64 x 64, whatever --frames /
    --height / --width the training ran with (only its "training" record had the real size);
    a re-save of the loaded pipeline keeps it."""
    pipe = random_tiny_pipeline(1, **SMALL)
    record = {"steps": 3, "config": {"frames": 3, "height": 8, "width": 16, "batch_size": 2}}
    pipe.save_pretrained(tmp_path / "a", extra={"training": record})
    want = {"frames": 3, "height": 8, "width": 16}
    assert json.loads((tmp_path / "a" / PIPELINE_FILE).read_text())["train_size"] == want
    load_tiny_pipeline(tmp_path / "a").save_pretrained(tmp_path / "b")
    assert json.loads((tmp_path / "b" / PIPELINE_FILE).read_text())["train_size"] == want


def test_missing_weights_name_the_folder_to_train_into(tmp_path):
    """The error told users to train into pipelines/tiny/assets/tiny_dit, not the path given."""
    where = tmp_path / "my_dit"
    with pytest.raises(FileNotFoundError) as exc:
        load_tiny_pipeline(where)
    assert str(exc.value).endswith(
        f"Train them with: python -m xattn_video.pipelines.tiny.train --out {where} --minutes 8.5"
    )
    # a folder missing one of its parts (an interrupted copy) is named the same way
    random_tiny_pipeline(1, **SMALL).save_pretrained(where)
    for part in ("transformer/config.json", "scheduler/scheduler_config.json"):
        (where / part).rename(where / f"{part}.bak")
        with pytest.raises(FileNotFoundError, match=f"{where / part} missing"):
            load_tiny_pipeline(where)
        (where / f"{part}.bak").rename(where / part)
    load_tiny_pipeline(where)


def test_save_pretrained_leaves_live_weights_bit_identical(tmp_path):
    pipe = random_tiny_pipeline(1, **SMALL)
    mods = (pipe.transformer, pipe.condition_embedder)
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in mods]
    params = [p for m in mods for p in m.parameters()]
    pipe.save_pretrained(tmp_path / "fp16")  # default: fp16 files
    pipe.save_pretrained(tmp_path / "bf16", dtype=torch.bfloat16)
    for m, ref in zip(mods, before, strict=True):
        assert m.dtype == torch.float32
        after = m.state_dict()
        assert after.keys() == ref.keys()
        assert all(torch.equal(after[k], ref[k]) for k in ref)
    after = [p for m in mods for p in m.parameters()]
    assert all(a is b for a, b in zip(params, after, strict=True))  # the same Parameters
    half = load_tiny_pipeline(tmp_path / "fp16", dtype=torch.float16)  # the files are fp16
    assert torch.equal(
        half.transformer.state_dict()["x_embedder.proj.weight"],
        before[0]["x_embedder.proj.weight"].half(),
    )


def test_generator_list_length_must_match_the_videos():
    pipe = random_tiny_pipeline(0, **SMALL)
    kw = dict(height=8, width=8, num_frames=2, num_inference_steps=1)
    gens = [torch.Generator().manual_seed(s) for s in range(3)]
    with pytest.raises(ValueError, match="length 2 for 4 videos"):  # 2 prompts x 2 videos
        pipe(["a cat", "a rocket"], num_videos_per_prompt=2, generator=gens[:2], **kw)
    with pytest.raises(ValueError, match="length 3 for 1 videos"):  # extras are not ignored
        pipe("a cat", generator=gens, **kw)
    out = pipe("a cat", num_videos_per_prompt=3, generator=gens, **kw).frames
    assert out.shape[0] == 3


def test_videos_are_grouped_by_prompt_and_each_follows_its_generator():
    """With num_videos_per_prompt=2 and one generator per video, video i is what a call with
    its prompt and generator i alone makes (prompt 0's two videos first); two conditions with
    the same canonical form (zoom direction 2 = 0) make the same video."""
    pipe = random_tiny_pipeline(0, **SMALL)
    kw = dict(height=8, width=8, num_frames=2, num_inference_steps=1)

    def one(seed, **what):
        return pipe(**what, generator=torch.Generator().manual_seed(seed), **kw).frames[0]

    gens = [torch.Generator().manual_seed(s) for s in range(4)]
    out = pipe(["a cat", "a rocket"], num_videos_per_prompt=2, generator=gens, **kw).frames
    want = [one(0, prompt="a cat"), one(1, prompt="a cat"), one(2, prompt="a rocket"),
            one(3, prompt="a rocket")]  # fmt: skip
    for got, ref in zip(out, want, strict=True):
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    assert not np.allclose(want[0], want[1])
    assert np.array_equal(one(0, condition=syn.Condition(1, 0, 2)),
                          one(0, condition=syn.Condition(1, 0, 0)))  # fmt: skip


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


@pytest.mark.skipif(not (ASSETS_DIR / "tiny_dit.json").is_file(), reason="no trained weights")
def test_trained_model_reproduces_its_reference_video():
    """The shipped weights' video for one condition and seed, stored when this test was written
    (tests/data/tiny_dit_pan_5x32x64.npy, uint8; 3 steps, guidance 2): the condition
    embedding, the null condition, the sigma schedule, the guidance formula and the frames'
    H / W order all show in it (tests of shapes, determinism and correlation passed with each
    of them broken). Within 3/255 per value for another CPU's rounding. The video is also
    structured: noise from a random model has no spatial or temporal correlation (~0), a
    panned photo has both."""
    from pathlib import Path

    pipe = load_tiny_pipeline()
    video = pipe(condition=syn.Condition(0, 1, 4), height=32, width=64, num_frames=5,
                 num_inference_steps=3, guidance_scale=2.0,
                 generator=torch.Generator().manual_seed(0)).frames[0]  # fmt: skip
    ref = np.load(Path(__file__).parent / "data" / "tiny_dit_pan_5x32x64.npy")
    assert video.shape == ref.shape == (5, 32, 64, 3)
    assert np.abs(video - ref.astype(np.float32) / 255).max() <= 3 / 255
    x = video.mean(-1)
    spatial = np.corrcoef(x[:, :, :-1].ravel(), x[:, :, 1:].ravel())[0, 1]
    temporal = np.corrcoef(x[:-1].ravel(), x[1:].ravel())[0, 1]
    assert spatial > 0.5, spatial
    assert temporal > 0.3, temporal
    assert video.std() > 0.03
