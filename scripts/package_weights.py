"""Package a production pretraining run as a release of the shipped ``CDSSL-MEGNet-MP`` weights, with its card.

    python scripts/package_weights.py runs/cdssl-megnet-mp --name CDSSL-MEGNet-MP-2026.11 --changes "First release." \
        --config configs/cdssl-megnet-mp.yaml --downstream docs/results/cdssl-megnet-mp/downstream.json

Copies the run's model folder into ``matgl_cdssl/pretrained/<name>/`` (a versioned name, ``CDSSL-MEGNet-MP-YYYY.MM``)
together with the hold-out id list, computes the sha256 of every file, and writes ``card.json`` and the ``README.md``
model card generated from it. Also copies the run's metrics CSV to the release's results folder (``--results``,
default ``docs/results/<name in lower case>/``) and draws the training curves there.

``--checkpoint`` ships another epoch than the run's best pretext epoch (say the one that is best downstream): its
backbone and pretext head replace those of the run's model folder. ``--continues NAME`` marks a run that continued
release NAME: the card counts NAME's epochs and wall time too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import yaml

FAMILY = "CDSSL-MEGNet-MP"
ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "matgl_cdssl" / "pretrained"
SHIPPED = ("model.pt", "state.pt", "model.json", "cdssl.json", "cdssl_head.pt", "skipped.csv")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def plot_curves(metrics: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    val = metrics.dropna(subset=["val_MAE"])
    train = metrics.dropna(subset=["train_MAE"])
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    axes[0].plot(train["epoch"], train["train_Total_Loss"], label="train")
    axes[0].plot(val["epoch"], val["val_Total_Loss"], label="validation")
    axes[0].set(title="loss (MSE)", xlabel="epoch", yscale="log")
    axes[1].plot(train["epoch"], train["train_MAE"], label="train")
    axes[1].plot(val["epoch"], val["val_MAE"], label="validation")
    axes[1].plot(val["epoch"], val["val_Baseline_MAE"], "--", label="copy-noisy-input baseline (val)")
    axes[1].set(title="MAE of h(G~) - E_clean", xlabel="epoch", yscale="log")
    axes[2].plot(train["epoch"], train["train_Grad_Norm"], label="train")
    axes[2].plot(val["epoch"], val["val_Grad_Norm"], label="validation")
    axes[2].set(title="gradient norm", xlabel="epoch", yscale="log")
    for ax in axes:
        ax.legend()
    fig.suptitle(f"{FAMILY} pretraining")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def card_markdown(card: dict) -> str:
    m, t = card["metrics"], card["training"]
    pre, down = m["pretext"], m.get("downstream", {})
    family, version = card["name"].rsplit("-", 1)
    lines = [
        f"# {card['name']}",
        "",
        card["description"],
        "",
        f'Release {version} of `{family}`. `load_model("{family}")` gives the newest release of the family; this one',
        f"stays loadable as `{card['name']}`, so that results published with it can be reproduced.",
        "",
        "## Changes",
        "",
        card.get("changes") or "First release.",
        "",
        "## Aim",
        "",
        "A MEGNet backbone pretrained without labels by crystal denoising (CDSSL; New, Le, Pekala, Stiles,",
        "arXiv:2408.17255), to be finetuned on small labelled sets with matgl's standard API:",
        "",
        "```python",
        "import matgl_cdssl",
        "from matgl.utils.training import ModelLightningModule",
        "",
        f'model = matgl_cdssl.load_model("{card["name"]}")  # or matgl.load_model(...) after matgl_cdssl.register()',
        "module = ModelLightningModule(model=model, data_mean=mean, data_std=std)",
        "```",
        "",
        "The embedding, encoders and message-passing blocks are pretrained. **The readout (node and edge Set2Set and",
        "the output MLP) is not trained by the pretext task and is freshly initialised on every load** from torch's",
        "global RNG (`load_model(..., fresh_readout=False)` keeps the stored, untrained initialisation).",
        "",
        "## Architecture",
        "",
        f"matgl MEGNet with matgl's defaults: cutoff {card['cutoff']} Å, 100 Gaussians (width 0.5 Å) for bonds, 89",
        "element types (H to Pu), 3 blocks. Pretext head: matgl MLP 32 -> 64 -> 100 (shipped in `cdssl_head.pt`).",
        f"Noise: sigma = {card['sigma']} Å per Cartesian component.",
        "",
        f"The shipped weights use the {card['weights_backend'].upper()} message-passing convention (matgl >= 3); on",
        "matgl 2.2.x (DGL) they are converted exactly on load (`matgl_cdssl.convert_weights`).",
        "",
        "## Training dataset",
        "",
        card["dataset"],
        "",
        "## Training",
        "",
        f"- {t['epochs']} epochs, {t['wall_time_h']:.2f} h wall time on {t['hardware']}.",
        f"- {t['n_structures']} crystals used ({t['n_train']} train, {t['n_val']} validation); {t['n_skipped']}",
        "  left out because an atom has no neighbour within the 4 Å cutoff (listed with their mp-ids in",
        "  `skipped.csv`).",
        f"- Optimiser: Adam, lr {t['lr']}, cosine decay; batch size {t['batch_size']}; gradient clipping at "
        f"{t['gradient_clip_val']}.",
        f"- Reproduce: `{t['command']}`, then `{t['package_command']}`.",
        "",
        "## Performance metrics",
        "",
        "Pretext task, validation set, best epoch:",
        "",
        "| loss (MSE) | MAE of h(G~) - E_clean | copy-noisy-input baseline MAE | relative margin |",
        "|---|---|---|---|",
        f"| {pre['val_loss']:.5f} | {pre['val_MAE']:.5f} | {pre['val_Baseline_MAE']:.5f} | "
        + (
            f"{100 * pre['margin']:.1f}% below the baseline |"
            if pre["margin"] >= 0
            else f"{-100 * pre['margin']:.1f}% above the baseline (worse) |"
        ),
        "",
    ]
    if down:
        s = down["summary"]
        setup = down["setup"]
        lines += [
            f"Downstream: Materials Project formation energy per atom (eV/atom), {setup['n_train']} training, "
            f"{setup['n_val']} validation and {setup['n_test']} test crystals drawn from the hold-out pool, "
            f"{setup['epochs']} epochs, lr {setup['lr']}, best-validation epoch tested; seeds {setup['seeds']}:",
            "",
            "| initialisation | test MAE, mean ± std over seeds | per seed |",
            "|---|---|---|",
            f"| random (scratch) | {s['scratch']['mean_test_MAE']:.4f} ± {s['scratch']['std_test_MAE']:.4f} | "
            f"{', '.join(f'{x:.4f}' for x in s['scratch']['runs'])} |",
            f"| {card['name']} | {s['CDSSL']['mean_test_MAE']:.4f} ± {s['CDSSL']['std_test_MAE']:.4f} | "
            f"{', '.join(f'{x:.4f}' for x in s['CDSSL']['runs'])} |",
        ]
        old = m.get("previous_downstream")
        if old:
            o = old["summary"]["CDSSL"]
            lines.append(f"| {old['name']} (previous release, same splits) | {o['mean_test_MAE']:.4f} ± "
                         f"{o['std_test_MAE']:.4f} | {', '.join(f'{x:.4f}' for x in o['runs'])} |")  # fmt: skip
        lines += [
            "",
            f"Relative change of the mean test MAE against scratch: {100 * s['relative_change']:+.1f}%"
            + (
                f"; against {old['name']}: {100 * (s['CDSSL']['mean_test_MAE'] / o['mean_test_MAE'] - 1):+.1f}%."
                if old
                else "."
            ),
            "",
        ]
    lines += [
        "## Files",
        "",
        "| file | sha256 |",
        "|---|---|",
        *(f"| `{name}` | `{digest}` |" for name, digest in card["files"].items()),
        "",
        "The checksums are verified on every load by name.",
        "",
        "## Licence and references",
        "",
        f"{card['license']}",
        "",
        *(f"- {c}" for c in card["citation"]),
        "",
    ]
    return "\n".join(lines)


def from_checkpoint(model_dir: Path, checkpoint: Path, out: Path) -> Path:
    """The run's model folder with the backbone and pretext head of ``checkpoint`` (and its epoch count)."""
    import torch

    from matgl_cdssl.hub import load_head, load_model, read_config, read_skipped, save_pretrained

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = load_model(model_dir, fresh_readout=False)
    head = load_head(model_dir, model)
    for prefix, module in (("model.", model), ("head.", head)):
        module.load_state_dict(
            {k.removeprefix(prefix): v for k, v in state["state_dict"].items() if k.startswith(prefix)}
        )
    config = {**read_config(model_dir), "epochs": int(state["epoch"]) + 1, "checkpoint": checkpoint.name,
              "total_wall_time_s": float(state.get("cdssl_elapsed_s", 0.0))}  # fmt: skip
    for key in ("format_version", "matgl_cdssl_version", "backend", "matgl_version", "aggregation", "n_skipped",
                "skipped_file", "best_score", "best_epoch_metric"):  # fmt: skip
        config.pop(key, None)
    skipped = [(row["name"], row["reason"]) for row in read_skipped(model_dir)]
    return save_pretrained(model, out, head=head, config=config, skipped=skipped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--name", required=True, help=f"the release's versioned name, {FAMILY}-YYYY.MM")
    parser.add_argument("--changes", required=True, help="what changed against the previous release")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--downstream", type=Path)
    parser.add_argument("--hardware", default="2 CPU cores (shared development machine)")
    parser.add_argument("--checkpoint", type=Path, help="ship this Lightning checkpoint of the run instead")
    parser.add_argument("--continues", help="the release whose weights the run started from")
    parser.add_argument("--results", type=Path, help="results folder (default docs/results/<name in lower case>)")
    args = parser.parse_args()

    config = yaml.safe_load(args.config.read_text())
    DEST = PRETRAINED / args.name
    DEST.mkdir(parents=True, exist_ok=True)
    source = args.run / "model"
    if args.checkpoint is not None:
        source = from_checkpoint(source, args.checkpoint, DEST.with_name(f".{args.name}.tmp"))
    cdssl = json.loads((source / "cdssl.json").read_text())
    shipped = [name for name in SHIPPED if (source / name).is_file()]  # skipped.csv only if any
    for name in shipped:
        shutil.copy(source / name, DEST / name)
    if args.checkpoint is not None:
        shutil.rmtree(source)
    shutil.copy(ROOT / "configs" / "mp_holdout_ids.txt", DEST / "holdout_ids.txt")
    results = args.results or ROOT / "docs" / "results" / args.name.lower()
    results.mkdir(parents=True, exist_ok=True)
    metrics = pd.read_csv(args.run / "metrics.csv")
    metrics.to_csv(results / "metrics.csv", index=False)
    plot_curves(metrics, results / "curves.png")
    val = metrics.dropna(subset=["val_MAE"])
    if args.checkpoint is not None:  # the shipped epoch's pretext metrics, not the run's best
        val = val[val["epoch"] <= cdssl["epochs"] - 1]
        best = val.loc[val["epoch"].idxmax()]
    else:
        best = val.loc[val["val_Total_Loss"].idxmin()]
    before = {"epochs": 0, "wall_time_h": 0.0}
    if args.continues:
        before = json.loads((PRETRAINED / args.continues / "card.json").read_text())["training"]
    opts = config["pretrain"]
    card = {
        "name": args.name,
        "description": f"MEGNet (matgl defaults) pretrained by crystal denoising (sigma {opts['sigma']} Å) on "
        f"{cdssl['n_structures']:,} Materials Project crystals",
        "architecture": "MEGNet",
        "weights_backend": cdssl["backend"],
        "files": {name: sha256(DEST / name) for name in (*shipped, "holdout_ids.txt")},
        "sigma": opts["sigma"],
        "cutoff": cdssl["cutoff"],
        "dataset": (
            "Materials Project crystals (CC BY 4.0; A. Jain et al., APL Materials 1, 011002 (2013)), 2018-2020 "
            "snapshot as distributed with mt-cgcnn (github.com/kdmsit/mt-cgcnn, MIT). Of the 36,738 crystals, the "
            "10% whose mp-id hashes into the hold-out pool (`matgl_cdssl.data.in_holdout_pool`: SHA-256 of the id, "
            "first 8 bytes mod 10 == 0; 3,735 ids in `holdout_ids.txt`) were never seen in pretraining; they are "
            "kept for finetuning test sets. Pretraining used the other 33,003, without labels."
        ),
        "license": "Weights: CC BY 4.0, as derived from Materials Project data (cite below). Code: BSD-3-Clause.",
        "citation": [
            "C. New, T. Le, M. Pekala, C. D. Stiles, Self-supervised learning for crystal property prediction via "
            "denoising, arXiv:2408.17255 (2024).",
            "C. Chen, W. Ye, Y. Zuo, C. Zheng, S. P. Ong, Graph Networks as a Universal Machine Learning Framework for "
            "Molecules and Crystals, Chem. Mater. 31, 3564 (2019) (MEGNet; matgl).",
            "A. Jain et al., The Materials Project: A materials genome approach to accelerating materials innovation, "
            "APL Materials 1, 011002 (2013).",
        ],
        "metrics": {
            "pretext": {
                "best_epoch": int(best["epoch"]),
                "val_loss": float(best["val_Total_Loss"]),
                "val_MAE": float(best["val_MAE"]),
                "val_Baseline_MAE": float(best["val_Baseline_MAE"]),
                "margin": float(1 - best["val_MAE"] / best["val_Baseline_MAE"]),
            },
        },
        "training": {
            "epochs": before["epochs"] + (cdssl["epochs"] if args.checkpoint else int(val["epoch"].max()) + 1),
            "wall_time_h": before["wall_time_h"]
            + float(cdssl.get("total_wall_time_s", cdssl.get("wall_time_s", 0))) / 3600,
            **({"continues": args.continues, "epochs_before": before["epochs"]} if args.continues else {}),
            **({"checkpoint": args.checkpoint.name} if args.checkpoint else {}),
            "hardware": args.hardware,
            "n_structures": cdssl["n_structures"],
            "n_train": cdssl["n_train"],
            "n_val": cdssl["n_val"],
            "n_skipped": cdssl["n_skipped"],
            "lr": opts.get("lr", 1e-3),
            "batch_size": opts.get("batch_size", 32),
            "gradient_clip_val": opts.get("gradient_clip_val"),
            "config": str(args.config),
            "command": f"cdssl pretrain --config {args.config}",
            "package_command": f"python scripts/package_weights.py {args.run} --name {args.name} --changes ... "
            f"--config {args.config} --downstream {args.downstream}",
        },
        "notes": "Readout freshly initialised on load; weights converted to the DGL convention on matgl 2.2.x.",
        "changes": args.changes,
    }
    if args.downstream and args.downstream.is_file():
        card["metrics"]["downstream"] = json.loads(args.downstream.read_text())
    if args.continues:  # the previous release's hold-out check, beside this one's in the card
        previous = json.loads((PRETRAINED / args.continues / "card.json").read_text())["metrics"].get("downstream")
        if previous:
            card["metrics"]["previous_downstream"] = {"name": args.continues, "summary": previous["summary"]}
    (DEST / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (DEST / "README.md").write_text(card_markdown(card))
    print(f"packaged {args.name} into {DEST}")


if __name__ == "__main__":
    main()
