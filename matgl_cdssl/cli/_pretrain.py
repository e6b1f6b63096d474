"""``cdssl pretrain``: pretraining from files, the bundled sample or a YAML run configuration."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matgl_cdssl.apps import LOGGERS, pretrain
from matgl_cdssl.cli._options import add_option, add_trainer_options, duration, positive_float, sigma
from matgl_cdssl.data import load_sample, write_mp_split

if TYPE_CHECKING:
    import argparse

__all__ = ["add_parser"]

#: The options of :func:`~matgl_cdssl.pretrain` that the command and a configuration's ``pretrain:`` section take:
#: name -> keyword arguments of ``add_argument``. Defaults come from ``pretrain``'s signature.
_PRETRAIN_OPTIONS: dict[str, dict[str, Any]] = {
    "sigma": {"type": sigma, "help": "noise level in Å (chosen by the sweep in docs/results/sigma_sweep)"},
    "cutoff": {"type": positive_float, "help": "neighbour cutoff in Å (default: matgl's MEGNet, 4.0)"},
    "max_epochs": {"type": int},
    "batch_size": {"type": int},
    "lr": {"type": positive_float},
    "val_fraction": {"type": float},
    "seed": {"type": int},
    "model": {"help": "continue from this CDSSL model folder, registered name or matgl model"},
    "gradient_clip_val": {"type": positive_float, "help": "clip the gradient norm to this value"},
    "skip_invalid": {"help": "leave out invalid crystals, warning"},
    "loggers": {"nargs": "+", "choices": LOGGERS, "help": "metric loggers"},
    "graph_cache": {"type": Path, "metavar": "DIR", "help": "keep the converted graphs here and reuse them"},
    "val_grad_norm": {"help": "also log the gradient norm on validation batches (doubles validation cost)"},
    "keep_every": {"type": int, "metavar": "N", "help": "also keep the checkpoint of every N-th epoch"},
    "target_weight": {"type": positive_float, "help": "weight of the property's loss beside the pretext (--target)"},
}
#: Lightning options a configuration may set too.
_TRAINER_OPTIONS = ("max_time", "accelerator", "devices", "num_nodes", "strategy")


def add_parser(sub: Any) -> None:
    """Add ``cdssl pretrain``."""
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
        "--target",
        metavar="COLUMN",
        help="also learn this property (a column of the CSV input; empty cells: no label) next to the pretext",
    )
    for name, kwargs in _PRETRAIN_OPTIONS.items():
        add_option(p, pretrain, name, unset=True, **kwargs)
    p.add_argument(
        "--max-time", type=duration, help="stop this piece after this wall time, DD:HH:MM:SS (continue with --resume)"
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="last",
        metavar="CKPT",
        help="resume from a Lightning checkpoint (default: OUT/checkpoints/last.ckpt)",
    )
    add_trainer_options(p, "num_nodes", "strategy")
    p.set_defaults(func=pretrain_command)


def load_config(path: Path) -> tuple[dict, dict | None, Path | None]:
    """Read a run configuration: pretrain options, its data section (path resolved) and output folder."""
    import yaml

    config = yaml.safe_load(path.read_text()) or {}
    unknown = set(config) - {"data", "pretrain", "out"}
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {sorted(unknown)}; expected data, pretrain, out")
    options = dict(config.get("pretrain") or {})
    known = (*_PRETRAIN_OPTIONS, *_TRAINER_OPTIONS)
    bad = set(options) - set(known)
    if bad:
        raise ValueError(f"{path}: unknown pretrain option(s) {sorted(bad)}; known: {', '.join(known)}")
    if options.get("graph_cache") is not None:  # paths in the file are relative to it
        options["graph_cache"] = (path.parent / options["graph_cache"]).resolve()
    if isinstance(options.get("model"), str) and (path.parent / options["model"]).is_dir():  # a folder, not a name
        options["model"] = (path.parent / options["model"]).resolve()
    data = None
    if "data" in config:
        unknown = set(config["data"]) - {"path", "split", "target"}
        if unknown:
            raise ValueError(f"{path}: unknown data key(s) {sorted(unknown)}; expected path, split, target")
        data = {
            "path": (path.parent / config["data"]["path"]).resolve(),
            "split": config["data"].get("split"),
            "target": config["data"].get("target"),
        }
    out = (path.parent / config["out"]).resolve() if "out" in config else None
    return options, data, out


def _config_structures(data: dict, out: Path) -> list[Path]:
    """The crystals of a configuration's data section, as files that ``pretrain`` reads one crystal at a time.

    A Materials Project split (``split: pretrain``) is written once to ``OUT/inputs/`` as a CSV of its own
    (:func:`~matgl_cdssl.data.write_mp_split`), so that a graph cache keyed on that file is hit by later runs.
    """
    if data["split"]:
        return [write_mp_split(data["path"], data["split"], Path(out) / "inputs")]
    return [data["path"]]


def read_csv_column(paths: list[Path], column: str) -> list[float]:
    """One property per row of the CSV files, in order (NaN for an empty cell).

    Raises:
        ValueError: a file without the column, or a cell that is not a number, naming the file, row and column.
    """
    import pandas as pd

    values: list[float] = []
    for path in paths:
        frame = pd.read_csv(path, usecols=lambda c: c == column, dtype=str, keep_default_na=False)
        if column not in frame.columns:
            raise ValueError(f"{path}: no column {column!r}")
        for row, cell in enumerate(frame[column], start=2):
            try:
                values.append(float(cell) if cell.strip() else float("nan"))
            except ValueError:
                raise ValueError(f"{path}, line {row}, column {column!r}: {cell!r} is not a number") from None
    return values


def pretrain_command(args: argparse.Namespace) -> int:
    """Run ``cdssl pretrain``.

    Side Effects:
        Writes ``OUT/checkpoints``, ``OUT/metrics.csv`` and the model folder ``OUT/model``.
    """
    options, data, out = load_config(args.config) if args.config else ({}, None, None)
    given = (*_PRETRAIN_OPTIONS, *_TRAINER_OPTIONS)
    options.update({k: getattr(args, k) for k in given if getattr(args, k) is not None})
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
        structures = load_sample(args.sample).structures if args.sample is not None else args.files
    if structures is None:
        print("cdssl pretrain: give structure FILES, --sample N, or a --config with a data section", file=sys.stderr)
        return 2
    target = args.target or (data or {}).get("target")
    if target is not None:
        if not all(isinstance(s, Path) and ".csv" in s.name for s in structures):
            print("cdssl pretrain: --target needs CSV input (the column is read from the same rows)", file=sys.stderr)
            return 2
        options["targets"] = {target: read_csv_column(structures, target)}
    resume = args.resume == "last"
    if resume and not (Path(out) / "checkpoints" / "last.ckpt").is_file():
        print(
            f"cdssl pretrain: no {Path(out) / 'checkpoints' / 'last.ckpt'} to resume from; starting afresh",
            file=sys.stderr,
        )
    pretrain(
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
