"""Tests for the run-directory format (``xattn_video.rundir``) and its reader (``scan_run``).

The 0.1.0 fixture in ``tests/data/run_0.1.0`` was written by xattn-video 0.1.0 before the
format had an owner (schema 1: no ``schema_version`` key, no frames checksum).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xattn_video import rundir, runlock
from xattn_video.metrics import compare_runs, psnr, scan_run
from xattn_video.rundir import RunDirError, RunRecord, VideoRecord

OLD = Path(__file__).parent / "data" / "run_0.1.0"
PROMPTS = ["a red car driving on a road", "a cat sitting on a sofa"]


@pytest.fixture
def old_copy(tmp_path: Path) -> Path:
    shutil.copytree(OLD, tmp_path / "old")
    return tmp_path / "old"


# ---------------------------------------------------------------------------------------------
# 0.1.0 directories still read
# ---------------------------------------------------------------------------------------------


def test_0_1_0_run_json_reads_as_schema_1():
    for attention in ("dense", "xattn"):
        rec = RunRecord.read(OLD / attention)
        assert rec.schema_version == 1 and rec.extra == {}
        assert (rec.model, rec.attention) == ("tiny-hunyuan", attention)
        assert (rec.height, rec.width, rec.frames, rec.steps, rec.seed) == (32, 32, 5, 2, 0)
        assert (rec.fps, rec.dtype, rec.prompts, rec.num_prompts) == (8, "float32", "p.txt", 2)
        assert (rec.config is None) == (attention == "dense")
        raw = json.loads((OLD / attention / "run.json").read_text())
        assert rec.to_json() == {"schema_version": 1, **raw}  # nothing lost, same key order
        assert list(rec.to_json())[1:] == list(raw)


def test_0_1_0_meta_json_reads_and_verifies():
    for attention in ("dense", "xattn"):
        for index, text in enumerate(PROMPTS):
            folder = OLD / attention / rundir.prompt_dir_name(index)
            meta = VideoRecord.read(folder)
            assert meta.schema_version == 1 and meta.extra == {}
            assert (meta.prompt_index, meta.prompt, meta.seed) == (index, text, 0)
            assert meta.shape == [5, 32, 32, 3]
            assert meta.frames_sha256 is None and meta.frames_bytes is None
            assert (meta.density is None) == (attention == "dense")
            assert rundir.verify_video(folder, prompt=text) is None


def test_0_1_0_runs_compare(tmp_path: Path):
    report = compare_runs(
        OLD / "dense", OLD / "xattn", tmp_path / "r", metrics=("psnr",), progress=False
    )
    assert [v["prompt_index"] for v in report["videos"]] == [0, 1]
    for v in report["videos"]:
        folder = rundir.prompt_dir_name(v["prompt_index"])
        ref = np.load(OLD / "dense" / folder / "frames.npy")
        test = np.load(OLD / "xattn" / folder / "frames.npy")
        assert v["psnr"]["per_frame"] == pytest.approx(list(psnr(ref, test, device="cpu")))
    assert report["dense_run"]["schema_version"] == 1
    run = scan_run(OLD / "xattn")
    assert run.record is not None and run.record.schema_version == 1 and run.gpu is None
    assert sorted(run.videos) == [0, 1] and run.unfinished == [] and run.problems == []


# ---------------------------------------------------------------------------------------------
# records
# ---------------------------------------------------------------------------------------------


def _record(**kw) -> RunRecord:
    base = dict(model="m", attention="dense", height=16, width=16, frames=5, steps=2, seed=0)
    return RunRecord(**{**base, **kw})


def test_new_records_round_trip_with_schema_and_unknown_keys(tmp_path: Path):
    rec = _record(extra={"future_key": [1, 2]})
    rec.write(tmp_path)
    data = json.loads((tmp_path / rundir.RUN_FILE).read_text())
    assert data["schema_version"] == rundir.SCHEMA_VERSION == 5 and data["future_key"] == [1, 2]
    assert RunRecord.read(tmp_path) == rec
    meta = VideoRecord(prompt_index=3, prompt="p", shape=[5, 16, 16, 3], frames_sha256="ab")
    assert VideoRecord.from_json(json.loads(json.dumps(meta.to_json()))) == meta


def test_resume_differences_name_the_fields():
    old = _record(config=None, seed=0, gpu="A")
    new = _record(seed=1, steps=3, gpu="B", command=["x"])  # gpu/command: not resume fields
    assert old.resume_differences(new) == {"steps": (2, 3), "seed": (0, 1)}
    assert old.resume_differences(_record(gpu="other")) == {}
    cfg = {"threshold": 0.9, "stride": 8}
    a, b = _record(config=cfg), _record(config={**cfg, "threshold": 0.5, "new": 1})
    assert a.resume_differences(b) == {"config.threshold": (0.9, 0.5), "config.new": (None, 1)}
    assert _record(config=None).resume_differences(b) == {"config": (None, b.config)}


def test_a_resume_on_another_device_type_is_a_difference():
    """Another GPU model is not a difference (same CUDA noise); CPU against CUDA is (run.json's
    gpu is null on the CPU), either way round, next to the other fields."""
    cpu, cuda = _record(gpu=None), _record(gpu="NVIDIA H100 80GB HBM3")
    assert (cpu.device_type, cuda.device_type) == ("cpu", "cuda")
    assert cuda.resume_differences(cpu) == {"device": ("cuda", "cpu")}
    assert cpu.resume_differences(cuda) == {"device": ("cpu", "cuda")}
    assert cuda.resume_differences(_record(gpu="NVIDIA H200")) == {}
    assert cpu.resume_differences(_record(steps=3)) == {"steps": (2, 3)}
    both = _record(steps=3, gpu="NVIDIA H200")
    assert cpu.resume_differences(both) == {"steps": (2, 3), "device": ("cpu", "cuda")}


def test_each_setting_that_changes_the_videos_blocks_a_resume_alone():
    """Every field but the environment's must match: dropping one (say ``dtype``) from
    ``RESUME_FIELDS`` let a rerun mix bf16 and fp32 videos under one run.json, unnoticed. (The
    GPU model may change, not the device type: see the test above.)"""
    old = _record(model_source="hub:a", config={"threshold": 0.9}, fps=8, dtype="bfloat16",
                  prompts="p.txt", compile="eager", thresholds_sha256="aa", ulysses=1,
                  gpu="A")  # fmt: skip
    changed = dict(model="m2", model_source="hub:b", attention="xattn", height=32, width=32,
                   frames=9, steps=3, seed=1, fps=24, dtype="float32", prompts="q.txt",
                   compile="compiled:default", thresholds_sha256="bb", ulysses=2)  # fmt: skip
    for name, value in changed.items():
        got = old.resume_differences(dataclasses.replace(old, **{name: value}))
        assert got == {name: (getattr(old, name), value)}, name
    got = old.resume_differences(dataclasses.replace(old, config={"threshold": 0.5}))
    assert got == {"config.threshold": (0.9, 0.5)}
    assert set(RunRecord.RESUME_FIELDS) == {*changed, "config"}
    environment = dict(selection={"sample": 1}, num_prompts=7, num_processes=2, gpu="B",
                       versions={"torch": "x"}, git_sha="abc", command=["x"])  # fmt: skip
    assert old.resume_differences(dataclasses.replace(old, **environment)) == {}


def test_thresholds_digest_is_compared_only_when_both_records_have_it(tmp_path: Path):
    """Schema 4 records the thresholds file's SHA-256; an older record has none (unknown, not
    a difference), and a record without a file leaves the key out of run.json."""
    rec = _record(thresholds_sha256="aa")
    rec.write(tmp_path)
    assert RunRecord.read(tmp_path) == rec
    assert rec.resume_differences(_record(thresholds_sha256="bb")) == {
        "thresholds_sha256": ("aa", "bb")
    }
    assert "thresholds_sha256" not in _record().to_json()
    old = RunRecord.from_json({**_record().to_json(), "schema_version": 3})
    assert old.resume_differences(rec) == {}
    four = RunRecord.from_json({**rec.to_json(), "schema_version": 4})  # the first that has it
    assert four.resume_differences(_record(thresholds_sha256="bb")) == {
        "thresholds_sha256": ("aa", "bb")
    }
    assert _record().resume_differences(rec) == {"thresholds_sha256": (None, "aa")}


def test_the_ulysses_degree_is_recorded_and_a_change_is_named(tmp_path: Path):
    """A run made with --ulysses 2 resumed with 1 process (or the reverse) mixed two launch
    modes' timings under one run.json that recorded neither; an older record is unknown."""
    rec = _record(ulysses=2)
    rec.write(tmp_path)
    assert RunRecord.read(tmp_path) == rec
    assert rec.resume_differences(_record(ulysses=1)) == {"ulysses": (2, 1)}
    assert rec.resume_differences(_record(ulysses=2)) == {}
    assert _record().resume_differences(_record(ulysses=4)) == {}  # not recorded: unknown


