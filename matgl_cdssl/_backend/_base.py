"""The backend-neutral interface: :class:`GraphBackend` and :class:`Topology`.

:mod:`matgl_cdssl._backend._dgl` and :mod:`matgl_cdssl._backend._pyg` implement :class:`GraphBackend`; :class:`Topology`
is its view of a batch of crystal graphs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from pathlib import Path

    from torch import nn

__all__ = ["BackendName", "GraphBackend", "Topology"]

BackendName = Literal["dgl", "pyg"]


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
        :class:`~matgl_cdssl._backend._dgl_shards.ShardedGraphs` on DGL); in-memory datasets are shuffled by torch's
        global generator.
        """
        from matgl.graph.data import MGLDataLoader, collate_fn_graph

        kwargs.setdefault("num_workers", 0)
        return MGLDataLoader(train, val, collate_fn=collate_fn_graph, batch_size=batch_size, **kwargs)

    def dataset(self, structures: list, converter: Any, labels: dict[str, list]) -> Any:
        """An in-memory matgl ``MGLDataset`` (no on-disk cache)."""
        raise NotImplementedError

    # ---- graphs stored on disk (the graph cache of matgl_cdssl.data) ------------------------------------------------
    #: Whether a ``torch.utils.data.Subset`` of a dataset from :meth:`open_graphs` streams too (DGL, through
    #: :mod:`matgl_cdssl._backend._dgl_shards`). If not (PyG: matgl's loader takes only whole ``MGLDiskDataset``
    #: objects), subsets are written as datasets of their own (:func:`matgl_cdssl.data.split_cached`).
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
