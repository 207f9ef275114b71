"""The package's shape: no import cycles, layers used in one direction, modules of a readable size.

Imports are read from the source with ``ast`` (nothing is imported), module-level and inside
functions alike (a lazy import is still a dependency), except ``if TYPE_CHECKING:`` blocks. The
folders and their module names come from ``pyproject.toml``'s package-dir mapping
(``pipelines/`` is ``xattn_video.pipelines``, ...). Importing a submodule also runs its parent
packages' ``__init__``; those implicit edges are not counted (Python handles them).
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 460
"""Longest module allowed (the developers' guide says "~450 lines with one job")."""
LONG_MODULES: dict[str, str] = {}
"""Modules allowed over ``MAX_LINES``, each with the reason (none today)."""


def _package_dirs() -> dict[str, Path]:
    """``[tool.setuptools] package-dir`` of pyproject.toml."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    dirs = data["tool"]["setuptools"]["package-dir"]
    return {pkg: ROOT / folder for pkg, folder in dirs.items()}


def _modules() -> dict[str, Path]:
    """Every module of the distribution: dotted name -> file."""
    out: dict[str, Path] = {}
    for pkg, folder in _package_dirs().items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("").parts
            if "__pycache__" in rel or "assets" in rel:
                continue
            out[".".join((pkg, *rel)).removesuffix(".__init__")] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that module ``name`` imports."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()

    def resolve(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if (hit := resolve(alias.name)) is not None:
                        found.add(hit)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    mod = ".".join([*base, child.module] if child.module else base)
                else:
                    mod = child.module or ""
                for alias in child.names:  # ``from pkg import submodule``
                    if f"{mod}.{alias.name}" in modules:
                        found.add(f"{mod}.{alias.name}")
                    elif (hit := resolve(mod)) is not None:
                        found.add(hit)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    found.discard(name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_the_walk_sees_the_whole_package(graph):
    assert {"xattn_video.attention", "xattn_video.kernels", "xattn_video.pipelines.cli",
            "xattn_video.pipelines.tiny.factory", "xattn_video.metrics",
            "xattn_video.prompts"} <= graph.keys()  # fmt: skip
    assert "xattn_video.pipelines.tiny.factory" in graph["xattn_video.pipelines.models"]


def test_cycle_finder_finds_a_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(g) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles(graph):
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_kernels_import_only_kernels(graph):
    bad = {
        m: sorted(d for d in deps if not d.startswith("xattn_video.kernels"))
        for m, deps in graph.items()
        if m.startswith("xattn_video.kernels")
    }
    assert not {m: d for m, d in bad.items() if d}


def test_outer_integration_does_not_reach_into_kernels(graph):
    """``pipelines``, ``metrics`` and ``prompts`` go through the op, never to the kernels."""
    outer = ("xattn_video.pipelines", "xattn_video.metrics", "xattn_video.prompts")
    bad = {
        m: sorted(d for d in deps if d.startswith("xattn_video.kernels"))
        for m, deps in graph.items()
        if m.startswith(outer)
    }
    assert not {m: d for m, d in bad.items() if d}


OP_LAYER = (
    "xattn_video.attention",  # the op
    "xattn_video.library",  # its torch.library registration
    "xattn_video.op_checks",  # its input checks
    "xattn_video.cost_model",  # times the kernels to decide sparse vs dense
    "xattn_video.qk_prep",  # the processors' fused q / k norm + RoPE
)


def test_only_the_op_layer_imports_kernels(graph):
    """Inside ``xattn_video`` only the op layer imports the kernels; processors, hook, stats,
    calibration, parallelism and the rest go through the op."""
    bad = {
        m: sorted(d for d in deps if d.startswith("xattn_video.kernels"))
        for m, deps in graph.items()
        if not m.startswith("xattn_video.kernels") and m not in OP_LAYER
    }
    assert not {m: d for m, d in bad.items() if d}


def test_no_module_is_too_long():
    long = {}
    for name, path in _modules().items():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES and name not in LONG_MODULES:
            long[name] = n
    assert not long, f"modules over {MAX_LINES} lines (split them by job): {long}"
