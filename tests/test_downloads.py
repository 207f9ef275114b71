"""The offline switch and cache root that the prompt and LPIPS downloads share."""

from __future__ import annotations

import pytest

from xattn_video import downloads
from xattn_video.metrics import lpips_weights
from xattn_video.prompts import fetch


@pytest.mark.parametrize(
    ("value", "want"),
    [("1", True), (" TRUE ", True), ("yes", True), ("On", True), ("0", False), ("off", False),
     ("false", False), ("", False)],
)  # fmt: skip
def test_one_offline_switch_for_both_downloads(monkeypatch, value, want):
    monkeypatch.setenv("XATTN_VIDEO_OFFLINE", value)
    assert downloads.offline() is want
    assert lpips_weights.offline() is want  # the LPIPS fetch reads the same switch
    assert fetch.ENV_OFFLINE == lpips_weights.ENV_OFFLINE == "XATTN_VIDEO_OFFLINE"


def test_both_caches_live_under_one_root(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert fetch.cache_dir() == tmp_path / "xattn-video" / "prompts"
    assert lpips_weights.cache_dir() == tmp_path / "xattn-video" / "lpips"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert downloads.cache_root() == tmp_path / "home" / ".cache" / "xattn-video"
