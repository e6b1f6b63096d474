"""Diagnostics plots: the pretraining curves of a CDSSL run.

``plot_pretraining`` draws the three diagnostics of the paper's Fig. 3 from a run's ``metrics.csv``, per epoch: the
loss, the mean absolute error between the predicted and the clean edge embeddings, ``|h(G~) - E_clean|``, next to the
MAE of copying the noisy input's embedding (``val_Baseline_MAE``), and the global gradient norm, each for training and
validation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["PRETRAINING_METRICS", "plot_pretraining", "read_metrics"]

PRETRAINING_METRICS = (
    "train_Total_Loss",
    "val_Total_Loss",
    "train_MAE",
    "val_MAE",
    "val_Baseline_MAE",
    "train_Grad_Norm",
)
"""The columns of a pretraining ``metrics.csv`` that :func:`plot_pretraining` draws (besides ``epoch``).

``val_Grad_Norm`` is drawn too when the run logged it (``pretrain(..., val_grad_norm=True)``).
"""

_PANELS = (
    ("Total_Loss", "loss (MSE)", True),
    ("MAE", r"MAE $|h(\tilde G) - E_\mathrm{clean}|$", False),
    ("Grad_Norm", "gradient norm", True),
)


def _metrics_csv(run_dir_or_csv: str | Path) -> Path:
    path = Path(run_dir_or_csv)
    csv = path if path.is_file() or path.suffix == ".csv" else path / "metrics.csv"
    if not csv.is_file():
        raise FileNotFoundError(
            f"{csv}: no such file (give a pretraining output folder or its metrics.csv, as matgl_cdssl.pretrain "
            "writes them)"
        )
    return csv


def read_metrics(run_dir_or_csv: str | Path) -> pd.DataFrame:
    """Read a pretraining run's ``metrics.csv`` as one row per epoch.

    Lightning's CSV logger writes training and validation metrics of one epoch on separate rows; they are merged here
    (the last logged value of each column per epoch).

    Args:
        run_dir_or_csv: The ``output_dir`` of :func:`matgl_cdssl.pretrain`, or the path of a ``metrics.csv``.

    Returns:
        A DataFrame indexed by ``epoch`` with the columns of :data:`PRETRAINING_METRICS` that the file has (and any
        others it logged), sorted by epoch.

    Raises:
        FileNotFoundError: There is no ``metrics.csv``.
        ValueError: The file has no ``epoch`` column, none of the training or validation columns of one of the
            three diagnostics (loss, MAE, gradient norm), or no rows; the message names the file and the columns.

    Example:
        >>> frame = read_metrics("docs/results/cdssl-megnet-mp/metrics.csv")
        >>> len(frame), float(frame["val_Baseline_MAE"].iloc[-1]) > float(frame["val_MAE"].iloc[-1])
        (32, True)
    """
    import pandas as pd

    csv = _metrics_csv(run_dir_or_csv)
    try:
        frame = pd.read_csv(csv)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"{csv}: not a readable metrics CSV ({exc})") from None
    missing = [] if "epoch" in frame else ["epoch"]
    for key, _, _ in _PANELS:
        if f"train_{key}" not in frame and f"val_{key}" not in frame:
            missing.append(f"train_{key} or val_{key}")
    if missing:
        raise ValueError(
            f"{csv} lacks the column(s) {', '.join(missing)} of a CDSSL pretraining metrics.csv (it has: "
            f"{', '.join(map(str, frame.columns)) or 'no columns'}); expected epoch, {', '.join(PRETRAINING_METRICS)}"
        )
    frame = frame.dropna(subset=["epoch"])
    if frame.empty:
        raise ValueError(f"{csv} has no rows yet: no epoch has finished")
    frame = frame.astype({"epoch": int})
    return frame.groupby("epoch").last().sort_index()


def plot_pretraining(run_dir_or_csv: str | Path, path: str | Path | None = None) -> Path:
    """Draw a pretraining run's diagnostics (the paper's Fig. 3) per epoch into a PNG.

    Three panels, each with training and validation curves: the loss (MSE, log scale); the MAE between the
    predicted and the clean edge embeddings, with the copy-the-noisy-input baseline (``val_Baseline_MAE``,
    dashed), which the model beats once its validation MAE lies below; and the global gradient norm (log scale).

    Args:
        run_dir_or_csv: The ``output_dir`` of :func:`matgl_cdssl.pretrain`, or the path of a ``metrics.csv``.
        path: Where to write the PNG; ``pretraining.png`` next to the ``metrics.csv`` when None.

    Returns:
        The path of the PNG.

    Raises:
        FileNotFoundError: There is no ``metrics.csv``.
        ValueError: The file lacks the columns of a pretraining run (see :func:`read_metrics`).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     png = plot_pretraining("docs/results/cdssl-megnet-mp", f"{tmp}/curves.png")
        ...     png.name, png.stat().st_size > 0
        ('curves.png', True)
    """
    from matplotlib.figure import Figure

    csv = _metrics_csv(run_dir_or_csv)
    frame = read_metrics(csv)
    out = csv.parent / "pretraining.png" if path is None else Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)

    fig = Figure(figsize=(12, 3.6), layout="constrained")
    axes = fig.subplots(1, 3)
    styles = {"train": {"color": "tab:blue"}, "val": {"color": "tab:orange"}}
    for ax, (key, label, log) in zip(axes, _PANELS, strict=True):
        for split, style in styles.items():
            column = f"{split}_{key}"
            if column in frame and frame[column].notna().any():
                series = frame[column].dropna()
                ax.plot(series.index, series.to_numpy(), marker="o", markersize=3, label=split, **style)
        if key == "MAE" and "val_Baseline_MAE" in frame and frame["val_Baseline_MAE"].notna().any():
            series = frame["val_Baseline_MAE"].dropna()
            ax.plot(series.index, series.to_numpy(), color="gray", linestyle="--", label="copy noisy input (val)")
        values = frame[[c for c in frame.columns if str(c).endswith(key)]].to_numpy().ravel()
        if log and all(v > 0 for v in values if not math.isnan(v)):
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(label, fontsize=10)
        ax.legend(frameon=False, fontsize=8)
    fig.suptitle(f"CDSSL pretraining: {csv.parent.name or csv.parent.resolve().name}", fontsize=11)
    fig.savefig(out, dpi=110)
    return out
