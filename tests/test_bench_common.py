"""CPU tests of ``benchmarks/_common.py``: what a result file records as its code version."""

from __future__ import annotations

import subprocess

import pytest

from ._benchmarks import load_benchmark

common = load_benchmark("_common")


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_git_sha_marks_files_that_differ_from_head(tmp_path):
    if subprocess.run(["git", "--version"], capture_output=True).returncode:
        pytest.skip("no git")
    assert common.git_sha(tmp_path) is None  # not a checkout
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip
    assert common.git_sha(tmp_path) == head
    (tmp_path / "a.py").write_text("x = 2\n")  # what a stale .git under newer files looks like
    assert common.git_sha(tmp_path) == head + "-dirty"
    (tmp_path / "b.py").write_text("")  # untracked files alone do not count
    (tmp_path / "a.py").write_text("x = 1\n")
    assert common.git_sha(tmp_path) == head
