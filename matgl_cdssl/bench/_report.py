"""The benchmark's report: ``runs.csv``, ``results.md`` (mean ± standard error), ``convergence.md`` and ``results.png``.

Everything here is written from run records alone (the ledger's), so a report is rewritten from ``runs.jsonl``
without training anything.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from matgl_cdssl.bench._curves import COLORS
from matgl_cdssl.bench._protocol import SUPERVISED, SUPERVISED_LEAKS

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd

__all__ = ["EXTENSION_HEADING", "LEARNED", "BenchmarkResult", "report", "summarise"]

logger = logging.getLogger(__name__)


@dataclass
class BenchmarkResult:
    """What :func:`~matgl_cdssl.bench.benchmark` returns.

    Attributes:
        runs: One row per run (task, n_train, seed, arm, test_MAE, ...).
        table: The markdown summary (see :func:`report`).
        paths: Files written: ``runs_csv``, ``table_md`` and ``figure_png``.
    """

    runs: pd.DataFrame
    table: str
    paths: dict[str, Path] = field(default_factory=dict)


def report(
    runs: Sequence[dict] | pd.DataFrame,
    output_dir: str | Path,
    *,
    left_out: Sequence[tuple[str, str, str]] = (),
    selection: Sequence[dict] = (),
    convergence: Sequence[tuple[dict, dict]] = (),
    extension: Sequence[tuple[dict, dict]] = (),
) -> BenchmarkResult:
    """Summarise runs into ``runs.csv``, ``results.md`` (mean ± standard error) and ``results.png``.

    Args:
        runs: Run records as written by :func:`~matgl_cdssl.bench.benchmark`.
        output_dir: Where to write.
        left_out: ``(task, crystal, reason)`` of each crystal left out under ``skip_invalid``, listed in the table.
        selection: The learning-rate selection's runs (with ``chosen``), tabulated in ``results.md``.
        convergence: ``(run, the same run with twice the budget)`` pairs, tabulated in ``convergence.md``.
        extension: ``(run, the same run with twice the patience and cap, the same schedule)`` pairs, a second table
            in ``convergence.md``.

    Returns:
        A :class:`BenchmarkResult`.
    """
    import pandas as pd

    output_dir = Path(output_dir)
    frame = pd.DataFrame(list(runs) if not isinstance(runs, pd.DataFrame) else runs)
    frame = frame.sort_values(["task", "n_train", "seed", "arm"]).reset_index(drop=True)
    paths = {"runs_csv": output_dir / "runs.csv", "table_md": output_dir / "results.md"}
    frame.to_csv(paths["runs_csv"], index=False)
    summary = summarise(frame)
    table = _markdown(summary)
    if left_out:
        table += f"\n{len(left_out)} invalid crystal(s) left out (skip_invalid):\n\n"
        table += "".join(f"- {task}: {name} {reason}\n" for task, name, reason in left_out)
    if selection:
        table += "\n" + _selection_markdown(pd.DataFrame(list(selection)))
    if convergence or extension:
        paths["convergence_md"] = output_dir / "convergence.md"
        parts = [_convergence_markdown(convergence)] if convergence else []
        if extension:
            parts.append(f"{EXTENSION_HEADING}\n\n{_convergence_markdown(extension)}")
        paths["convergence_md"].write_text("\n".join(parts))
    paths["table_md"].write_text(table)
    try:
        if len(summary):  # a benchmark of scratch alone compares nothing: no figure
            paths["figure_png"] = _plot(summary, output_dir / "results.png")
    except ImportError:
        logger.warning("matplotlib is not installed: no results.png (pip install matplotlib)")
    return BenchmarkResult(frame, table, paths)


def _selection_markdown(frame: pd.DataFrame) -> str:
    """Each (task, arm): the validation MAE of every candidate rate at the tuning sizes, the chosen one in bold."""
    import pandas as pd

    frame = frame.assign(rate=[f"{lr:g}" + ("" if pd.isna(b) else f" / {b:g}") for lr, b in
                               zip(frame["lr"], frame["backbone_lr"], strict=True)])  # fmt: skip
    lines = ["Learning rates chosen on validation data (first seed; rate / backbone rate: validation MAE at each "
             "tuning size; chosen in bold, the lowest geometric mean):", "",
             "| task | arm | candidates |", "|---|---|---|"]  # fmt: skip
    for (task, arm), group in frame.groupby(["task", "arm"], sort=False):
        cells = []
        for rate, part in group.groupby("rate", sort=False):
            text = f"{rate}: " + ", ".join(f"{v:.4g} (n={n})" for n, v in zip(part["n_train"], part["best_val_MAE"],
                                                                                strict=True))  # fmt: skip
            cells.append(f"**{text}**" if part["chosen"].all() else text)
        lines.append(f"| {task} | {arm} | {'; '.join(cells)} |")
    return "\n".join(lines) + "\n"


EXTENSION_HEADING = "## Extension: twice the patience and the epoch cap, the same schedule"
"""The heading of ``convergence.md``'s second table (``check_extension``)."""