def test_compile_mode_is_recorded_and_a_change_is_named(tmp_path: Path):
    """Schema 3 records the mode; an older record (no key) means eager; a change of mode is a
    resume difference named ``compile`` (the timings would measure something else)."""
    rec = _record(compile="compiled:default")
    rec.write(tmp_path)
    data = json.loads((tmp_path / rundir.RUN_FILE).read_text())
    assert data["compile"] == "compiled:default" and RunRecord.read(tmp_path) == rec
    old = RunRecord.from_json({k: v for k, v in _record().to_json().items() if k != "compile"})
    assert old.compile is None and old.compile_mode == "eager" and "compile" not in old.to_json()
    assert old.resume_differences(_record(compile="eager")) == {}
    assert old.resume_differences(rec) == {"compile": ("eager", "compiled:default")}
    assert rec.resume_differences(_record(compile="compiled:max-autotune")) == {
        "compile": ("compiled:default", "compiled:max-autotune")
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"model": "m"}', "missing attention, height"),
        ('{"schema_version": 99, "model": "m"}', "newer than this xattn-video reads"),
        ('{"schema_version": 0, "model": "m"}', "schema_version must be an int >= 1, got 0"),
        ('{"schema_version": true, "model": "m"}', "must be an int >= 1, got True"),
        ('{"schema_version": "2", "model": "m"}', "must be an int >= 1, got '2'"),
        (b"\xff\xfe\x00", "can't be read"),
    ],
)
def test_bad_run_json_errors_name_the_file(tmp_path: Path, content, message):
    path = tmp_path / rundir.RUN_FILE
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(RunDirError, match=message) as exc:
        RunRecord.read(tmp_path)
    assert str(path) in str(exc.value)
    with pytest.raises(ValueError, match=message):  # the reader too
        scan_run(tmp_path)


