"""Package a pretraining run as a release of named weights (``<family>-YYYY.MM``), with its card.

    python scripts/package_weights.py runs/cdssl-megnet-mp --name CDSSL-MEGNet-MP-2026.11 --changes "First release." \
        --config configs/cdssl-megnet-mp.yaml --downstream docs/results/cdssl-megnet-mp/downstream.json
    python scripts/package_weights.py runs/eform-joint --name CDSSL-MEGNet-MP-Eform-2026.12 --changes "First release." \
        --config studies/eform-start/joint.yaml --selection studies/eform-start/selection/selection.md

The family is the name without its version (``CDSSL-MEGNet-MP``, ``CDSSL-MEGNet-MP-Eform``). Copies the run's model
folder into ``<dest-root>/<name>/`` (default ``matgl_cdssl/pretrained/``) together with the hold-out id list, computes
the sha256 of every file, and writes ``card.json`` and the ``README.md`` model card generated from it. Also copies the
run's metrics CSV to the release's results folder (``--results``, default ``docs/results/<name in lower case>/``) and
draws the training curves there.

The card says which labels the weights saw (``labels_seen``, in the benchmark's task names): none for a label-free
run; for a run that started from supervised weights (``--start``, by default the config's ``pretrain.model``) the
start's, and for a joint pretraining (a ``"target"`` in the run's ``cdssl.json``) the learnt property's task too. The
card's texts then name the start and the labels, and warn that the weights leak on those tasks.

``--checkpoint`` ships another epoch than the run's best epoch (say the one that is best downstream): its backbone
and pretext head replace those of the run's model folder. ``--continues NAME`` marks a run that continued release
NAME: the card counts NAME's epochs and wall time too. ``--selection FILE`` puts a markdown selection table (how the
release was chosen) into the card.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "matgl_cdssl" / "pretrained"
SHIPPED = ("model.pt", "state.pt", "model.json", "cdssl.json", "cdssl_head.pt", "skipped.csv")
VERSIONED = re.compile(r"^(?P<family>.+)-(?P<version>\d{4}\.\d{1,2}(?:\.\d+)*)$")  # as matgl_cdssl.hub names them

#: What the card says about a known start: its name in the texts, and what it was trained on.
STARTS = {
    "MEGNet-MP-2018.6.1-Eform": (
        "matgl's supervised `MEGNet-MP-2018.6.1-Eform`",
        "trained on the formation energies of 62,315 Materials Project crystals as of 2018.6.1 (C. Chen, W. Ye, "
        "Y. Zuo, C. Zheng, S. P. Ong, Chem. Mater. 31, 3564 (2019))",
    ),
}

#: The properties the texts name in words (a data column -> what its values are); others are named by their column.
PROPERTIES = {
    "formation_energy_per_atom_eV": "Materials Project formation energies per atom",
    "band_gap_eV": "Materials Project band gaps",
    "total_magnetization_muB": "Materials Project total magnetisations",
}

READOUT = "The embedding, encoders and message-passing blocks are pretrained. **The readout (node and edge Set2Set and"

DATASET = (
    "Materials Project crystals (CC BY 4.0; A. Jain et al., APL Materials 1, 011002 (2013)), 2018-2020 snapshot as "
    "distributed with mt-cgcnn (github.com/kdmsit/mt-cgcnn, MIT). Of the 36,738 crystals, the 10% whose mp-id hashes "
    "into the hold-out pool (`matgl_cdssl.data.in_holdout_pool`: SHA-256 of the id, first 8 bytes mod 10 == 0; 3,735 "
    "ids in `holdout_ids.txt`) were never seen in pretraining; they are kept for finetuning test sets."
)


def sha256(path: Path) -> str:
    """The sha256 of a file, in hex."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def split_name(name: str) -> tuple[str, str]:
    """A release's family and version (``("CDSSL-MEGNet-MP-Eform", "2026.12")`` for ``CDSSL-MEGNet-MP-Eform-2026.12``).

    Raises:
        ValueError: a name without a ``-YYYY.MM`` version.
    """
    match = VERSIONED.match(name)
    if match is None:
        raise ValueError(f"{name!r} is not a versioned release name, <family>-YYYY.MM")
    return match["family"], match["version"]


