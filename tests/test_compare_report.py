"""compare_runs on two synthetic run directories: report.json/md/html contents and rendering.

LPIPS here uses ``LPIPSMetric.random_for_tests`` (PLUMBING: not real LPIPS values) or is skipped.
The HTML report is opened in headless Chromium (Debian package ``chromium``) over the DevTools
protocol on a pipe (``--remote-debugging-pipe``; stdlib only), checking for console errors and that
every <img> loaded. That test skips when no chromium binary is installed.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import warnings
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from xattn_video.metrics import (
    CompareWarning,
    LPIPSMetric,
    LPIPSWeightsMissing,
    RunMismatch,
    compare_runs,
    plots,
    psnr,
    read_video,
    save_frames,
    ssim,
    write_video,
)
from xattn_video.metrics import lpips_metric as lm

T, H, W = 5, 32, 48
GPU = "NVIDIA H100 80GB HBM3"


# ----------------------------------------------------------------- synthetic runs


def base_frames(index: int) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    frames = [
        np.stack([(xx * 5 + t * 7) % 256, (yy * 8) % 256, (xx + yy + index * 20) % 256], -1)
        for t in range(T)
    ]
    return np.asarray(frames, dtype=np.uint8)


def sparse_frames(index: int) -> np.ndarray:
    rng = np.random.default_rng(100 + index)
    noise = rng.normal(0, 4.0 * (1 + index % 3), (T, H, W, 3))
    return np.clip(base_frames(index) + noise, 0, 255).astype(np.uint8)


def write_run(
    root: Path,
    attention: str,
    indices: list[int],
    *,
    frames_fn=base_frames,
    npy: bool = True,
    seed: int = 0,
    unfinished: tuple[int, ...] = (),
    compile: str | None = None,
    run_fields: dict[str, Any] | None = None,
) -> Path:
    root.mkdir(parents=True)
    run = {
        "model": "fake-dit",
        "attention": attention,
        "config": {},
        "height": H,
        "width": W,
        "frames": T,
        "steps": 4,
        "seed": seed,
        "gpu": GPU,
        "versions": {},
    }
    if compile is not None:  # run.json schema 3; older files have no key (eager)
        run |= {"schema_version": 3, "compile": compile}
    run |= run_fields or {}
    (root / "run.json").write_text(json.dumps(run))
    for i in indices:
        d = root / f"{i:05d}"
        frames = frames_fn(i)
        if npy:
            save_frames(d / "frames.npy", frames)
        write_video(d / "video.mp4", frames, fps=8)
        dense = attention == "dense"
        meta = {
            "prompt_index": i,
            "prompt": f"a synthetic prompt number {i} | with a pipe",
            "seed": seed,
            "attention": attention,
            "config": {},
            "timings": {
                "total_s": 20.0 if dense else 10.0 + i,
                "denoise_s": 18.0 if dense else 8.0 + i,
                "per_step_s": [0.5] * 4,
            },
            "density": None
            if dense
            else {"sparse_density": 0.2 + 0.05 * i, "effective_density": 0.35 + 0.05 * i},
            "gpu": GPU,
            "versions": {},
        }
        (d / "meta.json").write_text(json.dumps(meta))
    for i in unfinished:
        d = root / f"{i:05d}"
        save_frames(d / "frames.npy", base_frames(i))  # no meta.json: still generating
    return root


@pytest.fixture(scope="module")
def plumbing_lpips() -> LPIPSMetric:
    return LPIPSMetric.random_for_tests(seed=0, device="cpu")


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory, plumbing_lpips: LPIPSMetric):
    root = tmp_path_factory.mktemp("compare")
    dense = write_run(root / "dense", "dense", [0, 1, 2, 3])
    sparse = write_run(
        root / "sparse", "xattn", [0, 1, 2, 4], frames_fn=sparse_frames, unfinished=(7,)
    )
    out = root / "report"
    with pytest.warns(CompareWarning) as record:
        report = compare_runs(
            dense, sparse, out, lpips_metric=plumbing_lpips, device="cpu", progress=False
        )
    return report, out, dense, sparse, [str(w.message) for w in record]


# ----------------------------------------------------------------- report.json


def test_report_files_exist(compared) -> None:
    report, out, *_ = compared
    for name in ("report.json", "report.md", "report.html"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    figs = report["figures"]
    pngs = [figs["quality_vs_density"], figs["per_prompt"], figs["speedup"]]
    pngs += [s["file"] for s in figs["strips"]]
    assert None not in pngs and len(pngs) == 5
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "report.json").read_text()) == report


def test_report_values_match_direct_metric_calls(compared, plumbing_lpips) -> None:
    report, _, dense, sparse, _ = compared
    assert [v["prompt_index"] for v in report["videos"]] == [0, 1, 2]
    for v in report["videos"]:
        i = v["prompt_index"]
        a = read_video(dense / f"{i:05d}" / "frames.npy")
        b = read_video(sparse / f"{i:05d}" / "frames.npy")
        np.testing.assert_array_equal(b, sparse_frames(i))
        p, s = psnr(a, b, device="cpu"), ssim(a, b, device="cpu")
        lp = plumbing_lpips(a, b)
        assert v["psnr"]["per_frame"] == pytest.approx(list(p), abs=1e-12)
        assert v["ssim"]["per_frame"] == pytest.approx(list(s), abs=1e-12)
        assert v["lpips"]["per_frame"] == pytest.approx(list(lp), abs=1e-7)
        for key, arr in (("psnr", p), ("ssim", s), ("lpips", lp)):
            assert v[key]["mean"] == pytest.approx(arr.mean())
            assert v[key]["min"] == pytest.approx(arr.min())
            assert v[key]["max"] == pytest.approx(arr.max())
            assert v[key]["std"] == pytest.approx(arr.std())
        assert (v["num_frames"], v["height"], v["width"]) == (T, H, W)
        assert v["frames_source"] == {"dense": "frames.npy", "sparse": "frames.npy"}
        assert v["effective_density"] == pytest.approx(0.35 + 0.05 * i)
        assert v["sparse_density"] == pytest.approx(0.2 + 0.05 * i)
        assert v["speedup"]["total"] == pytest.approx(20.0 / (10.0 + i))
        assert v["speedup"]["denoise"] == pytest.approx(18.0 / (8.0 + i))
    # noisier prompts score worse: the worst/best strips pick them
    means = {v["prompt_index"]: v["psnr"]["mean"] for v in report["videos"]}
    assert means[0] > means[1] > means[2]
    strips = {s["label"]: s["prompt_index"] for s in report["figures"]["strips"]}
    assert strips == {"worst": 2, "best": 0}


def test_report_aggregates(compared) -> None:
    report, *_ = compared
    agg, videos = report["aggregate"], report["videos"]
    assert agg["num_videos"] == 3 and agg["num_frames"] == 3 * T
    for m in ("psnr", "ssim", "lpips"):
        means = np.array([v[m]["mean"] for v in videos])
        frames = np.concatenate([v[m]["per_frame"] for v in videos])
        assert agg[m]["mean"] == pytest.approx(means.mean())
        assert agg[m]["std"] == pytest.approx(means.std())
        assert agg[m]["min"] == pytest.approx(means.min())
        assert agg[m]["frame_min"] == pytest.approx(frames.min())
        assert agg[m]["frame_max"] == pytest.approx(frames.max())
        assert agg[m]["frame_mean"] == pytest.approx(frames.mean())
    assert agg["effective_density"]["mean"] == pytest.approx(0.40)
    sp = agg["speedup"]["total"]
    assert sp["mean"] == pytest.approx(np.mean([20 / 10, 20 / 11, 20 / 12]))
    assert sp["ratio_of_sums"] == pytest.approx(60 / 33)
    assert report["gpu"] == {"dense": GPU, "sparse": GPU}
    assert report["lpips_backbone"]["backbone"].startswith("RANDOM")
    assert report["lpips_skipped"] is None


def test_tables_show_each_metrics_worst_frame(compared) -> None:
    """The worst frame is the lowest PSNR / SSIM and the highest LPIPS, in the aggregate table
    and per video: swapping min and max in either table passed every test."""
    from xattn_video.metrics.report_tables import aggregate_table, fmt, video_table

    report, *_ = compared
    agg, digits = report["aggregate"], {"psnr": 2, "ssim": 4, "lpips": 4}
    header, rows = aggregate_table(report)
    worst = {r[0]: r[header.index("worst frame")] for r in rows}
    for m, label in (("psnr", "PSNR (dB)"), ("ssim", "SSIM"), ("lpips", "LPIPS")):
        frames = np.concatenate([v[m]["per_frame"] for v in report["videos"]])
        want = frames.max() if m == "lpips" else frames.min()
        assert worst[label] == fmt(want, digits[m]) != fmt(np.median(frames), digits[m])
    header, rows = video_table(report)
    for v, row in zip(report["videos"], rows, strict=True):
        for m, col in (("psnr", "PSNR (dB) min"), ("ssim", "SSIM min"), ("lpips", "LPIPS max")):
            frames = np.asarray(v[m]["per_frame"])
            want, other = (frames.max(), frames.min())[:: 1 if m == "lpips" else -1]
            assert row[header.index(col)] == fmt(want, digits[m]) != fmt(other, digits[m])
    assert agg["lpips"]["frame_max"] > agg["lpips"]["frame_min"]


def test_unpaired_and_unfinished_are_listed_and_warned(compared) -> None:
    report, _, _, _, warned = compared
    assert report["unpaired"] == {"dense_only": [3], "sparse_only": [4]}
    assert report["unfinished"] == {"dense": [], "sparse": [7]}
    assert any("unpaired" in w and "[3]" in w and "[4]" in w for w in warned)
    assert any("RANDOM backbone" in w for w in warned)
    assert report["warnings"] == warned


def test_markdown_cells_show_prompts_as_literal_text() -> None:
    """A prompt's ``<open>`` went into report.md as a raw HTML tag (the rendered file showed
    nothing for it; report.html escaped it), and ``*`` / ``_`` / backticks formatted it."""
    from xattn_video.metrics.report_md import markdown_table

    prompt = "a <open> sign & a_b *x* `c` [l](u) a|b back\\slash\nnext"
    assert markdown_table(["text"], [[prompt]]).splitlines()[2] == (
        "| a &lt;open&gt; sign &amp; a\\_b \\*x\\* \\`c\\` \\[l\\](u) a\\|b back\\\\slash next |"
    )


def test_markdown_report(compared) -> None:
    report, out, *_ = compared
    md = (out / "report.md").read_text()
    assert GPU in md
    assert "only dense \\[3\\], only sparse \\[4\\]" in md  # brackets literal, not a link
    rows = [line for line in md.splitlines() if line.startswith("| 0000")]
    assert len(rows) == 3
    for v, row in zip(report["videos"], rows, strict=True):
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        assert cells[0] == f"{v['prompt_index']:05d}"
        assert f"{v['psnr']['mean']:.2f}" in cells and f"{v['ssim']['mean']:.4f}" in cells
        assert "\\|" in row  # the pipe in the prompt is escaped, the table stays intact
        assert len(cells) == len(rows[0].strip("|").split(" | "))
    assert f"| PSNR (dB) | {report['aggregate']['psnr']['mean']:.2f} |" in md


class _TagChecker(HTMLParser):
    VOID = {"meta", "link", "img", "br", "hr", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.imgs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.imgs.append(dict(attrs)["src"] or "")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> (open: {self.stack[-3:]})")
        else:
            self.stack.pop()


def test_html_is_well_formed_and_references_existing_pngs(compared) -> None:
    report, out, *_ = compared
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>")
    checker = _TagChecker()
    checker.feed(html)
    assert checker.errors == [] and checker.stack == []
    assert len(checker.imgs) == 5
    for src in checker.imgs:
        assert not src.startswith(("/", "http")) and (out / src).is_file()
    assert "RANDOM backbone" in html and GPU in html
    assert "a synthetic prompt number 1 | with a pipe" in html


# ----------------------------------------------------------------- LPIPS semantics


def _isolate_lpips_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No LPIPS weights anywhere: no configured path, empty torch hub and xattn-video caches
    (and no download: conftest sets XATTN_VIDEO_OFFLINE)."""
    monkeypatch.delenv(lm.ENV_LPIPS_WEIGHTS, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("small")
    return (
        write_run(root / "dense", "dense", [5]),
        write_run(root / "sparse", "xattn", [5], frames_fn=sparse_frames),
    )


def test_lpips_in_default_set_is_skipped_with_reason(
    small_runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _isolate_lpips_weights(monkeypatch, tmp_path)
    dense, sparse = small_runs
    with pytest.warns(CompareWarning, match="LPIPS skipped"):
        report = compare_runs(dense, sparse, tmp_path / "out", device="cpu", progress=False)
    assert "alexnet-owt-7be5be79.pth" in report["lpips_skipped"]
    assert report["videos"][0]["lpips"] is None
    assert report["aggregate"]["lpips"] is None
    assert report["videos"][0]["psnr"]["mean"] > 0
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["videos"][0]["lpips"] is None and on_disk["lpips_skipped"]
    assert "LPIPS skipped" in (tmp_path / "out" / "report.md").read_text()
    assert "LPIPS skipped" in (tmp_path / "out" / "report.html").read_text()
    # one prompt only: a single strip, labelled worst
    assert [s["label"] for s in report["figures"]["strips"]] == ["worst"]


def test_an_lpips_weights_environment_path_that_holds_nothing_is_an_error(
    small_runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README: a $XATTN_VIDEO_LPIPS_WEIGHTS path that holds no weights is an error, as the flag
    is; compare skipped LPIPS instead (with weights in the cache unused)."""
    _isolate_lpips_weights(monkeypatch, tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("XATTN_VIDEO_LPIPS_WEIGHTS", str(empty))
    dense, sparse = small_runs
    with pytest.raises(LPIPSWeightsMissing, match=r"XATTN_VIDEO_LPIPS_WEIGHTS: .*a directory"):
        compare_runs(dense, sparse, tmp_path / "out", device="cpu", progress=False)
    assert not (tmp_path / "out" / "report.json").exists()


def test_lpips_required_raises_when_weights_missing(
    small_runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _isolate_lpips_weights(monkeypatch, tmp_path)
    dense, sparse = small_runs
    with pytest.raises(LPIPSWeightsMissing, match="download.pytorch.org"):
        compare_runs(
            dense, sparse, tmp_path / "out", lpips_required=True, device="cpu", progress=False
        )
    assert not (tmp_path / "out" / "report.json").exists()


def test_metric_subset_and_unknown_metric(small_runs, tmp_path: Path) -> None:
    dense, sparse = small_runs
    report = compare_runs(
        dense, sparse, tmp_path / "out", metrics=("psnr",), device="cpu", progress=False
    )
    v = report["videos"][0]
    assert "psnr" in v and "ssim" not in v and "lpips" not in v
    assert report["lpips_skipped"] is None and report["lpips_backbone"] is None
    with pytest.raises(ValueError, match="unknown metrics"):
        compare_runs(dense, sparse, tmp_path / "o2", metrics=("psnr", "fvd"), progress=False)


# ----------------------------------------------------------------- edge cases


def test_mp4_fallback_when_frames_npy_missing(tmp_path: Path) -> None:
    dense = write_run(tmp_path / "d", "dense", [0], npy=False)
    sparse = write_run(tmp_path / "s", "xattn", [0], frames_fn=sparse_frames)
    with pytest.warns(CompareWarning, match="video.mp4"):
        report = compare_runs(
            dense, sparse, tmp_path / "out", metrics=("psnr",), device="cpu", progress=False
        )
    v = report["videos"][0]
    assert v["frames_source"] == {"dense": "video.mp4", "sparse": "frames.npy"}
    decoded = read_video(dense / "00000" / "video.mp4")
    expected = psnr(decoded, sparse_frames(0), device="cpu")
    assert v["psnr"]["per_frame"] == pytest.approx(list(expected), abs=1e-12)


def test_shape_mismatch_names_the_prompt(tmp_path: Path) -> None:
    dense = write_run(tmp_path / "d", "dense", [3])
    sparse = write_run(tmp_path / "s", "xattn", [3], frames_fn=lambda i: base_frames(i)[:4])
    with pytest.raises(ValueError, match="prompt 00003"):
        compare_runs(dense, sparse, tmp_path / "out", metrics=("psnr",), progress=False)


def test_no_common_prompt_raises(tmp_path: Path) -> None:
    dense = write_run(tmp_path / "d", "dense", [0])
    sparse = write_run(tmp_path / "s", "xattn", [1])
    with pytest.raises(ValueError, match="no prompt index is finished in both"):
        compare_runs(dense, sparse, tmp_path / "out", metrics=("psnr",), progress=False)


def _edit_meta(run: Path, index: int, **fields: Any) -> None:
    meta_path = run / f"{index:05d}" / "meta.json"
    meta_path.write_text(json.dumps(json.loads(meta_path.read_text()) | fields))


def test_seed_mismatch_and_missing_timings_are_reported(tmp_path: Path) -> None:
    """A video whose meta.json seed differs from its pair's (a hand-edited or foreign folder:
    generate gives every video the run's seed, and another run seed is refused outright) is
    marked and left out of the aggregate."""
    dense = write_run(tmp_path / "d", "dense", [0, 1])
    sparse = write_run(
        tmp_path / "s", "xattn", [0, 1], frames_fn=sparse_frames, seed=1, run_fields={"seed": 0}
    )
    _edit_meta(sparse, 1, seed=0, timings=None, density=None)  # prompt 1: same seed, no timings
    with pytest.warns(
        CompareWarning, match=r"prompt 00000: seed differs between runs \(0 dense, 1 sparse\)"
    ):
        report = compare_runs(
            dense, sparse, tmp_path / "out", metrics=("psnr",), device="cpu", progress=False
        )
    assert [v["differs"] for v in report["videos"]] == [["seed"], []]
    assert report["videos"][0]["sparse_input"] == {"seed": 1}  # it showed only the dense seed
    assert "sparse_input" not in report["videos"][1]
    assert "| no: seed differs (sparse: seed 1) |" in (tmp_path / "out" / "report.md").read_text()
    v = report["videos"][1]
    assert v["speedup"] == {"total": None, "denoise": None}
    assert v["effective_density"] is None
    # the plots draw only the comparable pair (prompt 1), which has no timings nor density
    assert report["figures"]["speedup"] is None
    assert report["figures"]["quality_vs_density"] is None
    html = (tmp_path / "out" / "report.html").read_text()
    assert "no density recorded" in html and "no timings recorded" in html


def test_left_out_pairs_are_not_plotted_and_are_marked_in_the_table(tmp_path: Path) -> None:
    """A pair whose prompt text differs was left out of the aggregate but was still ranked
    as the worst-PSNR strip and drawn in the plots, with no mark in the per-video table."""
    dense = write_run(tmp_path / "d", "dense", [0, 1, 2])
    sparse = write_run(tmp_path / "s", "xattn", [0, 1, 2], frames_fn=sparse_frames)
    # prompt 2: another prompt text and very different frames (the worst PSNR by far)
    (sparse / "00002" / "frames.npy").unlink()
    save_frames(sparse / "00002" / "frames.npy", 255 - base_frames(2))
    _edit_meta(sparse, 2, prompt="another prompt")
    with pytest.warns(CompareWarning, match="prompt 00002: prompt differs"):
        report = compare_runs(
            dense, sparse, tmp_path / "out", metrics=("psnr",), device="cpu", progress=False
        )
    psnrs = {v["prompt_index"]: v["psnr"]["mean"] for v in report["videos"]}
    assert psnrs[2] < min(psnrs[0], psnrs[1]) - 10
    strips = {s["label"]: s["prompt_index"] for s in report["figures"]["strips"]}
    worst = min((0, 1), key=psnrs.get)
    assert strips == {"worst": worst, "best": 1 - worst}
    assert report["aggregate"]["psnr"]["min"] == pytest.approx(psnrs[worst])
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| in aggregate |" in md
    assert md.count("| yes |") == 2
    assert md.count("| no: prompt differs (sparse: prompt 'another prompt') |") == 1
    html = (tmp_path / "out" / "report.html").read_text()
    assert "no: prompt differs" in html


def test_no_pair_with_the_same_prompt_and_seed_raises(tmp_path: Path) -> None:
    """Every shared index with another prompt text (e.g. runs of two prompt suites) gave exit 0
    and an empty report."""
    dense = write_run(tmp_path / "d", "dense", [0, 1])
    sparse = write_run(tmp_path / "s", "xattn", [0, 1], frames_fn=sparse_frames)
    for i in (0, 1):
        _edit_meta(sparse, i, prompt=f"an augmented prompt {i}")
    with pytest.raises(ValueError, match="same prompt text and seed .prompt indices .0, 1.."):
        compare_runs(dense, sparse, tmp_path / "out", metrics=("psnr",), progress=False)
    assert not (tmp_path / "out").exists()


def test_speedup_says_when_every_pair_was_first_in_its_process(tmp_path: Path) -> None:
    """Two prompts on two processes: both pairs pay compile / autotune. The speed-up used them
    silently, while the README says first-in-process videos are left out."""
    dense = write_run(tmp_path / "d", "dense", [0, 1])
    sparse = write_run(tmp_path / "s", "xattn", [0, 1], frames_fn=sparse_frames)
    for run, first in ((dense, (True, False)), (sparse, (False, True))):
        for i in (0, 1):  # a resumed run: each pair has one first-in-process video, not two
            _edit_meta(run, i, first_in_process=first[i])
    with pytest.warns(CompareWarning, match=r"every compared pair \(2\) holds a first-in-process"):
        report = compare_runs(
            dense, sparse, tmp_path / "out", metrics=("psnr",), device="cpu", progress=False
        )
    speed = report["aggregate"]["speedup"]
    assert speed["includes_first_in_process"] == 2 and speed["excluded_first_in_process"] == 0
    assert speed["denoise"]["ratio_of_sums"] == pytest.approx(36.0 / 17.0)
    md = (tmp_path / "out" / "report.md").read_text()
    # it said every pair "was its process's first video" and blamed CUDA on a CPU run
    assert "all 2 pair(s) hold a first-in-process video: includes compile" in md
    # one warm pair: the other is left out, nothing is said to be included
    _edit_meta(sparse, 1, first_in_process=False)
    _edit_meta(dense, 1, first_in_process=False)
    report = compare_runs(dense, sparse, tmp_path / "o2", metrics=("psnr",), progress=False)
    speed = report["aggregate"]["speedup"]
    assert speed["includes_first_in_process"] == 0 and speed["excluded_first_in_process"] == 1
    assert speed["denoise"]["ratio_of_sums"] == pytest.approx(18.0 / 9.0)
    # the per-video table says which pair the speed-up left out (it showed its 0.1x-style
    # speed-up like any other's), and so does speedup.png (pale, hatched, titled)
    md = (tmp_path / "o2" / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| prompt |"))
    assert header.rstrip(" |").endswith("| in speed-up")
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if "| 0000" in line}
    assert rows["00000"].rstrip(" |").endswith("| no: first in its process")
    assert rows["00001"].rstrip(" |").endswith("| yes")
    assert "in speed-up" in (tmp_path / "o2" / "report.html").read_text()
    figs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "_save", lambda fig, path: figs.setdefault(Path(path).name, fig))
        compare_runs(dense, sparse, tmp_path / "o3", metrics=("psnr",), progress=False)
    ax = figs["speedup.png"].axes[0]
    assert [p.get_hatch() for p in ax.patches] == ["//", None] * 2  # total, then denoise bars
    assert ax.get_title().startswith("hatched: first in its process")
    # the key shows each timing's plain colour (it took the first bars' hatch when the first
    # prompt was the one left out)
    key = ax.get_legend().get_patches()
    assert [(p.get_hatch(), p.get_alpha()) for p in key] == [(None, None), (None, None)]


@pytest.mark.parametrize(
    ("npy", "expected"),
    [
        ((True, True), "per frame on lossless frames (frames.npy) and"),
        ((False, True), "per frame on decoded video.mp4 (lossy: codec noise bounds PSNR)"),
        ((True, False), "except decoded video.mp4 (lossy) for prompts 00001"),
    ],
)
def test_reports_name_the_frames_the_metrics_used(tmp_path: Path, npy, expected) -> None:
    """report.md / .html said "lossless frames" also when they came from decoded mp4s."""
    dense = write_run(tmp_path / "d", "dense", [0, 1], npy=npy[0])
    sparse = write_run(tmp_path / "s", "xattn", [0, 1], frames_fn=sparse_frames)
    if not npy[1]:
        (sparse / "00001" / "frames.npy").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompareWarning)
        compare_runs(dense, sparse, tmp_path / "out", metrics=("psnr",), progress=False)
    for name in ("report.md", "report.html"):
        text = (tmp_path / "out" / name).read_text()
        assert expected in text, name
        assert ("lossless" in text) == (npy != (False, True)), name


# ----------------------------------------------------------------- headless Chromium


def _chromium() -> str | None:
    for name in (os.environ.get("CHROMIUM_BIN"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


_LAUNCH = (
    "import os, sys\n"
    "r, w = int(sys.argv[1]), int(sys.argv[2])\n"
    "os.dup2(r, 3); os.dup2(w, 4); os.close(r); os.close(w)\n"
    "os.execv(sys.argv[3], sys.argv[3:])\n"
)

_IMAGES_JS = """
Promise.all(Array.from(document.images).map(i => i.complete ? null :
    new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); })))
  .then(() => JSON.stringify(Array.from(document.images).map(i => (
    {src: i.getAttribute('src'), naturalWidth: i.naturalWidth, complete: i.complete}))))