@pytest.mark.parametrize(
    "data", [{"prompt_index": "3", "prompt": "p"}, {"prompt_index": 3, "prompt": 3}]
)
def test_a_meta_json_with_a_mistyped_index_or_prompt_is_refused(data):
    with pytest.raises(RunDirError, match="(prompt_index must be int|prompt must be str), got"):
        VideoRecord.from_json(data)


@pytest.mark.parametrize("field, value", [
    ("shape", 5), ("timings", [1]), ("density", "x"), ("frames_bytes", "12"),
    ("frames_sha256", 7), ("first_in_process", 1), ("dimensions", ["a", 2]),
])  # fmt: skip
def test_a_meta_json_field_of_the_wrong_type_is_a_run_dir_error(field, value):
    """Only prompt_index and prompt were type-checked: "shape": 5 crashed resume and compare
    with a TypeError traceback, and "timings": [1] or "density": "x" passed resume's check
    (the prompt was skipped as finished) and then crashed compare."""
    data = {"prompt_index": 3, "prompt": "p", field: value}
    with pytest.raises(RunDirError, match=f"^meta.json: {field} must be .*, got"):
        VideoRecord.from_json(data, "meta.json")


@pytest.mark.parametrize("field, value", [("prompts", 5), ("versions", [1]), ("command", "x")])
def test_a_run_json_field_of_the_wrong_type_is_a_run_dir_error(field, value):
    """run.json's fields were not type-checked: "prompts": 5 crashed the resume, "versions":
    [1] crashed compare, both with tracebacks."""
    data = {"model": "tiny", "attention": "dense", "height": 32, "width": 32, "frames": 5,
            "steps": 1, "seed": 0, field: value}  # fmt: skip
    with pytest.raises(RunDirError, match=f"^run.json: {field} must be .*, got"):
        rundir.RunRecord.from_json(data, "run.json")
    rundir.RunRecord.from_json({**data, field: None}, "run.json")  # null: unknown, as before


