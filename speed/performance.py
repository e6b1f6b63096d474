"""CDSSL pretraining performance, measured side by side in one run.

1. Throughput: CDSSL pretraining (``CDSSLModule``) against matgl's supervised MEGNet training
   (``ModelLightningModule`` on formation energy). Both train a fresh matgl MEGNet (default architecture) with
   Lightning on the same crystals, the same matgl batches (batch size, loader, collate), the same torch threads and
   no validation. Target: CDSSL >= 0.95x the supervised throughput.
2. Data-loader workers: one CDSSL epoch over the same graphs with matgl's ``MGLDataLoader`` at ``num_workers=0``
   and ``num_workers=2``.
3. Graph cache: ``matgl_cdssl.data._cache.cached_dataset`` on the crystals written to a CSV file (cold: read, check,
   convert and store into a new cache folder) and again on the same file (warm: open the stored graphs); then one
   CDSSL epoch streamed from the cache (shards of 1000 crystals read from disk during the epoch) against one over
   the same graphs in memory.
4. Step profile: per batch, the whole CDSSL training step (forward, backward, optimiser), and its corruption part
   (noise and the clean and noisy bond lengths) done as the step does it (clean bond vectors plus displacement
   differences) against the plain way (displace the graph with ``GaussianPositionNoise``, then rebuild positions and
   lengths for the clean and the noisy graph).

Rounds alternate between the arms of each comparison so that machine noise hits both; every round is printed, then
the ratio of the medians.

    python speed/performance.py [--n 512] [--batch-size 32] [--threads 2] [--epochs 2] [--rounds 5]
"""

from __future__ import annotations

import matgl_cdssl  # on matgl 2.2.x this selects the DGL backend (before or after `import matgl`)

# isort: split
import argparse
import gzip
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
from matgl.utils.training import ModelLightningModule

from matgl_cdssl import CDSSLModule, GaussianPositionNoise
from matgl_cdssl._backend import get_backend, matgl_version
from matgl_cdssl.data import build_dataset
from matgl_cdssl.data._cache import cached_dataset
from matgl_cdssl.method import bond_distances, bond_vectors


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


