"""User errors of ``xattn-video compare`` and ``calibrate``: one ``xattn-video: error:`` line,
exit 2, before any long work (no model loaded, no metric computed); and compare's
``--allow-mismatch`` / ``--no-progress`` flags.

The compare runs are synthetic (``test_compare_report.write_run``); no test here needs CUDA (its
absence is simulated where it matters).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from xattn_video.metrics import compare as compare_mod
from xattn_video.pipelines import calibrate_cli
from xattn_video.pipelines import models as models_mod
from xattn_video.pipelines.cli import main

from .test_cli_robustness import _fail
from .test_compare_report import sparse_frames, write_run

SAME = {"model_source": "org/fake-dit", "dtype": "bfloat16"}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("XATTN_VIDEO_OFFLINE", "1")
    monkeypatch.delenv("XATTN_VIDEO_LPIPS_WEIGHTS", raising=False)


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Errors must come before the model is loaded or a video compared."""

    def fail(*args, **kwargs):
        raise AssertionError("long work started before the error")

    monkeypatch.setattr(models_mod, "load_pipeline", fail)
    monkeypatch.setattr(compare_mod, "_compare_video", fail)


# ---------------------------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------------------------


def _runs(tmp_path: Path, dense_fields: dict, sparse_fields: dict) -> tuple[str, str]:
    dense = write_run(tmp_path / "d", "dense", [0], run_fields={**SAME, **dense_fields})
    sparse = write_run(
        tmp_path / "s", "xattn", [0], frames_fn=sparse_frames,
        run_fields={**SAME, **sparse_fields},
    )  # fmt: skip
    return str(dense), str(sparse)


def test_compare_refuses_runs_with_other_steps_naming_both_values(tmp_path, capsys, no_work):
    dense, sparse = _runs(tmp_path, {"steps": 2}, {"steps": 4})
    line = _fail(["compare", dense, sparse, "--out", str(tmp_path / "r")], capsys)
    assert "steps 2 (dense) vs 4 (sparse)" in line and "--allow-mismatch" in line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "sparse_fields, difference",
    [
        ({"frames": 9}, "frames 5 (dense) vs 9 (sparse)"),
        ({"seed": 3}, "seed 0 (dense) vs 3 (sparse)"),
    ],
)
def test_compare_does_not_offer_allow_mismatch_for_another_frame_count_or_seed(
    tmp_path, capsys, sparse_fields, difference
):
    """The message offered --allow-mismatch, which then failed on the frames' shapes, or (another
    seed) with "no paired prompt ... from the same prompt text and seed"."""
    dense, sparse = _runs(tmp_path, {}, sparse_fields)
    argv = ["compare", dense, sparse, "--out", str(tmp_path / "r"), "--metrics", "psnr"]
    line = _fail(argv, capsys)
    assert difference in line
    assert "not even --allow-mismatch" in line and "pass --allow-mismatch" not in line
    line = _fail([*argv, "--allow-mismatch"], capsys)
    assert difference in line and "not even --allow-mismatch" in line
    assert not (tmp_path / "r").exists()


