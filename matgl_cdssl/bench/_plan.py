"""The benchmark's plan: which runs it needs, as pure functions of its :class:`Setup` (nothing here trains).

- :func:`tuning_runs`: every candidate rate of every arm at the tuning sizes, first seed (the rate selection);
- :func:`chosen_rates`: each arm's rate per task, from the tuning runs' best validation MAEs;
- :func:`edge_grids`: each grid one step beyond the edge where its choice sits (the selection goes on there);
- :func:`curve_runs`: every task, size, its seeds and arm at its chosen rate (the learning curves, the table);
- :func:`more_seed_runs`: the seeds that a configuration whose paired interval is still wide adds, every arm;
- :func:`convergence_runs`: ``(run, the same run at twice the budget)`` at each checked task's two largest sizes;
- :func:`extension_runs`: those runs with twice the patience and cap, the same schedule, the base run inside.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from matgl_cdssl.bench._ledger import run_fingerprint
from matgl_cdssl.bench._protocol import BenchmarkSettings, Candidate, beyond_edges, choose

if TYPE_CHECKING:
    from collections.abc import Callable

    from matgl_cdssl.bench._tasks import TaskData

__all__ = [
    "Grids",
    "Run",
    "Setup",
    "base_grids",
    "chosen_rates",
    "convergence_runs",
    "curve_runs",
    "edge_grids",
    "extension_runs",
    "more_seed_runs",
    "tune_sizes",
    "tuning_runs",
]


@dataclass(frozen=True)
class Run:
    """One run of the benchmark: an arm trained at one rate and budget on one task's split of one size and seed.

    Attributes:
        task: The task's name.
        n_train: The training size.
        seed: The seed (the split and the initialisation).
        arm: The arm's name.
        candidate: Its rates.
        settings: Its budget.
        fingerprint: :func:`~matgl_cdssl.bench.run_fingerprint`: the weights, rates, budget and split.
        shorter: ``(patience, max_epochs)`` of a shorter run to report from inside this one (the extension check), or
            None.
    """

    task: str
    n_train: int
    seed: int
    arm: str
    candidate: Candidate
    settings: BenchmarkSettings
    fingerprint: str
    shorter: tuple[int, int] | None = None

    @property
    def key(self) -> tuple:
        """The run's key in the ledger (:func:`~matgl_cdssl.bench.run_key` of its record)."""
        return self.fingerprint, self.task, self.n_train, self.seed, self.arm


@dataclass(frozen=True)
class Setup:
    """What the runs of a benchmark are made of.

    Attributes:
        tasks: The tasks (their crystals checked, under ``skip_invalid``).
        sizes: Each task's training sizes, by name.
        seeds: Every seed some size runs; the first one chooses the rates (which seeds each size runs:
            :meth:`~matgl_cdssl.bench.BenchmarkSettings.seeds_at`).
        splits: Each ``(task, seed)``'s split (:func:`~matgl_cdssl.bench.task_splits`).
        arms: The arms, in the table's order.
        digests: Each arm's :func:`~matgl_cdssl.bench.weights_digest`.
        grids: Each arm's candidate rates (:func:`~matgl_cdssl.bench.candidates`).
        settings: The budget and the selection rule.
    """

    tasks: Sequence[TaskData]
    sizes: Mapping[str, Sequence[int]]
    seeds: Sequence[int]
    splits: Mapping[tuple[str, int], dict[str, Any]]
    arms: Sequence[str]
    digests: Mapping[str, str]
    grids: Mapping[str, Sequence[Candidate]]
    settings: BenchmarkSettings

    def run(self, task: TaskData, seed: int, n_train: int, arm: str, candidate: Candidate,
            budget: BenchmarkSettings | None = None, shorter: tuple[int, int] | None = None) -> Run:  # fmt: skip
        """The run of ``arm`` at ``candidate`` on ``task``'s split of ``n_train`` and ``seed``.

        ``budget``: the base budget for None; ``shorter``: see :class:`Run`.
        """
        budget = budget or self.settings
        fingerprint = run_fingerprint(self.digests[arm], budget, task, self.splits[task.name, seed], candidate)
        return Run(task.name, n_train, seed, arm, candidate, budget, fingerprint, shorter)


Grids = Mapping[tuple[str, str], Sequence[Candidate]]
"""Each ``(task, arm)``'s candidates."""


def tune_sizes(setup: Setup, task: TaskData) -> list[int]:
    """The sizes at which the arms choose their rates on ``task``: its sizes among ``tune_sizes``, else its smallest."""
    sizes = setup.sizes[task.name]
    return [n for n in sizes if n in setup.settings.tune_sizes] or list(sizes[:1])


def base_grids(setup: Setup) -> dict[tuple[str, str], list[Candidate]]:
    """Each ``(task, arm)``'s grid: the arm's candidates (:meth:`~matgl_cdssl.bench.BenchmarkSettings.grid`)."""
    return {(t.name, arm): list(grid) for t in setup.tasks for arm, grid in setup.grids.items()}


def tuning_runs(setup: Setup, grids: Grids | None = None) -> list[Run]:
    """Every candidate of every arm's grid (default :func:`base_grids`) at each task's tuning sizes, first seed."""
    grids = base_grids(setup) if grids is None else grids
    return [
        setup.run(t, setup.seeds[0], n, arm, c)
        for t in setup.tasks
        for arm in setup.arms
        for c in grids[t.name, arm]
        for n in tune_sizes(setup, t)
    ]


