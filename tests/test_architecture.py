"""The package's structure, read from the source with ast (nothing is imported or run):

* no import cycle between the package's modules, function-level imports included;
* nothing outside the book layer (workflow, viz, widgets, diagnostics) imports the book layer.

A package's ``__init__`` importing its own submodules, and a submodule importing its package,
are not edges (Python resolves those without a cycle). The checker is tested on small fake
packages first, so it can fail.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "transcam_nb"
BOOK_LAYER = {"workflow", "viz", "widgets", "diagnostics"}


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """``{module: {modules of the same package it imports}}`` (dotted names, ``__init__`` dropped)."""
    package_dir = Path(package_dir)
    pkg = package_dir.name
    files = {".".join(p.relative_to(package_dir.parent).with_suffix("").parts): p for p in package_dir.rglob("*.py")}
    mods = {m.removesuffix(".__init__"): p for m, p in files.items()}

    def resolve(name: str) -> str | None:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in mods:
                return ".".join(parts[:i])
        return None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        is_pkg = path.name == "__init__.py"
        base = m if is_pkg else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    prefix = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                targets = [f"{prefix}.{a.name}" for a in node.names] + [prefix]
            else:
                continue
            for t in targets:
                if t.split(".")[0] != pkg:
                    continue
                r = resolve(t)
                if r and r != m and not (is_pkg and r.startswith(m + ".")) and not m.startswith(r + "."):
                    graph[m].add(r)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """``(library module, book-layer module)`` pairs where the first imports the second."""
    book = {m for m in graph if m.split(".")[-1] in BOOK_LAYER}
    return sorted((m, t) for m in graph if m not in book for t in graph[m] & book)


# ------------------------------------------------------------------------------ the checker can fail
def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root / "fakepkg"


def test_checker_finds_a_function_level_cycle_and_an_upward_import(tmp_path):
    pkg = _write(tmp_path, {
        "fakepkg/__init__.py": "from . import a  # a package importing its submodule is no edge\n",
        "fakepkg/a.py": "from .b import thing\n",
        "fakepkg/b.py": "def thing():\n    from . import a  # function-level: still an edge\n    return a\n",
        "fakepkg/c.py": "import fakepkg.workflow\n",
        "fakepkg/workflow.py": "from .c import x\n",
        "fakepkg/sub/__init__.py": "from .d import y\n",
        "fakepkg/sub/d.py": "from .. import sub\nfrom ..viz import plot\n",
        "fakepkg/viz.py": "import numpy\n",
    })
    g = import_graph(pkg)
    assert g["fakepkg"] == set()
    assert g["fakepkg.sub.d"] == {"fakepkg.viz"}  # its own package is no edge; the book layer is
    cycles = import_cycles(g)
    assert ["fakepkg.a", "fakepkg.b"] in cycles
    assert ["fakepkg.c", "fakepkg.workflow"] in cycles
    assert upward_imports(g) == [("fakepkg.c", "fakepkg.workflow"), ("fakepkg.sub.d", "fakepkg.viz")]


def test_checker_passes_a_clean_package(tmp_path):
    pkg = _write(tmp_path, {
        "fakepkg/__init__.py": "from .a import f\n",
        "fakepkg/a.py": "from .b import g\n",
        "fakepkg/b.py": "import os\n",
        "fakepkg/workflow.py": "from .a import f\nfrom . import viz\n",
        "fakepkg/viz.py": "from .b import g\n",
    })
    g = import_graph(pkg)
    assert import_cycles(g) == [] and upward_imports(g) == []


# ------------------------------------------------------------------------------ the package
@pytest.fixture(scope="module")
def graph():
    return import_graph(PACKAGE)


def test_no_import_cycle(graph):
    cycles = import_cycles(graph)
    assert not cycles, "import cycles (function-level imports count): " + "; ".join(" <-> ".join(c) for c in cycles)


def test_nothing_below_the_book_layer_imports_it(graph):
    up = upward_imports(graph)
    assert not up, "library modules importing the book layer: " + ", ".join(f"{a} -> {b}" for a, b in up)


def test_the_graph_is_read_at_all(graph):
    # guards the checker against silently reading nothing (a moved package, a renamed folder)
    assert len(graph) > 20
    assert "transcam_nb.config" in graph["transcam_nb.pipeline.context"]
