"""The layering of docs/architecture.md, checked on every import statement (top level, inside functions,
under TYPE_CHECKING): each folder imports only what its row of LAYERS allows, and there is no import
cycle between modules nor between folders."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lightabaco"

# part -> the other parts of lightabaco it may import. A part is a folder (lightabaco/abaco/) or a module
# at the root (lightabaco/server.py). Keep in step with the table in docs/architecture.md.
LAYERS: dict[str, set[str]] = {
    "sandbox": set(),                                   # a library of its own (stdlib + zstandard)
    "images": {"sandbox"},                              # the image store: a library too
    "build": {"sandbox", "images"},                     # the Containerfile builder, a client of both
    "store": {"config", "ids"},                         # peewee models, the database, the mailbox
    "protocol": set(),                                  # Abaco's errors, fields, display forms
    "sharing": {"protocol", "store", "sandbox", "config", "ids"},  # who may do what (sandbox: netpolicy)
    "abaco": {"sharing", "protocol", "store", "sandbox", "images", "config", "ids"},  # the lifecycle
    "automation": {"abaco", "sharing", "protocol", "store", "sandbox", "config", "ids"},  # events, cron
    "queries": {"abaco", "automation", "sharing", "protocol", "store", "config", "ids"},  # search, admin
    "http": {"abaco", "sharing", "queries", "protocol", "web", "config", "ids",
             "images"},                                 # images.credential only: /v2/ checks the worker credential; never store, never automation
    "web": {"abaco", "sharing", "queries", "protocol", "config", "ids"},  # dashboard, metrics, OpenAPI
    "workers": {"abaco", "automation", "store", "sandbox", "images", "protocol", "config", "ids",
                "slurm"},                               # slurm.identity: where a worker host runs
    "slurm": {"store", "images", "config", "ids"},     # Slurm pilots: sbatch/scancel, pilot job side
    "server": {"abaco", "automation", "sharing", "http", "workers", "store", "endpoint", "config", "ids",
               "slurm"},
    "cli": {"server", "endpoint", "abaco", "sharing", "protocol", "store", "sandbox", "images", "build", "config", "ids"},
    "bench": {"sandbox", "images", "build", "config", "ids"},
    "config": set(),
    "endpoint": set(),                                  # where a running server listens (<home>/run)
    "ids": set(),
    "actor": set(),                                     # copied into images: standard library only
    "__main__": {"cli"},
    "__init__": set(),
}
# Third-party packages a part may use besides the standard library (None: not checked).
THIRD_PARTY: dict[str, set[str] | None] = {
    "sandbox": {"zstandard"},   # zstd layers, until Python 3.14's own
    "images": {"zstandard"},
    "build": set(),
    "protocol": set(),
    "actor": {"cloudpickle"},   # optional inside images
    "ids": {"hashids"},
}
NEVER: dict[str, set[str]] = {"http": {"peewee"}, "web": {"peewee"}}  # the HTTP edge goes through the lifecycle


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _raw_imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every import statement, relative ones resolved against the file's package."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                base = ".".join(package[: len(package) - (node.level - 1)] + ([node.module] if node.module else []))
            out.append((base, [alias.name for alias in node.names]))
    return out


def _targets(path: Path) -> set[str]:
    """The lightabaco modules a file imports: `from P import m` counts as importing P.m when m is a
    module (not P's __init__), otherwise P; `import a.b.c` counts as a.b.c."""
    found: set[str] = set()
    for base, names in _raw_imports(path):
        if base.split(".")[0] != "lightabaco":
            continue
        subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
        found.update(subs)
        if len(subs) < len(names) or not names:
            mod = base
            while mod and mod not in MODULES:
                mod = mod.rpartition(".")[0]
            if mod:
                found.add(mod)
    found.discard(_module_name(path))
    return found


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


GRAPH: dict[str, set[str]] = {m: _targets(p) for m, p in MODULES.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; returns the components of more than one node (the cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
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
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_every_part_has_a_row() -> None:
    parts = {_part(m) for m in MODULES}
    assert parts <= set(LAYERS), f"add {parts - set(LAYERS)} to LAYERS (and to docs/architecture.md)"


@pytest.mark.parametrize("module", sorted(MODULES), ids=str)
def test_imports_follow_the_layers(module: str) -> None:
    part = _part(module)
    allowed = LAYERS[part] | {part}
    bad = sorted(t for t in GRAPH[module] if _part(t) not in allowed)
    assert not bad, f"{module} ({part}) imports {bad}; {part} may import only {sorted(LAYERS[part])}"
    top = {base.split(".")[0] for base, _ in _raw_imports(MODULES[module])} - {"lightabaco", "__future__"}
    never = top & NEVER.get(part, set())
    assert not never, f"{module} imports {never}: see docs/architecture.md"
    extra = THIRD_PARTY.get(part)
    if extra is not None:
        outside = top - set(sys.stdlib_module_names) - extra
        assert not outside, f"{module} needs {outside}: {part} may use only the standard library and {extra}"


def test_no_import_cycle_between_modules() -> None:
    cycles = strongly_connected(GRAPH)
    assert not cycles, f"import cycles (deferred imports count): {cycles}"


def test_no_import_cycle_between_folders() -> None:
    folders: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        folders.setdefault(_part(module), set()).update(_part(t) for t in targets if _part(t) != _part(module))
    cycles = strongly_connected(folders)
    assert not cycles, f"folders that import each other: {cycles}"


def test_the_cycle_finder_finds_cycles() -> None:
    """The two tests above can fail: a deferred import inside a function makes an edge like any other."""
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set(), "c": {"c"}}) == []
    source = "def f():\n    from lightabaco.abaco import actors\n"
    tree = ast.parse(source)
    assert any(isinstance(n, ast.ImportFrom) and n.module == "lightabaco.abaco" for n in ast.walk(tree))
    assert "lightabaco.abaco.actors" in GRAPH["lightabaco.abaco.messages"]
