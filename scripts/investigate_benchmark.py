"""Variants of the benchmark's settings on one task, judged on validation MAE (the test MAE is reported alongside).

    python scripts/investigate_benchmark.py --task mp_magnetization --sizes 250 1000 --seeds 0 \
        --out runs/investigate --md docs/results/benchmark/investigation.md

Each variant changes one setting of ``BenchmarkSettings`` for both arms (freezing applies to the pretrained arm only)
and reruns both arms with the benchmark's splits and budget.
"""

from __future__ import annotations

import matgl_cdssl  # noqa: F401  (first: selects the DGL backend on matgl 2.2.x)

# isort: split
import argparse
import warnings
from dataclasses import replace
from pathlib import Path

import pandas as pd

from matgl_cdssl.apps import BenchmarkSettings, benchmark, load_task

VARIANTS = {
    "benchmark settings (lr 3e-3)": {},
    "backbone lr 3e-4": {"backbone_lr": 3e-4},
    "frozen pretrained backbone": {"freeze_backbone": True},
    "MSE loss": {"loss": "mse_loss"},
    "lr 1e-3": {"lr": 1e-3},
    "3x finetuning budget": {"sample_budget": 60_000, "max_epochs": 600},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="mp_magnetization")
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 1000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=Path("runs/investigate"))
    parser.add_argument("--md", type=Path)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    task = load_task(args.task)
    rows = []
    for name, change in VARIANTS.items():
        settings = replace(BenchmarkSettings(), **change)
        result = benchmark(tasks=[task], sizes=args.sizes, seeds=args.seeds, settings=settings,
                           output_dir=args.out / name.replace(" ", "_"), progress=False)  # fmt: skip
        for (n, arm), group in result.runs.groupby(["n_train", "arm"]):
            rows.append({"variant": name, "n_train": n, "arm": arm, "val_MAE": group["best_val_MAE"].mean(),
                         "test_MAE": group["test_MAE"].mean()})  # fmt: skip
    frame = pd.DataFrame(rows).pivot_table(index=["variant", "n_train"], columns="arm", values=["val_MAE", "test_MAE"])
    frame.columns = [f"{metric} {arm}" for metric, arm in frame.columns]
    frame = frame.reset_index()
    lines = [
        f"# Investigation: {args.task}, sizes {args.sizes}, seeds {args.seeds}",
        "",
        "| variant | n_train | val MAE CDSSL | val MAE scratch | test MAE CDSSL | test MAE scratch |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in frame.itertuples(index=False):
        lines.append(f"| {r[0]} | {r[1]} | {r[4]:.4f} | {r[5]:.4f} | {r[2]:.4f} | {r[3]:.4f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:
        args.md.write_text(text)


if __name__ == "__main__":
    main()
