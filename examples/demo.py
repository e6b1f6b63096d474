"""The main job: finetune the shipped CDSSL weights against matgl's supervised start and scratch, then predict.

On the 1,000 bundled Materials Project crystals (``matgl_cdssl.load_sample``, all from the hold-out pool of
``CDSSL-MEGNet-MP``: its pretraining never saw them):

1. A fixed split (``--seed``): 200 test crystals; from the other 800, 100 training labels and 50 validation labels.
2. ``matgl_cdssl.pretrain``: a short CDSSL pretraining on the 800 crystals, without labels, to show the call and the
   folder it writes. The steps below use the shipped weights instead, pretrained the same way on 32,764 crystals.
3. ``matgl_cdssl.finetune`` from three starts, on the same labels with the same settings: the shipped
   ``CDSSL-MEGNet-MP``, matgl's supervised formation-energy MEGNet ``MEGNet-MP-2018.6.1-Eform`` (a copy ships with
   the package) and scratch (the same architecture at random initialisation). The headline task is band gap, whose
   labels no start saw. Formation energy follows as a check: the supervised start was trained on Materials Project
   formation energies, very likely of these very crystals, so its number there is leakage and marked as such.
4. ``finetune(..., ensemble=K)`` from ``CDSSL-MEGNet-MP`` on the band-gap labels, then ``matgl_cdssl.predict(...,
   return_std=True)`` on the 200 test crystals: ``predictions.csv`` holds each crystal's true value, prediction and
   uncertainty, and the calibration of the uncertainty is printed.

Outputs in ``--out``: ``pretrain/`` (the pretrained folder and its metrics), ``results.csv`` and ``results.md`` (test
MAE per start and task), ``predictions.csv`` and ``demo.png``.

Run it with ``bash scripts/demo.sh`` (DGL backend) or ``CDSSL_BACKEND=pyg bash scripts/demo.sh``, or directly:
``python examples/demo.py --out demo_output``. ``--quick`` runs every step on a tiny budget (a smoke test).
"""

from __future__ import annotations

import matgl_cdssl  # on matgl 2.2.x this selects the DGL backend (before or after `import matgl`)

# isort: split
import argparse
import logging
import time
import warnings
from pathlib import Path

import matgl
import numpy as np
import pandas as pd
import torch
from matgl.models import MEGNet

from matgl_cdssl.apps import calibration
from matgl_cdssl.data import Sample

#: The starts compared, by their name in the table: what ``finetune``'s ``model`` takes (None: scratch, a fresh MEGNet).
STARTS = {
    "scratch": None,
    "MEGNet-MP-2018.6.1-Eform (matgl, supervised)": "MEGNet-MP-2018.6.1-Eform",
    "CDSSL-MEGNet-MP (shipped)": "CDSSL-MEGNet-MP",
}
#: Labels of the bundled sample, with their names in the table; the first is the headline task.
TASKS = {"band_gap_eV": "Band gap (eV)", "formation_energy_per_atom_eV": "Formation energy (eV/atom)"}
#: (start, task) pairs whose start was trained on these labels.
LEAKAGE = {("MEGNet-MP-2018.6.1-Eform (matgl, supervised)", "formation_energy_per_atom_eV")}
ENSEMBLE_START = "CDSSL-MEGNet-MP"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The demo's options; ``--quick`` shrinks every budget to a smoke test."""
    parser = argparse.ArgumentParser(
        description="CDSSL demo: pretrain, finetune three starts, predict with uncertainty"
    )
    parser.add_argument("--out", type=Path, default=Path("demo_output"))
    parser.add_argument("--sigma", type=float, default=0.3, help="noise level of the short pretraining, in Å")
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--n-pretrain", type=int, default=None, help="unlabelled crystals (default: all non-test)")
    parser.add_argument("--n-labelled", type=int, default=100, help="labelled training crystals")
    parser.add_argument("--n-val", type=int, default=50, help="labelled validation crystals")
    parser.add_argument("--n-test", type=int, default=200, help="test crystals")
    parser.add_argument("--finetune-epochs", type=int, default=100)
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--finetune-batch-size", type=int, default=16)
    parser.add_argument("--ensemble", type=int, default=5, help="members of the ensemble for the uncertainty")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test of every step")
    args = parser.parse_args(argv)
    if args.quick:
        args.pretrain_epochs, args.finetune_epochs, args.ensemble, args.n_pretrain = 1, 1, 2, 64
        args.n_labelled, args.n_val, args.n_test = 16, 8, 8
    return args


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """Run the demo; returns the table of test MAE (one row per start and task)."""
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "matgl_cdssl"):
        logging.getLogger(name).setLevel(logging.ERROR)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"matgl-cdssl {matgl_cdssl.__version__} demo on matgl {matgl.__version__} ({matgl_cdssl.BACKEND} backend)")

    sample = matgl_cdssl.load_sample()
    order = np.random.default_rng(args.seed).permutation(len(sample))
    test, pool = order[: args.n_test], order[args.n_test :]
    train, val = pool[: args.n_labelled], pool[args.n_labelled : args.n_labelled + args.n_val]

    metrics = pretrain_step(args, [sample.structures[i] for i in pool[: args.n_pretrain]])
    rows = []
    for t, (task, title) in enumerate(TASKS.items(), start=2):
        if task not in args.tasks:
            continue
        print(f"[{t}/4] {title}: {len(train)} training labels, {len(val)} validation, {len(test)} test crystals")
        inputs = task_data(sample, task, train, val, test)  # the same crystals, labels and settings for every start
        for label, model in STARTS.items():
            tic = time.perf_counter()
            result = matgl_cdssl.finetune(start_model(model, args.seed), **inputs, **settings(args))
            rows.append(row(label, task, result.metrics, time.perf_counter() - tic))
            print(f"      {label:<46} test MAE {result.metrics['test_MAE']:.4f}" + leak_note(label, task))
    results = pd.DataFrame(rows)
    results.to_csv(args.out / "results.csv", index=False)

    task = next(t for t in TASKS if t in args.tasks)  # the headline task: band gap unless left out
    predictions, calib = ensemble_step(args, sample, task, train, val, test)
    markdown = results_markdown(results, calib, task, args.ensemble)
    (args.out / "results.md").write_text(markdown)
    print("\n" + markdown)
    print(f"plot: {plot(args.out, metrics, results, predictions, task)}")
    print(f"total time {time.perf_counter() - start:.0f} s; outputs in {args.out}")
    return results


