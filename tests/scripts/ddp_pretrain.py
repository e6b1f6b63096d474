"""Run by tests/test_distributed.py: CDSSL pretraining under Lightning DDP on CPU (gloo), 2 processes.

    python tests/scripts/ddp_pretrain.py OUT_DIR LABEL EPOCHS [--resume] [--graph-cache DIR]

Lightning's DDP launcher starts the second process by re-running this script. Each rank records which crystals it
trained on in each epoch and a digest of its noise stream at each global step in ``OUT_DIR/<LABEL>-rank<r>.json``.
The run writes to ``OUT_DIR/run`` (``--resume`` continues it from its last checkpoint).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import lightning as L

import matgl_cdssl


class Record(L.Callback):
    """Observes the run without changing it: the crystals of each batch, and the noise stream at each step.

    The stream is recorded as a digest of the noise generator's state just before the step's draw, so it does not
    depend on which crystals are in the batch.
    """

    def __init__(self, out: Path, label: str) -> None:
        self.out, self.label = out, label
        self.seen: dict[int, list[int]] = {}
        self.noise: dict[int, float] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        draw = pl_module.noise.displacements

        def recorded(g):
            if pl_module.training:
                state = pl_module.noise.generator.get_state().numpy().tobytes()
                self.noise[trainer.global_step] = hashlib.sha256(state).hexdigest()[:16]
            return draw(g)

        pl_module.noise.displacements = recorded

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        seen = self.seen.setdefault(trainer.current_epoch, [])
        seen += [int(i) for i in batch[3].reshape(-1).tolist()]  # matgl batches the first label: the index

    def on_train_end(self, trainer, pl_module) -> None:
        record = {"seen": self.seen, "noise": self.noise, "world": trainer.world_size}
        (self.out / f"{self.label}-rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":  # not at import: pytest's doctest collection imports this file
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("label")
    parser.add_argument("epochs", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--graph-cache", type=Path)
    args = parser.parse_args()
    structures = matgl_cdssl.load_sample(40).structures
    matgl_cdssl.pretrain(
        structures,
        max_epochs=args.epochs,
        batch_size=4,
        val_fraction=0.2,  # 32 training crystals: 16 per rank, no padding by the distributed sampler
        sigma=0.1,
        seed=7,
        output_dir=args.out / "run",
        resume=args.resume,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        callbacks=[Record(args.out, args.label)],
        enable_progress_bar=False,
        graph_cache=args.graph_cache,
    )
