"""Benchmarks: :func:`benchmark` (SSL vs scratch on the shipped tasks or your own) and :func:`run_matbench`.

A benchmark is planned, run and reported in separate steps, each its own module:

- the tasks, their shipped data and splits (:class:`TaskData`, :data:`TASKS`, :func:`load_task`, :func:`task_splits`);
- the protocol: the arms, the budget, the seeds and the rate selection (:class:`BenchmarkSettings`,
  :data:`PROTOCOLS`, :func:`arm_start`, :func:`candidates`, :func:`choose`, :func:`beyond_edges`);
- the plan: which runs a benchmark needs (:class:`Run`, :func:`tuning_runs`, :func:`curve_runs`, ...), pure functions;
- the ledger: the append-only file of finished runs, keyed on their fingerprints (:class:`Ledger`);
- the runner, which trains the runs that the ledger lacks, with :func:`~matgl_cdssl.apps.fit`;
- the report: tables, markdown and plots from the ledger's records (:func:`report`, :func:`summarise`,
  :func:`plot_curves`); every pair of arms told win, tie or loss by a paired interval over seeds (:func:`paired`,
  :func:`tally`); the convergence and extension checks judged on validation data (``convergence.md``).

:func:`run_matbench` runs matbench's own folds, with the same arms and rate selection.
"""

from __future__ import annotations

from matgl_cdssl.bench._benchmark import benchmark
from matgl_cdssl.bench._checks import CRITERION, EXTENSION_HEADING
from matgl_cdssl.bench._curves import COLORS, curve_name, plot_curves, read_curve
from matgl_cdssl.bench._ledger import (
    Ledger,
    Stamp,
    data_digest,
    environment,
    run_fingerprint,
    run_key,
    task_digest,
    upgrade_ledger,
    weights_digest,
)
from matgl_cdssl.bench._matbench import DEFAULT_TASKS, MATBENCH_PROTOCOL, run_matbench
from matgl_cdssl.bench._matbench_data import (
    SHIPPED,
    load_results,
    resume_results,
    shipped_frame,
    supported_tasks,
    write_results,
)
from matgl_cdssl.bench._paired import (
    CONFIDENCE,
    WIDE,
    change_text,
    paired,
    paired_interval,
    tally,
    verdict,
    wide_configurations,
)
from matgl_cdssl.bench._plan import (
    Grids,
    Run,
    Setup,
    base_grids,
    chosen_rates,
    convergence_runs,
    curve_runs,
    edge_grids,
    extension_runs,
    more_seed_runs,
    tune_sizes,
    tuning_runs,
)
from matgl_cdssl.bench._protocol import (
    ARMS,
    PROTOCOL_DATES,
    PROTOCOLS,
    QUICK,
    SUPERVISED,
    BenchmarkSettings,
    Candidate,
    arm_labels_seen,
    arm_start,
    arm_templates,
    beyond_edges,
    candidates,
    choose,
    spread,
    tune,
)
from matgl_cdssl.bench._report import LEARNED, BenchmarkResult, report, summarise
from matgl_cdssl.bench._tasks import (
    CURVE,
    DEFAULT_SUITE,
    TASKS,
    TaskData,
    leaks,
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
    "CONFIDENCE",
    "CRITERION",
    "CURVE",
    "DEFAULT_SUITE",
    "DEFAULT_TASKS",
    "EXTENSION_HEADING",
    "LEARNED",
    "MATBENCH_PROTOCOL",
    "PROTOCOLS",
    "PROTOCOL_DATES",
    "QUICK",
    "SHIPPED",
    "SUPERVISED",
    "TASKS",
    "WIDE",
    "BenchmarkResult",
    "BenchmarkSettings",
    "Candidate",
    "Grids",
    "Ledger",
    "Run",
    "Setup",
    "Stamp",
    "TaskData",
    "arm_labels_seen",
    "arm_start",
    "arm_templates",
    "base_grids",
    "benchmark",
    "beyond_edges",
    "candidates",
    "change_text",
    "choose",
    "chosen_rates",
    "convergence_runs",
    "curve_name",
    "curve_runs",
    "data_digest",
    "edge_grids",
    "environment",
    "extension_runs",
    "leaks",
    "load_results",
    "load_task",
    "median_predictor_mae",
    "more_seed_runs",
    "paired",
    "paired_interval",
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
    "spread",
    "summarise",
    "supported_tasks",
    "tally",
    "task_digest",
    "task_sizes",
    "task_splits",
    "tune",
    "tune_sizes",
    "tuning_runs",
    "upgrade_ledger",
    "verdict",
    "weights_digest",
    "wide_configurations",
    "write_results",
]
