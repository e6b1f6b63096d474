"""The single place where matgl's two graph backends differ.

matgl 2.2.x (the last line with DGL) runs MEGNet on DGL graphs; matgl >= 3 runs it on PyTorch Geometric
graphs. Everything backend-specific that CDSSL needs lives here: which backend the installed matgl
provides, how to make sure matgl is imported under it, the graph fields (fractional coordinates,
periodic image offsets, edge list, graph membership), batching, and how to run MEGNet's message-passing
blocks. The rest of the package is written once against :class:`GraphBackend`.

The backend is detected from the installed matgl *before* matgl is imported, because matgl 2.2.x reads
``MATGL_BACKEND`` once, at import time.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import sys
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Literal

import lightning as L
import torch

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from pathlib import Path

    from torch import nn

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

BackendName = Literal["dgl", "pyg"]

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


@dataclass(frozen=True)
class Topology:
    """Backend-neutral view of a (batched) crystal graph.

    Attributes:
        src: Source atom of each edge, shape ``(n_edges,)``.
        dst: Destination atom of each edge, shape ``(n_edges,)``.
        node_graph: Index of the crystal each atom belongs to, shape ``(n_atoms,)``.
        edge_graph: Index of the crystal each edge belongs to, shape ``(n_edges,)``.
        num_graphs: Number of crystals in the batch.
    """

    src: torch.Tensor
    dst: torch.Tensor
    node_graph: torch.Tensor
    edge_graph: torch.Tensor
    num_graphs: int


class GraphBackend:
    """Adapter over one matgl backend. Get the active one with :func:`get_backend`."""

    name: BackendName

    # ---- matgl classes ---------------------------------------------------------------------------------
    @property
    def megnet_class(self) -> type:
        """The MEGNet class of the installed matgl."""
        from matgl.models import MEGNet

        return MEGNet

    def converter(self, element_types: Sequence[str], cutoff: float) -> Any:
        """A matgl ``Structure2Graph`` converter."""
        from matgl.ext.pymatgen import Structure2Graph

        return Structure2Graph(element_types=tuple(element_types), cutoff=cutoff)

    def loaders(self, train: Any, val: Any, *, batch_size: int, seed: int = 0, **kwargs: Any) -> tuple:
        """Loaders from matgl's ``MGLDataLoader`` and graph collate: shuffled over ``train``, in order over ``val``.

        ``seed`` seeds the shard order of streaming datasets (:meth:`open_graphs`: matgl's ``MGLDiskDataset`` on PyG,
        :class:`~matgl_cdssl._dgl_shards.ShardedGraphs` on DGL); in-memory datasets are shuffled by torch's global
        generator.
        """
        from matgl.graph.data import MGLDataLoader, collate_fn_graph

        kwargs.setdefault("num_workers", 0)
        return MGLDataLoader(train, val, collate_fn=collate_fn_graph, batch_size=batch_size, **kwargs)

    def dataset(self, structures: list, converter: Any, labels: dict[str, list]) -> Any:
        """An in-memory matgl ``MGLDataset`` (no on-disk cache)."""
        raise NotImplementedError

    # ---- graphs stored on disk (the graph cache of matgl_cdssl.data) ------------------------------------------------
    #: Whether a ``torch.utils.data.Subset`` of a dataset from :meth:`open_graphs` streams too (DGL, through
    #: :mod:`matgl_cdssl._dgl_shards`). If not (PyG: matgl's loader takes only whole ``MGLDiskDataset`` objects),
    #: subsets are written as datasets of their own (:func:`matgl_cdssl.data.split_cached`).
    subsets_stream: bool = False

    def write_graphs(self, records: Iterable[dict[str, Any]], converter: Any, folder: Path, shard_size: int) -> None:
        """Convert ``{"structure": ..., "labels": {...}}`` records and store the graphs in ``folder`` as shards.

        The records are consumed one at a time, and each shard is written when it is full; ``converter.get_graph`` is
        called once per record. The stored dataset is opened with :meth:`open_graphs`.
        """
        raise NotImplementedError

    def open_graphs(self, folder: Path) -> Any:
        """The dataset stored by :meth:`write_graphs`, streamed shard by shard."""
        raise NotImplementedError

    # ---- graph fields ------------------------------------------------------------------------------------
    def topology(self, g: Any) -> Topology:
        """Edge list and graph membership of a (batched) graph."""
        raise NotImplementedError

    def frac_coords(self, g: Any) -> torch.Tensor:
        """Fractional coordinates, shape ``(n_atoms, 3)``."""
        raise NotImplementedError

    def pbc_offset(self, g: Any) -> torch.Tensor:
        """Periodic image of each edge's destination atom in lattice units, shape ``(n_edges, 3)``."""
        raise NotImplementedError

    def node_types(self, g: Any) -> torch.Tensor:
        """Element index of each atom into the model's ``element_types``, shape ``(n_atoms,)``."""
        raise NotImplementedError

    def with_node_fields(self, g: Any, **fields: torch.Tensor) -> Any:
        """Shallow copy of ``g`` with the given node fields replaced or added; ``g`` itself is unchanged."""
        raise NotImplementedError

    def node_field(self, g: Any, key: str) -> torch.Tensor:
        """A node field of ``g`` by name."""
        raise NotImplementedError

    # ---- MEGNet ------------------------------------------------------------------------------------------
    def run_blocks(
        self,
        model: nn.Module,
        g: Any,
        topo: Topology,
        edge_feat: torch.Tensor,
        node_feat: torch.Tensor,
        state_feat: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run MEGNet's message-passing blocks; returns ``(edge_feat, node_feat, state_feat)``."""
        raise NotImplementedError

    def forward(self, model: nn.Module, g: Any, lattice: torch.Tensor, state_attr: torch.Tensor | None) -> torch.Tensor:
        """MEGNet's own forward on a batch, one (normalised) value per crystal.

        Positions and image shifts come from the lattice, as matgl's Lightning module sets them before it calls the
        model.
        """
        raise NotImplementedError


class _DGLBackend(GraphBackend):
    name: BackendName = "dgl"

    def dataset(self, structures: list, converter: Any, labels: dict[str, list]) -> Any:
        from matgl.graph.data import MGLDataset

        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            return MGLDataset(
                structures=structures,
                converter=converter,
                labels=labels,
                save_cache=False,
                raw_dir=tmp,
                save_dir=tmp,
            )

    subsets_stream = True

    def loaders(self, train: Any, val: Any, *, batch_size: int, seed: int = 0, **kwargs: Any) -> tuple:
        from matgl_cdssl._dgl_shards import ShardBatchSampler, ShardedGraphs

        if not isinstance(getattr(train, "dataset", train), ShardedGraphs):
            return super().loaders(train, val, batch_size=batch_size, seed=seed, **kwargs)
        from dgl.dataloading import GraphDataLoader
        from matgl.graph.data import collate_fn_graph

        kwargs.setdefault("num_workers", 0)
        return tuple(
            GraphDataLoader(
                data,
                batch_sampler=ShardBatchSampler(data, batch_size, shuffle=shuffle, seed=seed),
                collate_fn=collate_fn_graph,
                **kwargs,
            )
            for data, shuffle in ((train, True), (val, False))
        )

    def write_graphs(self, records: Iterable[dict[str, Any]], converter: Any, folder: Path, shard_size: int) -> None:
        """Shards of matgl 2.2.x's saved ``MGLDataset`` (:func:`matgl_cdssl._dgl_shards.write_shards`)."""
        from matgl_cdssl._dgl_shards import write_shards

        write_shards(records, converter, folder, shard_size)

    def open_graphs(self, folder: Path) -> Any:
        from matgl_cdssl._dgl_shards import ShardedGraphs

        return ShardedGraphs(folder)

    def topology(self, g: Any) -> Topology:
        src, dst = g.edges()
        counts = torch.arange(g.batch_size, device=src.device)
        return Topology(
            src=src.long(),
            dst=dst.long(),
            node_graph=torch.repeat_interleave(counts, g.batch_num_nodes()),
            edge_graph=torch.repeat_interleave(counts, g.batch_num_edges()),
            num_graphs=g.batch_size,
        )

    def frac_coords(self, g: Any) -> torch.Tensor:
        return g.ndata["frac_coords"]

    def pbc_offset(self, g: Any) -> torch.Tensor:
        return g.edata["pbc_offset"]

    def node_types(self, g: Any) -> torch.Tensor:
        return g.ndata["node_type"]

    def with_node_fields(self, g: Any, **fields: torch.Tensor) -> Any:
        out = g.local_var()
        for key, value in fields.items():
            out.ndata[key] = value
        return out

    def node_field(self, g: Any, key: str) -> torch.Tensor:
        return g.ndata[key]

    def run_blocks(self, model, g, topo, edge_feat, node_feat, state_feat):
        for block in model.blocks:
            edge_feat, node_feat, state_feat = block(g, edge_feat, node_feat, state_feat)
        return edge_feat, node_feat, state_feat

    def forward(self, model, g, lattice, state_attr):
        topo = self.topology(g)
        lat = lattice.reshape(-1, 3, 3).to(g.ndata["frac_coords"].dtype)
        g.ndata["pos"] = torch.einsum("ni,nij->nj", g.ndata["frac_coords"], lat[topo.node_graph])
        g.edata["pbc_offshift"] = torch.einsum("ei,eij->ej", g.edata["pbc_offset"].to(lat.dtype), lat[topo.edge_graph])
        return model(g, state_attr=state_attr)


class _PyGBackend(GraphBackend):
    name: BackendName = "pyg"

    def dataset(self, structures: list, converter: Any, labels: dict[str, list]) -> Any:
        from matgl.graph.data import MGLDataset

        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            return MGLDataset(structures=structures, converter=converter, labels=labels, save_cache=False, root=tmp)

    def loaders(self, train: Any, val: Any, *, batch_size: int, seed: int = 0, **kwargs: Any) -> tuple:
        from matgl.graph.data import MGLDiskDataset

        if isinstance(train, MGLDiskDataset):
            kwargs.setdefault("shard_seed", seed)
        return super().loaders(train, val, batch_size=batch_size, seed=seed, **kwargs)

    def write_graphs(self, records: Iterable[dict[str, Any]], converter: Any, folder: Path, shard_size: int) -> None:
        """Streamed by ``write_mgl_shards`` of matgl into shards of ``shard_size`` crystals that load independently."""
        from matgl.graph.data import write_mgl_shards

        write_mgl_shards(records, folder, converter=converter, shard_size=shard_size)

    def open_graphs(self, folder: Path) -> Any:
        from matgl.graph.data import MGLDiskDataset

        return MGLDiskDataset(folder)

    def topology(self, g: Any) -> Topology:
        src, dst = g.edge_index[0], g.edge_index[1]
        batch = getattr(g, "batch", None)
        if batch is None:
            batch = torch.zeros(g.num_nodes, dtype=torch.long, device=src.device)
        num_graphs = getattr(g, "num_graphs", None) or 1
        return Topology(src=src, dst=dst, node_graph=batch, edge_graph=batch[src], num_graphs=int(num_graphs))

    def frac_coords(self, g: Any) -> torch.Tensor:
        return g.frac_coords

    def pbc_offset(self, g: Any) -> torch.Tensor:
        return g.pbc_offset

    def node_types(self, g: Any) -> torch.Tensor:
        return g.node_type

    def with_node_fields(self, g: Any, **fields: torch.Tensor) -> Any:
        import copy

        out = copy.copy(g)
        for key, value in fields.items():
            setattr(out, key, value)
        return out

    def node_field(self, g: Any, key: str) -> torch.Tensor:
        return getattr(g, key)

    def run_blocks(self, model, g, topo, edge_feat, node_feat, state_feat):
        if state_feat.dim() == 1:
            state_feat = state_feat.unsqueeze(0)
        n_atoms = node_feat.shape[0]
        for block in model.blocks:
            edge_feat, node_feat, state_feat = block(
                g.edge_index,
                edge_feat,
                node_feat,
                state_feat,
                topo.node_graph,
                topo.edge_graph,
                n_atoms,
                topo.num_graphs,
            )
            if state_feat.dim() == 1:
                state_feat = state_feat.unsqueeze(0)
        return edge_feat, node_feat, state_feat

    def forward(self, model, g, lattice, state_attr):
        topo = self.topology(g)
        lat = lattice.reshape(-1, 3, 3).to(g.frac_coords.dtype)
        g.pos = torch.einsum("ni,nij->nj", g.frac_coords, lat[topo.node_graph])
        g.pbc_offshift = torch.einsum("ei,eij->ej", g.pbc_offset.to(lat.dtype), lat[topo.edge_graph])
        return model(g, state_attr=state_attr)


@functools.cache
def get_backend() -> GraphBackend:
    """The adapter for the installed matgl, after making sure matgl imports under it."""
    _prepare_matgl_import()
    return _DGLBackend() if BACKEND == "dgl" else _PyGBackend()