def test_a_frames_npy_with_a_mangled_header_is_not_valid(tmp_path: Path):
    """numpy's header parser raises tokenize.TokenError for some damage: a traceback in resume
    and compare, where other damage reads "not a valid .npy file"."""
    folder = tmp_path / "00000"
    folder.mkdir()
    np.save(folder / rundir.FRAMES_FILE, np.zeros((1, 2, 2, 3), np.uint8))
    VideoRecord(prompt_index=0, prompt="p").write(folder)
    raw = bytearray((folder / rundir.FRAMES_FILE).read_bytes())
    start = raw.index(b"{") + 1
    raw[start : start + 5] = b"((((("
    (folder / rundir.FRAMES_FILE).write_bytes(bytes(raw))
    assert "is not a valid .npy file" in rundir.verify_video(folder)


def test_only_five_or_more_digit_folders_are_prompt_folders(tmp_path: Path):
    """Resume reads a prompt folder's name as its index: a backup such as 00012.bak or
    00012_old taken for one would be read (int('00012.bak') fails) or redone."""
    for name, want in [("00012", True), ("123456", True), ("00012_old", False),
                       ("00012.bak", False), ("0012", False), ("x00012", False),
                       # prompt_dir_name's names only: 000000 was prompt 0 too, and compare
                       # took it over 00000; non-ASCII digits matched \d
                       ("000000", False), ("012345", False), ("0001\u0663", False),
                       ("00012\n", False)]:  # fmt: skip
        (tmp_path / name).mkdir()
        assert rundir.is_prompt_dir(tmp_path / name) is want, name
    (tmp_path / "99999").write_text("a file, not a folder")
    assert not rundir.is_prompt_dir(tmp_path / "99999")


def test_bad_meta_json_in_scan_names_the_file(old_copy: Path):
    meta = old_copy / "dense" / "00001" / rundir.META_FILE
    meta.write_text('{"prompt_index": 1')
    with pytest.raises(RunDirError, match="is not valid JSON") as exc:
        scan_run(old_copy / "dense")
    assert str(meta) in str(exc.value)


# ---------------------------------------------------------------------------------------------
# verification of finished videos
# ---------------------------------------------------------------------------------------------


def test_the_frames_checksum_covers_the_whole_file(tmp_path: Path):
    """A changed byte past the first MiB (real frames.npy files are hundreds of MiB) must fail
    the check: a checksum of only the first chunk passed every test."""
    frames = np.random.default_rng(0).integers(0, 256, (9, 240, 320, 3), dtype=np.uint8)
    path = tmp_path / rundir.FRAMES_FILE
    np.save(path, frames)  # ~2 MiB
    rundir.VideoRecord(prompt_index=0, prompt="p", shape=list(frames.shape),
                       frames_bytes=path.stat().st_size,
                       frames_sha256=rundir.file_sha256(path)).write(tmp_path)  # fmt: skip
    assert rundir.verify_video(tmp_path) is None
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # one value of the last frame
    path.write_bytes(bytes(data))
    assert "SHA-256" in rundir.verify_video(tmp_path)


