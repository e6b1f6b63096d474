"""Choose among pretrained starts on validation data only: the selection tasks of issue 29.

    python studies/eform-start/selection.py CDSSL-MEGNet-MP-2026.11 MEGNet-MP-2018.6.1-Eform scratch \
        runs/eform-joint/model runs/eform-denoise/model --seeds 0 1 2 --out studies/eform-start/selection

The tasks are those of the sigma sweep (docs/results/sigma_sweep): crystals of the 90% pretraining split of
``shared/data/mp_multi`` (in hash order, positions 6,000 to 6,399: 200 training and 200 validation labels), finetuned
for 80 epochs without early stopping from each start's backbone with a fresh readout drawn from the seed; the metric is
the best **validation** MAE. The hold-out pool, where every benchmark test set comes from, is never touched, and no
test crystal of any benchmark task is among these 400.

Targets: band gap (``band_gap_eV``) and Fermi energy (``efermi_eV``), which no start was trained on, choose (total
magnetisation is left out: 69% of its labels are zero, and no model beats their median, docs/benchmark.md); formation
energy (``formation_energy_per_atom_eV``) is reported and marked: matgl's supervised start, and every start made from
it or with its labels, saw those labels.

A start is a registered name, a model folder, a Lightning checkpoint of a pretraining run (``.ckpt``), or ``scratch``.
Finished runs are kept in ``OUT/selection.jsonl`` (one line per start, seed and task), so a rerun trains only what is
missing; ``OUT/selection.md`` is rewritten from it, with every start paired against every other on the seeds both
have (the benchmark's rule, :func:`~matgl_cdssl.bench.paired_interval`).

Ensembles over starts (issue 29): with ``--predictions`` each record also keeps the run's predictions for the 200
validation crystals (best epoch), and ``OUT/ensembles.md`` compares, for every two starts A and B, the two-member
ensemble over both starts with the two-member ensembles of each start alone, on the validation MAE of the members'
mean. Member ``k`` of ``finetune(starts, ensemble=K, seed=s)`` is trained from ``starts[k % len(starts)]`` with seed
``s + k``, so for ``s`` = 0, 2, 4, ... (disjoint seeds) the ensembles are ``finetune([A, B], ensemble=2, seed=s)``:
A@s + B@s+1, ``finetune(A, ensemble=2, seed=s)``: A@s + A@s+1, and B's alike, built from the single runs:

    python studies/eform-start/selection.py CDSSL-MEGNet-MP-2026.11 MEGNet-MP-2018.6.1-Eform --seeds 0 1 2 3 4 5 \
        --tasks band_gap_eV efermi_eV --predictions --out studies/eform-start/ensembles
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import matgl_cdssl  # selects matgl 2.2.x's DGL backend before matgl's models are imported

# isort: split
from matgl.models import MEGNet

from matgl_cdssl.apps import TrainOptions
from matgl_cdssl.bench import Ledger, change_text, leaks, paired_interval, verdict
from matgl_cdssl.data import read_mp_split
from matgl_cdssl.hub import labels_seen, load_model, megnet_of, new_like

MP = Path(__file__).resolve().parents[3] / "shared" / "data" / "mp_multi" / "mp_multi.csv.gz"
CHOOSE = {"band_gap_eV": "band gap (eV)", "efermi_eV": "Fermi energy (eV)"}
LEAKY = {"formation_energy_per_atom_eV": "formation energy (eV/atom)"}
#: Starts that saw MP formation-energy labels, by name, for records and starts that do not say (a checkpoint).
SAW_EFORM = ("MEGNet-MP-2018.6.1-Eform", "eform")
EPOCHS = 80
#: The sigma sweep's finetuning: 80 epochs of matgl's cosine decay from 1e-3, batch 16, L1, no early stopping.
SWEEP = TrainOptions(max_epochs=EPOCHS, patience=None, lr_patience=None, batch_size=16, lr=1e-3, loss="l1_loss")


def run_key(record: dict) -> tuple:
    """A selection run's key in the ledger: its start, seed and task."""
    return record["start"], record["seed"], record["task"]


def seen_by(start: str) -> list[str] | None:
    """The labels a start's weights saw (:func:`~matgl_cdssl.hub.labels_seen`; None where it does not say)."""
    if start == "scratch":
        return []
    seen = None if start.endswith(".ckpt") else labels_seen(start)
    return None if seen is None else list(seen)


