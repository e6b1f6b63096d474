"""Training the runs of a plan that the ledger lacks, each crystal a run needs checked and converted once."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np

from matgl_cdssl.apps import fit
from matgl_cdssl.bench._curves import curve_name
from matgl_cdssl.bench._protocol import SUPERVISED
from matgl_cdssl.data import build_dataset, check_values
from matgl_cdssl.hub import new_like

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from torch import nn

    from matgl_cdssl.bench._ledger import Ledger
    from matgl_cdssl.bench._plan import Run, Setup
    from matgl_cdssl.bench._tasks import TaskData

__all__ = ["Graphs", "Runner", "valid_part"]

logger = logging.getLogger(__name__)


@dataclass
class Graphs:
    """Crystals of one task converted to graphs once, and the labelled subsets the runs train on.

    ``index`` maps a crystal's index in the task to its position in ``dataset``.
    """

    dataset: Any
    index: dict[int, int]

    @classmethod
    def of(cls, structures: Sequence[Any], targets: Sequence[float], needed: set[int], model: nn.Module,
           name: str) -> Graphs:  # fmt: skip
        """The ``needed`` crystals (indices into ``structures``); an invalid one raises, naming it."""
        dataset, kept, _ = convert(structures, targets, sorted(needed), model, name, skip_invalid=False)
        return cls(dataset, {i: k for k, i in enumerate(kept)})

    @classmethod
    def valid(
        cls, structures: Sequence[Any], targets: Sequence[float], model: nn.Module, name: str
    ) -> tuple[Graphs, list[int], list[tuple[str, str]]]:
        """Every crystal that the checks accept, converted: ``(graphs, kept, skipped)``.

        ``graphs`` is indexed by the position among the ``kept`` crystals (their indices into ``structures``), so
        that it serves the task without the ``skipped`` ones, ``(name, reason)`` each.
        """
        dataset, kept, skipped = convert(structures, targets, range(len(structures)), model, name, skip_invalid=True)
        return cls(dataset, {k: k for k in range(len(kept))}), kept, skipped

    def subset(self, indices: Sequence[int]) -> Any:
        from torch.utils.data import Subset

        return Subset(self.dataset, [self.index[int(i)] for i in indices])


def convert(
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


def valid_part(
    task: TaskData, model: nn.Module, left_out: list[tuple[str, str, str]]
) -> tuple[TaskData, tuple[Graphs, Graphs]]:
    """``task`` without the crystals that the checks reject, and its graphs, converted while checking.

    Each crystal left out is recorded in ``left_out`` as (task, name, reason); the graphs are the pool's and the test
    pool's, for the runs.
    """
    before = len(left_out)
    pool, kept, skipped = Graphs.valid(task.structures, task.targets, model, task.name)
    left_out.extend((task.name, crystal, reason) for crystal, reason in skipped)
    structures, targets = [task.structures[i] for i in kept], [task.targets[i] for i in kept]
    test_s, test_y, test_pool = task.test_structures, task.test_targets, pool
    if test_s is not None:
        test_pool, kept, skipped = Graphs.valid(test_s, test_y, model, f"{task.name} (test)")
        left_out.extend((task.name, crystal, reason) for crystal, reason in skipped)
        test_s, test_y = [test_s[i] for i in kept], [test_y[i] for i in kept]
    if len(left_out) > before:
        logger.warning("benchmark: %d invalid crystal(s) of %s left out (listed in results.md)", len(left_out) - before,
                       task.name)  # fmt: skip
    valid = replace(task, structures=structures, targets=targets, test_structures=test_s, test_targets=test_y)
    return valid, (pool, test_pool)


def task_graphs(
    task: TaskData, splits: Sequence[dict[str, Any]], sizes: Sequence[int], model: nn.Module
) -> tuple[Graphs, Graphs]:
    """Convert every crystal that some run of the task uses (over the seeds' ``splits``), once."""
    needed, needed_test = set(), set()
    for split in splits:
        for n in sizes:
            needed |= {int(i) for i in split["train"][n]} | {int(i) for i in split["val"][n]}
        (needed_test if task.test_structures is not None else needed).update(int(i) for i in split["test"])
    pool = Graphs.of(task.structures, task.targets, needed, model, task.name)
    if task.test_structures is None:
        return pool, pool
    return pool, Graphs.of(task.test_structures, task.test_targets, needed_test, model, f"{task.name} (test)")


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


@dataclass
class Runner:
    """Train the runs of a plan that the ledger does not hold, each with its candidate's rate and its budget.

    Every crystal that a task's runs need is checked and converted once, before the task's first run (or while
    checking the task, under ``skip_invalid``: ``graphs``).

    Attributes:
        setup: The benchmark's tasks, sizes, seeds and splits.
        templates: Each arm's :func:`~matgl_cdssl.bench.arm_start`.
        ledger: The finished runs; each run trained is appended to it.
        model_name: The CDSSL arm's model, as recorded.
        progress: Show a progress bar.
        trainer_kwargs: Passed to ``lightning.Trainer``.
        graphs: Each task's converted crystals (the pool's and the test pool's), by name.
        curves: Keep each run's training curve in ``curves/`` beside the ledger.
    """

    setup: Setup
    templates: dict[str, tuple[nn.Module, str]]
    ledger: Ledger
    model_name: str
    progress: bool
    trainer_kwargs: dict[str, Any]
    graphs: dict[str, tuple[Graphs, Graphs]] = field(default_factory=dict)
    curves: bool = True

    def __call__(self, plan: Sequence[Run], desc: str) -> None:
        """Train every run of ``plan`` that the ledger lacks (or holds without the shorter run it asks for)."""
        from tqdm.auto import tqdm

        todo = list({r.key: r for r in plan if r.key not in self.ledger or
                     (r.shorter and "shorter" not in self.ledger[r.key])}.values())  # fmt: skip
        logger.info("%s: %d runs, %d cached, %d to do", desc, len(plan), len(plan) - len(todo), len(todo))
        reference = self.templates["scratch"][0]
        setup = self.setup
        for t in setup.tasks:
            if t.name not in self.graphs and any(r.task == t.name for r in todo):
                self.graphs[t.name] = task_graphs(t, [setup.splits[t.name, s] for s in setup.seeds],
                                                  setup.sizes[t.name], reference)  # fmt: skip
        units = {t.name: t.unit for t in setup.tasks}
        bar = tqdm(total=len(todo), disable=not self.progress, desc=desc)
        with _lightning_warnings_only():
            for r in todo:
                bar.set_postfix_str(f"{r.task} n={r.n_train} seed={r.seed} {r.arm} {r.candidate}")
                self._train(r, units[r.task])
                bar.update()
        bar.close()

    def _train(self, run: Run, unit: str) -> None:
        split = self.setup.splits[run.task, run.seed]
        pool, test_pool = self.graphs[run.task]
        n, candidate, budget = run.n_train, run.candidate, run.settings
        L.seed_everything(run.seed, verbose=False)
        template, kind = self.templates[run.arm]
        kwargs = dict(self.trainer_kwargs)
        if self.curves:
            from lightning.pytorch.callbacks import LearningRateMonitor
            from lightning.pytorch.loggers import CSVLogger

            name = curve_name({"task": run.task, "n_train": n, "seed": run.seed, "arm": run.arm,
                               "fingerprint": run.fingerprint})  # fmt: skip
            kwargs.setdefault("logger", CSVLogger(self.ledger.path.parent / "curves", name=name, version=""))
            kwargs["callbacks"] = [*kwargs.get("callbacks", []), LearningRateMonitor("epoch")]
        start = time.perf_counter()
        result = fit(
            new_like(template, weights=kind),
            pool.subset(split["train"][n]),
            pool.subset(split["val"][n]),
            test=test_pool.subset(split["test"]),
            options=budget.train_options(candidate, freeze_backbone=budget.freeze_backbone and kind == "backbone"),
            seed=run.seed,
            shorter=run.shorter,
            enable_progress_bar=False,
            **kwargs,
        )
        m = result.metrics
        record = {
            "task": run.task,
            "unit": unit,
            "n_train": n,
            "seed": run.seed,
            "arm": run.arm,
            "lr": candidate.lr,
            "backbone_lr": candidate.backbone_lr,
            "test_MAE": m["test_MAE"],
            "best_val_MAE": m["best_val_MAE"],
            "best_epoch": int(m["best_epoch"]),
            "epochs_run": int(m["epochs"]),
            "max_epochs": budget.max_epochs,
            "patience": budget.patience,
            "lr_patience": budget.lr_patience,
            "n_val": len(split["val"][n]),
            "n_test": len(split["test"]),
            "wall_s": round(time.perf_counter() - start, 2),
            "model": {"CDSSL": self.model_name, "scratch": self.model_name, "supervised": SUPERVISED}.get(run.arm,
                                                                                                          run.arm),
            "fingerprint": run.fingerprint,
        }  # fmt: skip
        if run.shorter:
            record["shorter"] = {"test_MAE": m["shorter_test_MAE"], "best_val_MAE": m["shorter_best_val_MAE"],
                                 "best_epoch": int(m["shorter_best_epoch"]), "epochs_run": int(m["shorter_epochs"]),
                                 "patience": run.shorter[0], "max_epochs": run.shorter[1]}  # fmt: skip
        self.ledger.append(record)
