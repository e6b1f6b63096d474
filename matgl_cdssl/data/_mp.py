"""The Materials Project data behind ``CDSSL-MEGNet-MP``: the fixed hold-out pool and the pretraining split.

The 36,738 crystals of ``shared/data/mp_multi/mp_multi.csv.gz`` (Materials Project, CC BY 4.0) are split once and
for all by a stable hash of the mp-id (:func:`in_holdout_pool`): about 10% form the hold-out pool,
which pretraining never sees and from which every Materials Project finetuning test set is drawn; the other 90%
are for pretraining. ``configs/mp_holdout_ids.txt`` lists the pool.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

from matgl_cdssl.data._readers import file_sha256, read_csv_structures

if TYPE_CHECKING:
    from pymatgen.core import Structure

__all__ = ["hash_order", "in_holdout_pool", "read_mp_split", "write_mp_split"]


def in_holdout_pool(material_id: str) -> bool:
    """Whether a Materials Project id belongs to the fixed 10% hold-out pool that pretraining never sees.

    The pool is chosen by a stable hash: the first 8 bytes of the SHA-256 of the id, modulo 10, equal 0.
    """
    digest = hashlib.sha256(material_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10 == 0


def hash_order(material_id: str) -> str:
    """Sort key that orders mp-ids by their SHA-256 (a fixed, arbitrary order used to draw subsets)."""
    return hashlib.sha256(material_id.encode()).hexdigest()


def _wants_holdout(split: str) -> bool:
    """Whether ``split`` names the hold-out pool (``"holdout"``) rather than the pretraining split (``"pretrain"``)."""
    if split not in ("pretrain", "holdout"):
        raise ValueError(f"split must be 'pretrain' or 'holdout'; got {split!r}")
    return split == "holdout"


def read_mp_split(path: str | Path, split: str = "pretrain") -> tuple[list[str], list[Structure]]:
    """Read one split of the Materials Project CSV, in hash order.

    Args:
        path: ``mp_multi.csv.gz``.
        split: ``"pretrain"`` (the 90%) or ``"holdout"`` (the 10% pool).

    Returns:
        ``(material_ids, structures)`` ordered by :func:`hash_order`.
    """
    want_holdout = _wants_holdout(split)
    names, structures = read_csv_structures(path, keep=lambda mp_id: in_holdout_pool(mp_id) == want_holdout)
    ids = [name[name.rindex("[") + 1 : -1] for name in names]
    order = sorted(range(len(ids)), key=lambda i: hash_order(ids[i]))
    return [ids[i] for i in order], [structures[i] for i in order]


def write_mp_split(path: str | Path, split: str, folder: str | Path) -> Path:
    """Write one split of the Materials Project CSV to a CSV of its own, in hash order, and return its path.

    The rows are copied as text (no CIF is parsed), so that ``pretrain`` can read the split from disk one crystal at
    a time, as it does any CSV, and a graph cache (keyed on the file's content) is hit by later runs in any folder:
    the file's bytes depend on the source alone. The file is written once: it is rewritten only when ``path`` is newer
    than it and its content changed (a SHA-256 of ``path`` is kept beside the split, so a copy of the same data with
    a new date leaves the split alone).

    Args:
        path: ``mp_multi.csv.gz``.
        split: ``"pretrain"`` or ``"holdout"``, as in :func:`read_mp_split`.
        folder: Where to write ``<name>_<split>.csv.gz``.

    Returns:
        The written (or already present) file. Reading it gives the crystals of :func:`read_mp_split`, in its order.
    """
    want_holdout = _wants_holdout(split)
    path, folder = Path(path), Path(folder)
    dest = folder / f"{path.name.split('.')[0]}_{split}.csv.gz"
    source = dest.with_name(f"{dest.name}.source-sha256")
    if dest.is_file() and dest.stat().st_mtime_ns >= path.stat().st_mtime_ns:
        if not source.is_file():
            source.write_text(file_sha256(path))
        return dest
    if dest.is_file() and source.is_file() and source.read_text() == file_sha256(path):
        return dest
    csv.field_size_limit(2**31 - 1)
    with gzip.open(path, "rt", newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        rows = [row for row in reader if in_holdout_pool(row["material_id"]) == want_holdout]
    rows.sort(key=lambda row: hash_order(row["material_id"]))
    folder.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    # No name or time in the gzip header: the same source gives the same bytes, wherever and whenever it is written,
    # so a graph cache (keyed on the file's content) built from one run's split is hit by the next run's.
    with (
        partial.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", filename="", mtime=0) as packed,
        io.TextIOWrapper(packed, newline="") as f,
    ):
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(dest)
    source.write_text(file_sha256(path))
    return dest
