"""Backend detection and the import-order trap of matgl 2.2.x."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version

import numpy as np
import pytest

import matgl_cdssl


def test_backend_detected_from_installed_matgl():
    major = int(version("matgl").split(".")[0])
    assert ("dgl" if major < 3 else "pyg") == matgl_cdssl.BACKEND


def test_megnet_is_the_backend_megnet(backend):
    import matgl.models

    assert backend.megnet_class is matgl.models.MEGNet


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("MATGL_BACKEND", "DGLBACKEND")}
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True)


_LOAD_AND_PREDICT = (
    "from matgl.models import MEGNet; from pymatgen.core import Lattice, Structure; "
    "m = matgl_cdssl.load_model('CDSSL-MEGNet-MP'); "
    "s = Structure(Lattice.cubic(4.12), ['Cs', 'Cl'], [[0, 0, 0], [0.5, 0.5, 0.5]]); "
    "print(matgl_cdssl.BACKEND, isinstance(m, MEGNet), float(m.predict_structure(s)))"
)


@pytest.mark.parametrize("imports", ["import matgl; import matgl_cdssl", "import matgl_cdssl; import matgl"])
def test_either_import_order_works_in_a_fresh_interpreter(imports):
    """`import matgl` first (the order ruff and isort write) works as well as `import matgl_cdssl` first."""
    result = _run(f"{imports}; {_LOAD_AND_PREDICT}")
    assert result.returncode == 0, result.stderr[-2000:]
    backend, is_megnet, prediction = result.stdout.split()
    assert backend == matgl_cdssl.BACKEND
    assert is_megnet == "True"
    assert np.isfinite(float(prediction))


@pytest.mark.skipif(matgl_cdssl.BACKEND != "dgl", reason="the import-order trap exists only on matgl 2.2.x")
def test_matgl_layers_imported_under_pyg_first_give_the_one_line_fix():
    """Only an order that cannot work (matgl's layers already built under PyG) raises, and names the fix."""
    result = _run("import matgl.layers; import matgl_cdssl")
    assert result.returncode != 0
    assert "RuntimeError: matgl was imported with backend 'PYG' and matgl.layers" in result.stderr
    assert "`import matgl_cdssl` as the first matgl-related import is enough" in result.stderr


@pytest.mark.skipif(matgl_cdssl.BACKEND != "dgl", reason="the import-order trap exists only on matgl 2.2.x")
def test_explicit_pyg_env_on_matgl2_gives_a_clear_error():
    result = _run("import matgl_cdssl", MATGL_BACKEND="PYG")
    assert result.returncode != 0
    assert "MATGL_BACKEND='PYG' is set" in result.stderr


def test_importing_matgl_cdssl_first_just_works():
    result = _run("import matgl_cdssl, matgl.models; print(matgl_cdssl.BACKEND, matgl.models.MEGNet.__module__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == matgl_cdssl.BACKEND
