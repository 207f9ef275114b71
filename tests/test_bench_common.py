"""What a run directory or a benchmark result records as its code version (``git_sha``)."""

from __future__ import annotations

import json
import subprocess

import pytest

from xattn_video.pipelines.runinfo import command_line, git_sha

from ._benchmarks import load_benchmark

common = load_benchmark("_common")


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_command_line_is_the_program_name_and_its_arguments(monkeypatch):
    monkeypatch.setattr("sys.argv", ["/opt/venv/bin/xattn-video", "generate", "--model", "tiny"])
    assert command_line() == ["xattn-video", "generate", "--model", "tiny"]
    # python -m / accelerate launch -m: it recorded "cli.py", which reruns nothing
    monkeypatch.setattr("sys.argv", ["/x/site-packages/xattn_video/pipelines/cli.py", "demo"])
    assert command_line() == ["xattn-video", "demo"]


def test_git_sha_marks_files_that_differ_from_head(tmp_path):
    if subprocess.run(["git", "--version"], capture_output=True).returncode:
        pytest.skip("no git")
    assert git_sha(tmp_path) is None  # not a checkout
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip
    assert git_sha(tmp_path) == head
    (tmp_path / "a.py").write_text("x = 2\n")  # what a stale .git under newer files looks like
    assert git_sha(tmp_path) == head + "-dirty"
    _git(tmp_path, "add", "a.py")  # staged but not committed: still not HEAD's files
    assert git_sha(tmp_path) == head + "-dirty"
    _git(tmp_path, "reset", "-q")
    (tmp_path / "b.py").write_text("")  # untracked files alone do not count
    (tmp_path / "a.py").write_text("x = 1\n")
    assert git_sha(tmp_path) == head


def test_git_sha_ignores_a_checkout_that_does_not_track_the_folder(tmp_path):
    """A wheel installed into a git-ignored venv inside the user's project: the project's
    commit (with -dirty) was recorded as xattn-video's."""
    if subprocess.run(["git", "--version"], capture_output=True).returncode:
        pytest.skip("no git")
    _git(tmp_path, "init", "-q")
    (tmp_path / ".gitignore").write_text(".venv/\n")
    (tmp_path / "app.py").write_text("x = 1\n")
    _git(tmp_path, "add", ".gitignore", "app.py")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a")
    (tmp_path / "app.py").write_text("x = 2\n")
    pkg = tmp_path / ".venv" / "lib" / "site-packages" / "xattn_video" / "pipelines"
    pkg.mkdir(parents=True)
    (pkg / "runinfo.py").write_text("")
    assert git_sha(pkg) is None
    assert git_sha(tmp_path).endswith("-dirty")  # the project itself still has its SHA


def test_environment_records_this_checkout(monkeypatch):
    import diffusers
    import torch
    import triton

    monkeypatch.delenv("XATTN_VIDEO_GIT_SHA", raising=False)
    env = common.environment()
    assert env["git_sha"] == git_sha()
    assert (env["torch"], env["triton"], env["diffusers"]) == (
        torch.__version__,
        triton.__version__,
        diffusers.__version__,
    )
    # the GPU machine's copy of the tree: the SHA its caller passes
    monkeypatch.setenv("XATTN_VIDEO_GIT_SHA", "abc1234")
    assert common.environment()["git_sha"] == "abc1234"


def test_environment_records_what_the_default_estimate_of_bf16_is(monkeypatch):
    """Since 6208e35 a bf16 run's default estimate is fp8 on Hopper (head dim 64 / 128): the
    benchmarks that apply configs with the default (bench_tiny_compile, bench_ulysses,
    sweep_methods, profile_pipeline) recorded nothing a reader could tell it from."""
    from types import SimpleNamespace

    import torch

    cpu = {"16": "bf16", "32": "bf16", "64": "bf16", "128": "bf16"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert common.environment()["auto_estimate_of_bf16"] == cpu
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100")
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: SimpleNamespace(major=9))  # fmt: skip
    assert common.environment()["auto_estimate_of_bf16"] == {**cpu, "64": "fp8", "128": "fp8"}


