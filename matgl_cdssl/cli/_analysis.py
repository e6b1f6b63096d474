"""``cdssl embed``, ``cdssl probe`` and ``cdssl plot``: looking at what a model learned."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from matgl_cdssl.analysis import (
    PROPERTY_LABELS,
    as_model,
    embed,
    embedding_columns,
    format_probe_table,
    plot_map,
    plot_pretraining,
    probe_models,
    structure_properties,
)
from matgl_cdssl.bench import plot_curves
from matgl_cdssl.data import load_sample, read_csv_structures, read_structures
from matgl_cdssl.hub import new_like

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

__all__ = ["add_parser"]

_SAMPLE_PROBE_LABELS = ("formation_energy_per_atom_eV", "band_gap_eV")
_OUT_FORMATS = (".npy", ".npz", ".csv", ".parquet")


def add_parser(subparsers: Any) -> None:
    """Add ``cdssl embed``, ``cdssl probe`` and ``cdssl plot``."""
    _add_embed_and_probe(subparsers)
    _add_plot(subparsers)


def _add_source_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="*", type=Path, help="structure files (CIF, POSCAR, extxyz, or a CSV with CIFs)")
    p.add_argument("--sample", type=int, metavar="N", help="the first N crystals of the bundled sample instead")
    p.add_argument("--csv", type=Path, metavar="F", help="a CSV with a CIF column (and label columns) instead")
    p.add_argument("--cif-column", default="cif", help="CIF column of the CSV (default: cif)")
    p.add_argument("--id-column", help="id column of the CSV (default: material_id or id, else the row number)")
    p.add_argument("--model", default="CDSSL-MEGNet-MP", help="registered name or model folder")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--skip-invalid", action="store_true", help="give invalid crystals rows of NaN, warning")


def _read_source(args: argparse.Namespace, labels: Sequence[str] = ()) -> tuple[list[str], list[str], list, dict]:
    """``(ids, names, structures, labels)`` from the command's data source; labels are NaN where missing.

    ``ids`` label the output rows (material ids, CSV row ids or file paths); ``names`` name crystals in messages.
    """
    import pandas as pd

    files = list(args.files or [])
    csv = args.csv
    if csv is None and len(files) == 1 and files[0].name.lower().endswith((".csv", ".csv.gz")):
        csv, files = files[0], []
    given = [bool(files), args.sample is not None, csv is not None]
    if sum(given) != 1:
        raise ValueError("give structure FILES, --sample N or --csv F (exactly one)")
    if args.sample is not None:
        sample = load_sample(args.sample)
        unknown = [k for k in labels if k not in sample.labels]
        if unknown:
            raise ValueError(f"the bundled sample has no label(s) {unknown}; its labels: {', '.join(sample.labels)}")
        return sample.material_ids, sample.material_ids, sample.structures, {k: sample.labels[k] for k in labels}
    if csv is not None:
        names, structures = read_csv_structures(csv, cif_column=args.cif_column, id_column=args.id_column)
        ids = [name[len(str(csv)) + 1 : -1] for name in names]
        values = {}
        if labels:
            frame = pd.read_csv(csv, usecols=lambda c: c in labels)
            unknown = [k for k in labels if k not in frame.columns]
            if unknown:
                raise ValueError(f"{csv}: no column(s) {unknown}")
            values = {k: pd.to_numeric(frame[k], errors="coerce").to_numpy(dtype=float) for k in labels}
        return ids, names, structures, values
    if labels:
        raise ValueError(f"label(s) {list(labels)} need --sample N or a CSV with those columns")
    names, structures = read_structures(files)
    return names, names, structures, {}


def _add_embed_and_probe(subparsers: Any) -> None:
    """Add ``cdssl embed`` and ``cdssl probe``."""
    p = subparsers.add_parser(
        "embed",
        help="graph-level embeddings of crystals (mean-pooled MEGNet block outputs)",
        description="Each row: mean over atoms of the final node features, mean over edges of the final edge "
        "features, and the final state features of MEGNet's message-passing blocks (no Set2Set readout). The output "
        "format follows OUT's suffix: .npy (array; ids in OUT with suffix .ids.txt), .npz (arrays 'embeddings' and "
        "'ids'), .csv or .parquet (an 'id' column and one column per feature; parquet needs pyarrow).",
    )
    _add_source_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="emb.npy, emb.npz, emb.csv or emb.parquet")
    p.set_defaults(func=embed_command)

    p = subparsers.add_parser(
        "probe",
        help="linear probe: how well ridge regression reads properties off the embeddings",
        description="Cross-validated ridge regression (StandardScaler + RidgeCV, KFold) from the embeddings to "
        "density and volume per atom (computed from the crystals) and to labels: with --sample, the sample's "
        "formation energy and band gap by default; with a CSV, the --labels columns. Crystals without a label are "
        "left out for that property only, and counted. Needs scikit-learn.",
    )
    _add_source_arguments(p)
    p.add_argument("--labels", nargs="+", metavar="COLUMN", help="label columns (CSV) or sample labels to probe")
    p.add_argument(
        "--baseline",
        choices=("random", "none"),
        default="random",
        help="also probe the same architecture at random initialisation (default: random)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation and of the folds")
    p.add_argument("--cv", type=int, default=5, help="cross-validation folds (default: 5)")
    p.add_argument("--out", type=Path, help="write the results as CSV")
    p.set_defaults(func=probe_command)


def _write_embeddings(path: Path, X: np.ndarray, ids: Sequence[str], columns: Sequence[str]) -> list[Path]:
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        np.save(path, X)
        ids_path = path.with_suffix(".ids.txt")
        ids_path.write_text("".join(f"{i}\n" for i in ids))
        return [path, ids_path]
    if suffix == ".npz":
        np.savez(path, embeddings=X, ids=np.asarray(ids, dtype=str))
        return [path]
    import pandas as pd

    frame = pd.concat([pd.DataFrame({"id": list(ids)}), pd.DataFrame(X, columns=list(columns))], axis=1)
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return [path]


def _check_out(path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix not in _OUT_FORMATS:
        raise ValueError(f"--out {path}: unknown format {suffix!r}; use one of {', '.join(_OUT_FORMATS)}")
    if suffix == ".parquet":
        for engine in ("pyarrow", "fastparquet"):
            try:
                __import__(engine)
                return
            except ImportError:
                pass
        raise ValueError(
            f"--out {path}: writing parquet needs pyarrow (`pip install pyarrow`); or write .npz or .csv, which "
            "also hold the ids"
        )


def embed_command(args: argparse.Namespace) -> int:
    """Run ``cdssl embed``.

    Side Effects:
        Writes the embeddings (and ids) to ``--out``; with ``.npy``, the ids go to a ``.ids.txt`` file beside it.
    """
    _check_out(args.out)
    ids, names, structures, _ = _read_source(args)
    model = as_model(args.model)
    X = embed(model, structures, batch_size=args.batch_size, skip_invalid=args.skip_invalid, names=names)
    columns = embedding_columns(model)
    if len(columns) != X.shape[1]:
        columns = [f"e{i}" for i in range(X.shape[1])]
    written = _write_embeddings(args.out, X, ids, columns)
    n_nan = int((~np.isfinite(X).all(axis=1)).sum())
    skipped = f"; {n_nan} invalid crystal(s) have rows of NaN" if n_nan else ""
    print(f"embedded {len(X)} crystals with {args.model}: {X.shape[1]} values each{skipped}")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def probe_command(args: argparse.Namespace) -> int:
    """Run ``cdssl probe``: print a markdown table of R² and MAE per (model, property).

    Side Effects:
        Writes the results as CSV to ``--out`` when given.
    """
    labels = list(args.labels or (_SAMPLE_PROBE_LABELS if args.sample is not None else ()))
    _, names, structures, properties = _read_source(args, labels)
    model = as_model(args.model)
    models: dict[str, Any] = {str(args.model): model}
    if args.baseline == "random":
        models[f"random init (seed {args.seed})"] = new_like(model, weights="none", seed=args.seed)
    frame = probe_models(
        models,
        structures,
        properties,
        batch_size=args.batch_size,
        skip_invalid=args.skip_invalid,
        names=names,
        cv=args.cv,
        seed=args.seed,
    )
    print(format_probe_table(frame))
    first = frame.drop_duplicates("property")
    for _, r in first.iterrows():
        if r["n_dropped_label"]:
            print(f"{r['property']}: left out {int(r['n_dropped_label'])} crystal(s) without a value")
        if r["n_dropped_embedding"]:
            print(f"{r['property']}: left out {int(r['n_dropped_embedding'])} invalid crystal(s) (--skip-invalid)")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(args.out, index=False)
        print(f"wrote {args.out}")
    return 0


def _add_map_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the map command (``cdssl plot map``): model, data source, ``--color``, ``--method``, ``--out``."""
    _add_source_arguments(parser)
    parser.add_argument(
        "--color",
        default="density",
        help="density, volume_per_atom, or a label (a sample label or a CSV column); default: density",
    )
    parser.add_argument("--method", choices=("umap", "pca"), default="umap", help="projection (default: umap)")
    parser.add_argument("--seed", type=int, default=0, help="seed of UMAP")
    parser.add_argument("--k", type=int, default=10, help="neighbours of the kNN correlation (default: 10)")
    parser.add_argument("--out", type=Path, required=True, help="PNG file")


