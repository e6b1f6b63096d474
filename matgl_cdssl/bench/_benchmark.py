"""SSL vs scratch: a pretrained MEGNet and the same MEGNet from random initialisation, side by side.

:func:`benchmark` trains every arm on the same splits, with the same rule for choosing its rates and the same budget.

It reads as: plan the runs (:mod:`~matgl_cdssl.bench._plan`), train those the ledger lacks (``OUTPUT_DIR/runs.jsonl``,
so an interrupted benchmark resumes where it stopped), report (:func:`~matgl_cdssl.bench.report`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matgl_cdssl.bench._ledger import Ledger, Stamp, weights_digest
from matgl_cdssl.bench._paired import paired, wide_configurations
from matgl_cdssl.bench._plan import (
    Setup,
    base_grids,
    chosen_rates,
    convergence_runs,
    curve_runs,
    edge_grids,
    extension_runs,
    more_seed_runs,
    tuning_runs,
)
from matgl_cdssl.bench._protocol import ARMS, QUICK, BenchmarkSettings, arm_labels_seen, arm_templates
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
    seeds: Sequence[int] | None = None,
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
        seeds: One split and one initialisation per seed (the first also chooses each arm's learning rate), the same
            at every size, and no more where an interval is wide; None: the settings'
            (:meth:`BenchmarkSettings.seeds_at`: under the 0.5 protocol 5 seeds at 250 labels or fewer, 3 above, twice
            as many where a paired interval is still wider than ±10 points, :meth:`BenchmarkSettings.seeds_wide`).
        output_dir: Where ``runs.jsonl`` (the cache), ``runs.csv``, ``results.md`` and ``results.png`` go.
        settings: The selection rule and the budget (:class:`BenchmarkSettings`), the same for every arm.
        quick: The small suite of :data:`QUICK` (for CI and docs); it overrides tasks, sizes, seeds and settings.
        progress: Show a progress bar over the runs.
        skip_invalid: Leave out the crystals of a task that the checks reject (an atom with no neighbour within the
            cutoff, overlapping atoms, ...), with one warning per task that counts them, and list them in
            ``results.md``. Every crystal is checked before any training starts; without it the first invalid one
            raises, naming it.
        check_convergence: Also train every arm at each task's two largest sizes with twice the budget
            (:meth:`BenchmarkSettings.doubled`), and write ``convergence.md``: the change of the best validation MAE,
            which should stay below 3% (the test MAE is listed as information only). True: the first seed; a number
            N: the first N seeds of the size, and the criterion applies to the change of the mean over them (single
            runs of small validation sets pick their best epoch noisily); a mapping from task names to such numbers
            gives each task its own (a task it does not name: 0, not checked).
        check_extension: The same, with only the patience and the epoch cap doubled
            (:meth:`BenchmarkSettings.extended`): the longer run follows the same schedule and goes on where the
            shorter one stopped, so a change means that the shorter one stopped too early. A second table in
            ``convergence.md``; the same forms as ``check_convergence``. It needs the plateau schedule
            (``lr_patience``): under the cosine decay it is refused.
        curves: Keep each run's training and validation MAE and learning rate per epoch (Lightning's CSV logger) in
            ``OUTPUT_DIR/curves/<run>/metrics.csv`` (:func:`~matgl_cdssl.bench.curve_name`), for
            :func:`~matgl_cdssl.bench.plot_curves`: whether an arm ends under-trained, stuck or overfitting.
        **trainer_kwargs: Passed to ``lightning.Trainer`` (for example ``accelerator="gpu"``).

    Returns:
        A :class:`BenchmarkResult`.

    Raises:
        ValueError: an unknown task, a task with too few crystals for the sizes, sizes for a name that is neither a
            built-in task nor one run, non-finite targets, or the extension check under the cosine schedule.
    """
    if quick:
        tasks, sizes, seeds, settings = QUICK["tasks"], QUICK["sizes"], QUICK["seeds"], QUICK["settings"]
    settings = settings or BenchmarkSettings()
    if seeds is not None:  # the same seeds at every size
        settings = replace(settings, seeds=tuple(seeds), seeds_small=tuple(seeds), more_seeds=1)
    tasks = tasks if tasks is not None else DEFAULT_SUITE
    names = [t if isinstance(t, str) else t.name for t in tasks]
    checks = {"check_convergence": check_convergence, "check_extension": check_extension}
    for option, given in (("sizes", sizes), *checks.items()):
        if isinstance(given, Mapping) and (unknown := sorted(set(given) - set(names) - set(TASKS))):
            raise ValueError(f"{option}: given for {unknown}, neither a built-in task ({', '.join(TASKS)}) nor one run")
    check_seeds = {option: given if isinstance(given, Mapping) else dict.fromkeys(names, given)
                   for option, given in checks.items()}  # fmt: skip
    if any(check_seeds["check_extension"].values()):
        settings.extended()  # refuses the cosine schedule before anything is loaded or trained
    loaded = [load_task(t) if isinstance(t, str) else t for t in tasks]
    stamp = Stamp.of(loaded, trainer_kwargs)  # the data as given and the environment: runs reused only alike
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
    ledger = Ledger(output_dir / "runs.jsonl", stamp=stamp)

    sizes_of = {t.name: task_sizes(t, sizes, settings) for t in loaded}
    setup = Setup(
        tasks=loaded,
        sizes=sizes_of,
        seeds=settings.all_seeds,
        splits={(t.name, s): task_splits(t, sizes_of[t.name], s, settings) for t in loaded for s in settings.all_seeds},
        arms=list(templates),
        digests={arm: weights_digest(net, weights=kind != "none") for arm, (net, kind) in templates.items()},
        grids={arm: settings.grid(pretrained=kind != "none") for arm, (_, kind) in templates.items()},
        settings=settings,
    )
    execute = Runner(setup, templates, ledger, str(model_name), progress, trainer_kwargs, graphs, curves)

    # Plan, and run what the ledger lacks: the rate selection first, since the other runs use the rates it chooses.
    # A choice at the edge of its grid is tried against one step beyond it, by the same rule (extend_edges).
    grids = base_grids(setup)
    tuned = any(len(g) > 1 for g in setup.grids.values())  # with one rate per arm there is nothing to choose
    if tuned:
        execute(tuning_runs(setup, grids), "choosing learning rates")
    chosen = chosen_rates(setup, lambda run: ledger[run.key]["best_val_MAE"], grids)
    if (wider := edge_grids(setup, grids, chosen)) != grids:
        execute(tuning_runs(setup, wider), "beyond the grids' edges")
        chosen = chosen_rates(setup, lambda run: ledger[run.key]["best_val_MAE"], wider)
    plan = curve_runs(setup, chosen)
    pairs = convergence_runs(setup, chosen, check_seeds["check_convergence"])
    extended = extension_runs(setup, chosen, check_seeds["check_extension"])
    execute(plan + [twice for _, twice in pairs] + extended, "benchmark")
    seen = {arm: arm_labels_seen(arm, model) for arm in templates}
    wide = []  # where an interval is still wide, every arm gets more seeds (the widths decide, never who leads)
    if settings.more_seeds > 1:
        import pandas as pd

        wide = wide_configurations(paired(pd.DataFrame([ledger[r.key] for r in plan]), seen))
        more = more_seed_runs(setup, chosen, wide)
        execute(more, "more seeds where an interval is wide")
        plan += more

    # Report, from the ledger's records.
    trivial = {(t.name, seed): median_predictor_mae(t, setup.splits[t.name, seed], sizes_of[t.name]) for t in loaded
               for seed in setup.seeds}  # fmt: skip
    runs = [{**ledger[r.key], "median_MAE": trivial[r.task, r.seed][r.n_train]} for r in plan]
    tuning = tuning_runs(setup, wider) if tuned else []
    selection = [{**ledger[r.key], "chosen": r.candidate == chosen[r.task, r.arm]}
                 | ({"beyond": r.candidate not in grids[r.task, r.arm]} if wider != grids else {})
                 for r in tuning]  # fmt: skip
    convergence = [(ledger[base.key], ledger[twice.key]) for base, twice in pairs]
    extension = [({**ledger[r.key], **ledger[r.key]["shorter"]}, ledger[r.key]) for r in extended]  # the run inside
    steps = {"tuning": tuning, "curve": plan, "convergence": [t for _, t in pairs], "extension": extended}
    used: dict[tuple, dict] = {}  # each run once, under the first step that needed it
    for step, planned in steps.items():
        for r in planned:
            used.setdefault(r.key, {"step": step, **{k: v for k, v in ledger[r.key].items() if k != "shorter"}})
    return report(runs, output_dir, left_out=left_out, selection=selection, convergence=convergence,
                  extension=extension, settings=settings, seen=seen, widened=wide,
                  used=list(used.values()))  # fmt: skip
