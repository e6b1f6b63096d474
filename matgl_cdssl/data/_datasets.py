"""Datasets: checked crystals converted into matgl's ``MGLDataset``, and the one seeded split of the package.

The flow is one way: read (:mod:`~matgl_cdssl.data._readers`) -> check (:mod:`~matgl_cdssl.data._checks`) ->
convert (:func:`build_dataset`, or the graph cache of :mod:`~matgl_cdssl.data._cache`) -> split
(:func:`seeded_permutation`, :func:`train_val_split`) -> loaders (``get_backend().loaders``).
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from matgl_cdssl._backend import get_backend
from matgl_cdssl.data._checks import check_label_lengths, connectivity_problem, isolated_atoms, structure_problem
from matgl_cdssl.data._readers import read_structures

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["build_dataset", "seeded_permutation", "train_val_split"]

logger = logging.getLogger(__name__)


def seeded_permutation(n: int, seed: int) -> list[int]:
    """A permutation of ``range(n)`` drawn from ``seed`` alone: the one source of every split in the package.

    ``pretrain``'s and ``finetune``'s train/validation splits (:func:`train_val_split`) and the benchmark's
    test/validation/training blocks are all cut from it, so the same seed gives the same split everywhere. torch's
    global random state is not touched.
    """
    return torch.randperm(int(n), generator=torch.Generator().manual_seed(int(seed))).tolist()


def train_val_split(n: int, val_fraction: float, seed: int, *, min_val: int = 0) -> tuple[list[int], list[int]]:
    """A seeded split of ``range(n)`` into ``(train, val)``, in the order of :func:`seeded_permutation`.

    ``round(n * val_fraction)`` items (at least ``min_val`` when ``val_fraction > 0``) are held out; every item is
    used.

    Raises:
        ValueError: ``val_fraction`` outside ``[0, 1)``, or nothing left to train on.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction!r}")
    n_val = 0 if val_fraction == 0 else max(1, int(min_val), round(n * val_fraction))
    if n - n_val < 1:
        raise ValueError(
            f"{n} structure(s) are too few for val_fraction={val_fraction}"
            + (f" with min_val={min_val}" if min_val else "")
            + ": none would be left to train on"
        )
    perm = seeded_permutation(n, seed)
    return perm[n_val:], perm[:n_val]


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
    allow_isolated: bool = False,
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
        allow_isolated: Accept crystals in which some atom has no neighbour within the cutoff (for prediction and
            embeddings: such an atom receives no messages, as in matgl's ``predict_structure``), with one warning
            that counts them; a crystal with no edge at all is still rejected. See :func:`connectivity_problem`.

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

    connected, lonely = [], []
    for i, (g, *_rest) in enumerate(dataset):
        problem = connectivity_problem(g, cutoff, allow_isolated=allow_isolated)
        if problem:
            reject(names[i], problem)
        else:
            connected.append(i)
            if allow_isolated and isolated_atoms(g):
                lonely.append(names[i])
    if lonely:
        warnings.warn(
            f"{len(lonely)} crystal(s) have atoms with no neighbour within the cutoff of {cutoff} Å (e.g. "
            f"{', '.join(lonely[:3])}); those atoms receive no messages, as in matgl's predict_structure",
            stacklevel=2,
        )
    if not connected:
        raise ValueError("no structure has every atom connected within the cutoff")
    if len(connected) < len(dataset):
        dataset = torch.utils.data.Subset(dataset, connected)
    return dataset, names, skipped
