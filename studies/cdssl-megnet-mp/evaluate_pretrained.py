"""Downstream check of pretrained weights: short finetunes from CDSSL weights vs from random initialisation.

    python studies/cdssl-megnet-mp/evaluate_pretrained.py MODEL_DIR --out docs/results/cdssl-megnet-mp/downstream.json

The task is Materials Project formation energy per atom, drawn from the hold-out pool that pretraining never saw.
For each seed, the pool is shuffled and split into ``--n-train`` training, ``--n-val`` validation and ``--n-test``
test crystals; both arms get the same split, epochs, learning rate and batch size, and the epoch with the best
validation MAE is tested. The CDSSL arm's readout is freshly initialised from the seed, like the scratch arm's.
"""

from __future__ import annotations

import matgl_cdssl  # first: on matgl 2.2.x it selects the DGL backend before matgl is imported

# isort: split
import argparse
import json
import statistics
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
from matgl.models import MEGNet

from matgl_cdssl.apps import finetune
from matgl_cdssl.data import read_mp_split
from matgl_cdssl.hub import new_like

MP = Path(__file__).resolve().parents[3] / "shared" / "data" / "mp_multi" / "mp_multi.csv.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=MP)
    parser.add_argument("--task", default="formation_energy_per_atom_eV")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-val", type=int, default=100)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    ids, structures = read_mp_split(args.data, "holdout")
    y = pd.read_csv(args.data, usecols=["material_id", args.task]).set_index("material_id").loc[ids, args.task]
    y = y.to_numpy(dtype=float)
    runs = []
    for seed in args.seeds:
        order = np.random.default_rng(seed).permutation(len(ids))
        cut = np.cumsum([args.n_train, args.n_val, args.n_test])
        parts = [order[: cut[0]], order[cut[0] : cut[1]], order[cut[1] : cut[2]]]
        (tr, va, te) = ([structures[i] for i in p] for p in parts)
        for arm in ("scratch", "CDSSL"):
            L.seed_everything(seed, verbose=False)
            model = (
                new_like(matgl_cdssl.load_model(args.model_dir), weights="backbone")
                if arm == "CDSSL"
                else MEGNet()  # matgl's default architecture
            )
            result = finetune(
                model,
                tr,
                y[parts[0]],
                val_structures=va,
                val_targets=y[parts[1]],
                test_structures=te,
                test_targets=y[parts[2]],
                max_epochs=args.epochs,
                patience=None,
                lr=args.lr,
                seed=seed,
                enable_progress_bar=False,
                skip_invalid=True,
            )
            runs.append({"seed": seed, "arm": arm, **result.metrics})
            print(runs[-1], flush=True)
    summary = {}
    for arm in ("scratch", "CDSSL"):
        maes = [r["test_MAE"] for r in runs if r["arm"] == arm]
        summary[arm] = {"mean_test_MAE": statistics.mean(maes), "std_test_MAE": statistics.stdev(maes), "runs": maes}
    summary["relative_change"] = summary["CDSSL"]["mean_test_MAE"] / summary["scratch"]["mean_test_MAE"] - 1
    report = {
        "task": args.task,
        "setup": {k: v for k, v in vars(args).items() if k not in ("out", "model_dir", "data")},
        "runs": runs,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