def chosen_rates(setup: Setup, best_val_mae: Callable[[Run], float],
                 grids: Grids | None = None) -> dict[tuple[str, str], Candidate]:  # fmt: skip
    """Each ``(task, arm)``'s rate: its only candidate, or the one that the tuning runs' validation MAEs choose.

    ``best_val_mae`` gives a run of :func:`tuning_runs` its best validation MAE (from the ledger);
    :func:`~matgl_cdssl.bench.choose` picks the lowest geometric mean over the tuning sizes, among ``grids``
    (default :func:`base_grids`).
    """
    grids = base_grids(setup) if grids is None else grids

    def scores(t: TaskData, arm: str, c: Candidate) -> list[float]:
        return [best_val_mae(setup.run(t, setup.seeds[0], n, arm, c)) for n in tune_sizes(setup, t)]

    return {
        (t.name, arm): grid[0] if len(grid) == 1 else choose({c: scores(t, arm, c) for c in grid})
        for t in setup.tasks
        for arm in setup.arms
        for grid in [grids[t.name, arm]]
    }


def edge_grids(
    setup: Setup, grids: Grids, chosen: Mapping[tuple[str, str], Candidate]
) -> dict[tuple[str, str], list[Candidate]]:
    """``grids`` with one step beyond each edge on which the chosen candidate sits (:func:`beyond_edges`).

    Without :attr:`~matgl_cdssl.bench.BenchmarkSettings.extend_edges`, or for a grid of one candidate, the grid as
    it is.
    """
    if not setup.settings.extend_edges:
        return {key: list(grid) for key, grid in grids.items()}
    return {key: [*grid, *beyond_edges(grid, chosen[key])] for key, grid in grids.items()}


def curve_runs(setup: Setup, chosen: Mapping[tuple[str, str], Candidate]) -> list[Run]:
    """Every task, size, seed of that size and arm at the arm's chosen rate and the base budget: the curves."""
    return [
        setup.run(t, seed, n, arm, chosen[t.name, arm])
        for t in setup.tasks
        for seed in setup.seeds
        for n in setup.sizes[t.name]
        if seed in setup.settings.seeds_at(n)
        for arm in setup.arms
    ]


def more_seed_runs(
    setup: Setup, chosen: Mapping[tuple[str, str], Candidate], wide: Sequence[tuple[str, int]]
) -> list[Run]:
    """Every arm at the seeds that each wide ``(task, n_train)`` adds, at its chosen rate and the base budget.

    The seeds: :meth:`~matgl_cdssl.bench.BenchmarkSettings.seeds_wide` less :meth:`~.BenchmarkSettings.seeds_at`; a
    configuration is wide by :func:`~matgl_cdssl.bench.wide_configurations` of the curve runs.
    """
    tasks = {t.name: t for t in setup.tasks}
    return [
        setup.run(tasks[name], seed, n, arm, chosen[name, arm])
        for name, n in wide
        for seed in setup.settings.seeds_wide(n)
        if seed not in setup.settings.seeds_at(n)
        for arm in setup.arms
    ]


def _longer_runs(
    setup: Setup,
    chosen: Mapping[tuple[str, str], Candidate],
    seeds: Mapping[str, int],
    budget: Callable[[], BenchmarkSettings],
    shorter: tuple[int, int] | None = None,
) -> list[tuple[Run, Run]]:
    """``(run, the same run with the longer budget)`` at each checked task's two largest sizes, every arm.

    Each task with the first ``seeds[task]`` seeds of the size (a task that ``seeds`` does not name: none).
    ``budget`` is asked only for a run to check (a budget without a patience has no doubled one, and needs none when
    nothing is checked; the extension of the cosine schedule raises).
    """
    return [
        (setup.run(t, seed, n, arm, chosen[t.name, arm]), setup.run(t, seed, n, arm, chosen[t.name, arm], budget(),
                                                                    shorter))
        for t in setup.tasks
        for n in setup.sizes[t.name][-2:]
        for arm in setup.arms
        for seed in setup.settings.seeds_at(n)[:int(seeds.get(t.name, 0))]
    ]  # fmt: skip


def convergence_runs(setup: Setup, chosen: Mapping[tuple[str, str], Candidate],
                     seeds: Mapping[str, int]) -> list[tuple[Run, Run]]:  # fmt: skip
    """``(run, the same run at twice the budget)`` (:meth:`~matgl_cdssl.bench.BenchmarkSettings.doubled`)."""
    return _longer_runs(setup, chosen, seeds, setup.settings.doubled)


def extension_runs(setup: Setup, chosen: Mapping[tuple[str, str], Candidate], seeds: Mapping[str, int]) -> list[Run]:
    """The runs with twice the patience and cap (:meth:`~matgl_cdssl.bench.BenchmarkSettings.extended`).

    Each reports the base run found inside it (``shorter``), so that both come from the same machine. Under the
    cosine schedule there is no run inside a longer one: a ValueError when any run is to be checked.
    """
    shorter = (setup.settings.patience, setup.settings.max_epochs)
    return [longer for _, longer in _longer_runs(setup, chosen, seeds, setup.settings.extended, shorter)]
