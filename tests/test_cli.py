"""Tests for the ``xattn-video`` CLI (generate / compare / demo) on the tiny offline models.

Most tests use ``tiny-hunyuan`` (random weights, 4 steps: fastest); the trained ``tiny`` model
(the default of ``demo``) gets its own end-to-end generate and demo tests, with fewer steps.

Every run passes ``--device cpu`` so the expectations (no GPU name, CPU noise) hold on a GPU
machine too.

Commands run in-process through ``main(argv)`` (one import of diffusers for the whole file);
one test runs ``python -m xattn_video.pipelines.cli`` as a subprocess.
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

from xattn_video import rundir
from xattn_video.config import XAttentionConfig, config_fields, field_docs
from xattn_video.metrics import read_video, scan_run
from xattn_video.pipelines import cli
from xattn_video.pipelines.cli import build_generate_parser, config_from_args, generate_main, main
from xattn_video.pipelines.cli_args import plain_text
from xattn_video.pipelines.models import MODELS
from xattn_video.prompts import ENV_PROMPTS_DIR, load_prompts
from xattn_video.prompts import fetch as fetch_mod

from ._vbench import use_vbench_subset

REPO = Path(__file__).resolve().parents[1]


PROMPTS = ["a red car drives on a road", "a cat sleeping, 4K — naïve", "fireworks over a lake"]
XATTN_FLAGS = ["--block-size", "16", "--stride", "4", "--warmup-steps", "1", "--backend", "torch"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The shipped VBench subset (tests/_vbench.py), a private cache, no downloads, no LPIPS
    weights."""
    use_vbench_subset(monkeypatch)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("XATTN_VIDEO_LPIPS_WEIGHTS", raising=False)

    def no_network(spec):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(fetch_mod, "download", no_network)


@pytest.fixture
def prompt_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    return path


def _generate(out: Path, prompts: str | Path, attention: str, *extra: str) -> int:
    return _generate_model("tiny-hunyuan", out, prompts, attention, *extra)


def _generate_model(model: str, out: Path, prompts: str | Path, attention: str, *extra: str):
    argv = ["generate", "--model", model, "--prompts", str(prompts), "--attention", attention]
    return main([*argv, "--out", str(out), "--no-progress", "--device", "cpu", *extra])


