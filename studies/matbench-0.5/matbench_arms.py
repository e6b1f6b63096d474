"""Every arm on matbench's own tasks and folds, every choice made inside each fold, beside the leaderboard.

    python studies/matbench-0.5/matbench_arms.py --tasks matbench_jdft2d --arms scratch \
        --out docs/results/matbench-0.5

For each task and arm (``CDSSL``: ``CDSSL-MEGNet-MP``; ``scratch``: the same architecture from random initialisation;
``supervised``: matgl's formation-energy MEGNet), :func:`~matgl_cdssl.bench.run_matbench` runs matbench's five folds
under its per-fold protocol (:data:`~matgl_cdssl.bench.MATBENCH_PROTOCOL`): in each fold, every candidate of the arm's
grid finetunes on the fold's training data less a validation part (``--val-fraction``, at least ``--min-val``
crystals: the benchmark's rule), the lowest best validation MAE chooses the rates and the number of epochs (a choice
at an edge of the grid competes with one step beyond it), and a fresh copy trains on the whole training fold for that
many epochs at the chosen run's rates (the refit), whose test predictions matbench scores. Every arm has as many
candidates: a pretrained arm ``--lr-grid`` times ``--backbone-lr-scales``, scratch as many rates spread over the
range of ``--lr-grid``. The budget is the benchmark's 0.5 protocol (``--max-epochs``, ``--patience``,
``--lr-patience``). Training crystals that the checks reject (an atom with no neighbour within the 4 Å cutoff: a few
phonon crystals) are left out of training with a warning (``skip_invalid``); a test crystal without any edge within
the cutoff (one in matbench_phonons' fold 4) gets the fold's training median, the same for every arm.

One results file per (task, arm) in matbench's format (``<task>-<arm>.json.gz``; an arm whose file is complete is read
back, not rerun, and an unfinished one continues where it stopped, its selection too:
``<task>-<arm>.selection.jsonl``). ``--folds`` runs only those folds, into their own file
(``<task>-<arm>.folds-3-4.json.gz``), so that another process can run the other folds at the same time (with
``--folds`` too); every call first merges such files into ``<task>-<arm>.json.gz``
(:func:`~matgl_cdssl.bench.resume_results`), and their folds are not run again. Then ``matbench.md``: the
refit's mean test MAE over the folds (what goes beside the leaderboard) and the carve-out model's, each fold's
choice, and every pair of arms compared fold by fold.
"""

from __future__ import annotations

# isort: split
import argparse
import logging
import warnings
from pathlib import Path

import numpy as np

from matgl_cdssl.bench import (
    MATBENCH_PROTOCOL,
    BenchmarkSettings,
    change_text,
    paired_interval,
    resume_results,
    run_matbench,
    verdict,
    write_results,
)

#: Matbench v0.1 leaderboard figures (mean test MAE over the 5 folds) that the issue compares with.
LEADERBOARD = {
    "matbench_jdft2d": {"unit": "meV/atom", "MEGNet (kgcnn)": 54.17, "best: MODNet": 33.19, "dummy": 67.29},
    "matbench_phonons": {"unit": "cm^-1", "MEGNet (kgcnn)": 28.76, "best: MEGNet (kgcnn)": 28.76, "dummy": 323.98},
}
ARMS = ("CDSSL", "supervised", "scratch")
DRIVER = "studies/matbench-0.5/matbench_arms.py"
RULE = BenchmarkSettings()  # the benchmark's 0.5 protocol: grids and budget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(LEADERBOARD))
    parser.add_argument("--arms", nargs="+", default=list(ARMS))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--lr-grid", type=float, nargs="+", default=list(RULE.lr_grid))
    parser.add_argument("--backbone-lr-scales", type=float, nargs="+", default=list(RULE.backbone_lr_scales))
    parser.add_argument("--max-epochs", type=int, default=RULE.max_epochs)
    parser.add_argument("--patience", type=int, default=RULE.patience)
    parser.add_argument("--lr-patience", type=int, default=RULE.lr_patience, help="0: matgl's cosine decay")
    parser.add_argument("--val-fraction", type=float, default=0.25, help="validation share of a fold's training data")
    parser.add_argument("--min-val", type=int, default=RULE.min_val, help="and at least this many validation crystals")
    parser.add_argument("--folds", type=int, nargs="+", metavar="K",
                        help="only these folds, into <task>-<arm>.folds-K-....json.gz (other folds may run in another "
                        "process meanwhile); every call merges those files into <task>-<arm>.json.gz")  # fmt: skip
    parser.add_argument("--report-only", action="store_true", help="train nothing: the table from the files there")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for task in args.tasks:
        for arm in args.arms:
            path = args.out / f"{task}-{arm}.json.gz"
            mb = _merged(path)
            complete = mb is not None and all(getattr(mb, task).is_recorded.values())
            if not (args.report_only or complete):
                own = path if args.folds is None else path.with_name(f"{task}-{arm}.folds-{_folds(args.folds)}.json.gz")
                mb = _run(task, arm, own, args, mb)
            if mb is not None:
                rows[task, arm] = _row(getattr(mb, task))
    (args.out / "matbench.md").write_text(_table(rows, args))
    print((args.out / "matbench.md").read_text())


def _folds(folds: list[int]) -> str:
    return "-".join(map(str, sorted(set(folds))))


def _merged(path: Path) -> object | None:
    """The folds recorded in ``path`` and in the files of its folds run apart (``--folds``), written to ``path``."""
    parts = sorted(path.parent.glob(path.name.replace(".json.gz", ".folds-*.json.gz")))
    files = [f for f in (path, *parts) if f.is_file()]
    if not files:
        return None
    mb = resume_results(*files)
    if parts:
        write_results(mb, path)
    return mb


