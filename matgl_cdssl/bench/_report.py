"""The benchmark's report: ``runs.csv``, ``results.md`` (mean ± standard error), ``convergence.md`` and ``results.png``.

Everything here is written from run records alone (the ledger's), so a report is rewritten from ``runs.jsonl``
without training anything. ``results.md`` opens with the protocol, its settings and the day it was frozen, and
tells wins from noise: every pair of arms, per configuration, by a paired interval over the seeds
(:mod:`~matgl_cdssl.bench._paired`), leaving out the arms whose weights saw a task's labels. Under the 0.4 settings
it keeps 0.4's layout ("CDSSL wins N of M"), so that the 0.4 report rebuilds byte for byte from its cache.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from matgl_cdssl.bench._checks import checks_markdown
from matgl_cdssl.bench._curves import COLORS
from matgl_cdssl.bench._paired import WIDE, arm_order, paired, paired_markdown
from matgl_cdssl.bench._protocol import PROTOCOL_DATES, PROTOCOLS, SUPERVISED, BenchmarkSettings
from matgl_cdssl.bench._tasks import leaks
from matgl_cdssl.hub import labels_seen

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import pandas as pd

__all__ = ["LEARNED", "BenchmarkResult", "report", "summarise"]

logger = logging.getLogger(__name__)


@dataclass
class BenchmarkResult:
    """What :func:`~matgl_cdssl.bench.benchmark` returns.

    Attributes:
        runs: One row per run of the table (task, n_train, seed, arm, test_MAE, ...).
        table: The markdown summary (see :func:`report`).
        paths: Files written: ``runs_csv``, ``table_md``, ``figure_png`` and, from :func:`benchmark`, ``all_runs_csv``
            and ``convergence_md``.
        used: Every run the report rests on, once, with the step that first needed it (``step``: ``tuning``, the rate
            choice and any step beyond a grid's edge; ``curve``, the table's runs; ``convergence``; ``extension``),
            as ``all_runs.csv``: with the ledgers of two calls, which runs one reused from the other.
    """

    runs: pd.DataFrame
    table: str
    paths: dict[str, Path] = field(default_factory=dict)
    used: pd.DataFrame | None = None


def report(
    runs: Sequence[dict] | pd.DataFrame,
    output_dir: str | Path,
    *,
    left_out: Sequence[tuple[str, str, str]] = (),
    selection: Sequence[dict] = (),
    convergence: Sequence[tuple[dict, dict]] = (),
    extension: Sequence[tuple[dict, dict]] = (),
    settings: BenchmarkSettings | None = None,
    seen: Mapping[str, Sequence[str] | None] | None = None,
    widened: Sequence[tuple[str, int]] = (),
    used: Sequence[dict] = (),
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
        settings: The protocol's settings, written at the head of ``results.md`` (the 0.4 protocol's: its layout).
        seen: Each arm's labels seen (:func:`~matgl_cdssl.hub.labels_seen`); None: read off the runs' ``model``.
        widened: The ``(task, n_train)`` that got more seeds because a paired interval was wide, named in the table.
        used: Every run the report rests on, with its ``step`` (:attr:`BenchmarkResult.used`), written to
            ``all_runs.csv``.

    Returns:
        A :class:`BenchmarkResult`.
    """
    import pandas as pd

    output_dir = Path(output_dir)
    frame = pd.DataFrame(list(runs) if not isinstance(runs, pd.DataFrame) else runs)
    frame = frame.sort_values(["task", "n_train", "seed", "arm"]).reset_index(drop=True)
    paths = {"runs_csv": output_dir / "runs.csv", "table_md": output_dir / "results.md"}
    frame.to_csv(paths["runs_csv"], index=False)
    seen = _seen_by_records(frame) if seen is None else seen
    summary = summarise(frame, seen)
    legacy = settings is not None and settings.protocol == "0.4"
    table = ("" if settings is None or legacy else _header(settings)) + _markdown(summary, seen, legacy=legacy)
    table += "" if legacy or summary.empty else paired_markdown(paired(frame, seen))
    if widened:
        counts = frame.groupby(["task", "n_train"])["seed"].nunique()
        table += (f"\nMore seeds where a paired interval was wider than ±{100 * WIDE:.0f} points after its seeds ran "
                  "(`more_seeds`: the widths decide, never which arm leads; every arm alike): "
                  + "; ".join(f"{task} {n} ({counts[task, n]} seeds)" for task, n in widened) + ".\n")  # fmt: skip
    if left_out:
        table += f"\n{len(left_out)} invalid crystal(s) left out (skip_invalid):\n\n"
        table += "".join(f"- {task}: {name} {reason}\n" for task, name, reason in left_out)
    if selection:
        table += "\n" + _selection_markdown(pd.DataFrame(list(selection)))
    if convergence or extension:
        paths["convergence_md"] = output_dir / "convergence.md"
        paths["convergence_md"].write_text(checks_markdown(convergence, extension))
    paths["table_md"].write_text(table)
    every = pd.DataFrame(list(used)) if used else None
    if every is not None:
        paths["all_runs_csv"] = output_dir / "all_runs.csv"
        every.to_csv(paths["all_runs_csv"], index=False)
    try:
        if len(summary):  # a benchmark of scratch alone compares nothing: no figure
            paths["figure_png"] = _plot(summary, output_dir / "results.png")
    except ImportError:
        logger.warning("matplotlib is not installed: no results.png (pip install matplotlib)")
    return BenchmarkResult(frame, table, paths, every)


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
            text += " (beyond the edge)" if part.get("beyond", pd.Series([False])).any() else ""
            cells.append(f"**{text}**" if part["chosen"].all() else text)
        lines.append(f"| {task} | {arm} | {'; '.join(cells)} |")
    if "beyond" in frame and frame["beyond"].any():
        where = frame[frame["beyond"]].drop_duplicates(["task", "arm"])
        lines += [
            "",
            "The choice sat at the edge of its grid, so one step beyond that edge was tried, by the same "
            "rule: " + "; ".join(f"{t} {a}" for t, a in zip(where["task"], where["arm"], strict=True)) + ".",
        ]
    return "\n".join(lines) + "\n"


