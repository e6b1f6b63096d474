"""SSL vs scratch: finetune a pretrained MEGNet and the same MEGNet from random initialisation, side by side.

Each configuration (task, training size, seed) trains every arm on the same split, with the same selection rule for
its learning rate and the same budget:

- ``CDSSL``: the pretrained model (``CDSSL-MEGNet-MP`` or any folder), its readout freshly initialised from the seed;
- ``scratch``: the same architecture, initialised from the seed;
- ``supervised``: transfer from matgl's supervised formation-energy MEGNet (its backbone, a fresh readout).

The built-in tasks (:data:`TASKS`) ship their data in ``matgl_cdssl/benchmark_data`` (see its ``ATTRIBUTION.md``):
Materials Project formation energy, band gap and total magnetisation per atom, trained on crystals of the
pretraining split (whose labels pretraining never used) and tested on the hold-out pool, which pretraining never
saw; perovskite heat of formation and indirect gap (Castelli et al.) and matbench's jdft2d and phonons, with a test
set fixed per seed. :data:`DEFAULT_SUITE` leaves out the two zero-dominated tasks (magnetisation, indirect gap).
Finished runs are cached in ``OUTPUT_DIR/runs.jsonl``, so an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np

from matgl_cdssl.apps._curves import COLORS, curve_name
from matgl_cdssl.apps._finetune import fit
from matgl_cdssl.apps._tuning import Candidate, candidates, choose
from matgl_cdssl.data import build_dataset, check_values, load_sample, seeded_permutation
from matgl_cdssl.hub import READOUT, megnet_of, new_like

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    import pandas as pd
    from torch import nn

__all__ = [
    "CURVE",
    "DEFAULT_SUITE",
    "TASKS",
    "BenchmarkResult",
    "BenchmarkSettings",
    "TaskData",
    "arm_start",
    "benchmark",
    "load_task",
    "report",
]

logger = logging.getLogger(__name__)


ARMS = ("CDSSL", "scratch", "supervised")
"""The default arms: the pretrained model (``model``), the same architecture from scratch, and transfer from matgl's
supervised formation-energy MEGNet (:data:`SUPERVISED`)."""

#: matgl's supervised formation-energy MEGNet, shipped for the ``"supervised"`` arm (see benchmark_data/ATTRIBUTION.md).
SUPERVISED = "MEGNet-MP-2018.6.1-Eform"
#: Tasks whose labels the supervised arm's pretraining saw (Materials Project formation energies): leakage.
SUPERVISED_LEAKS = ("mp_formation_energy",)


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
in matbench's order and with its ids; their own 5-fold protocol is :func:`~matgl_cdssl.apps.run_matbench`)."""

DEFAULT_SUITE = ("mp_formation_energy", "mp_band_gap", "perov_heat_ref", "matbench_jdft2d", "matbench_phonons")
"""The tasks :func:`benchmark` runs when none are named. ``mp_magnetization`` (69% of its labels are zero) and
``perov_ind_gap`` (96% zero) stay loadable by name, but no arm beats predicting their median: they say nothing about
representations (docs/benchmark.md)."""


