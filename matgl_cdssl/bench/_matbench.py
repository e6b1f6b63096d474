"""Matbench: finetune a (pretrained) MEGNet on each fold of matbench's structure regression tasks.

The runner uses matbench's own API end to end: ``MatbenchBenchmark`` picks the tasks, each task's
``get_train_and_val_data``/``get_test_data`` give the fold's crystals, ``task.record`` stores (and scores) the
predictions, and the benchmark is written in matbench's results format. Matbench is not a dependency of
matgl-cdssl; install it as described in ``docs/matbench.md``.

Every choice is made inside each fold, as matbench requires (:data:`MATBENCH_PROTOCOL`): each candidate rate trains on
the fold's training data less a validation set carved from it (the carve-out); the lowest best validation MAE chooses
the rate, and its best epoch the number of epochs. A fresh model then trains on the whole training fold for that many
epochs, with the carve-out run's learning rates epoch by epoch (the refit), and predicts the fold's test set for
``task.record``. The carve-out model's test MAE is kept in the fold's parameters too.

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

import lightning as L
import numpy as np

from matgl_cdssl._backend import BACKEND
from matgl_cdssl.apps import finetune, predict_all
from matgl_cdssl.bench._ledger import Ledger, data_digest, environment, weights_digest
from matgl_cdssl.bench._matbench_data import (
    check_task,
    load_data,
    metadata_differences,
    resume_results,
    write_results,
)
from matgl_cdssl.bench._protocol import BenchmarkSettings, Candidate, arm_start, beyond_edges, choose, tune
from matgl_cdssl.hub import new_like

if TYPE_CHECKING:
    from collections.abc import Sequence

    from matbench.bench import MatbenchBenchmark
    from torch import nn

__all__ = ["DEFAULT_TASKS", "MATBENCH_PROTOCOL", "run_matbench"]

logger = logging.getLogger(__name__)

#: The task run when none is named.
DEFAULT_TASKS = ("matbench_perovskites",)

#: How each fold is run, recorded in its parameters: the rate and the epochs chosen on a carve-out of the fold's
#: training data, then a refit on the whole training fold. Folds recorded otherwise (0.4: one rate chosen on fold 0
#: for every fold, the carve-out model recorded) are not continued under it.
MATBENCH_PROTOCOL = "per-fold carve-out, refit"


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


class _Rates(L.Callback):
    """Each epoch's learning rates (one per parameter group), recorded; or, given ``replay``, set epoch by epoch.

    The refit replays the carve-out run's rates: its plateau schedule halved them when the carve-out's validation
    MAE stalled, and the refit has no validation data to watch.
    """

    def __init__(self, replay: Sequence[Sequence[float]] | None = None) -> None:
        self.replay = None if replay is None else [list(r) for r in replay]
        self.rates: list[list[float]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        groups = trainer.optimizers[0].param_groups
        if self.replay is not None:
            for group, lr in zip(groups, self.replay[trainer.current_epoch], strict=True):
                group["lr"] = lr
        self.rates.append([float(group["lr"]) for group in groups])


class _FoldRun:
    """Finetune an arm on the folds of a matbench task: the carve-out runs that choose, and the refit.

    Each candidate's carve-out run on a fold is finetuned on the fold's training data, ``val_fraction`` of it
    validating (seed ``seed + fold``). The chosen candidate's run is kept, not trained again. With a ``selection``
    file (a :class:`~matgl_cdssl.bench.Ledger`), each candidate's validation MAE and best epoch are appended to it
    as soon as they are known, keyed by the arm's weights, the task, the fold's data, the fold, seed, rates,
    finetune options and the environment, so that a selection stopped half-way continues with the candidates left;
    the choice's carve-out run is then trained again with the same seed.
    """

    def __init__(
        self, task: Any, template: nn.Module, kind: str, seed: int, finetune_kwargs: dict, selection: Path | None = None
    ) -> None:
        self.task, self.template, self.kind, self.seed, self.kwargs = task, template, kind, seed, finetune_kwargs
        self.kept: dict[tuple[int, Candidate], tuple[Any, float, list]] = {}
        self.selection = selection
        self.digests: dict[int, str] = {}

    def __call__(
        self, fold: int, candidate: Candidate, replay: Sequence[Sequence[float]] | None = None
    ) -> tuple[Any, float, list[list[float]]]:
        """A carve-out run (or, with the rates to ``replay``, the refit): its result, seconds and rates per epoch."""
        if replay is None and (fold, candidate) in self.kept:
            return self.kept.pop((fold, candidate))
        inputs, outputs = self.task.get_train_and_val_data(fold)
        rates = _Rates(replay)
        kwargs = {**self.kwargs, "callbacks": [*self.kwargs.get("callbacks", []), rates]}
        if replay is not None:  # the whole training fold, as many epochs as chosen, no validation
            kwargs |= {"val_fraction": 0, "max_epochs": len(replay), "patience": None, "lr_patience": None}
        start = time.perf_counter()
        try:
            result = finetune(new_like(self.template, weights=self.kind, seed=self.seed + fold), list(inputs),
                              np.asarray(outputs, dtype=float), seed=self.seed + fold, lr=candidate.lr,
                              backbone_lr=candidate.backbone_lr, **kwargs)  # fmt: skip
        except ValueError as exc:
            raise _with_ids(exc, f"{self.task.dataset_name} fold {fold}, training data", list(inputs.index)) from exc
        return result, time.perf_counter() - start, rates.rates

    def choose(
        self, fold: int, grid: Sequence[Candidate], extend_edges: bool = False
    ) -> tuple[Candidate, list[dict[str, Any]]]:
        """The fold's candidate, chosen on its carve-out, and each candidate's validation MAE and best epoch.

        With ``extend_edges``, a choice at an edge of ``grid`` competes with one step beyond that edge
        (:func:`~matgl_cdssl.bench.beyond_edges`), as in the benchmark; those candidates are marked ``beyond_edge``.
        """
        task = self.task
        known = Ledger(self.selection, key=operator.itemgetter("key"))
        reused = [c for c in grid if self._key(fold, c) in known]

        def score(candidate: Candidate) -> list[float]:
            key = self._key(fold, candidate)
            if key not in known:
                self.kept[fold, candidate] = self(fold, candidate)
                metrics = self.kept[fold, candidate][0].metrics
                known.append({"key": key, "task": task.dataset_name, "fold": fold, "lr": candidate.lr,
                              "backbone_lr": candidate.backbone_lr, "best_val_MAE": metrics["best_val_MAE"],
                              "best_epoch": int(metrics["best_epoch"])})  # fmt: skip
            return [known[key]["best_val_MAE"]]

        choice, scores = tune(score, grid)
        beyond = beyond_edges(grid, choice) if extend_edges else []
        if beyond:  # the choice sits at an edge of the grid: one step beyond it competes too, by the same rule
            scores |= {c: score(c) for c in beyond}
            choice = choose(scores)
        tried = [*grid, *beyond]
        for candidate in tried:  # only the choice's run is reused
            if candidate != choice:
                self.kept.pop((fold, candidate), None)
        if len(tried) > 1:
            logger.info("%s fold %d: chose %s on the carve-out's validation data (%s)%s", task.dataset_name, fold,
                        choice, ", ".join(f"{c}: {v[0]:.4g}" for c, v in scores.items()),
                        f"; {len(reused)} of {len(grid)} read from {self.selection}" if reused else "")  # fmt: skip
        fields = ("lr", "backbone_lr", "best_val_MAE", "best_epoch")
        return choice, [{**{k: known[self._key(fold, c)][k] for k in fields}, "beyond_edge": c in beyond}
                        for c in tried]  # fmt: skip

    @functools.cached_property
    def digest(self) -> str:
        """The arm's weights digest (only a selection needs it)."""
        return weights_digest(self.template, weights=self.kind != "none")

    def _key(self, fold: int, candidate: Candidate) -> str:
        """What a carve-out run depends on: the arm, the fold's data, the seed, rates, options and environment."""
        if fold not in self.digests:
            inputs, outputs = self.task.get_train_and_val_data(fold)
            self.digests[fold] = data_digest(list(inputs), np.asarray(outputs, dtype=float))
        payload = [MATBENCH_PROTOCOL, self.digest, self.task.dataset_name, self.digests[fold], fold, self.seed + fold,
                   candidate.lr, candidate.backbone_lr, sorted(_scalars(self.kwargs).items()),
                   environment(self.kwargs)]  # fmt: skip
        return hashlib.sha256(json.dumps(payload, default=str).encode()).hexdigest()[:16]


