"""``benchmarks/_gpu_monitor.py`` on the CPU: it parses nvidia-smi's CSV samples (lines as an
H100 printed them during ``bench_attention`` at 7ac0e0a), summarizes only the busy samples of a
row's window, reads a stand-in ``nvidia-smi`` through its child process, and records nothing,
without failing the benchmark, where there is no GPU or no nvidia-smi."""

import os
import stat
import sys
import time
from datetime import datetime

import pytest

from ._benchmarks import load_benchmark

mon = load_benchmark("_gpu_monitor")
_POSIX = pytest.mark.skipif(
    sys.platform == "win32", reason="a shell script stands in for nvidia-smi"
)


def _t(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y/%m/%d %H:%M:%S.%f").timestamp()


def test_parse_sample():
    line = "2026/12/05 19:18:17.446, 100, 1455, 705.96, 0x0000000000000004\n"
    assert mon.parse_sample(line) == (_t("2026/12/05 19:18:17.446"), 100, 1455, 705.96, 4)
    assert mon.parse_sample("2026/12/05 19:18:06.446, 0, 345, 70.19, 0x0000000000000001") == (
        _t("2026/12/05 19:18:06.446"), 0, 345, 70.19, 1
    )  # fmt: skip
    for bad in (
        "timestamp, utilization.gpu [%], clocks.sm [MHz], power.draw [W], reasons",  # header
        "2026/12/05 19:18:06.446, [N/A], 345, 70.19, 0x1",
        "Failed to initialize NVML: Unknown Error",
        "",
    ):
        assert mon.parse_sample(bad) is None


def test_summarize_counts_busy_samples_in_the_window_only():
    t = 1000.0
    samples = [
        (t + 0.0, 0, 1980, 120.0, 0x0),  # idle (compiling): left out
        (t + 0.1, 100, 1400, 700.0, 0x4),
        (t + 0.2, 100, 1500, 690.0, 0x4),
        (t + 0.3, 97, 1800, 650.0, 0x0),
        (t + 0.4, 60, 1200, 660.0, 0x4 | 0x20),  # power cap and sw thermal
        (t + 0.5, 100, 1000, 700.0, 0x4),  # after the window
    ]
    s = mon.summarize(samples, t, t + 0.45)
    assert s == {
        "sm_mhz_median": 1450,  # 1200, 1400, 1500, 1800: it took the upper middle one
        "sm_mhz_min": 1200,
        "power_w_mean": 675.0,
        "power_capped": 0.75,
        "thermal_or_hw_slowdown": 0.25,
        "samples": 4,
    }
    assert mon.summarize(samples, t - 1, t + 0.05) is None  # only an idle sample
    assert mon.summarize([], t, t + 1) is None


def test_row_fields_gives_the_table_columns_and_the_whole_summary():
    stats = {"sm_mhz_median": 1500, "sm_mhz_min": 1200, "power_w_mean": 675.0,
             "power_capped": 0.75, "thermal_or_hw_slowdown": 0.0, "samples": 4}  # fmt: skip
    assert mon.row_fields(stats) == {
        "gpu_clocks": stats, "sm_mhz_median": 1500, "power_w_mean": 675.0, "power_capped": 0.75
    }  # fmt: skip
    assert mon.row_fields(None) == {
        "gpu_clocks": None, "sm_mhz_median": None, "power_w_mean": None, "power_capped": None
    }  # fmt: skip
    assert [key for key, _, _ in mon.COLUMNS] == ["sm_mhz_median", "power_w_mean", "power_capped"]


def test_no_gpu_or_no_nvidia_smi_records_nothing(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(mon.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    with mon.GpuMonitor() as m:
        pass
    assert m.error == "no CUDA device" and m.samples == [] and m.window(0, 1e12) is None
    monkeypatch.setattr(mon.shutil, "which", lambda name: None)
    with mon.GpuMonitor() as m:
        pass
    assert m.error == "nvidia-smi not found" and m.window(0, 1e12) is None


def _stand_in_nvidia_smi(tmp_path, monkeypatch, loop_body: str) -> None:
    """A shell script named nvidia-smi first on PATH: one-shot queries answer and exit; the
    ``--loop-ms`` call runs ``loop_body``. A CUDA device is faked for the monitor."""
    import torch

    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$*" in *clocks_event_reasons*) exit 2;; esac\n'
        'case "$*" in *--loop-ms=*) ;; *) echo 0x0; exit 0;; esac\n'
        'echo "$*" > "$(dirname "$0")/args"\n' + loop_body
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(mon, "_device_args", lambda smi, device: [])


@_POSIX
def test_reads_samples_from_a_stand_in_nvidia_smi(tmp_path, monkeypatch):
    """The child process's lines reach ``samples``; the old name of the reasons field is used
    where the new one is refused; the child is stopped on exit."""
    _stand_in_nvidia_smi(
        tmp_path,
        monkeypatch,
        "i=0\n"
        "while true; do\n"
        '  echo "$(date +"%Y/%m/%d %H:%M:%S").$((100 + i)), 100, $((1400 + i)), 700.5, 0x4"\n'
        "  i=$((i + 1)); sleep 0.05\n"
        "done\n",
    )
    with mon.GpuMonitor(period_ms=50) as m:
        deadline = time.time() + 20
        while len(m.samples) < 3 and time.time() < deadline:
            time.sleep(0.05)
    assert m.error is None and len(m.samples) >= 3
    assert [s[1:] for s in m.samples[:3]] == [(100, 1400 + i, 700.5, 4) for i in range(3)]
    assert m._proc.poll() is not None  # stopped
    args = (tmp_path / "args").read_text()
    assert "clocks_throttle_reasons.active" in args and "--loop-ms=50" in args
    s = m.window(m.samples[0][0], m.samples[2][0])
    assert s["samples"] == 3 and s["power_capped"] == 1.0 and s["sm_mhz_median"] == 1401


@_POSIX
def test_a_child_that_ignores_sigterm_is_killed(tmp_path, monkeypatch):
    _stand_in_nvidia_smi(tmp_path, monkeypatch, "trap '' TERM\nwhile true; do sleep 0.05; done\n")
    m = mon.GpuMonitor()
    m.stop_timeout_s = 0.5
    with m:
        time.sleep(0.2)
    assert m._proc.returncode == -9  # SIGKILL after the SIGTERM was ignored
    assert m.samples == [] and m.window(0, 1e12) is None


def test_row_windows_follow_each_other():
    ticks = iter([100.0, 103.5, 110.0, 110.25])
    windows = mon.RowWindows(clock=lambda: next(ticks))
    assert windows.next() == (100.0, 103.5)  # the first row: from construction
    assert windows.next() == (103.5, 110.0)
    assert windows.next() == (110.0, 110.25)


def test_attach_replaces_each_window_by_its_gpu_fields():
    class Monitor:
        def window(self, t0, t1):
            return None if t1 < 10 else {"sm_mhz_median": 1500 + int(t0), "sm_mhz_min": 1400,
                                         "power_w_mean": 690.0, "power_capped": 0.75,
                                         "thermal_or_hw_slowdown": 0.0, "samples": 4}  # fmt: skip

    rows = [{"method": "a", "window": (5.0, 20.0)}, {"method": "b", "window": (0.0, 1.0)},
            {"method": "c"}]  # fmt: skip
    mon.attach(rows, Monitor())
    assert rows[0]["method"] == "a" and "window" not in rows[0]
    assert rows[0]["gpu_clocks"]["samples"] == 4
    assert (rows[0]["sm_mhz_median"], rows[0]["power_w_mean"], rows[0]["power_capped"]) == (
        1505, 690.0, 0.75
    )  # fmt: skip
    assert rows[1] == {"method": "b", **mon.row_fields(None)}  # no busy samples in its window
    assert rows[2] == {"method": "c", **mon.row_fields(None)}  # no window
    no_monitor = [{"method": "d", "window": (5.0, 20.0)}]
    mon.attach(no_monitor, None)
    assert no_monitor == [{"method": "d", **mon.row_fields(None)}]