def _header(settings: BenchmarkSettings) -> str:
    """The protocol, the day it was frozen and every setting, so that the report says under what rule it was made."""
    named = PROTOCOLS.get(settings.protocol)
    what = f"protocol {settings.protocol}" + ("" if settings == named else " with other settings")
    values = ", ".join(f"{f.name}={getattr(settings, f.name)!r}" for f in fields(settings))
    grids = {kind: len(settings.grid(pretrained=kind == "pretrained")) for kind in ("pretrained", "scratch")}
    return (
        f"# Benchmark, {what}\n\nThe protocol {settings.protocol} was frozen on "
        f"{PROTOCOL_DATES.get(settings.protocol, 'an unrecorded day')}, before any of its test numbers was looked "
        "at; every choice (rates, grid edges, the checks' criteria) is made on validation data. Settings: "
        f"{values}. Candidates per arm: {grids['pretrained']} for a pretrained arm, {grids['scratch']} for "
        "scratch (before any step beyond an edge).\n\n"
    )


def _seen_by_records(frame: pd.DataFrame) -> dict[str, tuple[str, ...] | None]:
    """Each arm's labels seen, read off the ``model`` its runs record (scratch uses no weights: none)."""
    models = frame.drop_duplicates("arm").set_index("arm")["model"] if "model" in frame else {}
    return {arm: () if arm == "scratch" else labels_seen(str(models[arm])) if arm in models else None
            for arm in frame["arm"].unique()}  # fmt: skip


