"""The PyG side of :class:`~matgl_cdssl._backend.GraphBackend`: matgl >= 3, whose MEGNet runs on PyG graphs.

Graphs stored on disk are matgl's own: ``write_mgl_shards`` writes them, ``MGLDiskDataset`` streams them.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from typing import TYPE_CHECKING, Any

import torch

from matgl_cdssl._backend._base import BackendName, GraphBackend, Topology

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

__all__ = ["PyGBackend"]


class PyGBackend(GraphBackend):
    """matgl >= 3: PyTorch Geometric graphs (attributes), MEGNet blocks called on the edge index."""

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
