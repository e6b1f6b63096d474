"""Readers: user input in, named pymatgen Structures out, one crystal at a time.

Inputs may be pymatgen ``Structure`` objects, ASE ``Atoms`` or paths to files that pymatgen or ASE can read
(CIF, POSCAR/CONTCAR, extxyz, ...), CSV files with a CIF column, and JSON or JSON Lines of ``Structure.as_dict()``
entries. Every crystal gets a name (``structures[3]``, the file path, ``path[id]``) that the checks
(:mod:`matgl_cdssl.data._checks`) use in their messages, so nothing is dropped silently.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from matgl_cdssl.data._checks import check_values

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from pymatgen.core import Structure

__all__ = [
    "STRUCTURE_SUFFIXES",
    "csv_id_column",
    "input_items",
    "iter_csv_structures",
    "iter_json_structures",
    "iter_structures",
    "read_csv_structures",
    "read_labelled_csv",
    "read_structures",
    "structure_files",
]


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
    values = np.column_stack([check_values(frame[column], f"column {column!r}", names) for column in columns])
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


def csv_id_column(columns: Sequence[str], id_column: str | None = None) -> str | None:
    """The column that names a CSV's rows: ``id_column``, else ``material_id`` or ``id`` (None: the row number)."""
    return id_column or next((c for c in ("material_id", "id") if c in columns), None)


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
        id_column = csv_id_column(columns, id_column)
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


def input_files(structures: Any) -> list[Path]:
    """The files among the input's items, spelled as its crystals' names spell them (a folder: its structure files).

    Raises:
        FileNotFoundError: a path that does not exist.
    """
    found: list[Path] = []
    for item in input_items(structures):
        if isinstance(item, (str, Path)):
            path = Path(item)
            if not path.exists():
                raise FileNotFoundError(f"{item}: no such file")
            found.extend(structure_files(path) if path.is_dir() else [path])
    return found


def file_sha256(path: str | Path) -> str:
    """The SHA-256 (hex) of a file's bytes, read in blocks of 1 MiB."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
