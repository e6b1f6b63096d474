"""Choose sigma for CDSSL-MEGNet-MP: short pretraining runs, judged by downstream *validation* MAE.

    python studies/sigma_sweep/sigma_sweep.py --out docs/results/sigma_sweep [--sigmas 0.02 0.05 0.1 0.2 0.3]

For each sigma, MEGNet (matgl's default architecture and 4 Å cutoff) is pretrained for ``--epochs`` epochs on the
first ``--n-pretrain`` crystals (in hash order) of the 90% pretraining split. It is then finetuned on two small
labelled sets drawn from the same split, disjoint from those crystals: formation energy per atom and band gap,
``--n-train`` training and ``--n-val`` validation labels. Runs are judged by the best validation MAE; no test data are
touched (Materials Project test sets come from the hold-out pool). A from-scratch run gives the reference.
Writes ``sweep.csv`` and ``sweep.md`` to ``--out``.
"""

from __future__ import annotations

import matgl_cdssl  # first: on matgl 2.2.x it selects the DGL backend before matgl is imported

# isort: split
import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from matgl.models import MEGNet

from matgl_cdssl.apps import finetune
from matgl_cdssl.data import read_mp_split

MP = Path(__file__).resolve().parents[3] / "shared" / "data" / "mp_multi" / "mp_multi.csv.gz"
TASKS = {"formation_energy_per_atom_eV": "formation energy", "band_gap_eV": "band gap"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=MP)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2, 0.3])
    parser.add_argument("--n-pretrain", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-val", type=int, default=200)
    parser.add_argument("--finetune-epochs", type=int, default=80)
    parser.add_argument("--append", action="store_true", help="add sigmas to an existing sweep.csv in --out")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    args.out.mkdir(parents=True, exist_ok=True)

    ids, structures = read_mp_split(args.data, "pretrain")
    labels = pd.read_csv(args.data, usecols=["material_id", *TASKS]).set_index("material_id")
    pre = structures[: args.n_pretrain]
    lab = slice(args.n_pretrain, args.n_pretrain + args.n_train + args.n_val)
    lab_structs, lab_ids = structures[lab], ids[lab]
    n_train = args.n_train
    rows = pd.read_csv(args.out / "sweep.csv").to_dict("records") if args.append else []

    def downstream(model_factory, sigma_label, pretext: dict) -> None:
        for task, title in TASKS.items():
            y = labels.loc[lab_ids, task].to_numpy(dtype=float)
            tic = time.perf_counter()
            result = finetune(
                model_factory(),
                lab_structs[:n_train],
                y[:n_train],
                val_structures=lab_structs[n_train:],
                val_targets=y[n_train:],
                max_epochs=args.finetune_epochs,
                patience=None,
                seed=0,
                enable_progress_bar=False,
                skip_invalid=True,
            )
            rows.append(
                {
                    "sigma": sigma_label,
                    "task": title,
                    "val_MAE": result.metrics["best_val_MAE"],
                    "best_epoch": int(result.metrics["best_epoch"]),
                    **pretext,
                    "finetune_s": round(time.perf_counter() - tic, 1),
                }
            )
            print(rows[-1], flush=True)
            pd.DataFrame(rows).to_csv(args.out / "sweep.csv", index=False)

    if not args.append:
        downstream(MEGNet, "scratch", {})  # matgl's default MEGNet
    for sigma in args.sigmas:
        run = args.out / f"sigma_{sigma}"
        tic = time.perf_counter()
        matgl_cdssl.pretrain(
            pre,
            sigma=sigma,
            max_epochs=args.epochs,
            val_fraction=0.05,
            seed=0,
            output_dir=run,
            enable_progress_bar=False,
            enable_model_summary=False,
            skip_invalid=True,
        )
        metrics = pd.read_csv(run / "metrics.csv").dropna(subset=["val_MAE"]).iloc[-1]
        pretext = {
            "pretext_val_loss": metrics["val_Total_Loss"],
            "pretext_val_MAE": metrics["val_MAE"],
            "baseline_val_MAE": metrics["val_Baseline_MAE"],
            "pretext_vs_baseline": metrics["val_MAE"] / metrics["val_Baseline_MAE"],
            "pretrain_s": round(time.perf_counter() - tic, 1),
        }
        downstream(lambda run=run: matgl_cdssl.load_model(run / "model"), sigma, pretext)

    table = pd.DataFrame(rows)
    table["sigma"] = table["sigma"].astype(str)
    wide = table.pivot_table(index="sigma", columns="task", values="val_MAE", sort=False)
    wide["mean relative to scratch"] = np.mean([wide[t] / wide.loc["scratch", t] for t in TASKS.values()], axis=0)
    pretext = table.groupby("sigma", sort=False)[["pretext_val_MAE", "baseline_val_MAE", "pretext_vs_baseline"]].first()
    (args.out / "sweep.md").write_text(wide.join(pretext).to_markdown(floatfmt=".4f") + "\n")
    print(wide.join(pretext).to_string())


if __name__ == "__main__":
    main()
