"""EdgeEmbeddingDenoisingLoss and the clean-structure target."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from matgl_cdssl import CDSSLModule, EdgeEmbeddingDenoisingLoss
from matgl_cdssl.method import bond_distances


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


def test_loss_zero_at_optimum_and_permutation_invariant():
    target = torch.rand(30, 8)
    loss = EdgeEmbeddingDenoisingLoss()
    assert float(loss(target.clone(), target)) == 0.0
    pred = target + 0.1 * torch.randn_like(target)
    perm = torch.randperm(30)
    torch.testing.assert_close(loss(pred[perm], target[perm]), loss(pred, target))


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