def side_by_side(name: str, arms: dict[str, Callable[[], float]], rounds: int, unit: str) -> dict[str, float]:
    """Run the arms in alternating order for ``rounds`` rounds; print each round and return the medians."""
    values: dict[str, list[float]] = {arm: [] for arm in arms}
    for r in range(rounds):
        for arm, measure in arms.items() if r % 2 == 0 else reversed(arms.items()):
            values[arm].append(measure())
        print(f"{name}, round {r + 1}: " + ", ".join(f"{arm} {values[arm][-1]:.2f} {unit}" for arm in arms))
    return {arm: statistics.median(v) for arm, v in values.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=512, help="crystals from the bundled sample")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per throughput round")
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
    n_atoms = sum(len(s) for s in sample.structures)
    print(
        f"matgl {matgl_version()} ({backend.name}), torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{args.n} crystals ({n_atoms} atoms), batch size {args.batch_size}"
    )

    # 1. throughput
    def supervised() -> float:
        module = ModelLightningModule(
            model=backend.megnet_class(), data_mean=float(np.mean(y)), data_std=float(np.std(y))
        )
        return args.n * args.epochs / fit_seconds(module, loader, args.epochs)

    def cdssl() -> float:
        return (
            args.n
            * args.epochs
            / fit_seconds(CDSSLModule(backend.megnet_class(), sigma=args.sigma), loader, args.epochs)
        )

    fit_seconds(CDSSLModule(backend.megnet_class(), sigma=args.sigma), loader, 1)  # warm-up
    rates = side_by_side("throughput", {"supervised": supervised, "CDSSL": cdssl}, args.rounds, "structures/s")

    # 2. loader workers
    def epoch(workers: int) -> Callable[[], float]:
        def measure() -> float:
            worker_loader, _ = backend.loaders(dataset, dataset, batch_size=args.batch_size, num_workers=workers)
            return fit_seconds(
                CDSSLModule(backend.megnet_class(), sigma=args.sigma, val_grad_norm=False), worker_loader, 1
            )

        return measure

    epochs = side_by_side("loader workers", {"0 workers": epoch(0), "2 workers": epoch(2)}, args.rounds, "s/epoch")

    # 3. graph cache, from a CSV file
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "crystals.csv.gz"
        with gzip.open(csv, "wt") as f:
            f.write("material_id,cif\n")
            f.writelines(
                f'{i},"{s.to(fmt="cif")}"\n' for i, s in zip(sample.material_ids, sample.structures, strict=True)
            )
        kw = {"element_types": megnet.element_types, "cutoff": megnet.cutoff}
        counter = iter(range(10**6))

        def cache(warm: bool) -> Callable[[], float]:
            def measure() -> float:
                folder = Path(tmp) / f"cache{next(counter)}"
                if warm:
                    cached_dataset(csv, cache_dir=folder, **kw)  # build it first, untimed
                start = time.perf_counter()
                result = cached_dataset(csv, cache_dir=folder, **kw)
                assert result.hit == warm
                return time.perf_counter() - start

            return measure

        cache_s = side_by_side(
            "graph cache", {"cold": cache(False), "warm": cache(True)}, max(3, args.rounds // 2), "s"
        )

        # 3b. an epoch streamed from the cache against one in memory. The cache is opened afresh for each epoch
        # (a hit), so its shard is read from disk within the timed epoch, as every shard of a large set is.
        cached_dataset(csv, cache_dir=Path(tmp) / "stream", **kw)

        def epoch_over(open_data: Callable[[], object]) -> Callable[[], float]:
            def measure() -> float:
                data = open_data()
                data_loader, _ = backend.loaders(data, data, batch_size=args.batch_size)
                module = CDSSLModule(backend.megnet_class(), sigma=args.sigma, val_grad_norm=False)
                return fit_seconds(module, data_loader, 1)

            return measure

        def stream():
            return cached_dataset(csv, cache_dir=Path(tmp) / "stream", **kw).dataset

        streamed = stream()
        stream_s = side_by_side(
            "epoch source",
            {"in memory": epoch_over(lambda: dataset), "graph cache": epoch_over(stream)},
            args.rounds,
            "s",
        )

    # 4. step profile
    batches = list(loader)
    module = CDSSLModule(backend.megnet_class(), sigma=args.sigma).train()
    optimizer = torch.optim.Adam(module.parameters(), 1e-3)
    noise = GaussianPositionNoise(args.sigma, generator=torch.Generator().manual_seed(0))

    def per_batch(work: Callable[[tuple], object], repeats: int = 3) -> Callable[[], float]:
        def measure() -> float:
            start = time.perf_counter()
            for _ in range(repeats):
                for batch in batches:
                    work(batch)
            return (time.perf_counter() - start) / (repeats * len(batches)) * 1e3

        return measure

    def train_step(batch: tuple) -> None:
        optimizer.zero_grad()
        module.step(batch)[0]["Total_Loss"].backward()
        optimizer.step()

    def shortcut(batch: tuple) -> None:
        topo = backend.topology(batch[0])
        clean = bond_vectors(batch[0], batch[1], topo)
        d = noise.displacements(batch[0])
        torch.linalg.vector_norm(clean, dim=1), torch.linalg.vector_norm(clean + d[topo.dst] - d[topo.src], dim=1)

    def plain(batch: tuple) -> None:
        bond_distances(batch[0], batch[1]), bond_distances(noise(batch[0], batch[1]), batch[1])

    step_ms = side_by_side("training step", {"step": per_batch(train_step, 1)}, args.rounds, "ms/batch")
    corruption = side_by_side(
        "corruption", {"as the step does it": per_batch(shortcut), "plain": per_batch(plain)}, args.rounds, "ms/batch"
    )

    print("\nsummary")
    print(
        f"throughput: supervised {rates['supervised']:.1f}, CDSSL {rates['CDSSL']:.1f} structures/s (medians); "
        f"ratio CDSSL / supervised {rates['CDSSL'] / rates['supervised']:.3f} (target >= 0.95)"
    )
    print(
        f"loader workers: epoch {epochs['0 workers']:.2f} s with 0, {epochs['2 workers']:.2f} s with 2; "
        f"throughput ratio 2 / 0 workers {epochs['0 workers'] / epochs['2 workers']:.3f}"
    )
    print(
        f"graph cache ({args.n} crystals from a CSV): cold {cache_s['cold']:.2f} s, warm {cache_s['warm']:.3f} s; "
        f"warm start-up {cache_s['cold'] / cache_s['warm']:.0f}x faster"
    )
    print(
        f"epoch streamed from the graph cache ({type(streamed).__name__}, {streamed.num_shards} shard) "
        f"{stream_s['graph cache']:.2f} s, in memory "
        f"{stream_s['in memory']:.2f} s; ratio {stream_s['graph cache'] / stream_s['in memory']:.3f}"
    )
    print(
        f"step profile (batch {args.batch_size}): training step {step_ms['step']:.1f} ms; corruption and bond lengths "
        f"{corruption['as the step does it']:.2f} ms as the step does it, {corruption['plain']:.2f} ms the plain way "
        f"({corruption['plain'] / corruption['as the step does it']:.1f}x)"
    )


if __name__ == "__main__":
    main()
