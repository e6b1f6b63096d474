"""Plot the pretext validation curve of the first release's run followed by its continuation (the second release).

    python studies/cdssl-megnet-mp-2026.12/plot_continuation.py runs/cdssl-megnet-mp-2026.12 \
        --out docs/results/cdssl-megnet-mp-2026.12

Reads ``docs/results/cdssl-megnet-mp/metrics.csv`` (the 32 epochs behind CDSSL-MEGNet-MP-2026.11) and the
continuation run's ``metrics.csv``, copies the latter to ``--out``, and draws the validation loss and MAE (with the
copy-the-noisy-input baseline) against the total number of pretraining epochs into ``--out/continuation.png``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from matgl_cdssl.analysis import read_metrics

FIRST = Path(__file__).resolve().parents[2] / "docs" / "results" / "cdssl-megnet-mp" / "metrics.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copy(args.run / "metrics.csv", args.out / "metrics.csv")
    first, second = read_metrics(FIRST), read_metrics(args.out / "metrics.csv")
    offset = int(first.index.max()) + 1
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, column in zip(axes, ("val_Total_Loss", "val_MAE"), strict=True):
        ax.plot(first.index + 1, first[column], "o-", ms=3, label="first release's run (2026.11)")
        ax.plot(second.index + 1 + offset, second[column], "o-", ms=3, label="continuation (2026.12, lr 5e-4)")
        ax.axvline(offset + 0.5, color="gray", lw=0.8, ls=":")
        ax.set(xlabel="pretraining epochs (total)", ylabel=column, yscale="log")
    axes[1].plot(second.index + 1 + offset, second["val_Baseline_MAE"], "--", color="gray", label="copy noisy input")
    axes[0].legend(frameon=False, fontsize=8)
    axes[1].legend(frameon=False, fontsize=8)
    fig.suptitle("CDSSL-MEGNet-MP: pretext validation curve across the two runs")
    fig.tight_layout()
    fig.savefig(args.out / "continuation.png", dpi=110)
    best = second["val_Total_Loss"].idxmin()
    print(
        f"continuation: {len(second)} epochs (total {offset + len(second)}); best validation loss "
        f"{second['val_Total_Loss'].min():.6f} at its epoch {best + 1} (first run's best "
        f"{first['val_Total_Loss'].min():.6f})"
    )


if __name__ == "__main__":
    main()
