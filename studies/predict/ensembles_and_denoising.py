"""Does an ensemble's spread mean something, and does denoising during finetuning help? Two measurements.

    python studies/predict/ensembles_and_denoising.py calibration --out docs/results/predict   # test crystals
    python studies/predict/ensembles_and_denoising.py denoising --out docs/results/predict     # validation only

Both finetune ``CDSSL-MEGNet-MP`` on the benchmark's tasks and splits (``matgl_cdssl.bench.task_splits``: the
same training, validation and test crystals as ``cdssl benchmark``) with the benchmark's rule for the budget
(``BenchmarkSettings``: lr 3e-3, batch 32, L1, cosine decay, early stopping after a third of the epochs), with the
sample budget given by ``--sample-budget`` (the CPU budget of one session; the benchmark's default is 20,000).

- ``calibration``: ensembles of ``--members`` members (``finetune(..., ensemble=K)``) at 250 and 1,000 labels; on the
  test crystals, the ensemble's MAE against a single member's, the Spearman correlation between |error| and the
  uncertainty, and the fractions of crystals whose error is within 1 and 2 uncertainties (0.68 and 0.95 for a
  calibrated Gaussian), for the members' raw standard deviation and for the uncertainty that ``predict`` reports:
  the standard deviation times ``std_scale``, chosen on the validation crystals. Writes ``calibration.jsonl`` (with
  each crystal's error and uncertainty), ``calibration.md`` and ``calibration.png``.
- ``denoising``: ``finetune(..., denoising_weight=w)`` for w in ``--weights`` at 50 and 250 labels, 3 seeds; the best
  validation MAE of each run (the test crystals are not touched). Writes ``denoising.jsonl`` and ``denoising.md``.

Finished runs are kept in the JSONL files (run ledgers, ``matgl_cdssl.bench.Ledger``, keyed on each run's ``key``),
so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import matgl_cdssl  # on matgl 2.2.x this selects the DGL backend (before or after `import matgl`)

# isort: split
import argparse
import math
import time
from pathlib import Path

import numpy as np

from matgl_cdssl.apps import calibration, finetune, predict_all
from matgl_cdssl.bench import BenchmarkSettings, Ledger, load_task, task_splits

TASKS = ("mp_formation_energy", "perov_heat_ref")


def _ledger(path: Path) -> Ledger:
    """The finished runs recorded in ``path``, each found by its ``key``."""
    return Ledger(path, key=lambda record: record["key"])


def _data(task, split, n):
    test_s = task.test_structures if task.test_structures is not None else task.structures
    test_y = task.test_targets if task.test_structures is not None else task.targets
    pick = lambda values, idx: [values[int(i)] for i in idx]  # noqa: E731
    return {
        "structures": pick(task.structures, split["train"][n]),
        "targets": pick(task.targets, split["train"][n]),
        "val_structures": pick(task.structures, split["val"][n]),
        "val_targets": pick(task.targets, split["val"][n]),
        "test": (pick(test_s, split["test"]), np.asarray(pick(test_y, split["test"]), dtype=float)),
    }


def _options(settings: BenchmarkSettings, n: int, sample_budget: int) -> dict:
    """The fixed budget these results were measured with (matgl-cdssl 0.1's benchmark: lr 3e-3, about
    ``sample_budget`` training crystals seen per run, at most 200 epochs, patience a third of them)."""
    epochs = max(1, min(200, math.ceil(sample_budget / n)))
    return {
        "max_epochs": epochs,
        "patience": max(10, epochs // 3),
        "batch_size": settings.batch_size,
        "lr": 3e-3,
        "loss": settings.loss,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }


def run_calibration(args: argparse.Namespace, settings: BenchmarkSettings) -> None:
    done = _ledger(args.out / "calibration.jsonl")
    for name in TASKS:
        task = load_task(name)
        split = task_splits(task, (250, 1000), args.seed, settings)
        for n in (250, 1000):
            key = f"{name}/{n}/{args.seed}/{args.members}/scaled"
            if key in done:
                continue
            data = _data(task, split, n)
            test_s, test_y = data.pop("test")
            start = time.perf_counter()
            result = finetune(
                "CDSSL-MEGNet-MP",
                **data,
                ensemble=args.members,
                seed=args.seed,
                **_options(settings, n, args.sample_budget),
            )
            found = predict_all(result, test_s, skip_invalid=True)
            members = [predict_all(r, test_s, skip_invalid=True).mean for r in result.results]
            ok = np.isfinite(found.mean)
            record = {
                "key": key,
                "task": name,
                "unit": task.unit,
                "n_train": n,
                "seed": args.seed,
                "members": args.members,
                "n_test": int(ok.sum()),
                "member_test_MAE": [float(np.abs(m[ok] - test_y[ok]).mean()) for m in members],
                "std_scale": result.std_scale,
                **calibration(test_y[ok], found.mean[ok], found.std[ok]),
                **{
                    f"raw_{k}": v
                    for k, v in calibration(test_y[ok], found.mean[ok], found.std[ok] / result.std_scale).items()
                    if "within" in k
                },
                "abs_error": np.abs(found.mean[ok] - test_y[ok]).round(6).tolist(),
                "std": found.std[ok].round(6).tolist(),
                "epochs": [int(r.metrics["epochs"]) for r in result.results],
                "wall_s": round(time.perf_counter() - start, 1),
            }
            done.append(record)
            print(f"{key}: ensemble MAE {record['test_MAE']:.4f}, member MAE {np.mean(record['member_test_MAE']):.4f}")
    _calibration_report(args.out, list(done))


def _calibration_report(out: Path, records: list[dict]) -> None:
    lines = [
        "| task | labels | members | test crystals | ensemble MAE | single member MAE (mean ± SD) | change | "
        "Spearman(abs error, std) | std_scale (validation) | within 1 / 2 std, raw | within 1 / 2 std, scaled |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(records, key=lambda r: (r["task"], r["n_train"])):
        single = np.asarray(r["member_test_MAE"])
        lines.append(
            f"| {r['task']} ({r['unit']}) | {r['n_train']} | {r['members']} | {r['n_test']} | {r['test_MAE']:.4f} | "
            f"{single.mean():.4f} ± {single.std(ddof=1):.4f} | {100 * (r['test_MAE'] / single.mean() - 1):+.1f}% | "
            f"{r['test_spearman_error_std']:.2f} | {r['std_scale']:.2f} | "
            f"{r['raw_test_within_1_std']:.2f} / {r['raw_test_within_2_std']:.2f} | "
            f"{r['test_within_1_std']:.2f} / {r['test_within_2_std']:.2f} |"
        )
    lines += [
        "",
        "Within k std: the fraction of test crystals whose absolute error is at most k times the uncertainty; a "
        "calibrated Gaussian gives 0.68 and 0.95. Raw: the members' standard deviation (ddof=1); scaled: times "
        "std_scale, the factor that calibrates it on the validation crystals (what predict reports).",
    ]
    (out / "calibration.md").write_text("\n".join(lines) + "\n")
    _calibration_plot(out / "calibration.png", records)


def _calibration_plot(path: Path, records: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.special import erf

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ks = np.linspace(0, 3, 61)
    for r in sorted(records, key=lambda r: (r["task"], r["n_train"])):
        error, std = np.asarray(r["abs_error"]), np.asarray(r["std"])  # the scaled uncertainty
        order = np.argsort(std)
        bins = np.array_split(order, 10)  # deciles of the predicted spread
        label = f"{r['task']}, {r['n_train']} labels"
        axes[0].plot([std[b].mean() for b in bins], [error[b].mean() for b in bins], "o-", label=label)
        axes[1].plot(ks, [np.mean(error <= k * std) for k in ks], label=label)
    top = max(axes[0].get_xlim()[1], axes[0].get_ylim()[1])
    axes[0].plot([0, top], [0, top * np.sqrt(2 / np.pi)], "k--", lw=1, label="calibrated Gaussian")
    axes[0].set(xlabel="uncertainty: scaled members' std (decile mean)", ylabel="mean absolute error (decile)")
    axes[1].plot(ks, erf(ks / np.sqrt(2)), "k--", lw=1, label="calibrated Gaussian")
    axes[1].set(xlabel="k", ylabel="fraction with |error| <= k std")
    for ax in axes:
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle("Ensemble uncertainty on held-out test crystals")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run_denoising(args: argparse.Namespace, settings: BenchmarkSettings) -> None:
    done = _ledger(args.out / "denoising.jsonl")
    for name in TASKS:
        task = load_task(name)
        for seed in (0, 1, 2):
            split = task_splits(task, (50, 250), seed, settings)
            for n in (50, 250):
                data = _data(task, split, n)
                data.pop("test")  # validation only
                for weight in args.weights:
                    key = f"{name}/{n}/{seed}/{weight}"
                    if key in done:
                        continue
                    start = time.perf_counter()
                    result = finetune("CDSSL-MEGNet-MP", **data, denoising_weight=weight, seed=seed,
                                      **_options(settings, n, args.sample_budget))  # fmt: skip
                    record = {
                        "key": key,
                        "task": name,
                        "unit": task.unit,
                        "n_train": n,
                        "seed": seed,
                        "weight": weight,
                        **result.metrics,
                        "wall_s": round(time.perf_counter() - start, 1),
                    }
                    done.append(record)
                    print(f"{key}: best validation MAE {record['best_val_MAE']:.4f}")
    _denoising_report(args.out, list(done))


def _denoising_report(out: Path, records: list[dict]) -> None:
    import pandas as pd

    frame = pd.DataFrame(records)
    lines = [
        "| task | labels | denoising weight | best validation MAE (mean ± SE, 3 seeds) | change vs 0 | seeds better |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for (task, n), group in frame.groupby(["task", "n_train"]):
        wide = group.pivot_table(index="seed", columns="weight", values="best_val_MAE")
        base = wide[0.0]
        for weight in wide.columns:
            values = wide[weight]
            se = values.std(ddof=1) / np.sqrt(len(values))
            change = "" if weight == 0 else f"{100 * (values.mean() / base.mean() - 1):+.1f}%"
            better = "" if weight == 0 else f"{int((values < base).sum())} of {len(values)}"
            unit = group["unit"].iloc[0]
            lines.append(
                f"| {task} ({unit}) | {n} | {weight:g} | {values.mean():.4f} ± {se:.4f} | {change} | {better} |"
            )
    (out / "denoising.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("calibration", "denoising"))
    parser.add_argument("--out", type=Path, default=Path("docs/results/predict"))
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.1, 1.0])
    parser.add_argument("--sample-budget", type=int, default=10_000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    settings = BenchmarkSettings()  # its validation-set rule; the budget is _options'
    print(f"matgl-cdssl {matgl_cdssl.__version__}, backend {matgl_cdssl.BACKEND}; {settings}")
    (run_calibration if args.what == "calibration" else run_denoising)(args, settings)


if __name__ == "__main__":
    main()