def _run(task: str, arm: str, path: Path, args: argparse.Namespace, benchmark) -> object:
    quiet = {"enable_progress_bar": False, "enable_model_summary": False}
    quiet |= {"skip_invalid": True, "unpredictable": "median"}
    return run_matbench(task, model="CDSSL-MEGNet-MP" if arm == "CDSSL" else arm, output=path, folds=args.folds,
                        lr_grid=args.lr_grid,
                        backbone_lr_scales=args.backbone_lr_scales, max_epochs=args.max_epochs,
                        patience=args.patience, lr_patience=args.lr_patience or None, val_fraction=args.val_fraction,
                        min_val=args.min_val, benchmark=benchmark, **quiet)  # fmt: skip


def _row(t) -> dict:
    """One arm's recorded folds: the refit's and the carve-out model's test MAE, each fold's choice."""
    folds = [f for f in t.folds if t.is_recorded[f]]
    results = [t.results[t.folds_map[f]] for f in folds]
    if any(r.parameters.get("protocol") != MATBENCH_PROTOCOL for r in results):
        raise ValueError(f"{t.dataset_name}: folds recorded under another protocol than {MATBENCH_PROTOCOL!r}")
    return {
        "folds": folds,
        "mae": np.array([r.scores.mae for r in results]),
        "carve_out": np.array([r.parameters["carve_out"]["test_MAE"] for r in results]),
        "rates": [_rate(r.parameters["lr"], r.parameters["backbone_lr"]) for r in results],
        "beyond": sum(any(c.get("beyond_edge") for c in r.parameters["lr_selection"]) for r in results),
        "epochs": [int(r.parameters["refit"]["epochs"]) for r in results],
    }


def _rate(lr: float, backbone_lr: float | None) -> str:
    return f"{lr:g}" + ("" if backbone_lr is None else f"/{backbone_lr:g}")


def _mean_se(values: np.ndarray) -> str:
    se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return f"{values.mean():.2f} ± {se:.2f}"


def _table(rows: dict, args: argparse.Namespace) -> str:
    lines = [f"Command: `python {DRIVER} --tasks {' '.join(args.tasks)} --arms {' '.join(args.arms)} "
             f"--lr-grid {' '.join(map(str, args.lr_grid))} --backbone-lr-scales "
             f"{' '.join(map(str, args.backbone_lr_scales))} --max-epochs {args.max_epochs} "
             f"--patience {args.patience} --lr-patience {args.lr_patience} --val-fraction {args.val_fraction:g} "
             f"--min-val {args.min_val} --out {args.out}`", "",
             f"Protocol: {MATBENCH_PROTOCOL!r} (every choice inside each fold, on a carve-out of its training data; "
             "the refit on the whole training fold is recorded). Test MAE: mean ± standard error over the folds "
             "recorded; refit vs carve-out: the refit's test MAE against the carve-out model's, fold by fold (mean "
             "relative change, 95% t interval). Rates: the chosen lr (/backbone lr) per fold; beyond an edge: the "
             "folds whose grid was extended by a step beyond the edge their choice sat on.", ""]  # fmt: skip
    for task in args.tasks:
        board = LEADERBOARD.get(task, {"unit": ""})
        lines += [f"### {task} ({board['unit']})", "",
                  "| entry | folds | refit (recorded) | carve-out model | refit vs carve-out | per fold (refit) | "
                  "rates per fold | beyond an edge | refit epochs |",
                  "|---|---|---:|---:|---|---|---|---:|---|"]  # fmt: skip
        for arm in args.arms:
            if (task, arm) not in rows:
                lines.append(f"| {arm} | not run | | | | | | | |")
                continue
            r = rows[task, arm]
            refit_vs_carve_out = change_text(*paired_interval(r["mae"] / r["carve_out"] - 1))
            lines.append(f"| **{arm}** (this work) | {len(r['folds'])} | {_mean_se(r['mae'])} | "
                         f"{_mean_se(r['carve_out'])} | {refit_vs_carve_out} | "
                         f"{', '.join(f'{m:.1f}' for m in r['mae'])} | "
                         f"{', '.join(r['rates'])} | {r['beyond']} | {', '.join(map(str, r['epochs']))} |")  # fmt: skip
        board_rows = [(name, value) for name, value in board.items() if name != "unit"]
        lines += [f"| {name} (leaderboard) | | {value:.2f} | | | | | | |" for name, value in board_rows]
        lines += ["", "Fold by fold (the refit's test MAE; mean relative change of the first arm against the "
                  "second over the folds both have, 95% t interval; win or loss where it excludes zero):", "",
                  "| arms | folds | change | verdict |", "|---|---:|---|---|"]  # fmt: skip
        done = [arm for arm in args.arms if (task, arm) in rows]
        for i, a in enumerate(done):
            for b in done[i + 1 :]:
                both = sorted(set(rows[task, a]["folds"]) & set(rows[task, b]["folds"]))
                if len(both) < 2:
                    lines.append(f"| {a} vs {b} | {len(both)} | | |")
                    continue
                ra, rb = (dict(zip(rows[task, x]["folds"], rows[task, x]["mae"], strict=True)) for x in (a, b))
                mean, low, high = paired_interval([ra[f] / rb[f] - 1 for f in both])
                lines.append(f"| {a} vs {b} | {len(both)} | {change_text(mean, low, high)} | {verdict(low, high)} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
