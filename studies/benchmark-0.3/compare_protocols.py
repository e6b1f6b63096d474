"""Is the scratch arm weak because of its schedule? CDSSL against scratch under both benchmark schedules.

    python studies/benchmark-0.3/compare_protocols.py docs/results/archive/benchmark-0.3 \
        docs/results/archive/benchmark-0.2 --out docs/results/archive/benchmark-0.3/protocols.md

The two folders are benchmark results (``runs.csv``) of the same tasks, sizes and seeds (so the same splits) under two
protocols: here 0.3 (rates halved on a validation plateau) and 0.2 (matgl's cosine decay over the epoch cap, which
early stopping ends while the rate is still nearly its first value). For every (task, size), each arm gets the schedule
with its lower mean validation MAE over the seeds (the benchmark's own selection rule, applied to the schedule); and,
as the most generous baseline, CDSSL under the first folder's protocol meets scratch under the schedule with the
lower mean *test* MAE. The table and the win counts go to ``--out``.
"""

from __future__ import annotations

# isort: split
import argparse
from pathlib import Path

import pandas as pd


def _means(folder: Path) -> pd.DataFrame:
    """Mean test and best validation MAE over the seeds, per (arm, task, unit, n_train), of a folder's runs.csv."""
    runs = pd.read_csv(folder / "runs.csv")
    return runs.groupby(["arm", "task", "unit", "n_train"])[["test_MAE", "best_val_MAE"]].mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("first", type=Path, help="results folder of the protocol CDSSL is taken from")
    parser.add_argument("second", type=Path, help="results folder of the other protocol")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    frames = {}
    for k, folder in ((1, args.first), (2, args.second)):
        means = _means(folder)
        for arm in ("CDSSL", "scratch"):
            frames[f"{arm}_test_{k}"], frames[f"{arm}_val_{k}"] = (
                means.loc[arm, "test_MAE"],
                means.loc[arm, "best_val_MAE"],
            )
    table = pd.DataFrame(frames).dropna()
    names = (args.first.name, args.second.name)
    lines = [f"| task | n_train | CDSSL ({names[0]}) | CDSSL ({names[1]}) | scratch ({names[0]}) | "
             f"scratch ({names[1]}) | CDSSL vs scratch, each schedule chosen on validation | "
             "CDSSL vs the better scratch on test |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    wins_val = wins_best = 0

    def chosen(row: pd.Series, arm: str) -> float:
        k = 1 if row[f"{arm}_val_1"] <= row[f"{arm}_val_2"] else 2
        return row[f"{arm}_test_{k}"]

    for (task, unit, n), row in table.iterrows():
        vs_val = chosen(row, "CDSSL") / chosen(row, "scratch") - 1
        vs_best = row["CDSSL_test_1"] / min(row["scratch_test_1"], row["scratch_test_2"]) - 1
        wins_val, wins_best = wins_val + (vs_val < 0), wins_best + (vs_best < 0)
        cells = [f"{row[c]:.4g}" for c in ("CDSSL_test_1", "CDSSL_test_2", "scratch_test_1", "scratch_test_2")]
        lines.append(f"| {task} ({unit}) | {n} | {' | '.join(cells)} | {100 * vs_val:+.1f}% | {100 * vs_best:+.1f}% |")
    total = len(table)
    lines += ["", f"Mean test MAE over the seeds. CDSSL wins {wins_val} of {total} when each arm takes the schedule "
              f"with its lower mean validation MAE, and {wins_best} of {total} when CDSSL ({names[0]}) meets the "
              "better scratch result on test (the most generous baseline: it has seen the test set)."]  # fmt: skip
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