"""


class HeadlessChromium:
    """Chromium driven over the DevTools protocol on fds 3/4 (``--remote-debugging-pipe``)."""

    def __init__(self, binary: str, user_data_dir: Path) -> None:
        cmd_r, self._w = os.pipe()  # we write commands, chromium reads fd 3
        self._r, res_w = os.pipe()  # chromium writes fd 4, we read
        # move the child's ends above 9 so the launcher's dup2 onto 3/4 cannot clobber them
        hi_r = fcntl.fcntl(cmd_r, fcntl.F_DUPFD_CLOEXEC, 10)
        hi_w = fcntl.fcntl(res_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(cmd_r)
        os.close(res_w)
        args = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={user_data_dir}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCH, str(hi_r), str(hi_w), *args],
            pass_fds=(hi_r, hi_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(hi_r)
        os.close(hi_w)
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._id = 0
        self.events: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                data = os.read(self._r, 1 << 16)
            except OSError:
                data = b""
            if not data:
                self._q.put(None)
                return
            buf += data
            while b"\0" in buf:
                msg, buf = buf.split(b"\0", 1)
                self._q.put(json.loads(msg))

    def _next(self, deadline: float) -> dict[str, Any]:
        try:
            msg = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError("chromium did not answer in time") from None
        if msg is None:
            raise RuntimeError("chromium closed the DevTools pipe")
        if "method" in msg:
            self.events.append(msg)
        return msg

    def call(self, method: str, params=None, session: str | None = None, timeout=30.0) -> dict:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._next(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def wait_event(self, method: str, session: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(e["method"] == method and e.get("sessionId") == session for e in self.events):
            self._next(deadline)

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        try:
            while True:
                self._next(deadline)
        except TimeoutError:
            pass

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (TimeoutError, RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)


def inspect_page(binary: str, html: Path, profile_dir: Path) -> tuple[list[str], list[dict]]:
    """Load ``html``; return (console/log errors and uncaught exceptions, <img> load states)."""
    browser = HeadlessChromium(binary, profile_dir)
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Runtime", "Log", "Page"):
            browser.call(f"{domain}.enable", session=s)
        browser.call("Page.navigate", {"url": html.resolve().as_uri()}, session=s)
        browser.wait_event("Page.loadEventFired", s)
        res = browser.call(
            "Runtime.evaluate",
            {"expression": _IMAGES_JS, "awaitPromise": True, "returnByValue": True},
            session=s,
        )
        images = json.loads(res["result"]["value"])
        browser.drain(0.3)  # late console messages
    finally:
        browser.close()
    errors = []
    for e in browser.events:
        p = e.get("params", {})
        if e["method"] == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            errors.append(d.get("exception", {}).get("description") or d.get("text", ""))
        elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append(" ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
        elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
            errors.append(f"{p['entry']['text']} {p['entry'].get('url', '')}")
    return errors, images


needs_chromium = pytest.mark.skipif(
    _chromium() is None, reason="chromium not installed (apt-get install -y chromium)"
)


@needs_chromium
def test_browser_check_catches_broken_pages(tmp_path: Path) -> None:
    """Control: the browser harness does report a missing image and a script error."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>bad</title>'
        '<link rel="icon" href="data:,"></head><body><img src="missing.png">'
        "<script>console.error('boom'); notDefined();</script></body></html>"
    )
    errors, images = inspect_page(_chromium(), bad, tmp_path / "profile")
    assert images == [{"src": "missing.png", "naturalWidth": 0, "complete": True}]
    joined = "\n".join(errors)
    assert "boom" in joined and "notDefined" in joined and "ERR_FILE_NOT_FOUND" in joined


