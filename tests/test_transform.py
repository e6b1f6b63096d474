"""GaussianPositionNoise: the corruption of the pretext task."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pymatgen.core import Structure

from matgl_cdssl import GaussianPositionNoise
from matgl_cdssl.method import CLEAN_FRAC_KEY, DISPLACEMENT_KEY, bond_distances, make_head, pretext


def test_repr():
    assert repr(GaussianPositionNoise(sigma=0.05)) == "GaussianPositionNoise(sigma=0.05)"


@pytest.mark.parametrize("sigma", [-0.1, math.nan, math.inf])
def test_bad_sigma(sigma):
    with pytest.raises(ValueError, match="sigma"):
        GaussianPositionNoise(sigma)


def test_zero_sigma_is_identity(backend, batch_of, tiny_structures):
    g, lat, *_ = batch_of(tiny_structures)
    noisy = GaussianPositionNoise(0.0)(g, lat)
    assert torch.equal(backend.frac_coords(noisy), backend.frac_coords(g))
    assert torch.count_nonzero(backend.node_field(noisy, DISPLACEMENT_KEY)) == 0


def test_input_unchanged_and_fields_kept(backend, batch_of, tiny_structures):
    g, lat, *_ = batch_of(tiny_structures)
    frac, lat_before = backend.frac_coords(g).clone(), lat.clone()
    topo = backend.topology(g)
    noisy = GaussianPositionNoise(0.1)(g, lat)
    assert torch.equal(backend.frac_coords(g), frac), "the input graph must not change"
    assert torch.equal(lat, lat_before), "the lattice must not change"
    noisy_topo = backend.topology(noisy)
    assert torch.equal(noisy_topo.src, topo.src)
    assert torch.equal(noisy_topo.dst, topo.dst)
    assert torch.equal(backend.pbc_offset(noisy), backend.pbc_offset(g))
    new = backend.frac_coords(noisy)
    assert new.dtype == frac.dtype
    assert new.device == frac.device
    assert new.shape == frac.shape
    assert not torch.equal(new, frac)


@pytest.mark.parametrize("sigma", [0.02, 0.1, 0.3])
def test_displacement_statistics(backend, batch_of, sample, sigma):
    g, lat, *_ = batch_of(sample.structures[:120])
    gen = torch.Generator().manual_seed(1)
    noisy = GaussianPositionNoise(sigma, generator=gen)(g, lat)
    disp = backend.node_field(noisy, DISPLACEMENT_KEY)
    n = disp.shape[0]
    assert n > 1500
    msd = float((disp**2).sum(dim=1).mean())
    # the sum of 3n squared N(0, sigma^2) variables: relative std sqrt(2 / 3n) (< 2.1% here); allow 5 std
    assert msd == pytest.approx(3 * sigma**2, rel=5 * math.sqrt(2 / (3 * n)))
    assert abs(float(disp.mean())) < 5 * sigma / math.sqrt(3 * n)
    # the Cartesian displacement really is what the fractional coordinates moved by
    lat3 = lat.reshape(-1, 3, 3)[backend.topology(g).node_graph]
    moved = torch.einsum("ni,nij->nj", backend.frac_coords(noisy) - backend.frac_coords(g), lat3)
    torch.testing.assert_close(moved, disp, atol=1e-5, rtol=0)


def test_seeded_noise_is_reproducible(backend, batch_of, tiny_structures):
    g, lat, *_ = batch_of(tiny_structures)

    def draw(seed):
        out = GaussianPositionNoise(0.1, generator=torch.Generator().manual_seed(seed))(g, lat)
        return backend.node_field(out, DISPLACEMENT_KEY)

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))
    noise = GaussianPositionNoise(0.1, generator=torch.Generator().manual_seed(3))
    first, second = noise(g, lat), noise(g, lat)
    assert not torch.equal(backend.node_field(first, DISPLACEMENT_KEY), backend.node_field(second, DISPLACEMENT_KEY)), (
        "every call must draw fresh noise"
    )


def test_noisy_lengths_match_pymatgen(backend, batch_of, tiny_structures):
    """Every clean edge (v, v', k) gets |x~_v' + kL - x~_v|, as pymatgen computes on the perturbed crystal."""
    g, lat, *_ = batch_of(tiny_structures)
    noisy = GaussianPositionNoise(0.15, generator=torch.Generator().manual_seed(0))(g, lat)
    lengths = bond_distances(noisy, lat).double().numpy()
    topo = backend.topology(g)
    disp = backend.node_field(noisy, DISPLACEMENT_KEY).double().numpy()
    offsets = backend.pbc_offset(g).numpy()
    first_node = np.concatenate([[0], np.cumsum([len(s) for s in tiny_structures])])
    expected = np.empty_like(lengths)
    for e, (v, w, k, gi) in enumerate(
        zip(topo.src.numpy(), topo.dst.numpy(), offsets, topo.edge_graph.numpy(), strict=True)
    ):
        s = tiny_structures[gi]
        base = first_node[gi]
        perturbed = Structure(
            s.lattice, s.species, s.cart_coords + disp[base : base + len(s)], coords_are_cartesian=True
        )
        expected[e] = perturbed.get_distance(v - base, w - base, jimage=np.round(k).astype(int))
    np.testing.assert_allclose(lengths, expected, atol=2e-5)
    clean = bond_distances(g, lat).double().numpy()
    assert np.abs(lengths - clean).max() > 0.01


def test_the_transform_gives_the_lengths_training_uses_to_the_last_bit(backend, batch_of, tiny_structures, megnet):
    """One noise path: the noisy lengths of the transformed crystal are those ``pretext`` trains on, bit for bit."""
    batch = batch_of(tiny_structures)
    g, lat = batch[0], batch[1]
    head = make_head(megnet)
    seen = []  # pretext expands the clean lengths (the target), then the noisy ones (the input)
    hook = megnet.bond_expansion.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    try:
        pretext(megnet, head, GaussianPositionNoise(0.2, generator=torch.Generator().manual_seed(11)), batch)
    finally:
        hook.remove()
    clean, noisy = seen
    transformed = GaussianPositionNoise(0.2, generator=torch.Generator().manual_seed(11))(g, lat)  # the same state
    assert torch.equal(bond_distances(transformed, lat), noisy)
    assert torch.equal(bond_distances(g, lat), clean)
    assert torch.equal(backend.node_field(transformed, CLEAN_FRAC_KEY), backend.frac_coords(g))
    # matgl reads the displaced fractional coordinates: the same lengths up to float rounding
    lattice = lat.reshape(-1, 3, 3)
    topo = backend.topology(transformed)
    frac = backend.frac_coords(transformed)
    pos = torch.einsum("ni,nij->nj", frac, lattice[topo.node_graph])
    shift = torch.einsum("ei,eij->ej", backend.pbc_offset(transformed).to(frac.dtype), lattice[topo.edge_graph])
    from_frac = torch.linalg.vector_norm(pos[topo.dst] + shift - pos[topo.src], dim=1)
    torch.testing.assert_close(from_frac, noisy, atol=2e-5, rtol=0)
