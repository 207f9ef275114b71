"""The estimate-tile probe's argument parsing and summary (benchmarks/probe_estimate_tiles.py),
on CPU."""

import argparse

import pytest

from tests._benchmarks import load_benchmark


def test_parse_config_takes_four_numbers_and_rejects_bad_tiles():
    probe = load_benchmark("probe_estimate_tiles")
    assert probe.parse_config("64,128,4,4") == (64, 128, 4, 4)
    assert probe.parse_config(" 128,64, 8,2") == (128, 64, 8, 2)
    for bad in ("64,128,4", "64,100,4,4", "64,128,3,4", "64,128,4,0", "512,128,4,4", "a,b,c,d"):
        with pytest.raises(argparse.ArgumentTypeError):
            probe.parse_config(bad)
    assert all(probe.parse_config(c) for c in probe.CONFIGS)  # the defaults parse


def test_summarize_gives_median_share_of_cudnn_and_ratio_to_the_table_launch():
    probe = load_benchmark("probe_estimate_tiles")
    rows = probe.summarize({"table": [20.0, 30.0, 25.0], "x": [10.0, 12.5, 40.0]}, "table", 500.0)
    assert rows == [
        dict(config="table", ms=25.0, rounds=[20.0, 30.0, 25.0], pct_of_cudnn=5.0, vs_table=1.0),
        dict(config="x", ms=12.5, rounds=[10.0, 12.5, 40.0], pct_of_cudnn=2.5, vs_table=0.5),
    ]


def test_force_fast_log2_patches_only_that_gpus_entries(monkeypatch):
    from xattn_video.kernels import tuning

    probe = load_benchmark("probe_estimate_tiles")
    monkeypatch.setattr(tuning, "ESTIMATE_MEASURED", dict(tuning.ESTIMATE_MEASURED))
    monkeypatch.setattr(tuning, "SAFE_ESTIMATE", tuning.SAFE_ESTIMATE)
    other = ("Other GPU", "bf16", 8, 128, "any")
    tuning.ESTIMATE_MEASURED[other] = tuning.EstimateLaunch((64, 64, 4, 2), True, True)
    probe.force_fast_log2(tuning, "NVIDIA H200", False)
    h200 = {k: v for k, v in tuning.ESTIMATE_MEASURED.items() if k[0] == "NVIDIA H200"}
    assert h200 and not any(v.fast_log2 for v in h200.values())
    assert tuning.ESTIMATE_MEASURED[other].fast_log2
    assert tuning.estimate_config("NVIDIA H200", "bf16", 8, 128).tiles == (128, 128, 8, 3)
    assert not tuning.estimate_config("unknown", "bf16", 8, 128).fast_log2
    probe.force_fast_log2(tuning, "NVIDIA H200", True)
    assert tuning.estimate_config("NVIDIA H200", "bf16", 16, 128).fast_log2
