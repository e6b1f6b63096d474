"""Command-line interface: ``cdssl pretrain``, ``finetune``, ``benchmark``, ``list``, ``register``, ``info``.

Only this module prints; the library logs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence


_SUBCOMMAND_MODULES = ("matgl_cdssl.matbench", "matgl_cdssl.represent", "matgl_cdssl.plots")
"""Modules that add their own subcommands with ``add_parser(subparsers)`` (keeping heavy imports inside functions)."""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive; got {text}")
    return value


def _devices(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def build_parser() -> argparse.ArgumentParser:
    """The ``cdssl`` argument parser (no network access, no heavy imports)."""
    parser = argparse.ArgumentParser(prog="cdssl", description="Crystal denoising self-supervised learning for matgl.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "pretrain",
        help="pretrain a MEGNet by crystal denoising on structure files",
        description="Options given on the command line override those of --config.",
    )
    p.add_argument(
        "files",
        nargs="*",
        type=Path,
        help="structure files or folders: CIF, POSCAR, extxyz, CSV (cif column), JSON/JSON Lines of Structure dicts",
    )
    p.add_argument("--config", type=Path, help="YAML run configuration (data, pretrain options, out)")
    p.add_argument("--sample", type=int, metavar="N", help="use the first N crystals of the bundled sample instead")
    p.add_argument("--out", type=Path, help="output folder: checkpoints/, metrics.csv, model/")
    p.add_argument(
        "--sigma",
        type=_positive_float,
        help="noise level in Å (default 0.3, chosen by the sweep in docs/results/sigma_sweep)",
    )
    p.add_argument("--cutoff", type=_positive_float, help="neighbour cutoff in Å (default: matgl's MEGNet, 4.0)")
    p.add_argument("--max-epochs", type=int)
    p.add_argument("--max-time", help="stop after this wall time, DD:HH:MM:SS (resume later with --resume)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=_positive_float)
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--model", help="continue from this CDSSL model folder or matgl model")
    p.add_argument("--gradient-clip-val", type=_positive_float, help="clip the gradient norm to this value")
    p.add_argument("--skip-invalid", action="store_true", default=None, help="leave out invalid crystals, warning")
    p.add_argument(
        "--resume",
        nargs="?",
        const="last",
        metavar="CKPT",
        help="resume from a Lightning checkpoint (default: OUT/checkpoints/last.ckpt)",
    )
    p.add_argument("--accelerator", help="Lightning accelerator (cpu, gpu, auto)")
    p.add_argument("--devices", type=_devices, help="Lightning devices (per node)")
    p.add_argument("--num-nodes", type=int, help="Lightning nodes (multi-node DDP, e.g. under SLURM)")
    p.add_argument("--strategy", help="Lightning strategy, e.g. ddp (see docs/distributed.md)")
    p.add_argument("--loggers", nargs="+", choices=("csv", "tensorboard"), help="metric loggers (default: csv)")
    p.add_argument("--graph-cache", type=Path, metavar="DIR", help="keep the converted graphs here and reuse them")
    p.add_argument("--no-progress-bar", action="store_true")
    p.set_defaults(func=pretrain_command)

    p = sub.add_parser(
        "finetune",
        help="finetune a (pretrained) MEGNet on one property from a CSV of CIFs",
        description="Writes OUT/model (a matgl model folder that predicts the property itself: the normalisation "
        "is folded into its last layer) and OUT/metrics.json.",
    )
    p.add_argument("data", type=Path, help="training CSV with a CIF column and the target column")
    p.add_argument("--target", required=True, help="column with the property")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--model", default="CDSSL-MEGNet-MP", help="registered name, model folder or 'scratch'")
    p.add_argument("--val", type=Path, help="validation CSV (default: --val-fraction of the training CSV)")
    p.add_argument("--test", type=Path, help="test CSV, evaluated with the best weights")
    p.add_argument("--cif-column", default="cif")
    p.add_argument("--state-columns", nargs="+", default=(), metavar="COLUMN", help="MEGNet state attributes")
    add_finetune_arguments(p)
    p.set_defaults(func=finetune_command)

    p = sub.add_parser(
        "benchmark",
        help="finetuned from pretrained weights vs the same MEGNet from scratch, side by side",
        description="Runs both arms with identical splits, hyperparameters and budgets, caching every finished run "
        "in OUT/runs.jsonl (rerun the same command to resume), and writes OUT/runs.csv, OUT/results.md and "
        "OUT/results.png. Without --data, runs the built-in suite (tasks: "
        "mp_formation_energy, mp_band_gap, mp_magnetization, perov_heat_ref, perov_ind_gap).",
    )
    p.add_argument("--model", default="CDSSL-MEGNet-MP", help="pretrained arm: registered name or model folder")
    p.add_argument("--out", type=Path, default=Path("cdssl-benchmark"), help="output folder (and cache)")
    p.add_argument("--quick", action="store_true", help="small suite: 2 tasks, 2 sizes, 1 seed (a few minutes)")
    p.add_argument("--tasks", nargs="+", help="built-in tasks (default: all, or none with --data)")
    p.add_argument("--data", type=Path, help="your own CSV (CIF column + --target column) as an extra task")
    p.add_argument("--target", help="column of --data with the property")
    p.add_argument("--test-data", type=Path, help="a separate test CSV for --data (default: drawn per seed)")
    p.add_argument("--n-test", type=int, help="test crystals per seed for --data (default: min(500, 20%%))")
    p.add_argument("--sizes", type=int, nargs="+", help="training sizes (default: 50 100 250 500 1000 2500)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--lr", type=_positive_float)
    p.add_argument("--backbone-lr", type=float)
    p.add_argument("--freeze-backbone", action="store_true", help="train only the pretrained arm's readout")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--sample-budget", type=int, help="training crystals seen per run (sets the epochs)")
    p.add_argument("--max-epochs", type=int)
    p.add_argument("--accelerator", help="Lightning accelerator (cpu, gpu, auto)")
    p.add_argument("--devices", type=_devices, help="Lightning devices")
    p.add_argument("--no-progress-bar", action="store_true")
    p.set_defaults(func=benchmark_command)

    for name in _SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # pragma: no cover - only in a partial source tree
            if exc.name != name:
                raise
            continue
        module.add_parser(sub)

    p = sub.add_parser("info", help="print the detected backend and versions")
    p.set_defaults(func=info_command)

    p = sub.add_parser("list", help="list the named pretrained models")
    p.add_argument("pattern", nargs="?", default="*", help="glob pattern (default: all)")
    p.set_defaults(func=list_command)

    p = sub.add_parser("register", help="make plain matgl.load_model() find the named pretrained models offline")
    p.set_defaults(func=register_command)
    return parser


_OPTIONS = (
    "sigma",
    "cutoff",
    "max_epochs",
    "max_time",
    "batch_size",
    "lr",
    "val_fraction",
    "seed",
    "model",
    "gradient_clip_val",
    "skip_invalid",
    "accelerator",
    "devices",
    "num_nodes",
    "strategy",
    "loggers",
    "graph_cache",
)


def _load_config(path: Path) -> tuple[dict, dict | None, Path | None]:
    """Read a run configuration: pretrain options, its data section (path resolved) and output folder."""
    import yaml

    config = yaml.safe_load(path.read_text()) or {}
    unknown = set(config) - {"data", "pretrain", "out"}
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {sorted(unknown)}; expected data, pretrain, out")
    options = dict(config.get("pretrain") or {})
    bad = set(options) - set(_OPTIONS)
    if bad:
        raise ValueError(f"{path}: unknown pretrain option(s) {sorted(bad)}; known: {', '.join(_OPTIONS)}")
    if options.get("graph_cache") is not None:  # paths in the file are relative to it
        options["graph_cache"] = (path.parent / options["graph_cache"]).resolve()
    data = None
    if "data" in config:
        data = {"path": (path.parent / config["data"]["path"]).resolve(), "split": config["data"].get("split")}
    out = (path.parent / config["out"]).resolve() if "out" in config else None
    return options, data, out


def _config_structures(data: dict, out: Path) -> list[Path]:
    """The crystals of a configuration's data section, as files that ``pretrain`` reads one crystal at a time.

    A Materials Project split (``split: pretrain``) is written once to ``OUT/inputs/`` as a CSV of its own
    (:func:`matgl_cdssl.mp.write_mp_split`), so that a graph cache keyed on that file is hit by later runs.
    """
    from matgl_cdssl.mp import write_mp_split

    if data["split"]:
        return [write_mp_split(data["path"], data["split"], Path(out) / "inputs")]
    return [data["path"]]


def pretrain_command(args: argparse.Namespace) -> int:
    """Run ``cdssl pretrain``.

    Side Effects:
        Writes ``OUT/checkpoints``, ``OUT/metrics.csv`` and the model folder ``OUT/model``.
    """
    import matgl_cdssl

    options, data, out = _load_config(args.config) if args.config else ({}, None, None)
    options.update({k: getattr(args, k) for k in _OPTIONS if getattr(args, k) is not None})
    out = args.out or out
    if out is None:
        print("cdssl pretrain: give --out (or out: in the --config file)", file=sys.stderr)
        return 2
    structures = None
    if data is not None and not (args.files or args.sample is not None):
        structures = _config_structures(data, out)
    if args.files or args.sample is not None:
        if bool(args.files) == (args.sample is not None):
            print("cdssl pretrain: give structure FILES or --sample N (not both)", file=sys.stderr)
            return 2
        structures = matgl_cdssl.load_sample(args.sample).structures if args.sample is not None else args.files
    if structures is None:
        print("cdssl pretrain: give structure FILES, --sample N, or a --config with a data section", file=sys.stderr)
        return 2
    resume = args.resume == "last"
    if resume and not (Path(out) / "checkpoints" / "last.ckpt").is_file():
        print(
            f"cdssl pretrain: no {Path(out) / 'checkpoints' / 'last.ckpt'} to resume from; starting afresh",
            file=sys.stderr,
        )
    matgl_cdssl.pretrain(
        structures,
        output_dir=out,
        ckpt_path=None if resume else args.resume,
        resume=resume,
        enable_progress_bar=not args.no_progress_bar,
        **options,
    )
    config = json.loads((Path(out) / "model" / "cdssl.json").read_text())
    print(
        f"saved the pretrained MEGNet to {Path(out) / 'model'} ({config['n_structures']} crystals, "
        f"{config['epochs']} epochs, best {config['best_epoch_metric']} = {config['best_score']:.5g})"
    )
    return 0


def add_finetune_arguments(p: argparse.ArgumentParser) -> None:
    """The options of :func:`matgl_cdssl.finetune` (and Lightning's device options) for a subcommand."""
    p.add_argument("--val-fraction", type=float, default=0.1, help="held out for validation (no --val given)")
    p.add_argument("--loss", choices=("l1_loss", "mse_loss", "huber_loss", "smooth_l1_loss"), default="l1_loss")
    p.add_argument("--max-epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=50, help="early-stopping patience in epochs (0: none)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=_positive_float, default=1e-3, help="learning rate (readout, and backbone)")
    p.add_argument("--backbone-lr", type=float, help="learning rate of the backbone")
    p.add_argument("--freeze-backbone", action="store_true", help="train only the readout")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-invalid", action="store_true", help="leave out invalid training crystals, warning")
    p.add_argument("--accelerator", help="Lightning accelerator (cpu, gpu, auto)")
    p.add_argument("--devices", type=_devices, help="Lightning devices")
    p.add_argument("--no-progress-bar", action="store_true")


def finetune_options(args: argparse.Namespace) -> dict:
    """Keyword arguments of :func:`matgl_cdssl.finetune` from :func:`add_finetune_arguments`' options."""
    return {
        "val_fraction": args.val_fraction,
        "loss": args.loss,
        "max_epochs": args.max_epochs,
        "patience": args.patience or None,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "backbone_lr": args.backbone_lr,
        "freeze_backbone": args.freeze_backbone,
        "seed": args.seed,
        "skip_invalid": args.skip_invalid,
        "enable_progress_bar": not args.no_progress_bar,
        **_trainer_options(args),
    }


def _trainer_options(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in ("accelerator", "devices") if getattr(args, k) is not None}


def finetune_command(args: argparse.Namespace) -> int:
    """Run ``cdssl finetune``.

    Side Effects:
        Writes ``OUT/model`` (matgl model folder predicting the property) and ``OUT/metrics.json``.
    """
    import matgl_cdssl
    from matgl_cdssl.backend import get_backend
    from matgl_cdssl.data import read_labelled_csv

    def read(path: Path | None) -> tuple:
        if path is None:
            return None, None, None
        _, structures, y, state = read_labelled_csv(
            path, args.target, cif_column=args.cif_column, state_columns=args.state_columns
        )
        return structures, y, state

    train, val, test = read(args.data), read(args.val), read(args.test)
    model = get_backend().megnet_class() if args.model == "scratch" else args.model
    result = matgl_cdssl.finetune(
        model,
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
        **finetune_options(args),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    result.property_model().save(args.out / "model")
    summary = {
        "target": args.target,
        "model": str(args.model),
        "data_mean": result.data_mean,
        "data_std": result.data_std,
        **result.metrics,
    }
    (args.out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    print(f"saved the finetuned MEGNet to {args.out / 'model'} (matgl.load_model(...).predict_structure(s))")
    return 0


def benchmark_command(args: argparse.Namespace) -> int:
    """Run ``cdssl benchmark``.

    Side Effects:
        Writes ``OUT/runs.jsonl``, ``OUT/runs.csv``, ``OUT/results.md`` and ``OUT/results.png``.
    """
    from dataclasses import fields, replace

    from matgl_cdssl.benchmark import SIZES, BenchmarkSettings, TaskData, benchmark
    from matgl_cdssl.data import read_labelled_csv

    tasks: list = list(args.tasks or [])
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
    known = {f.name for f in fields(BenchmarkSettings)}
    changes = {k: getattr(args, k) for k in known if getattr(args, k, None) not in (None, False)}
    result = benchmark(
        args.model,
        tasks=tasks,
        sizes=args.sizes or SIZES,
        seeds=args.seeds,
        output_dir=args.out,
        settings=replace(BenchmarkSettings(), **changes),
        quick=args.quick,
        progress=not args.no_progress_bar,
        **_trainer_options(args),
    )
    print(result.table)
    print("wrote " + ", ".join(str(p) for p in result.paths.values()))
    return 0


def info_command(args: argparse.Namespace) -> int:
    """Print the backend and package versions."""
    import matgl_cdssl
    from matgl_cdssl.backend import matgl_version

    print(f"matgl-cdssl {matgl_cdssl.__version__}; matgl {matgl_version()}; backend {matgl_cdssl.BACKEND}")
    return 0


def list_command(args: argparse.Namespace) -> int:
    """Print the named pretrained models with their descriptions."""
    import matgl_cdssl

    for name, description in matgl_cdssl.list_models(args.pattern).items():
        print(f"{name}: {description}")
    return 0


def register_command(args: argparse.Namespace) -> int:
    """Register the named pretrained models with matgl.

    Side Effects:
        Writes the weights into matgl's cache folder (see ``matgl_cdssl.register``).
    """
    import matgl_cdssl

    for name, where in matgl_cdssl.register().items():
        print(f"registered {name}: {where}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cdssl`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"cdssl {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
