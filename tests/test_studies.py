"""The studies beside the product (studies/): drivers use the public API only, and each study says if it is current.

Parses every ``studies/**/*.py`` (nothing is run): each import of ``matgl_cdssl`` names a public module (no ``_x``
part) and public names (no leading underscore, and listed in that module's ``__all__``), and each attribute read from
an imported ``matgl_cdssl`` module is public too. Every ``studies/<name>/`` has a README.md whose first line starts
with ``current`` or ``superseded by ...``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

STUDIES = Path(__file__).resolve().parents[1] / "studies"
DRIVERS = sorted(STUDIES.rglob("*.py"))
FIRST_LINE = re.compile(r"^(current\b|superseded by \S)", re.IGNORECASE)


def _dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def _public(module: str, name: str) -> bool:
    """Whether ``name`` is public in ``module``: a dunder, a public subpackage, or in its ``__all__`` if it has one."""
    if _dunder(name):
        return True
    if name.startswith("_"):
        return False
    if importlib.util.find_spec(module).submodule_search_locations and importlib.util.find_spec(f"{module}.{name}"):
        return True
    names = getattr(importlib.import_module(module), "__all__", None)
    return names is None or name in names


def _private_uses(path: Path) -> list[str]:
    """Every private ``matgl_cdssl`` module or name that ``path`` imports or reads, as ``"line: what"``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found, modules = [], {}  # modules: local name -> the matgl_cdssl module it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "matgl_cdssl":
                    continue
                if any(part.startswith("_") for part in alias.name.split(".")):
                    found.append(f"{node.lineno}: import {alias.name}")
                elif alias.asname:
                    modules[alias.asname] = alias.name
                else:
                    modules["matgl_cdssl"] = "matgl_cdssl"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "matgl_cdssl":
            if any(part.startswith("_") for part in node.module.split(".")):
                found.append(f"{node.lineno}: from {node.module} import ...")
                continue
            found += [f"{node.lineno}: from {node.module} import {a.name}" for a in node.names
                      if not _public(node.module, a.name)]  # fmt: skip
    for node in ast.walk(tree):
        read = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
        if read and not _public(modules[node.value.id], node.attr):
            found.append(f"{node.lineno}: {node.value.id}.{node.attr}")
    return sorted(found, key=lambda line: int(line.split(":")[0]))


def test_there_are_studies():
    assert DRIVERS, "no driver under studies/"
    assert (STUDIES / "README.md").is_file()


@pytest.mark.parametrize("path", DRIVERS, ids=lambda p: str(p.relative_to(STUDIES)))
def test_drivers_use_only_the_public_api(path):
    assert _private_uses(path) == [], f"{path.relative_to(STUDIES.parent)} uses private parts of matgl_cdssl"


@pytest.mark.parametrize("study", sorted(p for p in STUDIES.iterdir() if p.is_dir()), ids=lambda p: p.name)
def test_every_study_says_whether_it_is_current(study):
    readme = study / "README.md"
    assert readme.is_file(), f"studies/{study.name} has no README.md"
    first = readme.read_text().splitlines()[0].lstrip("# ")
    assert FIRST_LINE.match(first), f"studies/{study.name}/README.md starts with {first!r}"


def test_the_check_finds_private_uses(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import matgl_cdssl\nimport matgl_cdssl.apps as apps\nfrom matgl_cdssl.apps._benchmark import report\n"
        "from matgl_cdssl import get_backend, load_model\nfrom matgl_cdssl.hub import new_like\n"
        "matgl_cdssl._backend.get_backend()\napps._finetune\nmatgl_cdssl.__version__\nmatgl_cdssl.pretrain\n"
        "matgl_cdssl.apps.finetune\n"
    )
    assert _private_uses(driver) == [
        "3: from matgl_cdssl.apps._benchmark import ...",
        "4: from matgl_cdssl import get_backend",
        "6: matgl_cdssl._backend",
        "7: apps._finetune",
    ]
