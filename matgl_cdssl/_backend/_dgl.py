"""The DGL side of :class:`~matgl_cdssl._backend.GraphBackend`: matgl 2.2.x, whose MEGNet runs on DGL graphs.

Graphs stored on disk stream through :mod:`matgl_cdssl._backend._dgl_shards`, which only this module uses.
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

__all__ = ["DGLBackend"]


class DGLBackend(GraphBackend):
    """matgl 2.2.x: DGL graphs (``g.ndata``/``g.edata``), MEGNet blocks called on the graph."""

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
        from matgl_cdssl._backend._dgl_shards import ShardBatchSampler, ShardedGraphs

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
        """Shards of matgl 2.2.x's saved ``MGLDataset`` (:func:`matgl_cdssl._backend._dgl_shards.write_shards`)."""
        from matgl_cdssl._backend._dgl_shards import write_shards

        write_shards(records, converter, folder, shard_size)

    def open_graphs(self, folder: Path) -> Any:
        from matgl_cdssl._backend._dgl_shards import ShardedGraphs

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
