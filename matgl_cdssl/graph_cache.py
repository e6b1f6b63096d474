"""Converted crystal graphs, cached on disk and reused across runs.

Converting crystals into matgl graphs (neighbour search within the cutoff) is the slow part of preparing data.
:func:`cached_dataset` converts once, stores the graphs under ``cache_dir/<key>/`` and, on later calls with the same
crystals, labels, cutoff and element list (and the same backend and matgl version), loads them instead of converting.

The key (:func:`cache_key`) is a short SHA-256 of everything the graphs depend on:

* the crystals (:func:`fingerprint_structures`): lattice, species and fractional coordinates rounded to 1e-6 for
  pymatgen ``Structure`` and ASE ``Atoms``; for file paths the resolved path, size and modification time (the file
  is not read on a hit, so a file edited in place with its size and mtime restored would go unnoticed);
* the labels stored with the graphs (:func:`fingerprint_labels`);
* the element types (in order: they fix each atom's ``node_type``), the cutoff, the backend and the matgl version.

Storage per backend:

* **PyG** (matgl >= 3): matgl's ``write_mgl_shards`` writes the graphs as shards of ``shard_size`` crystals, and
  the dataset is matgl's ``MGLDiskDataset``, which streams: it keeps one shard in memory at a time. Its items
  are ``(graph, lattice, state_attr, labels)``, as with the in-memory ``MGLDataset``. matgl's ``MGLDataLoader``
  (:meth:`~matgl_cdssl.backend.GraphBackend.loaders`) batches it shard by shard, so a batch never spans two
  shards, and it requires the training and validation sets to be ``MGLDiskDataset`` objects alike.
* **DGL** (matgl 2.2.x): matgl's ``MGLDataset(save_cache=True)`` saves the graphs with ``dgl.save_graphs``;
  loading reads them all into memory. matgl 2.2.x has no streaming dataset, so there is none here.

A cache is published atomically: it is written into a hidden temporary folder next to its final place, a
``complete.json`` marker is written last, and the folder is then renamed to ``cache_dir/<key>``. A folder without
the marker (an interrupted or damaged write) is never taken as a hit; it is removed and rebuilt.

The crystals are checked as in :func:`matgl_cdssl.data.build_dataset` with ``skip_invalid=False``: the first
invalid crystal raises a ``ValueError`` naming it, and nothing is cached. Each item carries the user's labels
followed by ``structure_index``, its position in the input (``names.json`` in the cache folder maps it back to
each crystal's name).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from matgl_cdssl.backend import get_backend, matgl_version
from matgl_cdssl.data import check_label_lengths, connectivity_problem, read_structures, screen_structures

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "CACHE_FORMAT",
    "MARKER",
    "cache_folder",
    "cache_key",
    "cached_dataset",
    "fingerprint_labels",
    "fingerprint_structures",
]

logger = logging.getLogger(__name__)

#: Bumped whenever the layout of a cache folder changes, so old caches are not read as new ones.
CACHE_FORMAT = 1
#: File written last into a cache folder; a folder without it is incomplete.
MARKER = "complete.json"
#: Digits of the SHA-256 kept in a cache key.
KEY_LENGTH = 16
_NAMES = "names.json"


# ---- keys --------------------------------------------------------------------------------------------------------
def _rounded(values: Any) -> bytes:
    """Bytes of an array rounded to 1e-6 as integers, so that -0.0 and 0.0 (and float noise) hash alike."""
    return np.rint(np.asarray(values, dtype=np.float64) * 1e6).astype(np.int64).tobytes()


def fingerprint_structures(structures: Any) -> str:
    """A stable SHA-256 (hex) of the crystals, in order.

    Args:
        structures: What :func:`matgl_cdssl.data.read_structures` accepts: pymatgen ``Structure`` objects,
            ASE ``Atoms`` or paths to structure files (or one of these on its own).

    Returns:
        The hex digest. It covers, per crystal, the lattice matrix, the species and the fractional coordinates
        rounded to 1e-6; for a file, its resolved path, size and modification time (its content is not read).

    Raises:
        ValueError: an item of another type, naming it (``structures[i]``).
        FileNotFoundError: a path that does not exist.
    """
    from ase import Atoms
    from pymatgen.core import IStructure

    if isinstance(structures, (str, Path, IStructure, Atoms)) or not hasattr(structures, "__len__"):
        structures = [structures]
    digest = hashlib.sha256()
    for i, item in enumerate(structures):
        if isinstance(item, (str, Path)):
            path = Path(item).resolve()
            if not path.is_file():
                raise FileNotFoundError(f"{item}: no such file")
            stat = path.stat()
            digest.update(f"file:{path}:{stat.st_size}:{stat.st_mtime_ns};".encode())
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


# ---- the cache -----------------------------------------------------------------------------------------------------
def _open_complete(folder: Path, key: str) -> Any | None:
    """The dataset in ``folder`` if it is a complete cache for ``key``, else None (after logging why)."""
    marker = folder / MARKER
    if not marker.is_file():
        if folder.exists():
            logger.warning("Graph cache %s has no %s (an interrupted write?); rebuilding it.", folder, MARKER)
        return None
    try:
        info = json.loads(marker.read_text())
        if info.get("key") != key or info.get("format") != CACHE_FORMAT:
            raise ValueError(f"{marker} is for key {info.get('key')!r} (format {info.get('format')!r})")
        dataset = get_backend().open_graphs(folder)
        if len(dataset) != info["n"]:
            raise ValueError(f"{folder} holds {len(dataset)} graphs; {marker} says {info['n']}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("Graph cache %s is unreadable (%s); rebuilding it.", folder, exc)
        return None
    return dataset


def _raise(name: str, problem: str) -> None:
    raise ValueError(f"{name} {problem}")


def _convert_into(
    staging: Path,
    structures: Any,
    *,
    element_types: Sequence[str],
    cutoff: float,
    labels: dict[str, Sequence] | None,
    shard_size: int,
    key: str,
) -> None:
    """Check the crystals, convert them and write a complete cache (marker last) into ``staging``."""
    names, structs = read_structures(structures)
    check_label_lengths(labels, len(structs))
    screen_structures(names, structs, element_types, _raise)
    # matgl's collate batches the first label: user labels come first, the index last (as in build_dataset).
    all_labels = {k: [v.item() if hasattr(v, "item") else v for v in values] for k, values in (labels or {}).items()}
    all_labels["structure_index"] = list(range(len(structs)))

    backend = get_backend()
    backend.write_graphs(structs, backend.converter(element_types, cutoff), all_labels, staging, shard_size)
    dataset = backend.open_graphs(staging)
    for i in range(len(dataset)):
        problem = connectivity_problem(dataset[i][0], cutoff)
        if problem:
            _raise(names[i], problem)
    (staging / _NAMES).write_text(json.dumps(names))
    info = {
        "key": key,
        "format": CACHE_FORMAT,
        "n": len(structs),
        "backend": backend.name,
        "matgl": matgl_version(),
        "element_types": list(element_types),
        "cutoff": float(cutoff),
        "labels": list(all_labels),
    }
    (staging / MARKER).write_text(json.dumps(info, indent=1))


def cached_dataset(
    structures: Any,
    *,
    element_types: Sequence[str],
    cutoff: float,
    cache_dir: str | Path,
    labels: dict[str, Sequence] | None = None,
    shard_size: int = 1000,
) -> tuple[Any, bool]:
    """Crystals as a matgl dataset, converted once and then loaded from ``cache_dir``.

    Args:
        structures: See :func:`matgl_cdssl.data.read_structures`.
        element_types: The model's element types.
        cutoff: Neighbour cutoff in Å.
        cache_dir: Parent folder of the caches; each lives in ``cache_dir/<key>`` (see :func:`cache_key`).
        labels: Optional labels, one value per crystal; the first one is what matgl's collate batches.
            ``structure_index`` is appended, as in :func:`matgl_cdssl.data.build_dataset`.
        shard_size: Crystals per shard file (PyG only).

    Returns:
        ``(dataset, hit)``: items are ``(graph, lattice, state_attr, labels)``; on PyG a streaming
        ``MGLDiskDataset``, on DGL an in-memory ``MGLDataset``. ``hit`` is True when the graphs were loaded from
        the cache without converting.

    Raises:
        ValueError: a crystal that :func:`matgl_cdssl.data.build_dataset` would reject (named in the message), labels
            of the wrong length or a non-positive ``shard_size``. Nothing is cached then.
        FileNotFoundError: a path that does not exist.
    """
    if shard_size <= 0:
        raise ValueError(f"shard_size must be a positive number of crystals; got {shard_size}")
    folder = cache_folder(structures, element_types=element_types, cutoff=cutoff, cache_dir=cache_dir, labels=labels)
    key = folder.name
    dataset = _open_complete(folder, key)
    if dataset is not None:
        logger.info("Loaded %d cached graphs from %s", len(dataset), folder)
        return dataset, True

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
    try:
        _convert_into(
            staging,
            structures,
            element_types=element_types,
            cutoff=cutoff,
            labels=labels,
            shard_size=shard_size,
            key=key,
        )
        if folder.exists() and not (folder / MARKER).is_file():
            shutil.rmtree(folder)  # an incomplete cache left by an interrupted write
        try:
            staging.rename(folder)
        except OSError:
            if not (folder / MARKER).is_file():
                raise
            # Another process published the same cache meanwhile: keep theirs.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    dataset = _open_complete(folder, key)
    if dataset is None:  # pragma: no cover - the folder was just written and checked
        raise RuntimeError(f"{folder}: the graph cache just written cannot be read back")
    logger.info("Converted %d crystals and cached their graphs in %s", len(dataset), folder)
    return dataset, False