def test_compare_allow_mismatch_compares_and_warns(tmp_path, capsys):
    dense, sparse = _runs(tmp_path, {"steps": 2}, {"steps": 4})
    argv = ["compare", dense, sparse, "--out", str(tmp_path / "r"), "--metrics", "psnr"]
    assert main([*argv, "--allow-mismatch", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "xattn-video: warning: " in err and "steps 2 (dense) vs 4 (sparse)" in err
    assert "comparing videos" not in err  # --no-progress
    assert "settings differ" in out
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["mismatched_settings"] == {"steps": {"dense": 2, "sparse": 4}}


def test_compare_flags_are_in_the_help(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = capsys.readouterr().out
    assert "--allow-mismatch" in text and "--no-progress" in text


def test_compare_on_cuda_without_cuda_exits_2(tmp_path, capsys, no_cuda, no_work):
    dense, sparse = _runs(tmp_path, {}, {})
    argv = ["compare", dense, sparse, "--out", str(tmp_path / "r"), "--device", "cuda"]
    line = _fail(argv, capsys)
    assert "asked for CUDA, but no CUDA GPU is available" in line
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------
# calibrate
# ---------------------------------------------------------------------------------------------


def _calibrate(tmp_path: Path, *extra: str) -> list[str]:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat on a mat\na dog running\n")
    argv = ["calibrate", "--model", "tiny-hunyuan", "--prompts", str(prompts), "--num-prompts",
            "1", "--steps", "2", "--measure-every", "1", "--no-progress"]  # fmt: skip
    return [*argv, *extra]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prompts", "nosuch.txt"], "nosuch.txt does not exist"),
        (["--device", "foo"], "is not a torch device"),
        (["--device", "cuda"], "asked for CUDA, but no CUDA GPU is available"),
        (["--steps", "0"], "steps must be a positive integer, got 0"),
        (["--height", "0"], "height must be a positive integer, got 0"),
        (["--width", "-16"], "width must be a positive integer, got -16"),
        (["--frames", "0"], "frames must be a positive integer, got 0"),
        (["--height", "20"], "height must be a positive multiple of 16"),
        (["--frames", "4"], "frames must be 4k+1"),
        (["--warmup-steps", "2"], "no denoising step to measure"),
        (["--num-prompts", "0"], "--num-prompts must be >= 1, got 0"),  # said "sample must be"
        (["--measure-every", "0"], "--measure-every must be >= 1, got 0"),
        # checked only once the whole calibration had run, which was then lost
        (["--target-density", "1.5"], "target_density must be in (0, 1], got 1.5"),
        (["--target-mass", "0"], "target_mass must be in (0, 1], got 0.0"),
        (["--target-mass", "95"], "target_mass must be in (0, 1], got 95.0"),
        (["--warmup-steps", "1", "--dense-last-steps", "1"], "dense_last_steps=1 cover all 2"),
        (["--out", "EXISTING_DIR"], "is a directory"),
        (["--out", "FILE/thr.json"], "is a file, not a directory"),
    ],
)
def test_calibrate_bad_input_exits_2_before_the_model_loads(
    tmp_path, capsys, no_cuda, no_work, extra, message
):
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    subst = {"nosuch.txt": str(tmp_path / "nosuch.txt"), "EXISTING_DIR": str(tmp_path / "dir"),
             "FILE/thr.json": str(tmp_path / "file" / "thr.json")}  # fmt: skip
    extra = [subst.get(e, e) for e in extra]
    argv = _calibrate(tmp_path, "--device", "cpu", "--out", str(tmp_path / "thr.json"), *extra)
    line = _fail(argv, capsys)
    assert message in line


def test_calibrate_out_in_a_new_folder_is_created(tmp_path, capsys):
    out = tmp_path / "new" / "sub" / "thr.json"
    assert main(_calibrate(tmp_path, "--device", "cpu", "--out", str(out))) == 0
    assert json.loads(out.read_text())["prompts"] == ["a cat on a mat"]
    again = tmp_path / "other" / "thr2.json"
    assert main(["calibrate", "--retarget", str(out), "--out", str(again)]) == 0
    assert again.is_file()


def test_calibrate_ignores_a_thresholds_file_it_says_it_ignores(tmp_path, capsys, monkeypatch):
    """generate's flags reused to recalibrate: the old file (calibrated at another stride, or
    gone) was loaded and refused the run right after the warning that it is ignored."""
    thr = Path(__file__).parent / "data" / "thresholds_tiny.json"  # stride 4, block 16
    seen = []

    def calibrate(args, targets, cfg, *rest):
        seen.append(cfg)
        raise SystemExit(0)

    monkeypatch.setattr(calibrate_cli, "_calibrate", calibrate)
    for path in (str(thr), str(tmp_path / "gone.json")):
        argv = _calibrate(tmp_path, "--stride", "8", "--thresholds-file", path)
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--out", str(tmp_path / "thr.json")])
        assert exc.value.code == 0
        assert "warning: calibrate ignores --thresholds-file" in capsys.readouterr().err
    assert [(c.stride, c.thresholds_file) for c in seen] == [(8, "")] * 2


def test_calibrate_help_does_not_title_its_settings_for_generate(capsys):
    """The settings group said "--attention xattn only", a flag calibrate does not have."""
    with pytest.raises(SystemExit):
        main(["calibrate", "--help"])
    text = capsys.readouterr().out
    assert "XAttention settings of the calibration run" in text and "--attention" not in text


# ---------------------------------------------------------------------------------------------
# every command
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "--model", "tiny", "--prompts", "p.txt", "--attention", "dense", "--out", "o"],
        ["compare", "a", "b", "--out", "r"],
        ["demo"],
        ["calibrate", "--out", "t.json"],
    ],
)
def test_an_unknown_flag_is_reported_with_the_commands_usage(capsys, no_work, argv):
    """It was reported with the top-level usage (``xattn-video [-h] COMMAND ...``), which lists
    none of the command's flags."""
    line = _fail([*argv, "--no-such-flag", "1"], capsys)
    assert line == f"xattn-video {argv[0]}: error: unrecognized arguments: --no-such-flag 1"
    with pytest.raises(SystemExit):  # again, for the usage lines _fail read and dropped
        main([*argv, "--no-such-flag"])
    usage = capsys.readouterr().err
    assert usage.startswith(f"usage: xattn-video {argv[0]} "), usage