def map_command(args: argparse.Namespace) -> int:
    """Run the map command: embed, project to 2-D, colour by ``--color``, save a PNG, print the kNN correlation.

    Side Effects:
        Writes the PNG to ``--out``.
    """
    derived = args.color in ("density", "volume_per_atom")
    _, names, structures, labels = _read_source(args, () if derived else (args.color,))
    color = structure_properties(structures)[args.color] if derived else labels[args.color]
    X = embed(args.model, structures, batch_size=args.batch_size, skip_invalid=args.skip_invalid, names=names)
    result = plot_map(
        X,
        color,
        args.out,
        method=args.method,
        label=PROPERTY_LABELS.get(args.color, args.color),
        seed=args.seed,
        k=args.k,
    )
    dropped = f" ({result['n_dropped']} left out: no value or invalid)" if result["n_dropped"] else ""
    print(
        f"{result['method'].upper()} map of {result['n']} crystals{dropped} coloured by {args.color}: kNN correlation "
        f"(k={result['k']}) {result['knn_correlation']:.3f} on the map, {result['knn_correlation_shuffled']:.3f} "
        f"with the values shuffled, {result['knn_correlation_embedding']:.3f} in the full embedding"
    )
    print(f"wrote {result['path']}")
    return 0


def _add_plot(subparsers: Any) -> None:
    """Add ``cdssl plot`` (``pretraining``, ``curves`` and ``map``)."""
    parser = subparsers.add_parser(
        "plot", help="draw diagnostics: pretraining curves, a benchmark's training curves, representation map"
    )
    plots = parser.add_subparsers(dest="plot", required=True, metavar="{pretraining,curves,map}")

    p = plots.add_parser(
        "pretraining",
        help="loss, MAE against the copy-the-noisy-input baseline, and gradient norm per epoch",
        description="Draw the diagnostics of a pretraining run (the paper's Fig. 3) from RUN_DIR/metrics.csv: loss, "
        "MAE of the predicted against the clean edge embeddings with the copy-the-noisy-input baseline, and gradient "
        "norm, for training and validation, per epoch.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="pretraining output folder (or its metrics.csv)")
    p.add_argument("--out", type=Path, metavar="PNG", help="output file (default: RUN_DIR/pretraining.png)")
    p.set_defaults(func=plot_pretraining_command)

    p = plots.add_parser(
        "curves",
        help="training and validation MAE per epoch of a benchmark configuration's arms",
        description="Draw the training and validation MAE per epoch of every arm of one configuration (task, "
        "training size, seed) of a benchmark, from OUT/runs.csv and the curves it kept in OUT/curves/: whether an "
        "arm ends under-trained, stuck on a plateau or overfitting.",
    )
    p.add_argument("output_dir", type=Path, metavar="OUT", help="the benchmark's output folder")
    p.add_argument("--task", required=True, help="task name, as in OUT/runs.csv")
    p.add_argument("--n-train", type=int, required=True, help="training size")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--out", type=Path, metavar="PNG", help="output file (default: OUT/curves-TASK-nN-seedS.png)")
    p.set_defaults(func=plot_curves_command)

    p = plots.add_parser(
        "map",
        help="2-D map of the crystals' learned representations",
        description="Draw a 2-D map of the crystals' representations (see docs/representation.md).",
    )
    _add_map_arguments(p)
    p.set_defaults(func=map_command)


def plot_curves_command(args: argparse.Namespace) -> int:
    """Run ``cdssl plot curves``.

    Side Effects:
        Writes the PNG (``--out``, or ``OUT/curves-TASK-nN-seedS.png``) and prints its path.
    """
    print(f"wrote {plot_curves(args.output_dir, args.task, args.n_train, args.seed, args.out)}")
    return 0


def plot_pretraining_command(args: argparse.Namespace) -> int:
    """Run ``cdssl plot pretraining``.

    Side Effects:
        Writes the PNG (``--out``, or ``RUN_DIR/pretraining.png``) and prints its path.
    """
    print(f"wrote {plot_pretraining(args.run_dir, args.out)}")
    return 0
