"""The CLI on bad input, concurrent runs and damaged run directories (issue 11, section 3,
items 5-9, and its weaker messages): one-line errors with exit 2 before any work, a lock per
run directory, resume that verifies what it skips.

Runs use ``tiny-hunyuan`` (random weights) at 32x32x9, 2 steps, on the CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xattn_video import rundir, runlock
from xattn_video.attention import STRIDES
from xattn_video.config import XAttentionConfig
from xattn_video.pipelines import generate as generate_mod
from xattn_video.pipelines import resume as resume_mod
from xattn_video.pipelines.cli import main
from xattn_video.pipelines.generate import GenerateOptions, SetupError, resolve_options
from xattn_video.pipelines.models import MODELS

PROMPTS = ["a red car drives on a road", "a cat sleeping on a sofa", "fireworks over a lake"]
FAST = ["--steps", "2", "--no-progress", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("XATTN_VIDEO_LPIPS_WEIGHTS", raising=False)


@pytest.fixture
def prompt_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    return path


def _argv(out: Path, prompts: Path, attention: str = "dense", *extra: str) -> list[str]:
    argv = ["generate", "--model", "tiny-hunyuan", "--prompts", str(prompts)]
    return [*argv, "--attention", attention, "--out", str(out), *FAST, *extra]


def _fail(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``argv``, expect exit 2 with a one-line error; return that line."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("xattn-video"), err
    assert ": error: " in lines[-1], err
    assert "Traceback" not in err, err
    return lines[-1]


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Errors must come before the model is loaded."""

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr(generate_mod, "load_pipeline", fail)


# ---------------------------------------------------------------------------------------------
# 5: zero and negative sizes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flag", ["--steps", "--height", "--width", "--frames", "--fps", "--limit", "--sample"]
)
@pytest.mark.parametrize("value", ["0", "-16"])
def test_zero_or_negative_sizes_exit_2(tmp_path, prompt_file, capsys, flag, value):
    line = _fail([*_argv(tmp_path / "run", prompt_file), flag, value], capsys)
    assert f"argument {flag}: must be a positive integer, got {int(value)}" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("seed", [str(2**64), "-1"])
def test_a_seed_torch_cannot_take_exits_2_before_any_work(
    tmp_path, prompt_file, capsys, no_model_load, seed
):
    """2**64 failed in manual_seed after run.json was written, which then refused --seed 0;
    -1 gave the noise of 2**64 - 1 under another recorded seed."""
    line = _fail([*_argv(tmp_path / "run", prompt_file), "--seed", seed], capsys)
    assert f"argument --seed: must be in [0, 2**64), got {seed}" in line
    assert not (tmp_path / "run").exists()
    opts = GenerateOptions(model="tiny", prompts=str(prompt_file), out=tmp_path, seed=int(seed))
    with pytest.raises(SetupError, match=r"seed must be an integer in \[0, 2\*\*64\)"):
        resolve_options(opts)
    calibrate = ["calibrate", "--model", "tiny", "--prompts", str(prompt_file), "--seed", seed]
    line = _fail([*calibrate, "--out", str(tmp_path / "t.json"), "--device", "cpu"], capsys)
    assert f"seed must be an integer in [0, 2**64), got {seed}" in line


def test_a_model_path_that_cannot_load_exits_2(tmp_path, prompt_file, capsys):
    """diffusers' OSError (a folder without its components) was a traceback, exit 1."""
    folder = tmp_path / "incomplete"
    folder.mkdir()
    (folder / "model_index.json").write_text('{"_class_name": "HunyuanVideoPipeline"}')
    line = _fail([*_argv(tmp_path / "run", prompt_file), "--model-path", str(folder)], capsys)
    assert f"could not load a hunyuanvideo pipeline from '{folder}'" in line
    assert not (tmp_path / "run" / rundir.RUN_FILE).exists()


def test_demo_rejects_zero_prompts(tmp_path, capsys):
    line = _fail(["demo", "--out", str(tmp_path / "d"), "--num-prompts", "0"], capsys)
    assert "--num-prompts: must be a positive integer" in line


