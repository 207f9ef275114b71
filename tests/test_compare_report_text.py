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

from .test_compare_report import base_frames, sparse_frames, write_run


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


def test_capped_psnr_frames_are_said_to_be_capped(tmp_path, capsys) -> None:
    """Identical frames get PSNR 100 dB, which the means average like a measurement; neither
    the report nor the CLI line said so (only report.json's settings held the floor)."""
    from xattn_video.metrics.report_tables import method_text
    from xattn_video.pipelines.cli import _print_report

    dense = write_run(tmp_path / "dense", "dense", [0, 1])
    same_first = lambda i: base_frames(i) if i == 0 else sparse_frames(i)  # noqa: E731
    sparse = write_run(tmp_path / "sparse", "xattn", [0, 1], frames_fn=same_first)
    report = compare_runs(dense, sparse, tmp_path / "r", metrics=("psnr",), progress=False)
    frames = report["videos"][0]["num_frames"]
    assert report["videos"][0]["psnr"]["per_frame"] == [100.0] * frames  # prompt 0: identical
    want = f"below the floor (identical frames, or nearly): {frames} of {2 * frames} frames here"
    assert want in method_text(report)
    assert want in (tmp_path / "r" / "report.md").read_text()
    _print_report(tmp_path / "r", report)
    assert f"({frames} of {2 * frames} frames at the 100 dB cap)" in capsys.readouterr().out


def test_no_cap_sentence_without_capped_frames(report) -> None:
    from xattn_video.metrics.report_tables import method_text

    assert "capped" not in method_text(report)


def test_the_lpips_line_names_both_digests() -> None:
    """It printed the tensors' digest as "weights sha256", which sha256sum of the weights file
    named there does not give."""
    from xattn_video.metrics.report_tables import lpips_line

    backbone = {"net": "alex", "version": "0.1", "backbone": "tv", "weights": "w.safetensors"}
    backbone |= {"source": "cache", "features_sha256": "a" * 64, "file_sha256": "b" * 64}
    line = lpips_line({"metrics": ["lpips"], "lpips_backbone": backbone})
    assert line.endswith(f"(cache; tensors sha256 {'a' * 16}, file sha256 {'b' * 16})")


def test_a_full_disk_leaves_the_last_reports_texts_together(tmp_path, monkeypatch) -> None:
    """The three texts were written one after another, so a failure after report.json left the
    new report.json beside the last run's report.md / report.html. The last run's texts go
    before this run draws its figures (they would name figures no longer there), so a failure
    leaves no report at all, never parts of two."""
    import errno
    from pathlib import Path

    dense = write_run(tmp_path / "dense", "dense", [0, 1])
    sparse = write_run(tmp_path / "sparse", "xattn", [0, 1], frames_fn=sparse_frames)
    out = tmp_path / "report"
    compare_runs(dense, sparse, out, metrics=("psnr",), progress=False)
    before = {n: (out / n).read_text() for n in ("report.json", "report.md", "report.html")}
    writes = {"write_bytes": Path.write_bytes, "write_text": Path.write_text}

    def full_disk(name):
        def write(self, data, *args, **kwargs):
            if self.name.startswith(".report.") and self.suffix == ".md":  # report.md's temp
                raise OSError(errno.ENOSPC, "No space left on device")
            return writes[name](self, data, *args, **kwargs)

        return write

    other = write_run(tmp_path / "other", "xattn", [0, 1])  # the dense frames: PSNR 100
    for name in writes:
        monkeypatch.setattr(Path, name, full_disk(name))
    with pytest.raises(OSError, match="No space left on device"):
        compare_runs(dense, other, out, metrics=("psnr",), progress=False)
    assert not any((out / n).exists() for n in before)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary left


def test_capped_frames_count_only_the_aggregates_pairs(report) -> None:
    """A pair left out of the aggregate (another prompt or seed) still counted: "9 of 18 frames
    at the cap" when the aggregate held 9 frames, all capped."""
    from xattn_video.metrics.report_tables import psnr_capped_frames

    r = copy.deepcopy(report)
    frames = [len(v["psnr"]["per_frame"]) for v in r["videos"]]
    r["videos"][0]["psnr"]["per_frame"] = [100.0] * frames[0]
    assert psnr_capped_frames(r)[:2] == (frames[0], sum(frames))
    r["videos"][1]["same_input"] = r["videos"][2]["same_input"] = False
    assert psnr_capped_frames(r)[:2] == (frames[0], frames[0])


def test_control_characters_of_a_prompt_are_shown_not_written_into_reports():
    """ESC / BEL / NUL in a prompt reached report.md and report.html raw: ``cat`` ran the
    terminal sequences, grep called the file binary. ``short`` shows them as ``\\xNN``."""
    from xattn_video.metrics.report_tables import short

    assert short("a \x1b[2J\x1b]0;t\x07cat\x00 walks") == "a \\x1b[2J\\x1b]0;t\\x07cat\\x00 walks"
    assert short("caf\u00e9 \u732b\tcat") == "caf\u00e9 \u732b cat"  # printable text kept


def test_bidi_controls_and_dollar_signs_of_a_prompt_stay_literal_in_report_md():
    """A right-to-left override reversed the rest of a report.md row in a text viewer (a PSNR
    of 38.56 read 65.83); ``$x^2$`` rendered as maths on GitHub."""
    from xattn_video.metrics.report_tables import short

    assert short("a cat \u202eon a mat \u2066x\u2069") == "a cat \\u202eon a mat \\u2066x\\u2069"
    row = markdown_table(["text"], [["a sign reading $x^2$"]]).splitlines()[2]
    assert row == "| a sign reading \\$x^2\\$ |"


def test_the_sparse_prompt_in_the_aggregate_column_is_escaped_once(report) -> None:
    """short() escapes control and bidi characters; the column then repr()-ed the result and
    showed ``\\\\x1b`` beside the text column's ``\\x1b``. And a cut never splits an escape."""
    from xattn_video.metrics.report_tables import short

    r = copy.deepcopy(report)
    r["videos"][1]["same_input"] = False
    r["videos"][1]["differs"] = ["prompt"]
    r["videos"][1]["sparse_input"] = {"prompt": "a \x1b[31m dog \u202e", "seed": 0}
    header, rows = video_table(r)
    cell = rows[1][header.index("in aggregate")]
    assert "(sparse: prompt 'a \\x1b[31m dog \\u202e', seed 0)" in cell, cell
    assert short("a" * 68 + "\x1b" * 3, 70) == "a" * 68 + "\\x1b\u2026"
