"""The test suite's own start-up check (tests/conftest.py): a package imported from the repo's
source folder without the installed layout stops pytest with one clear message instead of one
collection error per test module."""

import pytest

from tests import conftest


def _raising(name):
    def import_module(mod):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    return import_module


def test_the_installed_layout_passes():
    assert conftest.layout_problem() is None


def test_a_source_folder_without_pipelines_names_the_folder_and_the_fix(monkeypatch):
    import xattn_video

    monkeypatch.setattr(conftest.importlib, "import_module", _raising("xattn_video.pipelines"))
    msg = conftest.layout_problem()
    assert xattn_video.__path__[0] in msg
    assert "pip install -e '.[dev]'" in msg
    assert "python -P -m pytest --import-mode=append" in msg
    with pytest.raises(pytest.UsageError, match="cannot import xattn_video.pipelines"):
        conftest.pytest_configure(None)


def test_a_missing_package_says_to_install_it(monkeypatch):
    monkeypatch.setattr(conftest.importlib, "import_module", _raising("xattn_video"))
    assert conftest.layout_problem() == (
        "xattn_video is not installed: pip install -e '.[dev]' (see the README)"
    )


def test_a_missing_dependency_is_not_mistaken_for_the_layout(monkeypatch):
    monkeypatch.setattr(conftest.importlib, "import_module", _raising("diffusers"))
    with pytest.raises(ModuleNotFoundError, match="diffusers"):
        conftest.layout_problem()
