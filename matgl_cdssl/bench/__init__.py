"""Benchmarks: :func:`benchmark` (SSL vs scratch on the shipped tasks or your own) and :func:`run_matbench`.

A benchmark is planned, run and reported in separate steps, each its own module:

- the tasks, their shipped data and splits (:class:`TaskData`, :data:`TASKS`, :func:`load_task`, :func:`task_splits`);
- the protocol: the arms, the budget and the rate selection (:class:`BenchmarkSettings`, :func:`arm_start`,
  :func:`candidates`, :func:`choose`);
- the plan: which runs a benchmark needs (:class:`Run`, :func:`tuning_runs`, :func:`curve_runs`, ...), pure functions;
- the ledger: the append-only file of finished runs, keyed on their fingerprints (:class:`Ledger`);
- the runner, which trains the runs that the ledger lacks, with :func:`~matgl_cdssl.apps.fit`;
- the report: tables, markdown and plots from the ledger's records (:func:`report`, :func:`summarise`,
  :func:`plot_curves`).

:func:`run_matbench` runs matbench's own folds, with the same arms and rate selection.
"""

from __future__ import annotations

from matgl_cdssl.bench._benchmark import benchmark
from matgl_cdssl.bench._curves import COLORS, curve_name, plot_curves, read_curve
from matgl_cdssl.bench._ledger import Ledger, run_fingerprint, run_key, weights_digest
from matgl_cdssl.bench._matbench import DEFAULT_TASKS, run_matbench
from matgl_cdssl.bench._matbench_data import (
    SHIPPED,
    load_results,
    resume_results,
    shipped_frame,
    supported_tasks,
    write_results,
)
from matgl_cdssl.bench._plan import (
    Run,
    Setup,
    chosen_rates,
    convergence_runs,
    curve_runs,
    extension_runs,
    tune_sizes,
    tuning_runs,
)
from matgl_cdssl.bench._protocol import (
    ARMS,
    QUICK,
    SUPERVISED,
    SUPERVISED_LEAKS,
    BenchmarkSettings,
    Candidate,
    arm_start,
    arm_templates,
    candidates,
    choose,
    tune,
)
from matgl_cdssl.bench._report import EXTENSION_HEADING, LEARNED, BenchmarkResult, report, summarise
from matgl_cdssl.bench._tasks import (
    CURVE,
    DEFAULT_SUITE,
    TASKS,
    TaskData,
    load_task,
    median_predictor_mae,
    read_shipped,
    shipped_structures,
    task_sizes,
    task_splits,
)

__all__ = [
    "ARMS",
    "COLORS",
    "CURVE",
    "DEFAULT_SUITE",
    "DEFAULT_TASKS",
    "EXTENSION_HEADING",
    "LEARNED",
    "QUICK",
    "SHIPPED",
    "SUPERVISED",
    "SUPERVISED_LEAKS",
    "TASKS",
    "BenchmarkResult",
    "BenchmarkSettings",
    "Candidate",
    "Ledger",
    "Run",
    "Setup",
    "TaskData",
    "arm_start",
    "arm_templates",
    "benchmark",
    "candidates",
    "choose",
    "chosen_rates",
    "convergence_runs",
    "curve_name",
    "curve_runs",
    "extension_runs",
    "load_results",
    "load_task",
    "median_predictor_mae",
    "plot_curves",
    "read_curve",
    "read_shipped",
    "report",
    "resume_results",
    "run_fingerprint",
    "run_key",
    "run_matbench",
    "shipped_frame",
    "shipped_structures",
    "summarise",
    "supported_tasks",
    "task_sizes",
    "task_splits",
    "tune",
    "tune_sizes",
    "tuning_runs",
    "weights_digest",
    "write_results",
]
