"""The shape of the package, read from the source: no import cycle, one way in for command lines."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "parallel_r1"


def modules() -> dict[str, Path]:
    """{dotted name: file} of every module of the package (a package is its ``__init__``)."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_package(name: str, mods: dict[str, Path]) -> bool:
    return name in mods and mods[name].name == "__init__.py"


def imports_of(name: str, mods: dict[str, Path]) -> set[str]:
    """Modules of the package that ``name`` imports anywhere (module level, functions, relative)."""
    tree = ast.parse(mods[name].read_text(encoding="utf-8"), filename=str(mods[name]))
    package = name if _is_package(name, mods) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import submodule`
    edges = set()
    for target in found:
        # `import a.b.c` or `from a.b import func`: the deepest module of the package it names
        while target and target not in mods:
            target = target.rpartition(".")[0]
        if target.startswith(PACKAGE) and target != name:
            edges.add(target)
    return edges


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, mods) for name in mods}


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = set()
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.add(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.append(comp)
    return out


def test_cycle_finder_finds_a_cycle_and_nothing_else():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [{"a", "b", "c"}]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_import_graph_sees_relative_and_lazy_imports():
    graph = import_graph()
    # module level, relative: `from .io import read_jsonl`
    assert "parallel_r1.io" in graph["parallel_r1.analysis"]
    # inside a function, two levels up: `from ..evaluate import evaluate` in commands/eval.run
    assert "parallel_r1.evaluate" in graph["parallel_r1.commands.eval"]
    # `from .. import grading` names a module, not the package
    assert "parallel_r1.grading" in graph["parallel_r1.commands.score"]


def test_no_import_cycle():
    graph = import_graph()
    found = cycles(graph)
    assert found == [], f"import cycles: {[sorted(c) for c in found]}"


def _allowed_to_parse_argv(name: str) -> bool:
    return name == f"{PACKAGE}.cli" or name.startswith(f"{PACKAGE}.commands")


def test_only_commands_build_argument_parsers():
    offenders = []
    for name, path in modules().items():
        if _allowed_to_parse_argv(name):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            uses_argparse = (isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names)) or (
                isinstance(node, ast.ImportFrom) and node.module == "argparse"
            )
            builds_parser = (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute | ast.Name)
                and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("ArgumentParser", "add_argument")
            )
            if uses_argparse or builds_parser:
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == [], f"argument parsing outside commands/ and cli.py: {offenders}"


def test_library_modules_never_import_the_cli():
    """The CLI (``cli``, ``commands``) sits on the library; nothing in the library reaches back."""
    graph = import_graph()
    offenders = {
        (name, dep)
        for name, deps in graph.items()
        if not _allowed_to_parse_argv(name)
        for dep in deps
        if _allowed_to_parse_argv(dep)
    }
    assert offenders == set(), f"library modules importing the CLI: {sorted(offenders)}"


def test_no_test_imports_another_test():
    """Shared test code lives in ``conftest.py`` or ``tests/helpers/`` (tests/README.md)."""
    offenders = []
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [(path.name, n) for n in names if n.split(".")[0].startswith("test_")]
    assert offenders == [], f"tests importing other tests: {offenders}"


def test_the_test_map_lists_every_module():
    """tests/README.md names the test files of every module; a new module adds its line."""
    listed = set(re.findall(r"^\| `([\w.]+)` \|", (Path(__file__).parent / "README.md").read_text(), re.M))
    wanted = {name.removeprefix(PACKAGE + ".") for name in modules() if name != PACKAGE}
    assert wanted - listed == set(), f"modules missing from tests/README.md: {sorted(wanted - listed)}"
    assert listed - wanted == set(), f"tests/README.md lists modules that do not exist: {sorted(listed - wanted)}"
