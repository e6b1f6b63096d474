"""Gaussian position perturbation of (batched) crystal graphs: the CDSSL corruption G -> G~."""

from __future__ import annotations

import math
from typing import Any

import torch

from matgl_cdssl.backend import get_backend

__all__ = ["DISPLACEMENT_KEY", "GaussianPositionNoise", "node_lattices"]

#: Node field under which :class:`GaussianPositionNoise` stores each atom's Cartesian displacement (Å).
DISPLACEMENT_KEY = "displacement"


def node_lattices(lattice: torch.Tensor, node_graph: torch.Tensor) -> torch.Tensor:
    """Each atom's lattice matrix (rows are lattice vectors, Å), shape ``(n_atoms, 3, 3)``.

    Args:
        lattice: ``(n_graphs, 3, 3)``, or ``(3, 3)`` for a single crystal, as matgl's collate returns it.
        node_graph: Crystal index of each atom, shape ``(n_atoms,)``.
    """
    return lattice.reshape(-1, 3, 3)[node_graph]


class GaussianPositionNoise:
    r"""Displace every atom by Gaussian noise in Cartesian space: :math:`\tilde x = x + \sigma \epsilon`.

    :math:`\epsilon \sim N(0, I_3)` is drawn independently for each atom, so the mean squared displacement is
    :math:`3\sigma^2`. The transform acts on a matgl (batched) graph and its lattice, so it can run on the fly on
    every batch and each step sees fresh noise:

    - the fractional coordinates are replaced by those of the displaced atoms (the lattice is unchanged);
    - the edge list and the periodic image offsets (``pbc_offset``) of the *clean* crystal are kept, so every
      edge (v, v', k) of the clean periodic multigraph gets the noisy length
      :math:`|\tilde x_{v'} + k L - \tilde x_v|`, even where the displaced atoms would now have a different
      neighbour list;
    - the Cartesian displacement :math:`\sigma \epsilon` (Å) is stored in the node field ``"displacement"``.

    Following torch_geometric's transform contract, the input graph is not modified: a shallow copy is returned.

    Args:
        sigma: Standard deviation of the noise per Cartesian component, in Å. ``0`` gives the identity.
        generator: Optional ``torch.Generator`` for reproducible noise. Without one, torch's global RNG is used.

    Example:
        >>> noise = GaussianPositionNoise(sigma=0.05)
        >>> noise
        GaussianPositionNoise(sigma=0.05)
    """

    def __init__(self, sigma: float, *, generator: torch.Generator | None = None) -> None:
        sigma = float(sigma)
        if not math.isfinite(sigma) or sigma < 0:
            raise ValueError(f"sigma must be a finite, non-negative length in Å; got {sigma!r}")
        self.sigma = sigma
        self.generator = generator

    def displacements(self, g: Any) -> torch.Tensor:
        r"""Draw one Cartesian displacement :math:`\sigma \epsilon` (Å) per atom of ``g``, shape ``(n_atoms, 3)``.

        This is the random part of :meth:`__call__` (the same draws from the same generator), for callers that
        need the displacements rather than a displaced graph.
        """
        frac = get_backend().frac_coords(g)
        device = self.generator.device if self.generator is not None else frac.device
        eps = torch.randn(frac.shape, generator=self.generator, device=device, dtype=frac.dtype).to(frac.device)
        return self.sigma * eps

    def __call__(self, g: Any, lattice: torch.Tensor) -> Any:
        """Return a displaced copy of ``g``.

        Args:
            g: A matgl graph or batch (DGL or PyG, as the installed matgl makes them).
            lattice: ``(n_graphs, 3, 3)`` or ``(3, 3)`` lattice matrices in Å, rows are lattice vectors.

        Returns:
            A shallow copy of ``g`` with perturbed ``frac_coords`` and a ``displacement`` node field.
        """
        backend = get_backend()
        frac = backend.frac_coords(g)
        displacement = self.displacements(g)
        # Cartesian x = f @ L, so a displacement dx moves fractional coordinates by dx @ L^-1.
        inverse = torch.linalg.inv(lattice.reshape(-1, 3, 3).to(frac.dtype))
        frac_shift = torch.einsum("ni,nij->nj", displacement, node_lattices(inverse, backend.topology(g).node_graph))
        return backend.with_node_fields(g, frac_coords=frac + frac_shift, **{DISPLACEMENT_KEY: displacement})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma})"
