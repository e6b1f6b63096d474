"""The benchmark's tasks: labelled crystals (:class:`TaskData`), the built-in ones (:data:`TASKS`) and their splits.

The built-in tasks ship their data in ``matgl_cdssl/benchmark_data`` (see its ``ATTRIBUTION.md``): Materials Project
formation energy, band gap and total magnetisation per atom, trained on crystals of the pretraining split (whose
labels pretraining never used) and tested on the hold-out pool, which pretraining never saw; perovskite heat of
formation and indirect gap (Castelli et al.) and matbench's jdft2d and phonons, with a test set fixed per seed.
:data:`DEFAULT_SUITE` leaves out the two zero-dominated tasks (magnetisation, indirect gap).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from typing import TYPE_CHECKING, Any

import numpy as np

from matgl_cdssl.data import load_sample, seeded_permutation

if TYPE_CHECKING:
    from collections.abc import Sequence

    from matgl_cdssl.bench._protocol import BenchmarkSettings

__all__ = [
    "CURVE",
    "DEFAULT_SUITE",
    "TASKS",
    "TaskData",
    "leaks",
    "load_task",
    "median_predictor_mae",
    "read_shipped",
    "shipped_structures",
    "task_sizes",
    "task_splits",
]


@dataclass
class TaskData:
    """Labelled crystals for one benchmark task.

    Attributes:
        name: Task name.
        structures: Crystals used for training and validation (and for testing when no test set is given).
        targets: One value per crystal.
        test_structures: A separate pool of test crystals, or None to draw the test set from ``structures``.
        test_targets: Their values.
        unit: The target's unit, for tables and plots.
        n_test: Test crystals per seed.
    """

    name: str
    structures: Sequence[Any]
    targets: Sequence[float]
    test_structures: Sequence[Any] | None = None
    test_targets: Sequence[float] | None = None
    unit: str = ""
    n_test: int = 500
    sizes: tuple[int | str, ...] | None = None


#: The learning curve of a task that names none: ``"full"`` is every crystal outside the test set and the validation
#: set (the full fold size).
CURVE = (50, 100, 250, 1000)


@dataclass(frozen=True)
class _Builtin:
    source: str
    label: str
    unit: str
    per_atom: bool = False
    n_test: int = 500
    sizes: tuple[int | str, ...] = CURVE


TASKS = {
    "mp_formation_energy": _Builtin("mp", "formation_energy_per_atom_eV", "eV/atom"),
    "mp_band_gap": _Builtin("mp", "band_gap_eV", "eV"),
    "mp_magnetization": _Builtin("mp", "total_magnetization_muB", "μB/atom", per_atom=True),
    "perov_heat_ref": _Builtin("perov5", "heat_ref", "eV/cell", n_test=1000),
    "perov_ind_gap": _Builtin("perov5", "ind_gap", "eV", n_test=1000),
    "matbench_jdft2d": _Builtin("matbench_jdft2d", "target", "meV/atom", n_test=127, sizes=(50, 100, 250, "full")),
    "matbench_phonons": _Builtin("matbench_phonons", "target", "cm^-1", n_test=253, sizes=(50, 100, 250, 500, "full")),
}
"""Every built-in task: Materials Project (``mp_*``), perovskite (``perov_*``) and two Matbench v0.1 tasks (complete,
in matbench's order and with its ids; their own 5-fold protocol is :func:`~matgl_cdssl.bench.run_matbench`)."""

DEFAULT_SUITE = ("mp_formation_energy", "mp_band_gap", "perov_heat_ref", "matbench_jdft2d", "matbench_phonons")
"""The tasks :func:`~matgl_cdssl.bench.benchmark` runs when none are named. ``mp_magnetization`` (69% of its labels
are zero) and ``perov_ind_gap`` (96% zero) stay loadable by name, but no arm beats predicting their median: they say
nothing about representations (docs/benchmark.md)."""


def leaks(task: str, seen: Sequence[str] | None) -> bool:
    """Whether weights that saw the labels ``seen`` (:func:`~matgl_cdssl.hub.labels_seen`) saw those of ``task``.

    ``seen`` names benchmark tasks (``"mp_formation_energy"``), or, for a property learnt beside the pretext, the
    column it came from: a built-in task's own label column counts for that task too (Materials Project and
    perovskite columns; matbench's generic ``"target"`` does not).

    Example:
        >>> seen = ["formation_energy_per_atom_eV"]
        >>> leaks("mp_formation_energy", seen), leaks("mp_band_gap", seen)
        (True, False)
    """
    seen = set(seen or ())
    builtin = TASKS.get(task)
    return task in seen or (builtin is not None and builtin.label != "target" and builtin.label in seen)


def read_shipped(name: str) -> list[dict]:
    """The rows of a data file shipped in ``matgl_cdssl/benchmark_data`` (``mp_trainval.json.gz``, ...)."""
    with gzip.open(files("matgl_cdssl").joinpath(f"benchmark_data/{name}").open("rb"), "rt") as f:
        return json.load(f)


def shipped_structures(rows: Sequence[dict]) -> list:
    """The crystals of shipped rows (each with ``lattice``, ``species`` and ``frac_coords``) as pymatgen structures."""
    from pymatgen.core import Lattice, Structure

    return [Structure(Lattice(r["lattice"]), r["species"], r["frac_coords"]) for r in rows]


def load_task(name: str) -> TaskData:
    """Load a built-in task of :data:`TASKS` from the shipped data.

    Example:
        >>> task = load_task("perov_heat_ref")
        >>> len(task.structures), task.test_structures is None, task.unit
        (4000, True, 'eV/cell')
    """
    if name not in TASKS:
        raise ValueError(f"unknown benchmark task {name!r}; known tasks: {', '.join(TASKS)}")
    spec = TASKS[name]
    if spec.source != "mp":  # one pool, the test set drawn from it per seed
        rows = read_shipped(f"{spec.source}.json.gz")
        targets = [r[spec.label] for r in rows]
        return TaskData(name, shipped_structures(rows), targets, unit=spec.unit, n_test=spec.n_test, sizes=spec.sizes)
    rows = read_shipped("mp_trainval.json.gz")
    structures = shipped_structures(rows)
    targets = np.array([r[spec.label] for r in rows], dtype=float)
    test = load_sample()
    test_targets = test.labels[spec.label]
    if spec.per_atom:
        targets = targets / np.array([len(s) for s in structures])
        test_targets = test_targets / np.array([len(s) for s in test.structures])
    return TaskData(name, structures, targets.tolist(), test.structures, test_targets.tolist(), unit=spec.unit,
                    n_test=spec.n_test, sizes=spec.sizes)  # fmt: skip


def task_splits(task: TaskData, sizes: Sequence[int], seed: int, settings: BenchmarkSettings) -> dict[str, Any]:
    """Index sets of one seed: ``test`` (into the test pool), and ``val``/``train`` per size (into the main pool)."""
    n_pool = len(task.structures)
    if task.test_structures is None:
        order = seeded_permutation(n_pool, seed)
        test, rest = order[: task.n_test], order[task.n_test :]
    else:
        test = seeded_permutation(len(task.test_structures), seed)[: task.n_test]
        rest = seeded_permutation(n_pool, seed + 1)
    val_block = settings.n_val(max(sizes))
    if val_block + max(sizes) > len(rest):
        raise ValueError(
            f"task {task.name!r} has {len(rest)} crystals outside its test set, fewer than the {max(sizes)} training "
            f"+ {val_block} validation crystals that training size {max(sizes)} needs; use smaller sizes or fewer "
            f"validation crystals (min_val={settings.min_val}, --min-val)"
        )
    return {
        "test": test,
        "val": {n: rest[: settings.n_val(n)] for n in sizes},
        "train": {n: rest[val_block : val_block + n] for n in sizes},
    }


def task_sizes(
    task: TaskData, sizes: Sequence[int | str] | Mapping[str, Sequence[int | str]] | None, settings: BenchmarkSettings
) -> list[int]:
    """A task's training sizes, sorted, ``"full"`` resolved: the most that leave its test and validation sets."""
    if isinstance(sizes, Mapping):
        sizes = sizes.get(task.name)
    wanted = sizes if sizes is not None else (task.sizes or CURVE)
    rest = len(task.structures) - (task.n_test if task.test_structures is None else 0)
    full = rest
    while full > 0 and full + settings.n_val(full) > rest:
        full -= 1
    resolved = set()
    for n in wanted:
        if n == "full" and full < 1:
            test = f"{task.n_test} go to its test set" if task.test_structures is None else "its test set is apart"
            raise ValueError(
                f"task {task.name!r}: training size 'full' leaves no crystal to train on: the task has "
                f"{len(task.structures)} crystals, {test}, and validation needs {settings.n_val(1)} "
                f"(min_val={settings.min_val}): give it at least {settings.n_val(1) + 1} crystals outside the test "
                f"set (fewer test crystals, n_test) or a smaller min_val"
            )
        if n == "full":
            resolved.add(full)
        elif isinstance(n, str) or int(n) < 1:
            raise ValueError(f"task {task.name!r}: a training size is a positive number or 'full'; got {n!r}")
        else:
            resolved.add(int(n))
    return sorted(resolved)


def median_predictor_mae(task: TaskData, split: dict[str, Any], sizes: Sequence[int]) -> dict:
    """Test MAE of the trivial model that predicts the training labels' median, per training size."""
    test = np.asarray(task.test_targets if task.test_structures is not None else task.targets, dtype=float)
    y_test = test[split["test"]]
    y = np.asarray(task.targets, dtype=float)
    return {n: float(np.abs(y_test - np.median(y[split["train"][n]])).mean()) for n in sizes}
