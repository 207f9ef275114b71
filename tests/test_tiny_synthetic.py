"""Synthetic training clips of the tiny DiT (``pipelines/tiny/synthetic.py``): deterministic,
well-formed, moving the way the condition says; the prompt -> condition mapping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xattn_video.pipelines.tiny import synthetic as syn


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


@pytest.mark.parametrize(
    "motion, direction, key, axis, sign",
    [("pan", 0, "centre", 0, 1), ("pan", 2, "centre", 1, -1),  # right: +x; up: -y (y down)
     ("pan", 6, "centre", 1, 1), ("zoom", 0, "half", None, -1), ("zoom", 1, "half", None, 1),
     ("rotate", 0, "angle", None, 1), ("rotate", 1, "angle", None, -1)],
)  # fmt: skip
def test_each_direction_moves_the_camera_its_own_way(motion, direction, key, axis, sign):
    """Pan up moves the camera up the screen (content down), zoom in shrinks the view, rotate
    direction 0 turns the angle up; a flipped sign in any of them passed the other tests."""
    cond = syn.Condition(syn.MOTIONS.index(motion), 0, direction)
    for seed in range(3):
        values = syn._clip_params(cond, seed, 5)[key]
        steps = np.diff(values[:, axis] if axis is not None else values)
        assert (np.sign(steps) == sign).all(), (seed, values)


def test_a_wide_clip_is_the_middle_rows_of_the_square_one():
    """Square pixels: 32 x 64 shows the middle 32 rows of the 64 x 64 clip of the same seed."""
    for motion in range(len(syn.MOTIONS)):
        cond = syn.Condition(motion, 3, 0)
        wide = syn.make_clip(cond, 2, 32, 64, seed=4)
        square = syn.make_clip(cond, 2, 64, 64, seed=4)
        assert np.array_equal(wide, square[:, 16:48])


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


@pytest.mark.parametrize(
    "args, name", [((4, 0, 0), "motion"), ((0, 8, 0), "image"), ((0, 0, 8), "direction"),
                   ((-1, 0, 0), "motion"), ((0, 0, -1), "direction")],
)  # fmt: skip
def test_a_condition_out_of_range_is_refused(args, name):
    """direction 8 was the null (unconditional) token, not a direction."""
    with pytest.raises(ValueError, match=f"{name} must be in"):
        syn.Condition(*args)


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
        assert c == c.canonical()  # (tokens() canonicalises: comparing those could not fail)
    assert len({f(f"prompt number {i}") for i in range(40)}) > 10


def test_condition_from_prompt_round_trips_describe():
    # describe() writes "counter-clockwise"; the hyphen must not read as "clockwise"
    conds = {
        syn.Condition(m, i, d).canonical()
        for m in range(len(syn.MOTIONS))
        for i in range(len(syn.IMAGES))
        for d in range(syn.NUM_DIRECTIONS)
    }
    assert len(conds) == 160
    for c in sorted(conds, key=lambda c: c.tokens()):
        assert syn.condition_from_prompt(c.describe()) == c, c.describe()
    f = syn.condition_from_prompt
    for text in ("spins anti-clockwise", "spins counter clockwise", "spins counterclockwise"):
        assert f(f"the cat {text}").direction == 0, text
    assert f("the cat spins clockwise").direction == 1
