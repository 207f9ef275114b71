"""Rerunning ``generate`` on a run directory: which settings block a resume, which do not, and
that a failed setup leaves nothing behind that blocks the corrected command (CPU, tiny model)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from xattn_video import rundir
from xattn_video.pipelines.cli import main

from .test_cli_robustness import PROMPTS, _argv, _fail

THRESHOLDS = Path(__file__).resolve().parent / "data" / "thresholds_tiny.json"
MATCHING = ["--stride", "4", "--block-size", "16"]  # the settings thresholds_tiny.json has


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


@pytest.fixture
def prompt_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    return path


def _finished(out: Path) -> list[str]:
    return sorted(p.parent.name for p in out.glob(f"*/{rundir.META_FILE}"))


def test_a_resumed_prompt_is_the_video_a_one_shot_run_makes(tmp_path, prompt_file):
    """Every prompt's generator is seeded with --seed, wherever the run resumes: prompt 00001
    made by a resume equals the one-shot run's, and it is the first video of its process
    (compilation / warm-up), whatever its index."""
    import numpy as np

    once, resumed = tmp_path / "once", tmp_path / "resumed"
    main(_argv(once, prompt_file, "dense", "--limit", "2", "--seed", "3"))
    main(_argv(resumed, prompt_file, "dense", "--limit", "1", "--seed", "3"))
    main(_argv(resumed, prompt_file, "dense", "--limit", "2", "--seed", "3"))
    frames = [np.load(out / "00001" / rundir.FRAMES_FILE) for out in (once, resumed)]
    assert np.array_equal(*frames)
    meta = [rundir.VideoRecord.read(out / "00001") for out in (once, resumed)]
    assert [m.first_in_process for m in meta] == [False, True]
    assert rundir.VideoRecord.read(once / "00000").first_in_process is True


def test_auto_dense_decisions_do_not_carry_from_one_prompt_to_the_next(
    tmp_path, prompt_file, monkeypatch
):
    """auto_dense's per-layer decisions persist across pipeline calls; generate forgets them
    before every prompt, so a resumed prompt is the one-shot run's video (a layer sent dense by
    prompt 0's densities stayed dense for prompt 1 of the one-shot run, not of the resume:
    frames 1 level off). The cost model only applies on CUDA: here it is a stand-in that
    prefers dense above density 0.6; the decisions themselves run the real code."""
    import numpy as np

    from xattn_video import cost_model

    from ._spy import stand_in_cost_model

    seen = []

    def predict(cal, n, density, **kw):
        seen.append(density > 0.6)
        return cost_model.Prediction(1.0, 1.0, density <= 0.6)

    stand_in_cost_model(monkeypatch, predict)
    size = ["--steps", "4", "--height", "64", "--width", "64", "--auto-dense"]
    once, resumed = tmp_path / "once", tmp_path / "resumed"
    main(_argv(once, prompt_file, "xattn", *size))
    assert True in seen and False in seen  # both decisions were made
    main(_argv(resumed, prompt_file, "xattn", *size, "--limit", "1"))
    main(_argv(resumed, prompt_file, "xattn", *size))
    for index in ("00000", "00001", "00002"):
        a, b = (np.load(out / index / rundir.FRAMES_FILE) for out in (once, resumed))
        assert np.array_equal(a, b), index


def test_a_failed_setup_leaves_no_run_json(tmp_path, prompt_file, capsys):
    """run.json was written before the pipeline was set up: a setting that only fails there
    (a layer index past the model's) left a record that refused the corrected command."""
    out = tmp_path / "run"
    line = _fail(_argv(out, prompt_file, "xattn", "--dense-layers", "100", "--limit", "1"), capsys)
    assert "dense_layers [100] out of range" in line
    assert not (out / rundir.RUN_FILE).exists()
    main(_argv(out, prompt_file, "xattn", "--dense-layers", "0", "--limit", "1"))
    assert rundir.RunRecord.read(out).config["dense_layers"] == [0]
    assert _finished(out) == ["00000"]


def test_a_prompt_file_named_two_ways_is_one_setting(tmp_path, prompt_file, monkeypatch):
    """``prompts.txt`` and its absolute path were two settings (resume refused); now run.json
    records the absolute path, and an older record's relative one is resolved on reading."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    main(_argv(out, Path(prompt_file.name), "dense", "--limit", "1"))
    assert rundir.RunRecord.read(out).prompts == str(prompt_file)
    main(_argv(out, prompt_file, "dense", "--limit", "2"))
    assert _finished(out) == ["00000", "00001"]
    # a record written before paths were resolved holds what was typed
    old = rundir.RunRecord.read(out)
    (out / rundir.RUN_FILE).unlink()
    dataclasses.replace(old, prompts=prompt_file.name).write(out)
    main(_argv(out, prompt_file, "dense"))
    assert _finished(out) == ["00000", "00001", "00002"]


def test_thresholds_recalibrated_into_the_same_file_block_a_resume(tmp_path, prompt_file, capsys):
    """The same thresholds path with other contents resumed silently, mixing two calibrations
    in one run; the record now holds the file's SHA-256."""
    th = tmp_path / "th.json"
    shutil.copy(THRESHOLDS, th)
    out = tmp_path / "run"
    flags = [*MATCHING, "--thresholds-file", str(th)]
    main(_argv(out, prompt_file, "xattn", *flags, "--limit", "1"))
    digest = rundir.file_sha256(th)
    assert rundir.RunRecord.read(out).thresholds_sha256 == digest
    main(_argv(out, prompt_file, "xattn", *flags, "--limit", "2"))  # same file: resumes
    assert _finished(out) == ["00000", "00001"]
    th.write_text(th.read_text().replace('"taus"', '"taus" ', 1))  # other bytes, same meaning
    line = _fail(_argv(out, prompt_file, "xattn", *flags), capsys)
    assert f"thresholds_sha256: '{digest}' -> '{rundir.file_sha256(th)}'" in line
    assert _finished(out) == ["00000", "00001"]


def test_thresholds_recalibrated_during_a_run_stop_it(tmp_path, prompt_file, capsys, monkeypatch):
    """The processors re-read a thresholds file that changes at their next sparse step, so a
    recalibration into the file mid-run made the next videos with the new one under a run.json
    naming the old (and a rerun was then refused for the file the videos were made with)."""
    th = tmp_path / "th.json"
    shutil.copy(THRESHOLDS, th)
    out = tmp_path / "run"
    digest = rundir.file_sha256(th)
    write = rundir.VideoRecord.write

    def recalibrate_after_the_first(self, path):
        write(self, path)
        if self.prompt_index == 0:
            th.write_text(th.read_text().replace('"taus"', '"taus" ', 1))

    monkeypatch.setattr(rundir.VideoRecord, "write", recalibrate_after_the_first)
    argv = _argv(out, prompt_file, "xattn", *MATCHING, "--thresholds-file", str(th))
    line = _fail(argv, capsys)
    assert (
        f"thresholds file {th} changed during the run (sha256 {digest} -> {rundir.file_sha256(th)})"
        in line
        and "prompt 00001 not written" in line
    )
    assert _finished(out) == ["00000"] and rundir.RunRecord.read(out).thresholds_sha256 == digest


def test_another_fps_blocks_a_resume(tmp_path, prompt_file, capsys):
    """--fps was not compared: a resumed run mixed 8 and 24 fps videos under one run.json."""
    out = tmp_path / "run"
    main(_argv(out, prompt_file, "dense", "--limit", "1"))
    line = _fail(_argv(out, prompt_file, "dense", "--fps", "24"), capsys)
    assert "fps: 8 -> 24" in line


def test_a_cuda_run_does_not_resume_on_the_cpu(tmp_path, prompt_file, capsys):
    """CPU and CUDA generators draw different noise for one seed: a CUDA run resumed on the CPU
    mixed two noise sources in one directory, and run.json's gpu was rewritten to null. The
    CUDA start is stood in for by its run.json's gpu, its only trace of the device."""
    import json

    out = tmp_path / "run"
    main(_argv(out, prompt_file, "dense", "--limit", "1", "--dtype", "float32"))
    info = json.loads((out / rundir.RUN_FILE).read_text())
    assert info["gpu"] is None
    info["gpu"] = "NVIDIA H100 80GB HBM3"
    (out / rundir.RUN_FILE).write_text(json.dumps(info))
    line = _fail(_argv(out, prompt_file, "dense", "--dtype", "float32"), capsys)
    assert "(device: 'cuda' -> 'cpu')" in line
    assert json.loads((out / rundir.RUN_FILE).read_text())["gpu"] == "NVIDIA H100 80GB HBM3"
    assert _finished(out) == ["00000"]


def test_a_full_disk_is_one_line_and_the_run_resumes(tmp_path, prompt_file, capsys, monkeypatch):
    """numpy's full-disk error ("N requested and M written", no file named) ended generate in a
    traceback; it is now one line naming the file and saying how to go on (exit 1), and the
    rerun finishes the run with the finished prompt kept."""
    import numpy as np

    from xattn_video.metrics import video_io

    out = tmp_path / "run"
    real_save, saved = np.save, []

    def save(f, arr, **kw):
        if saved:
            raise OSError("27648 requested and 12160 written")
        saved.append(1)
        real_save(f, arr, **kw)

    monkeypatch.setattr(video_io.np, "save", save)
    with pytest.raises(SystemExit) as exc:
        main(_argv(out, prompt_file, "dense", "--limit", "2"))
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    frames = out / "00001" / rundir.FRAMES_FILE
    assert err == (
        f"xattn-video: error: could not write {frames}: 27648 requested and 12160 written. Free "
        "space (or fix that) and rerun the same command to resume (finished videos are kept)."
    )
    assert _finished(out) == ["00000"] and not frames.exists()
    monkeypatch.setattr(video_io.np, "save", real_save)
    main(_argv(out, prompt_file, "dense", "--limit", "2"))
    assert "generated 1, skipped 1 finished, of 2 prompts" in capsys.readouterr().out
    assert _finished(out) == ["00000", "00001"]


def test_checking_finished_videos_shows_a_bar(tmp_path, prompt_file, capsys):
    """Each finished frames.npy is hashed on a rerun (minutes for hundreds of 720p videos),
    silently before; the bar counts the finished videos, none when nothing is finished."""
    from xattn_video.pipelines.generate import GenerateResult
    from xattn_video.pipelines.resume import prompts_to_do
    from xattn_video.prompts import load_prompts

    out = tmp_path / "run"
    main(_argv(out, prompt_file, "dense", "--limit", "2"))
    capsys.readouterr()
    prompts = load_prompts(prompt_file)
    result = GenerateResult(out=out, total=3, assigned=3)
    todo = prompts_to_do(out, prompts, result, progress=True)
    assert [p.index for p in todo] == [2] and result.skipped == [0, 1]
    err = capsys.readouterr().err
    assert "checking finished videos" in err and " 0/2 " in err  # total: the 2 finished
    prompts_to_do(tmp_path / "empty", prompts, GenerateResult(out=out, total=3, assigned=3),
                  progress=True)  # fmt: skip
    assert "checking" not in capsys.readouterr().err


def test_a_selection_that_leaves_out_videos_of_the_directory_blocks_a_resume(
    tmp_path, prompt_file, capsys
):
    """Another --sample / --limit / --dimension resumed and run.json then recorded only the last
    selection, misdescribing the videos already there; a selection that grows still resumes."""
    out = tmp_path / "run"
    main(_argv(out, prompt_file, "dense", "--limit", "2"))
    line = _fail(_argv(out, prompt_file, "dense", "--sample", "1"), capsys)
    want = "folder(s) 00001 that this selection (a strided sample of 1: 1 prompt(s)) leaves out"
    assert f"{out} holds prompt {want}; its run.json records the first 2." in line
    assert _finished(out) == ["00000", "00001"]
    record = rundir.RunRecord.read(out)
    assert (record.selection["limit"], record.num_prompts) == (2, 2)
    main(_argv(out, prompt_file, "dense"))  # every prompt: grows the run
    assert _finished(out) == ["00000", "00001", "00002"]
    record = rundir.RunRecord.read(out)
    assert (record.selection, record.num_prompts) == (
        {"dimension": None, "sample": None, "limit": None},
        3,
    )
    line = _fail(_argv(out, prompt_file, "dense", "--limit", "1"), capsys)
    want = "holds prompt folder(s) 00001, 00002 that this selection (the first 1: 1 prompt(s))"
    assert want in line and "its run.json records every prompt." in line


def test_the_same_sample_of_a_grown_prompt_file_names_the_file_as_the_cause(
    tmp_path, prompt_file, capsys
):
    """Lines added to the prompt file move a strided sample; the refusal named the same
    selection on both sides ("this selection (a strided sample of 2 ...) leaves out; its
    run.json records a strided sample of 2") and not the file."""
    out = tmp_path / "run"
    main(_argv(out, prompt_file, "dense", "--sample", "2"))
    before = prompt_file.read_text()
    prompt_file.write_text(before + "one more prompt\nand another\n")
    line = _fail(_argv(out, prompt_file, "dense", "--sample", "2"), capsys)
    assert "run.json records the same selection, so the prompt file changed since (lines " in line
    assert "added or removed move a strided sample)." in line