@dataclass(frozen=True)
class BenchmarkSettings:
    """The selection rule and the budget, identical for every arm.

    Each arm picks its own learning rate per task from ``lr_grid`` (and, when it starts from pretrained weights, the
    backbone's rate as a fraction of it from ``backbone_lr_scales``): every candidate trains at the ``tune_sizes``
    (those among the benchmark's sizes; the smallest size if none is) with the first seed, and the lowest geometric
    mean of the best validation MAEs wins (:func:`~matgl_cdssl.apps.choose`). Every run then trains until its
    validation MAE has not improved for ``patience`` epochs, under a cap of ``max_epochs``, its rates halved
    whenever the validation MAE has not improved for ``lr_patience`` epochs (None: matgl's cosine decay over the cap,
    the 0.2 protocol), and its best validation epoch is tested. The validation set has ``clip(n_train // 4, min_val,
    max_val)`` crystals. :meth:`doubled` is the same rule with twice the budget (the convergence check).

    The defaults are the 0.4 protocol (docs/benchmark.md, "Protocol"); the 0.3 protocol is ``max_epochs=1000,
    patience=100, lr_patience=20, min_val=50`` with ``tune_sizes=(100,)``.
    """

    lr_grid: tuple[float, ...] = (1e-3, 3e-3)
    backbone_lr_scales: tuple[float, ...] = (1.0, 0.1)
    tune_sizes: tuple[int, ...] = (100, 250)
    freeze_backbone: bool = False
    batch_size: int = 32
    loss: str = "l1_loss"
    max_epochs: int = 2000
    patience: int = 200
    lr_patience: int | None = 40
    min_val: int = 150
    max_val: int = 500

    def n_val(self, n_train: int) -> int:
        """Validation crystals for a training set of ``n_train``."""
        return int(np.clip(n_train // 4, self.min_val, self.max_val))

    def doubled(self) -> BenchmarkSettings:
        """Twice the budget: the epoch cap, the patience and the schedule's patience.

        The rates of the run at twice the budget halve half as often and it waits twice as long for a better epoch,
        so it trains about twice as many epochs at every rate. (Doubling the patience alone would add epochs at rates
        already annealed to a few percent, where little can change.)
        """
        lr_patience = None if self.lr_patience is None else 2 * self.lr_patience
        return replace(self, max_epochs=2 * self.max_epochs, patience=2 * self.patience, lr_patience=lr_patience)

    def extended(self) -> BenchmarkSettings:
        """Twice the epoch cap and the patience, the same schedule (the extension check).

        With the plateau schedule (``lr_patience``) the longer run repeats the shorter one epoch for epoch and goes
        on after it would have stopped, so its test MAE changes only if a later epoch validates better: whether the
        run stopped too early, with nothing else changed. (Under matgl's cosine decay the cap sets the schedule, and
        this is :meth:`doubled`.)
        """
        return replace(self, max_epochs=2 * self.max_epochs, patience=2 * self.patience)


QUICK = {
    "tasks": ("mp_formation_energy", "perov_heat_ref"),
    "sizes": (50, 250),
    "seeds": (0,),
    "settings": BenchmarkSettings(
        lr_grid=(3e-3,), backbone_lr_scales=(1.0,), max_epochs=40, patience=10, lr_patience=3, min_val=50, max_val=100
    ),
    "n_test": 200,
}
"""``quick=True``: two tasks, two sizes, one seed, one learning rate and a small budget (about half a minute on 2 CPU
cores)."""


@dataclass
class BenchmarkResult:
    """What :func:`benchmark` returns.

    Attributes:
        runs: One row per run (task, n_train, seed, arm, test_MAE, ...).
        table: The markdown summary (see :func:`report`).
        paths: Files written: ``runs_csv``, ``table_md`` and ``figure_png``.
    """

    runs: pd.DataFrame
    table: str
    paths: dict[str, Path] = field(default_factory=dict)


def _read_json_gz(name: str) -> list[dict]:
    with gzip.open(files("matgl_cdssl").joinpath(f"benchmark_data/{name}").open("rb"), "rt") as f:
        return json.load(f)


def _structures(rows: list[dict]) -> list:
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
        rows = _read_json_gz(f"{spec.source}.json.gz")
        targets = [r[spec.label] for r in rows]
        return TaskData(name, _structures(rows), targets, unit=spec.unit, n_test=spec.n_test, sizes=spec.sizes)
    rows = _read_json_gz("mp_trainval.json.gz")
    structures = _structures(rows)
    targets = np.array([r[spec.label] for r in rows], dtype=float)
    test = load_sample()
    test_targets = test.labels[spec.label]
    if spec.per_atom:
        targets = targets / np.array([len(s) for s in structures])
        test_targets = test_targets / np.array([len(s) for s in test.structures])
    return TaskData(name, structures, targets.tolist(), test.structures, test_targets.tolist(), unit=spec.unit,
                    n_test=spec.n_test, sizes=spec.sizes)  # fmt: skip


def _splits(task: TaskData, sizes: Sequence[int], seed: int, settings: BenchmarkSettings) -> dict[str, Any]:
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


@dataclass
class _Graphs:
    """Crystals of one task converted to graphs once, and the labelled subsets the runs train on.

    ``index`` maps a crystal's index in the task to its position in ``dataset``.
    """

    dataset: Any
    index: dict[int, int]

    @classmethod
    def of(cls, structures: Sequence[Any], targets: Sequence[float], needed: set[int], model: nn.Module,
           name: str) -> _Graphs:  # fmt: skip
        """The ``needed`` crystals (indices into ``structures``); an invalid one raises, naming it."""
        dataset, kept, _ = _convert(structures, targets, sorted(needed), model, name, skip_invalid=False)
        return cls(dataset, {i: k for k, i in enumerate(kept)})

    @classmethod
    def valid(
        cls, structures: Sequence[Any], targets: Sequence[float], model: nn.Module, name: str
    ) -> tuple[_Graphs, list[int], list[tuple[str, str]]]:
        """Every crystal that the checks accept, converted: ``(graphs, kept, skipped)``.

        ``graphs`` is indexed by the position among the ``kept`` crystals (their indices into ``structures``), so
        that it serves the task without the ``skipped`` ones, ``(name, reason)`` each.
        """
        dataset, kept, skipped = _convert(structures, targets, range(len(structures)), model, name, skip_invalid=True)
        return cls(dataset, {k: k for k in range(len(kept))}), kept, skipped

    def subset(self, indices: Sequence[int]) -> Any:
        from torch.utils.data import Subset

        return Subset(self.dataset, [self.index[int(i)] for i in indices])


def _convert(
    structures: Sequence[Any],
    targets: Sequence[float],
    picked: Sequence[int],
    model: nn.Module,
    name: str,
    *,
    skip_invalid: bool,
) -> tuple[Any, list[int], list[tuple[str, str]]]:
    """Check the ``picked`` crystals' targets and convert the crystals: ``(dataset, kept, skipped)``.

    Each crystal is named by its index in the task (``name[i]``), not by its position among those picked; ``kept``
    are the indices of those in the dataset, in order.
    """
    names = [f"{name}[{i}]" for i in picked]
    values = check_values(np.asarray(targets, dtype=object)[list(picked)], "target", names)
    dataset, _, skipped = build_dataset([structures[i] for i in picked], element_types=model.element_types,
                                        cutoff=model.cutoff, labels={"target": values.tolist()}, names=names,
                                        skip_invalid=skip_invalid, log_skips=False)  # fmt: skip
    rejected = {crystal for crystal, _ in skipped}  # build_dataset names every converted crystal, connected or not
    return dataset, [i for i, crystal in zip(picked, names, strict=True) if crystal not in rejected], skipped


def _fingerprint(
    model_digest: str, settings: BenchmarkSettings, task: TaskData, split: dict[str, Any], candidate: Candidate
) -> str:
    """What a run's result depends on besides its size, seed and arm: the weights, its rates, the budget, the split.

    The grid a rate was chosen from is left out (a run with the same rate is the same run, whatever else the grid
    held).

    The split's indices are hashed themselves (they depend on the task, the seed and, through the validation block,
    on the largest training size), so a cached run is reused only for exactly the same crystals.
    """
    indices = {
        "test": [int(i) for i in split["test"]],
        "val": {str(n): [int(i) for i in v] for n, v in split["val"].items()},
        "train": {str(n): [int(i) for i in v] for n, v in split["train"].items()},
    }
    budget = {k: v for k, v in asdict(settings).items() if k not in ("lr_grid", "backbone_lr_scales", "tune_sizes")}
    if budget["lr_patience"] is None:  # the cosine schedule's runs keep the fingerprints they had before lr_patience
        del budget["lr_patience"]
    rates = [candidate.lr, candidate.backbone_lr]
    payload = json.dumps([model_digest, budget, rates, task.name, len(task.structures), indices], default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _weights_digest(model: nn.Module, *, weights: bool = True) -> str:
    """A SHA-256 of a model's class, constructor arguments and backbone weights: different models never share runs.

    The readout is left out: no arm uses it (a pretrained arm gets a fresh one), and a model loaded by name has a
    random one. ``weights=False`` digests the architecture alone (the scratch arm, which uses no weights).
    """
    digest = hashlib.sha256(f"{type(model).__qualname__}:{json.dumps(model._init_args, default=str)}".encode())
    for key, value in model.state_dict().items() if weights else ():
        if key.split(".")[0] in READOUT:
            continue
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def arm_start(arm: str | Path | nn.Module, model: str | Path | nn.Module = "CDSSL-MEGNet-MP") -> tuple[nn.Module, str]:
    """An arm's starting point and what a run takes from it (:func:`~matgl_cdssl.hub.new_like`'s ``weights``).

    ``"CDSSL"`` is ``model``; ``"scratch"`` ``model``'s architecture at random initialisation (``"none"``);
    ``"supervised"`` matgl's supervised formation-energy MEGNet (:data:`SUPERVISED`, shipped); any other name, folder
    or MEGNet is a pretrained arm. A pretrained arm keeps the backbone and gets a fresh readout from the run's seed
    (``"backbone"``).
    """
    if isinstance(arm, str) and arm == "CDSSL":
        return megnet_of(model), "backbone"
    if isinstance(arm, str) and arm == "scratch":
        return megnet_of(model), "none"
    if isinstance(arm, str) and arm == "supervised":
        return megnet_of(Path(str(files("matgl_cdssl").joinpath(f"benchmark_data/{SUPERVISED}")))), "backbone"
    return megnet_of(arm), "backbone"


def _arm_templates(arms: Sequence[str], model: str | Path | nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Each arm's :func:`arm_start`, by its name in the table; every arm has the CDSSL model's elements and cutoff."""
    cdssl = megnet_of(model)
    out = {str(arm): arm_start(arm, cdssl) for arm in dict.fromkeys(arms)}
    if "scratch" not in out:
        raise ValueError(f"arms={tuple(arms)!r} needs 'scratch': every arm is compared with it")
    for arm, (net, _) in out.items():
        if tuple(net.element_types) != tuple(cdssl.element_types) or float(net.cutoff) != float(cdssl.cutoff):
            raise ValueError(f"arm {arm!r} has other element types or another cutoff than the CDSSL model")
    return out


def benchmark(
    model: str | Path | nn.Module = "CDSSL-MEGNet-MP",
    *,
    arms: Sequence[str] = ARMS,
    tasks: Sequence[str | TaskData] | None = None,
    sizes: Sequence[int | str] | Mapping[str, Sequence[int | str]] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    output_dir: str | Path = "cdssl-benchmark",
    settings: BenchmarkSettings | None = None,
    quick: bool = False,
    progress: bool = True,
    skip_invalid: bool = False,
    check_convergence: bool | int | Mapping[str, int] = False,
    check_extension: bool | int | Mapping[str, int] = False,
    curves: bool = True,
    **trainer_kwargs: Any,
) -> BenchmarkResult:
    """Run the SSL-vs-scratch benchmark and write its CSV, markdown table and bar chart.

    Args:
        model: The pretrained arm: a registered name, a model folder, or a MEGNet.
        arms: Which arms to train: ``"CDSSL"`` (``model``), ``"scratch"`` (required: the reference of every
            comparison), ``"supervised"`` (transfer from matgl's supervised formation-energy MEGNet, whose labels
            leak into the Materials Project formation-energy task: marked in the table), or a registered name or
            model folder of another pretrained MEGNet.
        tasks: Built-in task names (:data:`TASKS`; :data:`DEFAULT_SUITE` by default) and/or your own
            :class:`TaskData`.
        sizes: Training-set sizes for every task (``"full"``: all crystals outside the test and validation sets),
            or a mapping from task names to their own sizes (a task it does not name keeps its own curve; a
            built-in task that is not run is ignored, so one mapping serves several calls); None: each task's own
            learning curve (``TaskData.sizes``, else :data:`CURVE`).
        seeds: One split and one initialisation per seed (the first also chooses each arm's learning rate).
        output_dir: Where ``runs.jsonl`` (the cache), ``runs.csv``, ``results.md`` and ``results.png`` go.
        settings: The selection rule and the budget (:class:`BenchmarkSettings`), the same for every arm.
        quick: The small suite of :data:`QUICK` (for CI and docs); it overrides tasks, sizes, seeds and settings.
        progress: Show a progress bar over the runs.
        skip_invalid: Leave out the crystals of a task that the checks reject (an atom with no neighbour within the
            cutoff, overlapping atoms, ...), with one warning per task that counts them, and list them in
            ``results.md``. Every crystal is checked before any training starts; without it the first invalid one
            raises, naming it.
        check_convergence: Also train every arm at each task's two largest sizes with twice the budget
            (:meth:`BenchmarkSettings.doubled`), and write ``convergence.md``: the change of the test MAE, which
            should stay below 3%. True: the first seed; a number N: the first N seeds, and the criterion applies to
            the change of the mean over them (single runs of small validation sets pick their best epoch noisily);
            a mapping from task names to such numbers gives each task its own (a task it does not name: 0, not
            checked).
        check_extension: The same, with only the patience and the epoch cap doubled
            (:meth:`BenchmarkSettings.extended`): the longer run follows the same schedule and goes on where the
            shorter one stopped, so a change means that the shorter one stopped too early. A second table in
            ``convergence.md``; the same forms as ``check_convergence``.
        curves: Keep each run's training and validation MAE and learning rate per epoch (Lightning's CSV logger) in
            ``OUTPUT_DIR/curves/<run>/metrics.csv`` (:func:`~matgl_cdssl.apps.curve_name`), for
            :func:`~matgl_cdssl.apps.plot_curves`: whether an arm ends under-trained, stuck or overfitting.
        **trainer_kwargs: Passed to ``lightning.Trainer`` (for example ``accelerator="gpu"``).

    Returns:
        A :class:`BenchmarkResult`.

    Raises:
        ValueError: an unknown task, a task with too few crystals for the sizes, sizes for a name that is neither a
            built-in task nor one run, or non-finite targets.
    """
    if quick:
        tasks, sizes, seeds, settings = QUICK["tasks"], QUICK["sizes"], QUICK["seeds"], QUICK["settings"]
    settings = settings or BenchmarkSettings()
    tasks = tasks if tasks is not None else DEFAULT_SUITE
    names = [t if isinstance(t, str) else t.name for t in tasks]
    checks = {"check_convergence": check_convergence, "check_extension": check_extension}
    for option, given in (("sizes", sizes), *checks.items()):
        if isinstance(given, Mapping) and (unknown := sorted(set(given) - set(names) - set(TASKS))):
            raise ValueError(f"{option}: given for {unknown}, neither a built-in task ({', '.join(TASKS)}) nor one run")
    check_seeds = {option: given if isinstance(given, Mapping) else dict.fromkeys(names, given)
                   for option, given in checks.items()}  # fmt: skip
    loaded = [load_task(t) if isinstance(t, str) else t for t in tasks]
    templates = _arm_templates(arms, model)
    reference = templates["scratch"][0]  # every arm has its element types and cutoff (checked)
    left_out: list[tuple[str, str, str]] = []
    graphs: dict[str, tuple[_Graphs, _Graphs]] = {}  # converted while checking (skip_invalid), else before the runs
    if skip_invalid:
        checked = [_valid_part(t, reference, left_out) for t in loaded]
        loaded = [t for t, _ in checked]
        graphs = {t.name: g for t, g in checked}
    if quick:
        for t in loaded:
            t.n_test = min(t.n_test, QUICK["n_test"])
    model_name = model if isinstance(model, (str, Path)) else type(model).__name__
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    cache = output_dir / "runs.jsonl"
    done = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            record = json.loads(line)
            done[_run_key(record)] = record

    sizes_of = {t.name: _task_sizes(t, sizes, settings) for t in loaded}
    splits = {(t.name, seed): _splits(t, sizes_of[t.name], seed, settings) for t in loaded for seed in seeds}
    digests = {arm: _weights_digest(net, weights=kind != "none") for arm, (net, kind) in templates.items()}
    grids = {
        arm: candidates(settings.lr_grid, settings.backbone_lr_scales, pretrained=kind != "none")
        for arm, (_, kind) in templates.items()
    }

    def run(t: TaskData, seed: int, n: int, arm: str, candidate: Candidate, budget: BenchmarkSettings = settings,
            shorter: tuple[int, int] | None = None):  # fmt: skip
        fingerprint = _fingerprint(digests[arm], budget, t, splits[t.name, seed], candidate)
        return {"task": t, "fingerprint": fingerprint, "seed": seed, "n_train": n, "arm": arm,
                "candidate": candidate, "settings": budget, "shorter": shorter}  # fmt: skip

    execute = _Runner(loaded, splits, sizes_of, seeds, templates, done, cache, str(model_name), progress,
                      trainer_kwargs, graphs, curves)  # fmt: skip
    tune_at = {
        t.name: [n for n in sizes_of[t.name] if n in settings.tune_sizes] or sizes_of[t.name][:1] for t in loaded
    }
    tuning = [
        run(t, seeds[0], n, arm, c) for t in loaded for arm in templates for c in grids[arm] for n in tune_at[t.name]
    ]
    tuned = any(len(g) > 1 for g in grids.values())  # with one rate per arm there is nothing to choose
    if tuned:
        execute(tuning, "choosing learning rates")

    def val_maes(t: TaskData, arm: str, c: Candidate) -> list[float]:
        return [done[_run_key(run(t, seeds[0], n, arm, c))]["best_val_MAE"] for n in tune_at[t.name]]

    chosen = {
        (t.name, arm): grid[0] if len(grid) == 1 else choose({c: val_maes(t, arm, c) for c in grid})
        for t in loaded
        for arm, grid in grids.items()
    }
    plan = [
        run(t, seed, n, arm, chosen[t.name, arm])
        for t in loaded
        for seed in seeds
        for n in sizes_of[t.name]
        for arm in templates
    ]

    def longer_runs(option: str, budget: Callable[[], BenchmarkSettings], shorter: tuple[int, int] | None = None):
        """``(run, the same run with a longer budget)`` at each checked task's two largest sizes, every arm."""
        return [
            (run(t, seed, n, arm, chosen[t.name, arm]), run(t, seed, n, arm, chosen[t.name, arm], budget(), shorter))
            for t in loaded
            for n in sizes_of[t.name][-2:]
            for arm in templates
            for seed in seeds[:int(check_seeds[option].get(t.name, 0))]
        ]  # fmt: skip

    pairs = longer_runs("check_convergence", settings.doubled)
    # The extension's runs report the base run inside them (ShorterRun: on the same machine) themselves.
    extended = [twice for _, twice in longer_runs("check_extension", settings.extended,
                                                  (settings.patience, settings.max_epochs))]  # fmt: skip
    execute(plan + [twice for _, twice in pairs] + extended, "benchmark")

    trivial = {(t.name, seed): _median_predictor_mae(t, splits[t.name, seed], sizes_of[t.name]) for t in loaded
               for seed in seeds}  # fmt: skip
    runs = [{**done[_run_key(p)], "median_MAE": trivial[p["task"].name, p["seed"]][p["n_train"]]} for p in plan]
    selection = [{**done[_run_key(p)], "chosen": p["candidate"] == chosen[p["task"].name, p["arm"]]} for p in tuning]
    convergence = [(done[_run_key(base)], done[_run_key(twice)]) for base, twice in pairs]
    extension = [(_shorter_record(done[_run_key(p)]), done[_run_key(p)]) for p in extended]
    return report(runs, output_dir, left_out=left_out, selection=selection if tuned else (), convergence=convergence,
                  extension=extension)  # fmt: skip


@dataclass
class _Runner:
    """Train the runs of a plan that the cache does not hold, each with its candidate's rate and its budget.

    Every crystal that a task's runs need is checked and converted once, before the task's first run (or while
    checking the task, under ``skip_invalid``: ``graphs``).
    """

    loaded: Sequence[TaskData]
    splits: dict[tuple[str, int], dict[str, Any]]
    sizes: dict[str, list[int]]
    seeds: Sequence[int]
    templates: dict[str, tuple[nn.Module, str]]
    done: dict[tuple, dict]
    cache: Path
    model_name: str
    progress: bool
    trainer_kwargs: dict[str, Any]
    graphs: dict[str, tuple[_Graphs, _Graphs]] = field(default_factory=dict)
    curves: bool = True

    def __call__(self, plan: list[dict], desc: str) -> None:
        from tqdm.auto import tqdm

        todo = list({_run_key(p): p for p in plan if _run_key(p) not in self.done or
                     (p["shorter"] and "shorter" not in self.done[_run_key(p)])}.values())  # fmt: skip
        logger.info("%s: %d runs, %d cached, %d to do", desc, len(plan), len(plan) - len(todo), len(todo))
        reference = self.templates["scratch"][0]
        for t in self.loaded:
            if t.name not in self.graphs and any(p["task"] is t for p in todo):
                self.graphs[t.name] = _task_graphs(t, [self.splits[t.name, s] for s in self.seeds], self.sizes[t.name],
                                                   reference)  # fmt: skip
        bar = tqdm(total=len(todo), disable=not self.progress, desc=desc)
        with _lightning_warnings_only():
            for p in todo:
                self._train(p, bar)
                bar.update()
        bar.close()

    def _train(self, p: dict, bar: Any) -> None:
        task, seed, n, arm, candidate, budget = (p[k] for k in ("task", "seed", "n_train", "arm", "candidate",
                                                                "settings"))  # fmt: skip
        split = self.splits[task.name, seed]
        pool, test_pool = self.graphs[task.name]
        bar.set_postfix_str(f"{task.name} n={n} seed={seed} {arm} {candidate}")
        L.seed_everything(seed, verbose=False)
        template, kind = self.templates[arm]
        kwargs = dict(self.trainer_kwargs)
        if self.curves:
            from lightning.pytorch.callbacks import LearningRateMonitor
            from lightning.pytorch.loggers import CSVLogger

            name = curve_name(
                {"task": task.name, "n_train": n, "seed": seed, "arm": arm, "fingerprint": p["fingerprint"]}
            )
            kwargs.setdefault("logger", CSVLogger(self.cache.parent / "curves", name=name, version=""))
            kwargs["callbacks"] = [*kwargs.get("callbacks", []), LearningRateMonitor("epoch")]
        start = time.perf_counter()
        result = fit(
            new_like(template, weights=kind),
            pool.subset(split["train"][n]),
            pool.subset(split["val"][n]),
            test=test_pool.subset(split["test"]),
            loss=budget.loss,
            max_epochs=budget.max_epochs,
            patience=budget.patience,
            lr_patience=budget.lr_patience,
            batch_size=budget.batch_size,
            lr=candidate.lr,
            backbone_lr=candidate.backbone_lr,
            freeze_backbone=budget.freeze_backbone and kind == "backbone",
            seed=seed,
            shorter=p["shorter"],
            enable_progress_bar=False,
            **kwargs,
        )
        record = {
            "task": task.name,
            "unit": task.unit,
            "n_train": n,
            "seed": seed,
            "arm": arm,
            "lr": candidate.lr,
            "backbone_lr": candidate.backbone_lr,
            "test_MAE": result.metrics["test_MAE"],
            "best_val_MAE": result.metrics["best_val_MAE"],
            "best_epoch": int(result.metrics["best_epoch"]),
            "epochs_run": int(result.metrics["epochs"]),
            "max_epochs": budget.max_epochs,
            "patience": budget.patience,
            "lr_patience": budget.lr_patience,
            "n_val": len(split["val"][n]),
            "n_test": len(split["test"]),
            "wall_s": round(time.perf_counter() - start, 2),
            "model": {"CDSSL": self.model_name, "scratch": self.model_name, "supervised": SUPERVISED}.get(arm, arm),
            "fingerprint": p["fingerprint"],
        }
        if p["shorter"]:
            m = result.metrics
            record["shorter"] = {"test_MAE": m["shorter_test_MAE"], "best_val_MAE": m["shorter_best_val_MAE"],
                                 "best_epoch": int(m["shorter_best_epoch"]), "epochs_run": int(m["shorter_epochs"]),
                                 "patience": p["shorter"][0], "max_epochs": p["shorter"][1]}  # fmt: skip
        with self.cache.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self.done[_run_key(record)] = record


def _task_sizes(
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
        if n == "full":
            resolved.add(full)
        elif isinstance(n, str) or int(n) < 1:
            raise ValueError(f"task {task.name!r}: a training size is a positive number or 'full'; got {n!r}")
        else:
            resolved.add(int(n))
    return sorted(resolved)


def _valid_part(
    task: TaskData, model: nn.Module, left_out: list[tuple[str, str, str]]
) -> tuple[TaskData, tuple[_Graphs, _Graphs]]:
    """``task`` without the crystals that the checks reject, and its graphs, converted while checking.

    Each crystal left out is recorded in ``left_out`` as (task, name, reason); the graphs are the pool's and the test
    pool's, for the runs.
    """
    before = len(left_out)
    pool, kept, skipped = _Graphs.valid(task.structures, task.targets, model, task.name)
    left_out.extend((task.name, crystal, reason) for crystal, reason in skipped)
    structures, targets = [task.structures[i] for i in kept], [task.targets[i] for i in kept]
    test_s, test_y, test_pool = task.test_structures, task.test_targets, pool
    if test_s is not None:
        test_pool, kept, skipped = _Graphs.valid(test_s, test_y, model, f"{task.name} (test)")
        left_out.extend((task.name, crystal, reason) for crystal, reason in skipped)
        test_s, test_y = [test_s[i] for i in kept], [test_y[i] for i in kept]
    if len(left_out) > before:
        logger.warning("benchmark: %d invalid crystal(s) of %s left out (listed in results.md)", len(left_out) - before,
                       task.name)  # fmt: skip
    valid = replace(task, structures=structures, targets=targets, test_structures=test_s, test_targets=test_y)
    return valid, (pool, test_pool)


def _shorter_record(record: dict) -> dict:
    """The shorter run inside an extension run (``record["shorter"]``), as a run record of its own."""
    return {**record, **record["shorter"]}


def _run_key(run: dict) -> tuple:
    """What identifies a run in the cache (``task`` may be the task or its name)."""
    task = run["task"] if isinstance(run["task"], str) else run["task"].name
    return run["fingerprint"], task, run["n_train"], run["seed"], run["arm"]


@contextlib.contextmanager
def _lightning_warnings_only() -> Iterator[None]:
    """Silence Lightning's per-run info messages (devices, "`Trainer.fit` stopped") under the progress bar."""
    lightning_logger = logging.getLogger("lightning.pytorch")
    level = lightning_logger.level
    lightning_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        lightning_logger.setLevel(level)


def _median_predictor_mae(task: TaskData, split: dict[str, Any], sizes: Sequence[int]) -> dict:
    """Test MAE of the trivial model that predicts the training labels' median, per training size."""
    test = np.asarray(task.test_targets if task.test_structures is not None else task.targets, dtype=float)
    y_test = test[split["test"]]
    y = np.asarray(task.targets, dtype=float)
    return {n: float(np.abs(y_test - np.median(y[split["train"][n]])).mean()) for n in sizes}


def _task_graphs(
    task: TaskData, splits: Sequence[dict[str, Any]], sizes: Sequence[int], model: nn.Module
) -> tuple[_Graphs, _Graphs]:
    """Convert every crystal that some run of the task uses (over the seeds' ``splits``), once."""
    needed, needed_test = set(), set()
    for split in splits:
        for n in sizes:
            needed |= {int(i) for i in split["train"][n]} | {int(i) for i in split["val"][n]}
        (needed_test if task.test_structures is not None else needed).update(int(i) for i in split["test"])
    pool = _Graphs.of(task.structures, task.targets, needed, model, task.name)
    if task.test_structures is None:
        return pool, pool
    return pool, _Graphs.of(task.test_structures, task.test_targets, needed_test, model, f"{task.name} (test)")


def report(
    runs: Sequence[dict] | pd.DataFrame,
    output_dir: str | Path,
    *,
    left_out: Sequence[tuple[str, str, str]] = (),
    selection: Sequence[dict] = (),
    convergence: Sequence[tuple[dict, dict]] = (),
    extension: Sequence[tuple[dict, dict]] = (),
) -> BenchmarkResult:
    """Summarise runs into ``runs.csv``, ``results.md`` (mean ± standard error) and ``results.png``.

    Args:
        runs: Run records as written by :func:`benchmark`.
        output_dir: Where to write.
        left_out: ``(task, crystal, reason)`` of each crystal left out under ``skip_invalid``, listed in the table.
        selection: The learning-rate selection's runs (with ``chosen``), tabulated in ``results.md``.
        convergence: ``(run, the same run with twice the budget)`` pairs, tabulated in ``convergence.md``.
        extension: ``(run, the same run with twice the patience and cap, the same schedule)`` pairs, a second table
            in ``convergence.md``.

    Returns:
        A :class:`BenchmarkResult`.
    """
    import pandas as pd

    output_dir = Path(output_dir)
    frame = pd.DataFrame(list(runs) if not isinstance(runs, pd.DataFrame) else runs)
    frame = frame.sort_values(["task", "n_train", "seed", "arm"]).reset_index(drop=True)
    paths = {"runs_csv": output_dir / "runs.csv", "table_md": output_dir / "results.md"}
    frame.to_csv(paths["runs_csv"], index=False)
    summary = summarise(frame)
    table = _markdown(summary)
    if left_out:
        table += f"\n{len(left_out)} invalid crystal(s) left out (skip_invalid):\n\n"
        table += "".join(f"- {task}: {name} {reason}\n" for task, name, reason in left_out)
    if selection:
        table += "\n" + _selection_markdown(pd.DataFrame(list(selection)))
    if convergence or extension:
        paths["convergence_md"] = output_dir / "convergence.md"
        parts = [_convergence_markdown(convergence)] if convergence else []
        if extension:
            parts.append(f"{EXTENSION_HEADING}\n\n{_convergence_markdown(extension)}")
        paths["convergence_md"].write_text("\n".join(parts))
    paths["table_md"].write_text(table)
    try:
        if len(summary):  # a benchmark of scratch alone compares nothing: no figure
            paths["figure_png"] = _plot(summary, output_dir / "results.png")
    except ImportError:
        logger.warning("matplotlib is not installed: no results.png (pip install matplotlib)")
    return BenchmarkResult(frame, table, paths)


def _selection_markdown(frame: pd.DataFrame) -> str:
    """Each (task, arm): the validation MAE of every candidate rate at the tuning sizes, the chosen one in bold."""
    import pandas as pd

    frame = frame.assign(rate=[f"{lr:g}" + ("" if pd.isna(b) else f" / {b:g}") for lr, b in
                               zip(frame["lr"], frame["backbone_lr"], strict=True)])  # fmt: skip
    lines = ["Learning rates chosen on validation data (first seed; rate / backbone rate: validation MAE at each "
             "tuning size; chosen in bold, the lowest geometric mean):", "",
             "| task | arm | candidates |", "|---|---|---|"]  # fmt: skip
    for (task, arm), group in frame.groupby(["task", "arm"], sort=False):
        cells = []
        for rate, part in group.groupby("rate", sort=False):
            text = f"{rate}: " + ", ".join(f"{v:.4g} (n={n})" for n, v in zip(part["n_train"], part["best_val_MAE"],
                                                                                strict=True))  # fmt: skip
            cells.append(f"**{text}**" if part["chosen"].all() else text)
        lines.append(f"| {task} | {arm} | {'; '.join(cells)} |")
    return "\n".join(lines) + "\n"


EXTENSION_HEADING = "## Extension: twice the patience and the epoch cap, the same schedule"
"""The heading of ``convergence.md``'s second table (``check_extension``)."""


def _convergence_markdown(pairs: Sequence[tuple[dict, dict]]) -> str:
    """Each run at the chosen budget against the same run at twice the budget, and the mean over seeds if several.

    What "twice the budget" doubles is read off the pairs: the patience and the cap, and the schedule's patience
    too unless the pairs come from :meth:`BenchmarkSettings.extended`.
    """
    lines = ["| task | n_train | arm | seed | test MAE | test MAE, twice the budget | change | epochs (best / run) | "
             "epochs at twice the budget |", "|---|---:|---|---|---:|---:|---:|---|---|"]  # fmt: skip
    groups: dict[tuple, list[tuple[dict, dict]]] = {}
    for base, twice in pairs:
        groups.setdefault((base["task"], base["n_train"], base["arm"]), []).append((base, twice))
    means = {key: [float(np.mean([pair[k]["test_MAE"] for pair in group])) for k in (0, 1)]
             for key, group in groups.items()}  # fmt: skip
    worst_run = 0.0
    for (task, n, arm), group in groups.items():
        for base, twice in group:
            change = twice["test_MAE"] / base["test_MAE"] - 1
            worst_run = max(worst_run, abs(change))
            lines.append(f"| {task} | {n} | {arm} | {base['seed']} | {base['test_MAE']:.4f} | "
                         f"{twice['test_MAE']:.4f} | {100 * change:+.1f}% | {base['best_epoch']} / "
                         f"{base['epochs_run']} | {twice['best_epoch']} / {twice['epochs_run']} |")  # fmt: skip
        if len(group) > 1:
            mean, mean_twice = means[task, n, arm]
            lines.append(f"| {task} | {n} | {arm} | **mean of {len(group)}** | {mean:.4f} | {mean_twice:.4f} | "
                         f"**{100 * (mean_twice / mean - 1):+.1f}%** | | |")  # fmt: skip
    base, twice = pairs[0]
    if not base.get("lr_patience"):
        schedule, doubles = "cosine decay over the cap", "both"
    else:
        schedule = f"rates halved after {base['lr_patience']} epochs without improvement"
        doubles = (
            "all three"
            if twice["lr_patience"] != base["lr_patience"]
            else "the patience and the cap, not the schedule: the longer run repeats the shorter one and goes on"
        )
    # The criterion judges the mean where several seeds were checked, else the run: the "mean" of a single run.
    change = {key: abs(twice / base - 1) for key, (base, twice) in means.items()}
    judged = max(change.values())
    worst_mean = max((change[key] for key, group in groups.items() if len(group) > 1), default=0.0)
    several = {len(group) > 1 for group in groups.values()}
    largest = f"Largest change of a single run: {100 * worst_run:.2f}%"
    if several == {True}:
        largest += f"; of a mean over seeds: {100 * worst_mean:.2f}%"
    elif True in several:  # some tasks checked with several seeds, others with one
        largest += (f"; of a mean over seeds: {100 * worst_mean:.2f}%; of what the criterion judges (the mean where "
                    f"several seeds were checked, else the run): {100 * judged:.2f}%")  # fmt: skip
    verdict = "below" if judged < 0.03 else "NOT below"
    lines += ["", f"Budget: early stopping after {base['patience']} epochs without improvement, at most "
              f"{base['max_epochs']} epochs, {schedule}; twice the budget doubles {doubles}. {largest} ({verdict} "
              "the 3% criterion)."]  # fmt: skip
    return "\n".join(lines + _verdict_at_twice_the_budget(means)) + "\n"


def _verdict_at_twice_the_budget(means: dict[tuple, list[float]]) -> list[str]:
    """Each arm against scratch at the chosen budget and with both at twice the budget.

    ``means``: the mean test MAE over the seeds checked, at each budget, per (task, n_train, arm).
    """
    rows = []
    for (task, n, arm), (base, twice) in means.items():
        scratch = means.get((task, n, "scratch"))
        if arm != "scratch" and scratch is not None:
            rows.append(f"| {task} | {n} | {arm} | {100 * (base / scratch[0] - 1):+.1f}% | "
                        f"{100 * (twice / scratch[1] - 1):+.1f}% |")  # fmt: skip
    if not rows:
        return []
    return ["", "Each arm against scratch (mean test MAE over the seeds checked) at the chosen budget, and with both "
            "at twice the budget: a verdict that holds at twice the budget does not rest on under-trained runs.", "",
            "| task | n_train | arm | vs scratch | vs scratch, both at twice the budget |", "|---|---:|---|---:|---:|",
            *rows]  # fmt: skip


def _arm_order(arms: Sequence[str]) -> list[str]:
    """The arms in table order: CDSSL, supervised, any others, scratch last."""
    first = [a for a in ("CDSSL", "supervised") if a in arms]
    return [
        *first,
        *sorted(a for a in arms if a not in (*first, "scratch")),
        *(["scratch"] if "scratch" in arms else []),
    ]


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (task, n_train): mean and standard error of the test MAE of each arm, and the relative changes.

    ``change`` is CDSSL against scratch, ``change_<arm>`` any other arm against scratch, and ``CDSSL_vs_supervised``
    CDSSL against supervised transfer; ``leakage`` marks the tasks whose labels the supervised arm was trained on.
    Only seeds that finished every arm are counted, so that the arms are always compared on the same splits.
    """
    import pandas as pd

    rows = []
    for (task, n), group in frame.groupby(["task", "n_train"], sort=True):
        wide = group.pivot_table(index="seed", columns="arm", values="test_MAE").dropna()
        arms = _arm_order(list(wide.columns))
        if wide.empty or "scratch" not in arms or len(arms) < 2:
            continue
        row = {"task": task, "unit": group["unit"].iloc[0], "n_train": int(n), "seeds": len(wide)}
        for arm in arms:
            values = wide[arm].to_numpy()
            row[f"{arm}_mean"] = float(values.mean())
            row[f"{arm}_se"] = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")
        for arm in arms[:-1]:
            row["change" if arm == "CDSSL" else f"change_{arm}"] = row[f"{arm}_mean"] / row["scratch_mean"] - 1
        if "CDSSL" in arms and "supervised" in arms:
            row["CDSSL_vs_supervised"] = row["CDSSL_mean"] / row["supervised_mean"] - 1
        row["leakage"] = "supervised" in arms and task in SUPERVISED_LEAKS
        if "median_MAE" in group:
            row["median_MAE"] = float(group.drop_duplicates("seed")["median_MAE"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def _pm(mean: float, se: float) -> str:
    """``mean ± se``, or the mean alone when there is no standard error (one seed)."""
    return f"{mean:.4f}" if math.isnan(se) else f"{mean:.4f} ± {se:.4f}"


LEARNED = 0.95
"""A configuration counts as learned when the better arm's MAE is below this fraction of the median predictor's."""


def _markdown(summary: pd.DataFrame) -> str:
    if summary.empty:
        return "No configuration to compare: every comparison needs scratch and at least one other arm (runs.csv).\n"
    trivial = "median_MAE" in summary
    arms = _arm_order([c[: -len("_mean")] for c in summary.columns if c.endswith("_mean")])
    others = [a for a in arms if a not in ("CDSSL", "scratch", "supervised")]
    versus = "CDSSL_vs_supervised" in summary
    header = ["task", "n_train", "seeds", *(f"{a} test MAE" for a in arms)]
    header += [f"{a} vs scratch" for a in arms if a != "scratch"] + (["CDSSL vs supervised"] if versus else [])
    header += ["median predictor"] if trivial else []
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for r in summary.to_dict("records"):
        leak = " †" if r.get("leakage") else ""
        cells = [f"{r['task']} ({r['unit']}){leak}", str(r["n_train"]), str(r["seeds"])]
        cells += [_pm(r[f"{a}_mean"], r[f"{a}_se"]) for a in arms]
        cells += [f"{100 * r['change' if a == 'CDSSL' else f'change_{a}']:+.1f}%" for a in arms if a != "scratch"]
        cells += [f"{100 * r['CDSSL_vs_supervised']:+.1f}%"] if versus else []
        cells += [f"{r['median_MAE']:.4f}"] if trivial else []
        lines.append("| " + " | ".join(cells) + " |")
    if len(summary) and "change" in summary:
        wins = int((summary["change"] < 0).sum())
        small = summary[summary["n_train"] <= 250]
        lines += [
            "",
            f"CDSSL wins {wins} of {len(summary)} configurations against scratch ({100 * wins / len(summary):.0f}%).",
            f"Mean change in test MAE, all configurations: {100 * summary['change'].mean():+.1f}%; "
            + (f"at 250 labels or fewer: {100 * small['change'].mean():+.1f}%." if len(small) else ""),
        ]
        if versus:
            fair = summary[~summary["leakage"].astype(bool)]
            n_won = int((fair["CDSSL_vs_supervised"] < 0).sum())
            lines.append(
                f"CDSSL wins {n_won} of {len(fair)} configurations against supervised transfer (rows marked † left "
                "out: the supervised arm was trained on those labels)."
            )
        if trivial:
            best = summary[[f"{a}_mean" for a in arms]].min(axis=1)
            learned = summary[best < LEARNED * summary["median_MAE"]]
            n_won = int((learned["change"] < 0).sum())
            lines.append(
                f"Where a model learned something (the best arm at least {100 * (1 - LEARNED):.0f}% below the median "
                f"predictor): CDSSL wins {n_won} of {len(learned)}"
                + (f"; mean change {100 * learned['change'].mean():+.1f}%." if len(learned) else ".")
            )
        lines += [
            "",
            "Mean ± standard error over seeds; change = arm mean / scratch mean - 1 (negative: the arm is better)."
            + (" Median predictor: the test MAE of predicting the training labels' median." if trivial else "")
            + (
                f" †: leakage, the supervised arm ({SUPERVISED}) was trained on Materials Project formation energies."
                if versus and summary["leakage"].any()
                else ""
            )
            + (f" Other arms: {', '.join(others)}." if others else ""),
        ]
    return "\n".join(lines) + "\n"


def _plot(summary: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(summary["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        part = summary[summary["task"] == task]
        x = np.arange(len(part))
        arms = _arm_order([c[: -len("_mean")] for c in part.columns if c.endswith("_mean") and part[c].notna().any()])
        width = 0.8 / len(arms)
        for k, arm in enumerate(arms):
            ax.bar(x + (k - (len(arms) - 1) / 2) * width, part[f"{arm}_mean"], width, capsize=2,
                   yerr=part[f"{arm}_se"].fillna(0), color=COLORS.get(arm), label=arm)  # fmt: skip
        if "median_MAE" in part:
            ax.plot(x, part["median_MAE"], "k_", markersize=18, mew=1.5, label="median predictor")
        ax.set_xticks(x, [str(n) for n in part["n_train"]])
        ax.set_xlabel("training labels")
        ax.set_title(task, fontsize=10)
        ax.set_ylabel(f"test MAE ({part['unit'].iloc[0]})")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
