"""What a run directory or a benchmark result records as its code version (``git_sha``)."""

from __future__ import annotations

import os
import subprocess

import pytest

from xattn_video.pipelines.runinfo import git_sha

from ._benchmarks import load_benchmark

common = load_benchmark("_common")


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_git_sha_marks_files_that_differ_from_head(tmp_path):
    if subprocess.run(["git", "--version"], capture_output=True).returncode:
        pytest.skip("no git")
    assert git_sha(tmp_path) is None  # not a checkout
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip
    assert git_sha(tmp_path) == head
    (tmp_path / "a.py").write_text("x = 2\n")  # what a stale .git under newer files looks like
    assert git_sha(tmp_path) == head + "-dirty"
    (tmp_path / "b.py").write_text("")  # untracked files alone do not count
    (tmp_path / "a.py").write_text("x = 1\n")
    assert git_sha(tmp_path) == head


def test_git_sha_ignores_a_checkout_that_does_not_track_the_folder(tmp_path):
    """A wheel installed into a git-ignored venv inside the user's project: the project's
    commit (with -dirty) was recorded as xattn-video's."""
    if subprocess.run(["git", "--version"], capture_output=True).returncode:
        pytest.skip("no git")
    _git(tmp_path, "init", "-q")
    (tmp_path / ".gitignore").write_text(".venv/\n")
    (tmp_path / "app.py").write_text("x = 1\n")
    _git(tmp_path, "add", ".gitignore", "app.py")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a")
    (tmp_path / "app.py").write_text("x = 2\n")
    pkg = tmp_path / ".venv" / "lib" / "site-packages" / "xattn_video" / "pipelines"
    pkg.mkdir(parents=True)
    (pkg / "runinfo.py").write_text("")
    assert git_sha(pkg) is None
    assert git_sha(tmp_path).endswith("-dirty")  # the project itself still has its SHA


def test_environment_records_this_checkout():
    env = common.environment()
    assert env["git_sha"] == (os.environ.get("XATTN_VIDEO_GIT_SHA") or git_sha())