def summarise(frame: pd.DataFrame, seen: Mapping[str, Sequence[str] | None] | None = None) -> pd.DataFrame:
    """Per (task, n_train): mean and standard error of the test MAE of each arm, and the relative changes.

    ``change`` is CDSSL against scratch, ``change_<arm>`` any other arm against scratch, and ``CDSSL_vs_supervised``
    CDSSL against supervised transfer; ``leakage`` names the arms whose weights saw the task's labels (``seen``, each
    arm's :func:`~matgl_cdssl.hub.labels_seen`; None: read off the runs' ``model``), empty if none.
    Only seeds that finished every arm are counted, so that the arms are always compared on the same splits.
    """
    import pandas as pd

    seen = _seen_by_records(frame) if seen is None else seen
    rows = []
    for (task, n), group in frame.groupby(["task", "n_train"], sort=True):
        wide = group.pivot_table(index="seed", columns="arm", values="test_MAE").dropna()
        arms = arm_order(list(wide.columns))
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
        row["leakage"] = ", ".join(arm for arm in arms if leaks(task, seen.get(arm)))
        if "median_MAE" in group:
            row["median_MAE"] = float(group.drop_duplicates("seed")["median_MAE"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def _pm(mean: float, se: float) -> str:
    """``mean ± se``, or the mean alone when there is no standard error (one seed)."""
    return f"{mean:.4f}" if math.isnan(se) else f"{mean:.4f} ± {se:.4f}"


LEARNED = 0.95
"""A configuration counts as learned when the better arm's MAE is below this fraction of the median predictor's."""


def _markdown(summary: pd.DataFrame, seen: Mapping[str, Sequence[str] | None], *, legacy: bool) -> str:
    """The table of means, and under ``legacy`` (the 0.4 layout) its "CDSSL wins N of M" lines."""
    if summary.empty:
        return "No configuration to compare: every comparison needs scratch and at least one other arm (runs.csv).\n"
    trivial = "median_MAE" in summary
    arms = arm_order([c[: -len("_mean")] for c in summary.columns if c.endswith("_mean")])
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
    if not legacy:
        return "\n".join(lines + _notes(summary, seen, arms, trivial)) + "\n"
    if "change" in summary:
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


def _notes(summary: pd.DataFrame, seen: Mapping[str, Sequence[str] | None], arms: Sequence[str],
           trivial: bool) -> list[str]:  # fmt: skip
    """What the table's numbers are, which rows leak and where no arm learned anything (the 0.5 layout)."""
    notes = ["", "Mean ± standard error of the test MAE over seeds; change = arm mean / scratch mean - 1 (negative: "
             "the arm is better)." + (" Median predictor: the test MAE of predicting the training labels' median."
                                  if trivial else "")]  # fmt: skip
    leaking = {arm: seen[arm] for arm in arms if seen.get(arm)}
    if leaking:
        notes.append("†: leakage, an arm's weights saw the task's labels ("
                     + "; ".join(f"{arm}: {', '.join(labels)}" for arm, labels in leaking.items())
                     + "); its comparisons there are left out of every count below.")  # fmt: skip
    unknown = [arm for arm in arms if seen.get(arm, None) is None and arm != "scratch"]
    if unknown:
        notes.append(f"The labels that the weights of {', '.join(unknown)} saw are not recorded (no model card or "
                     "labels_seen in cdssl.json): their rows are not checked for leakage.")  # fmt: skip
    if trivial:
        best = summary[[f"{a}_mean" for a in arms]].min(axis=1)
        missed = summary[~(best < LEARNED * summary["median_MAE"])]
        notes.append(f"No arm at least {100 * (1 - LEARNED):.0f}% below the median predictor (nothing learned): "
                     + ("; ".join(f"{t} {n}" for t, n in zip(missed["task"], missed["n_train"], strict=True)) or "none")
                     + ".")  # fmt: skip
    return notes


LEAKAGE_HATCH = "//"
"""How ``results.png`` marks the bar of an arm whose weights saw the task's labels (it is out of every count)."""


def _figure(summary: pd.DataFrame):
    """Grouped bars per task (one panel each), standard-error bars, the median predictor; leakage bars hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    tasks = list(dict.fromkeys(summary["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.4), squeeze=False)
    handles: dict = {}
    for ax, task in zip(axes[0], tasks, strict=True):
        part = summary[summary["task"] == task]
        x = np.arange(len(part))
        arms = arm_order([c[: -len("_mean")] for c in part.columns if c.endswith("_mean") and part[c].notna().any()])
        leaked = part["leakage"].str.split(", ")
        width = 0.8 / len(arms)
        for k, arm in enumerate(arms):
            bars = ax.bar(x + (k - (len(arms) - 1) / 2) * width, part[f"{arm}_mean"], width, capsize=2,
                          yerr=part[f"{arm}_se"].fillna(0), color=COLORS.get(arm), label=arm)  # fmt: skip
            handles.setdefault(arm, bars)
            for bar, names in zip(bars, leaked, strict=True):
                if arm in names:
                    bar.set_hatch(LEAKAGE_HATCH)
                    bar.set_alpha(0.5)
        if "median_MAE" in part:
            (handles["median predictor"],) = ax.plot(x, part["median_MAE"], "k_", markersize=18, mew=1.5)
        ax.set_xticks(x, [str(n) for n in part["n_train"]])
        ax.set_xlabel("training labels")
        ax.set_title(task, fontsize=10)
        ax.set_ylabel(f"test MAE ({part['unit'].iloc[0]})")
    if summary["leakage"].astype(bool).any():
        handles["saw the task's labels (leakage)"] = Patch(facecolor="white", edgecolor="black", hatch=LEAKAGE_HATCH)
    fig.legend(list(handles.values()), list(handles), loc="upper right", ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return fig


def _plot(summary: pd.DataFrame, path: Path) -> Path:
    fig = _figure(summary)  # selects the Agg backend before pyplot is imported
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
