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
    "_backend": 0,  # its _dgl_shards is a private detail of its DGL side
    "data": 1,
    "method": 2,
    "hub": 3,
    "apps": 4,
    "analysis": 4,
    "bench": 5,
    "cli": 6,
}

#: Packages with a private name that are layers of their own: any module may import what their ``__init__`` exports
#: (never their private modules).
LAYER_PACKAGES = {"matgl_cdssl._backend"}


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


def _import_paths(name: str, path: Path) -> set[str]:
    """Every dotted path that ``name`` imports (``matgl_cdssl.data._cache.foo`` for ``from ._cache import foo``)."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            out |= {f"{module}.{alias.name}" for alias in node.names}
    return {t for t in out if t.startswith("matgl_cdssl.")}


def _folder(dotted: str, modules: dict[str, Path]) -> str:
    """The package whose folder holds ``dotted`` (a module, or a name inside one)."""
    while dotted not in modules and dotted != "matgl_cdssl":
        dotted = dotted.rsplit(".", 1)[0]
    if dotted == "matgl_cdssl" or modules[dotted].name == "__init__.py":
        return dotted
    return dotted.rsplit(".", 1)[0]


def _private_imports(name: str, path: Path) -> list[str]:
    """What ``name`` imports that is private to another package folder than its own.

    A private module (``_x``) or name (``_y``) may be imported only by the modules of the package folder that holds
    it (``matgl_cdssl.bench._runner`` may import ``matgl_cdssl.bench._ledger``, not ``matgl_cdssl.apps._finetune``
    nor ``matgl_cdssl.data._cache._foo``); across packages a module imports what a package's ``__init__`` exports.
    A private package of :data:`LAYER_PACKAGES` is itself importable (it is a layer), its private modules are not.
    """
    modules = _modules()
    own = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for target in sorted(_import_paths(name, path)):
        parts = target.split(".")
        for i in range(1, len(parts)):
            part, held = parts[i], ".".join(parts[: i + 1])
            private = part.startswith("_") and not part.startswith("__")
            if private and held not in LAYER_PACKAGES and _folder(".".join(parts[:i]), modules) != own:
                found.append(target)
                break
    return found


PRIVATE_IMPORTS = {name: _private_imports(name, path) for name, path in _modules().items()}


@pytest.mark.parametrize("module", sorted(PRIVATE_IMPORTS))
def test_no_private_import_across_packages(module):
    assert not PRIVATE_IMPORTS[module], (
        f"{module} imports {PRIVATE_IMPORTS[module]}, private to another package: import what that package's "
        "__init__ exports (make the name public there)"
    )


def test_the_private_import_rule_sees_private_modules_and_names_of_other_packages(tmp_path):
    def found(source: str, name: str = "matgl_cdssl.bench._runner") -> list[str]:
        path = tmp_path / "module.py"  # the rule reads the file; the module's place is its dotted name
        path.write_text(source)
        return _private_imports(name, path)

    assert found("from matgl_cdssl.bench._ledger import Ledger\nfrom ._plan import Run") == []
    assert found("from matgl_cdssl.apps._finetune import fit") == ["matgl_cdssl.apps._finetune.fit"]
    assert found("from ..apps._finetune import fit") == ["matgl_cdssl.apps._finetune.fit"]
    assert found("from matgl_cdssl.apps import _finetune") == ["matgl_cdssl.apps._finetune"]
    assert found("def f():\n    import matgl_cdssl.data._cache") == ["matgl_cdssl.data._cache"]
    assert found("from matgl_cdssl.data import _helper") == ["matgl_cdssl.data._helper"]
    assert found("from matgl_cdssl.apps import fit\nfrom matgl_cdssl._backend import get_backend") == []
    assert found("from matgl_cdssl._backend._dgl import DGLBackend") == ["matgl_cdssl._backend._dgl.DGLBackend"]
    assert found("from matgl_cdssl.data._cache import _foo", "matgl_cdssl.data._datasets") == []
    assert found("from matgl_cdssl.data._cache import _foo", "matgl_cdssl.method") == ["matgl_cdssl.data._cache._foo"]


def _layer(module: str) -> str:
    return module.split(".")[1]


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
    shards = "matgl_cdssl._backend._dgl_shards"
    assert [m for m, targets in GRAPH.items() if shards in targets] == ["matgl_cdssl._backend._dgl"]


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


@pytest.mark.parametrize(
    "package", ["matgl_cdssl", *(f"matgl_cdssl.{n}" for n in ("data", "hub", "apps", "analysis", "bench"))]
)
def test_no_module_is_shadowed_by_a_name_of_its_package(package):
    """``matgl_cdssl.benchmark`` is the function; there is no module of that name for it to hide."""
    module = importlib.import_module(package)
    submodules = {info.name for info in pkgutil.iter_modules(module.__path__)}
    assert not set(module.__all__) & submodules
    assert all(
        name.startswith("_") for name in submodules - {"method", "data", "hub", "apps", "analysis", "bench", "cli"}
    )


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
