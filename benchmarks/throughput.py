"""CDSSL pretraining throughput next to matgl's supervised MEGNet training, measured side by side.

Both arms train a fresh matgl MEGNet (default architecture) with Lightning on the same crystals, the same matgl
batches (batch size, loader, collate), the same number of torch threads, and no validation. The supervised arm is
matgl's own ``ModelLightningModule`` on formation energy; the CDSSL arm is ``CDSSLModule``. Rounds alternate
between the arms so that machine noise hits both; the script prints every round and the ratio of the medians.

    python benchmarks/throughput.py [--n 512] [--batch-size 32] [--threads 2] [--epochs 2] [--rounds 5]
"""

from __future__ import annotations

import matgl_cdssl  # first: on matgl 2.2.x it selects the DGL backend before matgl is imported

# isort: split
import argparse
import statistics
import time

import lightning as L
import numpy as np
import torch
from matgl.utils.training import ModelLightningModule

from matgl_cdssl import CDSSLModule
from matgl_cdssl.backend import get_backend, matgl_version
from matgl_cdssl.data import build_dataset


def fit_seconds(module: L.LightningModule, loader, epochs: int) -> float:
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(module, loader)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=512, help="crystals from the bundled sample")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sigma", type=float, default=0.1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    backend = get_backend()
    sample = matgl_cdssl.load_sample(args.n)
    megnet = backend.megnet_class()
    y = sample.labels["formation_energy_per_atom_eV"]
    dataset, _, _ = build_dataset(
        sample.structures, element_types=megnet.element_types, cutoff=megnet.cutoff, labels={"eform": y}
    )
    loader, _ = backend.loaders(dataset, dataset, batch_size=args.batch_size)
    arms = {
        "supervised (matgl ModelLightningModule)": lambda: ModelLightningModule(
            model=backend.megnet_class(), data_mean=float(np.mean(y)), data_std=float(np.std(y))
        ),
        "CDSSL (CDSSLModule)": lambda: CDSSLModule(backend.megnet_class(), sigma=args.sigma),
    }
    n_atoms = sum(len(s) for s in sample.structures)
    print(
        f"matgl {matgl_version()} ({backend.name}), torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{args.n} crystals ({n_atoms} atoms), batch size {args.batch_size}, {args.epochs} epochs per round"
    )
    fit_seconds(arms["supervised (matgl ModelLightningModule)"](), loader, 1)  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(args.rounds):
        for name, make in arms.items() if r % 2 == 0 else reversed(arms.items()):
            seconds = fit_seconds(make(), loader, args.epochs)
            rates[name].append(args.n * args.epochs / seconds)
        print(f"round {r + 1}: " + ", ".join(f"{name}: {rates[name][-1]:.1f} structures/s" for name in arms))
    sup, ssl = (statistics.median(v) for v in rates.values())
    ratios = [c / s for s, c in zip(*rates.values(), strict=True)]
    print(f"median supervised: {sup:.1f} structures/s; median CDSSL: {ssl:.1f} structures/s")
    print(f"ratio CDSSL / supervised (of medians): {ssl / sup:.3f}; per round: {', '.join(f'{x:.3f}' for x in ratios)}")


if __name__ == "__main__":
    main()
