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


def test_both_downloads_name_the_fix_when_the_environment_has_no_pip(monkeypatch, tmp_path):
    """``uv venv`` / ``venv --without-pip`` environments: the prompt and LPIPS fetches say that
    pip is missing and how to get it (they ended in the subprocess's "No module named pip" and
    "Offline? ...")."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pip" else real(name, *a))  # fmt: skip
    monkeypatch.setattr(fetch.subprocess, "run", lambda *a, **k: pytest.fail("ran pip"))
    with pytest.raises(RuntimeError, match="has no pip.*ensurepip"):
        downloads.pip_download("x")
    with pytest.raises(RuntimeError, match="has no pip"):
        fetch.download(fetch.DATA_FILES["VBench_full_info.json"])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for env in ("XATTN_VIDEO_OFFLINE", "XATTN_VIDEO_LPIPS_WEIGHTS", "TORCH_HOME"):
        monkeypatch.delenv(env, raising=False)
    with pytest.raises(lpips_weights.LPIPSWeightsMissing, match="has no pip"):
        lpips_weights.resolve_weights(log=lambda m: None)
