"""EdgeEmbeddingDenoisingLoss and the clean-structure target."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from matgl_cdssl import CDSSLModule, EdgeEmbeddingDenoisingLoss, GaussianPositionNoise
from matgl_cdssl.method import bond_distances, make_head, pretext
from tests.helpers import graph_of


def test_loss_is_mse_with_gradients():
    torch.manual_seed(0)
    pred = torch.randn(50, 100, requires_grad=True)
    target = torch.rand(50, 100)
    loss = EdgeEmbeddingDenoisingLoss()(pred, target)
    assert loss.ndim == 0
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, ((pred - target) ** 2).mean())
    loss.backward()
    assert pred.grad is not None
    assert torch.count_nonzero(pred.grad) > 0


def test_loss_zero_at_optimum():
    target = torch.rand(30, 8)
    loss = EdgeEmbeddingDenoisingLoss()
    assert float(loss(target.clone(), target)) == 0.0


def _permute_edges(backend, g, perm):
    """``g`` with its edges (and every edge field) in the order ``perm``; the atoms stay as they are."""
    if backend.name == "dgl":
        import dgl

        return dgl.reorder_graph(
            g, node_permute_algo=None, edge_permute_algo="custom", permute_config={"edges_perm": perm}, store_ids=False
        )
    out = copy.copy(g)
    for key in g.edge_attrs():
        out[key] = g[key][:, perm] if key == "edge_index" else g[key][perm]
    return out


def test_target_follows_the_models_edge_order(backend, megnet, LiFePO4_like):
    """Permuting the graph's edges permutes prediction and target together, so the loss is unchanged; the loss pairs
    them edge by edge, so a target in another order than the prediction would change it."""
    g, lat, state = graph_of(LiFePO4_like, megnet)
    head = make_head(megnet)

    def run(graph):
        noise = GaussianPositionNoise(0.1, generator=torch.Generator().manual_seed(5))  # per atom: the same draws
        with torch.no_grad():
            return pretext(megnet, head, noise, (graph, lat, state.reshape(1, -1)))

    loss, pred, target, noisy_attr = run(g)
    perm = torch.randperm(target.shape[0], generator=torch.Generator().manual_seed(0))
    permuted = _permute_edges(backend, g, perm)
    assert not torch.equal(backend.topology(permuted).src, backend.topology(g).src)
    loss_p, pred_p, target_p, noisy_attr_p = run(permuted)
    assert torch.equal(target_p, target[perm])
    assert torch.equal(noisy_attr_p, noisy_attr[perm])
    torch.testing.assert_close(pred_p, pred[perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss_p, loss)
    # A prediction that follows the edges (here the noisy input, close to the target) against a target in the other
    # order: the loss is no longer that of the matched pairs.
    loss_fn = EdgeEmbeddingDenoisingLoss()
    assert float(loss_fn(noisy_attr_p, target)) > 2 * float(loss_fn(noisy_attr_p, target_p))


def test_loss_rejects_bad_shapes():
    loss = EdgeEmbeddingDenoisingLoss()
    with pytest.raises(ValueError, match="shape"):
        loss(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="no edges"):
        loss(torch.zeros(0, 4), torch.zeros(0, 4))


def test_target_is_matgl_bond_expansion_of_pymatgen_distances(backend, batch_of, tiny_structures, megnet):
    g, lat, *_ = batch_of(tiny_structures)
    module = CDSSLModule(megnet, sigma=0.1)
    topo = backend.topology(g)
    offsets = backend.pbc_offset(g).numpy()
    first_node = np.concatenate([[0], np.cumsum([len(s) for s in tiny_structures])])
    d_pymatgen = []
    for v, w, k, gi in zip(topo.src.numpy(), topo.dst.numpy(), offsets, topo.edge_graph.numpy(), strict=True):
        base = first_node[gi]
        d_pymatgen.append(tiny_structures[gi].get_distance(v - base, w - base, jimage=np.round(k).astype(int)))
    d_pymatgen = torch.tensor(d_pymatgen)
    torch.testing.assert_close(bond_distances(g, lat).double(), d_pymatgen, atol=2e-5, rtol=0)
    expected = megnet.bond_expansion(d_pymatgen.float())
    target = module.target(g, lat)
    assert target.shape == (topo.src.numel(), 100)  # matgl's default dim_edge_embedding
    torch.testing.assert_close(target, expected, atol=1e-5, rtol=0)
    assert module.model.bond_expansion is megnet.bond_expansion  # matgl's own module, not a copy
