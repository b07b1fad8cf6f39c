"""The package's shape: dependencies between subpackages point one way, each imports on its own,
and no module grows past one concept (400 lines)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hfspeech"
SUBPACKAGES = sorted(path.parent.name for path in PACKAGE.glob("*/__init__.py"))


def _imported_packages(path: Path, root: Path = PACKAGE) -> set[str]:
    """The hfspeech subpackages (or top-level modules) a module imports, lazily or not."""
    parts = path.relative_to(root).parts
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(parts[:-1])[: len(parts) - node.level]
            target = base + (node.module.split(".") if node.module else [])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hfspeech."):
            target = node.module.split(".")[1:]
        elif isinstance(node, ast.Import):
            target = next((alias.name.split(".")[1:] for alias in node.names if alias.name.startswith("hfspeech.")), [])
        else:
            continue
        if target:
            imported.add(target[0])
    return imported


def dependency_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        owner = parts[0] if len(parts) > 1 else path.stem
        graph.setdefault(owner, set()).update(_imported_packages(path) - {owner})
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Edges ``a -> b`` of the graph from which ``a`` is reached again (the package root excepted)."""

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            for successor in graph.get(todo.pop(), ()):
                if successor == goal:
                    return True
                if successor not in seen:
                    seen.add(successor)
                    todo.append(successor)
        return False

    return sorted((a, b) for a in graph for b in graph[a] if a != "__init__" and b in graph and reaches(b, a))


def test_no_package_imports_a_package_that_imports_it_back():
    graph = dependency_graph()
    assert "processing" in graph["decoding"] and "data" in graph["processing"]  # the graph is read
    assert not import_cycles(graph), f"import cycles between packages: {import_cycles(graph)}"


def test_the_cycle_check_finds_lazy_and_indirect_cycles(tmp_path):
    module = tmp_path / "late.py"
    module.write_text("def f():\n    from ..decoding import inference\n")
    assert _imported_packages(module, root=tmp_path.parent) == {"decoding"}  # an import inside a function counts
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [("a", "b"), ("b", "c"), ("c", "a")]


def test_each_subpackage_imports_alone_in_a_fresh_interpreter():
    processes = {name: subprocess.Popen([sys.executable, "-c", f"import hfspeech.{name}"], stderr=subprocess.PIPE,
                                        text=True) for name in SUBPACKAGES}
    failures = {name: process.communicate()[1][-1500:] for name, process in processes.items()}
    assert set(SUBPACKAGES) >= {"data", "processing", "labels", "modeling", "training", "decoding", "sharing"}
    assert not {name: error for name, error in failures.items() if processes[name].returncode}, failures


def test_modules_stay_small_and_need_no_late_imports():
    too_long = {str(path.relative_to(PACKAGE)): n for path in PACKAGE.rglob("*.py")
                if (n := len(path.read_text().splitlines())) > 400}
    assert not too_long, f"modules over 400 lines (split them by concept): {too_long}"
    late = [str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py") if "noqa: E402" in path.read_text()]
    assert not late, f"imports after code (an import cycle worked around?): {late}"