@needs_chromium
def test_html_report_renders_in_headless_chromium(compared, tmp_path: Path) -> None:
    report, out, *_ = compared
    errors, images = inspect_page(_chromium(), out / "report.html", tmp_path / "profile")
    assert errors == []
    assert len(images) == 5
    for img in images:
        assert img["complete"] and img["naturalWidth"] > 0, img
    expected = {report["figures"]["quality_vs_density"], report["figures"]["per_prompt"]}
    assert expected <= {img["src"] for img in images}


def test_pairs_with_another_prompt_text_are_left_out_of_the_aggregate(tmp_path: Path) -> None:
    dense = write_run(tmp_path / "d", "dense", [0, 1, 2])
    sparse = write_run(tmp_path / "s", "xattn", [0, 1, 2], frames_fn=sparse_frames)
    meta_path = sparse / "00001" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["prompt"] = "an edited prompt"
    meta_path.write_text(json.dumps(meta))
    with pytest.warns(
        CompareWarning,
        match="prompt 00001: prompt differs between runs .* 'an edited prompt' sparse, first "
        r"difference at character 1: U\+0020 U\+0073 -> U\+006E U\+0020\); left out",
    ):
        report = compare_runs(
            dense, sparse, tmp_path / "out", metrics=("psnr",), device="cpu", progress=False
        )
    same = [v["same_input"] for v in report["videos"]]
    assert same == [True, False, True]
    agg = report["aggregate"]
    assert agg["num_videos"] == 2 and agg["excluded_different_input"] == 1
    means = [report["videos"][i]["psnr"]["mean"] for i in (0, 2)]
    assert agg["psnr"]["mean"] == pytest.approx(float(np.mean(means)), rel=1e-12)
    assert agg["num_frames"] == 2 * T