@pytest.mark.parametrize("offline", [True, False])
def test_a_hub_model_that_is_not_cached_offline_says_so(monkeypatch, tmp_path, offline):
    """diffusers words an unreachable hub as "does not appear to have a file named
    config.json", which sent users looking for a broken repo."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    if not offline:  # the hub unreachable instead: the loader's OSError caused by a socket error

        def unreachable(source, dtype):
            try:
                raise ConnectionError("[Errno -2] Name or service not known")
            except ConnectionError as e:
                raise OSError(f"{source} does not appear to have a file named config.json") from e

        monkeypatch.setitem(models_mod._LOADERS, "wan", unreachable)
    repo = "xattn-video-tests/no-such-model"
    with pytest.raises(ValueError) as exc:
        models_mod.load_pipeline("wan", model_id=repo, device="cpu")
    msg = str(exc.value)
    why = "is in offline mode (HF_HUB_OFFLINE is set)" if offline else "could not be reached"
    assert f"could not load a wan pipeline from '{repo}': the Hugging Face Hub {why}" in msg
    assert f"`hf download {repo}`" in msg and "--model-path" in msg
    assert "config.json" not in msg


@pytest.mark.parametrize("inside", ["d", "s/00000", "s/00007"])
def test_compare_refuses_an_out_dir_inside_a_run(tmp_path, capsys, no_work, inside):
    """The report was written into the run (or a prompt folder, or a new folder named like one)
    and mixed with its videos."""
    dense, sparse = _runs(tmp_path, {}, {})
    out = tmp_path / inside
    line = _fail(["compare", dense, sparse, "--out", str(out)], capsys)
    run = dense if inside == "d" else sparse
    assert f"out_dir {out} is inside the run directory {run}" in line
    assert not (tmp_path / "s" / "00007").exists()
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["00000", "run.json"]


def test_compare_names_a_missing_path_and_a_file_as_such(tmp_path, capsys, no_work):
    """Both said "is not a run directory (no run.json)"."""
    dense, sparse = _runs(tmp_path, {}, {})
    (tmp_path / "afile").write_text("x")
    for path, what in ((tmp_path / "nope", "does not exist"), (tmp_path / "afile", "is a file")):
        line = _fail(["compare", str(path), sparse, "--out", str(tmp_path / "r")], capsys)
        assert f"{path} {what}" in line


def test_a_damaged_video_names_the_way_to_regenerate_it(tmp_path, capsys):
    dense, sparse = _runs(tmp_path, {}, {})
    frames = Path(sparse) / "00000" / "frames.npy"
    frames.write_bytes(frames.read_bytes()[:-10])
    argv = ["compare", dense, sparse, "--out", str(tmp_path / "r"), "--metrics", "psnr"]
    line = _fail([*argv, "--no-progress"], capsys)
    assert f"{frames} is truncated or padded" in line
    assert "rerunning its generate command regenerates that video" in line


def test_a_warning_from_another_package_says_which(capsys):
    """huggingface_hub's deprecation notice printed as "xattn-video: warning: ...", as if ours."""
    import warnings

    from xattn_video.pipelines import cli

    hub = "/venv/lib/python3.12/site-packages/huggingface_hub/utils/_validators.py"
    ours_installed = "/venv/lib/python3.12/site-packages/xattn_video/hook.py"
    with cli._one_line_warnings("xattn-video"):
        for filename in (hub, ours_installed, cli.__file__):
            warnings.warn_explicit("a notice", UserWarning, filename, 1)
    assert capsys.readouterr().err.splitlines() == [
        "xattn-video: warning from huggingface_hub: a notice",
        "xattn-video: warning: a notice",
        "xattn-video: warning: a notice",
    ]


def test_metric_names_are_trimmed_and_case_blind():
    from xattn_video.pipelines.cli_args import METRICS
    from xattn_video.pipelines.cli_checks import parse_metrics

    assert parse_metrics(None) == (METRICS, False)  # the default: LPIPS only where it can run
    assert parse_metrics(" PSNR, SSIM ") == (("psnr", "ssim"), False)
    assert parse_metrics("LPIPS") == (("lpips",), True)
