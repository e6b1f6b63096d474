"""``convergence.md``: the convergence and extension checks, judged on validation MAE alone.

Each check compares a run at the chosen budget with the same run at twice it. What could change a setting (the 3%
criterion) reads the best validation MAE of the two runs; their test MAE is listed as information only, so that no
decision rests on test data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["CRITERION", "EXTENSION_HEADING", "checks_markdown"]

#: The largest change of the best validation MAE at twice the budget that counts as converged.
CRITERION = 0.03

EXTENSION_HEADING = "## Extension: twice the patience and the epoch cap, the same schedule"
"""The heading of ``convergence.md``'s second table (``check_extension``)."""


def checks_markdown(convergence: Sequence[tuple[dict, dict]], extension: Sequence[tuple[dict, dict]]) -> str:
    """``convergence.md``: a table per check that has pairs (the extension's under :data:`EXTENSION_HEADING`)."""
    parts = [_check_markdown(convergence)] if convergence else []
    if extension:
        parts.append(f"{EXTENSION_HEADING}\n\n{_check_markdown(extension)}")
    return "\n".join(parts)


def _groups(pairs: Sequence[tuple[dict, dict]]) -> dict[tuple, list[tuple[dict, dict]]]:
    """The pairs by (task, n_train, arm), in order."""
    groups: dict[tuple, list[tuple[dict, dict]]] = {}
    for base, twice in pairs:
        groups.setdefault((base["task"], base["n_train"], base["arm"]), []).append((base, twice))
    return groups


def _means(groups: dict[tuple, list[tuple[dict, dict]]], metric: str) -> dict[tuple, list[float]]:
    """The mean of ``metric`` over the seeds checked, at each budget, per (task, n_train, arm)."""
    return {key: [float(np.mean([pair[k][metric] for pair in group])) for k in (0, 1)] for key, group in groups.items()}


def _check_markdown(pairs: Sequence[tuple[dict, dict]]) -> str:
    """Each run against the same run at twice the budget, and the mean over seeds where several were checked.

    The criterion reads the change of the best validation MAE (of the mean over the seeds where several were
    checked, else of the run); the test MAE is shown for information. What "twice the budget" doubles is read off
    the pairs: the patience and the cap, and the schedule's patience too unless the pairs are the extension's.
    """
    lines = ["| task | n_train | arm | seed | best val MAE | best val MAE, twice the budget | change (validation) | "
             "test MAE (information) | test MAE, twice the budget | epochs (best / run) | epochs at twice the budget |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---|---|"]  # fmt: skip
    groups = _groups(pairs)
    val, test = _means(groups, "best_val_MAE"), _means(groups, "test_MAE")
    worst_run = 0.0
    for key, group in groups.items():
        for base, twice in group:
            change = twice["best_val_MAE"] / base["best_val_MAE"] - 1
            worst_run = max(worst_run, abs(change))
            lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {base['seed']} | {base['best_val_MAE']:.4f} | "
                         f"{twice['best_val_MAE']:.4f} | {100 * change:+.1f}% | {base['test_MAE']:.4f} | "
                         f"{twice['test_MAE']:.4f} | {base['best_epoch']} / {base['epochs_run']} | "
                         f"{twice['best_epoch']} / {twice['epochs_run']} |")  # fmt: skip
        if len(group) > 1:
            (mean, mean_twice), (t, t_twice) = val[key], test[key]
            lines.append(
                f"| {key[0]} | {key[1]} | {key[2]} | **mean of {len(group)}** | {mean:.4f} | "
                f"{mean_twice:.4f} | **{100 * (mean_twice / mean - 1):+.1f}%** | {t:.4f} | {t_twice:.4f} | | |"
            )
    seeds = {key: len(group) for key, group in groups.items()}
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
    change = {key: abs(twice / base - 1) for key, (base, twice) in val.items()}
    judged = max(change.values())
    several = {n > 1 for n in seeds.values()}
    worst_mean = max((change[key] for key, n in seeds.items() if n > 1), default=0.0)
    largest = f"Largest change of the best validation MAE of a single run: {100 * worst_run:.2f}%"
    if several == {True}:
        largest += f"; of a mean over seeds: {100 * worst_mean:.2f}%"
    elif True in several:  # some tasks checked with several seeds, others with one
        largest += (f"; of a mean over seeds: {100 * worst_mean:.2f}%; of what the criterion judges (the mean where "
                    f"several seeds were checked, else the run): {100 * judged:.2f}%")  # fmt: skip
    verdict = "below" if judged < CRITERION else "NOT below"
    lines += [
        "",
        f"Budget: early stopping after {base['patience']} epochs without improvement, at most "
        f"{base['max_epochs']} epochs, {schedule}; twice the budget doubles {doubles}. {largest} ({verdict} "
        f"the {100 * CRITERION:.0f}% criterion, judged on validation data; the test MAE is information only).",
    ]
    return "\n".join(lines + _versus_scratch(test)) + "\n"


def _versus_scratch(means: dict[tuple, list[float]]) -> list[str]:
    """Each arm against scratch (mean test MAE over the seeds checked) at the chosen budget and both at twice it."""
    rows = []
    for (task, n, arm), (base, twice) in means.items():
        scratch = means.get((task, n, "scratch"))
        if arm != "scratch" and scratch is not None:
            rows.append(f"| {task} | {n} | {arm} | {100 * (base / scratch[0] - 1):+.1f}% | "
                        f"{100 * (twice / scratch[1] - 1):+.1f}% |")  # fmt: skip
    if not rows:
        return []
    return ["", "Information only (test MAE, no decision rests on it): each arm against scratch (mean over the seeds "
            "checked) at the chosen budget, and with both at twice the budget: a verdict that holds at twice the "
            "budget does not rest on under-trained runs.", "",
            "| task | n_train | arm | vs scratch | vs scratch, both at twice the budget |", "|---|---:|---|---:|---:|",
            *rows]  # fmt: skip
