"""The suite's own layout: what several test modules build lives in builders.py (fixtures in
conftest.py), so no module of tests/ or tools/ imports a test module or conftest.py."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parent
TOOLS = TESTS.parent / "tools"


def imports(tree: ast.AST) -> Iterator[tuple[ast.stmt, set[str]]]:
    """Every import statement anywhere in the tree, with each dotted part of what it names
    (``from tests import test_data`` names tests and test_data)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield node, {part for alias in node.names for part in alias.name.split(".")}
        elif isinstance(node, ast.ImportFrom):
            parts = set((node.module or "").split("."))
            yield node, parts | {alias.name for alias in node.names}


def test_no_module_imports_a_test_module_or_conftest():
    test_modules = {path.stem for path in TESTS.glob("test_*.py")} | {"conftest"}
    assert "test_layout" in test_modules and len(test_modules) > 10
    offences = []
    for path in sorted([*TESTS.glob("*.py"), *TOOLS.glob("*.py")]):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node, parts in imports(tree):
            if parts & test_modules:
                offences.append(f"{path.relative_to(TESTS.parent)}:{node.lineno}: "
                                f"{ast.unparse(node)}")
    assert offences == [], "shared builders belong in tests/builders.py:\n" + "\n".join(offences)
