"""SSL vs scratch: a pretrained MEGNet and the same MEGNet from random initialisation, side by side.

:func:`benchmark` trains every arm on the same splits, with the same rule for choosing its rates and the same budget.

It reads as: plan the runs (:mod:`~matgl_cdssl.bench._plan`), train those the ledger lacks (``OUTPUT_DIR/runs.jsonl``,
so an interrupted benchmark resumes where it stopped), report (:func:`~matgl_cdssl.bench.report`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matgl_cdssl.bench._ledger import Ledger, weights_digest
from matgl_cdssl.bench._plan import (
    Setup,
    chosen_rates,
    convergence_runs,
    curve_runs,
    extension_runs,
    tuning_runs,
)
from matgl_cdssl.bench._protocol import ARMS, QUICK, BenchmarkSettings, arm_templates, candidates
from matgl_cdssl.bench._report import BenchmarkResult, report
from matgl_cdssl.bench._runner import Runner, valid_part
from matgl_cdssl.bench._tasks import (
    DEFAULT_SUITE,
    TASKS,
    TaskData,
    load_task,
    median_predictor_mae,
    task_sizes,
    task_splits,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import nn

__all__ = ["benchmark"]


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
            ``OUTPUT_DIR/curves/<run>/metrics.csv`` (:func:`~matgl_cdssl.bench.curve_name`), for
            :func:`~matgl_cdssl.bench.plot_curves`: whether an arm ends under-trained, stuck or overfitting.
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
    templates = arm_templates(arms, model)
    reference = templates["scratch"][0]  # every arm has its element types and cutoff (checked)
    left_out: list[tuple[str, str, str]] = []
    graphs = {}  # converted while checking (skip_invalid), else before the runs
    if skip_invalid:
        checked = [valid_part(t, reference, left_out) for t in loaded]
        loaded = [t for t, _ in checked]
        graphs = {t.name: g for t, g in checked}
    if quick:
        for t in loaded:
            t.n_test = min(t.n_test, QUICK["n_test"])
    model_name = model if isinstance(model, (str, Path)) else type(model).__name__
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(output_dir / "runs.jsonl")

    sizes_of = {t.name: task_sizes(t, sizes, settings) for t in loaded}
    setup = Setup(
        tasks=loaded,
        sizes=sizes_of,
        seeds=seeds,
        splits={(t.name, seed): task_splits(t, sizes_of[t.name], seed, settings) for t in loaded for seed in seeds},
        arms=list(templates),
        digests={arm: weights_digest(net, weights=kind != "none") for arm, (net, kind) in templates.items()},
        grids={
            arm: candidates(settings.lr_grid, settings.backbone_lr_scales, pretrained=kind != "none")
            for arm, (_, kind) in templates.items()
        },
        settings=settings,
    )
    execute = Runner(setup, templates, ledger, str(model_name), progress, trainer_kwargs, graphs, curves)

    # Plan, and run what the ledger lacks: the rate selection first, since the other runs use the rates it chooses.
    tuning = tuning_runs(setup)
    tuned = any(len(g) > 1 for g in setup.grids.values())  # with one rate per arm there is nothing to choose
    if tuned:
        execute(tuning, "choosing learning rates")
    chosen = chosen_rates(setup, lambda run: ledger[run.key]["best_val_MAE"])
    plan = curve_runs(setup, chosen)
    pairs = convergence_runs(setup, chosen, check_seeds["check_convergence"])
    extended = extension_runs(setup, chosen, check_seeds["check_extension"])
    execute(plan + [twice for _, twice in pairs] + extended, "benchmark")

    # Report, from the ledger's records.
    trivial = {(t.name, seed): median_predictor_mae(t, setup.splits[t.name, seed], sizes_of[t.name]) for t in loaded
               for seed in seeds}  # fmt: skip
    runs = [{**ledger[r.key], "median_MAE": trivial[r.task, r.seed][r.n_train]} for r in plan]
    selection = [{**ledger[r.key], "chosen": r.candidate == chosen[r.task, r.arm]} for r in tuning]
    convergence = [(ledger[base.key], ledger[twice.key]) for base, twice in pairs]
    extension = [({**ledger[r.key], **ledger[r.key]["shorter"]}, ledger[r.key]) for r in extended]  # the run inside
    return report(runs, output_dir, left_out=left_out, selection=selection if tuned else (), convergence=convergence,
                  extension=extension)  # fmt: skip