def test_environment_records_the_sha_the_run_started_with(monkeypatch):
    """The SHA was read when the JSON was written: a commit made in the checkout during a long
    run was recorded as the code that ran."""
    monkeypatch.delenv("XATTN_VIDEO_GIT_SHA", raising=False)
    monkeypatch.setattr(common, "git_sha", lambda *a: "committed-during-the-run")
    assert common.environment()["git_sha"] == git_sha()


@pytest.mark.parametrize(
    "name, argv, runner",
    [
        ("bench_attention", ["--seq", "67576", "119056"], "run_length"),
        ("bench_pipeline", ["--res", "544p", "720p"], "run_resolution"),
        ("bench_pipeline_wan", [], "run"),
    ],
)
def test_an_error_part_way_keeps_the_rows_measured(tmp_path, monkeypatch, name, argv, runner):
    """The JSON was written only after the last length / resolution: an OOM or a Ctrl-C in
    the second threw away the minutes of GPU time the first had cost."""
    import sys

    import torch

    bench = load_benchmark(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(sys.modules["_common"], "environment", lambda: {"gpu": "stand-in"})
    monkeypatch.setattr(bench, "environment", lambda: {"gpu": "stand-in"})
    monkeypatch.setattr(bench, "build_transformer", lambda *a: None, raising=False)

    class NoMonitor:
        error = None

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    monkeypatch.setattr(bench, "GpuMonitor", NoMonitor)
    calls = []

    def measure(*args, sink=None):
        """Each length's rows land in the run's list as they are measured (Wan: the list it
        is given); the interrupt comes after the second length's first row."""
        calls.append(args)
        (args[3] if sink is None else sink).append({"method": f"row {len(calls)}", "s": 1.0})
        if len(calls) == 2 or name == "bench_pipeline_wan":
            raise KeyboardInterrupt

    monkeypatch.setattr(bench, runner, measure)
    out = tmp_path / "r.json"
    with pytest.raises(KeyboardInterrupt):
        bench.main([*argv, "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["complete"] is False and data["error"] == "KeyboardInterrupt: "
    want = ["row 1"] if name == "bench_pipeline_wan" else ["row 1", "row 2"]
    assert [r["method"] for r in data["rows"]] == want  # the unfinished length's rows too


def test_an_error_before_any_row_is_still_recorded(tmp_path):
    """Nothing was written when the first row failed (e.g. an out-of-memory at the first
    length): no file said the run had happened and how it ended."""
    out = tmp_path / "r.json"
    with pytest.raises(RuntimeError), common.keeping_rows(out, {"seq": [1]}):
        raise RuntimeError("CUDA out of memory")
    data = json.loads(out.read_text())
    assert data["rows"] == [] and data["complete"] is False
    assert data["error"] == "RuntimeError: CUDA out of memory"


def test_report_writes_config_rows_and_environment(tmp_path, capsys):
    rows = [{"method": "dense", "ms": 2.0, "drop": 0.0, "x": None}]
    columns = [("method", "method", "{}"), ("drop", "drop", "{:.2f}"), ("x", "x", "{}")]
    common.report(rows, columns, tmp_path / "r.json", {"seq": [256]})
    out = capsys.readouterr().out
    cells = [c.strip() for c in out.splitlines()[3].split("|")]
    assert cells == ["dense", "0.00", ""]  # a 0 shown, None blank
    data = json.loads((tmp_path / "r.json").read_text())
    assert sorted(data) == ["complete", "config", "environment", "rows"]
    assert data["config"] == {"seq": [256]} and data["rows"] == rows and data["complete"] is True
    assert set(data["environment"]) >= {"gpu", "torch", "triton", "git_sha", "time"}


@pytest.mark.parametrize("call_ms, runs", [(0.5, 1), (300.0, 2)])
def test_bench_ms_takes_the_median_of_at_least_five_calls(monkeypatch, call_ms, runs):
    """do_bench times ~rep / (one call) calls: a 300 ms call (119k-token cuDNN dense) got one
    timed call behind its "median". Fake do_bench: that many calls of call_ms, rising by 1%."""
    import triton.testing

    reps = []

    def do_bench(fn, warmup, rep, return_mode):
        assert return_mode == "all"
        reps.append(rep)
        return [call_ms * (1 + 0.01 * i) for i in range(max(1, int(rep / call_ms)))]

    monkeypatch.setattr(triton.testing, "do_bench", do_bench)
    got = common.bench_ms(lambda: None)
    assert len(reps) == runs and reps[0] == 500
    if runs == 2:  # the second run covers 1.5 x min_reps calls of the first run's median
        assert reps[1] == pytest.approx(1.5 * 5 * call_ms)
    n = max(1, int(reps[-1] / call_ms))
    assert n >= 5
    assert got == pytest.approx(call_ms * (1 + 0.01 * (n - 1) / 2))


def test_baseline_ms_warms_up_before_timing(monkeypatch):
    log = []
    monkeypatch.setattr(
        common, "median_ms", lambda fn, reps, warmup=1: log.append(("median_ms", reps, warmup))
    )
    monkeypatch.setattr(common, "bench_ms", lambda fn: log.append(("bench_ms",)) or 4.5)
    assert common.baseline_ms(lambda: None) == 4.5
    assert log == [("median_ms", 1, 3), ("bench_ms",)]


def test_bench_ulysses_times_dense_on_p_gpus_with_the_torch_qk_preparation(monkeypatch):
    """On one GPU dense is diffusers' processor (torch q / k norm + RoPE); on P GPUs it ran in
    the XAttention processors with the fused kernel, so the dense speed-up was part kernel."""
    from types import SimpleNamespace

    from xattn_video import qk_prep

    ulysses = load_benchmark("bench_ulysses")
    real = qk_prep.fused_available
    fused_seen = []

    def forward(model, inputs, device, repeats):
        fused_seen.append(qk_prep.fused_available is real)
        raise RuntimeError("stop after the dense forward")

    monkeypatch.setattr(ulysses, "forward", forward)
    for handle, fused in ((SimpleNamespace(remove=lambda: None), False), (None, True)):
        monkeypatch.setattr(ulysses, "dense_layout", lambda model, h=handle: h)
        with pytest.raises(RuntimeError, match="stop"):
            ulysses.run_pair(None, None, SimpleNamespace(repeats=1), None, one_gpu=False)
        assert fused_seen.pop() is fused
    assert qk_prep.fused_available is real


def test_bench_ulysses_records_its_tokens_and_the_fp32_rounding_floor():
    """The JSON's token count added 256 text tokens to --small's 8, and the tolerance check's
    floor was the fp64 reference's own rounding (~1e-16), not fp32's as the rule says."""
    from types import SimpleNamespace

    import torch

    ulysses = load_benchmark("bench_ulysses")
    args = SimpleNamespace(small=True, text_valid=64)
    inputs = ulysses.make_inputs(args, torch.device("cpu"), torch.float32)
    assert ulysses.token_count(inputs, small=True) == 3 * 8 * 8 + 8
    ref = torch.randn(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    r32 = ref.float()
    expected = 2 * (r32 + 0.3 - 0.3 - r32).abs().max().item()
    assert ulysses.rounding_floor(ref) == expected > 1e-7  # fp64's own: ~1e-16


def _ticks(*durations: float):
    """A fake ``time.perf_counter`` whose successive (start, end) pairs span ``durations``."""
    stamps, t = [], 0.0
    for d in durations:
        stamps += [t, t + d]
        t += d + 1.0
    it = iter(stamps)
    return lambda: next(it, t)


def test_timings_of_an_even_count_take_the_mean_of_the_middle_two(monkeypatch):
    """The median of 8 synchronized cuDNN calls (bench_attention's call-by-call row) was the
    5th sample of 8, above the median; bench_pipeline's and bench_ulysses' repeats likewise."""
    import torch

    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(common, "call_times_ms", lambda fn, reps: [4.0, 1.0, 3.0, 2.0][:reps])
    assert common.median_ms(lambda: None, reps=4, warmup=0) == 2.5
    assert common.median_ms(lambda: None, reps=3, warmup=0) == 3.0

    pipeline = load_benchmark("bench_pipeline")
    monkeypatch.setattr(pipeline.time, "perf_counter", _ticks(4.0, 1.0, 3.0, 2.0))
    assert pipeline.time_forward(lambda: None, {}, repeats=4) == 2.5

    ulysses = load_benchmark("bench_ulysses")
    monkeypatch.setattr(ulysses.time, "perf_counter", _ticks(4.0, 1.0, 3.0, 2.0))
    model = lambda: (torch.zeros(1),)  # noqa: E731
    assert ulysses.forward(model, {}, torch.device("cpu"), repeats=4)[0] == 2.5
