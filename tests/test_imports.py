"""The shape of the code base, read from the source: every module imports, no module imports
a private name of another, imports among the project's modules form no cycle, and the
layers point one way (``launch -> parties -> mpc -> protocols``)."""

from __future__ import annotations

import ast
import functools
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("launch", "parties", "mpc", "protocols")
LAYERS = {package: depth for depth, package in enumerate(PACKAGES)}  # a layer imports only deeper ones


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources(folders: tuple[str, ...]) -> dict[str, Path]:
    return {_module_name(path): path for folder in folders for path in sorted((ROOT / folder).rglob("*.py"))}


MODULES = _sources(PACKAGES)
SOURCES = _sources(PACKAGES + ("bench", "tests"))  # benchmarks and tests keep to public names too


@functools.cache
def _tree(module: str) -> ast.Module:
    path = SOURCES[module]
    return ast.parse(path.read_text(), str(path))


@functools.cache
def _imports(module: str) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import in ``module``, at any
    depth (a function-level import still ties the two modules together)."""
    path = SOURCES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((submodule, None, node.lineno) if submodule in SOURCES
                             else (base, alias.name, node.lineno))
    return found


@functools.cache
def _private_uses(module: str, source: str | None = None) -> list[tuple[str, str, int]]:
    """(other project module, private name, line) for every ``alias._name`` in ``module``
    (or in ``source``, read as ``module``) whose alias names another of the project's
    modules (``from protocols import ot`` ... ``ot._name``)."""
    tree = _tree(module) if source is None else ast.parse(source)
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update({alias.asname: alias.name for alias in node.names if alias.asname and alias.name in SOURCES})
        elif isinstance(node, ast.ImportFrom) and node.module:
            aliases.update({alias.asname or alias.name: f"{node.module}.{alias.name}" for alias in node.names
                            if f"{node.module}.{alias.name}" in SOURCES})
    return [(aliases[node.value.id], node.attr, node.lineno) for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
            and node.attr.startswith("_") and not node.attr.startswith("__") and aliases[node.value.id] != module]


def _edges() -> dict[str, set[str]]:
    return {module: {target for target, _, _ in _imports(module) if target in MODULES and target != module}
            for module in MODULES}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return components


def test_the_scan_sees_the_project() -> None:
    assert {"launch.config", "parties.party", "mpc.session", "protocols.crypten_hooks", "protocols.prg"} <= set(MODULES)
    assert "protocols.registry" in _edges()["protocols.suite"]


@pytest.mark.parametrize("module", sorted(name for name in MODULES if not name.endswith("__main__")))
def test_every_module_imports(module: str) -> None:
    importlib.import_module(module)


def test_no_import_cycles_among_the_projects_modules() -> None:
    assert _cycles(_edges()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_a_private_name_of_another() -> None:
    offending = [f"{module}:{line} imports {name} from {target}"
                 for module in SOURCES for target, name, line in _imports(module)
                 if target in SOURCES and target != module and name is not None and name.startswith("_")]
    offending += [f"{module}:{line} uses {target}.{name}" for module in SOURCES for target, name, line in _private_uses(module)]
    assert offending == []


def test_the_private_name_scan_sees_attribute_uses() -> None:
    source = "from protocols import ot\nimport protocols.prg as prg\not.random_scalar()\not._hidden\nprg._x = 1\n"
    assert _private_uses("mpc.session", source) == [("protocols.ot", "_hidden", 4), ("protocols.prg", "_x", 5)]


def test_layers_import_only_downwards() -> None:
    upward = [f"{module}:{line} imports {target}"
              for module in MODULES for target, _, line in _imports(module)
              if target.partition(".")[0] in LAYERS
              and LAYERS[target.partition(".")[0]] < LAYERS[module.partition(".")[0]]]
    assert upward == []