def test_verify_video_catches_truncation_shape_checksum_and_prompt(old_copy: Path):
    folder = old_copy / "dense" / "00000"
    frames = folder / rundir.FRAMES_FILE
    good = frames.read_bytes()
    assert rundir.verify_video(folder) is None
    frames.write_bytes(good[:1000])  # schema 1: caught from the .npy header
    assert "truncated" in rundir.verify_video(folder) and str(frames) in rundir.verify_video(folder)
    frames.write_bytes(good + b"\0" * 40)  # and bytes past what the header implies
    assert f"truncated or padded: {len(good) + 40} bytes, its header implies {len(good)}" in (
        rundir.verify_video(folder)
    )
    frames.write_bytes(good)
    assert "the prompt changed" in rundir.verify_video(folder, prompt="another prompt")
    # schema 2: size and checksum recorded
    meta = VideoRecord.read(folder)
    data = meta.to_json() | {"schema_version": 2, "frames_bytes": len(good)}
    data["frames_sha256"] = rundir.file_sha256(frames)
    rundir.write_json(folder / rundir.META_FILE, data)
    assert rundir.verify_video(folder) is None
    flipped = bytearray(good)
    flipped[-1] ^= 1  # same length, one pixel changed
    frames.write_bytes(bytes(flipped))
    assert "SHA-256" in rundir.verify_video(folder)
    np.save(frames, np.zeros((4, 32, 32, 3), np.uint8))
    assert "has shape [4, 32, 32, 3]" in rundir.verify_video(folder)
    frames.unlink()
    assert "is missing" in rundir.verify_video(folder)
    (folder / rundir.META_FILE).write_text("nope")
    assert "is not valid JSON" in rundir.verify_video(folder)


def test_video_problem_names_a_missing_empty_or_resized_viewing_copy(old_copy: Path):
    folder = old_copy / "dense" / "00000"
    video = folder / rundir.VIDEO_FILE
    video.unlink(missing_ok=True)
    assert rundir.video_problem(folder) == f"{video} is missing"
    video.write_bytes(b"")  # schema 1 records no size: the empty file is still caught
    assert rundir.video_problem(folder) == f"{video} is empty"
    video.write_bytes(b"x" * 10)
    assert rundir.video_problem(folder) is None
    meta = VideoRecord.read(folder).to_json() | {"schema_version": 5, "video_bytes": 12}
    rundir.write_json(folder / rundir.META_FILE, meta)
    assert rundir.video_problem(folder) == (
        f"{video} has 10 bytes but {folder / rundir.META_FILE} says 12"
    )


def test_truncated_frames_are_named_when_compared(old_copy: Path, tmp_path: Path):
    frames = old_copy / "xattn" / "00001" / rundir.FRAMES_FILE
    frames.write_bytes(frames.read_bytes()[:1000])
    with pytest.raises(RunDirError) as exc:
        compare_runs(old_copy / "dense", old_copy / "xattn", tmp_path / "r", metrics=("psnr",))
    assert str(frames) in str(exc.value) and "truncated" in str(exc.value)


# ---------------------------------------------------------------------------------------------
# atomic writes and the lock
# ---------------------------------------------------------------------------------------------