def _convergence_markdown(pairs: Sequence[tuple[dict, dict]]) -> str:
    """Each run at the chosen budget against the same run at twice the budget, and the mean over seeds if several.

    What "twice the budget" doubles is read off the pairs: the patience and the cap, and the schedule's patience
    too unless the pairs come from :meth:`BenchmarkSettings.extended`.
    """
    lines = ["| task | n_train | arm | seed | test MAE | test MAE, twice the budget | change | epochs (best / run) | "
             "epochs at twice the budget |", "|---|---:|---|---|---:|---:|---:|---|---|"]  # fmt: skip
    groups: dict[tuple, list[tuple[dict, dict]]] = {}
    for base, twice in pairs:
        groups.setdefault((base["task"], base["n_train"], base["arm"]), []).append((base, twice))
    means = {key: [float(np.mean([pair[k]["test_MAE"] for pair in group])) for k in (0, 1)]
             for key, group in groups.items()}  # fmt: skip
    worst_run = 0.0
    for (task, n, arm), group in groups.items():
        for base, twice in group:
            change = twice["test_MAE"] / base["test_MAE"] - 1
            worst_run = max(worst_run, abs(change))
            lines.append(f"| {task} | {n} | {arm} | {base['seed']} | {base['test_MAE']:.4f} | "
                         f"{twice['test_MAE']:.4f} | {100 * change:+.1f}% | {base['best_epoch']} / "
                         f"{base['epochs_run']} | {twice['best_epoch']} / {twice['epochs_run']} |")  # fmt: skip
        if len(group) > 1:
            mean, mean_twice = means[task, n, arm]
            lines.append(f"| {task} | {n} | {arm} | **mean of {len(group)}** | {mean:.4f} | {mean_twice:.4f} | "
                         f"**{100 * (mean_twice / mean - 1):+.1f}%** | | |")  # fmt: skip
    base, twice = pairs[0]
    if not base.get("lr_patience"):
        schedule, doubles = "cosine decay over the cap", "both"
    else:
        schedule = f"rates halved after {base['lr_patience']} epochs without improvement"
        doubles = (
            "all three"
            if twice["lr_patience"] != base["lr_patience"]
            else "the patience and the cap, not the schedule: the longer run repeats the shorter one and goes on"
        )
    # The criterion judges the mean where several seeds were checked, else the run: the "mean" of a single run.
    change = {key: abs(twice / base - 1) for key, (base, twice) in means.items()}
    judged = max(change.values())
    worst_mean = max((change[key] for key, group in groups.items() if len(group) > 1), default=0.0)
    several = {len(group) > 1 for group in groups.values()}
    largest = f"Largest change of a single run: {100 * worst_run:.2f}%"
    if several == {True}:
        largest += f"; of a mean over seeds: {100 * worst_mean:.2f}%"
    elif True in several:  # some tasks checked with several seeds, others with one
        largest += (f"; of a mean over seeds: {100 * worst_mean:.2f}%; of what the criterion judges (the mean where "
                    f"several seeds were checked, else the run): {100 * judged:.2f}%")  # fmt: skip
    verdict = "below" if judged < 0.03 else "NOT below"
    lines += ["", f"Budget: early stopping after {base['patience']} epochs without improvement, at most "
              f"{base['max_epochs']} epochs, {schedule}; twice the budget doubles {doubles}. {largest} ({verdict} "
              "the 3% criterion)."]  # fmt: skip
    return "\n".join(lines + _verdict_at_twice_the_budget(means)) + "\n"


