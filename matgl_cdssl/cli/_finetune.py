"""``cdssl finetune``, ``cdssl benchmark`` and ``cdssl matbench``: training on labels."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from matgl_cdssl._backend import get_backend
from matgl_cdssl.apps import LOSSES, TrainOptions, finetune
from matgl_cdssl.bench import (
    DEFAULT_SUITE,
    DEFAULT_TASKS,
    PROTOCOLS,
    TASKS,
    BenchmarkSettings,
    TaskData,
    benchmark,
    run_matbench,
)
from matgl_cdssl.cli._options import (
    add_option,
    add_trainer_options,
    non_negative_int,
    positive_float,
    positive_int,
    trainer_options,
)
from matgl_cdssl.data import read_labelled_csv

__all__ = ["add_finetune_arguments", "add_parser", "benchmark_settings", "finetune_options"]

#: The options of :func:`~matgl_cdssl.finetune` that ``cdssl finetune`` and ``cdssl matbench`` take (defaults from
#: :class:`~matgl_cdssl.apps.TrainOptions`, or from finetune's signature for ``seed`` and ``skip_invalid``).
_FINETUNE_OPTIONS: dict[str, dict[str, Any]] = {
    "val_fraction": {"type": float, "help": "held out for validation (no --val given)"},
    "min_val": {"type": non_negative_int, "help": "with --val-fraction: at least this many validation crystals"},
    "max_val": {"type": positive_int, "help": "with --val-fraction: at most this many (unless --min-val asks more)"},
    "loss": {"choices": LOSSES},
    "max_epochs": {"type": positive_int},
    "patience": {"type": non_negative_int, "help": "early-stopping patience in epochs (0: none)"},
    "lr_patience": {
        "type": non_negative_int,
        "help": "halve the rates after this many epochs without improvement (0: matgl's cosine decay)",
    },
    "batch_size": {"type": positive_int},
    "lr": {"type": positive_float, "help": "learning rate (readout, and backbone)"},
    "backbone_lr": {"type": float, "help": "learning rate of the backbone"},
    "freeze_backbone": {"help": "train only the readout"},
    "seed": {"type": int},
    "skip_invalid": {"help": "leave out invalid training crystals, warning"},
}
#: Options of ``cdssl finetune`` alone.
_FINETUNE_ONLY: dict[str, dict[str, Any]] = {
    "ensemble": {
        "type": int,
        "metavar": "K",
        "help": "train K members (seeds seed..seed+K-1; member k from the k-th --model, cycling): predictions get "
        "an uncertainty",
    },
    "denoising_weight": {
        "type": float,
        "metavar": "W",
        "help": "add W times the CDSSL pretext loss to the training loss (needs a CDSSL --model)",
    },
}


def add_finetune_arguments(p: argparse.ArgumentParser) -> None:
    """The options of :func:`~matgl_cdssl.finetune` (and Lightning's device options) for a subcommand."""
    for name, kwargs in _FINETUNE_OPTIONS.items():
        add_option(p, _defaults_of(name), name, **kwargs)
    add_trainer_options(p)


def _defaults_of(name: str) -> Any:
    """Where option ``name`` takes its default: :class:`~matgl_cdssl.apps.TrainOptions`, else :func:`finetune`."""
    return TrainOptions if name in {f.name for f in fields(TrainOptions)} else finetune


def finetune_options(args: argparse.Namespace) -> dict:
    """Keyword arguments of :func:`~matgl_cdssl.finetune` from :func:`add_finetune_arguments`' options."""
    options = {name: getattr(args, name) for name in _FINETUNE_OPTIONS}
    options["patience"] = options["patience"] or None
    options["lr_patience"] = options["lr_patience"] or None
    return {**options, "enable_progress_bar": not args.no_progress_bar, **trainer_options(args)}


def _size(text: str) -> int | str:
    """An argparse type: a training size, or ``full``."""
    if text == "full":
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        message = f"a training size is a positive whole number or 'full'; got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def _task_sizes(text: str) -> tuple[str, tuple[int | str, ...]]:
    """An argparse type: ``TASK=N,N,...``, one task's own training sizes."""
    task, sep, sizes = text.partition("=")
    if not sep or not task or not sizes:
        message = f"expected TASK=SIZE,SIZE,... (for example matbench_phonons=50,500); got {text!r}"
        raise argparse.ArgumentTypeError(message)
    return task, tuple(_size(n) for n in sizes.split(","))


def _convergence_seeds(text: str) -> int | tuple[str, int]:
    """An argparse type: ``SEEDS`` (every task) or ``TASK=SEEDS`` (one task's own), for the two checks' options."""
    task, sep, seeds = text.rpartition("=")
    try:
        return (task, non_negative_int(seeds)) if sep and task else non_negative_int(text)
    except argparse.ArgumentTypeError:
        message = f"expected SEEDS or TASK=SEEDS (for example 1 matbench_jdft2d=3); got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def add_parser(sub: Any) -> None:
    """Add ``cdssl finetune``, ``cdssl benchmark`` and ``cdssl matbench``."""
    p = sub.add_parser(
        "finetune",
        help="finetune a (pretrained) MEGNet on one property from a CSV of CIFs",
        description="Writes OUT/model (a matgl model folder that predicts the property itself: the normalisation "
        "is folded into its last layer) and OUT/metrics.json.",
    )
    p.add_argument("data", type=Path, help="training CSV with a CIF column and the target column")
    p.add_argument("--target", required=True, help="column with the property")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--model",
        nargs="+",
        default=["CDSSL-MEGNet-MP"],
        help="registered name, model folder or 'scratch'; several: the --ensemble's starts, in turn",
    )
    p.add_argument("--val", type=Path, help="validation CSV (default: --val-fraction of the training CSV)")
    p.add_argument("--test", type=Path, help="test CSV, evaluated with the best weights")
    p.add_argument("--cif-column", default="cif")
    p.add_argument("--state-columns", nargs="+", default=(), metavar="COLUMN", help="MEGNet state attributes")
    add_finetune_arguments(p)
    for name, kwargs in _FINETUNE_ONLY.items():
        add_option(p, _defaults_of(name), name, **kwargs)
    p.set_defaults(func=finetune_command)

    p = sub.add_parser(
        "benchmark",
        help="finetuned from pretrained weights vs the same MEGNet from scratch, side by side",
        description="Runs both arms with identical splits, hyperparameters and budgets, caching every finished run "
        "in OUT/runs.jsonl (rerun the same command to resume), and writes OUT/runs.csv, OUT/all_runs.csv (every run "
        "the report rests on, with its step), OUT/results.md and OUT/results.png. "
        f"Without --data, runs the built-in suite (tasks: {', '.join(DEFAULT_SUITE)}; also "
        f"loadable by name with --tasks: {', '.join(t for t in TASKS if t not in DEFAULT_SUITE)}).",
    )
    add_option(p, benchmark, "model", help="pretrained arm: registered name or model folder")
    add_option(p, benchmark, "output_dir", flag="--out", type=Path, help="output folder (and cache)")
    p.add_argument("--quick", action="store_true", help="small suite: 2 tasks, 2 sizes, 1 seed (a few minutes)")
    p.add_argument("--tasks", nargs="+", help="built-in tasks (default: all, or none with --data)")
    p.add_argument("--data", type=Path, help="your own CSV (CIF column + --target column) as an extra task")
    p.add_argument("--target", help="column of --data with the property")
    p.add_argument("--test-data", type=Path, help="a separate test CSV for --data (default: drawn per seed)")
    p.add_argument("--n-test", type=int, help="test crystals per seed for --data (default: min(500, 20%%))")
    add_option(p, benchmark, "sizes", type=_size, nargs="+", help="training sizes, or full (default: each task's own)")
    p.add_argument("--task-sizes", type=_task_sizes, nargs="+", default=(), metavar="TASK=SIZES",
                   help="one task's own sizes instead of --sizes, e.g. matbench_phonons=50,100,250,500")  # fmt: skip
    add_option(p, benchmark, "seeds", type=int, nargs="+",
               help="seeds, one split and initialisation each, at every size (default: the protocol's, see "
               "--seeds-small)")  # fmt: skip
    add_option(p, benchmark, "arms", nargs="+", help="CDSSL, scratch, supervised (matgl's Eform MEGNet), or a folder")
    add_option(p, benchmark, "skip_invalid", help="leave out crystals that the checks reject, and list them")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default=BenchmarkSettings().protocol,
                   help="the protocol whose settings the other options change (0.4: scratch chooses from --lr-grid "
                   "alone, no step beyond a grid's edge, 3 seeds, 0.4's report layout)")  # fmt: skip
    settings = BenchmarkSettings()
    for name, kind, nargs, what in (
        ("lr_grid", positive_float, "+", "learning rates each arm chooses from, on validation data"),
        ("backbone_lr_scales", positive_float, "+", "backbone rate / lr, to choose from (pretrained arms)"),
        ("tune_sizes", positive_int, "+", "training sizes at which the rates are chosen (first seed)"),
        ("seeds_small", non_negative_int, "+", "without --seeds: the seeds of sizes up to --small-size"),
        ("small_size", positive_int, None, "without --seeds: sizes up to this many labels run --seeds-small"),
        (
            "more_seeds",
            positive_int,
            None,
            "without --seeds: a size whose paired interval is wider than ±10 points "
            "runs this many times its seeds (1: never)",
        ),
        ("max_epochs", positive_int, None, "epoch cap of a run"),
        ("patience", positive_int, None, "early stopping: epochs without a better validation MAE"),
        ("lr_patience", non_negative_int, None, "halve the rates after N epochs without improvement; 0: cosine"),
        ("batch_size", positive_int, None, ""),
        ("min_val", positive_int, None, "validation crystals of a run: n_train // 4, at least this many"),
        ("max_val", positive_int, None, "and at most this many"),
    ):
        default = getattr(settings, name)
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, nargs=nargs, help=f"{what} (default: {shown})".strip())
    p.add_argument("--freeze-backbone", action="store_true", help="train only the pretrained arm's readout")
    p.add_argument("--check-convergence", nargs="*", type=_convergence_seeds, metavar="[TASK=]SEEDS",
                   help="rerun the two largest sizes at twice the budget, with the first SEEDS seeds (1); "
                   "TASK=SEEDS gives a task its own number (0: not checked)")  # fmt: skip
    p.add_argument("--check-extension", nargs="*", type=_convergence_seeds, metavar="[TASK=]SEEDS",
                   help="the same with only the patience and the epoch cap doubled, the schedule unchanged (the "
                   "longer run goes on where the shorter one stopped); a second table in convergence.md")  # fmt: skip
    p.add_argument("--no-curves", action="store_true",
                   help="do not keep each run's per-epoch MAE and rate in OUT/curves/ (cdssl plot curves)")  # fmt: skip
    add_trainer_options(p)
    p.set_defaults(func=benchmark_command)

    p = sub.add_parser(
        "matbench",
        help="finetune a pretrained MEGNet on matbench tasks with matbench's folds and record()",
        description="Writes the results in matbench's submission format (gzip-compressed for a .gz name). "
        "matbench is installed with `pip install --no-deps matbench==0.6` next to matminer (docs/matbench.md).",
    )
    p.add_argument("--task", nargs="+", default=list(DEFAULT_TASKS), metavar="NAME", help="matbench v0.1 task(s)")
    out_help = "results file; one that exists is continued (its folds kept, the others run)"
    add_option(p, run_matbench, "output", flag="--out", type=Path, help=out_help)
    add_option(p, run_matbench, "model", help="registered name, model folder, scratch or supervised")
    p.add_argument(
        "--lr-grid",
        type=positive_float,
        nargs="+",
        metavar="LR",
        help="choose the learning rate in each fold on validation data carved from its training data, then refit "
        "on the whole training fold (instead of --lr)",
    )
    add_option(
        p,
        run_matbench,
        "backbone_lr_scales",
        type=float,
        nargs="+",
        metavar="S",
        help="with --lr-grid: backbone rate as a fraction of lr, to choose from (pretrained arms)",
    )
    p.add_argument("--unequal-grids", action="store_true",
                   help="with --lr-grid: scratch chooses from --lr-grid itself, not from as many rates as a "
                   "pretrained arm has candidates")  # fmt: skip
    p.add_argument("--no-extend-edges", action="store_true",
                   help="with --lr-grid: no step beyond the edge of the grid where a fold's choice sits")  # fmt: skip
    p.add_argument("--folds", type=int, nargs="+", metavar="K", help="only these folds (default: all five)")
    add_option(p, run_matbench, "predict_batch_size", type=int, help="crystals per batch when predicting")
    add_option(
        p,
        run_matbench,
        "unpredictable",
        choices=("raise", "median"),
        help="a test crystal with no edge within the cutoff: raise, or predict the training median",
    )
    add_finetune_arguments(p)  # --seed: fold k uses seed + k
    p.set_defaults(func=matbench_command)