def test_compare_refuses_the_same_directory_twice(tmp_path: Path) -> None:
    run = write_run(tmp_path / "d", "dense", [0])
    with pytest.raises(ValueError, match="are the same run directory"):
        compare_runs(run, tmp_path / "d" / ".", tmp_path / "out", metrics=("psnr",))
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------- eager / compiled modes


def _compare_modes(tmp_path: Path, dense_mode: str | None, sparse_mode: str | None) -> dict:
    dense = write_run(tmp_path / "d", "dense", [0, 1], compile=dense_mode)
    sparse = write_run(
        tmp_path / "s", "xattn", [0, 1], frames_fn=sparse_frames, compile=sparse_mode
    )
    return compare_runs(
        dense, sparse, tmp_path / "out", metrics=("psnr",), device="cpu", progress=False
    )


def test_report_names_the_mode_of_each_run(tmp_path: Path) -> None:
    report = _compare_modes(tmp_path, "compiled:default", "compiled:default")
    assert report["modes"] == {"dense": "compiled:default", "sparse": "compiled:default"}
    assert not any("mode" in w for w in report["warnings"])
    for name in ("report.md", "report.html"):
        text = (tmp_path / "out" / name).read_text()
        assert text.count("mode=compiled:default") == 2, name  # dense and sparse run lines
        assert "speed-up, denoising (both compiled:default" in text, name
        assert "not comparable" not in text, name


