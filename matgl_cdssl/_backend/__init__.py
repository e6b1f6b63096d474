"""The single place where matgl's two graph backends differ.

matgl 2.2.x (the last line with DGL) runs MEGNet on DGL graphs; matgl >= 3 runs it on PyTorch Geometric
graphs. Everything backend-specific that CDSSL needs lives here: which backend the installed matgl
provides, how to make sure matgl is imported under it, the graph fields (fractional coordinates,
periodic image offsets, edge list, graph membership), batching, and how to run MEGNet's message-passing
blocks. The rest of the package is written once against :class:`GraphBackend`.

The backend is detected from the installed matgl *before* matgl is imported, because matgl 2.2.x reads
``MATGL_BACKEND`` once, at import time.

Layout: this module detects the backend and hands out its adapter (:func:`get_backend`); ``_base`` holds the
interface (:class:`GraphBackend`, :class:`Topology`), ``_dgl`` and ``_pyg`` its two implementations, and
``_dgl_shards`` the on-disk graph storage that only the DGL side uses.
"""

from __future__ import annotations

import functools
import os
import sys
from importlib.metadata import PackageNotFoundError, version

import lightning as L

from matgl_cdssl._backend._base import BackendName, GraphBackend, Topology
from matgl_cdssl._backend._dgl import DGLBackend
from matgl_cdssl._backend._pyg import PyGBackend

__all__ = [
    "AGGREGATION_SIDE",
    "BACKEND",
    "GraphBackend",
    "OncePerEpochSchedule",
    "Topology",
    "get_backend",
    "matgl_version",
    "package_version",
]

#: Which node each backend's MEGNet aggregates edge messages into. matgl 2.2.x (DGL) sums edges into their
#: destination node, matgl >= 3 (PyG) into their source node; ``convert_weights`` bridges the two.
AGGREGATION_SIDE: dict[str, str] = {"dgl": "dst", "pyg": "src"}


def matgl_version() -> str:
    """Version string of the installed matgl, read without importing it."""
    try:
        return version("matgl")
    except PackageNotFoundError as exc:  # pragma: no cover - matgl is a hard dependency
        raise RuntimeError(
            "matgl is not installed: `pip install matgl-cdssl[dgl]` or `pip install matgl-cdssl`."
        ) from exc


def package_version() -> str:
    """Version string of the installed matgl-cdssl (``"unknown"`` when run from a source tree)."""
    try:
        return version("matgl-cdssl")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def _detect() -> BackendName:
    major = int(matgl_version().split(".")[0])
    return "dgl" if major < 3 else "pyg"


#: ``"dgl"`` for matgl 2.2.x, ``"pyg"`` for matgl >= 3. Detected from the installed matgl.
BACKEND: BackendName = _detect()


#: matgl modules whose content depends on matgl 2.2.x's backend, fixed when they are first imported. ``import matgl``
#: itself loads none of them (only ``matgl.config`` and ``matgl.utils.io``), so the backend can still be chosen then.
_BACKEND_BOUND = ("matgl.graph", "matgl.models", "matgl.layers", "matgl.ext", "matgl.apps", "matgl.utils.training")


def _prepare_matgl_import() -> None:
    """Make sure matgl is (or will be) imported under the backend that has MEGNet.

    On matgl 2.2.x MEGNet exists only under DGL, and matgl reads ``MATGL_BACKEND`` once, when ``matgl.config`` is
    first imported, defaulting to PyG. Whichever comes first, ``import matgl`` or ``import matgl_cdssl``, the DGL
    backend is selected here: before matgl's import through the environment variable, after it through
    ``matgl.set_backend("DGL")``, which is enough as long as none of matgl's backend-bound modules
    (:data:`_BACKEND_BOUND`) was imported under PyG. ``MATGL_BACKEND`` is also set for child processes (DDP).

    Raises:
        RuntimeError: ``MATGL_BACKEND`` asks for PyG, or a backend-bound matgl module was already imported under PyG;
            the message gives the one-line fix.
    """
    if BACKEND != "dgl":
        return
    fix = (
        "matgl 2.2.x provides MEGNet only under its DGL backend. Import matgl_cdssl (or set MATGL_BACKEND=DGL) before "
        "importing any of matgl's models, layers or graph modules: `import matgl_cdssl` as the first matgl-related "
        "import is enough."
    )
    requested = os.environ.get("MATGL_BACKEND", "DGL").upper()
    if requested != "DGL":
        raise RuntimeError(f"MATGL_BACKEND={requested!r} is set. {fix}")
    os.environ["MATGL_BACKEND"] = "DGL"
    os.environ.setdefault("DGLBACKEND", "pytorch")
    if "matgl" not in sys.modules:
        return
    import matgl

    if matgl.config.BACKEND == "DGL":
        return
    bound = sorted(m for m in sys.modules if m.startswith(_BACKEND_BOUND))
    if bound:
        raise RuntimeError(
            f"matgl was imported with backend {matgl.config.BACKEND!r} and {', '.join(bound[:3])} already loaded "
            f"under it. {fix}"
        )
    matgl.set_backend("DGL")


class OncePerEpochSchedule:
    """Mixin for matgl's Lightning modules: the learning-rate scheduler steps once per epoch, on both matgl lines.

    Lightning steps an epoch-interval scheduler returned by ``configure_optimizers`` itself. matgl 2.2.x's
    ``MatglLightningModuleMixin`` steps it a second time in ``on_train_epoch_end``, so the schedule would decay twice
    as fast as documented (matgl fixed it in 4.1.2, its #848). Placed before matgl's mixin, this hook replaces that
    one with Lightning's own (a no-op), which changes nothing on matgl >= 4.1.2.
    """

    def on_train_epoch_end(self) -> None:
        """Leave the scheduler to Lightning."""
        L.LightningModule.on_train_epoch_end(self)  # type: ignore[arg-type]


@functools.cache
def get_backend() -> GraphBackend:
    """The adapter for the installed matgl, after making sure matgl imports under it."""
    _prepare_matgl_import()
    return DGLBackend() if BACKEND == "dgl" else PyGBackend()
