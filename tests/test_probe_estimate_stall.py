"""The stall probe's watcher (benchmarks/probe_estimate_stall.py) on CPU, with a fake child: a
variant whose child stops printing is recorded as stalled (with its last launch) and the rest
run in a new child; a child that exits mid-variant is recorded with its exit code."""

import json
import sys

from ._benchmarks import load_benchmark

FAKE_CHILD = """
import json, sys, time
for i, v in json.loads(sys.argv[1]):
    print(f"BEGIN {i}", flush=True)
    print(f"LAUNCH {i} 0", flush=True)
    if v[3] == 2 and v[5] == 3000:  # pre=2 at 3000 tokens: the fake stall
        time.sleep(600)
    if v[0] == "fp8" and v[5] == 67576:  # a crash
        sys.exit(3)
    print(f"LAUNCH {i} 25", flush=True)
    print(f"DONE {i}", flush=True)
"""


def test_watcher_records_stalls_and_crashes_and_goes_on(tmp_path, monkeypatch):
    probe = load_benchmark("probe_estimate_stall")
    fake = tmp_path / "child.py"
    fake.write_text(FAKE_CHILD)
    monkeypatch.setattr(
        probe, "child_cmd", lambda rest, launches: [sys.executable, str(fake), json.dumps(rest)]
    )
    todo = probe.variants({"bf16": [(128, 3, 0), (128, 3, 2)], "fp8": [(128, 6, 0)]}, [16])
    assert len(todo) == 9 and todo[0] == ("bf16", 128, 3, 0, 1, 119056, 128, (118957,), 16)
    rows = probe.watch(todo, 300, stall_s=1.0)
    got = {(r["variant"], r["status"], r["launches"]) for r in rows}
    stalled = "bf16 bn=128 st=3 pre=2 B=2 n=3000 d=128 S=16"
    crashed = "fp8 bn=128 st=6 pre=0 B=1 n=67576 d=128 S=16"
    assert (stalled, "stalled", 0) in got
    assert (crashed, "exit 3", 0) in got
    assert len(rows) == 9
    assert sum(r["status"] == "ok" for r in rows) == 7
    assert all(r["launches"] == 300 for r in rows if r["status"] == "ok")


def test_cases_pick_a_subset_in_order():
    probe = load_benchmark("probe_estimate_stall")
    todo = probe.variants({"bf16": [], "fp8": [(128, 6, 0), (64, 8, 7)]}, [8, 16], cases=[2])
    assert todo == [
        ("fp8", 128, 6, 0, 2, 3000, 128, (3000, 2345), 8),
        ("fp8", 64, 8, 7, 2, 3000, 128, (3000, 2345), 8),
        ("fp8", 128, 6, 0, 2, 3000, 128, (3000, 2345), 16),
        ("fp8", 64, 8, 7, 2, 3000, 128, (3000, 2345), 16),
    ]
