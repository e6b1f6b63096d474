"""Does longer pretraining help downstream? Finetune checkpoints along the run on the sigma sweep's selection tasks.

    python studies/cdssl-megnet-mp-2026.12/downstream_vs_epochs.py runs/cdssl-megnet-mp-2026.12 \
        --out docs/results/cdssl-megnet-mp-2026.12

The selection tasks are those of ``studies/sigma_sweep/sigma_sweep.py``: formation energy per atom and band gap of
crystals of the 90% pretraining split (in hash order, positions 6,000 to 6,399: 200 training and 200 validation labels),
finetuned for 80 epochs without early stopping; the metric is the best **validation** MAE (the hold-out pool, where
every test set comes from, is never touched). Each checkpoint's backbone gets the same fresh readout (from the seed), so
that only the pretraining differs. Checkpoints: the first release (``CDSSL-MEGNet-MP-2026.11``, 32 epochs), then every
kept checkpoint of the continuation run (``checkpoints/every/epoch=<e>.ckpt``: 32 + e + 1 epochs in all). Finished
evaluations are kept in ``downstream.jsonl``, so a rerun evaluates only new checkpoints; ``downstream.md`` and
``downstream.png`` (downstream validation MAE, mean ± standard error over the seeds run, and the pretext validation loss
against pretraining epochs) are redrawn. ``--seeds 1 2 --at 32 48 64`` adds seeds for some checkpoints only.

``--average 76 80 84 88 92`` evaluates, instead of the checkpoints, the uniform average of those checkpoints'
weights (stochastic weight averaging over the end of the run, Izmailov et al. 2018), recorded as ``average 76-92``
and drawn as a star at its last epoch.

``--continues 0``: a run of its own from random weights (``checkpoints/every/epoch=<e>.ckpt``: e + 1 epochs; the first
release is not among its checkpoints), such as the sigma-at-length run of ``configs/cdssl-megnet-mp-sigma.yaml``.
"""

from __future__ import annotations

import matgl_cdssl  # noqa: F401  first: on matgl 2.2.x it selects the DGL backend before matgl is imported

# isort: split
import argparse
import re
import time
import warnings
from pathlib import Path

import pandas as pd
import torch
from matgl.models import MEGNet

from matgl_cdssl.analysis import read_metrics
from matgl_cdssl.apps import finetune
from matgl_cdssl.bench import Ledger
from matgl_cdssl.data import read_mp_split
from matgl_cdssl.hub import load_model, new_like

MP = Path(__file__).resolve().parents[3] / "shared" / "data" / "mp_multi" / "mp_multi.csv.gz"
FIRST_METRICS = Path(__file__).resolve().parents[2] / "docs" / "results" / "cdssl-megnet-mp" / "metrics.csv"
TASKS = {"formation_energy_per_atom_eV": "formation energy", "band_gap_eV": "band gap"}
FIRST_EPOCHS = 32


def _checkpoints(run: Path, continues: int) -> dict[int, Path | str]:
    """Total pretraining epochs -> checkpoint (the first release by name, when the run continues it)."""
    found: dict[int, Path | str] = {FIRST_EPOCHS: "CDSSL-MEGNet-MP-2026.11"} if continues else {}
    for path in sorted((run / "checkpoints" / "every").glob("epoch=*.ckpt")):
        found[continues + int(re.search(r"epoch=(\d+)", path.name).group(1)) + 1] = path
    return found


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


def _backbone(source: Path | str | tuple[Path, ...]) -> torch.nn.Module:
    """The model of a registered name, of a checkpoint, or the uniform average of several checkpoints' weights."""
    if isinstance(source, str):
        return load_model(source, fresh_readout=False)
    states = [_weights(path) for path in (source if isinstance(source, tuple) else (source,))]
    model = MEGNet()  # matgl's defaults, as the run's
    model.load_state_dict({k: torch.stack([state[k].float() for state in states]).mean(0) for k in states[0]})
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=MP)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--finetune-epochs", type=int, default=80)
    parser.add_argument("--at", type=int, nargs="+", help="only these checkpoints (total pretraining epochs)")
    parser.add_argument("--average", type=int, nargs="+", help="the average of these checkpoints' weights")
    parser.add_argument("--continues", type=int, default=FIRST_EPOCHS, choices=(0, FIRST_EPOCHS),
                        help="epochs before the run's: 32 (it continues the first release) or 0")  # fmt: skip
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    args.out.mkdir(parents=True, exist_ok=True)
    done = _ledger(args.out)

    ids, structures = read_mp_split(args.data, "pretrain")
    labels = pd.read_csv(args.data, usecols=["material_id", *TASKS]).set_index("material_id")
    lab_structs, lab_ids = structures[6000:6400], ids[6000:6400]
    checkpoints = _checkpoints(args.run, args.continues)
    if args.average:
        name = f"average {min(args.average)}-{max(args.average)}"
        chosen = [(max(args.average), name, tuple(checkpoints[e] for e in sorted(args.average)))]
    else:
        chosen = [(e, None, source) for e, source in sorted(checkpoints.items()) if not args.at or e in args.at]
    for epochs, name, source in chosen:
        for seed in args.seeds:
            for task, title in TASKS.items():
                key = f"{name or epochs}/{seed}/{task}"
                if key in done:
                    continue
                y = labels.loc[lab_ids, task].to_numpy(dtype=float)
                tic = time.perf_counter()
                result = finetune(new_like(_backbone(source), weights="backbone", seed=seed), lab_structs[:200],
                                  y[:200], val_structures=lab_structs[200:], val_targets=y[200:],
                                  max_epochs=args.finetune_epochs, patience=None, seed=seed,
                                  enable_progress_bar=False, enable_model_summary=False, skip_invalid=True)  # fmt: skip
                record = {"key": key, "pretraining_epochs": epochs, "checkpoint": name or str(source), "seed": seed,
                          "task": title, "val_MAE": result.metrics["best_val_MAE"],
                          "finetune_s": round(time.perf_counter() - tic, 1)}  # fmt: skip
                done.append(record)
                print(record, flush=True)
    report(args.run, args.out, args.continues)


