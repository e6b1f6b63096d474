"""Training curves of the benchmark's runs: why an arm ends where it does (under-trained, stuck, or overfitting).

:func:`~matgl_cdssl.bench.benchmark` keeps every run it trains as Lightning's ``CSVLogger`` writes it, in
``OUTPUT_DIR/curves/<run>/metrics.csv`` (:func:`curve_name`): the training and validation MAE of each epoch and the
learning rate(s). :func:`plot_curves` draws the arms of one configuration side by side.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["curve_name", "plot_curves", "read_curve"]

COLORS = {"CDSSL": "tab:blue", "supervised": "tab:orange", "scratch": "tab:gray"}
"""Each default arm's colour, in the training curves and in the benchmark's bar chart."""


def curve_name(record: dict[str, Any]) -> str:
    """The folder of a run's curve under ``OUTPUT_DIR/curves``: task, size, seed, arm and the run's fingerprint.

    Example:
        >>> curve_name({"task": "perov_heat_ref", "n_train": 100, "seed": 0, "arm": "runs/my model",
        ...             "fingerprint": "ab12"})
        'perov_heat_ref-n100-seed0-runs-my-model-ab12'
    """
    arm = re.sub(r"[^\w.]+", "-", str(record["arm"])).strip("-")
    return f"{record['task']}-n{record['n_train']}-seed{record['seed']}-{arm}-{record['fingerprint']}"


def read_curve(path: str | Path) -> pd.DataFrame:
    """One run's ``metrics.csv`` as one row per epoch (Lightning logs the rates, training and validation apart).

    Raises:
        FileNotFoundError: There is no such file.
        ValueError: It has no ``epoch``, ``train_MAE`` or ``val_MAE`` column, or no rows; the message names the file.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    frame = pd.read_csv(path)
    missing = [c for c in ("epoch", "train_MAE", "val_MAE") if c not in frame]
    if missing or frame.empty:
        raise ValueError(f"{path}: not a finetuning run's metrics.csv (missing {missing or 'rows'})")
    frame["epoch"] = frame["epoch"].bfill()  # the learning rates are logged at an epoch's start, without its number
    frame = frame.dropna(subset=["epoch"]).astype({"epoch": int}).groupby("epoch").last().sort_index()
    return frame.dropna(subset=["train_MAE", "val_MAE"], how="all")  # not the test's row after the last epoch


def plot_curves(output_dir: str | Path, task: str, n_train: int, seed: int = 0, path: str | Path | None = None) -> Path:
    """Draw the training and validation MAE per epoch of every arm of one configuration of a benchmark.

    The runs are those of the benchmark's table (``OUTPUT_DIR/runs.csv``: each arm's chosen rate, the base budget);
    each arm's best validation epoch, the one tested, is marked.

    Args:
        output_dir: The benchmark's ``output_dir``.
        task: The task's name.
        n_train: The training size.
        seed: The seed.
        path: The PNG to write (default: ``OUTPUT_DIR/curves-<task>-n<n_train>-seed<seed>.png``).

    Returns:
        The PNG's path.

    Raises:
        FileNotFoundError: No ``runs.csv``, or none of the configuration's runs has a curve (runs trained before the
            benchmark kept curves have none); the message names the runs.
        ValueError: ``runs.csv`` has no run of that configuration; the message lists the configurations it has.
    """
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_dir = Path(output_dir)
    table = output_dir / "runs.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{table}: no such file (give a benchmark's output folder)")
    runs = pd.read_csv(table)
    rows = runs[(runs["task"] == task) & (runs["n_train"] == n_train) & (runs["seed"] == seed)]
    if rows.empty:
        have = sorted({(r.task, int(r.n_train), int(r.seed)) for r in runs.itertuples()})
        raise ValueError(f"{table} has no run of {task} at n_train={n_train}, seed {seed}; it has: {have}")
    found = {r["arm"]: output_dir / "curves" / curve_name(r) / "metrics.csv" for r in rows.to_dict("records")}
    curves = {arm: read_curve(csv) for arm, csv in found.items() if csv.is_file()}
    if not curves:
        raise FileNotFoundError(
            f"no curve for any run of {task} at n_train={n_train}, seed {seed}: looked for "
            f"{', '.join(str(p) for p in found.values())} (runs trained before the benchmark kept curves have none)"
        )
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for arm, curve in curves.items():
        color = COLORS.get(arm)
        ax.plot(curve.index, curve["val_MAE"], color=color, label=f"{arm}, validation")
        ax.plot(curve.index, curve["train_MAE"], color=color, ls="--", lw=1, label=f"{arm}, training")
        best = int(curve["val_MAE"].idxmin())
        ax.plot(best, curve.loc[best, "val_MAE"], "o", color=color, ms=5)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"MAE ({rows['unit'].iloc[0]})" if "unit" in rows else "MAE")
    ax.set_title(f"{task}, {n_train} training labels, seed {seed} (dot: best validation epoch)", fontsize=10)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path = Path(path) if path is not None else output_dir / f"curves-{task}-n{n_train}-seed{seed}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
