"""The wheel installs one top-level package, ``xattn_video`` (pipelines/prompts/metrics live
under its namespace, never as generic top-level modules), with the trained tiny DiT's weights."""

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
    for sub in ("kernels", "pipelines", "pipelines/tiny", "prompts", "metrics"):
        assert f"xattn_video/{sub}/__init__.py" in names


def test_wheel_ships_the_trained_tiny_dit(wheel, tmp_path):
    """Every file ``load_tiny_pipeline`` reads is package data, and the unpacked copy loads
    into the same weights as the repo's (the figures, *.png, stay in the repo)."""
    import torch

    from xattn_video.pipelines.tiny.pipeline import ASSETS_DIR, load_tiny_pipeline

    prefix = "xattn_video/pipelines/tiny/assets/tiny_dit/"
    zf = zipfile.ZipFile(wheel)
    shipped = {n[len(prefix) :] for n in zf.namelist() if n.startswith(prefix)}
    in_repo = {
        p.relative_to(ASSETS_DIR).as_posix()
        for p in ASSETS_DIR.rglob("*")
        if p.is_file() and p.suffix != ".png"
    }
    assert shipped == in_repo
    zf.extractall(tmp_path, [prefix + n for n in shipped])
    got = load_tiny_pipeline(tmp_path / prefix).transformer.state_dict()
    ref = load_tiny_pipeline().transformer.state_dict()
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)


def test_wheel_declares_console_scripts(wheel):
    zf = zipfile.ZipFile(wheel)
    (ep,) = [n for n in zf.namelist() if n.endswith("entry_points.txt")]
    text = zf.read(ep).decode()
    assert "xattn-video = xattn_video.pipelines.cli:main" in text


def test_wheel_declares_its_license_as_spdx_and_ships_the_text(wheel):
    """``project.license`` as a TOML table is deprecated by setuptools (builds stop working
    after 2027-02-18); the SPDX string needs setuptools >= 77 and ships LICENSE."""
    zf = zipfile.ZipFile(wheel)
    (meta,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
    headers = zf.read(meta).decode().split("\n\n", 1)[0].splitlines()
    assert "License-Expression: Apache-2.0" in headers and "License-File: LICENSE" in headers
    (text,) = [n for n in zf.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
    assert zf.read(text) == (ROOT / "LICENSE").read_bytes()


def test_requires_python_is_no_lower_than_any_dependency_needs():
    """pyproject said >=3.10, but diffusers 0.42 needs 3.11: pip on 3.10 failed with "No
    matching distribution found for diffusers", which does not name the Python version."""
    import importlib.metadata
    import re
    import tomllib

    def lower_bound(spec: str) -> tuple[int, ...]:
        found = re.search(r">=\s*([\d.]+)", spec or "")
        return tuple(int(x) for x in found.group(1).split(".")[:2]) if found else (0,)

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    ours = lower_bound(project["requires-python"])
    for dep in ("diffusers", "torch", "accelerate", "lpips", "imageio"):
        theirs = lower_bound(importlib.metadata.metadata(dep)["Requires-Python"])
        assert ours >= theirs, f"{dep} needs Python {theirs}, requires-python says {ours}"
