"""The Trainer's side of a run: loggers, metrics kept across resumes, and the devices it will run on."""

from __future__ import annotations

import importlib.util
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.loggers import CSVLogger, Logger

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

logger = logging.getLogger(__name__)

__all__ = [
    "LOGGERS",
    "check_loggers",
    "deterministic_on_cpu",
    "make_loggers",
    "merge_metrics",
    "on_cpu",
    "process_count",
    "resume_from",
    "set_aside_metrics",
]

LOGGERS = ("csv", "tensorboard")
"""Names that ``pretrain(..., loggers=...)`` accepts."""


def on_cpu(trainer_kwargs: dict[str, Any]) -> bool:
    """Whether the Trainer will run on the CPU."""
    accelerator = trainer_kwargs.get("accelerator", "auto")
    return accelerator == "cpu" or (accelerator in (None, "auto") and not torch.cuda.is_available())


@contextmanager
def deterministic_on_cpu(trainer_kwargs: dict[str, Any]) -> Iterator[None]:
    """Make the Trainer deterministic on the CPU (unless the caller chose), and give torch's setting back afterwards.

    On the CPU, ``deterministic=True`` (torch's ``use_deterministic_algorithms``) replaces the threaded, racing
    accumulation of ``index_put_(accumulate=True)`` (the backward of gathering node or edge features by index) with a
    sorted one: two runs with the same seed at the same thread count then give identical weights. Across thread
    counts MKL's matrix products still split their sums by thread (the weight gradients, summed over all edges); no
    setting makes them agree on every CPU (see docs/benchmark.md, "Reproducibility"). The setting is
    process-wide, and the Trainer sets it when it is made: the caller's ``(deterministic, warn_only)`` is restored on
    leaving, also after an error.

    Args:
        trainer_kwargs: The Trainer's keyword arguments; ``deterministic`` defaults to True in them on the CPU.
    """
    if on_cpu(trainer_kwargs):
        trainer_kwargs.setdefault("deterministic", True)
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def process_count(trainer_kwargs: dict[str, Any]) -> int:
    """Processes the Trainer will run: devices per node (an int, a list of ids, or "auto"/-1 for all) times nodes."""
    devices = trainer_kwargs.get("devices", 1)
    if isinstance(devices, (list, tuple)):
        per_node = len(devices)
    elif str(devices).strip() in ("auto", "-1"):
        per_node = 1 if on_cpu(trainer_kwargs) else torch.cuda.device_count()
    elif isinstance(devices, str) and "," in devices:
        per_node = len([d for d in devices.split(",") if d.strip()])
    else:
        per_node = int(devices)
    return max(1, per_node) * max(1, int(trainer_kwargs.get("num_nodes", 1)))


def check_loggers(loggers: Sequence[str] | str) -> tuple[str, ...]:
    """Validate the logger names of :func:`pretrain` before any work is done."""
    names = tuple(dict.fromkeys((loggers,) if isinstance(loggers, str) else loggers))
    unknown = [name for name in names if name not in LOGGERS]
    if unknown:
        raise ValueError(f"unknown logger(s) {unknown} in loggers={names!r}; choose from {', '.join(LOGGERS)}")
    if "tensorboard" in names and not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
        raise ImportError(
            f"loggers={names!r} needs TensorBoard, but neither tensorboard nor tensorboardX is installed: "
            "pip install tensorboard, or leave 'tensorboard' out of loggers ('csv' writes metrics.csv)"
        )
    return names


def make_loggers(names: Sequence[str], root: Path) -> Logger | list[Logger] | bool:
    """The Lightning loggers named in ``names``, writing under ``root`` (False, i.e. none, when empty)."""
    made: list[Logger] = []
    for name in names:
        if name == "csv":
            made.append(CSVLogger(root, name="", version=""))
        else:
            from lightning.pytorch.loggers import TensorBoardLogger

            made.append(TensorBoardLogger(root, name="tensorboard", version="", default_hp_metric=False))
    return made[0] if len(made) == 1 else made or False


def set_aside_metrics(root: Path) -> Path | None:
    """Move ``metrics.csv`` of the interrupted run aside: Lightning's CSV logger would overwrite it on resume."""
    metrics = root / "metrics.csv"
    if not metrics.is_file():
        return None
    aside = root / "metrics.before-resume.csv"
    metrics.replace(aside)
    return aside


def merge_metrics(root: Path, earlier: Path) -> None:
    """Prepend the earlier epochs to the resumed run's ``metrics.csv`` (rows of epochs that were redone are dropped)."""
    import pandas as pd

    new = pd.read_csv(root / "metrics.csv") if (root / "metrics.csv").is_file() else pd.DataFrame()
    old = pd.read_csv(earlier)
    if "epoch" in new and len(new):
        old = old[old["epoch"] < new["epoch"].min()]
    pd.concat([old, new], ignore_index=True).to_csv(root / "metrics.csv", index=False)
    earlier.unlink()


def resume_from(ckpt_path: str | Path | None, resume: bool, output_dir: str | Path | None) -> str | Path | None:
    """The checkpoint to resume from: ``ckpt_path``, else with ``resume`` ``output_dir/checkpoints/last.ckpt``."""
    if not resume or ckpt_path is not None:
        return ckpt_path
    if output_dir is None:
        raise ValueError("resume=True needs output_dir: the run resumes from output_dir/checkpoints/last.ckpt")
    last = Path(output_dir) / "checkpoints" / "last.ckpt"
    if last.is_file():
        logger.info("Resuming from %s", last)
        return last
    logger.info("No %s to resume from; starting afresh", last)
    return None
