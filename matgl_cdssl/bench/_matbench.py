"""Matbench: finetune a (pretrained) MEGNet on each fold of matbench's structure regression tasks.

The runner uses matbench's own API end to end: ``MatbenchBenchmark`` picks the tasks, each task's
``get_train_and_val_data``/``get_test_data`` give the fold's crystals, ``task.record`` stores (and scores) the
predictions, and the benchmark is written in matbench's results format. Matbench is not a dependency of
matgl-cdssl; install it as described in ``docs/matbench.md``.

Matbench: A. Dunn, Q. Wang, A. Ganose, D. Dopp, A. Jain, npj Comput. Mater. 6, 138 (2020).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import operator
import re
import time
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from matgl_cdssl._backend import BACKEND
from matgl_cdssl.apps import finetune, predict_all
from matgl_cdssl.bench._ledger import Ledger, weights_digest
from matgl_cdssl.bench._matbench_data import check_task, load_data, write_results
from matgl_cdssl.bench._protocol import Candidate, arm_start, candidates, tune
from matgl_cdssl.hub import new_like

if TYPE_CHECKING:
    from collections.abc import Sequence

    from matbench.bench import MatbenchBenchmark
    from torch import nn

__all__ = ["DEFAULT_TASKS", "run_matbench"]

logger = logging.getLogger(__name__)

#: The task run when none is named.
DEFAULT_TASKS = ("matbench_perovskites",)


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def _scalars(values: dict[str, Any]) -> dict[str, Any]:
    """The JSON scalars of ``values`` (trainer options such as callbacks are left out of the record)."""
    return {k: v for k, v in values.items() if isinstance(v, (bool, int, float, str)) or v is None}


def _with_ids(exc: ValueError, where: str, ids: Sequence[str]) -> ValueError:
    """``exc``, prefixed by ``where``, with the matbench id of each crystal ``structures[i]`` that it names."""
    message = re.sub(r"structures\[(\d+)\]", lambda m: f"{ids[int(m.group(1))]} (structures[{m.group(1)}])", str(exc))
    return ValueError(f"{where}: {message}")


def _selection_file(output: str | Path | None) -> Path | None:
    """Where :func:`run_matbench` keeps the learning-rate selection of the results file ``output``.

    ``results.json.gz`` -> ``results.selection.jsonl``, beside it; None for None.
    """
    if output is None:
        return None
    output = Path(output)
    return output.with_name(output.name.split(".")[0] + ".selection.jsonl")


class _FoldRun:
    """Finetune an arm on one fold of a matbench task; choose its learning rate on the first fold's validation data.

    The first fold's run of the chosen candidate is the one the selection trained (same data, seed and rate): it is
    kept and reused instead of being trained again. With a ``selection`` file, each candidate's validation MAE is
    appended to it as soon as it is known (one JSON line, keyed by the arm's weights, the task, fold, seed, rates and
    finetune options), so that a selection stopped half-way continues with the candidates left; the choice's first
    fold is then trained again with the same seed. The file is a :class:`~matgl_cdssl.bench.Ledger` keyed on that key.
    """

    def __init__(
        self, task: Any, template: nn.Module, kind: str, seed: int, finetune_kwargs: dict, selection: Path | None = None
    ) -> None:
        self.task, self.template, self.kind, self.seed, self.kwargs = task, template, kind, seed, finetune_kwargs
        self.kept: dict[tuple[int, Candidate], tuple[Any, float]] = {}
        self.selection = selection

    def __call__(self, fold: int, candidate: Candidate) -> tuple[Any, float]:
        """The fold's :class:`~matgl_cdssl.apps.FinetuneResult` and the seconds its training took."""
        if (fold, candidate) in self.kept:
            return self.kept.pop((fold, candidate))
        inputs, outputs = self.task.get_train_and_val_data(fold)
        start = time.perf_counter()
        try:
            result = finetune(new_like(self.template, weights=self.kind, seed=self.seed + fold), list(inputs),
                              np.asarray(outputs, dtype=float), seed=self.seed + fold, lr=candidate.lr,
                              backbone_lr=candidate.backbone_lr, **self.kwargs)  # fmt: skip
        except ValueError as exc:
            raise _with_ids(exc, f"{self.task.dataset_name} fold {fold}, training data", list(inputs.index)) from exc
        return result, time.perf_counter() - start

    def choose(self, grid: Sequence[Candidate]) -> tuple[Candidate, list[tuple[Candidate, list[float]]]]:
        """The candidate to run every fold with, and each candidate's validation MAE (empty: nothing to choose)."""
        task = self.task
        earlier = [task.results[task.folds_map[f]].parameters for f in task.folds if task.is_recorded[f]]
        if earlier and "lr" in earlier[0]:  # chosen when the first folds were recorded
            found = [(Candidate(r["lr"], r["backbone_lr"]), [r["best_val_MAE"]]) for r in earlier[0]["lr_selection"]]
            return Candidate(earlier[0]["lr"], earlier[0]["backbone_lr"]), found
        if len(grid) == 1 or all(task.is_recorded.values()):
            return grid[0], []
        first = task.folds[0]
        known = Ledger(self.selection, key=operator.itemgetter("key"))
        reused = [c for c in grid if self._key(first, c) in known]

        def score(candidate: Candidate) -> list[float]:
            key = self._key(first, candidate)
            if key not in known:
                self.kept[first, candidate] = self(first, candidate)
                known.append({"key": key, "task": task.dataset_name, "fold": first, "lr": candidate.lr,
                              "backbone_lr": candidate.backbone_lr,
                              "best_val_MAE": self.kept[first, candidate][0].metrics["best_val_MAE"]})  # fmt: skip
            return [known[key]["best_val_MAE"]]

        choice, scores = tune(score, grid)
        for candidate in grid:  # only the choice's run is reused
            if candidate != choice:
                self.kept.pop((first, candidate), None)
        logger.info("%s: chose %s on fold %d's validation data (%s)%s", task.dataset_name, choice, first,
                    ", ".join(f"{c}: {v[0]:.4g}" for c, v in scores.items()),
                    f"; {len(reused)} of {len(grid)} read from {self.selection}" if reused else "")  # fmt: skip
        return choice, list(scores.items())

    @functools.cached_property
    def digest(self) -> str:
        """The arm's weights digest (only a selection needs it)."""
        return weights_digest(self.template, weights=self.kind != "none")

    def _key(self, fold: int, candidate: Candidate) -> str:
        """What a candidate's validation MAE depends on: the arm's weights, the data, the seed, rates and options."""
        payload = [self.digest, self.task.dataset_name, fold, self.seed + fold, candidate.lr, candidate.backbone_lr,
                   sorted(_scalars(self.kwargs).items())]  # fmt: skip
        return hashlib.sha256(json.dumps(payload, default=str).encode()).hexdigest()[:16]


