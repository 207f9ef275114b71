"""The estimate flatten probe's row summary and argument checks
(benchmarks/probe_estimate_flatten.py), on CPU."""

import pytest

from tests._benchmarks import load_benchmark


def test_ab_row_gives_medians_and_table_over_fallback():
    probe = load_benchmark("probe_estimate_flatten")
    row = probe.ab_row("fp8", 16, (64, 128, 4, 4), [10.0, 12.0, 11.0], [9.0, 8.8, 30.0], 0.0)
    assert row == dict(precision="fp8", stride=16, table=[64, 128, 4, 4],
                       fallback_unflattened_ms=11.0, table_ms=9.0,
                       rounds_fallback=[10.0, 12.0, 11.0], rounds_table=[9.0, 8.8, 30.0],
                       max_abs_diff=0.0, ratio=9.0 / 11.0)  # fmt: skip


@pytest.mark.parametrize("flag", ["--n", "--heads", "--rounds"])
def test_non_positive_sizes_are_refused_before_any_gpu_work(flag, capsys):
    probe = load_benchmark("probe_estimate_flatten")
    with pytest.raises(SystemExit) as e:
        probe.main([flag, "0"])
    assert e.value.code == 2
    assert "--n, --heads and --rounds must be positive" in capsys.readouterr().err
