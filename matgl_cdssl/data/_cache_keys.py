"""The keys of the graph cache: which cache folder holds the graphs of given crystals.

A key (:func:`cache_key`) is a short SHA-256 of everything the graphs depend on:

* the crystals (:func:`fingerprint_structures`): lattice, species and fractional coordinates rounded to 1e-6 for
  pymatgen ``Structure`` and ASE ``Atoms``; for a file its name and the SHA-256 of its bytes (not its folder, so a
  copy elsewhere hits the same cache, and the crystals' names are then given the copy's path);
* the labels stored with the graphs (:func:`fingerprint_labels`);
* the element types (in order: they fix each atom's ``node_type``), the cutoff, the backend and the matgl version.

The cache itself (writing, reading, splitting) is :mod:`matgl_cdssl.data._cache`.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from matgl_cdssl._backend import get_backend, matgl_version
from matgl_cdssl.data._readers import file_sha256, input_files, input_items

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "CACHE_FORMAT",
    "KEY_LENGTH",
    "cache_folder",
    "cache_key",
    "fingerprint_labels",
    "fingerprint_structures",
]

#: Bumped whenever the layout of a cache folder changes, so old caches are not read as new ones.
CACHE_FORMAT = 3
#: Digits of the SHA-256 kept in a cache key.
KEY_LENGTH = 16


def _rounded(values: Any) -> bytes:
    """Bytes of an array rounded to 1e-6 as integers, so that -0.0 and 0.0 (and float noise) hash alike."""
    return np.rint(np.asarray(values, dtype=np.float64) * 1e6).astype(np.int64).tobytes()


def fingerprint_structures(structures: Any) -> str:
    """A stable SHA-256 (hex) of the crystals, in order.

    Args:
        structures: What :func:`~matgl_cdssl.data.read_structures` accepts: pymatgen ``Structure`` objects,
            ASE ``Atoms`` or paths to structure files or folders (or one of these on its own).

    Returns:
        The hex digest. It covers, per crystal, the lattice matrix, the species and the fractional coordinates
        rounded to 1e-6; for a file, its name (without the folder) and the SHA-256 of its bytes; for a folder, that
        of each structure file in it.

    Raises:
        ValueError: an item of another type, naming it (``structures[i]``).
        FileNotFoundError: a path that does not exist.
    """
    from ase import Atoms
    from pymatgen.core import IStructure

    digest = hashlib.sha256()
    for i, item in enumerate(input_items(structures)):
        if isinstance(item, (str, Path)):
            for file in input_files(item):
                digest.update(f"file:{file.name}:{file_sha256(file)};".encode())
        elif isinstance(item, IStructure):
            digest.update(f"structure:{len(item)}:".encode())
            digest.update(_rounded(item.lattice.matrix))
            digest.update(",".join(site.species_string for site in item).encode())
            digest.update(_rounded(item.frac_coords))
        elif isinstance(item, Atoms):
            digest.update(f"atoms:{len(item)}:{[bool(p) for p in item.pbc]}:".encode())
            digest.update(_rounded(item.cell.array))
            digest.update(np.asarray(item.numbers, dtype=np.int64).tobytes())
            digest.update(_rounded(item.get_scaled_positions(wrap=False)))
        else:
            raise ValueError(
                f"structures[{i}] is a {type(item).__name__}; expected a pymatgen Structure, ASE Atoms or a path to "
                "a file"
            )
    return digest.hexdigest()


def fingerprint_labels(labels: dict[str, Sequence] | None) -> str:
    """A stable SHA-256 (hex) of the labels stored with the graphs: names in order and values (NaN included)."""
    digest = hashlib.sha256()
    for key, values in (labels or {}).items():
        digest.update(f"label:{key}:{len(values)}:".encode())
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):  # non-numeric labels: hash their JSON text
            digest.update(json.dumps(list(values), default=str).encode())
        else:
            digest.update(np.nan_to_num(array, nan=math.pi * 1e300).tobytes())
    return digest.hexdigest()


def cache_key(
    structures_fingerprint: str,
    element_types: Sequence[str],
    cutoff: float,
    backend_name: str,
    matgl_version: str,
    *,
    labels_fingerprint: str = "",
) -> str:
    """A short SHA-256 (:data:`KEY_LENGTH` hex digits) naming one cache folder.

    Args:
        structures_fingerprint: From :func:`fingerprint_structures`.
        element_types: The model's element types, in order (the order fixes each atom's ``node_type``).
        cutoff: Neighbour cutoff in Å; ``4`` and ``4.0`` give the same key.
        backend_name: ``"dgl"`` or ``"pyg"``.
        matgl_version: The installed matgl's version.
        labels_fingerprint: From :func:`fingerprint_labels`, when labels are stored with the graphs.

    Returns:
        The key.
    """
    payload = {
        "format": CACHE_FORMAT,
        "structures": structures_fingerprint,
        "labels": labels_fingerprint,
        "element_types": [str(e) for e in element_types],
        "cutoff": repr(float(cutoff)),
        "backend": backend_name,
        "matgl": matgl_version,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:KEY_LENGTH]


def cache_folder(
    structures: Any,
    *,
    element_types: Sequence[str],
    cutoff: float,
    cache_dir: str | Path,
    labels: dict[str, Sequence] | None = None,
) -> Path:
    """The folder :func:`cached_dataset` uses for these arguments (it may not exist yet)."""
    key = cache_key(
        fingerprint_structures(structures),
        element_types,
        cutoff,
        get_backend().name,
        matgl_version(),
        labels_fingerprint=fingerprint_labels(labels),
    )
    return Path(cache_dir) / key