def _predict(result: Any, inputs: Any, where: str, batch_size: int, median: float | None) -> tuple[np.ndarray, list]:
    """A fold's test predictions and the ids of those given the training ``median`` (None: an invalid one raises)."""
    ids = list(inputs.index)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="predict: ")
            found = predict_all(result, list(inputs), batch_size=batch_size, names=ids, skip_invalid=median is not None)
    except ValueError as exc:
        raise _with_ids(exc, f"{where}, test data (every test crystal needs a prediction)", ids) from exc
    predictions, fallback = found.mean, [i for i in ids if i in found.reasons]
    if fallback:
        predictions = np.where(np.isin(ids, fallback), median, predictions)
        logger.warning("%s: %d test crystal(s) the model cannot take get the training median %.4g: %s", where,
                       len(fallback), median, {i: found.reasons[i] for i in fallback})  # fmt: skip
    bad = np.flatnonzero(~np.isfinite(predictions))
    if bad.size:
        raise ValueError(f"{where}: {bad.size} non-finite prediction(s), e.g. for {[ids[i] for i in bad[:5]]}")
    return predictions, fallback


def _check_protocol(task: Any) -> None:
    """Refuse to continue a task whose recorded folds were run under another protocol than :data:`MATBENCH_PROTOCOL`."""
    other = [f for f in task.folds if task.is_recorded[f] and
             (task.results[task.folds_map[f]].parameters or {}).get("protocol") != MATBENCH_PROTOCOL]  # fmt: skip
    if other:
        raise ValueError(
            f"{task.dataset_name}: fold(s) {other} were recorded under another protocol than {MATBENCH_PROTOCOL!r} "
            "(before it, one rate was chosen on fold 0's validation data for every fold and the carve-out model was "
            "recorded); "
            "continue them with the version that recorded them, or start a new results file"
        )


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
    equal_grids: bool = True,
    extend_edges: bool = True,
    unpredictable: str = "raise",
    **finetune_kwargs: Any,
) -> MatbenchBenchmark:
    """Finetune ``model`` on every fold of matbench tasks and record its test predictions with matbench.

    For each task and fold (:data:`MATBENCH_PROTOCOL`): each candidate rate finetunes a fresh copy of the model (a fresh
    readout from the fold's seed, ``seed + fold``) with :func:`~matgl_cdssl.finetune` on the fold's training data,
    ``val_fraction`` of it held out for validation and early stopping (the carve-out); the lowest best validation
    MAE chooses the rate and its best epoch the number of epochs; a fresh copy then trains on the whole training
    fold for that many epochs, at the carve-out run's rates epoch by epoch (the refit). The refit's predictions of
    the fold's test crystals (:func:`~matgl_cdssl.predict`) are recorded with ``task.record``, which matbench scores
    (MAE, RMSE, ...); the carve-out model's test MAE goes into the fold's ``parameters["carve_out"]``. The test
    crystals are predicted only after both are trained. The results file is rewritten after every fold.

    Args:
        tasks: Matbench v0.1 task names (regression on structures, see :func:`supported_tasks`); default
            ``matbench_perovskites``, or every task of ``benchmark`` when one is given.
        model: The arm (:func:`~matgl_cdssl.bench.arm_start`): a registered name such as ``"CDSSL-MEGNet-MP"``, a
            model folder or a MEGNet (its backbone copied for each fold, with a fresh readout), ``"scratch"``
            (``CDSSL-MEGNet-MP``'s architecture from random initialisation) or ``"supervised"`` (matgl's
            formation-energy MEGNet).
        output: Results file (see :func:`write_results`); None writes nothing. A file that exists is continued: the
            folds it holds are kept, and only the others run (a run stopped part-way, or ``folds`` given in turn).
            It must hold the same tasks and have been written with the same settings (model, grid, finetune
            options, versions), or the call refuses it; to run folds in parallel, give each process its own file and
            merge them with :func:`~matgl_cdssl.bench.resume_results`.
        folds: Run only these folds (0-4), e.g. ``[0]`` for a quick check. Folds already recorded are skipped.
            Matbench 0.6 reads back (``from_file``) only files with every fold of every task recorded.
        seed: Base seed; fold ``k`` uses ``seed + k``.
        predict_batch_size: Crystals per batch when predicting the test set.
        benchmark: A ``MatbenchBenchmark`` to fill instead of a new ``MatbenchBenchmark(autoload=False,
            subset=tasks)`` or the ``output`` file's folds; its tasks' data are loaded with ``task.load()`` unless
            already loaded. One that already holds metadata must have this call's settings.
        lr_grid: Learning rates to choose from in each fold, on its carve-out: each candidate (times each of
            ``backbone_lr_scales`` for a pretrained arm) is finetuned on the fold's training data less its
            validation part, and the one with the lowest best validation MAE is refitted; the choice and every
            candidate's score go into the fold's ``params``. None: ``lr`` as given (still carved out for the epochs).
            With an ``output`` file, each candidate's score is also kept beside it as soon as it is known
            (``results.json.gz`` -> ``results.selection.jsonl``), so that a selection stopped half-way (an arm's
            candidates on a large task take hours on a CPU) resumes with the candidates it had not trained.
        backbone_lr_scales: Backbone learning rate as a fraction of ``lr`` (1: the same) to choose from.
        equal_grids: With ``lr_grid``, every arm has as many candidates, the benchmark's rule
            (:meth:`~matgl_cdssl.bench.BenchmarkSettings.grid`): scratch, which has no backbone rate to choose, gets
            as many rates spread over the range of ``lr_grid`` as a pretrained arm has candidates. False: scratch
            chooses from ``lr_grid`` itself.
        extend_edges: With ``lr_grid``, a fold's choice at an edge of its grid competes with one step beyond that
            edge on the same carve-out (the benchmark's rule); the fold's ``lr_selection`` marks those candidates
            ``beyond_edge``.
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
            tasks), a task not in ``benchmark`` (or in the ``output`` file continued), a benchmark or file recorded
            with other settings, an unknown fold, or non-finite predictions, each named.
        ImportError: matbench is not installed.
    """
    if isinstance(tasks, str):
        tasks = [tasks]
    continued = benchmark is None and output is not None and Path(output).is_file()
    if continued:  # the folds it holds are kept, not lost: the call runs the others
        benchmark = resume_results(output)
    if benchmark is None:
        names = list(tasks or DEFAULT_TASKS)
    else:
        available = [task.dataset_name for task in benchmark.tasks]
        names = available if tasks is None else list(tasks)
        missing = [name for name in names if name not in available]
        if missing:
            where = f"{output}, which this call continues," if continued else "the given benchmark"
            raise ValueError(f"task(s) {missing} are not in {where} (it has {available}); write them to another file")
    for name in names:
        check_task(name)
    for key in ("val_structures", "val_targets", "test_structures", "test_targets"):
        if key in finetune_kwargs:
            raise ValueError(f"{key!r} comes from each matbench fold; it cannot be a finetune option of run_matbench")
    if finetune_kwargs.get("val_fraction", 1) == 0:
        raise ValueError("val_fraction=0 leaves no validation data to choose the rate and the epochs on in each fold")
    if unpredictable not in ("raise", "median"):
        raise ValueError(f"unpredictable must be 'raise' or 'median'; got {unpredictable!r}")
    lr, backbone_lr = finetune_kwargs.pop("lr", None), finetune_kwargs.pop("backbone_lr", None)
    if lr_grid is not None and (lr is not None or backbone_lr is not None):
        raise ValueError("give either lr_grid (choose the rate on validation) or lr/backbone_lr, not both")
    template, kind = arm_start(model)
    if lr_grid is None:
        grid = [Candidate(1e-3 if lr is None else float(lr), backbone_lr)]
    else:
        rule = BenchmarkSettings(lr_grid=tuple(lr_grid), backbone_lr_scales=tuple(backbone_lr_scales),
                                 equal_grids=equal_grids)  # fmt: skip
        grid = rule.grid(pretrained=kind != "none")
    metadata = {
        "algorithm": "matgl-cdssl finetune",
        "protocol": MATBENCH_PROTOCOL,
        "model": str(model) if isinstance(model, (str, Path)) else type(model).__name__,
        "matgl_cdssl": _version("matgl-cdssl"),
        "matgl": _version("matgl"),
        "backend": BACKEND,
        **{f"finetune_{k}": v for k, v in _scalars(finetune_kwargs).items()},
        **(
            {"lr_grid": [str(c) for c in grid], "extend_edges": extend_edges}
            if len(grid) > 1
            else {"finetune_lr": grid[0].lr}
        ),
    }
    if benchmark is None:
        from matbench.bench import MatbenchBenchmark

        benchmark = MatbenchBenchmark(autoload=False, subset=names)
    if not benchmark.user_metadata:
        benchmark.add_metadata(metadata)
    elif differ := metadata_differences(benchmark.user_metadata, metadata):
        where = output if continued else "the given benchmark"
        raise ValueError(f"{where} holds folds recorded with other settings than this call's (they differ in "
                         f"{differ}): continue it with its own settings, or write to another file")  # fmt: skip
    if continued:
        logger.info("%s exists: continuing it", output)

    for task in benchmark.tasks:
        if task.dataset_name not in names:
            continue
        chosen = list(task.folds) if folds is None else [int(f) for f in folds]
        unknown = [f for f in chosen if f not in task.folds]
        if unknown:
            raise ValueError(f"{task.dataset_name}: no fold(s) {unknown}; its folds are {list(task.folds)}")
        load_data(task)
        _check_protocol(task)
        fold_run = _FoldRun(task, template, kind, seed, finetune_kwargs, _selection_file(output))
        for fold in chosen:
            if task.is_recorded[fold]:
                logger.info("%s fold %d is already recorded; skipping it", task.dataset_name, fold)
                continue
            params = _run_fold(fold_run, fold, grid, predict_batch_size, unpredictable, extend_edges)
            task.record(fold, params.pop("predictions"), params=params)
            logger.info("%s fold %d: test MAE %.4g (refit for %d epochs; the carve-out model's %.4g, best validation "
                        "MAE %.4g at epoch %d)", task.dataset_name, fold, task.results[task.folds_map[fold]].scores.mae,
                        params["refit"]["epochs"], params["carve_out"]["test_MAE"], params["best_val_MAE"],
                        params["best_epoch"])  # fmt: skip
            if output is not None:
                write_results(benchmark, output)
    if output is not None:
        write_results(benchmark, output)
    return benchmark


