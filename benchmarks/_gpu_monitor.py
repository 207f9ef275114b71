"""The GPU's SM clock, power draw and clock-event reasons beside a benchmark, per timed row.

A benchmark times each row back to back for ~0.5 s; on a power-capped card (an H100 at its
700 W limit) the SM clock then falls from 1980 MHz to 1200-1800 MHz, and by how much depends on
the kernel and on how long the card has been busy. :class:`GpuMonitor` samples
``nvidia-smi --query-gpu`` every ``period_ms`` in a child process while open;
:meth:`GpuMonitor.window` summarizes the samples taken in a host-time window (a row's timing),
so each row says what clock it ran at and whether the power cap was holding it down.

Only busy samples count (``utilization.gpu`` >= 50%): a row's window also holds compilation and
host work, when the idle card sits at its top clock. Not supported: several GPUs at once (the
monitor follows one device, by UUID), and clocks of other vendors' cards. Without ``nvidia-smi``
(or when it fails) the monitor records nothing and every window is ``None``; it never sets or
locks clocks.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import threading
import time
from datetime import datetime

# nvidia-smi's clock-event (throttle) reason bits that say the card held the clock down.
SW_POWER_CAP = 0x4
HW_SLOWDOWN = 0x8 | 0x40 | 0x80  # hw slowdown, hw thermal, hw power brake
SW_THERMAL = 0x20
_FIELDS = "timestamp,utilization.gpu,clocks.sm,power.draw,{reasons}"
_BUSY_PERCENT = 50


def parse_sample(line: str) -> tuple[float, int, int, float, int] | None:
    """One CSV line of ``nvidia-smi --format=csv,noheader,nounits`` with ``_FIELDS`` ->
    (host time in s, utilization %, SM MHz, watts, reason bits); ``None`` for anything else
    (a header, ``[N/A]``, an error message)."""
    parts = [p.strip() for p in line.split(",")]
    if len(parts) != 5:
        return None
    try:
        t = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()  # local time
        return t, int(parts[1]), int(parts[2]), float(parts[3]), int(parts[4], 16)
    except ValueError:
        return None


def summarize(samples: list[tuple[float, int, int, float, int]], t0: float, t1: float):
    """The busy samples in ``[t0, t1]`` -> dict of median / min SM MHz, mean watts, and the
    fractions held by the software power cap and by any thermal or hardware slowdown;
    ``None`` without one."""
    busy = [s for s in samples if t0 <= s[0] <= t1 and s[1] >= _BUSY_PERCENT]
    if not busy:
        return None
    clocks = sorted(s[2] for s in busy)
    return {
        "sm_mhz_median": statistics.median(clocks),  # an even count: the middle two's mean
        "sm_mhz_min": clocks[0],
        "power_w_mean": round(sum(s[3] for s in busy) / len(busy), 1),
        "power_capped": round(sum(bool(s[4] & SW_POWER_CAP) for s in busy) / len(busy), 3),
        "thermal_or_hw_slowdown": round(
            sum(bool(s[4] & (HW_SLOWDOWN | SW_THERMAL)) for s in busy) / len(busy), 3
        ),
        "samples": len(busy),
    }


COLUMNS = [("sm_mhz_median", "SM MHz", "{:.0f}"), ("power_w_mean", "W", "{:.0f}"),
           ("power_capped", "power-capped", "{:.0%}")]  # fmt: skip
"""The table columns (key, header, format) that :func:`row_fields` adds to a row."""


def row_fields(stats: dict | None) -> dict:
    """A benchmark row's GPU fields from a :func:`summarize` dict (or ``None``): all of it as
    ``gpu_clocks``, and the :data:`COLUMNS` keys on their own for the table."""
    return {"gpu_clocks": stats, **{k: None if stats is None else stats[k] for k, _, _ in COLUMNS}}


class RowWindows:
    """Host-time windows of a benchmark's rows, taken back to back: :meth:`next` closes the
    current row's window (from the previous row's end, or from construction) and opens the
    next one, so a row's window holds its compilation and warm-up as well as its timing.
    ``clock``: host time in seconds, as :meth:`GpuMonitor.window` takes it."""

    def __init__(self, clock=time.time) -> None:
        self.clock = clock
        self.since = clock()

    def next(self) -> tuple[float, float]:
        """(start, end) of the row that ends now."""
        now = self.clock()
        window, self.since = (self.since, now), now
        return window


def attach(rows: list[dict], monitor: GpuMonitor | None) -> None:
    """Replace each row's ``"window"`` (from :class:`RowWindows`) by its :func:`row_fields`,
    in place; rows without a window, or without a monitor, get empty fields."""
    for r in rows:
        window = r.pop("window", None)
        stats = None if monitor is None or window is None else monitor.window(*window)
        r.update(row_fields(stats))


def _reasons_field(smi: str) -> str:
    """The name this driver knows for the active clock-event reasons (renamed in 2023)."""
    for name in ("clocks_event_reasons.active", "clocks_throttle_reasons.active"):
        probe = subprocess.run(
            [smi, f"--query-gpu={name}", "--format=csv,noheader"], capture_output=True, timeout=20
        )
        if probe.returncode == 0:
            return name
    raise RuntimeError("nvidia-smi knows neither name of the clock-event reasons")


def _device_args(smi: str, device: int) -> list[str]:
    """nvidia-smi's ``--id`` for CUDA device ``device`` (by UUID: CUDA_VISIBLE_DEVICES may
    renumber); none when torch sees one GPU and the UUID is not accepted."""
    import torch

    uuid = str(torch.cuda.get_device_properties(device).uuid)
    arg = f"--id={uuid if uuid.startswith('GPU-') else 'GPU-' + uuid}"
    probe = subprocess.run(
        [smi, arg, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, timeout=20
    )
    if probe.returncode == 0:
        return [arg]
    if torch.cuda.device_count() == 1:
        return []
    raise RuntimeError(f"nvidia-smi does not know the GPU {uuid}")


class GpuMonitor:
    """Context manager: ``with GpuMonitor() as mon: ...; mon.window(t0, t1)``.

    device: the CUDA device to follow (default: the current one), matched by UUID.
    period_ms: the sampling period handed to ``nvidia-smi --loop-ms``.
    """

    stop_timeout_s = 10.0  # how long nvidia-smi gets to exit on SIGTERM before it is killed

    def __init__(self, device: int | None = None, period_ms: int = 100):
        self.device, self.period_ms = device, period_ms
        self.samples: list[tuple[float, int, int, float, int]] = []
        self.error: str | None = None
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> GpuMonitor:
        smi = shutil.which("nvidia-smi")
        if smi is None:
            self.error = "nvidia-smi not found"
            return self
        import torch

        if not torch.cuda.is_available():
            self.error = "no CUDA device"
            return self
        try:
            device = torch.cuda.current_device() if self.device is None else self.device
            fields = _FIELDS.format(reasons=_reasons_field(smi))
            cmd = [smi, *_device_args(smi, device), f"--query-gpu={fields}",
                   "--format=csv,noheader,nounits", f"--loop-ms={self.period_ms}"]  # fmt: skip
            self._proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1
            )
        except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            return self
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            sample = parse_sample(line)
            if sample is not None:
                self.samples.append(sample)

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:  # never let the monitor hide the run's result
                self._proc.kill()
                self._proc.wait()
            self._reader.join(timeout=10)

    def window(self, t0: float, t1: float) -> dict | None:
        """What the card ran at between host times ``t0`` and ``t1`` (``time.time()``), see
        :func:`summarize`; ``None`` without busy samples there (or without nvidia-smi).
        nvidia-smi stamps a sample when it reads it: the window should span a row's whole
        timing, not single calls."""
        return summarize(list(self.samples), t0, t1)
