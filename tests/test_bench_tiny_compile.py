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
