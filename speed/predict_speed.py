"""Speed of ``matgl_cdssl.predict`` next to a loop of matgl's ``predict_structure``, measured side by side.

Both arms run the same model (``CDSSL-MEGNet-MP``'s architecture and backbone, as a property model) on the same
pymatgen Structures and include everything from structures to numbers: graph conversion with matgl's converter, and
the whole network with its readout. ``predict`` also checks every crystal (overlapping atoms, unknown elements, no
edge), and batches with matgl's dataset and loader; ``predict_structure`` converts and runs one crystal at a time.
The two agree to float rounding (checked before timing). Rounds alternate between the arms (and their order), so that
machine noise hits both; the script prints every round and the ratio of the median rates.

    OMP_NUM_THREADS=1 python speed/predict_speed.py [--n 400] [--batch-size 64] [--threads 1] [--rounds 5]
"""

from __future__ import annotations

# isort: split

import numpy as np
import torch
from embed_speed import predict_loop, setup, side_by_side  # the same harness as embed's speed check

from matgl_cdssl import predict
from matgl_cdssl._backend import get_backend, matgl_version


def main() -> None:
    args, model, structures = setup(__doc__.split("\n")[0])
    gap = np.abs(predict(model, structures, batch_size=args.batch_size) - predict_loop(model, structures)).max()
    print(f"largest difference between the arms' predictions: {gap:.2e}")
    arms = {
        "predict (batched)": lambda: predict(model, structures, batch_size=args.batch_size),
        "predict_structure loop": lambda: predict_loop(model, structures),
    }
    n_atoms = sum(len(s) for s in structures)
    print(
        f"matgl {matgl_version()} ({get_backend().name}), torch {torch.__version__}, {torch.get_num_threads()} "
        f"thread(s); {args.model}; {args.n} crystals ({n_atoms} atoms); predict batch size {args.batch_size}"
    )
    side_by_side(arms, args.n, args.rounds, "predict", unit="predictions/s")


if __name__ == "__main__":
    main()