def test_atomic_path_leaves_the_old_file_on_error(tmp_path: Path):
    path = tmp_path / "x.json"
    rundir.write_json(path, {"a": 1})
    with pytest.raises(KeyboardInterrupt), rundir.atomic_path(path) as tmp:
        assert rundir.TMP_MARK in tmp.name and tmp.suffix == ".json"
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_a_failed_write_names_its_file_and_keeps_errno(tmp_path: Path):
    """An OSError inside an atomic write comes out as WriteFailed (an OSError) naming the
    file: numpy's full-disk error said only "27648 requested and 12160 written"."""
    from xattn_video.atomic import WriteFailed

    path = tmp_path / "frames.npy"
    with pytest.raises(WriteFailed) as exc, rundir.atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise OSError("27648 requested and 12160 written")
    assert str(exc.value) == f"could not write {path}: 27648 requested and 12160 written"
    assert exc.value.errno is None and isinstance(exc.value.__cause__, OSError)
    with pytest.raises(WriteFailed) as exc, rundir.atomic_path(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert exc.value.errno == errno.ENOSPC
    assert exc.value.strerror == f"could not write {path}: No space left on device"
    with pytest.raises(WriteFailed) as exc, rundir.atomic_path(tmp_path / "outer"):
        with rundir.atomic_path(path):
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
    assert exc.value.strerror == f"could not write {path}: Disk quota exceeded"  # not wrapped twice
    with pytest.raises(ValueError, match="^not an OSError$"), rundir.atomic_path(path):
        raise ValueError("not an OSError")
    assert list(tmp_path.iterdir()) == []


_HOLD = """
import sys, time
from xattn_video.runlock import RunLock
lock = RunLock(sys.argv[1]); assert lock.acquire(); print("held", flush=True); time.sleep(60)
"""


def test_lock_excludes_a_second_process_and_dies_with_it(tmp_path: Path):
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(rundir.RunDirLocked, match=f"pid {holder.pid}"):
            runlock.RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with runlock.RunLock(tmp_path) as lock:  # the holder died: no stale lock
        assert lock.acquire()
        assert (tmp_path / rundir.LOCK_FILE).read_text().strip() == str(os.getpid())


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM, errno.EROFS])
def test_unwritable_directory_is_detected_not_guessed(tmp_path: Path, monkeypatch, code):
    """Denied, not permitted or a read-only mount: the run is read, not locked."""
    assert runlock.writable_dir(tmp_path) and not list(tmp_path.iterdir())

    def denied(path):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(runlock, "_open_lock_file", denied)
    assert not runlock.writable_dir(tmp_path)
    assert runlock.RunLock(tmp_path).acquire() is False


def test_a_missing_run_directory_is_an_error_not_read_only(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        runlock.RunLock(tmp_path / "missing").acquire()


def test_the_lock_file_holds_exactly_this_pid_and_release_is_idempotent(tmp_path: Path):
    """An earlier holder's longer pid must not leave its tail (the "being written by pid"
    message reads it); a second release must not close the descriptor number again (another
    file may have it by then)."""
    (tmp_path / rundir.LOCK_FILE).write_text("123456789012\n")
    lock = runlock.RunLock(tmp_path)
    assert lock.acquire()
    assert (tmp_path / rundir.LOCK_FILE).read_text() == f"{os.getpid()}\n"
    lock.release()
    other = os.open(tmp_path / "other", os.O_RDWR | os.O_CREAT)  # may reuse the number
    try:
        lock.release()
        with lock:
            pass
        os.fstat(other)  # still open
    finally:
        os.close(other)


def test_a_prompt_folder_that_cannot_be_made_is_a_write_failure(tmp_path: Path, monkeypatch):
    """No free inodes / a full disk while creating a prompt's folder: WriteFailed naming the
    folder (the CLI's one-line exit 1), not a bare OSError that reached the user as a
    traceback."""
    from xattn_video.atomic import WriteFailed

    folder = tmp_path / "00001"
    rundir.start_prompt_dir(folder)  # creates it
    (folder / rundir.META_FILE).write_text("{}")
    (folder / f".video.1.ab{rundir.TMP_MARK}.mp4").write_bytes(b"x")
    rundir.start_prompt_dir(folder)  # redone: unfinished, leftovers gone
    assert list(folder.iterdir()) == []

    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "mkdir", no_space)
    with pytest.raises(WriteFailed) as exc:
        rundir.start_prompt_dir(tmp_path / "00002")
    assert exc.value.errno == errno.ENOSPC
    assert exc.value.strerror == f"could not prepare {tmp_path / '00002'}: No space left on device"


