"""Choose the benchmark's learning rate on validation data (never test data), the same for both arms.

    python scripts/select_benchmark_settings.py --out runs/benchmark-selection --sample-budget 12000 --max-epochs 150

Runs both arms of ``mp_formation_energy`` and ``perov_heat_ref`` at 100 and 1000 labels, seed 0, for each
candidate learning rate, and ranks the candidates by the geometric mean of their *validation* MAE over all those
runs (both arms together, so the choice favours neither). The test MAE the runs also compute is not looked at.
Writes ``selection.md`` in the output folder.
"""

from __future__ import annotations

import matgl_cdssl  # noqa: F401  (first: selects the DGL backend on matgl 2.2.x)

# isort: split
import argparse
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from matgl_cdssl.apps import BenchmarkSettings, benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/benchmark-selection"))
    parser.add_argument("--lr", type=float, nargs="+", default=[1e-3, 3e-3])
    parser.add_argument("--tasks", nargs="+", default=["mp_formation_energy", "perov_heat_ref"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--sample-budget", type=int, default=BenchmarkSettings().sample_budget)
    parser.add_argument("--max-epochs", type=int, default=BenchmarkSettings().max_epochs)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    lines = ["| lr | geometric mean validation MAE | runs |", "|---:|---:|---:|"]
    scores = {}
    for lr in args.lr:
        settings = replace(BenchmarkSettings(), lr=lr, sample_budget=args.sample_budget, max_epochs=args.max_epochs)
        result = benchmark(tasks=args.tasks, sizes=args.sizes, seeds=[0], settings=settings,
                           output_dir=args.out / f"lr{lr:g}")  # fmt: skip
        val = result.runs["best_val_MAE"].to_numpy()
        scores[lr] = float(np.exp(np.log(val).mean()))
        lines.append(f"| {lr:g} | {scores[lr]:.4f} | {len(val)} |")
    best = min(scores, key=scores.get)
    lines += ["", f"Chosen: lr = {best:g} (lowest geometric mean validation MAE)."]
    (args.out / "selection.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