def shown(path: Path) -> str:
    """A path as the card records it: relative to the repository root where it lies inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def start_name(start: str) -> str:
    """The start as the texts name it."""
    return STARTS[start][0] if start in STARTS else f"`{start}`"


def property_name(column: str) -> str:
    """A learnt property as the texts name it."""
    return PROPERTIES.get(column, f"`{column}` values")


def benchmark_labels(seen: list[str] | tuple[str, ...]) -> list[str]:
    """The benchmark tasks whose labels are among ``seen`` (task names, or the data columns they come from)."""
    from matgl_cdssl.bench import TASKS, leaks

    return [task for task in TASKS if leaks(task, seen)]


def plot_curves(metrics: pd.DataFrame, path: Path, family: str) -> None:
    """Draw the training curves: loss, pretext MAE, gradient norm and, for a joint run, the property's MAE.

    Args:
        metrics: The run's ``metrics.csv``.
        path: Where the figure goes.
        family: The release's family, for the title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    val = metrics.dropna(subset=["val_MAE"])
    train = metrics.dropna(subset=["train_MAE"])
    joint = "val_Property_MAE" in metrics.columns
    fig, axes = plt.subplots(1, 4 if joint else 3, figsize=(18.5 if joint else 14, 3.8))
    axes[0].plot(train["epoch"], train["train_Total_Loss"], label="train")
    axes[0].plot(val["epoch"], val["val_Total_Loss"], label="validation")
    axes[0].set(title="loss (pretext + w x property MSE)" if joint else "loss (MSE)", xlabel="epoch", yscale="log")
    axes[1].plot(train["epoch"], train["train_MAE"], label="train")
    axes[1].plot(val["epoch"], val["val_MAE"], label="validation")
    axes[1].plot(val["epoch"], val["val_Baseline_MAE"], "--", label="copy-noisy-input baseline (val)")
    axes[1].set(title="MAE of h(G~) - E_clean", xlabel="epoch", yscale="log")
    axes[2].plot(train["epoch"], train["train_Grad_Norm"], label="train")
    if "val_Grad_Norm" in val.columns and val["val_Grad_Norm"].notna().any():
        axes[2].plot(val["epoch"], val["val_Grad_Norm"], label="validation")
    axes[2].set(title="gradient norm", xlabel="epoch", yscale="log")
    if joint:
        axes[3].plot(train["epoch"], train["train_Property_MAE"], label="train")
        axes[3].plot(val["epoch"], val["val_Property_MAE"], label="validation")
        axes[3].set(title="MAE of the property", xlabel="epoch", yscale="log")
    for ax in axes:
        ax.legend()
    fig.suptitle(f"{family} pretraining")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def aim_lines(card: dict[str, Any]) -> list[str]:
    """The "Aim" section: what the weights are, what they saw, and how to finetune them."""
    t, seen = card["training"], card.get("labels_seen") or []
    start, learnt = t.get("start"), t.get("labels")
    cdssl = "crystal denoising (CDSSL; New, Le, Pekala, Stiles, arXiv:2408.17255)"
    if not seen and not learnt:
        intro = [
            "A MEGNet backbone pretrained without labels by crystal denoising (CDSSL; New, Le, Pekala, Stiles,",
            "arXiv:2408.17255), to be finetuned on small labelled sets with matgl's standard API:",
        ]
    else:
        made = f"started from {start_name(start)} and trained further by {cdssl}" if start else f"pretrained by {cdssl}"
        if learnt:
            made += (
                f" jointly with a supervised loss: the pretraining split's {property_name(learnt['property'])} "
                f"(column `{learnt['property']}`, {learnt['n_labelled']:,} labelled crystals) were used as labels "
                f"beside the denoising loss, with weight {learnt['weight']}"
            )
        sources = (
            [f"the pretraining split's {property_name(learnt['property'])}, learnt beside the denoising loss"]
            if learnt
            else []
        )
        if t.get("start_labels"):
            sources.append("those its start was trained on (see Training dataset)")
        saw = ", and ".join(sources or ["those recorded in the run's `cdssl.json`"])
        tasks = ", ".join(f"`{task}`" for task in seen)
        leak = (
            f"**These weights saw labels, and LEAK on the benchmark's {tasks} (the card's `labels_seen`): {saw}.** On "
            "those tasks they cannot be compared fairly with label-free weights; the benchmark marks and leaves out "
            "such results."
            if seen
            else f"**These weights saw labels: {saw}.** None is a benchmark task's (the card's `labels_seen` is empty)."
        )
        intro = [
            f"A MEGNet backbone {made}. It is meant to be finetuned on small labelled sets with matgl's standard API.",
            "",
            leak,
            "",
            "To finetune:",
        ]
    return [
        *intro,
        "",
        "```python",
        "import matgl_cdssl",
        "from matgl.utils.training import ModelLightningModule",
        "",
        f'model = matgl_cdssl.load_model("{card["name"]}")  # or matgl.load_model(...) after matgl_cdssl.register()',
        "module = ModelLightningModule(model=model, data_mean=mean, data_std=std)",
        "```",
        "",
        *readout_lines(card),
    ]