def pretrain_step(args: argparse.Namespace, structures: list) -> pd.DataFrame:
    """Step 1: a short CDSSL pretraining on the unlabelled crystals; returns its per-epoch metrics."""
    print(
        f"[1/4] CDSSL pretraining on {len(structures)} unlabelled crystals, sigma = {args.sigma} Å, "
        f"{args.pretrain_epochs} epochs"
    )
    folder = args.out / "pretrain"
    matgl_cdssl.pretrain(
        structures,
        sigma=args.sigma,
        max_epochs=args.pretrain_epochs,
        seed=args.seed,
        output_dir=folder,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    metrics = pd.read_csv(folder / "metrics.csv")
    last = metrics.dropna(subset=["val_MAE"]).iloc[-1]
    print(
        f"      pretext validation MAE {last['val_MAE']:.4f} vs {last['val_Baseline_MAE']:.4f} for copying the "
        f"noisy input; finetune({str(folder / 'model')!r}, ...) would start from it. Below: the shipped weights, "
        "pretrained on 32,764 crystals."
    )
    return metrics


def start_model(start: str | None, seed: int) -> str | MEGNet:
    """``finetune``'s ``model`` for a start: its name, or for scratch a fresh MEGNet drawn from ``seed``.

    matgl's default MEGNet is the architecture of ``CDSSL-MEGNet-MP``, at random initialisation.
    """
    if start is not None:
        return start
    torch.manual_seed(seed)
    return MEGNet()


def task_data(sample: Sample, task: str, train: np.ndarray, val: np.ndarray, test: np.ndarray) -> dict:
    """``finetune``'s data arguments for one task: the same crystals and labels for every start."""
    structures, y = sample.structures, sample.labels[task]
    return {
        "structures": [structures[i] for i in train],
        "targets": y[train],
        "val_structures": [structures[i] for i in val],
        "val_targets": y[val],
        "test_structures": [structures[i] for i in test],
        "test_targets": y[test],
    }


def settings(args: argparse.Namespace) -> dict:
    """``finetune``'s settings, the same for every start: L1 loss, Adam with cosine decay, the best validation epoch.

    Given in full, so that the demo's runs stay the same if ``finetune``'s defaults change.
    """
    return {
        "loss": "l1_loss",
        "max_epochs": args.finetune_epochs,
        "patience": None,
        "lr_patience": None,
        "lr": args.finetune_lr,
        "batch_size": args.finetune_batch_size,
        "seed": args.seed,
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
    }


def row(start: str, task: str, metrics: dict, seconds: float) -> dict:
    """One line of ``results.csv``."""
    return {
        "task": task,
        "start": start,
        "test_MAE": metrics["test_MAE"],
        "best_epoch": int(metrics["best_epoch"]),
        "leakage": (start, task) in LEAKAGE,
        "seconds": round(seconds, 1),
    }


def leak_note(start: str, task: str) -> str:
    """A warning for a start trained on the task's labels."""
    return " (leakage: trained on MP formation energies)" if (start, task) in LEAKAGE else ""


def ensemble_step(
    args: argparse.Namespace, sample: Sample, task: str, train: np.ndarray, val: np.ndarray, test: np.ndarray
) -> tuple[pd.DataFrame, dict]:
    """Step 4: an ensemble from the shipped weights, its predictions with uncertainty on the test crystals."""
    print(
        f"[4/4] {TASKS[task]}: an ensemble of {args.ensemble} from {ENSEMBLE_START}, then predict(..., "
        "return_std=True) on the test crystals"
    )
    inputs = task_data(sample, task, train, val, test)
    test_structures, y = inputs.pop("test_structures"), inputs.pop("test_targets")
    result = matgl_cdssl.finetune(ENSEMBLE_START, **inputs, **settings(args), ensemble=args.ensemble)
    mean, std = matgl_cdssl.predict(result, test_structures, return_std=True)
    predictions = pd.DataFrame(
        {
            "material_id": [sample.material_ids[i] for i in test],
            "formula": [s.composition.reduced_formula for s in test_structures],
            f"true_{task}": y,
            f"predicted_{task}": mean,
            f"uncertainty_{task}": std,
            "abs_error": np.abs(mean - y),
        }
    )
    predictions.to_csv(args.out / "predictions.csv", index=False)
    calib = calibration(y, mean, std)
    print(
        f"      ensemble test MAE {calib['test_MAE']:.4f}; uncertainty scaled by {result.std_scale:.2f} on the "
        f"validation crystals; Spearman(|error|, uncertainty) {calib['test_spearman_error_std']:.2f}; within 1 and "
        f"2 uncertainties: {calib['test_within_1_std']:.0%} and {calib['test_within_2_std']:.0%} (68% and 95% if "
        f"Gaussian); {args.out / 'predictions.csv'}"
    )
    return predictions, calib


def results_markdown(results: pd.DataFrame, calib: dict, task: str, members: int) -> str:
    """The table of test MAE (starts by tasks, leakage marked) and the ensemble's calibration, as Markdown."""
    tasks = list(dict.fromkeys(results["task"]))
    lines = ["| start | " + " | ".join(TASKS[t] for t in tasks) + " |", "|:--|" + "--:|" * len(tasks)]
    for start in STARTS:
        cells = []
        for t in tasks:
            hit = results[(results.start == start) & (results.task == t)].iloc[0]
            cells.append(f"{hit.test_MAE:.4f}" + (" (leakage)" if hit.leakage else ""))
        lines.append(f"| {start} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Ensemble of {members} from {ENSEMBLE_START}, {TASKS[task]}: test MAE {calib['test_MAE']:.4f}, "
        f"Spearman(|error|, uncertainty) {calib['test_spearman_error_std']:.2f}, within 1 uncertainty "
        f"{calib['test_within_1_std']:.0%}, within 2 {calib['test_within_2_std']:.0%}.",
    ]
    return "Test MAE (lower is better)\n\n" + "\n".join(lines) + "\n"


def plot(out: Path, metrics: pd.DataFrame, results: pd.DataFrame, predictions: pd.DataFrame, task: str) -> Path:
    """``demo.png``: the pretraining curve, the test MAE of each start, the ensemble's predictions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(16, 4.5))
    val = metrics.dropna(subset=["val_MAE"])
    ax0.plot(val["epoch"], val["val_MAE"], "o-", label="validation MAE")
    ax0.plot(val["epoch"], val["val_Baseline_MAE"], "--", label="copy-the-noisy-input baseline")
    ax0.set(xlabel="epoch", ylabel="MAE of edge embeddings", title="Short CDSSL pretraining (step 1)")
    ax0.legend()
    tasks = list(dict.fromkeys(results["task"]))
    x = np.arange(len(tasks))
    width = 0.8 / len(STARTS)
    for k, (start, colour) in enumerate(zip(STARTS, ("tab:gray", "tab:orange", "tab:blue"), strict=True)):
        part = results[results.start == start].set_index("task").loc[tasks]
        bars = ax1.bar(x + (k - (len(STARTS) - 1) / 2) * width, part["test_MAE"], width, label=start, color=colour)
        for bar, leak in zip(bars, part["leakage"], strict=True):
            if leak:
                bar.set_hatch("//")
                ax1.annotate("leakage", (bar.get_x() + width / 2, bar.get_height()), ha="center", va="bottom")
    ax1.set_xticks(x, [TASKS[t] for t in tasks])
    ax1.set(ylabel="test MAE", title="Finetuning on the same labels (steps 2-3)")
    ax1.legend(fontsize=8)
    true, pred = predictions[f"true_{task}"], predictions[f"predicted_{task}"]
    ax2.errorbar(true, pred, yerr=predictions[f"uncertainty_{task}"], fmt=".", alpha=0.6, elinewidth=0.8)
    lims = [min(true.min(), pred.min()), max(true.max(), pred.max())]
    ax2.plot(lims, lims, "k--", lw=0.8)
    ax2.set(xlabel=f"true {TASKS[task]}", ylabel="predicted ± uncertainty", title="Ensemble on test crystals (step 4)")
    fig.tight_layout()
    path = out / "demo.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