def _fail(argv: list[str], capsys: pytest.CaptureFixture[str], entry=main) -> str:
    with pytest.raises(SystemExit) as exc:
        entry(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def _prompt_dirs(run: Path) -> list[Path]:
    return sorted(p for p in run.iterdir() if p.is_dir())


def _partials(run: Path) -> list[Path]:
    return [p for p in run.rglob("*") if rundir.TMP_MARK in p.name]


def _finished(prompt_dir: Path) -> bool:
    return (prompt_dir / rundir.META_FILE).is_file()


# ---------------------------------------------------------------------------------------------
# generate + compare end to end
# ---------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:LPIPS skipped")
def test_generate_and_compare_end_to_end(tmp_path: Path, capsys):
    dense, sparse, report = tmp_path / "dense", tmp_path / "xattn", tmp_path / "report"
    assert _generate(dense, "vbench", "dense", "--limit", "2") == 0
    assert _generate(sparse, "vbench", "xattn", "--limit", "2", *XATTN_FLAGS) == 0
    expected = load_prompts("vbench", limit=2)

    for run, attention in ((dense, "dense"), (sparse, "xattn")):
        info = json.loads((run / "run.json").read_text())
        assert info["model"] == "tiny-hunyuan" and info["attention"] == attention
        assert (info["height"], info["width"], info["frames"], info["steps"]) == (32, 32, 9, 4)
        assert info["seed"] == 0 and info["prompts"] == "vbench" and info["gpu"] is None
        assert {"torch", "diffusers", "transformers", "accelerate"} <= set(info["versions"])
        assert "git_sha" in info
        if attention == "dense":
            assert info["config"] is None
        else:
            cfg = XAttentionConfig.from_dict(info["config"])
            assert (
                cfg
                == XAttentionConfig.from_preset(
                    "tiny", block_size=16, stride=4, warmup_steps=1, backend="torch"
                ).resolved()
            )  # the estimate precision that ran, not "auto"
            assert cfg.estimate_precision == "bf16"
        assert [d.name for d in _prompt_dirs(run)] == [f"{p.index:05d}" for p in expected]
        for prompt, folder in zip(expected, _prompt_dirs(run), strict=True):
            frames = np.load(folder / "frames.npy")
            assert frames.dtype == np.uint8 and frames.shape == (9, 32, 32, 3)
            assert read_video(folder / "video.mp4").shape == (9, 32, 32, 3)
            meta = json.loads((folder / "meta.json").read_text())
            assert meta["prompt_index"] == prompt.index and meta["prompt"] == prompt.text
            assert meta["seed"] == 0 and meta["attention"] == attention
            assert meta["config"] == info["config"]
            timings = meta["timings"]
            assert len(timings["per_step_s"]) == 4 and all(t > 0 for t in timings["per_step_s"])
            assert timings["total_s"] > timings["denoise_s"] > 0
            # denoising is the steps' sum (not the call's total: encode and decode left out)
            assert timings["denoise_s"] == pytest.approx(sum(timings["per_step_s"]), rel=1e-9)
            # the process's first video (start-up, compile) is marked for compare to leave out
            assert meta["first_in_process"] == (folder == _prompt_dirs(run)[0])
            assert meta["gpu"] is None and meta["versions"] == info["versions"]
            if attention == "dense":
                assert meta["density"] is None
            else:
                density = meta["density"]
                assert 0 < density["sparse_density"] <= 1
                assert 0 < density["effective_density"] <= 1
                assert density["num_runs"] == 1  # stats are reset per video
        assert not _partials(run)

    capsys.readouterr()
    assert main(["compare", str(dense), str(sparse), "--out", str(report)]) == 0
    out = capsys.readouterr().out
    assert "Report:" in out and str(report / "report.html") in out
    for name in ("report.json", "report.md", "report.html"):
        assert (report / name).is_file()
    data = json.loads((report / "report.json").read_text())
    assert data["aggregate"]["num_videos"] == 2 and data["lpips_skipped"]


def test_same_seed_gives_same_noise_for_dense_and_xattn(tmp_path: Path, prompt_file: Path, capsys):
    """All steps dense (warm-up = steps): the xattn run must reproduce the dense frames."""
    dense, sparse = tmp_path / "dense", tmp_path / "xattn"
    assert _generate(dense, prompt_file, "dense", "--limit", "1") == 0
    flags = [*XATTN_FLAGS[:-4], "--backend", "torch", "--warmup-steps", "4"]
    capsys.readouterr()
    assert _generate(sparse, prompt_file, "xattn", "--limit", "1", *flags) == 0
    assert "xattn-video: warning: warmup_steps=4 >= steps=4: every step runs dense" in (
        capsys.readouterr().err
    )
    a = np.load(dense / "00000" / "frames.npy").astype(int)
    b = np.load(sparse / "00000" / "frames.npy").astype(int)
    assert np.abs(a - b).max() <= 1
    meta = json.loads((sparse / "00000" / "meta.json").read_text())
    assert meta["density"]["sparse_density"] is None  # no sparse call happened


def test_generate_video_entry_point_and_text_prompts(tmp_path: Path, prompt_file: Path):
    out = tmp_path / "run"
    argv = ["--model", "tiny-hunyuan", "--prompts", str(prompt_file), "--attention", "dense"]
    argv += ["--out", str(out), "--sample", "2", "--seed", "3", "--fps", "4", "--no-progress"]
    argv += ["--device", "cpu"]
    assert generate_main(argv) == 0
    assert [d.name for d in _prompt_dirs(out)] == ["00000", "00001"]
    meta = json.loads((out / "00001" / "meta.json").read_text())
    assert meta["prompt"] == PROMPTS[1] and meta["seed"] == 3


def test_generate_with_the_trained_tiny_model(tmp_path: Path, prompt_file: Path):
    """The default ``tiny`` (trained weights shipped with the package), dense and with its
    preset, 2 prompts x 3 steps (the model's 12 steps cost ~5 s / ~9 s per video on CPU)."""
    runs = {a: tmp_path / a for a in ("dense", "xattn")}
    for attention, run in runs.items():
        argv = ["--limit", "2", "--steps", "3"]
        assert _generate_model("tiny", run, prompt_file, attention, *argv) == 0
        info = json.loads((run / "run.json").read_text())
        assert info["model"] == "tiny" and info["model_source"] is None
        assert info["dtype"] == "float32"  # CPU default
        assert (info["height"], info["width"], info["frames"], info["steps"]) == (32, 32, 9, 3)
        if attention == "dense":
            assert info["config"] is None
        else:
            cfg = XAttentionConfig.from_dict(info["config"])
            assert cfg == XAttentionConfig.from_preset("tiny-dit").resolved()
        assert [d.name for d in _prompt_dirs(run)] == ["00000", "00001"]
        for folder in _prompt_dirs(run):
            frames = np.load(folder / "frames.npy")
            assert frames.dtype == np.uint8 and frames.shape == (9, 32, 32, 3)
            assert read_video(folder / "video.mp4").shape == (9, 32, 32, 3)
            meta = json.loads((folder / "meta.json").read_text())
            assert len(meta["timings"]["per_step_s"]) == 3
            if attention == "xattn":
                density = meta["density"]
                assert 0 < density["sparse_density"] < 1 and density["num_runs"] == 1
                # the preset's 2 dense warm-up steps, then 1 sparse step: 6 blocks each
                assert density["num_sparse_calls"] == 1 * 6
                assert density["num_dense_calls"] == 2 * 6
        assert not _partials(run)
    dense = [np.load(d / "frames.npy").astype(float) / 255 for d in _prompt_dirs(runs["dense"])]
    sparse = [np.load(d / "frames.npy").astype(float) / 255 for d in _prompt_dirs(runs["xattn"])]
    assert np.abs(dense[0] - dense[1]).mean() > 0.02  # the prompt picks the video
    for d, x in zip(dense, sparse, strict=True):
        # trained weights: smooth images that move smoothly (random-weight noise gives ~0)
        gray = d.mean(-1)
        assert np.corrcoef(gray[:, :, :-1].ravel(), gray[:, :, 1:].ravel())[0, 1] > 0.6
        assert np.corrcoef(gray[:-1].ravel(), gray[1:].ravel())[0, 1] > 0.6
        assert 10 * np.log10(1 / np.mean((d - x) ** 2)) > 22  # measured 28 and 36 dB


# ---------------------------------------------------------------------------------------------
# resume
# ---------------------------------------------------------------------------------------------


def test_interrupted_run_resumes_without_counting_half_written_prompts(
    tmp_path: Path, prompt_file: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    import xattn_video.metrics as metrics_mod

    out = tmp_path / "run"
    real_save = metrics_mod.save_frames
    calls = []

    def save_then_ctrl_c(path, frames):
        calls.append(path)
        if len(calls) == 2:  # prompt 1: video.mp4 is already in place, frames half written
            with rundir.atomic_path(path) as tmp:
                tmp.write_bytes(b"half")
                raise KeyboardInterrupt
        real_save(path, frames)

    monkeypatch.setattr(metrics_mod, "save_frames", save_then_ctrl_c)
    assert _generate(out, prompt_file, "xattn", *XATTN_FLAGS) == cli.EXIT_INTERRUPTED
    assert "rerun the same command to resume" in capsys.readouterr().err
    assert _finished(out / "00000")
    assert not _finished(out / "00001") and not (out / "00002").exists()
    assert not (out / "00001" / "frames.npy").exists() and not _partials(out)
    scanned = scan_run(out)
    assert sorted(scanned.videos) == [0] and 1 in scanned.unfinished

    # a hard kill could leave a temporary file: the rerun removes it, also those of run.json
    # and of a finished prompt's re-encoded video (they were left for good)
    (out / "00001" / f".video.1.dead{rundir.TMP_MARK}.mp4").write_bytes(b"junk")
    (out / "00000" / f".video.1.dead{rundir.TMP_MARK}.mp4").write_bytes(b"junk")
    (out / f".run.1.dead{rundir.TMP_MARK}.json").write_bytes(b"junk")
    done_before = (out / "00000" / "meta.json").stat().st_mtime_ns
    monkeypatch.setattr(metrics_mod, "save_frames", real_save)
    assert _generate(out, prompt_file, "xattn", *XATTN_FLAGS) == 0
    assert "generated 2, skipped 1 finished, of 3 prompts" in capsys.readouterr().out
    assert (out / "00000" / "meta.json").stat().st_mtime_ns == done_before
    assert all(_finished(d) for d in _prompt_dirs(out)) and len(_prompt_dirs(out)) == 3
    assert not _partials(out)
    assert np.load(out / "00001" / "frames.npy").shape == (9, 32, 32, 3)
    # everything finished: a third run does nothing
    assert _generate(out, prompt_file, "xattn", *XATTN_FLAGS) == 0
    assert "generated 0, skipped 3 finished" in capsys.readouterr().out


def test_resume_refuses_a_directory_with_other_settings(tmp_path: Path, prompt_file, capsys):
    out = tmp_path / "run"
    assert _generate(out, prompt_file, "dense", "--limit", "1") == 0
    err = _fail(
        ["generate", "--model", "tiny-hunyuan", "--prompts", str(prompt_file)]
        + [
            "--attention",
            "dense",
            "--out",
            str(out),
            "--seed",
            "1",
            "--no-progress",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert "other settings" in err and "seed: 0 -> 1" in err


def _fail_the_first_video(monkeypatch, out: Path, prompts: Path, *flags: str) -> None:
    """A dense ``generate`` into ``out`` whose first forward runs out of memory (simulated)."""
    from xattn_video.pipelines import generate as generate_mod

    real = generate_mod.StepTimer

    class Oom(real):
        def pre_forward(self, *args):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(generate_mod, "StepTimer", Oom)
    with pytest.raises(torch.OutOfMemoryError):
        _generate(out, prompts, "dense", *flags)
    monkeypatch.setattr(generate_mod, "StepTimer", real)


def test_a_run_that_finished_no_prompt_takes_the_corrected_settings(
    tmp_path: Path, prompt_file, capsys, monkeypatch
):
    """run.json is written before the first video; when that video failed (a compile error or
    out of memory show up only in the first forward) the corrected command was refused as "a
    run with other settings", though nothing was there to protect."""
    out = tmp_path / "run"
    _fail_the_first_video(monkeypatch, out, prompt_file, "--limit", "1", "--seed", "1")
    assert json.loads((out / rundir.RUN_FILE).read_text())["seed"] == 1
    capsys.readouterr()
    assert _generate(out, prompt_file, "dense", "--limit", "1") == 0
    err = capsys.readouterr().err
    assert "records a run with other settings (seed: 1 -> 0) that finished no prompt" in err
    assert json.loads((out / rundir.RUN_FILE).read_text())["seed"] == 0
    assert (out / "00000" / rundir.META_FILE).is_file()
    # once a prompt is finished, other settings are refused again
    assert "seed: 0 -> 1" in _fail(
        ["generate", "--model", "tiny-hunyuan", "--prompts", str(prompt_file), "--attention",
         "dense", "--out", str(out), "--seed", "1", "--limit", "1", "--no-progress", "--device",
         "cpu"], capsys)  # fmt: skip


def test_a_run_that_finished_no_prompt_takes_another_selection_too(
    tmp_path: Path, capsys, monkeypatch
):
    """The failed first video leaves its empty prompt folder; a corrected command with another
    selection was told its settings replaced the old ones, then refused for that folder."""
    prompts = tmp_path / "p.json"
    entries = [{"prompt_en": "a cat", "dimension": ["animal"]},
               {"prompt_en": "a red car", "dimension": ["color"]}]  # fmt: skip
    prompts.write_text(json.dumps(entries))
    out = tmp_path / "run"
    _fail_the_first_video(monkeypatch, out, prompts, "--dimension", "color", "--seed", "1")
    assert [p.name for p in _prompt_dirs(out)] == ["00001"]
    capsys.readouterr()
    assert _generate(out, prompts, "dense", "--dimension", "animal") == 0
    assert "replaced by this run's settings" in capsys.readouterr().err
    assert (out / "00000" / rundir.META_FILE).is_file()


def test_a_locked_run_is_not_told_its_settings_replace_the_record(tmp_path, prompt_file, capsys):
    """The resume check ran before the lock: a second command next to a run still on its first
    video was told "replaced by this run's settings", then refused by the lock."""
    from xattn_video import runlock

    out = tmp_path / "run"
    assert _generate(out, prompt_file, "dense", "--limit", "1", "--seed", "1") == 0
    (out / "00000" / rundir.META_FILE).unlink()  # the other run: on its first video
    capsys.readouterr()
    with runlock.RunLock(out) as lock:
        assert lock.acquire()
        err = _fail(["generate", "--model", "tiny-hunyuan", "--prompts", str(prompt_file),
                     "--attention", "dense", "--out", str(out), "--limit", "1", "--no-progress",
                     "--device", "cpu"], capsys)  # fmt: skip
    assert "is being written by another generate process" in err
    assert "replaced" not in err
    assert json.loads((out / rundir.RUN_FILE).read_text())["seed"] == 1


def test_a_run_made_before_the_fp8_default_is_told_how_to_resume(tmp_path: Path, prompt_file):
    """On Hopper, "auto" now records the fp8 estimate where a run made before 6208e35 recorded
    bf16: the refusal is right (other masks) but said only "resume with the same settings",
    which the user had done. It now names --estimate-precision bf16."""
    import dataclasses

    from xattn_video.pipelines.options import SetupError
    from xattn_video.pipelines.resume import check_resume

    out = tmp_path / "run"
    assert _generate(out, prompt_file, "xattn", *XATTN_FLAGS, "--limit", "1") == 0
    old = rundir.RunRecord.read(out)
    assert old.config["estimate_precision"] == "bf16"
    new = dataclasses.replace(old, config={**old.config, "estimate_precision": "fp8"})
    with pytest.raises(SetupError) as exc:
        check_resume(out, old, new, [0])
    assert "config.estimate_precision: 'bf16' -> 'fp8'" in str(exc.value)
    assert "add --estimate-precision bf16 to resume a run made before it" in str(exc.value)
    seed = dataclasses.replace(old, seed=1)  # other differences: no such hint
    with pytest.raises(SetupError) as exc:
        check_resume(out, old, seed, [0])
    assert "--estimate-precision" not in str(exc.value)


# ---------------------------------------------------------------------------------------------
# flags <-> XAttentionConfig
# ---------------------------------------------------------------------------------------------

THRESHOLDS = Path(__file__).resolve().parent / "data" / "thresholds_tiny.json"  # tiny preset
# One non-default (for the tiny preset of tiny-hunyuan), valid value per field: (command-line words, value).
FLAG_VALUES = {
    "threshold": (["--threshold", "0.5"], 0.5),
    "stride": (["--stride", "8"], 8),
    "block_size": (["--block-size", "32"], 32),
    "selection": (["--selection", "ratio"], "ratio"),
    "ratio": (["--ratio", "0.25"], 0.25),
    "warmup_steps": (["--warmup-steps", "2"], 2),
    "dense_last_steps": (["--dense-last-steps", "1"], 1),
    "dense_layers": (["--dense-layers", "0,3"], (0, 3)),
    "text_policy": (["--text-policy", "sparse"], "sparse"),
    "token_order": (["--token-order", "tile"], "tile"),
    "tile_size": (["--tile-size", "2,4,4"], (2, 4, 4)),
    "max_density": (["--max-density", "0.5"], 0.5),
    "thresholds_file": (["--thresholds-file", str(THRESHOLDS)], str(THRESHOLDS)),
    "mask_refresh": (["--mask-refresh", "2"], 2),
    "backend": (["--backend", "torch"], "torch"),
    "precision": (["--precision", "fp8"], "fp8"),
    "estimate_precision": (["--estimate-precision", "fp8"], "fp8"),
    "estimate_kernel": (["--estimate-kernel", "prefer-gluon"], "prefer-gluon"),
    "dense_kernel": (["--dense-kernel", "xattn"], "xattn"),
    "collect_stats": (["--no-collect-stats"], False),
    "auto_dense": (["--no-auto-dense"], False),
}
BASE = ["--model", "tiny-hunyuan", "--prompts", "vbench", "--out", "x", "--attention", "xattn"]


def test_every_config_field_has_exactly_one_flag():
    names = [f.name for f in config_fields()]
    assert set(FLAG_VALUES) == set(names), "update FLAG_VALUES for the new/removed fields"
    parser = build_generate_parser()
    group = next(g for g in parser._action_groups if g.title.startswith("XAttention"))
    dests = [a.dest for a in group._group_actions]
    assert dests == [f"cfg_{n}" for n in names]  # 1:1, in field order, nothing extra
    help_text = parser.format_help()
    docs = field_docs()
    for name in names:
        assert cli.flag_name(name) in help_text
        doc = plain_text(docs[name]).replace("%%", "%")  # help shows docs without RST markup
        assert " ".join(doc.split()[:3]) in " ".join(help_text.split())


@pytest.mark.parametrize("name", list(FLAG_VALUES))
def test_each_flag_sets_its_field(name):
    words, value = FLAG_VALUES[name]
    preset = XAttentionConfig.from_preset("tiny")
    assert getattr(preset, name) != value
    extra = ["--stride", "8"] if name == "block_size" else []  # tiny stride 4 divides 32 too
    args = build_generate_parser().parse_args([*BASE, *words, *extra])
    cfg = config_from_args(args)
    assert getattr(cfg, name) == value
    changed = {n for n in FLAG_VALUES if getattr(cfg, n) != getattr(preset, n)}
    assert changed == {name} | ({"stride"} if extra else set())


def test_every_generate_flag_reaches_its_option():
    """Each generate flag sets its GenerateOptions field (--dimension was read by nothing that a
    test checked); tuple flags also take the 2x8x8 form."""
    import dataclasses

    want = dict(model="tiny-hunyuan", model_path="mp", model_id=None, prompts="p.txt",
                prompts_dir="pd", limit=3, sample=5, dimension="scene", attention="xattn",
                height=48, width=80, frames=9, steps=7, seed=11, fps=12, out="o", device="cpu",
                dtype="float16", ulysses=2, compile="max-autotune", progress=False)  # fmt: skip
    argv = [word for k, v in want.items() if v not in (None, False)
            for word in (f"--{k.replace('_', '-')}", str(v))]  # fmt: skip
    args = build_generate_parser().parse_args([*argv, "--no-progress", "--tile-size", "2x8x8"])
    opts = cli._options_from_args(args)
    assert {k: getattr(opts, k) for k in want} == want
    assert opts.config.tile_size == (2, 8, 8)
    fields = {f.name for f in dataclasses.fields(opts)}
    assert fields - set(want) == {"config", "compile_backend"}  # the backend: Python API only
    args = build_generate_parser().parse_args([*BASE, "--model-id", "org/repo"])
    assert cli._options_from_args(args).model_id == "org/repo"


def test_unset_flags_take_the_model_preset():
    for model, spec in MODELS.items():
        argv = [*BASE[:1], model, *BASE[2:]]
        cfg = config_from_args(build_generate_parser().parse_args(argv))
        assert cfg == XAttentionConfig.from_preset(spec.preset)
    dense = build_generate_parser().parse_args([*BASE[:-1], "dense"])
    assert config_from_args(dense) is None


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "cogvideox"], "invalid choice: 'cogvideox'"),
        (["--threshold", "1.5"], "threshold must be in (0, 1], got 1.5"),
        (["--threshold", "0"], "threshold must be in (0, 1]"),
        (["--stride", "3"], "stride must be one of"),
        (["--block-size", "48"], "block_size must be one of"),
        (["--dense-layers", "a,b"], "expected comma-separated integers"),
        (["--backend", "cuda"], "invalid choice: 'cuda'"),
        (
            ["--attention", "dense", "--threshold", "0.5"],
            "--threshold applies only to --attention xattn",
        ),
        (["--height", "30"], "height must be a positive multiple of 16, got 30"),
        (["--frames", "10"], "frames must be 4k+1"),
        (["--prompts", "nosuchsuite"], "Unknown prompt suite 'nosuchsuite'"),
        (["--prompts", "missing.txt"], "missing.txt does not exist"),
        (["--model-path", "p", "--model-id", "i"], "not allowed with argument"),
        (["--model-path", "."], "is not a diffusers pipeline folder"),
        # the trained tiny model (a later --model wins)
        (["--model", "tiny", "--model-path", "."], "is not a tiny DiT pipeline folder"),
        (["--model", "tiny", "--model-id", "x/y"], "loads local folders only"),
    ],
)
def test_bad_generate_input_exits_2_with_a_clear_message(
    tmp_path, prompt_file, capsys, extra, message
):
    argv = [
        "generate",
        "--model",
        "tiny-hunyuan",
        "--prompts",
        str(prompt_file),
        "--attention",
        "xattn",
    ]
    argv += ["--out", str(tmp_path / "run"), "--limit", "1", "--no-progress"]
    extra = [str(tmp_path / e) if e in ("missing.txt", ".") else e for e in extra]
    err = _fail([*argv, *extra], capsys)
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "name, what", [("typo", "does not exist"), ("p.txt", "is not a directory")]
)
def test_a_model_path_that_is_no_folder_is_said_before_the_run_dir(
    tmp_path, prompt_file, capsys, name, what
):
    """A mistyped --model-path read "is not a diffusers pipeline folder (no model_index.json;
    create one with pipe.save_pretrained(path))", after the run directory was set up."""
    (tmp_path / "p.txt").write_text("a file\n")
    path, out = tmp_path / name, tmp_path / "run"
    argv = ["generate", "--model", "tiny-hunyuan", "--prompts", str(prompt_file), "--attention",
            "dense", "--out", str(out), "--model-path", str(path), "--no-progress"]  # fmt: skip
    assert f"--model-path {path} {what}" in _fail(argv, capsys)
    assert not out.exists()
    # a pipeline handed to generate: model_path is only recorded, not loaded
    from xattn_video.pipelines.generate import GenerateOptions, generate
    from xattn_video.pipelines.tiny.factory import build_tiny_hunyuan_pipeline

    opts = GenerateOptions(model="tiny-hunyuan", prompts=str(prompt_file), out=out, limit=1,
                           attention="dense", model_path=path, device="cpu", steps=1)  # fmt: skip
    assert generate(opts, pipe=build_tiny_hunyuan_pipeline()).generated == [0]


