"""The package's shape: layers by role, imports only downwards, no cycles, no module shadowed by a function."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import matgl_cdssl

PACKAGE = Path(matgl_cdssl.__file__).parent

#: Each module's layer: a module may import modules of its own layer or of lower ones, never higher ones.
LAYERS = {
    "_backend": 0,  # with _dgl_shards beside it, a private detail of its DGL backend
    "data": 1,
    "method": 2,
    "hub": 3,
    "apps": 4,
    "analysis": 4,
    "cli": 5,
}


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (``matgl_cdssl.data._cache``), the package root excluded."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name != "matgl_cdssl":
            found[name] = path
    return found


def _imports(name: str, path: Path) -> set[str]:
    """The package modules that ``name`` imports anywhere in its file (inside functions too)."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            targets = [module, *(f"{module}.{alias.name}" for alias in node.names)]
        else:
            continue
        out |= {t for t in targets if t == "matgl_cdssl" or t.startswith("matgl_cdssl.")}
    modules = _modules()
    resolved = set()
    for target in out:  # "matgl_cdssl.data.build_dataset" is the module matgl_cdssl.data
        while target not in modules and target != "matgl_cdssl":
            target = target.rsplit(".", 1)[0]
        resolved.add(target)
    return resolved - {name}


def _layer(module: str) -> str:
    part = module.split(".")[1]
    return "_backend" if part == "_dgl_shards" else part


GRAPH = {name: _imports(name, path) for name, path in _modules().items()}


def test_every_module_has_a_layer():
    assert {_layer(m) for m in GRAPH} == set(LAYERS)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_go_only_to_the_same_or_a_lower_layer(module):
    assert "matgl_cdssl" not in GRAPH[module], f"{module} imports the package root, which imports every layer"
    upward = [t for t in GRAPH[module] if LAYERS[_layer(t)] > LAYERS[_layer(module)]]
    assert not upward, f"{module} imports the higher layer(s) {upward}"
    sideways = [t for t in GRAPH[module] if _layer(t) != _layer(module) and LAYERS[_layer(t)] == LAYERS[_layer(module)]]
    assert not sideways, f"{module} imports {sideways}, a sibling layer"


def test_the_dgl_shard_storage_is_private_to_the_backend():
    assert [m for m, targets in GRAPH.items() if "matgl_cdssl._dgl_shards" in targets] == ["matgl_cdssl._backend"]


def test_the_import_graph_has_no_cycle():
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            raise AssertionError(f"import cycle: {' -> '.join((*path[path.index(module) :], module))}")
        if module in done:
            return
        for target in GRAPH[module]:
            visit(target, (*path, module))
        done.add(module)

    for module in GRAPH:
        visit(module, ())


@pytest.mark.parametrize("package", ["matgl_cdssl", *(f"matgl_cdssl.{n}" for n in ("data", "hub", "apps", "analysis"))])
def test_no_module_is_shadowed_by_a_name_of_its_package(package):
    """``matgl_cdssl.benchmark`` is the function; there is no module of that name for it to hide."""
    module = importlib.import_module(package)
    submodules = {info.name for info in pkgutil.iter_modules(module.__path__)}
    assert not set(module.__all__) & submodules
    assert all(name.startswith("_") for name in submodules - {"method", "data", "hub", "apps", "analysis", "cli"})


def test_public_api_is_the_documented_one():
    assert matgl_cdssl.__all__ == [
        "BACKEND",
        "CDSSLModule",
        "EdgeEmbeddingDenoisingLoss",
        "GaussianPositionNoise",
        "benchmark",
        "convert_weights",
        "embed",
        "finetune",
        "get_card",
        "list_models",
        "load_model",
        "load_sample",
        "predict",
        "pretrain",
        "register",
        "save_pretrained",
    ]
    assert all(callable(getattr(matgl_cdssl, name)) for name in matgl_cdssl.__all__ if name != "BACKEND")
