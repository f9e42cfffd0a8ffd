"""The package's modules import one another without a circle (each floor imports only lower
ones): read from the source, so a circle is found before it bites at import time."""

from __future__ import annotations

import ast

from builders import ROOT


def module_imports(toplevel_only: bool) -> dict[str, set[str]]:
    """{module: the geotranslate modules it imports}; imports under ``if TYPE_CHECKING:`` are
    for annotations only and do not count."""
    files = {}
    for path in (ROOT / "geotranslate").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def nodes(node: ast.AST):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", "") == "TYPE_CHECKING":
                continue
            yield child
            if not toplevel_only:
                yield from nodes(child)

    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        graph[module] = set()
        for node in nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files
                         else node.module for a in node.names]
            else:
                continue
            graph[module] |= {n for n in names if n in files and n != module}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while (w := stack.pop()) != v:
                group.append(w)
            if group:
                found.append(sorted([v, *group]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_in_a_circle():
    graph = module_imports(toplevel_only=True)
    assert "geotranslate.raster.sources" in graph["geotranslate.raster.io"]  # it reads them
    assert circles(graph) == []
    # the raster floor stays free of circles through imports inside functions too
    deep = module_imports(toplevel_only=False)
    assert [c for c in circles(deep) if any(".raster." in m for m in c)] == []


def test_a_circle_is_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