# ---------------------------------------------------------------------------------------------
# 6: one writer per run directory
# ---------------------------------------------------------------------------------------------


def test_a_locked_run_directory_exits_2_before_any_work(tmp_path, prompt_file, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with runlock.RunLock(out) as lock:  # another generate process, as far as flock is concerned
        assert lock.acquire()
        line = _fail(_argv(out, prompt_file), capsys)
    assert f"{out} is being written by another generate process (pid {os.getpid()})" in line
    assert "wait for it to finish" in line
    assert sorted(p.name for p in out.iterdir()) == [rundir.LOCK_FILE]  # nothing written
    assert main(_argv(out, prompt_file, "dense", "--limit", "1")) == 0  # lock released


def test_a_full_disk_writing_the_lock_exits_1_and_holds_no_lock(
    tmp_path, prompt_file, capsys, monkeypatch
):
    """ftruncate / pwrite of the pid failing (a full disk) after flock succeeded left the
    descriptor open and unheld: the error said "can't create the run directory" (exit 2) and a
    retry in the same process was refused as "another generate process (pid ?)"."""
    import errno

    out = tmp_path / "run"
    real = runlock.os.pwrite

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runlock.os, "pwrite", full)
    with pytest.raises(SystemExit) as exc:
        main(_argv(out, prompt_file, "dense", "--limit", "1"))
    assert exc.value.code == 1
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"xattn-video: error: could not write {out / rundir.LOCK_FILE}: No ")
    assert line.endswith(
        "Free space (or fix that) and rerun the same command to resume (finished videos are kept)."
    )  # noqa: E501
    monkeypatch.setattr(runlock.os, "pwrite", real)
    assert main(_argv(out, prompt_file, "dense", "--limit", "1")) == 0  # the lock was not held