def test_remove_leftovers_takes_temporary_files_of_the_run_and_its_prompt_folders(
    tmp_path: Path, monkeypatch
):
    """Temporary names of :func:`atomic_path` in the run folder and its prompt folders go (they
    were left for good outside a prompt being redone). Kept: a user's file with ".partial" in
    its name, temporary names in a folder that is no prompt folder (another tool's, a report),
    and a file that can't be removed (a folder of another user: resuming failed there with
    "can't create the run directory")."""
    for d in ("00003", "00004", "report"):
        (tmp_path / d).mkdir()
    gone = [tmp_path / f".run.9.ab{rundir.TMP_MARK}.json",
            tmp_path / "00003" / f".video.9.cd{rundir.TMP_MARK}.mp4"]  # fmt: skip
    stuck = tmp_path / "00004" / f".video.9.ef{rundir.TMP_MARK}.mp4"
    kept = [tmp_path / "notes.partial.txt", tmp_path / "00003" / "meta.json", stuck,
            tmp_path / "report" / f".report.9.ab{rundir.TMP_MARK}.html"]  # fmt: skip
    for p in gone + kept:
        p.write_bytes(b"x")
    unlink = Path.unlink

    def denied(self, *args, **kwargs):
        if self == stuck:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", denied)
    rundir.remove_leftovers(tmp_path)
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == sorted(kept)
    with pytest.raises(PermissionError):  # the strict form, for the prompt being redone
        rundir.remove_partial_files(stuck.parent)


def test_the_lock_file_takes_the_umasks_permissions(tmp_path: Path):
    """It was created 0o644 whatever the umask: in a group-shared folder (umask 002) every
    file was group-writable but .lock, and a second user of the group was told the folder
    "is not writable"."""
    old = os.umask(0o002)
    try:
        with runlock.RunLock(tmp_path) as lock:
            assert lock.acquire()
    finally:
        os.umask(old)
    assert (tmp_path / rundir.LOCK_FILE).stat().st_mode & 0o777 == 0o664


def test_another_users_read_only_lock_file_is_still_locked(tmp_path: Path, monkeypatch):
    """A .lock another user made read-only (before the fix above) in a folder this user may
    write: the lock is taken through a read-only descriptor (simulated: tests may run as
    root), so the run resumes and a second writer is still kept out."""
    (tmp_path / rundir.LOCK_FILE).write_text("4242\n")
    real = runlock._open_lock_file

    def lock_file_denied(path):
        if Path(path).name == rundir.LOCK_FILE:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(runlock, "_open_lock_file", lock_file_denied)
    with runlock.RunLock(tmp_path) as lock:
        assert lock.acquire() and runlock.writable_dir(tmp_path)
        with pytest.raises(rundir.RunDirLocked, match=r"pid 4242"):
            runlock.RunLock(tmp_path).acquire()


def test_a_file_system_without_flock_goes_on_unlocked_with_a_warning(tmp_path, monkeypatch,
                                                                     caplog):  # fmt: skip
    """ENOLCK (NFS mounted nolock) was reported as "being written by another generate process
    (pid N)", N a long-dead earlier holder, on every run."""
    import fcntl

    (tmp_path / rundir.LOCK_FILE).write_text("4242\n")

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level("WARNING", logger="xattn_video.runlock"):
        assert runlock.RunLock(tmp_path).acquire() is True
    assert "cannot lock files" in caplog.text and "second generate process" in caplog.text


def test_a_prompt_change_that_prints_alike_names_its_code_points():
    """NFC against NFD accents, a Cyrillic letter for a Latin one: the two reprs print the same
    in a terminal, so the resume warning and compare's note name the first differing code
    points."""
    from xattn_video.rundir import first_difference

    assert first_difference("caf\u00e9", "cafe\u0301") == (
        "first difference at character 3: U+00E9 -> U+0065 U+0301"
    )
    assert first_difference("a cat", "\u0430 cat") == (
        "first difference at character 0: U+0061 U+0020 -> U+0430 U+0020"
    )
    assert first_difference("a cat", "a cat.") == "first difference at character 5: end -> U+002E"


def test_a_changed_long_prompt_is_clipped_in_the_message():
    """A 10 KB prompt changed by one character made a 20 KB warning line."""
    from xattn_video.rundir import clipped, first_difference

    old = "x" * 10_000
    assert clipped(old) == "x" * 79 + "\u2026" and clipped("short") == "short"
    assert first_difference(old, old[:-1] + "y") == (
        "first difference at character 9999: U+0078 -> U+0079"
    )
