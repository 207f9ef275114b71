"""A fresh clone must test green on its own: no test reads machine paths or data outside the
repository, and ``.ci/run`` runs the README's set-up lines verbatim in a new venv."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = re.compile(r"/work/|/root/|/home/|\.\./shared|[\"']shared[\"']|/tmp/")


def test_tests_use_no_machine_paths_or_sibling_data() -> None:
    offenders = []
    for path in sorted((REPO / "tests").glob("*.py")):
        if path.name == Path(__file__).name:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if FORBIDDEN.search(line):
                offenders.append(f"{path.name}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_ci_runs_the_readme_setup_lines_in_a_fresh_venv() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    setup = readme[readme.index("## Set up") :].split("\n## ", 1)[0]
    lines = setup.splitlines()
    assert 'pip install -e ".[dev]"' in lines and "pytest" in lines
    assert any(line.startswith("python3 -m venv ") for line in lines)
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "INSTALL='pip install -e \".[dev]\"'" in ci and "TEST='pytest'" in ci
    assert '-m venv "$venv"' in ci and '. "$venv/bin/activate"' in ci
