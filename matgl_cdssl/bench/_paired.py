"""Wins told from noise: every pair of arms compared per configuration by a paired interval over the seeds.

For arms A and B on the same task, training size and seed, the paired relative change is ``test MAE of A / test MAE
of B - 1``; over the seeds its mean gets a 95% Student-t interval. A *win* (for A) is a configuration whose interval
lies below zero, a *loss* one whose interval lies above it, every other one a *tie* (one seed has no interval: a tie).
Configurations where either arm's weights saw the task's labels (leakage) are marked and left out of the counts.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from matgl_cdssl.bench._tasks import leaks

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import pandas as pd

__all__ = [
    "CONFIDENCE",
    "WIDE",
    "arm_order",
    "change_text",
    "paired",
    "paired_interval",
    "tally",
    "verdict",
    "wide_configurations",
]

#: The confidence of the paired interval.
CONFIDENCE = 0.95
#: An interval whose half-width exceeds this relative change (10 percentage points) is reported as wide.
WIDE = 0.10


def arm_order(arms: Sequence[str]) -> list[str]:
    """The arms in table order: CDSSL, supervised, any others, scratch last."""
    first = [a for a in ("CDSSL", "supervised") if a in arms]
    rest = sorted(a for a in arms if a not in (*first, "scratch"))
    return [*first, *rest, *(["scratch"] if "scratch" in arms else [])]


def paired_interval(changes: Sequence[float]) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of paired changes and its :data:`CONFIDENCE` t interval (NaN for one value).

    Example:
        >>> [round(v, 3) for v in paired_interval([-0.2, -0.3, -0.1])]
        [-0.2, -0.448, 0.048]
    """
    from scipy import stats

    values = np.asarray(changes, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf((1 + CONFIDENCE) / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def verdict(low: float, high: float) -> str:
    """``"win"`` where the interval lies below zero, ``"loss"`` where it lies above, else ``"tie"`` (also for NaN).

    Example:
        >>> [verdict(*paired_interval(c)[1:]) for c in ([-0.2, -0.3, -0.25], [-0.2, -0.3, -0.1], [0.1])]
        ['win', 'tie', 'tie']
    """
    return "win" if high < 0 else "loss" if low > 0 else "tie"


def change_text(mean: float, low: float = math.nan, high: float = math.nan) -> str:
    """A paired change and its interval as percentages, as the reports write it (no interval where it is NaN).

    Example:
        >>> change_text(*paired_interval([-0.2, -0.3, -0.1])), change_text(0.05)
        ('-20.0% [-44.8, +4.8]', '+5.0%')
    """
    interval = "" if math.isnan(low) else f" [{100 * low:+.1f}, {100 * high:+.1f}]"
    return f"{100 * mean:+.1f}%{interval}"


def paired(frame: pd.DataFrame, seen: Mapping[str, Sequence[str] | None]) -> pd.DataFrame:
    """Every pair of arms (table order, the first against the second) at every (task, n_train).

    Only seeds that finished every arm of the configuration count, the same seeds as the table's means. ``seen``
    gives each arm the labels its weights saw (:func:`~matgl_cdssl.hub.labels_seen`).

    Returns:
        One row per configuration and pair: ``task``, ``n_train``, ``a``, ``b``, ``seeds``, ``change`` (the mean
        paired change of a against b), ``low``, ``high``, ``verdict`` (``win``, ``tie`` or ``loss``, for a) and
        ``leakage`` (the arms of the pair whose weights saw the task's labels, comma-separated; empty if none).
    """
    import pandas as pd

    rows = []
    for (task, n), group in frame.groupby(["task", "n_train"], sort=True):
        wide = group.pivot_table(index="seed", columns="arm", values="test_MAE").dropna()
        arms = arm_order(list(wide.columns))
        for i, a in enumerate(arms):
            for b in arms[i + 1 :]:
                if wide.empty:
                    continue
                mean, low, high = paired_interval((wide[a] / wide[b] - 1).to_numpy())
                leak = ", ".join(arm for arm in (a, b) if leaks(task, seen.get(arm)))
                rows.append({"task": task, "n_train": int(n), "a": a, "b": b, "seeds": len(wide), "change": mean,
                             "low": low, "high": high, "verdict": verdict(low, high), "leakage": leak})  # fmt: skip
    return pd.DataFrame(rows)


def wide_configurations(pairs: pd.DataFrame) -> list[tuple[str, int]]:
    """The ``(task, n_train)`` where the interval of a fair pair of arms (:func:`paired`) is wider than ±:data:`WIDE`.

    Pairs left out for leakage do not count, nor a single seed (it has no interval to narrow).

    Example:
        >>> import pandas as pd
        >>> rows = [("a", 50, -0.3, 0.1, ""), ("a", 100, -0.1, 0.05, ""), ("b", 50, -0.5, 0.5, "supervised")]
        >>> pairs = pd.DataFrame(rows, columns=["task", "n_train", "low", "high", "leakage"])
        >>> wide_configurations(pairs)
        [('a', 50)]
    """
    if pairs.empty:
        return []
    fair = pairs[pairs["leakage"] == ""]
    half = (fair["high"] - fair["low"]) / 2
    return sorted({(task, int(n)) for task, n, h in zip(fair["task"], fair["n_train"], half, strict=True) if h > WIDE})


def tally(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per pair of arms: the wins, ties and losses (of the first arm) over the fair configurations, and those left out.

    Example:
        >>> import pandas as pd
        >>> rows = [("win", ""), ("tie", ""), ("loss", ""), ("win", "supervised")]
        >>> frame = pd.DataFrame([{"a": "CDSSL", "b": "supervised", "verdict": v, "leakage": k} for v, k in rows])
        >>> tally(frame).iloc[0].to_dict()
        {'a': 'CDSSL', 'b': 'supervised', 'wins': 1, 'ties': 1, 'losses': 1, 'left_out': 1}
    """
    import pandas as pd

    rows = []
    for (a, b), group in pairs.groupby(["a", "b"], sort=False):
        fair = group[group["leakage"] == ""]
        counts = {v: int((fair["verdict"] == v).sum()) for v in ("win", "tie", "loss")}
        rows.append({"a": a, "b": b, "wins": counts["win"], "ties": counts["tie"], "losses": counts["loss"],
                     "left_out": len(group) - len(fair)})  # fmt: skip
    return pd.DataFrame(rows)


def paired_markdown(pairs: pd.DataFrame) -> str:
    """The counts per pair, each configuration's interval and verdict, and where an interval is still wide."""
    if pairs.empty:
        return ""
    counts = tally(pairs)
    lines = ["", "Paired comparisons: the test MAE of the first arm against the second on the same task, size and "
             f"seed; the mean relative change over the seeds with its {100 * CONFIDENCE:.0f}% t interval; a win or a "
             "loss where the interval excludes zero, else a tie. Configurations where an arm's weights saw the task's "
             "labels are left out (leakage).", "", "| pair | wins | ties | losses | left out (leakage) |",
             "|---|---:|---:|---:|---:|"]  # fmt: skip
    lines += [f"| {r['a']} vs {r['b']} | {r['wins']} | {r['ties']} | {r['losses']} | {r['left_out']} |"
              for r in counts.to_dict("records")]  # fmt: skip
    names = [f"{a} vs {b}" for a, b in zip(counts["a"], counts["b"], strict=True)]
    lines += ["", "| task | n_train | seeds | " + " | ".join(names) + " |", "|---|---:|---:|" + "---|" * len(names)]
    for (task, n), group in pairs.groupby(["task", "n_train"], sort=False):
        cells = {f"{r['a']} vs {r['b']}": _cell(r) for r in group.to_dict("records")}
        lines.append(f"| {task} | {n} | {group['seeds'].iloc[0]} | " + " | ".join(cells.get(k, "") for k in names)
                     + " |")  # fmt: skip
    half = (pairs["high"] - pairs["low"]) / 2
    wide = pairs[~(half <= WIDE)]  # one seed (no interval) is as wide as can be
    listed = "; ".join(f"{r['task']} {r['n_train']} {r['a']} vs {r['b']} ("
                       + ("one seed" if math.isnan(h) else f"±{100 * h:.1f}") + ")"
                       for r, h in zip(wide.to_dict("records"), half[wide.index], strict=True))  # fmt: skip
    lines += ["", f"Intervals still wide (half-width above {100 * WIDE:.0f} points, or one seed): "
              + (listed + "." if listed else "none.")]  # fmt: skip
    return "\n".join(lines) + "\n"


def _cell(r: dict) -> str:
    text = f"{change_text(r['change'], r['low'], r['high'])} {r['verdict']}"
    return f"({text}; leakage: {r['leakage']})" if r["leakage"] else text