def finetune_command(args: argparse.Namespace) -> int:
    """Run ``cdssl finetune``.

    Side Effects:
        Writes ``OUT/model`` (matgl model folder predicting the property) and ``OUT/metrics.json``.
    """

    def read(path: Path | None) -> tuple:
        if path is None:
            return None, None, None
        _, structures, y, state = read_labelled_csv(
            path, args.target, cif_column=args.cif_column, state_columns=args.state_columns
        )
        return structures, y, state

    train, val, test = read(args.data), read(args.val), read(args.test)
    starts = [get_backend().megnet_class() if m == "scratch" else m for m in args.model]
    result = finetune(
        starts[0] if len(starts) == 1 else starts,
        train[0],
        train[1],
        state_attr=train[2],
        val_structures=val[0],
        val_targets=val[1],
        val_state_attr=val[2],
        test_structures=test[0],
        test_targets=test[1],
        test_state_attr=test[2],
        output_dir=args.out,
        **{name: getattr(args, name) for name in _FINETUNE_ONLY},
        **finetune_options(args),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    result.property_model().save(args.out / "model")  # one model, or an ensemble folder
    first = result.results[0] if args.ensemble > 1 else result
    summary = {
        "target": args.target,
        "model": args.model[0] if len(args.model) == 1 else list(args.model),
        "data_mean": first.data_mean,
        "data_std": first.data_std,
        **result.metrics,
    }
    (args.out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    print(f"saved the finetuned MEGNet to {args.out / 'model'} (cdssl predict {args.out / 'model'} CRYSTALS --out F)")
    return 0


def benchmark_settings(args: argparse.Namespace) -> BenchmarkSettings:
    """The ``--protocol``'s :class:`~matgl_cdssl.bench.BenchmarkSettings` with the options given on the command line."""
    given = {f.name: getattr(args, f.name, None) for f in fields(BenchmarkSettings)}
    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items() if v is not None}
    if args.lr_patience == 0:  # 0 asks for matgl's cosine schedule
        changes["lr_patience"] = None
    return replace(PROTOCOLS[getattr(args, "protocol", None) or BenchmarkSettings().protocol], **changes)


def benchmark_command(args: argparse.Namespace) -> int:
    """Run ``cdssl benchmark``.

    Side Effects:
        Writes ``OUT/runs.jsonl``, ``OUT/runs.csv``, ``OUT/all_runs.csv``, ``OUT/results.md``, ``OUT/results.png``
        and, unless ``--no-curves``, ``OUT/curves/<run>/metrics.csv``.
    """
    tasks: list | None = list(args.tasks or [])
    if args.data is not None:
        if not args.target:
            print("cdssl benchmark: --data needs --target COLUMN", file=sys.stderr)
            return 2
        _, structures, y, _ = read_labelled_csv(args.data, args.target)
        test_s = test_y = None
        if args.test_data is not None:
            _, test_s, test_y, _ = read_labelled_csv(args.test_data, args.target)
        pool = len(test_y) if test_y is not None else len(structures) // 5
        n_test = min(args.n_test or min(500, pool), len(test_y) if test_y is not None else len(structures))
        tasks.append(TaskData(args.target, structures, y, test_s, test_y, n_test=n_test))
    elif args.tasks is None:
        tasks = None
    result = benchmark(
        args.model,
        tasks=tasks,
        sizes=_sizes(args, tasks),
        seeds=args.seeds,
        arms=args.arms,
        skip_invalid=args.skip_invalid,
        check_convergence=_convergence(args.check_convergence, tasks),
        check_extension=_convergence(args.check_extension, tasks),
        curves=not args.no_curves,
        output_dir=args.output_dir,
        settings=benchmark_settings(args),
        quick=args.quick,
        progress=not args.no_progress_bar,
        **trainer_options(args),
    )
    print(result.table)
    print("wrote " + ", ".join(str(p) for p in result.paths.values()))
    return 0


def _sizes(args: argparse.Namespace, tasks: list | None) -> list | dict | None:
    """``--sizes`` for every task, or with ``--task-sizes`` a mapping from task names to their sizes."""
    if not args.task_sizes:
        return args.sizes
    base = {} if args.sizes is None else dict.fromkeys(_task_names(tasks), args.sizes)
    return {**base, **dict(args.task_sizes)}


def _convergence(given: list | None, tasks: list | None) -> int | dict[str, int]:
    """``--check-convergence`` or ``--check-extension``: seeds for every task, or a mapping over the tasks.

    A bare number (the last one given; 1 without one) is every task's, ``TASK=SEEDS`` one task's own.
    """
    if given is None:
        return 0
    every = [n for n in given if isinstance(n, int)]
    default = every[-1] if every else 1
    own = dict(n for n in given if not isinstance(n, int))
    if not own:
        return default
    return {**dict.fromkeys(_task_names(tasks), default), **own}


def _task_names(tasks: list | None) -> list[str]:
    """The names of the tasks a ``cdssl benchmark`` call runs (the default suite for None)."""
    return [t if isinstance(t, str) else t.name for t in (DEFAULT_SUITE if tasks is None else tasks)]


def matbench_command(args: argparse.Namespace) -> int:
    """Run ``cdssl matbench``.

    Side Effects:
        Writes the results file ``args.out`` after every fold.
    """
    options = finetune_options(args)
    if args.lr_grid:
        options.pop("lr"), options.pop("backbone_lr")
    mb = run_matbench(
        args.task,
        model=args.model,
        output=args.output,
        folds=args.folds,
        predict_batch_size=args.predict_batch_size,
        lr_grid=args.lr_grid,
        backbone_lr_scales=args.backbone_lr_scales,
        equal_grids=not args.unequal_grids,
        extend_edges=not args.no_extend_edges,
        unpredictable=args.unpredictable,
        **options,
    )
    for task in mb.tasks:
        recorded = [fold for fold, done in task.is_recorded.items() if done]
        maes = [task.results[task.folds_map[fold]].scores.mae for fold in recorded]
        print(f"{task.dataset_name}: folds {recorded}, test MAE per fold {[round(m, 5) for m in maes]}")
    print(f"wrote {args.output}")
    return 0
