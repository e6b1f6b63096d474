"""Data pipeline, measured side by side: graph cache cold vs warm, and data-loader workers 0 vs 2.

1. Graph cache: ``matgl_cdssl.graph_cache.cached_dataset`` on the same crystals into a new cache folder (cold: read,
   check and convert, then store) and again into the same folder (warm: load the stored graphs).
2. Loader workers: one CDSSL pretraining epoch (``CDSSLModule`` under a Lightning Trainer, no validation) over the
   same graphs with matgl's ``MGLDataLoader`` at ``num_workers=0`` and ``num_workers=2``.

Rounds alternate between the two arms of each comparison so that machine noise hits both; the script prints every
round and the ratio of the medians.

    python benchmarks/data_pipeline.py [--n 1000] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import matgl_cdssl  # first: on matgl 2.2.x it selects the DGL backend before matgl is imported

# isort: split
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from matgl_cdssl import CDSSLModule
from matgl_cdssl.backend import get_backend, matgl_version
from matgl_cdssl.data import build_dataset
from matgl_cdssl.graph_cache import cached_dataset


def epoch_seconds(dataset, batch_size: int, workers: int) -> float:
    torch.manual_seed(0)
    model = get_backend().megnet_class()
    module = CDSSLModule(model, sigma=0.3, val_grad_norm=False)
    loader, _ = get_backend().loaders(dataset, dataset, batch_size=batch_size, num_workers=workers)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0)  # fmt: skip
    start = time.perf_counter()
    trainer.fit(module, loader)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    structures = matgl_cdssl.load_sample(args.n).structures
    model = get_backend().megnet_class()
    kw = {"element_types": model.element_types, "cutoff": model.cutoff}
    print(f"matgl {matgl_version()} ({get_backend().name}), torch {torch.__version__}, {len(structures)} crystals, "
          f"{args.threads} threads")  # fmt: skip

    cold, warm = [], []
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            _, hit = cached_dataset(structures, cache_dir=Path(tmp), **kw)
            cold.append(time.perf_counter() - start)
            assert not hit
            start = time.perf_counter()
            _, hit = cached_dataset(structures, cache_dir=Path(tmp), **kw)
            warm.append(time.perf_counter() - start)
            assert hit
        print(f"round {r + 1}: graph cache cold {cold[-1]:.2f} s, warm {warm[-1]:.2f} s")
    print(f"graph cache: median cold {statistics.median(cold):.2f} s, warm {statistics.median(warm):.2f} s, "
          f"warm start-up {statistics.median(cold) / statistics.median(warm):.1f}x faster")  # fmt: skip

    dataset, _, _ = build_dataset(structures, **kw)
    times = {0: [], 2: []}
    for r in range(args.rounds):
        for workers in (0, 2) if r % 2 == 0 else (2, 0):
            times[workers].append(epoch_seconds(dataset, args.batch_size, workers))
        print(f"round {r + 1}: epoch with 0 workers {times[0][-1]:.2f} s, with 2 workers {times[2][-1]:.2f} s")
    m0, m2 = statistics.median(times[0]), statistics.median(times[2])
    print(
        f"loader workers: median epoch 0 workers {m0:.2f} s, 2 workers {m2:.2f} s; throughput ratio (2/0) {m0 / m2:.3f}"
    )


if __name__ == "__main__":
    main()