def _ledger(out: Path) -> Ledger:
    """The finished evaluations in ``out/downstream.jsonl``, each found by its ``key`` (checkpoint/seed/task)."""
    return Ledger(out / "downstream.jsonl", key=lambda record: record["key"])


def _pm(mean: float, sem: float) -> str:
    return f"{mean:.4f}" if pd.isna(sem) else f"{mean:.4f} ± {sem:.4f}"


def _stats(frame: pd.DataFrame, by: str) -> pd.DataFrame:
    return frame.groupby([by, "task"])["val_MAE"].agg(["mean", "sem", "count"]).unstack("task")


def report(run: Path, out: Path, continues: int = FIRST_EPOCHS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(list(_ledger(out)))
    averaged = frame["checkpoint"].str.startswith("average")
    stats = _stats(frame[~averaged], "pretraining_epochs")
    tasks = list(stats["mean"].columns)
    lines = ["| pretraining epochs | " + " | ".join(f"{t} validation MAE" for t in tasks) + " | seeds |"]
    lines.append("|---:|" + "---:|" * len(tasks) + "---:|")
    for table in (stats, _stats(frame[averaged], "checkpoint")):
        for e in table.index:
            cells = [_pm(table["mean"].at[e, t], table["sem"].at[e, t]) for t in tasks]
            lines.append(f"| {e} | " + " | ".join(cells) + f" | {int(table['count'].loc[e].min())} |")
    (out / "downstream.md").write_text("\n".join(lines) + "\n")
    run_metrics = read_metrics(run / "metrics.csv")
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, task in zip(axes[:2], tasks, strict=True):
        many = stats["count"][task] >= 3
        ax.plot(stats.index, stats["mean"][task], "-", color="lightgray", zorder=0)
        ax.plot(stats.index[~many], stats["mean"][task][~many], "o", mfc="white", color="tab:blue", label="1 seed")
        ax.errorbar(stats.index[many], stats["mean"][task][many], yerr=stats["sem"][task][many], fmt="o", capsize=3,
                    color="tab:blue", label="3 seeds, mean ± s.e.")  # fmt: skip
        for _, rows in frame[averaged & (frame["task"] == task)].groupby("checkpoint"):
            ax.errorbar(rows["pretraining_epochs"].iloc[0], rows["val_MAE"].mean(), yerr=rows["val_MAE"].sem(),
                        fmt="*", ms=11, capsize=3, color="tab:red", label=rows["checkpoint"].iloc[0])  # fmt: skip
        ax.legend(frameon=False, fontsize=8)
        ax.set(xlabel="pretraining epochs", ylabel=f"{task}: validation MAE (200 labels)", title=task)
    if continues:
        first = read_metrics(FIRST_METRICS)
        axes[2].plot(first.index + 1, first["val_Total_Loss"], "o-", ms=3, label="2026.11 run")
        axes[2].axvline(continues + 0.5, color="gray", lw=0.8, ls=":")
    axes[2].plot(run_metrics.index + 1 + continues, run_metrics["val_Total_Loss"], "o-", ms=3,
                 label="continuation" if continues else run.name)  # fmt: skip
    axes[2].legend(frameon=False, fontsize=8)
    axes[2].set(xlabel="pretraining epochs", ylabel="pretext validation loss", yscale="log", title="pretext")
    fig.suptitle(f"{'CDSSL-MEGNet-MP' if continues else run.name}: downstream validation MAE and pretext loss along "
                 "pretraining")  # fmt: skip
    fig.tight_layout()
    fig.savefig(out / "downstream.png", dpi=110)


if __name__ == "__main__":
    main()