def saw_eform(start: str, seen: list[str] | None) -> bool:
    """Whether MP formation energy is leakage for a start: from the labels it saw, else from its name."""
    if isinstance(seen, list):
        return leaks("mp_formation_energy", seen)
    return any(s in start for s in SAW_EFORM)


def backbone(start: str) -> torch.nn.Module | None:
    """The MEGNet a start stands for (None for scratch): a name, a folder, or a pretraining checkpoint."""
    if start == "scratch":
        return None
    if start.endswith(".ckpt"):
        state = torch.load(start, map_location="cpu", weights_only=False)["state_dict"]  # our own run's checkpoint
        model = MEGNet()  # matgl's default architecture, as every run's
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
        return model
    return megnet_of(load_model(start, fresh_readout=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("starts", nargs="+")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=[*CHOOSE, *LEAKY])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "selection")
    parser.add_argument("--data", type=Path, default=MP)
    parser.add_argument(
        "--predictions", action="store_true", help="keep each run's validation predictions (for ensembles.md)"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    args.out.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(args.out / "selection.jsonl", key=run_key)
    ids, structures = read_mp_split(args.data, "pretrain")
    labels = pd.read_csv(args.data, usecols=["material_id", *args.tasks]).set_index("material_id")
    chosen, chosen_ids = structures[6000:6400], ids[6000:6400]
    for start in args.starts:
        model = backbone(start)
        for seed in args.seeds:
            for task in args.tasks:
                if (start, seed, task) in ledger and (not args.predictions or "val_pred" in ledger[start, seed, task]):
                    continue
                y = labels.loc[chosen_ids, task].to_numpy(dtype=float)
                if model is None:
                    init = new_like(MEGNet(), weights="none", seed=seed)
                else:
                    init = new_like(model, weights="backbone", seed=seed)
                tic = time.perf_counter()
                result = matgl_cdssl.finetune(init, chosen[:200], y[:200], val_structures=chosen[200:],
                                              val_targets=y[200:], options=SWEEP, seed=seed,
                                              skip_invalid=True, enable_progress_bar=False,
                                              enable_model_summary=False)  # fmt: skip
                record = {"start": start, "seed": seed, "task": task, "val_MAE": result.metrics["best_val_MAE"],
                          "epochs": EPOCHS, "backend": matgl_cdssl.BACKEND, "labels_seen": seen_by(start),
                          "finetune_s": round(time.perf_counter() - tic, 1)}  # fmt: skip
                if args.predictions:  # the best epoch's, in validation order (NaN for an invalid crystal)
                    pred = matgl_cdssl.predict(result, chosen[200:], skip_invalid=True)
                    record["val_pred"] = [round(float(v), 6) for v in pred]
                ledger.append(record)
                print({k: v for k, v in record.items() if k != "val_pred"}, flush=True)
    report(args.out)
    if args.predictions:
        y = labels.loc[chosen_ids[200:], args.tasks]
        ensembles(args.out, {t: y[t].to_numpy(dtype=float) for t in args.tasks}, args.starts)


def pairs_markdown(frame: pd.DataFrame, starts: list[str]) -> list[str]:
    """Each start against every start before it on the choosing tasks: paired relative change over the shared seeds."""
    lines = ["", "Paired per seed (the benchmark's rule: the mean relative change of the first start's validation MAE "
             "against the second's over the seeds both have, 95% t interval; win or loss where it excludes zero):",
             "", "| start | against | " + " | ".join(CHOOSE[t] for t in CHOOSE) + " |",
             "|:--|:--|" + "--|" * len(CHOOSE)]  # fmt: skip
    wide = {task: frame[frame.task == task].pivot_table(index="seed", columns="start", values="val_MAE")
            for task in CHOOSE}  # fmt: skip
    for i, a in enumerate(starts):
        for b in starts[:i]:
            cells = []
            for task in CHOOSE:
                both = wide[task][[a, b]].dropna() if {a, b} <= set(wide[task].columns) else wide[task].iloc[:0]
                if len(both) < 2:
                    cells.append(f"({len(both)} shared seed{'s' if len(both) != 1 else ''})")
                    continue
                cells.append(f"{paired_cell(both[a] / both[b] - 1)} ({len(both)})")
            lines.append(f"| {a} | {b} | " + " | ".join(cells) + " |")
    return lines


def paired_cell(changes: Sequence[float]) -> str:
    """The mean paired relative change, its 95% t interval and the verdict (the benchmark's rule), as text."""
    mean, low, high = paired_interval(np.asarray(changes, dtype=float))
    return f"{change_text(mean, low, high)} {verdict(low, high)}"


def ensembles(out: Path, truth: dict[str, np.ndarray], starts: list[str]) -> None:
    """``ensembles.md``: two-member ensembles over two starts against those of each start alone (validation MAE)."""
    records = list(Ledger(out / "selection.jsonl", key=run_key))
    pred = {(r["start"], r["seed"], r["task"]): np.asarray(r["val_pred"]) for r in records if "val_pred" in r}
    seeds = sorted({seed for _, seed, _ in pred})
    lines = ["| task | ensemble A + B | A + A | B + B | A+B vs A+A | A+B vs B+B |", "|:--|--:|--:|--:|--|--|"]
    for i, a in enumerate(starts):
        for b in starts[i + 1 :]:
            for task, y in truth.items():
                mae = {"AB": [], "AA": [], "BB": []}
                for s in seeds[::2]:
                    members = {"AB": [(a, s), (b, s + 1)], "AA": [(a, s), (a, s + 1)], "BB": [(b, s), (b, s + 1)]}
                    if all((m, k, task) in pred for pair in members.values() for m, k in pair):
                        for name, pair in members.items():
                            mean = np.mean([pred[m, k, task] for m, k in pair], axis=0)
                            mae[name].append(float(np.nanmean(np.abs(mean - y))))
                if not mae["AB"]:
                    continue
                cells = [f"{np.mean(v):.4f} ± {np.std(v, ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float('nan'):.4f}"
                         for v in mae.values()]  # fmt: skip
                cells += [paired_cell(np.array(mae["AB"]) / np.array(mae[other]) - 1) for other in ("AA", "BB")]
                lines.append(f"| {CHOOSE.get(task, task)}: A = {a}, B = {b} ({len(mae['AB'])} ensembles) | "
                             + " | ".join(cells) + " |")  # fmt: skip
    lines += ["", "Validation MAE of the members' mean (mean ± standard error over ensembles of disjoint seeds: "
              "A + B is `finetune([A, B], ensemble=2, seed=s)`, members A@s and B@s+1; A + A and B + B are "
              "`finetune(A, ensemble=2, seed=s)`, members @s and @s+1; s = 0, 2, 4, ...). Paired over s: the mean "
              "relative change with its 95% t interval; win or loss where it excludes zero."]  # fmt: skip
    (out / "ensembles.md").write_text("\n".join(lines) + "\n")


def report(out: Path) -> None:
    """``selection.md``: each start's validation MAE per task (mean ± standard error over seeds)."""
    records = list(Ledger(out / "selection.jsonl", key=run_key))
    seen = {r["start"]: r["labels_seen"] for r in records if "labels_seen" in r}
    leaky = {start: saw_eform(start, seen[start] if start in seen else seen_by(start))
             for start in {r["start"] for r in records}}  # fmt: skip
    frame = pd.DataFrame(records)
    stats = frame.groupby(["start", "task"])["val_MAE"].agg(["mean", "sem", "count"]).unstack("task")
    tasks = [t for t in [*CHOOSE, *LEAKY] if t in stats["mean"].columns]
    names = {**CHOOSE, **LEAKY}
    lines = [
        "| start | " + " | ".join(names[t] + (" †" if t in LEAKY else "") for t in tasks) + " | seeds (per task) |"
    ]
    lines.append("|:--|" + "--:|" * len(tasks) + "--:|")
    for start in stats.index:
        cells = []
        for t in tasks:
            mean, sem = stats["mean"].at[start, t], stats["sem"].at[start, t]
            cell = "" if pd.isna(mean) else f"{mean:.4f}" + ("" if pd.isna(sem) else f" ± {sem:.4f}")
            cells.append(cell + (" †" if t in LEAKY and leaky[start] and cell else ""))
        seeds = "/".join("" if pd.isna(n := stats["count"].at[start, t]) else str(int(n)) for t in tasks)
        lines.append(f"| {start} | " + " | ".join(cells) + f" | {seeds} |")
    lines += [
        "",
        f"Best validation MAE of {EPOCHS} finetuning epochs, 200 training and 200 validation labels from the "
        "pretraining split; mean ± standard error over the seeds. Band gap and Fermi energy choose. "
        "†: formation energy is leakage for every start that saw MP formation energies (matgl's supervised model, "
        "the starts made from it and the joint pretrainings; from each start's recorded labels): reported, never "
        "chosen on.",
        *pairs_markdown(frame, list(dict.fromkeys(frame.start))),  # in the order first run
    ]
    (out / "selection.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
