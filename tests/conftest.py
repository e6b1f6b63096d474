"""Shared fixtures: crystals by formula, graphs through the backend adapter, and small sample subsets."""

from __future__ import annotations

import pytest
import torch
from pymatgen.core import Lattice, Structure

import matgl_cdssl
from matgl_cdssl._backend import get_backend
from matgl_cdssl.data import build_dataset
from matgl_cdssl.hub import new_like


@pytest.fixture(scope="session")
def backend():
    return get_backend()


@pytest.fixture(scope="session")
def CsCl() -> Structure:
    return Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="session")
def Cu1() -> Structure:
    """A one-atom cell: every edge joins the atom to one of its own periodic images."""
    return Structure(Lattice.cubic(2.55), ["Cu"], [[0, 0, 0]])


@pytest.fixture(scope="session")
def LiFePO4_like() -> Structure:
    """A low-symmetry triclinic cell with four elements."""
    lattice = Lattice.from_parameters(4.7, 6.0, 5.2, 88.0, 95.0, 101.0)
    return Structure(
        lattice,
        ["Li", "Fe", "P", "O", "O", "O", "O"],
        [
            [0, 0, 0],
            [0.28, 0.25, 0.97],
            [0.09, 0.25, 0.42],
            [0.10, 0.25, 0.74],
            [0.45, 0.25, 0.21],
            [0.17, 0.05, 0.28],
            [0.83, 0.56, 0.62],
        ],
    )


@pytest.fixture(scope="session")
def sample():
    return matgl_cdssl.load_sample(200)


@pytest.fixture(scope="session")
def tiny_structures(sample, Cu1, CsCl, LiFePO4_like) -> list[Structure]:
    """Twelve crystals, including a one-atom cell and a triclinic one."""
    return [Cu1, CsCl, LiFePO4_like, *sample.structures[:9]]


@pytest.fixture(scope="session")
def megnet_seed0(backend):
    torch.manual_seed(0)
    return backend.megnet_class()


@pytest.fixture
def megnet(megnet_seed0):
    """matgl's default MEGNet at seed 0: a fresh copy for each test, so no test trains another's model."""
    return new_like(megnet_seed0)


@pytest.fixture(scope="session")
def batch_of(backend, megnet_seed0):
    """Make a single matgl batch ``(g, lattice, state_attr, labels)`` from a list of crystals."""

    def make(structures):
        model = megnet_seed0
        dataset, _, _ = build_dataset(structures, element_types=model.element_types, cutoff=model.cutoff)
        _, loader = backend.loaders(dataset, dataset, batch_size=len(dataset))
        return next(iter(loader))

    return make


@pytest.fixture(scope="session")
def pretrained_session(tmp_path_factory, sample):
    out = tmp_path_factory.mktemp("pretrain")
    model = matgl_cdssl.pretrain(
        sample.structures[:48],
        max_epochs=2,
        batch_size=16,
        output_dir=out,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return model, out


@pytest.fixture
def pretrained_run(pretrained_session):
    """A short CDSSL run on 48 crystals: ``(model, output_dir)``; the model is a fresh copy for each test."""
    model, out = pretrained_session
    return new_like(model), out
