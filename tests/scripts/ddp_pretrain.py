"""Run by tests/test_distributed.py: CDSSL pretraining under Lightning DDP on CPU (gloo), 2 processes.

    python tests/scripts/ddp_pretrain.py OUT_DIR [GRAPH_CACHE_DIR]

Lightning's DDP launcher starts the second process by re-running this script. Each rank records which crystals
it trained on in each epoch and the seed of its noise stream in ``OUT_DIR/rank<r>.json``.
"""

from __future__ import annotations

import matgl_cdssl  # first: selects the DGL backend on matgl 2.2.x

# isort: split
import json
import sys
from pathlib import Path

import lightning as L


class Record(L.Callback):
    def __init__(self, out: Path) -> None:
        self.out = out
        self.seen: dict[int, list[int]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        seen = self.seen.setdefault(trainer.current_epoch, [])
        seen += [int(i) for i in batch[3].reshape(-1).tolist()]  # matgl batches the first label: the index

    def on_train_end(self, trainer, pl_module) -> None:
        record = {"seen": self.seen, "noise_seed": pl_module._train_gen.initial_seed(), "world": trainer.world_size}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":  # not at import: pytest's doctest collection imports this file
    OUT = Path(sys.argv[1])
    cache = {"graph_cache": Path(sys.argv[2])} if len(sys.argv) > 2 else {}
    structures = matgl_cdssl.load_sample(40).structures
    matgl_cdssl.pretrain(
        structures,
        max_epochs=2,
        batch_size=4,
        val_fraction=0.2,  # 32 training crystals: 16 per rank, no padding by the distributed sampler
        sigma=0.1,
        seed=7,
        output_dir=OUT / "run",
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        callbacks=[Record(OUT)],
        enable_progress_bar=False,
        **cache,
    )
