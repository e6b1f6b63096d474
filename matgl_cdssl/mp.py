"""The Materials Project data behind ``CDSSL-MEGNet-MP``: the fixed hold-out pool and the pretraining split.

The 36,738 crystals of ``shared/data/mp_multi/mp_multi.csv.gz`` (Materials Project, CC BY 4.0) are split once and
for all by a stable hash of the mp-id (:func:`matgl_cdssl.data.in_holdout_pool`): about 10% form the hold-out pool,
which pretraining never sees and from which every Materials Project finetuning test set is drawn; the other 90%
are for pretraining. ``configs/mp_holdout_ids.txt`` lists the pool.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from matgl_cdssl.data import in_holdout_pool, read_csv_structures

if TYPE_CHECKING:
    from pymatgen.core import Structure

__all__ = ["hash_order", "read_mp_split"]


def hash_order(material_id: str) -> str:
    """Sort key that orders mp-ids by their SHA-256 (a fixed, arbitrary order used to draw subsets)."""
    return hashlib.sha256(material_id.encode()).hexdigest()


def read_mp_split(path: str | Path, split: str = "pretrain") -> tuple[list[str], list[Structure]]:
    """Read one split of the Materials Project CSV, in hash order.

    Args:
        path: ``mp_multi.csv.gz``.
        split: ``"pretrain"`` (the 90%) or ``"holdout"`` (the 10% pool).

    Returns:
        ``(material_ids, structures)`` ordered by :func:`hash_order`.
    """
    if split not in ("pretrain", "holdout"):
        raise ValueError(f"split must be 'pretrain' or 'holdout'; got {split!r}")
    want_holdout = split == "holdout"
    names, structures = read_csv_structures(path, keep=lambda mp_id: in_holdout_pool(mp_id) == want_holdout)
    ids = [name[name.rindex("[") + 1 : -1] for name in names]
    order = sorted(range(len(ids)), key=lambda i: hash_order(ids[i]))
    return [ids[i] for i in order], [structures[i] for i in order]