def run_matbench(
    tasks: Sequence[str] | str | None = None,
    model: str | Path | nn.Module = "CDSSL-MEGNet-MP",
    output: str | Path | None = "results.json.gz",
    *,
    folds: Sequence[int] | None = None,
    seed: int = 0,
    predict_batch_size: int = 64,
    benchmark: MatbenchBenchmark | None = None,
    lr_grid: Sequence[float] | None = None,
    backbone_lr_scales: Sequence[float] = (1.0,),
    unpredictable: str = "raise",
    **finetune_kwargs: Any,
) -> MatbenchBenchmark:
    """Finetune ``model`` on every fold of matbench tasks and record its test predictions with matbench.

    For each task and fold, a fresh copy of the model (a fresh readout from the fold's seed) is finetuned with
    :func:`~matgl_cdssl.finetune` on the fold's training data (``val_fraction`` of it held out for validation and
    early stopping; seed ``seed + fold``), the fold's test crystals are predicted with :func:`~matgl_cdssl.predict`,
    and ``task.record`` stores the predictions, which matbench scores (MAE, RMSE, ...). The results file is rewritten
    after every fold.

    Args:
        tasks: Matbench v0.1 task names (regression on structures, see :func:`supported_tasks`); default
            ``matbench_perovskites``, or every task of ``benchmark`` when one is given.
        model: The arm (:func:`~matgl_cdssl.bench.arm_start`): a registered name such as ``"CDSSL-MEGNet-MP"``, a
            model folder or a MEGNet (its backbone copied for each fold, with a fresh readout), ``"scratch"``
            (``CDSSL-MEGNet-MP``'s architecture from random initialisation) or ``"supervised"`` (matgl's
            formation-energy MEGNet).
        output: Results file (see :func:`write_results`); None writes nothing.
        folds: Run only these folds (0-4), e.g. ``[0]`` for a quick check. Folds already recorded are skipped.
            Matbench 0.6 reads back (``from_file``) only files with every fold of every task recorded.
        seed: Base seed; fold ``k`` uses ``seed + k``.
        predict_batch_size: Crystals per batch when predicting the test set.
        benchmark: A ``MatbenchBenchmark`` to fill instead of a new ``MatbenchBenchmark(autoload=False,
            subset=tasks)``; its tasks' data are loaded with ``task.load()`` unless already loaded.
        lr_grid: Learning rates to choose from, per task, before any fold is run: each candidate (times each of
            ``backbone_lr_scales`` for a pretrained arm) is finetuned on the training data of the task's first fold,
            and the one with the lowest best validation MAE (validation carved from that training data) is used for
            every fold; the choice and every candidate's score go into the fold's ``params``. None: ``lr`` as given.
            With an ``output`` file, each candidate's score is also kept beside it as soon as it is known
            (``results.json.gz`` -> ``results.selection.jsonl``), so that a selection stopped half-way (an arm's
            candidates on a large task take hours on a CPU) resumes with the candidates it had not trained.
        backbone_lr_scales: Backbone learning rate as a fraction of ``lr`` (1: the same) to choose from.
        unpredictable: What to do with a test crystal the model cannot take (no two atoms within its cutoff, so no
            edge: matbench_phonons has such crystals at 4 Å), since matbench needs a prediction for every one:
            ``"raise"`` (the default, naming it) or ``"median"``: predict the fold's training targets' median for it
            (the trivial model of the MAE), listing its id in the fold's ``parameters["unpredictable"]``.
        **finetune_kwargs: Passed to :func:`~matgl_cdssl.finetune`: ``max_epochs``, ``patience``,
            ``batch_size``, ``lr``, ``loss``, ``val_fraction``, ``skip_invalid`` (training crystals only), and
            ``lightning.Trainer`` options.

    Returns:
        The benchmark with the recorded folds.

    Raises:
        ValueError: A task that is not a matbench structure regression task (composition or classification
            tasks), a task not in ``benchmark``, an unknown fold, or non-finite predictions, each named.
        ImportError: matbench is not installed.
    """
    if isinstance(tasks, str):
        tasks = [tasks]
    if benchmark is None:
        names = list(tasks or DEFAULT_TASKS)
    else:
        available = [task.dataset_name for task in benchmark.tasks]
        names = available if tasks is None else list(tasks)
        missing = [name for name in names if name not in available]
        if missing:
            raise ValueError(f"task(s) {missing} are not in the given benchmark (it has {available})")
    for name in names:
        check_task(name)
    for key in ("val_structures", "val_targets", "test_structures", "test_targets"):
        if key in finetune_kwargs:
            raise ValueError(f"{key!r} comes from each matbench fold; it cannot be a finetune option of run_matbench")
    if unpredictable not in ("raise", "median"):
        raise ValueError(f"unpredictable must be 'raise' or 'median'; got {unpredictable!r}")
    lr, backbone_lr = finetune_kwargs.pop("lr", None), finetune_kwargs.pop("backbone_lr", None)
    if lr_grid is not None and (lr is not None or backbone_lr is not None):
        raise ValueError("give either lr_grid (choose the rate on validation) or lr/backbone_lr, not both")
    template, kind = arm_start(model)
    if lr_grid is None:
        grid = [Candidate(1e-3 if lr is None else float(lr), backbone_lr)]
    else:
        grid = candidates(lr_grid, backbone_lr_scales, pretrained=kind != "none")
    if benchmark is None:
        from matbench.bench import MatbenchBenchmark

        benchmark = MatbenchBenchmark(autoload=False, subset=names)
    if not benchmark.user_metadata:
        benchmark.add_metadata(
            {
                "algorithm": "matgl-cdssl finetune",
                "model": str(model) if isinstance(model, (str, Path)) else type(model).__name__,
                "matgl_cdssl": _version("matgl-cdssl"),
                "matgl": _version("matgl"),
                "backend": BACKEND,
                **{f"finetune_{k}": v for k, v in _scalars(finetune_kwargs).items()},
                **({"lr_grid": [str(c) for c in grid]} if len(grid) > 1 else {"finetune_lr": grid[0].lr}),
            }
        )

    for task in benchmark.tasks:
        if task.dataset_name not in names:
            continue
        chosen = list(task.folds) if folds is None else [int(f) for f in folds]
        unknown = [f for f in chosen if f not in task.folds]
        if unknown:
            raise ValueError(f"{task.dataset_name}: no fold(s) {unknown}; its folds are {list(task.folds)}")
        load_data(task)
        fold_run = _FoldRun(task, template, kind, seed, finetune_kwargs, _selection_file(output))
        choice, scores = fold_run.choose(grid)
        for fold in chosen:
            if task.is_recorded[fold]:
                logger.info("%s fold %d is already recorded; skipping it", task.dataset_name, fold)
                continue
            test_inputs = task.get_test_data(fold, include_target=False)
            where = f"{task.dataset_name} fold {fold}"
            result, fit_s = fold_run(fold, choice)
            start = time.perf_counter()  # the seconds recorded: training plus predicting
            ids = list(test_inputs.index)
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="predict: ")
                    found = predict_all(result, list(test_inputs), batch_size=predict_batch_size, names=ids,
                                        skip_invalid=unpredictable == "median")  # fmt: skip
            except ValueError as exc:
                raise _with_ids(exc, f"{where}, test data (every test crystal needs a prediction)", ids) from exc
            predictions, fallback = found.mean, [i for i in ids if i in found.reasons]
            if fallback:
                median = float(np.median(np.asarray(task.get_train_and_val_data(fold)[1], dtype=float)))
                predictions = np.where(np.isin(ids, fallback), median, predictions)
                logger.warning("%s: %d test crystal(s) the model cannot take get the training median %.4g: %s",
                               where, len(fallback), median, {i: found.reasons[i] for i in fallback})  # fmt: skip
            bad = np.flatnonzero(~np.isfinite(predictions))
            if bad.size:
                raise ValueError(
                    f"{where}: {bad.size} non-finite prediction(s), e.g. for {list(test_inputs.index[bad[:5]])}"
                )
            params = {
                "seed": seed + fold,
                "lr": choice.lr,
                "backbone_lr": choice.backbone_lr,
                "lr_selection": [{"lr": c.lr, "backbone_lr": c.backbone_lr, "best_val_MAE": v[0]} for c, v in scores],
                "unpredictable": fallback,
                "data_mean": float(result.data_mean),
                "data_std": float(result.data_std),
                "seconds": round(time.perf_counter() - start + fit_s, 1),
                **{k: float(v) for k, v in result.metrics.items()},
            }
            task.record(fold, predictions, params=params)
            logger.info(
                "%s fold %d: test MAE %.4g (best validation MAE %.4g at epoch %d)",
                task.dataset_name,
                fold,
                task.results[task.folds_map[fold]].scores.mae,
                result.metrics["best_val_MAE"],
                result.metrics["best_epoch"],
            )
            if output is not None:
                write_results(benchmark, output)
    if output is not None:
        write_results(benchmark, output)
    return benchmark
