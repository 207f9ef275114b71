"""The video.mp4 fallback of a run folder (no frames.npy) is checked against meta.json.

Before, a cut video.mp4 decoded to fewer frames without an error: compare blamed a "shape"
mismatch with the other run, or compared both runs' cut videos on the frames left.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xattn_video.metrics import run_dir as run_dir_mod
from xattn_video.metrics import write_video
from xattn_video.rundir import RunDirError


def _prompt_dir(root: Path, frames: np.ndarray, **meta_fields) -> Path:
    d = root / "00000"
    d.mkdir(parents=True)
    write_video(d / "video.mp4", frames, fps=8)
    meta = {"prompt_index": 0, "prompt": "p", "seed": 0, "attention": "dense"} | meta_fields
    (d / "meta.json").write_text(json.dumps(meta))
    t, h, w = frames.shape[:3]
    run = {"model": "fake", "attention": "dense", "height": h, "width": w, "frames": t}
    (root / "run.json").write_text(json.dumps(run | {"steps": 4, "seed": 0}))
    return d


def _frames(t: int, h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.repeat(rng.integers(0, 256, (t, 1, 1, 3), dtype=np.uint8), h, 1).repeat(w, 2)


def _video(root: Path) -> run_dir_mod.RunVideo:
    return run_dir_mod.scan_run(root).videos[0]


def test_a_cut_mp4_is_named_by_its_recorded_size(tmp_path: Path) -> None:
    d = _prompt_dir(tmp_path, _frames(8, 32, 48), schema_version=5, shape=[8, 32, 48, 3])
    mp4 = d / "video.mp4"
    full = mp4.stat().st_size
    meta = json.loads((d / "meta.json").read_text()) | {"video_bytes": full}
    (d / "meta.json").write_text(json.dumps(meta))
    mp4.write_bytes(mp4.read_bytes()[: full * 2 // 3])
    video = _video(tmp_path)
    with pytest.raises(RunDirError) as exc:
        video.load_frames()
    assert f"video.mp4 has {full * 2 // 3} bytes but" in str(exc.value)
    assert f"says {full}; rerunning its generate command" in str(exc.value)


def test_an_mp4_with_fewer_frames_than_recorded_is_refused(tmp_path: Path) -> None:
    """No video_bytes recorded (older meta.json): the decoded shape is checked instead."""
    _prompt_dir(tmp_path, _frames(4, 32, 48), shape=[8, 32, 48, 3])
    video = _video(tmp_path)
    with pytest.raises(RunDirError, match=r"decodes to shape \[4, 32, 48, 3\] but .* says "):
        video.load_frames()


def test_an_odd_sized_mp4_reads_back_at_the_recorded_size(tmp_path: Path) -> None:
    """write_video pads odd sizes by a row / column; the fallback crops them off again."""
    frames = _frames(3, 33, 47)
    _prompt_dir(tmp_path, frames, shape=[3, 33, 47, 3])
    got = _video(tmp_path).load_frames()
    assert got.shape == (3, 33, 47, 3)
    assert np.abs(got.astype(int) - frames.astype(int)).max() <= 4  # flat colours, CRF 18


def test_an_mp4_without_a_recorded_shape_reads_as_decoded(tmp_path: Path) -> None:
    _prompt_dir(tmp_path, _frames(2, 32, 48))
    assert _video(tmp_path).load_frames().shape == (2, 32, 48, 3)