def readout_lines(card: dict[str, Any]) -> list[str]:
    """The paragraph on the readout: trained or not, and freshly initialised on load by default."""
    learnt = card["training"].get("labels")
    if learnt:
        return [
            READOUT,
            f"the output MLP) was trained too, on the {property_name(learnt['property'])} (it predicts the value",
            f"standardised with mean {learnt['mean']} and standard deviation {learnt['std']}, as recorded in",
            "`cdssl.json`), but it is still freshly initialised on every load by default** from torch's global RNG",
            "(`load_model(..., fresh_readout=False)` keeps the trained readout).",
        ]
    if card.get("labels_seen"):
        return [
            READOUT,
            "the output MLP) is not trained by the pretext task (it is the start's) and is freshly initialised on",
            "every load** from torch's global RNG (`load_model(..., fresh_readout=False)` keeps the stored readout).",
        ]
    return [
        READOUT,
        "the output MLP) is not trained by the pretext task and is freshly initialised on every load** from torch's",
        "global RNG (`load_model(..., fresh_readout=False)` keeps the stored, untrained initialisation).",
    ]


def training_lines(card: dict[str, Any]) -> list[str]:
    """The "Training" section's bullets."""
    t = card["training"]
    start, learnt = t.get("start"), t.get("labels")
    lines = [f"- {t['epochs']} epochs, {t['wall_time_h']:.2f} h wall time on {t['hardware']}."]
    if card.get("labels_seen") or learnt:  # a label-free card keeps its texts as they were
        if start:
            trained = f", {STARTS[start][1]}" if start in STARTS else ""
            lines.append(f"- Start: the weights of {start_name(start)}{trained}.")
        if learnt:
            lines += [
                f"- Loss: the CDSSL pretext loss plus {learnt['weight']} x the MSE of the standardised property,",
                "  predicted by MEGNet's own readout on the clean crystal: the pretraining split's",
                f"  {property_name(learnt['property'])} (column `{learnt['property']}`, {learnt['n_labelled']:,} "
                f"labelled crystals; mean {learnt['mean']}, standard deviation {learnt['std']}).",
            ]
    lines += [
        f"- {t['n_structures']} crystals used ({t['n_train']} train, {t['n_val']} validation); {t['n_skipped']}",
        "  left out because an atom has no neighbour within the 4 Å cutoff (listed with their mp-ids in",
        "  `skipped.csv`).",
        f"- Optimiser: Adam, lr {t['lr']}, cosine decay; batch size {t['batch_size']}; gradient clipping at "
        f"{t['gradient_clip_val']}.",
        f"- Reproduce: `{t['command']}`, then `{t['package_command']}`.",
    ]
    return lines


