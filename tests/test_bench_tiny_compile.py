"""``benchmarks/bench_tiny_compile.py``'s command line (the benchmark itself needs a GPU)."""

from __future__ import annotations

import pytest

from ._benchmarks import load_benchmark

bench = load_benchmark("bench_tiny_compile")


def test_modes_defaults_and_choices():
    args = bench.parse_args([])
    assert args.modes == ["eager", "compiled"] and args.sizes == ["train", "demo"]
    assert bench.parse_args(["--modes", "compiled"]).modes == ["compiled"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--modes", "compile"],  # a typo would run eager and be recorded as compiled
        ["--modes", "eager", "Compiled"],
        ["--sizes", "small"],
        ["--compiled-sizes", "demos"],
    ],
)
def test_unknown_mode_or_size_is_refused(argv, capsys):
    with pytest.raises(SystemExit) as e:
        bench.parse_args(argv)
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_exits_without_a_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        bench.main(["--sizes", "train", "--modes", "eager"])


def test_failed_variants_exit_non_zero_and_leave_the_json_incomplete(tmp_path, monkeypatch):
    """Every variant failing printed an empty table, exited 0 and wrote "complete": true."""
    import json

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench, "save_json", lambda path, payload: saved.append(payload))
    saved: list[dict] = []

    def fail(*args):
        raise RuntimeError("no kernel image")

    monkeypatch.setattr(bench, "run_variant", fail)
    out = tmp_path / "r.json"
    argv = ["--sizes", "train", "--modes", "eager", "--eager-variants", "dense", "xattn"]
    with pytest.raises(SystemExit, match="2 of 2 variants failed"):
        bench.main([*argv, "--out", str(out)])
    assert saved[-1]["complete"] is False and len(saved[-1]["rows"]) == 2
    assert all(r["error"] == "RuntimeError: no kernel image" for r in saved[-1]["rows"])
    json.dumps(saved[-1])
