"""Structures in, graphs out: reading, validating and batching crystals for CDSSL.

Inputs may be pymatgen ``Structure`` objects, ASE ``Atoms`` or paths to files that pymatgen or ASE can read
(CIF, POSCAR/CONTCAR, extxyz, ...). Every crystal is checked before any graph is built, and each problem is
reported with the offending item's name (``structures[3]`` or the file path), so nothing is dropped
silently. Graphs are built with matgl's own converter and dataset classes through :mod:`matgl_cdssl.backend`.

The bundled sample (:func:`load_sample`) holds 1,000 Materials Project crystals with their labels.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import logging
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from matgl_cdssl.backend import get_backend

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from pymatgen.core import Structure

__all__ = [
    "MIN_INTERATOMIC_DISTANCE",
    "STRUCTURE_SUFFIXES",
    "Sample",
    "build_dataset",
    "check_label_lengths",
    "connectivity_problem",
    "in_holdout_pool",
    "isolated_atoms",
    "iter_csv_structures",
    "iter_json_structures",
    "iter_structures",
    "load_sample",
    "read_csv_structures",
    "read_labelled_csv",
    "read_structures",
    "structure_problem",
]

logger = logging.getLogger(__name__)

#: Two atoms closer than this (Å) are reported as overlapping.
MIN_INTERATOMIC_DISTANCE = 0.5


def read_labelled_csv(
    path: str | Path,
    target: str,
    *,
    cif_column: str = "cif",
    id_column: str | None = None,
    state_columns: Sequence[str] = (),
) -> tuple[list[str], list[Structure], np.ndarray, np.ndarray | None]:
    """Read crystals with one property (and optional state attributes) from a CSV with a CIF column.

    Args:
        path: The CSV file (optionally gzipped).
        target: Column holding the property.
        cif_column: Column holding the CIF text.
        id_column: Column naming each row (see :func:`read_csv_structures`).
        state_columns: Columns holding MEGNet state attributes, if any.

    Returns:
        ``(names, structures, targets, state)``; ``state`` is None without state columns.

    Raises:
        ValueError: a missing column, or a value that is empty or not a number, naming the row and column.
    """
    import pandas as pd

    names, structures = read_csv_structures(path, cif_column=cif_column, id_column=id_column)
    columns = [target, *state_columns]
    frame = pd.read_csv(path, usecols=lambda c: c in columns, dtype=str, keep_default_na=False)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: no column(s) {missing}")
    values = np.empty((len(frame), len(columns)))
    for j, column in enumerate(columns):
        for i, text in enumerate(frame[column]):
            try:
                values[i, j] = float(text)
            except ValueError:
                values[i, j] = np.nan
            if not np.isfinite(values[i, j]):
                raise ValueError(f"{names[i]}: column {column!r} holds {text!r}, not a finite number")
    return names, structures, values[:, 0], (values[:, 1:] if state_columns else None)


STRUCTURE_SUFFIXES = (
    ".cif",
    ".vasp",
    ".poscar",
    ".xyz",
    ".extxyz",
    ".traj",
    ".csv",
    ".csv.gz",
    ".json",
    ".json.gz",
    ".jsonl",
    ".jsonl.gz",
)
"""File endings that a folder given as input is searched for (``POSCAR``/``CONTCAR`` files are taken too)."""


def read_csv_structures(
    path: str | Path, *, cif_column: str = "cif", id_column: str | None = None, keep: Any = None
) -> tuple[list[str], list[Structure]]:
    """Read crystals from a CSV (optionally gzipped) with one CIF string per row.

    Args:
        path: The CSV file.
        cif_column: Column holding the CIF text.
        id_column: Column naming each row; ``material_id`` or ``id`` when present, else the row number.
        keep: Optional predicate on the row id; rows for which it is False are not read.

    Returns:
        ``(names, structures)`` with names ``path[id]``.

    Raises:
        ValueError: a missing column or an unreadable CIF, naming the row.
    """
    pairs = list(iter_csv_structures(path, cif_column=cif_column, id_column=id_column, keep=keep))
    return [name for name, _ in pairs], [s for _, s in pairs]


def _open_text(path: Path) -> Any:
    return gzip.open(path, "rt", newline="") if path.name.endswith(".gz") else open(path, newline="")


def iter_csv_structures(
    path: str | Path, *, cif_column: str = "cif", id_column: str | None = None, keep: Any = None
) -> Iterator[tuple[str, Structure]]:
    """Like :func:`read_csv_structures`, one row at a time: yields ``(name, structure)``."""
    import csv

    from pymatgen.core import Structure

    path = Path(path)
    csv.field_size_limit(2**31 - 1)
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if cif_column not in columns:
            raise ValueError(f"{path}: no {cif_column!r} column (columns: {columns})")
        id_column = id_column or next((c for c in ("material_id", "id") if c in columns), None)
        for row_number, row in enumerate(reader):
            row_id = row[id_column] if id_column else str(row_number)
            if keep is not None and not keep(row_id):
                continue
            try:
                structure = Structure.from_str(row[cif_column], fmt="cif")
            except Exception as exc:
                raise ValueError(f"{path}[{row_id}]: could not read the CIF ({type(exc).__name__}: {exc})") from exc
            yield f"{path}[{row_id}]", structure


def _json_structure(item: Any, name: str) -> Structure:
    """A pymatgen Structure from one JSON entry: a ``Structure.as_dict()`` or ``{"structure": <that>, ...}``."""
    from pymatgen.core import Structure

    if isinstance(item, dict) and "structure" in item and "lattice" not in item:
        item = item["structure"]
    if not isinstance(item, dict) or "lattice" not in item or "sites" not in item:
        raise ValueError(
            f"{name}: not a pymatgen Structure dictionary (expected the keys 'lattice' and 'sites', as written by "
            "Structure.as_dict(), or an object with a 'structure' key holding one)"
        )
    try:
        return Structure.from_dict(item)
    except Exception as exc:
        raise ValueError(f"{name}: could not read the structure ({type(exc).__name__}: {exc})") from exc


def _entry_id(item: Any, fallback: str) -> str:
    if isinstance(item, dict):
        for key in ("material_id", "id", "name"):
            if isinstance(item.get(key), (str, int)):
                return str(item[key])
    return fallback


def iter_json_structures(path: str | Path) -> Iterator[tuple[str, Structure]]:
    """Crystals from a JSON file (optionally gzipped), one at a time: yields ``(name, structure)``.

    Accepted layouts (entries are ``Structure.as_dict()`` dictionaries, or objects with one under ``"structure"``
    and optionally an ``"material_id"``/``"id"``/``"name"``):

    * ``.json``: a list of entries, a mapping ``{id: entry}``, or a single entry. The file is parsed as a whole,
      but each crystal is built only when it is reached.
    * ``.jsonl`` (JSON Lines): one entry per line, read line by line.

    Names are ``path[id]`` (or ``path[i]``).

    Raises:
        ValueError: invalid JSON or an entry that is not a structure, naming the file and entry.
    """
    path = Path(path)
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        with _open_text(path) as f:
            for line_number, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}, line {line_number + 1}: invalid JSON ({exc})") from exc
                name = f"{path}[{_entry_id(item, str(line_number))}]"
                yield name, _json_structure(item, name)
        return
    with _open_text(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: invalid JSON ({exc})") from exc
    if isinstance(data, dict) and "lattice" in data:
        yield str(path), _json_structure(data, str(path))
        return
    entries = data.items() if isinstance(data, dict) else ((None, item) for item in data)
    if not isinstance(data, (dict, list)):
        raise ValueError(f"{path}: expected a list or mapping of structures, found a {type(data).__name__}")
    for i, (key, item) in enumerate(entries):
        name = f"{path}[{key if key is not None else _entry_id(item, str(i))}]"
        yield name, _json_structure(item, name)


def structure_files(folder: Path) -> list[Path]:
    """The structure files directly inside ``folder`` (see :data:`STRUCTURE_SUFFIXES`), sorted by name."""
    found = sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and (p.name.lower().endswith(STRUCTURE_SUFFIXES) or p.name.upper().startswith(("POSCAR", "CONTCAR")))
    )
    if not found:
        raise ValueError(f"{folder}: a folder with no structure files (looked for {', '.join(STRUCTURE_SUFFIXES)})")
    return found


def _iter_file(path: Path) -> Iterator[tuple[str, Structure]]:
    """Every crystal in a file, one at a time: a CSV row, a JSON entry or an extxyz/traj frame each."""
    from pymatgen.core import Structure

    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        for file in structure_files(path):
            yield from _iter_file(file)
        return
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        yield from iter_csv_structures(path)
        return
    if name.endswith((".json", ".json.gz", ".jsonl", ".jsonl.gz")):
        yield from iter_json_structures(path)
        return
    try:
        if name.endswith((".xyz", ".extxyz", ".traj")):
            import ase.io

            frames = ase.io.iread(path, index=":")
            first = next(frames)
            second = next(frames, None)
            if second is None:
                yield str(path), _from_ase(first, str(path))
                return
            for i, atoms in enumerate(itertools.chain([first, second], frames)):
                yield f"{path}[{i}]", _from_ase(atoms, f"{path}[{i}]")
            return
        structure = Structure.from_file(path)
    except ValueError as exc:
        if "no such file" in str(exc) or "is not a periodic crystal" in str(exc):
            raise
        raise ValueError(f"{path}: could not read a crystal structure from this file ({exc})") from exc
    except Exception as exc:  # pymatgen/ASE raise many types for malformed files
        raise ValueError(
            f"{path}: could not read a crystal structure from this file ({type(exc).__name__}: {exc})"
        ) from exc
    yield str(path), structure


def _from_ase(atoms: Any, name: str) -> Structure:
    from pymatgen.io.ase import AseAtomsAdaptor

    if not all(atoms.pbc):
        raise ValueError(
            f"{name}: ASE Atoms with pbc={tuple(bool(p) for p in atoms.pbc)} is not a periodic crystal; CDSSL needs "
            "a crystal with a lattice and periodic boundaries in all three directions"
        )
    return AseAtomsAdaptor.get_structure(atoms)


def input_items(structures: Any) -> Any:
    """One crystal or path on its own becomes a list of one."""
    from ase import Atoms
    from pymatgen.core import IStructure

    if isinstance(structures, (str, Path, IStructure, Atoms)) or not hasattr(structures, "__iter__"):
        return [structures]
    return structures


def iter_structures(structures: Any) -> Iterator[tuple[str, Structure]]:
    """Yield ``(name, structure)`` for every crystal of the input, reading files one crystal at a time.

    This is the streaming form of :func:`read_structures`: nothing is held beyond the current crystal (a ``.json``
    file is parsed whole, a ``.jsonl`` file line by line). Same inputs, names and errors.
    """
    from ase import Atoms
    from pymatgen.core import IStructure, Molecule, Structure

    for i, item in enumerate(input_items(structures)):
        if isinstance(item, (str, Path)):
            yield from _iter_file(Path(item))
            continue
        name = f"structures[{i}]"
        if isinstance(item, Molecule):
            raise ValueError(f"{name} is a pymatgen Molecule ({item.formula}); CDSSL needs a periodic Structure")
        if isinstance(item, IStructure):
            yield name, item if isinstance(item, Structure) else Structure.from_sites(item)
        elif isinstance(item, Atoms):
            yield name, _from_ase(item, name)
        else:
            raise ValueError(
                f"{name} is a {type(item).__name__}; expected a pymatgen Structure, ASE Atoms or a path to a file"
            )


def read_structures(structures: Any) -> tuple[list[str], list[Structure]]:
    """Turn user input into named pymatgen Structures.

    Args:
        structures: pymatgen ``Structure`` objects, ASE ``Atoms`` (periodic), or paths (``str``/``Path``) to
            structure files or folders of them. Files: anything pymatgen reads (CIF, POSCAR/CONTCAR, ...), extxyz
            or ASE trajectories (one crystal per frame), a CSV with a ``cif`` column (one per row), JSON or JSON
            Lines of ``Structure.as_dict()`` entries (:func:`iter_json_structures`); ``.gz`` for CSV and JSON.
            A folder contributes its structure files (:data:`STRUCTURE_SUFFIXES`), sorted by name.

    Returns:
        ``(names, structures)``: a name for each crystal, used in error messages (``structures[i]`` for
        objects, the path, ``path[frame]`` or ``path[id]`` for files), and the crystals.

    Raises:
        ValueError: empty input, a Molecule or non-periodic ASE Atoms, an unsupported object, or an unreadable
            file (the message names the item).
        FileNotFoundError: a path that does not exist.
    """
    pairs = list(iter_structures(structures))
    if not pairs:
        raise ValueError("structures is empty: give at least one crystal (pymatgen Structure, ASE Atoms or file path)")
    return [name for name, _ in pairs], [s for _, s in pairs]


def structure_problem(s: Structure, element_types: Sequence[str]) -> str | None:
    """What is wrong with a crystal for CDSSL, or None if nothing is.

    Checks partial occupancy or disorder, non-finite coordinates or lattice, a degenerate lattice, elements outside
    ``element_types``, and atoms closer than :data:`MIN_INTERATOMIC_DISTANCE`.
    """
    if len(s) == 0:
        return "has no atoms"
    if not s.is_ordered:
        return (
            f"({s.composition.formula}) has partial occupancy or disorder; CDSSL needs an ordered crystal with one "
            "element per site (order it first, e.g. with pymatgen's OrderDisorderedStructureTransformation)"
        )
    matrix = s.lattice.matrix
    if not np.isfinite(matrix).all():
        return f"has a non-finite (NaN or inf) lattice matrix: {matrix.tolist()}"
    bad = np.flatnonzero(~np.isfinite(s.frac_coords).all(axis=1))
    if bad.size:
        return f"has non-finite (NaN or inf) coordinates at site(s) {bad.tolist()}"
    if not abs(s.lattice.volume) > 1e-6:
        return f"has a degenerate lattice (volume {s.lattice.volume:.3g} Å^3)"
    unknown = sorted({el.symbol for el in s.composition.elements} - set(element_types))
    if unknown:
        return (
            f"contains element(s) {unknown} outside the model's element_types "
            f"({len(element_types)} elements: {', '.join(element_types)})"
        )
    if len(s) > 1:
        dist = s.distance_matrix
        iu = np.triu_indices(len(s), 1)
        k = int(np.argmin(dist[iu]))
        if dist[iu][k] < MIN_INTERATOMIC_DISTANCE:
            i, j = int(iu[0][k]), int(iu[1][k])
            return (
                f"has overlapping atoms: sites {i} ({s[i].specie}) and {j} ({s[j].specie}) are {dist[i, j]:.3f} Å "
                f"apart (minimum {MIN_INTERATOMIC_DISTANCE} Å)"
            )
    return None


def check_label_lengths(labels: dict[str, Sequence] | None, n: int) -> None:
    """Raise a ``ValueError`` naming the first label that does not have one value per crystal."""
    for key, values in (labels or {}).items():
        if len(values) != n:
            raise ValueError(f"label {key!r} has {len(values)} values for {n} structures")


def connectivity_problem(g: Any, cutoff: float) -> str | None:
    """What is wrong with a converted crystal graph whose atoms lack neighbours within ``cutoff``, or None."""
    lonely = isolated_atoms(g)
    if not lonely:
        return None
    return (
        f"has atom(s) at site(s) {lonely} with no neighbour within the cutoff of {cutoff} Å; use a larger cutoff or "
        "remove the structure"
    )


def isolated_atoms(g: Any) -> list[int]:
    """Sites of atoms that have no edge (no neighbour within the cutoff)."""
    backend = get_backend()
    degree = torch.bincount(backend.topology(g).src, minlength=backend.frac_coords(g).shape[0])
    return torch.nonzero(degree == 0).flatten().tolist()


def build_dataset(
    structures: Sequence[Any],
    *,
    element_types: Sequence[str],
    cutoff: float,
    labels: dict[str, Sequence] | None = None,
    state_attr: Any = None,
    skip_invalid: bool = False,
    names: Sequence[str] | None = None,
    log_skips: bool = True,
) -> tuple[Any, list[str], list[tuple[str, str]]]:
    """Read, check and convert crystals into matgl's ``MGLDataset``.

    Each item carries the given labels (the first is the one matgl's collate batches) and a last label,
    ``structure_index``, its position in the returned name list, so that crystals can be traced back.

    Args:
        structures: See :func:`read_structures`.
        element_types: The model's element types.
        cutoff: Neighbour cutoff in Å.
        labels: Optional extra labels, one value per input crystal.
        state_attr: Optional state attributes (MEGNet's global state), an array of shape ``(n_structures, k)``;
            matgl's default state (zeros) when None.
        skip_invalid: Leave out invalid crystals (each is logged with a warning and returned in ``skipped``)
            instead of raising on the first one.
        names: A name per crystal (per frame of a multi-frame file) for messages and the returned names; default
            ``structures[i]`` or the file path (:func:`read_structures`).
        log_skips: Log a warning for each crystal left out under ``skip_invalid`` (callers that report ``skipped``
            themselves turn it off).

    Returns:
        ``(dataset, names, skipped)``: the dataset (a ``Subset`` when crystals were skipped after graph
        conversion), the name of every converted crystal, and ``(name, reason)`` for each skipped one.

    Raises:
        ValueError: Bad input, naming the crystal: see :func:`read_structures` and :func:`structure_problem`, or an
            atom with no neighbour within ``cutoff``. Also labels of the wrong length.
    """
    read_names, structs = read_structures(structures)
    if names is None:
        names = read_names
    elif len(names) != len(structs):
        raise ValueError(f"names has {len(names)} entries for {len(structs)} crystals")
    names = [str(name) for name in names]
    check_label_lengths(labels, len(structs))
    skipped: list[tuple[str, str]] = []

    def reject(name: str, reason: str) -> None:
        if not skip_invalid:
            raise ValueError(f"{name} {reason}")
        if log_skips:
            logger.warning("Skipping %s: it %s", name, reason)
        skipped.append((name, reason))

    keep = []
    for i, (name, s) in enumerate(zip(names, structs, strict=True)):
        problem = structure_problem(s, element_types)
        if problem is None:
            keep.append(i)
        else:
            reject(name, problem)
    if not keep:
        raise ValueError(f"none of the {len(structs)} structures is usable: {skipped[:3]} ...")
    if state_attr is not None:
        state_attr = torch.as_tensor(np.asarray(state_attr, dtype=np.float32))
        if state_attr.dim() != 2 or len(state_attr) != len(structs) or not torch.isfinite(state_attr).all():
            raise ValueError(
                f"state_attr must be a finite array of shape (n_structures, k) = ({len(structs)}, k); got shape "
                f"{tuple(state_attr.shape)}" + ("" if torch.isfinite(state_attr).all() else " with NaN or inf")
            )
    names = [names[i] for i in keep]
    # matgl's collate batches the first label: user labels come first, the index last.
    all_labels = {key: [values[i] for i in keep] for key, values in (labels or {}).items()}
    all_labels["structure_index"] = list(range(len(keep)))
    backend = get_backend()
    dataset = backend.dataset([structs[i] for i in keep], backend.converter(element_types, cutoff), all_labels)
    if state_attr is not None:
        dataset.state_attr = state_attr[keep]

    connected = []
    for i, (g, *_rest) in enumerate(dataset):
        problem = connectivity_problem(g, cutoff)
        if problem:
            reject(names[i], problem)
        else:
            connected.append(i)
    if not connected:
        raise ValueError("no structure has every atom connected within the cutoff")
    if len(connected) < len(dataset):
        from torch.utils.data import Subset

        dataset = Subset(dataset, connected)
    return dataset, names, skipped


# ---- bundled sample --------------------------------------------------------------------------------------
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
    hold-out pool (:func:`in_holdout_pool`), which pretraining of ``CDSSL-MEGNet-MP`` never sees.

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


def in_holdout_pool(material_id: str) -> bool:
    """Whether a Materials Project id belongs to the fixed 10% hold-out pool that pretraining never sees.

    The pool is chosen by a stable hash: the first 8 bytes of the SHA-256 of the id, modulo 10, equal 0.
    """
    digest = hashlib.sha256(material_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10 == 0