def _verdict_at_twice_the_budget(means: dict[tuple, list[float]]) -> list[str]:
    """Each arm against scratch at the chosen budget and with both at twice the budget.

    ``means``: the mean test MAE over the seeds checked, at each budget, per (task, n_train, arm).
    """
    rows = []
    for (task, n, arm), (base, twice) in means.items():
        scratch = means.get((task, n, "scratch"))
        if arm != "scratch" and scratch is not None:
            rows.append(f"| {task} | {n} | {arm} | {100 * (base / scratch[0] - 1):+.1f}% | "
                        f"{100 * (twice / scratch[1] - 1):+.1f}% |")  # fmt: skip
    if not rows:
        return []
    return ["", "Each arm against scratch (mean test MAE over the seeds checked) at the chosen budget, and with both "
            "at twice the budget: a verdict that holds at twice the budget does not rest on under-trained runs.", "",
            "| task | n_train | arm | vs scratch | vs scratch, both at twice the budget |", "|---|---:|---|---:|---:|",
            *rows]  # fmt: skip


def _arm_order(arms: Sequence[str]) -> list[str]:
    """The arms in table order: CDSSL, supervised, any others, scratch last."""
    first = [a for a in ("CDSSL", "supervised") if a in arms]
    return [
        *first,
        *sorted(a for a in arms if a not in (*first, "scratch")),
        *(["scratch"] if "scratch" in arms else []),
    ]


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (task, n_train): mean and standard error of the test MAE of each arm, and the relative changes.

    ``change`` is CDSSL against scratch, ``change_<arm>`` any other arm against scratch, and ``CDSSL_vs_supervised``
    CDSSL against supervised transfer; ``leakage`` marks the tasks whose labels the supervised arm was trained on.
    Only seeds that finished every arm are counted, so that the arms are always compared on the same splits.
    """
    import pandas as pd

    rows = []
    for (task, n), group in frame.groupby(["task", "n_train"], sort=True):
        wide = group.pivot_table(index="seed", columns="arm", values="test_MAE").dropna()
        arms = _arm_order(list(wide.columns))
        if wide.empty or "scratch" not in arms or len(arms) < 2:
            continue
        row = {"task": task, "unit": group["unit"].iloc[0], "n_train": int(n), "seeds": len(wide)}
        for arm in arms:
            values = wide[arm].to_numpy()
            row[f"{arm}_mean"] = float(values.mean())
            row[f"{arm}_se"] = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")
        for arm in arms[:-1]:
            row["change" if arm == "CDSSL" else f"change_{arm}"] = row[f"{arm}_mean"] / row["scratch_mean"] - 1
        if "CDSSL" in arms and "supervised" in arms:
            row["CDSSL_vs_supervised"] = row["CDSSL_mean"] / row["supervised_mean"] - 1
        row["leakage"] = "supervised" in arms and task in SUPERVISED_LEAKS
        if "median_MAE" in group:
            row["median_MAE"] = float(group.drop_duplicates("seed")["median_MAE"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def _pm(mean: float, se: float) -> str:
    """``mean ± se``, or the mean alone when there is no standard error (one seed)."""
    return f"{mean:.4f}" if math.isnan(se) else f"{mean:.4f} ± {se:.4f}"


LEARNED = 0.95
"""A configuration counts as learned when the better arm's MAE is below this fraction of the median predictor's."""


def _markdown(summary: pd.DataFrame) -> str:
    if summary.empty:
        return "No configuration to compare: every comparison needs scratch and at least one other arm (runs.csv).\n"
    trivial = "median_MAE" in summary
    arms = _arm_order([c[: -len("_mean")] for c in summary.columns if c.endswith("_mean")])
    others = [a for a in arms if a not in ("CDSSL", "scratch", "supervised")]
    versus = "CDSSL_vs_supervised" in summary
    header = ["task", "n_train", "seeds", *(f"{a} test MAE" for a in arms)]
    header += [f"{a} vs scratch" for a in arms if a != "scratch"] + (["CDSSL vs supervised"] if versus else [])
    header += ["median predictor"] if trivial else []
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for r in summary.to_dict("records"):
        leak = " †" if r.get("leakage") else ""
        cells = [f"{r['task']} ({r['unit']}){leak}", str(r["n_train"]), str(r["seeds"])]
        cells += [_pm(r[f"{a}_mean"], r[f"{a}_se"]) for a in arms]
        cells += [f"{100 * r['change' if a == 'CDSSL' else f'change_{a}']:+.1f}%" for a in arms if a != "scratch"]
        cells += [f"{100 * r['CDSSL_vs_supervised']:+.1f}%"] if versus else []
        cells += [f"{r['median_MAE']:.4f}"] if trivial else []
        lines.append("| " + " | ".join(cells) + " |")
    if len(summary) and "change" in summary:
        wins = int((summary["change"] < 0).sum())
        small = summary[summary["n_train"] <= 250]
        lines += [
            "",
            f"CDSSL wins {wins} of {len(summary)} configurations against scratch ({100 * wins / len(summary):.0f}%).",
            f"Mean change in test MAE, all configurations: {100 * summary['change'].mean():+.1f}%; "
            + (f"at 250 labels or fewer: {100 * small['change'].mean():+.1f}%." if len(small) else ""),
        ]
        if versus:
            fair = summary[~summary["leakage"].astype(bool)]
            n_won = int((fair["CDSSL_vs_supervised"] < 0).sum())
            lines.append(
                f"CDSSL wins {n_won} of {len(fair)} configurations against supervised transfer (rows marked † left "
                "out: the supervised arm was trained on those labels)."
            )
        if trivial:
            best = summary[[f"{a}_mean" for a in arms]].min(axis=1)
            learned = summary[best < LEARNED * summary["median_MAE"]]
            n_won = int((learned["change"] < 0).sum())
            lines.append(
                f"Where a model learned something (the best arm at least {100 * (1 - LEARNED):.0f}% below the median "
                f"predictor): CDSSL wins {n_won} of {len(learned)}"
                + (f"; mean change {100 * learned['change'].mean():+.1f}%." if len(learned) else ".")
            )
        lines += [
            "",
            "Mean ± standard error over seeds; change = arm mean / scratch mean - 1 (negative: the arm is better)."
            + (" Median predictor: the test MAE of predicting the training labels' median." if trivial else "")
            + (
                f" †: leakage, the supervised arm ({SUPERVISED}) was trained on Materials Project formation energies."
                if versus and summary["leakage"].any()
                else ""
            )
            + (f" Other arms: {', '.join(others)}." if others else ""),
        ]
    return "\n".join(lines) + "\n"


def _plot(summary: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(summary["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        part = summary[summary["task"] == task]
        x = np.arange(len(part))
        arms = _arm_order([c[: -len("_mean")] for c in part.columns if c.endswith("_mean") and part[c].notna().any()])
        width = 0.8 / len(arms)
        for k, arm in enumerate(arms):
            ax.bar(x + (k - (len(arms) - 1) / 2) * width, part[f"{arm}_mean"], width, capsize=2,
                   yerr=part[f"{arm}_se"].fillna(0), color=COLORS.get(arm), label=arm)  # fmt: skip
        if "median_MAE" in part:
            ax.plot(x, part["median_MAE"], "k_", markersize=18, mew=1.5, label="median predictor")
        ax.set_xticks(x, [str(n) for n in part["n_train"]])
        ax.set_xlabel("training labels")
        ax.set_title(task, fontsize=10)
        ax.set_ylabel(f"test MAE ({part['unit'].iloc[0]})")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
