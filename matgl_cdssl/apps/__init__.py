"""What users run: :func:`pretrain`, :func:`finetune` (and :func:`fit`) and :func:`predict`.

Each app is the engineering around the method (:mod:`matgl_cdssl.method`) and matgl's own modules: it reads crystals
through :mod:`matgl_cdssl.data`, gets and saves models through :mod:`matgl_cdssl.hub`, and leaves loops, devices,
checkpoints and logging to Lightning's Trainer.
"""

from __future__ import annotations

from matgl_cdssl.apps._callbacks import ShorterRun
from matgl_cdssl.apps._finetune import FinetuneResult, PropertyModule, finetune, fit
from matgl_cdssl.apps._optim import cosine_schedule, optimizer_for, plateau_schedule, set_state_width, split_parameters
from matgl_cdssl.apps._options import LOSSES, RELIABLE_VAL, TrainOptions
from matgl_cdssl.apps._predict import EnsembleResult, Predictions, calibration, predict, predict_all
from matgl_cdssl.apps._pretrain import pretrain
from matgl_cdssl.apps._runs import LOGGERS, process_count

__all__ = [
    "LOGGERS",
    "LOSSES",
    "RELIABLE_VAL",
    "EnsembleResult",
    "FinetuneResult",
    "Predictions",
    "PropertyModule",
    "ShorterRun",
    "TrainOptions",
    "calibration",
    "cosine_schedule",
    "finetune",
    "fit",
    "optimizer_for",
    "plateau_schedule",
    "predict",
    "predict_all",
    "pretrain",
    "process_count",
    "set_state_width",
    "split_parameters",
]