def _run_fold(
    fold_run: _FoldRun, fold: int, grid: Sequence[Candidate], batch_size: int, unpredictable: str, extend_edges: bool
) -> dict:
    """One fold: choose on the carve-out, refit, predict the test set with both; the fold's parameters.

    ``"predictions"`` holds the refit's, for ``task.record``.
    """
    task, seed = fold_run.task, fold_run.seed
    choice, scores = fold_run.choose(fold, grid, extend_edges)
    carve, carve_s, rates = fold_run(fold, choice)
    epochs = int(carve.metrics["best_epoch"]) + 1  # the checkpoint's epoch counts from 0
    refit, refit_s, _ = fold_run(fold, choice, replay=rates[:epochs])
    test_inputs, test_outputs = task.get_test_data(fold, include_target=True)
    train_outputs = np.asarray(task.get_train_and_val_data(fold)[1], dtype=float)
    median = float(np.median(train_outputs)) if unpredictable == "median" else None
    where = f"{task.dataset_name} fold {fold}"
    start = time.perf_counter()  # the seconds recorded: training plus predicting
    predictions, fallback = _predict(refit, test_inputs, where, batch_size, median)
    carved, _ = _predict(carve, test_inputs, f"{where} (carve-out model)", batch_size, median)
    return {
        "protocol": MATBENCH_PROTOCOL,
        "seed": seed + fold,
        "lr": choice.lr,
        "backbone_lr": choice.backbone_lr,
        "lr_selection": scores,
        "unpredictable": fallback,
        "data_mean": float(refit.data_mean),
        "data_std": float(refit.data_std),
        "seconds": round(time.perf_counter() - start + carve_s + refit_s, 1),
        **{k: float(v) for k, v in carve.metrics.items()},  # the carve-out run's best_val_MAE, best_epoch, epochs
        "carve_out": {"test_MAE": float(np.mean(np.abs(carved - np.asarray(test_outputs, dtype=float))))},
        "refit": {"epochs": epochs, "n_train": len(train_outputs)},
        "predictions": predictions,
    }