def test_two_generate_processes_on_one_directory(tmp_path: Path):
    """The issue's case: two identical ``generate`` commands at once. One generates, the other
    exits 2 naming the lock (or, if it came late, finds everything finished); the directory
    ends consistent either way."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(f"prompt number {i}" for i in range(12)) + "\n")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "xattn_video.pipelines.cli", *_argv(out, prompts)[0:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(rc for rc, _, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    if codes == [0, 2]:
        loser = next(err for rc, _, err in results if rc == 2)
        assert "is being written by another generate process" in loser
        assert "Traceback" not in loser
    else:
        assert any("generated 0, skipped 12 finished" in o for _, o, _ in results), results
    folders = sorted(p for p in out.iterdir() if rundir.is_prompt_dir(p))
    assert len(folders) == 12
    for i, folder in enumerate(folders):
        assert rundir.verify_video(folder, prompt=f"prompt number {i}") is None
    assert not [p for p in out.rglob(f"*{rundir.TMP_MARK}*")]


# ---------------------------------------------------------------------------------------------
# 7, 8: resume verifies finished videos and their prompts
# ---------------------------------------------------------------------------------------------


def test_resume_redoes_truncated_frames_and_invalid_meta(tmp_path, prompt_file, capsys):
    out = tmp_path / "run"
    assert main(_argv(out, prompt_file)) == 0
    capsys.readouterr()
    good = {i: (out / f"0000{i}" / "frames.npy").read_bytes() for i in range(3)}
    meta = json.loads((out / "00000" / "meta.json").read_text())
    assert meta["schema_version"] == rundir.SCHEMA_VERSION and meta["frames_bytes"] == len(good[0])
    truncated = out / "00001" / "frames.npy"
    truncated.write_bytes(good[1][:1000])
    broken_meta = out / "00002" / "meta.json"
    broken_meta.write_text('{"prompt_index": 2, "prompt": ')
    assert main(_argv(out, prompt_file)) == 0
    std = capsys.readouterr()
    assert "generated 2 (2 redone, see the warnings), skipped 1 finished, of 3" in std.out
    assert f"xattn-video: warning: prompt 00001 is generated again: {truncated}" in std.err
    assert f"xattn-video: warning: prompt 00002 is generated again: {broken_meta}" in std.err
    for i in range(3):  # same seed, same computation: the same bytes again
        assert (out / f"0000{i}" / "frames.npy").read_bytes() == good[i]
        assert rundir.verify_video(out / f"0000{i}", prompt=PROMPTS[i]) is None


def test_resume_encodes_a_deleted_or_cut_video_mp4_again_from_its_frames(
    tmp_path, prompt_file, capsys
):
    """Only meta.json and frames.npy were checked: a finished prompt whose viewing copy was
    deleted or cut stayed without one on every rerun."""
    out = tmp_path / "run"
    assert main(_argv(out, prompt_file)) == 0
    capsys.readouterr()
    videos = [out / f"0000{i}" / "video.mp4" for i in range(3)]
    sizes = [v.stat().st_size for v in videos]
    assert rundir.RunRecord.read(out).ulysses == 1  # recorded (schema 5), and per video:
    assert rundir.VideoRecord.read(out / "00000").process == {"index": 0, "count": 1, "ulysses": 1}
    assert [rundir.VideoRecord.read(v.parent).video_bytes for v in videos] == sizes
    frames = [(v.parent / "frames.npy").read_bytes() for v in videos]
    videos[0].unlink()
    videos[1].write_bytes(videos[1].read_bytes()[: sizes[1] // 2])
    assert rundir.video_problem(videos[2].parent) is None
    assert main(_argv(out, prompt_file)) == 0
    std = capsys.readouterr()
    assert "generated 0, skipped 3 finished (2 video.mp4 not as written), of 3" in std.out
    assert f"prompt 00000: {videos[0]} is missing; encoding it again from frames.npy" in std.err
    assert f"prompt 00001: {videos[1]} has {sizes[1] // 2} bytes but" in std.err
    for v, size, npy in zip(videos, sizes, frames, strict=True):
        assert v.stat().st_size == size and rundir.video_problem(v.parent) is None
        assert (v.parent / "frames.npy").read_bytes() == npy  # not generated again
    from xattn_video.metrics import read_video

    assert read_video(videos[0]).shape == read_video(videos[2]).shape


def test_finished_prompts_without_run_json_do_not_resume(tmp_path, prompt_file, capsys):
    """Without run.json (deleted after it was damaged, say) any settings resumed: the finished
    videos were skipped and a run.json of the new settings described them."""
    out = tmp_path / "run"
    assert main(_argv(out, prompt_file)) == 0
    (out / "run.json").unlink()
    capsys.readouterr()
    line = _fail(_argv(out, prompt_file, "xattn", "--threshold", "0.5"), capsys)
    assert f"{out} holds 3 finished prompt(s) (00000, 00001, 00002) but no run.json" in line
    assert not (out / "run.json").exists()
    shutil.rmtree(out / "00001")
    (out / "00002" / "meta.json").unlink()  # unfinished prompts alone: nothing to check
    shutil.rmtree(out / "00000")
    assert main(_argv(out, prompt_file, "xattn", "--threshold", "0.5")) == 0


def test_resume_regenerates_a_prompt_whose_text_changed(tmp_path, prompt_file, capsys):
    out = tmp_path / "run"
    assert main(_argv(out, prompt_file)) == 0
    before = np.load(out / "00001" / "frames.npy")
    prompt_file.write_text("\n".join([PROMPTS[0], "a dog on a beach", PROMPTS[2]]) + "\n")
    capsys.readouterr()
    assert main(_argv(out, prompt_file)) == 0
    std = capsys.readouterr()
    assert "generated 1 (1 redone, see the warnings), skipped 2 finished" in std.out
    assert "prompt 00001 is generated again: the prompt changed" in std.err
    assert f"{PROMPTS[1]!r} -> 'a dog on a beach'" in std.err
    meta = json.loads((out / "00001" / "meta.json").read_text())
    assert meta["prompt"] == "a dog on a beach"
    assert not np.array_equal(np.load(out / "00001" / "frames.npy"), before)


def test_a_0_1_0_run_directory_resumes(tmp_path, monkeypatch, capsys):
    """Written by 0.1.0 (schema 1, config without the fields added since): the same settings,
    nothing to redo, nothing rewritten. auto_dense did not exist, so the run had it off: the
    0.1.0 command, which today means auto_dense on, is refused naming it (it was accepted, and
    ``--no-auto-dense``, the run's real setting, refused)."""
    old = Path(__file__).parent / "data" / "run_0.1.0" / "xattn"
    shutil.copytree(old, tmp_path / "xattn")
    (tmp_path / "p.txt").write_text("a red car driving on a road\na cat sitting on a sofa\n")
    monkeypatch.chdir(tmp_path)  # run.json recorded --prompts p.txt
    argv = ["generate", "--model", "tiny-hunyuan", "--prompts", "p.txt", "--no-progress"]
    argv += ["--height", "32", "--width", "32", "--frames", "5", "--steps", "2"]
    argv += ["--attention", "xattn", "--warmup-steps", "1", "--out", "xattn", "--device", "cpu"]
    line = _fail(argv, capsys)
    assert "config.auto_dense: False -> True" in line
    argv += ["--no-auto-dense"]
    assert main(argv) == 0
    assert "generated 0, skipped 2 finished, of 2 prompts" in capsys.readouterr().out
    assert (tmp_path / "xattn" / "run.json").read_bytes() == (old / "run.json").read_bytes()
    line = _fail([*argv, "--threshold", "0.5"], capsys)
    assert "config.threshold: 0.9 -> 0.5" in line and "config.max_density" not in line


def test_run_records_store_the_estimate_precision_that_ran():
    """estimate_precision "auto" is stored resolved; a record written before the field existed
    means the bf16 estimate (its default then), also for fp8 attention."""
    import dataclasses

    assert XAttentionConfig().resolved().estimate_precision == "bf16"
    assert XAttentionConfig(precision="fp8").resolved().estimate_precision == "fp8"
    explicit = XAttentionConfig(precision="fp8", estimate_precision="bf16")
    assert explicit.resolved() == explicit
    old = rundir.RunRecord.read(Path(__file__).parent / "data" / "run_0.1.0" / "xattn")
    assert "estimate_precision" not in old.config
    full = resume_mod._with_full_config(old)
    assert full.config["estimate_precision"] == "bf16"
    fp8 = dataclasses.replace(old, config={**old.config, "precision": "fp8"})
    assert resume_mod._with_full_config(fp8).config["estimate_precision"] == "bf16"
    auto = dataclasses.replace(old, config={**old.config, "estimate_precision": "auto"})
    assert resume_mod._with_full_config(auto).config == full.config


def test_resume_refuses_a_corrupt_run_json_naming_it(tmp_path, prompt_file, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{not json")
    line = _fail(_argv(out, prompt_file), capsys)
    assert f"can't resume: {out / 'run.json'} is not valid JSON" in line
    assert line.endswith("Restore it from a copy or choose another --out directory (without "
                         "run.json the finished videos' settings can't be checked)")  # fmt: skip


def test_bad_prompt_json_names_the_file(tmp_path, capsys):
    bad = tmp_path / "p.json"
    bad.write_text("[1, 2,")
    line = _fail(_argv(tmp_path / "run", bad), capsys)
    assert f"{bad} is not a valid JSON prompt file" in line


# ---------------------------------------------------------------------------------------------
# 9: one-line errors before any work
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("finished")
    prompts = root / "p.txt"
    prompts.write_text(PROMPTS[0] + "\n")
    assert main(_argv(root / "run", prompts)) == 0
    return root / "run", prompts


def test_out_is_an_existing_file(tmp_path, prompt_file, finished_run, capsys, no_model_load):
    file = tmp_path / "file.txt"
    file.write_text("keep me")
    line = _fail(_argv(file, prompt_file), capsys)
    assert f"--out {file} is an existing file, not a run directory" in line
    run, _ = finished_run
    shutil.copytree(run, tmp_path / "copy")
    line = _fail(["compare", str(run), str(tmp_path / "copy"), "--out", str(file)], capsys)
    assert f"--out {file} is an existing file" in line
    line = _fail(["demo", "--out", str(file), "--no-progress"], capsys)
    assert f"--out {file} is an existing file" in line
    for argv in (["compare", str(run), str(tmp_path / "copy")], ["demo", "--no-progress"]):
        line = _fail([*argv, "--out", str(file / "sub")], capsys)  # said "file.txt is not writable"
        assert line.endswith(f"--out {file / 'sub'}: {file} is a file, not a directory")
    assert file.read_text() == "keep me"


def test_a_finished_run_is_not_rewritten(finished_run, capsys):
    run, prompts = finished_run
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}
    assert main(_argv(run, prompts)) == 0
    assert "generated 0, skipped 1 finished" in capsys.readouterr().out
    after = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}
    del before[run / rundir.LOCK_FILE], after[run / rundir.LOCK_FILE]
    assert after == before  # run.json included: not replaced


def test_read_only_run_directory(finished_run, tmp_path, prompt_file, monkeypatch, capsys):
    """Read-only is simulated (tests may run as root, where chmod does not stop writes)."""
    run, prompts = finished_run

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(runlock, "_open_lock_file", denied)
    assert main(_argv(run, prompts)) == 0  # finished: nothing to write
    assert "generated 0, skipped 1 finished" in capsys.readouterr().out
    shutil.copytree(run, tmp_path / "copy")
    prompts.write_text("\n".join(PROMPTS) + "\n")  # now 1 of 3 prompts is finished
    line = _fail(_argv(run, prompts), capsys)
    assert f"{run} is not writable and 2 prompt(s) are not finished" in line
    line = _fail(["compare", str(run), str(tmp_path / "copy"), "--out", "r"], capsys)
    assert "--out r: . is not writable" in line  # checked before any work, naming the flag


def test_a_writable_old_lock_file_in_a_read_only_directory(
    finished_run, prompt_file, monkeypatch, capsys
):
    """chmod a-w on the run directory leaves its old .lock file writable: the lock is taken,
    but no new file can be made there; that is read-only too (simulated: only new files are
    refused)."""
    run, prompts = finished_run
    real = runlock._open_lock_file

    def new_files_denied(path):
        if not Path(path).exists():
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(runlock, "_open_lock_file", new_files_denied)
    assert (run / rundir.LOCK_FILE).exists()
    prompts.write_text("\n".join(PROMPTS) + "\n")
    line = _fail(_argv(run, prompts), capsys)
    assert f"{run} is not writable and 2 prompt(s) are not finished" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_run_directory_for_real(finished_run, tmp_path, prompt_file, capsys):
    run, prompts = finished_run
    ro = tmp_path / "ro"
    shutil.copytree(run, ro)
    ro.chmod(0o555)
    try:
        assert main(_argv(ro, prompts)) == 0
        prompts.write_text("\n".join(PROMPTS) + "\n")
        line = _fail(_argv(ro, prompts), capsys)
        assert "is not writable" in line
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("command", ["generate", "compare", "demo"])
def test_bogus_device(tmp_path, prompt_file, finished_run, capsys, no_model_load, command):
    run, _ = finished_run
    argv = {
        "generate": _argv(tmp_path / "run", prompt_file)[:-2],  # drop --device cpu
        "compare": ["compare", str(run), str(prompt_file.parent), "--out", str(tmp_path / "r")],
        "demo": ["demo", "--out", str(tmp_path / "demo")],
    }[command]
    if command == "compare":
        shutil.copy(run / "run.json", prompt_file.parent / "run.json")
    line = _fail([*argv, "--device", "bogus"], capsys)
    assert "'bogus' is not a torch device" in line
    for device in ("mps", "xpu"):  # were torch's traceback and exit 1 where torch lacks them
        module = torch.backends.mps if device == "mps" else getattr(torch, "xpu", None)
        if module is not None and module.is_available():
            continue
        line = _fail([*argv, "--device", device], capsys)
        assert f"device '{device}': no {device} device is available here" in line
    assert not (tmp_path / "run").exists() and not (tmp_path / "demo").exists()
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-CUDA case")
def test_backend_triton_without_cuda_fails_before_loading(
    tmp_path, prompt_file, capsys, monkeypatch, no_model_load
):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    line = _fail(_argv(tmp_path / "run", prompt_file, "xattn", "--backend", "triton"), capsys)
    assert "backend 'triton' needs a CUDA device (or TRITON_INTERPRET=1" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-CUDA case")
def test_fp8_without_a_hopper_gpu_fails_before_loading(
    tmp_path, prompt_file, capsys, no_model_load
):
    """apply_xattention refused it, after the model had loaded (minutes on a real one)."""
    line = _fail(_argv(tmp_path / "run", prompt_file, "xattn", "--precision", "fp8"), capsys)
    assert "precision='fp8' with backend='auto' needs an sm90+ CUDA GPU" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-CUDA case")
def test_calibrate_backend_triton_without_cuda_fails_before_loading(
    tmp_path, prompt_file, capsys, monkeypatch
):
    """calibrate did not run generate's backend check: the model loaded, then the first
    forward failed."""
    from xattn_video.pipelines import models as models_mod

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr(models_mod, "load_pipeline", fail)
    argv = ["calibrate", "--model", "tiny-hunyuan", "--prompts", str(prompt_file), "--steps",
            "2", "--device", "cpu", "--backend", "triton", "--out", str(tmp_path / "t.json")]  # fmt: skip
    line = _fail(argv, capsys)
    assert "backend 'triton' needs a CUDA device (or TRITON_INTERPRET=1" in line


def test_calibrate_runs_exact_bf16_attention_whatever_the_precision():
    """A calibration keeps every block as exact attention; --precision fp8 ran fp8 attention,
    which changes what the later layers and steps see."""
    from xattn_video.calibrate import CALIBRATION_FIXED, calibration_config

    assert "precision" in CALIBRATION_FIXED
    cal = calibration_config(XAttentionConfig(precision="fp8"))
    assert cal.precision == "bf16" and cal.threshold == 1.0


# ---------------------------------------------------------------------------------------------
# weaker messages
# ---------------------------------------------------------------------------------------------


def test_compare_a_directory_with_itself(finished_run, tmp_path, capsys):
    run, _ = finished_run
    line = _fail(["compare", str(run), str(run) + "/", "--out", str(tmp_path / "r")], capsys)
    assert "is given twice; compare a dense run with another run" in line
    assert not (tmp_path / "r").exists()


def test_compare_names_a_corrupt_run_json(finished_run, tmp_path, capsys):
    run, _ = finished_run
    other = tmp_path / "other"
    shutil.copytree(run, other)
    (other / "run.json").write_text("[]")
    line = _fail(["compare", str(run), str(other), "--out", str(tmp_path / "r")], capsys)
    assert f"{other / 'run.json'} must hold a JSON object" in line


def test_warnings_print_as_one_line(tmp_path, prompt_file, capsys):
    argv = _argv(tmp_path / "run", prompt_file, "xattn", "--limit", "1", "--warmup-steps", "2")
    assert main([*argv, "--backend", "torch"]) == 0
    err = capsys.readouterr().err
    assert "xattn-video: warning: warmup_steps=2 >= steps=2: every step runs dense" in err
    assert "warnings.warn(" not in err and ".py:" not in err


def _help(capsys) -> str:
    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit):
        mp.setenv("COLUMNS", "10000")  # no wrapping ("tiny-wan" would break at its hyphen)
        main(["generate", "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_help_is_plain_text_and_matches_validation(capsys):
    text = _help(capsys)
    assert "``" not in text and ":func:" not in text and ":mod:" not in text
    assert "dense: the model's own attention" in text  # --attention has help
    sample = " ".join(text.split("--sample SAMPLE")[-1].split("--dimension")[0].split())
    assert "then the first N of those" in sample and "the first N above" in sample
    stride_help = text.split("--stride INT")[-1].split("--block-size")[0]  # help, not usage
    assert f"({', '.join(map(str, STRIDES[:-1]))} or {STRIDES[-1]};" in stride_help
    for s in (3, 5):
        with pytest.raises(ValueError, match="stride must be one of"):
            XAttentionConfig(stride=s, block_size=16)


@pytest.mark.parametrize("field", ["warmup_steps", "block_size", "stride"])
def test_help_defaults_are_by_model_name(capsys, field):
    """``--model tiny`` showed "tiny 4" (the value of *preset* tiny, used by tiny-hunyuan)."""
    flag = "--" + field.replace("_", "-")
    text = _help(capsys).split(f"{flag} INT")[-1]  # its help, not the usage line
    default = text.split("(default: ")[1].split(")")[0]
    groups = {}
    for group in default.split("; "):
        value, models = group.split(" for ")
        groups.update({m: value for m in models.split(", ")})
    assert set(groups) == set(MODELS)
    for name, spec in MODELS.items():
        assert groups[name] == str(getattr(XAttentionConfig.from_preset(spec.preset), field))


def test_an_empty_default_reads_none_in_the_help(capsys):
    """``--thresholds-file``'s help ended in "(default: )"."""
    text = _help(capsys).split("--thresholds-file PATH")[-1]
    assert text.split("(default: ")[1].startswith("none)")


@pytest.mark.parametrize("command", ["compare", "calibrate"])
def test_an_interrupt_says_resume_only_where_the_command_resumes(
    command, tmp_path, monkeypatch, capsys
):
    """compare and calibrate said "rerun the same command to resume"; neither resumes."""
    from xattn_video.pipelines import cli

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli._COMMANDS, command, ctrl_c)
    assert main(_minimal_argv(command, tmp_path)) == 130
    err = capsys.readouterr().err
    assert err.strip() == "interrupted."


def _minimal_argv(command: str, tmp_path: Path) -> list[str]:
    if command == "compare":
        return ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "r")]
    return ["calibrate", "--retarget", str(tmp_path / "t.json"), "--out", str(tmp_path / "u.json")]


