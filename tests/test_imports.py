"""The import graph of viworks/ has no cycle (read from the sources with ``ast``).

Two graphs: the imports that run when a module is imported (module level, class bodies,
``try``/``if`` blocks; not ``if TYPE_CHECKING:``, not function bodies), and the same
with the imports inside functions added (what a command pulls in when it runs).
"""

from __future__ import annotations

import ast
import os
import pathlib
import textwrap
from collections.abc import Iterable, Iterator

from twisted.trial import unittest

import viworks

PACKAGE = pathlib.Path(viworks.__file__).parent

Graph = dict[str, set[str]]

def _under(module: str, prefixes: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def modules(package: pathlib.Path) -> dict[str, pathlib.Path]:
    """Every module of ``package`` (a directory) by dotted name: ``__init__`` as the package."""
    found = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(nodes: Iterable[ast.AST], lazy: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements among ``nodes`` and in them: in function bodies only when
    ``lazy``; never those that only type checkers see."""
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _imports(node.orelse, lazy)
        elif lazy or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _imports(ast.iter_child_nodes(node), lazy)


def _known(name: str, known: dict[str, pathlib.Path]) -> str | None:
    """``name`` or the nearest package above it that is one of ours (None: not ours)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(package: pathlib.Path, lazy: bool = False) -> Graph:
    """Module -> the modules of ``package`` it imports (``from p import m`` of a module
    ``m`` imports ``p.m``; any other name, ``p`` itself)."""
    known = modules(package)
    graph: Graph = {}
    for module, path in known.items():
        here = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets = set()
        for node in _imports([ast.parse(path.read_text(), str(path))], lazy):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parts = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                names = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                    for alias in node.names
                ]
            targets.update(t for n in names if (t := _known(n, known)) and t != module)
        graph[module] = targets
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def reachable(graph: Graph, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


class GraphReaderTests(unittest.TestCase):
    """The reader finds the cycles it is meant to (so that the tests below can fail)."""

    def package(self, files: dict[str, str]) -> pathlib.Path:
        root = pathlib.Path(self.mktemp()) / "pkg"
        for name, text in {"__init__.py": "", **files}.items():
            path = root / name
            os.makedirs(path.parent, exist_ok=True)
            path.write_text(textwrap.dedent(text))
        return root

    def test_cycle_at_import_time(self) -> None:
        """Module-level imports in both directions (through ``from pkg import m``, a
        relative import and a ``try`` block) are a cycle; a function's import is not,
        until lazy imports are read too; a ``TYPE_CHECKING`` import never is."""
        root = self.package(
            {
                "a.py": "from pkg import b\n",
                "b.py": "try:\n    from .sub import c\nexcept ImportError:\n    pass\n",
                "sub/__init__.py": "",
                "sub/c.py": "import pkg.a\n",
                "d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.e\n",
                "e.py": "def f():\n    from pkg import d\n",
            }
        )
        self.assertEqual(cycles(import_graph(root)), [["pkg.a", "pkg.b", "pkg.sub.c"]])
        graph = import_graph(root, lazy=True)
        self.assertEqual(graph["pkg.e"], {"pkg.d"})
        self.assertEqual(graph["pkg.d"], set())
        self.assertEqual(cycles(graph), [["pkg.a", "pkg.b", "pkg.sub.c"]])

    def test_names_from_a_package(self) -> None:
        """``from pkg import name`` of a non-module name is an import of the package."""
        root = self.package({"a.py": "from pkg import VERSION, b\n", "b.py": ""})
        self.assertEqual(import_graph(root)["pkg.a"], {"pkg", "pkg.b"})


class ViworksImportGraphTests(unittest.TestCase):
    def test_no_cycle_at_import_time(self) -> None:
        """No module of viworks/ is on an import cycle at import time."""
        graph = import_graph(PACKAGE)
        self.assertIn("viworks.cli.parser", graph)
        self.assertEqual(cycles(graph), [])

    def test_cli_and_dev(self) -> None:
        """The CLI and the dev stack form no cycle, counting the imports their functions
        make: ``viworks dev`` imports the stack, the stack imports nothing of the CLI
        (token creation is the backend's, ``viworks.backend.tokens``)."""
        graph = import_graph(PACKAGE, lazy=True)
        self.assertIn("viworks.dev", reachable(graph, "viworks.cli.dev"))
        self.assertEqual(
            [m for m in reachable(graph, "viworks.dev") if _under(m, ["viworks.cli"])], []
        )
        mine = [
            c for c in cycles(graph) if any(_under(m, ["viworks.cli", "viworks.dev"]) for m in c)
        ]
        self.assertEqual(mine, [])
