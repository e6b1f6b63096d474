"""Backend detection and the import-order trap of matgl 2.2.x."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version

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


@pytest.mark.skipif(matgl_cdssl.BACKEND != "dgl", reason="the import-order trap exists only on matgl 2.2.x")
def test_matgl_imported_first_under_pyg_gives_a_clear_error():
    result = _run("import matgl, matgl_cdssl")
    assert result.returncode != 0
    assert "RuntimeError: matgl was already imported with backend 'PYG'" in result.stderr
    assert "MATGL_BACKEND=DGL" in result.stderr


@pytest.mark.skipif(matgl_cdssl.BACKEND != "dgl", reason="the import-order trap exists only on matgl 2.2.x")
def test_explicit_pyg_env_on_matgl2_gives_a_clear_error():
    result = _run("import matgl_cdssl", MATGL_BACKEND="PYG")
    assert result.returncode != 0
    assert "MATGL_BACKEND='PYG' is set" in result.stderr


def test_importing_matgl_cdssl_first_just_works():
    result = _run("import matgl_cdssl, matgl.models; print(matgl_cdssl.BACKEND, matgl.models.MEGNet.__module__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == matgl_cdssl.BACKEND