def test_a_video_with_nan_is_not_written_and_a_rerun_retries_it(
    tmp_path, prompt_file, monkeypatch, capsys
):
    """A NaN video was written as black frames and marked finished: resume skipped it and
    compare scored it. Now nothing is written for it, the others go on, and exit 1."""
    real_load = generate_mod.load_pipeline
    forwards = []

    def load_with_nan_in_prompt_1(*args, **kwargs):
        pipe = real_load(*args, **kwargs)

        def nan_output(module, inputs, output):  # 2 steps per prompt: forwards 3-4 = prompt 1
            forwards.append(1)
            return (output[0] * float("nan"),) if 3 <= len(forwards) <= 4 else output

        pipe.transformer.register_forward_hook(nan_output)
        return pipe

    monkeypatch.setattr(generate_mod, "load_pipeline", load_with_nan_in_prompt_1)
    out = tmp_path / "run"
    assert main(_argv(out, prompt_file)) == 1
    assert len(forwards) == 6
    std = capsys.readouterr()
    assert "generated 2, skipped 0 finished, of 3" in std.out
    assert "prompt 00001: " in std.err and " values are NaN or inf; nothing written" in std.err
    assert "error: 1 videos had NaN / inf values and were not written (prompts 00001)" in std.err
    assert not (out / "00001" / rundir.META_FILE).exists()
    assert not (out / "00001" / rundir.FRAMES_FILE).exists()
    monkeypatch.setattr(generate_mod, "load_pipeline", real_load)
    assert main(_argv(out, prompt_file)) == 0
    assert "generated 1, skipped 2 finished, of 3" in capsys.readouterr().out
    assert rundir.verify_video(out / "00001", prompt=PROMPTS[1]) is None