def test_compare_bad_input(tmp_path: Path, prompt_file: Path, capsys):
    err = _fail(["compare", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "r")], capsys)
    assert "is not a run directory" in err
    run = tmp_path / "run"
    assert _generate(run, prompt_file, "dense", "--limit", "1") == 0
    err = _fail(["compare", str(run), str(run), "--out", "r", "--metrics", "psnr,fvd"], capsys)
    assert "subset of psnr,ssim,lpips" in err
    err = _fail(["compare", str(run), str(run), "--out", "r", "--metrics", ","], capsys)
    assert "--metrics takes a comma-separated subset of psnr,ssim,lpips" in err  # none named
    # LPIPS asked for explicitly and no backbone weights on disk: an error, not a silent skip
    shutil.copytree(run, tmp_path / "copy")
    argv = ["compare", str(run), str(tmp_path / "copy"), "--out", str(tmp_path / "r")]
    argv += ["--metrics", "lpips"]
    err = _fail(argv, capsys)
    assert "alexnet" in err.lower()


# ---------------------------------------------------------------------------------------------
# demo and entry points
# ---------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:LPIPS skipped")
def test_demo_runs_the_trained_model_dense_xattn_and_report(tmp_path: Path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--num-prompts", "2", "--steps", "4"]  # 4: keep it fast
    assert main([*argv, "--no-progress", "--device", "cpu"]) == 0
    stdout = capsys.readouterr().out
    assert f"Report: {out / 'report' / 'report.html'}" in stdout
    assert "small trained video DiT" in stdout and "PyTorch reference" in stdout
    assert "random weights" not in stdout
    assert len(_prompt_dirs(out / "dense")) == len(_prompt_dirs(out / "xattn")) == 2
    for attention in ("dense", "xattn"):
        info = json.loads((out / attention / "run.json").read_text())
        assert info["model"] == "tiny"  # the default: the trained model, at its default size
        assert (info["height"], info["width"], info["frames"], info["steps"]) == (32, 32, 9, 4)
    info = json.loads((out / "xattn" / "run.json").read_text())
    want = XAttentionConfig.from_preset("tiny-dit").resolved()
    assert XAttentionConfig.from_dict(info["config"]) == want
    agg = json.loads((out / "report" / "report.json").read_text())["aggregate"]
    assert agg["num_videos"] == 2
    assert agg["psnr"]["mean"] > 22  # measured ~30 dB (27 and 34)
    assert 0 < agg["sparse_density"]["mean"] < 0.9  # measured ~0.70
    # Fewer prompts on a rerun leave finished folders out: the error named generate's --sample.
    err = _fail([*argv[:4], "1", *argv[5:], "--no-progress", "--device", "cpu"], capsys)
    assert "leaves out" in err and "a strided sample of 1: 1 prompt(s)" in err
    assert "--sample" not in err and "records a strided sample of 2" in err


@pytest.mark.filterwarnings("ignore:LPIPS skipped")
def test_demo_with_a_random_weight_model_says_so(tmp_path: Path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--model", "tiny-hunyuan", "--out", str(out), "--num-prompts", "1"]
    assert main([*argv, "--width", "48", "--no-progress", "--device", "cpu"]) == 0
    stdout = capsys.readouterr().out
    assert "tiny-hunyuan has random weights" in stdout and "trained" not in stdout
    info = json.loads((out / "xattn" / "run.json").read_text())
    # the demo's 64 where the user gave no size, the user's width where they did
    assert (info["height"], info["width"], info["frames"], info["steps"]) == (64, 48, 9, 4)
    assert (
        XAttentionConfig.from_dict(info["config"])
        == XAttentionConfig.from_preset("tiny").resolved()
    )
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["aggregate"]["num_videos"] == 1


def test_demo_without_prompt_data_says_how_to_fix_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()  # a folder without the files (a missing one is refused)
    monkeypatch.setenv(ENV_PROMPTS_DIR, str(tmp_path / "empty"))
    err = _fail(["demo", "--out", str(tmp_path / "demo"), "--no-progress"], capsys)
    assert ENV_PROMPTS_DIR in err and "VBench_full_info.json" in err
    assert not (tmp_path / "demo" / "dense").exists()


def test_python_dash_m_entry_point():
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    res = subprocess.run(
        [sys.executable, "-m", "xattn_video.pipelines.cli", "generate", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    assert "--warmup-steps" in res.stdout and "--no-collect-stats" in res.stdout
