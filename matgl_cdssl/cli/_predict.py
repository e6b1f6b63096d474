"""``cdssl predict``: predictions (and ensemble uncertainties) for many crystals, written next to the input's rows."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matgl_cdssl.apps import predict, predict_all
from matgl_cdssl.cli._options import add_option
from matgl_cdssl.data import csv_id_column, iter_structures

if TYPE_CHECKING:
    import argparse

__all__ = ["add_parser"]

_CSV = (".csv", ".csv.gz")
_WRITTEN = ("uncertainty", "reason")  # the columns written after the prediction (an ensemble's, --skip-invalid's)


def add_parser(sub: Any) -> None:
    """Add ``cdssl predict``."""
    p = sub.add_parser(
        "predict",
        help="predict a property for many crystals with a finetuned model or ensemble",
        description="Writes one row per input crystal, in input order: for a CSV input its own columns, otherwise an "
        "'id' column (the file, or file[entry]); then the prediction and, for an ensemble (cdssl finetune "
        "--ensemble K), the 'uncertainty' (the members' standard deviation, scaled on validation data). With "
        "--skip-invalid, a crystal that cannot be read or converted gets an empty prediction and a 'reason'; no row "
        "is ever dropped.",
    )
    p.add_argument("model", help="a folder written by cdssl finetune (OUT/model: one model or an ensemble)")
    p.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        help="crystals: a CSV with a CIF column, folders, CIF/POSCAR files, JSON/JSON Lines, extxyz",
    )
    p.add_argument("--out", type=Path, required=True, help="the predictions CSV")
    p.add_argument(
        "--column",
        default="prediction",
        help="name of the prediction column, not one the input has, 'uncertainty' or 'reason' (default: prediction)",
    )
    p.add_argument("--cif-column", default="cif", help="CIF column of a CSV input (default: cif)")
    p.add_argument("--id-column", help="id column of a CSV input (default: material_id or id, else the row number)")
    add_option(p, predict, "batch_size", type=int, help="crystals per batch")
    add_option(p, predict, "skip_invalid", help="give unreadable or invalid crystals an empty prediction and a reason")
    p.add_argument("--no-progress-bar", action="store_true")
    p.set_defaults(func=predict_command)


def _read(inputs: list[Path], args: argparse.Namespace) -> tuple[list[dict], list[Any], list[str | None]]:
    """``(rows, structures, read_errors)``: one output row per crystal, its Structure (None if unreadable) and why.

    A CSV contributes its rows with all their columns; any other input one row per crystal with its name as ``id``.
    An unreadable crystal (a bad CIF cell, a file pymatgen cannot read) raises without ``--skip-invalid``; with it,
    it gets a row whose read error becomes its reason.
    """
    import pandas as pd
    from pymatgen.core import Structure

    rows: list[dict] = []
    structures: list[Any] = []
    errors: list[str | None] = []

    def failed(row: dict, message: str) -> None:
        if not args.skip_invalid:
            raise ValueError(message)
        rows.append(row)
        structures.append(None)
        errors.append(message)

    for path in inputs:
        if path.name.lower().endswith(_CSV):
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
            if args.cif_column not in frame.columns:
                raise ValueError(f"{path}: no {args.cif_column!r} column (columns: {list(frame.columns)})")
            _check_column(args.column, frame.columns, path)
            id_column = csv_id_column(list(frame.columns), args.id_column)
            for number, row in enumerate(frame.to_dict("records")):
                name = f"{path}[{row[id_column] if id_column else number}]"
                try:
                    structure = Structure.from_str(row[args.cif_column], fmt="cif")
                except Exception as exc:  # pymatgen raises many types for a malformed CIF
                    failed(row, f"{name}: could not read the CIF ({type(exc).__name__}: {exc})")
                    continue
                rows.append(row)
                structures.append(structure)
                errors.append(None)
            continue
        _check_column(args.column, ["id"], path)
        try:
            found = list(iter_structures([path]))
        except (ValueError, FileNotFoundError) as exc:
            failed({"id": str(path)}, str(exc))
            continue
        for name, structure in found:
            rows.append({"id": name})
            structures.append(structure)
            errors.append(None)
    if not rows:
        raise ValueError("no crystals in the inputs")
    return rows, structures, errors


def _check_column(column: str, columns: Any, path: Path) -> None:
    """Refuse a prediction column that an input already has (``columns``): checked before any crystal is converted."""
    if column in columns:
        raise ValueError(f"{path}: the output already has a {column!r} column; choose another name with --column")


def predict_command(args: argparse.Namespace) -> int:
    """Run ``cdssl predict``.

    Side Effects:
        Writes the predictions CSV ``--out``.
    """
    import numpy as np
    import pandas as pd

    if args.column in _WRITTEN:  # before any input is read or any model loaded, as the input's own columns
        raise ValueError(f"--column {args.column!r}: cdssl predict writes that column itself; choose another name")
    rows, structures, errors = _read(args.inputs, args)
    readable = [i for i, s in enumerate(structures) if s is not None]
    names = [str(rows[i].get("id", i)) for i in readable]
    mean = np.full(len(rows), np.nan)
    std = np.full(len(rows), np.nan)
    reasons = list(errors)
    if readable:
        found = predict_all(
            args.model,
            [structures[i] for i in readable],
            batch_size=args.batch_size,
            skip_invalid=args.skip_invalid,
            names=[f"{n} (row {i})" for n, i in zip(names, readable, strict=True)],
            progress=not args.no_progress_bar,
        )
        mean[readable], std[readable] = found.mean, found.std
        for i, name in zip(readable, found.names, strict=True):
            if name in found.reasons:
                reasons[i] = f"{name} {found.reasons[name]}"
    frame = pd.DataFrame(rows)
    frame[args.column] = mean
    ensemble = bool(np.isfinite(std).any())
    if ensemble:
        frame["uncertainty"] = std
    if args.skip_invalid:
        frame["reason"] = [reason or "" for reason in reasons]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    n_missing = int(np.isnan(mean).sum())
    missing = f"; {n_missing} without a prediction (see the reason column)" if n_missing else ""
    print(f"predicted {len(rows) - n_missing} of {len(rows)} crystals with {args.model}{missing}", file=sys.stderr)
    print(f"wrote {args.out}")
    return 0
