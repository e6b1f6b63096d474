"""The bundled sample: 1,000 Materials Project crystals with 5 labels, from the hold-out pool."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from importlib.resources import files
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pymatgen.core import Structure

__all__ = ["SAMPLE_LABELS", "Sample", "load_sample"]

SAMPLE_LABELS = (
    "formation_energy_per_atom_eV",
    "band_gap_eV",
    "efermi_eV",
    "total_magnetization_muB",
    "volume_A3",
)


@dataclass
class Sample:
    """The bundled Materials Project sample.

    Attributes:
        material_ids: Materials Project ids.
        structures: pymatgen Structures.
        labels: Label name -> array of shape ``(n,)`` (NaN where Materials Project had no value).
    """

    material_ids: list[str]
    structures: list[Structure]
    labels: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.structures)


def load_sample(n: int | None = None) -> Sample:
    """Load the bundled sample of 1,000 Materials Project crystals with 5 labels.

    The crystals come from the Materials Project (CC BY 4.0, A. Jain et al., APL Materials 1, 011002 (2013)), via
    the data of the mt-cgcnn repository; see ``matgl_cdssl/sample/ATTRIBUTION.md``. They are drawn from the
    hold-out pool (:func:`~matgl_cdssl.data.in_holdout_pool`), which pretraining of ``CDSSL-MEGNet-MP`` never sees.

    Args:
        n: Return only the first ``n`` crystals.

    Returns:
        A :class:`Sample`.

    Example:
        >>> sample = load_sample(10)
        >>> len(sample), sorted(sample.labels)[0]
        (10, 'band_gap_eV')
    """
    from pymatgen.core import Lattice, Structure

    with gzip.open(files("matgl_cdssl").joinpath("sample/mp_sample.json.gz").open("rb"), "rt") as f:
        rows = json.load(f)
    rows = rows[:n] if n is not None else rows
    structures = [Structure(Lattice(r["lattice"]), r["species"], r["frac_coords"]) for r in rows]
    labels = {k: np.array([np.nan if r[k] is None else r[k] for r in rows], dtype=float) for k in SAMPLE_LABELS}
    return Sample([r["material_id"] for r in rows], structures, labels)
