"""What users run: :func:`pretrain`, :func:`finetune`, :func:`predict`, :func:`benchmark` and :func:`run_matbench`.

Each app is the engineering around the method (:mod:`matgl_cdssl.method`) and matgl's own modules: it reads crystals
through :mod:`matgl_cdssl.data`, gets and saves models through :mod:`matgl_cdssl.hub`, and leaves loops, devices,
checkpoints and logging to Lightning's Trainer.
"""

from __future__ import annotations

from matgl_cdssl.apps._benchmark import (
    CURVE,
    DEFAULT_SUITE,
    TASKS,
    BenchmarkResult,
    BenchmarkSettings,
    TaskData,
    arm_start,
    benchmark,
    load_task,
    report,
)
from matgl_cdssl.apps._curves import curve_name, plot_curves, read_curve
from matgl_cdssl.apps._finetune import (
    EnsembleResult,
    FinetuneResult,
    PropertyModule,
    ShorterRun,
    calibration,
    finetune,
    fit,
    optimizer_for,
    plateau_schedule,
    set_state_width,
    split_parameters,
)
from matgl_cdssl.apps._matbench import (
    DEFAULT_TASKS,
    load_results,
    resume_results,
    run_matbench,
    supported_tasks,
    write_results,
)
from matgl_cdssl.apps._predict import Predictions, predict, predict_all
from matgl_cdssl.apps._pretrain import LOGGERS, pretrain
from matgl_cdssl.apps._tuning import Candidate, candidates, choose

__all__ = [
    "CURVE",
    "DEFAULT_SUITE",
    "DEFAULT_TASKS",
    "LOGGERS",
    "TASKS",
    "BenchmarkResult",
    "BenchmarkSettings",
    "Candidate",
    "EnsembleResult",
    "FinetuneResult",
    "Predictions",
    "PropertyModule",
    "ShorterRun",
    "TaskData",
    "arm_start",
    "benchmark",
    "calibration",
    "candidates",
    "choose",
    "curve_name",
    "finetune",
    "fit",
    "load_results",
    "load_task",
    "optimizer_for",
    "plateau_schedule",
    "plot_curves",
    "predict",
    "predict_all",
    "pretrain",
    "read_curve",
    "report",
    "resume_results",
    "run_matbench",
    "set_state_width",
    "split_parameters",
    "supported_tasks",
    "write_results",
]
