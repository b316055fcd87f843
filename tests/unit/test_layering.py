"""The layering of docs/architecture.md, checked on every import statement (top level or inside functions)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lightabaco"


def _imports(path: Path) -> set[str]:
    """Absolute module names imported by a file; relative imports are resolved against its package."""
    package = list(path.relative_to(PACKAGE.parent).parent.parts)
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names.add(node.module or "")
            else:
                base = package[: len(package) - (node.level - 1)]
                names.add(".".join(base + ([node.module] if node.module else [])))
    return names


def _files(sub: str) -> list[Path]:
    return sorted((PACKAGE / sub).rglob("*.py"))


@pytest.mark.parametrize("path", _files("sandbox"), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_sandbox_imports_nothing_else_of_lightabaco(path: Path) -> None:
    outside = {n for n in _imports(path) if n.split(".")[0] == "lightabaco" and
               not n.startswith("lightabaco.sandbox")}
    assert not outside, f"{path.name} imports {outside}: the sandbox package must stay usable on its own"
    third_party = {n.split(".")[0] for n in _imports(path)} - set(sys.stdlib_module_names) - {
        "__future__", "lightabaco", "zstandard"}  # zstandard: zstd layers, until Python 3.14's own
    assert not third_party, f"{path.name} needs {third_party}: the sandbox is standard library only"


@pytest.mark.parametrize("path", _files("http"), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_http_never_reaches_the_store(path: Path) -> None:
    bad = {n for n in _imports(path) if n.startswith("lightabaco.store") or n.split(".")[0] == "peewee"}
    assert not bad, f"{path.name} imports {bad}: the HTTP layer goes through lightabaco.core"


def test_actor_helper_needs_only_the_standard_library() -> None:
    third_party = {n.split(".")[0] for n in _imports(PACKAGE / "actor.py")} - {"cloudpickle"}
    assert third_party <= set(sys.stdlib_module_names) | {"__future__"}, third_party