def test_runs_without_a_recorded_mode_are_eager(tmp_path: Path) -> None:
    """run.json before schema 3 has no ``compile``: compiling did not exist, the run was eager."""
    report = _compare_modes(tmp_path, None, "eager")
    assert report["modes"] == {"dense": "eager", "sparse": "eager"}
    assert "speed-up, denoising (both eager" in (tmp_path / "out" / "report.md").read_text()


def test_report_warns_when_the_modes_differ(tmp_path: Path) -> None:
    with pytest.warns(CompareWarning, match="different modes"):
        report = _compare_modes(tmp_path, None, "compiled:max-autotune")
    assert report["modes"] == {"dense": "eager", "sparse": "compiled:max-autotune"}
    want = (
        "runs used different modes (dense eager, sparse compiled:max-autotune): the speed-up "
        "compares different things; generate both with the same --compile"
    )
    assert want in report["warnings"]
    for name in ("report.md", "report.html"):
        text = (tmp_path / "out" / name).read_text()
        assert "mode=eager" in text and "mode=compiled:max-autotune" in text, name
        assert "dense eager vs sparse compiled:max-autotune: not comparable" in text, name
        assert "different modes" in text, name


def test_lpips_by_default_skips_frames_below_receptive_field(
    tmp_path: Path, plumbing_lpips: LPIPSMetric
) -> None:
    """LPIPS only in the default metric set: 16x16 frames skip it with a note (PSNR/SSIM still
    computed); asked for explicitly, the same frames raise the metric's ValueError."""

    def tiny(index: int) -> np.ndarray:
        return base_frames(index)[:, :16, :16]

    dense = write_run(tmp_path / "dense", "dense", [0], frames_fn=tiny)
    sparse = write_run(tmp_path / "sparse", "xattn", [0], frames_fn=lambda i: tiny(i) // 2)
    with pytest.warns(CompareWarning, match="LPIPS skipped, frames 16x16"):
        report = compare_runs(
            dense, sparse, tmp_path / "r", lpips_metric=plumbing_lpips, device="cpu",
            progress=False,
        )  # fmt: skip
    video = report["videos"][0]
    assert video["lpips"] is None and video["psnr"] is not None
    assert any("LPIPS skipped, frames 16x16" in n for n in report["warnings"])
    with pytest.raises(ValueError, match="receptive field"):
        compare_runs(
            dense, sparse, tmp_path / "r2", lpips_metric=plumbing_lpips, device="cpu",
            progress=False, lpips_required=True,
        )  # fmt: skip


# ----------------------------------------------------------------- runs made with other settings


SAME = {"model_source": "org/fake-dit", "dtype": "bfloat16", "fps": 8, "prompts": "vbench"}


@pytest.mark.parametrize(
    "field, dense_value, sparse_value",
    [
        ("steps", 2, 4),
        ("model", "fake-dit", "other-dit"),
        ("model_source", "org/fake-dit", "/models/finetuned"),
        # a built-in model records no source; one run from other weights was compared with it
        ("model_source", None, "/models/finetuned"),
        ("dtype", "bfloat16", "float32"),
        ("height", H, 2 * H),
        ("width", W, 2 * W),
        ("frames", T, 2 * T + 1),
        ("seed", 0, 1),
    ],
)
def test_runs_with_other_generation_settings_are_refused(
    tmp_path: Path, field: str, dense_value: Any, sparse_value: Any
) -> None:
    dense = write_run(tmp_path / "d", "dense", [0], run_fields={**SAME, field: dense_value})
    sparse = write_run(
        tmp_path / "s", "xattn", [0], frames_fn=sparse_frames,
        run_fields={**SAME, field: sparse_value},
    )  # fmt: skip
    with pytest.raises(RunMismatch) as exc:
        compare_runs(dense, sparse, tmp_path / "out", metrics=("psnr",), progress=False)
    assert exc.value.differences == {field: (dense_value, sparse_value)}
    message = str(exc.value)
    assert f"{field} {dense_value!r} (dense) vs {sparse_value!r} (sparse)" in message
    # frames of two shapes cannot be compared, nor runs of two seeds paired (the aggregate keeps
    # only videos of the same prompt and seed): refused even with allow_mismatch, which let a
    # seed through to exit 2 later with "no paired prompt"
    refused = field in ("height", "width", "frames", "seed")
    assert exc.value.allowable is not refused
    assert ("allow_mismatch=True compares anyway" in message) is not refused
    if refused:
        assert "another size, frame count, seed or device type cannot be compared" in message
        with pytest.raises(RunMismatch):
            compare_runs(dense, sparse, tmp_path / "out", progress=False, allow_mismatch=True)
    assert not (tmp_path / "out").exists()  # refused before any work


def test_allow_mismatch_compares_with_a_warning_in_every_report(tmp_path: Path) -> None:
    dense = write_run(tmp_path / "d", "dense", [0, 1], run_fields={**SAME, "steps": 2})
    sparse = write_run(tmp_path / "s", "xattn", [0, 1], frames_fn=sparse_frames,
                       run_fields={**SAME, "steps": 4, "dtype": "float32"})  # fmt: skip
    with pytest.warns(CompareWarning, match="steps 2 .dense. vs 4 .sparse."):
        report = compare_runs(
            dense, sparse, tmp_path / "out", metrics=("psnr",), progress=False,
            allow_mismatch=True,
        )  # fmt: skip
    assert report["mismatched_settings"] == {
        "steps": {"dense": 2, "sparse": 4},
        "dtype": {"dense": "bfloat16", "sparse": "float32"},
    }
    mismatch = [w for w in report["warnings"] if "generated with different settings" in w]
    assert len(mismatch) == 1 and "steps 2 (dense) vs 4 (sparse)" in mismatch[0]
    assert "dtype 'bfloat16' (dense) vs 'float32' (sparse)" in mismatch[0]
    assert report["aggregate"]["num_videos"] == 2
    for name in ("report.md", "report.html", "report.json"):
        assert "steps 2 (dense) vs 4 (sparse)" in (tmp_path / "out" / name).read_text(), name


def test_settings_expected_to_differ_do_not_count_as_a_mismatch(tmp_path: Path) -> None:
    """Attention mode, XAttention config, thresholds file, fps (the mp4 only), prompt selection
    (pairs are checked per prompt), command and process count may differ."""
    dense = write_run(tmp_path / "d", "dense", [0], run_fields={**SAME, "num_processes": 1})
    other = {"config": {"threshold": 0.9}, "thresholds_sha256": "ab" * 32, "fps": 24,
             "prompts": "vbench-augmented", "selection": {"sample": 20}, "num_processes": 8,
             "command": ["xattn-video", "generate", "--attention", "xattn"]}  # fmt: skip
    sparse = write_run(tmp_path / "s", "xattn", [0], frames_fn=sparse_frames,
                       run_fields={**SAME, **other})  # fmt: skip
    report = compare_runs(dense, sparse, tmp_path / "out", metrics=("psnr",), progress=False)
    assert report["mismatched_settings"] == {}
    assert report["warnings"] == []


def test_runs_without_a_recorded_field_are_not_refused(tmp_path: Path) -> None:
    """0.1.0 run.json files may lack dtype / model_source: unknown is not a mismatch."""
    dense = write_run(tmp_path / "d", "dense", [0])
    sparse = write_run(
        tmp_path / "s", "xattn", [0], frames_fn=sparse_frames, run_fields={"dtype": "float32"}
    )
    report = compare_runs(dense, sparse, tmp_path / "out", metrics=("psnr",), progress=False)
    assert report["mismatched_settings"] == {}


@pytest.mark.parametrize("dense_gpu, sparse_gpu", [(None, GPU), (GPU, None)])
def test_a_cpu_run_against_a_cuda_run_is_refused(tmp_path: Path, dense_gpu, sparse_gpu) -> None:
    """run.json's ``gpu`` is null on the CPU; CPU and CUDA generators give different noise for
    the same seed, so no pair shares its input: refused even with allow_mismatch (was compared
    without a word: two GPUs warned, a GPU and ``null`` did not)."""
    dense = write_run(tmp_path / "d", "dense", [0], run_fields={**SAME, "gpu": dense_gpu})
    sparse = write_run(tmp_path / "s", "xattn", [0], frames_fn=sparse_frames,
                       run_fields={**SAME, "gpu": sparse_gpu})  # fmt: skip
    want = {"device": tuple("cuda" if g else "cpu" for g in (dense_gpu, sparse_gpu))}
    for allow in (False, True):
        with pytest.raises(RunMismatch) as exc:
            compare_runs(dense, sparse, tmp_path / "out", progress=False, allow_mismatch=allow)
        assert exc.value.differences == want and not exc.value.allowable
        assert "frame count, seed or device type cannot be compared" in str(exc.value)
    assert not (tmp_path / "out").exists()


def test_device_type_is_not_compared_without_a_recorded_gpu(tmp_path: Path) -> None:
    """Two CPU runs compare; a run.json without a ``gpu`` key (unknown) against a CUDA run is
    not refused, nor a CUDA run against a CUDA run of another GPU (that only warns)."""
    cpu = {**SAME, "gpu": None}
    a = write_run(tmp_path / "a", "dense", [0], run_fields=cpu)
    b = write_run(tmp_path / "b", "xattn", [0], frames_fn=sparse_frames, run_fields=cpu)
    report = compare_runs(a, b, tmp_path / "o1", metrics=("psnr",), progress=False)
    assert report["mismatched_settings"] == {}
    unknown = write_run(tmp_path / "u", "dense", [0], run_fields=SAME)
    info = json.loads((unknown / "run.json").read_text())
    del info["gpu"]
    (unknown / "run.json").write_text(json.dumps(info))
    report = compare_runs(unknown, b, tmp_path / "o2", metrics=("psnr",), progress=False)
    assert report["mismatched_settings"] == {}
    c = write_run(tmp_path / "c", "xattn", [0], frames_fn=sparse_frames,
                  run_fields={**SAME, "gpu": "NVIDIA H200"})  # fmt: skip
    report = compare_runs(unknown, c, tmp_path / "o3", metrics=("psnr",), progress=False)
    assert report["mismatched_settings"] == {}
    d = write_run(tmp_path / "d", "dense", [0], run_fields={**SAME, "gpu": GPU})
    report = compare_runs(d, c, tmp_path / "o4", metrics=("psnr",), progress=False)
    assert report["mismatched_settings"] == {} and "different GPUs" in report["warnings"][0]


def test_a_model_source_recorded_by_one_run_only_is_not_a_mismatch(tmp_path: Path) -> None:
    """A 0.1.0 run.json has no model_source (unknown): compared with a run that records one,
    it is not refused (comparing when *either* run records it refused this pair)."""
    dense = write_run(tmp_path / "d", "dense", [0])
    sparse = write_run(tmp_path / "s", "xattn", [0], frames_fn=sparse_frames,
                       run_fields={"model_source": "org/fake-dit"})  # fmt: skip
    report = compare_runs(dense, sparse, tmp_path / "out", metrics=("psnr",), progress=False)
    assert report["mismatched_settings"] == {}


def test_other_gpus_versions_and_a_non_dense_reference_are_warned(tmp_path: Path) -> None:
    """The notes that do not stop a comparison; the test runs all shared one GPU, empty
    versions and a dense reference, so dropping any of these notes passed every test."""
    dense = write_run(tmp_path / "d", "xattn", [0], run_fields={
        "gpu": "GPU A", "versions": {"torch": "2.7.0"}, "ulysses": 1})  # fmt: skip
    sparse = write_run(tmp_path / "s", "xattn", [0], frames_fn=sparse_frames, run_fields={
        "gpu": "GPU B", "versions": {"torch": "2.9.0"}, "ulysses": 2})  # fmt: skip
    with pytest.warns(CompareWarning):
        report = compare_runs(dense, sparse, tmp_path / "out", metrics=("psnr",), progress=False)
    notes = report["warnings"]
    assert f"{dense}: run.json says attention='xattn' for the reference (dense) run" in notes
    assert any("different GPUs ('GPU A' vs 'GPU B')" in n for n in notes)
    assert any("different package versions (dense vs sparse: torch 2.7.0 vs 2.9.0)" in n
               for n in notes)  # fmt: skip
    # a dense run on 1 GPU per video against a sparse one on 2 (was not warned)
    assert any("different --ulysses degrees (1 vs 2)" in n for n in notes)


def test_html_escapes_prompts_in_tables(tmp_path: Path) -> None:
    """A prompt is text, never markup, in report.html's tables (report.md has its own test)."""
    from xattn_video.metrics.report_html import html_table

    prompt = "a cat <script>alert(1)</script> & <b>dog</b>"
    html = html_table(["text", "<th>"], [[prompt, "x"]])
    assert "<script>" not in html and "<b>" not in html and "<th>&lt;th&gt;</th>" in html
    assert "a cat &lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;dog&lt;/b&gt;" in html


def test_html_says_psnr_is_missing_when_only_ssim_was_computed(small_runs, tmp_path) -> None:
    dense, sparse = small_runs
    compare_runs(dense, sparse, tmp_path / "out", metrics=("ssim",), progress=False)
    html = (tmp_path / "out" / "report.html").read_text()
    assert "no density recorded" not in html  # the sparse run records it
    assert "Quality vs density: not drawn, PSNR was not computed" in html


def test_html_says_density_is_missing_when_it_is(tmp_path) -> None:
    dense = write_run(tmp_path / "d", "dense", [0])
    sparse = write_run(tmp_path / "s", "dense", [0], frames_fn=sparse_frames)
    with pytest.warns(CompareWarning):
        compare_runs(dense, sparse, tmp_path / "out", metrics=("psnr",), progress=False)
    html = (tmp_path / "out" / "report.html").read_text()
    assert "no density recorded in the sparse run" in html


def test_a_reused_report_folder_keeps_no_figure_of_the_earlier_report(tmp_path: Path) -> None:
    """The earlier report's worst / best strips (other prompt indices) stayed beside the new
    ones, as did plots this report does not draw."""
    dense = write_run(tmp_path / "d", "dense", [0, 1, 2])
    sparse = write_run(tmp_path / "s", "xattn", [0, 1, 2], frames_fn=sparse_frames)
    out = tmp_path / "out"
    first = compare_runs(dense, sparse, out, metrics=("psnr",), device="cpu", progress=False)
    before = {s["file"] for s in first["figures"]["strips"]}
    stale = {"strip_worst_00009.png", "strip_best_00008.png", "speedup.png"}
    for name in stale:
        (out / name).write_bytes(b"an earlier report's figure")
    (out / "notes.txt").write_text("the user's own file")
    for i in (0, 1, 2):  # no timings: this report draws no speed-up plot
        _edit_meta(sparse, i, timings=None)
    report = compare_runs(dense, sparse, out, metrics=("psnr",), device="cpu", progress=False)
    assert report["figures"]["speedup"] is None
    pngs = {p.name for p in out.glob("*.png")}
    assert pngs.isdisjoint(stale) and before <= pngs
    assert {s["file"] for s in report["figures"]["strips"]} == before
    assert (out / "notes.txt").read_text() == "the user's own file"


def test_a_compare_stopped_while_drawing_leaves_no_report_naming_missing_figures(
    tmp_path: Path, monkeypatch
) -> None:
    """A compare stopped (Ctrl-C, a kill) while drawing into a reused out_dir had already
    deleted the earlier report's figures, and wrote PNGs in place, but left the earlier
    report.{json,md,html} beside missing or cut figures. The texts now go first, and a PNG is
    put in place whole or not at all."""
    from xattn_video.metrics import plots

    dense = write_run(tmp_path / "d", "dense", [0, 1, 2])
    sparse = write_run(tmp_path / "s", "xattn", [0, 1, 2], frames_fn=sparse_frames)
    out = tmp_path / "out"
    compare_runs(dense, sparse, out, metrics=("psnr",), device="cpu", progress=False)
    assert (out / "report.json").exists()
    real, drawn = plots.Figure.savefig, []

    def stopped_in_the_second(fig, path, **kwargs):
        if len(drawn) == 1:
            Path(path).write_bytes(b"\x89PNG cut")  # what a kill mid-write leaves
            raise KeyboardInterrupt
        drawn.append(path)
        return real(fig, path, **kwargs)

    monkeypatch.setattr(plots.Figure, "savefig", stopped_in_the_second)
    with pytest.raises(KeyboardInterrupt):
        compare_runs(dense, sparse, out, metrics=("psnr",), device="cpu", progress=False)
    assert not any((out / f"report.{ext}").exists() for ext in ("json", "md", "html"))
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.suffix != ".png"]  # no temporary file left


