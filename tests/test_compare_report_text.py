"""The compare report's text where run paths and prompts hold characters Markdown or UTF-8
would misread: list items escaped like table cells, strikethrough escaped, a run folder whose
name is not UTF-8, and a pair without timings marked out of the speed-up."""

from __future__ import annotations

import copy
import json
import os

import pytest

from xattn_video.metrics import compare_runs
from xattn_video.metrics.report_md import markdown_table, render_markdown
from xattn_video.metrics.report_tables import video_table

from .test_compare_report import sparse_frames, write_run


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("compare_text")
    dense = write_run(root / "dense", "dense", [0, 1, 2])
    sparse = write_run(root / "sparse", "xattn", [0, 1, 2], frames_fn=sparse_frames)
    return compare_runs(dense, sparse, root / "report", metrics=("psnr",), progress=False)


def test_strikethrough_in_a_prompt_is_literal() -> None:
    """``~~red~~`` rendered struck through on GitHub."""
    assert markdown_table(["text"], [["a ~~red~~ car"]]).splitlines()[2] == (
        "| a \\~\\~red\\~\\~ car |"
    )


def test_run_paths_in_the_header_are_literal(report) -> None:
    """The header list wrote run paths raw: a folder ``__dense__`` came out bold, ``<i>``
    became a live tag."""
    r = copy.deepcopy(report)
    r["dense_dir"], r["sparse_dir"] = "/runs/__dense__", "/runs/<i>sparse"
    md = render_markdown(r)
    assert "- Dense (reference) run: /runs/\\_\\_dense\\_\\_, model=fake-dit" in md
    assert "- Sparse run: /runs/&lt;i&gt;sparse, model=fake-dit" in md


def test_a_pair_without_timings_is_not_in_the_speed_up(report) -> None:
    """It said "yes" in the "in speed-up" column though the aggregate leaves it out."""
    r = copy.deepcopy(report)
    r["videos"][0]["timing_warm"] = False  # first in its process: the column appears
    r["videos"][2]["speedup"] = {"total": None, "denoise": None}
    header, rows = video_table(r)
    col = header.index("in speed-up")
    assert [row[col] for row in rows] == ["no: first in its process", "yes", "no: no timings"]


def test_a_run_folder_whose_name_is_not_utf8_still_writes_every_report(tmp_path) -> None:
    """json.dumps escaped the undecodable byte, then report.md raised UnicodeEncodeError: a new
    report.json beside the last report's .md / .html (whose strip had been deleted)."""
    dense = write_run(tmp_path / os.fsdecode(b"dense_caf\xe9"), "dense", [0, 1])
    sparse = write_run(tmp_path / "sparse", "xattn", [0, 1], frames_fn=sparse_frames)
    out = tmp_path / "report"
    report = compare_runs(dense, sparse, out, metrics=("psnr",), progress=False)
    assert json.loads((out / "report.json").read_text())["dense_dir"] == report["dense_dir"]
    assert "dense\\_caf\\udce9" in (out / "report.md").read_text(encoding="utf-8")
    assert "dense_caf\\udce9" in (out / "report.html").read_text(encoding="utf-8")


def test_a_cpu_run_is_named_as_such(report) -> None:
    """generate records gpu null for a run off CUDA (RunRecord.device_type reads it as "cpu"),
    but the report said "GPU=unknown", so no page said which device a run used."""
    from xattn_video.metrics.report_tables import run_summary

    r = copy.deepcopy(report)
    r["gpu"] = {"dense": None, "sparse": "NVIDIA H200"}
    assert run_summary(r, "dense").endswith(", device=CPU")
    assert run_summary(r, "sparse").endswith(", GPU=NVIDIA H200")
