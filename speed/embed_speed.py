"""Speed of ``matgl_cdssl.analysis.embed`` next to a loop of matgl's ``predict_structure``, measured side by side.

Both arms start from the same pymatgen Structures and the same model (``CDSSL-MEGNet-MP`` by default) and include
everything from structures to numbers: graph conversion with matgl's converter, and the network. ``embed`` also
checks every crystal (overlapping atoms, unknown elements, isolated atoms), batches with matgl's dataset and loader,
and stops after the message-passing blocks; ``predict_structure`` converts and runs one crystal at a time, through
the Set2Set readout and output MLP. Rounds alternate between the arms (and their order), so that machine noise hits
both; the script prints every round and the ratio of the median rates.

    OMP_NUM_THREADS=1 python speed/embed_speed.py [--n 400] [--batch-size 64] [--threads 1] [--rounds 5]
"""

from __future__ import annotations

import matgl_cdssl  # on matgl 2.2.x this selects the DGL backend (before or after `import matgl`)

# isort: split
import argparse
import statistics
import time

import numpy as np
import torch

from matgl_cdssl._backend import get_backend, matgl_version
from matgl_cdssl.analysis import embed


def predict_loop(model: torch.nn.Module, structures: list) -> np.ndarray:
    model.eval()
    with torch.inference_mode():
        return np.array([float(model.predict_structure(s)) for s in structures])


def setup(description: str) -> tuple[argparse.Namespace, torch.nn.Module, list]:
    """The command line shared by the speed checks: ``(args, model, structures)``, with torch's threads set."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="CDSSL-MEGNet-MP")
    parser.add_argument("--n", type=int, default=400, help="crystals from the bundled sample")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args, matgl_cdssl.load_model(args.model), matgl_cdssl.load_sample(args.n).structures


def main() -> None:
    args, model, structures = setup(__doc__.split("\n")[0])
    arms = {
        "embed (batched, no readout)": lambda: embed(model, structures, batch_size=args.batch_size),
        "predict_structure loop": lambda: predict_loop(model, structures),
    }
    n_atoms = sum(len(s) for s in structures)
    print(
        f"matgl {matgl_version()} ({get_backend().name}), torch {torch.__version__}, {torch.get_num_threads()} "
        f"thread(s); {args.model}; {args.n} crystals ({n_atoms} atoms); embed batch size {args.batch_size}"
    )
    side_by_side(arms, args.n, args.rounds, "embed")


def side_by_side(arms: dict, n: int, rounds: int, what: str, unit: str = "structures/s") -> dict[str, float]:
    """Time two arms in alternating rounds (and orders) after a warm-up; print each round, the medians, the ratio."""
    for make in arms.values():  # warm-up
        make()
    rates: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(rounds):
        for name, make in arms.items() if r % 2 == 0 else reversed(arms.items()):
            start = time.perf_counter()
            make()
            rates[name].append(n / (time.perf_counter() - start))
            print(f"round {r + 1}: {name}: {rates[name][-1]:.1f} {unit}")
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, value in medians.items():
        print(f"median {name}: {value:.1f} {unit}")
    batched_rate, loop_rate = medians.values()
    print(f"ratio {what} / predict_structure loop: {batched_rate / loop_rate:.2f}x")
    return medians


if __name__ == "__main__":
    main()