def test_a_pair_outside_the_aggregate_is_not_said_to_be_in_the_speed_up() -> None:
    """The 'in speed-up' column said "yes" for a pair whose seed differs, which the aggregate
    (and so its speed-up) never counts, next to "in aggregate: no"."""
    from xattn_video.metrics.report_tables import video_table

    def video(i, same=True, warm=True):
        return {"prompt_index": i, "prompt": f"p{i}", "num_frames": 5, "same_input": same,
                "timing_warm": warm, "differs": None if same else ["seed"],
                "speedup": {"total": 1.5, "denoise": 1.8}, "effective_density": 0.3,
                "sparse_density": 0.3}  # fmt: skip

    report = {"metrics": [], "videos": [video(0, warm=False), video(1), video(2, same=False)]}
    header, rows = video_table(report)
    assert header[-2:] == ["in aggregate", "in speed-up"]
    assert [r[-1] for r in rows] == ["no: first in its process", "yes", "no: not in the aggregate"]


def test_an_unreadable_mp4_fallback_is_one_line(tmp_path: Path, monkeypatch) -> None:
    """Without frames.npy, an mp4 that ffmpeg can't read was reported with imageio's whole
    stderr appended (ffmpeg's 22-line build banner after the error line)."""
    from xattn_video.metrics import run_dir as run_dir_mod

    run = write_run(tmp_path / "d", "dense", [0])
    (run / "00000" / "frames.npy").unlink()

    def banner(path):
        raise OSError("Could not load meta information\n=== stderr ===\nffmpeg version 7\n...")

    monkeypatch.setattr(run_dir_mod, "read_video", banner)
    video = run_dir_mod.scan_run(run).videos[0]
    with pytest.raises(run_dir_mod.RunDirError) as exc:
        video.load_frames()
    assert "\n" not in str(exc.value)
    assert "video.mp4 can't be read: Could not load meta information; rerunning" in str(exc.value)