@pytest.mark.parametrize("degree", ["3", "6"])
def test_a_ulysses_degree_hunyuanvideos_text_does_not_split_into_is_refused_before_loading(
    tmp_path, prompt_file, capsys, no_model_load, degree
):
    """README listed P = 3 and 6 for HunyuanVideo (they divide its 24 heads), but its prompts
    are padded to 256 text tokens, which the ranks split: refused after the 13 B model had
    loaded, advising max_sequence_length, which generate has no flag for."""
    argv = ["generate", "--model", "hunyuanvideo", "--prompts", str(prompt_file), "--attention",
            "dense", "--out", str(tmp_path / "run"), "--ulysses", degree, "--no-progress",
            "--device", "cpu"]  # fmt: skip
    line = _fail(argv, capsys)
    assert (
        f"--ulysses {degree}: hunyuanvideo pads every prompt to 256 text tokens, which Ulysses "
        f"splits over the ranks and {degree} does not divide: use a degree that divides both "
        "256 and the head count (hunyuanvideo's 24 heads: 2, 4 or 8)"
    ) in line
    assert not (tmp_path / "run").exists()


def test_ulysses_advice_and_head_counts_are_the_models_own(tmp_path, prompt_file, capsys):
    """The refusal named HunyuanVideo's 24 heads (2, 4 or 8) for tiny-hunyuan too, whose 2 heads
    then refused --ulysses 4 only after every process had loaded the model; Wan 14B's 40 heads
    were checked only after loading as well."""
    from xattn_video.pipelines.models import get_model_spec
    from xattn_video.pipelines.multiprocess import heads_refusal, padded_text_refusal

    tiny = get_model_spec("tiny-hunyuan")
    assert padded_text_refusal(tiny, 3).endswith("head count (tiny-hunyuan's 2 heads: 2)")
    assert heads_refusal(tiny, 4, custom_weights=False) == (
        "tiny-hunyuan's transformer has 2 attention heads, which Ulysses splits over the ranks "
        "and 4 does not divide: use 2"
    )
    assert heads_refusal(tiny, 2, custom_weights=False) is None
    assert heads_refusal(tiny, 4, custom_weights=True) is None  # --model-path: its own heads
    wan = get_model_spec("wan")
    assert heads_refusal(wan, 3, custom_weights=False).endswith("use 2, 4, 5, 8, 10, 20 or 40")
    assert heads_refusal(wan, 8, custom_weights=False) is None
    argv = ["generate", "--model", "tiny-hunyuan", "--prompts", str(prompt_file), "--attention",
            "dense", "--out", str(tmp_path / "run"), "--ulysses", "4", "--no-progress",
            "--device", "cpu"]  # fmt: skip
    assert "--ulysses 4: tiny-hunyuan's transformer has 2 attention heads" in _fail(argv, capsys)
    assert not (tmp_path / "run").exists()
    # a pipeline handed to generate has its own heads (checked once loaded): not refused here
    from xattn_video.pipelines.generate import GenerateOptions, generate
    from xattn_video.pipelines.options import SetupError
    from xattn_video.pipelines.tiny.factory import build_tiny_hunyuan_pipeline

    opts = GenerateOptions(model="tiny-hunyuan", prompts=str(prompt_file), out=tmp_path / "r",
                           attention="dense", ulysses=4, device="cpu")  # fmt: skip
    with pytest.raises(SetupError, match="--ulysses 4 needs a process count that is a multiple"):
        generate(opts, pipe=build_tiny_hunyuan_pipeline())


def test_a_ulysses_degree_the_tiny_hunyuan_text_takes_is_not_refused_for_its_text():
    from xattn_video.pipelines.models import get_model_spec
    from xattn_video.pipelines.multiprocess import padded_text_refusal

    assert padded_text_refusal(get_model_spec("tiny-hunyuan"), 4) is None  # 32 tokens
    assert "32 text tokens" in padded_text_refusal(get_model_spec("tiny-hunyuan"), 3)
    assert padded_text_refusal(get_model_spec("wan"), 3) is None  # Wan's text is not split
    assert padded_text_refusal(get_model_spec("tiny"), 3) is None  # fixed: its own refusal
