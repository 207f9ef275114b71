"""The wheel installs one top-level package, ``xattn_video`` (pipelines/prompts/metrics live
under its namespace, never as generic top-level modules)."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        check=True, timeout=300,
    )  # fmt: skip
    (whl,) = out.glob("xattn_video-*.whl")
    return whl


def test_wheel_has_single_top_level_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"xattn_video"}
    for sub in ("kernels", "pipelines", "prompts", "metrics"):
        assert f"xattn_video/{sub}/__init__.py" in names


def test_wheel_declares_console_scripts(wheel):
    zf = zipfile.ZipFile(wheel)
    (ep,) = [n for n in zf.namelist() if n.endswith("entry_points.txt")]
    text = zf.read(ep).decode()
    assert "xattn-video = xattn_video.pipelines.cli:main" in text