def metrics_lines(card: dict[str, Any]) -> list[str]:
    """The "Performance metrics" section: pretext, learnt property and downstream results."""
    m, seen = card["metrics"], card.get("labels_seen") or []
    pre, down, prop = m["pretext"], m.get("downstream", {}), m.get("property")
    lines = [
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
    if prop:
        unit = f" ({prop['unit']})" if prop.get("unit") else ""
        lines += [
            f"Property learnt beside the pretext (`{prop['name']}`), validation set, the same epoch (the best is the",
            f"one of least total validation loss, pretext + w x property: {prop['val_total_loss']:.5f}):",
            "",
            f"| MAE{unit} | loss (MSE of the standardised value) |",
            "|---|---|",
            f"| {prop['val_MAE']:.5f} | {prop['val_loss']:.5f} |",
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
            (
                f"Relative change of the mean test MAE against scratch: {100 * s['relative_change']:+.1f}%; against "
                f"{old['name']}: {100 * (s['CDSSL']['mean_test_MAE'] / o['mean_test_MAE'] - 1):+.1f}%."
                if old
                else f"Relative change of the mean test MAE: {100 * s['relative_change']:+.1f}%."
            ),
            "",
        ]
        if seen and set(benchmark_labels([down.get("task", "")])) & set(seen):
            lines += [
                "**Leakage:** these weights saw this task's labels (see Aim), so the comparison with scratch is not a",
                "test of what pretraining without labels gives.",
                "",
            ]
    return lines


def selection_lines(card: dict[str, Any]) -> list[str]:
    """The "Selection" section (how the release was chosen), if the card has one; headings nest under it."""
    selection = card["metrics"].get("selection")
    if not selection:
        return []
    text = "\n".join(
        f"##{line}" if line.startswith("#") else line for line in selection["markdown"].strip().split("\n")
    )
    return ["## Selection", "", f"How this release was chosen (`{selection['file']}`):", "", text, ""]


def card_markdown(card: dict[str, Any]) -> str:
    """The ``README.md`` model card of a release, generated from its ``card.json`` alone."""
    family, version = split_name(card["name"])
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
        *aim_lines(card),
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
        *training_lines(card),
        "",
        *metrics_lines(card),
        *selection_lines(card),
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


def description(sigma: float, n_structures: int, start: str | None, learnt: dict | None, seen: list[str]) -> str:
    """The card's one-line description (what ``list_models`` shows).

    Args:
        sigma: The noise level, in Å.
        n_structures: The crystals used.
        start: The weights the run started from, if any.
        learnt: The property learnt beside the pretext (the card's ``training.labels``), if any.
        seen: The benchmark tasks whose labels the weights saw.
    """
    if not seen and not learnt:
        return (
            f"MEGNet (matgl defaults) pretrained by crystal denoising (sigma {sigma} Å) on {n_structures:,} Materials "
            "Project crystals"
        )
    text = "MEGNet (matgl defaults)"
    if start:
        text += f" from {start_name(start).replace('`', '')},"
    text += f" pretrained by crystal denoising (sigma {sigma} Å)"
    if learnt:
        text += f" jointly with {property_name(learnt['property']).replace('`', '')} (weight {learnt['weight']})"
    text += f" on {n_structures:,} Materials Project crystals"
    if seen:
        text += f"; saw the labels of {', '.join(seen)} (leaks there)"
    return text


def dataset(start: str | None, start_labels: list[str], learnt: dict | None) -> str:
    """The card's "Training dataset" text: the crystals, the hold-out pool, and the labels used, if any.

    Args:
        start: The weights the run started from, if any.
        start_labels: The benchmark tasks whose labels the start saw.
        learnt: The property learnt beside the pretext (the card's ``training.labels``), if any.
    """
    if learnt:
        used = (
            f" Pretraining used the other 33,003, with their {property_name(learnt['property'])} (column "
            f"`{learnt['property']}`, {learnt['n_labelled']:,} labelled) as labels beside the denoising loss (weight "
            f"{learnt['weight']})."
        )
    else:
        used = " Pretraining used the other 33,003, without labels."
    if start and start_labels:
        trained = STARTS[start][1] if start in STARTS else f"trained on the labels of {', '.join(start_labels)}"
        used += (
            f" The starting weights, {start_name(start)}, were {trained} before this "
            "pretraining: the hold-out pool is unseen by this pretraining, not necessarily by the start (its "
            "training crystals may include hold-out crystals, with their labels)."
        )
    return DATASET + used


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


def labels_of(
    cdssl: dict[str, Any], column: str | None, start: str | None, base: Path
) -> tuple[dict | None, list[str], list[str]]:
    """What the run learnt and what its weights saw.

    Args:
        cdssl: The run's ``cdssl.json``.
        column: The config's ``data.target``, the learnt column if ``cdssl.json`` does not name it.
        start: The weights the run started from: a name, or a folder (relative to ``base`` or to the working folder).
        base: The config's folder.

    Returns:
        The learnt property (``property``, ``n_labelled``, ``weight``, ``mean``, ``std``; None for a label-free run),
        the benchmark tasks whose labels the start saw, and those the weights saw (the start's and the property's).

    Raises:
        ValueError: the labels of the start or the name of the learnt property are unknown.
    """
    from matgl_cdssl.hub import labels_seen

    target = cdssl.get("target") or {}
    learnt = None
    if target.get("weight"):
        name = target.get("name") or column
        if not name:
            raise ValueError(
                "the run learnt a property beside the pretext, but neither cdssl.json nor the config names it"
            )
        learnt = {"property": name, "n_labelled": int(target.get("n_labelled", 0)), "weight": target["weight"],
                  "mean": target.get("mean"), "std": target.get("std")}  # fmt: skip
    start_seen: tuple[str, ...] = ()
    if start:
        found = labels_seen(base / start if (base / start).is_dir() else start)
        if found is None:
            raise ValueError(f"which labels the start {start!r} saw is not known (matgl_cdssl.hub.labels_seen)")
        start_seen = found
    raw = [*start_seen, *(cdssl.get("labels_seen") or []), *([learnt["property"]] if learnt else [])]
    seen = benchmark_labels(raw)
    if learnt and not benchmark_labels([learnt["property"]]):
        print(f"note: the learnt column {learnt['property']!r} is no benchmark task's label; not in labels_seen")
    return learnt, benchmark_labels(list(start_seen)), seen


def main() -> None:
    """Package the run named on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="the run's folder (its model/ folder and metrics.csv)")
    parser.add_argument("--name", required=True, help="the release's versioned name, <family>-YYYY.MM")
    parser.add_argument("--changes", required=True, help="what changed against the previous release")
    parser.add_argument("--config", type=Path, required=True, help="the run's configuration (cdssl pretrain --config)")
    parser.add_argument("--downstream", type=Path)
    parser.add_argument("--hardware", default="2 CPU cores (shared development machine)")
    parser.add_argument("--checkpoint", type=Path, help="ship this Lightning checkpoint of the run instead")
    parser.add_argument("--continues", help="the release whose weights the run started from")
    parser.add_argument("--start", help="the weights the run started from (default: the config's pretrain.model)")
    parser.add_argument("--selection", type=Path, help="a markdown file with the selection table, for the card")
    parser.add_argument("--results", type=Path, help="results folder (default docs/results/<name in lower case>)")
    parser.add_argument("--dest-root", type=Path, default=PRETRAINED, help="where the release's folder goes")
    args = parser.parse_args()
    try:
        family, _ = split_name(args.name)
    except ValueError as e:
        parser.error(str(e))

    config = yaml.safe_load(args.config.read_text())
    opts = config["pretrain"]
    start = args.start or opts.get("model")
    dest = args.dest_root / args.name
    dest.mkdir(parents=True, exist_ok=True)
    source = args.run / "model"
    if args.checkpoint is not None:
        source = from_checkpoint(source, args.checkpoint, dest.with_name(f".{args.name}.tmp"))
    cdssl = json.loads((source / "cdssl.json").read_text())
    try:
        learnt, start_seen, seen = labels_of(cdssl, (config.get("data") or {}).get("target"), start, args.config.parent)
    except ValueError as e:
        parser.error(str(e))
    shipped = [name for name in SHIPPED if (source / name).is_file()]  # skipped.csv only if any
    for name in shipped:
        shutil.copy(source / name, dest / name)
    if args.checkpoint is not None:
        shutil.rmtree(source)
    shutil.copy(ROOT / "configs" / "mp_holdout_ids.txt", dest / "holdout_ids.txt")
    results = args.results or ROOT / "docs" / "results" / args.name.lower()
    results.mkdir(parents=True, exist_ok=True)
    metrics = pd.read_csv(args.run / "metrics.csv")
    metrics.to_csv(results / "metrics.csv", index=False)
    plot_curves(metrics, results / "curves.png", family)
    val = metrics.dropna(subset=["val_MAE"])
    if args.checkpoint is not None:  # the shipped epoch's metrics, not the run's best
        val = val[val["epoch"] <= cdssl["epochs"] - 1]
        best = val.loc[val["epoch"].idxmax()]
    else:
        best = val.loc[val["val_Total_Loss"].idxmin()]
    before = {"epochs": 0, "wall_time_h": 0.0}
    previous = None
    if args.continues:
        folder = args.dest_root / args.continues
        folder = folder if folder.is_dir() else PRETRAINED / args.continues
        previous = json.loads((folder / "card.json").read_text())
        before = previous["training"]
    package = [f"python scripts/package_weights.py {shown(args.run)} --name {args.name} --changes ...",
               f"--config {shown(args.config)}"]  # fmt: skip
    options = {"--downstream": args.downstream, "--checkpoint": args.checkpoint, "--continues": args.continues,
               "--start": args.start, "--selection": args.selection}  # fmt: skip
    for flag, value in options.items():
        if value is not None:
            package.append(f"{flag} {shown(value) if isinstance(value, Path) else value}")
    card = {
        "name": args.name,
        "description": description(opts["sigma"], cdssl["n_structures"], start, learnt, seen),
        "architecture": "MEGNet",
        "weights_backend": cdssl["backend"],
        "files": {name: sha256(dest / name) for name in (*shipped, "holdout_ids.txt")},
        "sigma": opts["sigma"],
        "cutoff": cdssl["cutoff"],
        "dataset": dataset(start, start_seen, learnt),
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
                "val_loss": float(best["val_Pretext_Loss" if "val_Pretext_Loss" in best else "val_Total_Loss"]),
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
            **({"start": start, "start_labels": start_seen} if start else {}),
            **({"labels": learnt} if learnt else {}),
            "hardware": args.hardware,
            "n_structures": cdssl["n_structures"],
            "n_train": cdssl["n_train"],
            "n_val": cdssl["n_val"],
            "n_skipped": cdssl["n_skipped"],
            "lr": opts.get("lr", 1e-3),
            "batch_size": opts.get("batch_size", 32),
            "gradient_clip_val": opts.get("gradient_clip_val"),
            "config": shown(args.config),
            "command": f"cdssl pretrain --config {shown(args.config)}",
            "package_command": " ".join(package),
        },
        "notes": "Readout freshly initialised on load; weights converted to the DGL convention on matgl 2.2.x.",
        "changes": args.changes,
        "labels_seen": seen,
    }
    if learnt:
        from matgl_cdssl.bench import TASKS

        tasks = benchmark_labels([learnt["property"]])
        card["metrics"]["property"] = {
            "name": learnt["property"],
            "unit": TASKS[tasks[0]].unit if tasks else "",
            "val_MAE": float(best["val_Property_MAE"]),
            "val_loss": float(best["val_Property_Loss"]),
            "val_total_loss": float(best["val_Total_Loss"]),
        }
        card["notes"] = (
            f"Readout trained on {learnt['property']} beside the pretext, yet freshly initialised on load by default "
            "(fresh_readout=False keeps it); weights converted to the DGL convention on matgl 2.2.x."
        )
    if seen:
        card["notes"] += f" Leaks on {', '.join(seen)}: the weights saw those labels."
    if args.downstream and args.downstream.is_file():
        card["metrics"]["downstream"] = json.loads(args.downstream.read_text())
    if previous and previous["metrics"].get("downstream"):  # the previous release's hold-out check, beside this one's
        card["metrics"]["previous_downstream"] = {"name": args.continues,
                                                  "summary": previous["metrics"]["downstream"]["summary"]}  # fmt: skip
    if args.selection is not None:
        card["metrics"]["selection"] = {"file": shown(args.selection), "markdown": args.selection.read_text()}
    (dest / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (dest / "README.md").write_text(card_markdown(card))
    print(f"packaged {args.name} into {dest}")


if __name__ == "__main__":
    main()
