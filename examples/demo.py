"""The main job: CDSSL pretraining on the bundled sample, then finetuning versus training from scratch.

1. Split the 1,000 bundled Materials Project crystals into 800 for pretraining and a 200-crystal test set.
2. Pretrain a MEGNet by crystal denoising on the 800 crystals, without labels.
3. For each task (formation energy per atom, band gap), train on a small labelled subset of the 800
   (``--n-labelled``, plus a validation subset for choosing the best epoch), twice with identical settings:
   from the CDSSL weights, loaded with ``matgl.load_model``, and from random initialisation. Both use matgl's
   standard ``ModelLightningModule`` (through ``matgl_cdssl.apps.finetune``).
4. Print a table of test MAE and write ``results.csv``, ``results.md`` and ``demo.png``.

Run it with ``bash scripts/demo.sh`` (DGL backend) or ``CDSSL_BACKEND=pyg bash scripts/demo.sh``, or directly:
``python examples/demo.py --out demo_output``.
"""

from __future__ import annotations

import matgl_cdssl  # on matgl 2.2.x this selects the DGL backend (before or after `import matgl`)

# isort: split
import argparse
import logging
import time
import warnings
from pathlib import Path

import lightning as L
import matgl
import numpy as np
import pandas as pd
import torch

from matgl_cdssl._backend import get_backend, matgl_version
from matgl_cdssl.apps import finetune

TASKS = {"formation_energy_per_atom_eV": "Formation energy (eV/atom)", "band_gap_eV": "Band gap (eV)"}


def plot(out: Path, metrics: pd.DataFrame, results: pd.DataFrame) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
    val = metrics.dropna(subset=["val_MAE"])
    train = metrics.dropna(subset=["train_MAE"])
    ax0.plot(train["epoch"], train["train_MAE"], label="train MAE")
    ax0.plot(val["epoch"], val["val_MAE"], label="validation MAE")
    ax0.plot(val["epoch"], val["val_Baseline_MAE"], "--", label="copy-noisy-input baseline (validation)")
    ax0.set(xlabel="epoch", ylabel="MAE of edge embeddings", title="CDSSL pretraining", yscale="log")
    ax0.legend()
    tasks = list(dict.fromkeys(results["task"]))
    x = np.arange(len(tasks))
    for k, (arm, colour) in enumerate([("scratch", "tab:gray"), ("CDSSL", "tab:blue")]):
        values = [float(results[(results.task == t) & (results.arm == arm)]["test_MAE"].iloc[0]) for t in tasks]
        ax1.bar(x + (k - 0.5) * 0.38, values, width=0.38, label=arm, color=colour)
    ax1.set_xticks(x, tasks)
    ax1.set(ylabel="test MAE", title=f"Finetuning on {results['n_labelled'].iloc[0]} labels")
    ax1.legend()
    fig.tight_layout()
    path = out / "demo.png"
    fig.savefig(path, dpi=120)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description="CDSSL demo: pretrain, then finetune vs scratch")
    parser.add_argument("--out", type=Path, default=Path("demo_output"))
    parser.add_argument("--sigma", type=float, default=0.3, help="noise level in Å")
    parser.add_argument("--pretrain-epochs", type=int, default=40)
    parser.add_argument("--n-labelled", type=int, default=100, help="labelled training crystals per task")
    parser.add_argument("--n-val", type=int, default=50, help="labelled validation crystals per task")
    parser.add_argument("--finetune-epochs", type=int, default=100)
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--finetune-batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    backend = get_backend()
    print(f"matgl-cdssl demo on matgl {matgl_version()} ({backend.name} backend), {args.threads} threads")

    sample = matgl_cdssl.load_sample()
    order = np.random.default_rng(args.seed).permutation(len(sample))
    test_idx, pool_idx = order[:200].tolist(), order[200:].tolist()

    print(
        f"[1/3] CDSSL pretraining on {len(pool_idx)} unlabelled crystals, sigma = {args.sigma} Å, "
        f"{args.pretrain_epochs} epochs"
    )
    matgl_cdssl.pretrain(
        [sample.structures[i] for i in pool_idx],
        sigma=args.sigma,
        max_epochs=args.pretrain_epochs,
        seed=args.seed,
        output_dir=args.out / "pretrain",
        enable_model_summary=False,
    )
    metrics = pd.read_csv(args.out / "pretrain" / "metrics.csv")
    last = metrics.dropna(subset=["val_MAE"]).iloc[-1]
    print(f"      validation MAE {last['val_MAE']:.4f} vs copy-noisy-input baseline {last['val_Baseline_MAE']:.4f}")

    rows = []
    labelled = pool_idx[: args.n_labelled + args.n_val]
    train_idx, val_idx = labelled[: args.n_labelled], labelled[args.n_labelled :]
    for t, (task, title) in enumerate(TASKS.items(), start=2):
        print(f"[{t}/3] {title}: {args.n_labelled} training labels, {args.n_val} validation, {len(test_idx)} test")
        y = sample.labels[task]
        for arm in ("scratch", "CDSSL"):
            L.seed_everything(args.seed, verbose=False)
            # the CDSSL arm loads the pretrained folder with plain matgl, the standard finetuning path
            model = matgl.load_model(args.out / "pretrain" / "model") if arm == "CDSSL" else backend.megnet_class()
            tic = time.perf_counter()
            result = finetune(
                model,
                [sample.structures[i] for i in train_idx],
                y[train_idx],
                val_structures=[sample.structures[i] for i in val_idx],
                val_targets=y[val_idx],
                test_structures=[sample.structures[i] for i in test_idx],
                test_targets=y[test_idx],
                max_epochs=args.finetune_epochs,
                patience=None,
                lr=args.finetune_lr,
                seed=args.seed,
                batch_size=args.finetune_batch_size,
                accelerator="cpu",
                devices=1,
                enable_progress_bar=False,
            )
            mae, epoch = result.metrics["test_MAE"], int(result.metrics["best_epoch"])
            rows.append(
                {
                    "task": title,
                    "arm": arm,
                    "n_labelled": args.n_labelled,
                    "test_MAE": mae,
                    "best_epoch": epoch,
                    "seconds": round(time.perf_counter() - tic, 1),
                }
            )
            print(f"      {arm:>7}: test MAE {mae:.4f} (best validation epoch {epoch})")

    results = pd.DataFrame(rows)
    results.to_csv(args.out / "results.csv", index=False)
    table = results.pivot(index="task", columns="arm", values="test_MAE")[["scratch", "CDSSL"]]
    table["change"] = (table["CDSSL"] / table["scratch"] - 1).map(lambda v: f"{100 * v:+.1f}%")
    markdown = table.to_markdown(floatfmt=".4f") if _has_tabulate() else table.to_string()
    (args.out / "results.md").write_text(markdown + "\n")
    print("\nTest MAE (lower is better)\n" + markdown)
    print(f"\nplot: {plot(args.out, metrics, results)}; total time {time.perf_counter() - start:.0f} s")


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
