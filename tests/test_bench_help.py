"""Every script of ``benchmarks/`` prints its usage for ``--help`` (on any machine: the GPU
checks come after the command line is read)."""

from __future__ import annotations

import runpy
import sys

import pytest

from ._benchmarks import BENCHMARKS

SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_prints_the_usage(script, monkeypatch, capsys):
    """probe_op_ab read its arguments by hand: --help was int('--help'), a ValueError."""
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    monkeypatch.setattr(sys, "path", [str(BENCHMARKS), *sys.path])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")
