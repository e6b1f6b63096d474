"""Checks: the bad-input rules, each written once, each naming what it rejects.

:func:`structure_problem` checks a crystal before conversion, :func:`connectivity_problem` its graph after, and
:func:`check_values` / :func:`check_label_lengths` the numbers that come with crystals. Every reader, dataset and
cache of :mod:`matgl_cdssl.data` (and so every app) calls these; none repeats them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from matgl_cdssl._backend import get_backend

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pymatgen.core import Structure

__all__ = [
    "MIN_INTERATOMIC_DISTANCE",
    "check_label_lengths",
    "check_targets",
    "check_values",
    "connectivity_problem",
    "isolated_atoms",
    "structure_problem",
]

#: Two atoms closer than this (Å) are reported as overlapping.
MIN_INTERATOMIC_DISTANCE = 0.5


def check_values(values: Any, what: str, names: Sequence[str] | None = None) -> np.ndarray:
    """``values`` as a float array, or a ``ValueError`` naming the entries that are not finite numbers.

    Args:
        values: One number (or numeric text) per crystal.
        what: What the values are, for the message (``"targets"``, ``"column 'e_form'"``).
        names: The crystals' names; the message names the first bad one (else its index).

    Returns:
        A 1-D float array.
    """
    texts = list(np.asarray(values, dtype=object).reshape(-1))
    array = np.empty(len(texts))
    for i, text in enumerate(texts):
        try:
            array[i] = float(text)
        except (TypeError, ValueError):
            array[i] = np.nan
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        if names is not None:
            i = int(bad[0])
            more = f" ({bad.size - 1} more)" if bad.size > 1 else ""
            raise ValueError(f"{names[i]}: {what} holds {texts[i]!r}, not a finite number{more}")
        raise ValueError(f"{what} has non-finite values (NaN or inf) at index(es) {bad[:10].tolist()}")
    return array


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


def connectivity_problem(g: Any, cutoff: float, *, allow_isolated: bool = False) -> str | None:
    """What is wrong with a converted crystal graph whose atoms lack neighbours within ``cutoff``, or None.

    Args:
        g: The crystal's graph.
        cutoff: The cutoff it was built with, in Å (for the message).
        allow_isolated: Accept atoms without neighbours (they just receive no messages, as in matgl's own
            ``predict_structure``); only a graph with no edge at all is then a problem. Pretraining and finetuning
            keep the strict default: an isolated atom has no bond to denoise or learn from.
    """
    lonely = isolated_atoms(g)
    if not lonely:
        return None
    if allow_isolated:
        if get_backend().topology(g).src.numel() > 0:
            return None
        return f"has no edge at all: no two atoms within the cutoff of {cutoff} Å; use a larger cutoff"
    return (
        f"has atom(s) at site(s) {lonely} with no neighbour within the cutoff of {cutoff} Å; use a larger cutoff or "
        "remove the structure"
    )


def isolated_atoms(g: Any) -> list[int]:
    """Sites of atoms that have no edge (no neighbour within the cutoff)."""
    backend = get_backend()
    degree = torch.bincount(backend.topology(g).src, minlength=backend.frac_coords(g).shape[0])
    return torch.nonzero(degree == 0).flatten().tolist()


def check_targets(
    targets: Sequence[float] | Mapping[str, Sequence[float]] | None, target_weight: float
) -> dict[str, list[float]] | None:
    """The labels of a property learnt beside the pretext, checked: ``{"target": values}`` (None without targets).

    ``targets`` is one value per crystal, or ``{name: values}`` for a named property (the graphs carry it as
    ``"target"`` either way). Unlike :func:`check_values`, a missing label (None or NaN) is allowed: that crystal
    counts for the pretext only.

    Raises:
        ValueError: a value that is not a number or is infinite (naming its index), no label at all, or a
            ``target_weight`` that is not positive.
    """
    if targets is None:
        return None
    if isinstance(targets, Mapping):
        if len(targets) != 1:
            raise ValueError(f"targets as a mapping names one property, {{name: values}}; got {len(targets)} entries")
        (targets,) = targets.values()
    if not (math.isfinite(float(target_weight)) and float(target_weight) > 0):
        raise ValueError(f"target_weight must be a positive number when targets are given; got {target_weight!r}")
    values = []
    for i, value in enumerate(targets):
        try:
            value = float("nan") if value is None else float(value)
        except (TypeError, ValueError):
            raise ValueError(f"targets[{i}] is {value!r}, not a number (NaN for a crystal without a label)") from None
        if math.isinf(value):
            raise ValueError(f"targets[{i}] is {value}; labels must be finite (NaN for a crystal without one)")
        values.append(value)
    if not any(math.isfinite(v) for v in values):
        raise ValueError("targets has no label: every value is NaN")
    return {"target": values}
