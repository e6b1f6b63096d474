"""Does a seeded finetuning run repeat bit for bit: twice at one thread count, and at another thread count?

Each run is a fresh process (``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` and ``torch.set_num_threads`` set before any
work, plus the run's own environment, such as ``MKL_CBWR``) that finetunes ``CDSSL-MEGNet-MP`` on the first 60 sample
crystals (validation: the next 30; test: the 200 after) with :func:`matgl_cdssl.finetune` and saves its final
weights. The parent compares the weights with those of the first run of the same table (bit for bit, and the largest
difference) and writes ``results.md`` beside this script.

Tables: ``bits`` (4 epochs; thread counts, the Trainer's ``deterministic``, MKL's strict branch), ``noise`` (60
epochs at one thread with early stopping and the plateau schedule: how far a last-bit change, such as another
machine's kernels, moves the metrics, against another seed) and ``long`` (the same over 200 epochs, no early stop).

Run from the repository root: ``python studies/reproducibility/threads.py [--tables bits noise] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).resolve().parent
STRICT = {"MKL_CBWR": "AVX2,STRICT"}  # MKL's conditional numerical reproducibility: the AVX2 code path, strict mode


class Run(NamedTuple):
    """One finetuning run: ``deterministic`` None leaves the Trainer's setting to ``finetune``'s default."""

    name: str
    threads: int
    deterministic: bool | None = None
    env: dict[str, str] = {}  # noqa: RUF012 (never changed)
    seed: int = 0


BITS = [
    Run("deterministic=False, 1 thread", 1, False),
    Run("deterministic=False, 1 thread (again)", 1, False),
    Run("deterministic=False, 2 threads", 2, False),
    Run("deterministic=False, 2 threads (again)", 2, False),
    Run("default (deterministic on the CPU), 1 thread", 1),
    Run("default, 2 threads", 2),
    Run("default, 2 threads (again)", 2),
    Run("default, 1 thread, MKL_CBWR=AVX2,STRICT", 1, env=STRICT),
    Run("default, 2 threads, MKL_CBWR=AVX2,STRICT", 2, env=STRICT),
    Run("default, 2 threads, MKL_CBWR=AVX2,STRICT (again)", 2, env=STRICT),
]
NOISE = [
    Run("seed 0", 1),
    Run("seed 0, MKL_CBWR=AVX2,STRICT (other GEMM kernels)", 1, env=STRICT),
    Run("seed 0, ATEN_CPU_CAPABILITY=avx2 (other vector kernels)", 1, env={"ATEN_CPU_CAPABILITY": "avx2"}),
    Run("seed 0, 2 threads", 2),
    Run("seed 1", 1, seed=1),
    Run("seed 2", 1, seed=2),
]
LONG = [
    Run("seed 0", 1),
    Run("seed 0, MKL_CBWR=AVX2,STRICT (other GEMM kernels)", 1, env=STRICT),
    Run("seed 1", 1, seed=1),
]
TABLES = {"bits": BITS, "noise": NOISE, "long": LONG}
#: Training options of each table.
OPTIONS = {
    "bits": {"max_epochs": 4, "patience": 0},
    "noise": {"max_epochs": 60, "patience": 20, "lr_patience": 10},
    "long": {"max_epochs": 200, "patience": 0, "lr_patience": 20},
}


def child(run: Run, options: dict, out: Path, label: str) -> None:
    """One finetuning run; its weights go to ``out`` and its metrics to stdout (JSON)."""
    import torch

    torch.set_num_threads(run.threads)
    from matgl_cdssl import finetune, load_sample

    sample = load_sample(290)
    s, y = sample.structures, sample.labels[label]
    extra = {} if run.deterministic is None else {"deterministic": run.deterministic}
    result = finetune("CDSSL-MEGNet-MP", s[:60], y[:60], val_structures=s[60:90], val_targets=y[60:90],
                      test_structures=s[90:], test_targets=y[90:], seed=run.seed, batch_size=16, accelerator="cpu",
                      enable_progress_bar=False, **options, **extra)  # fmt: skip
    state = {k: v.detach().clone() for k, v in result.model.state_dict().items()}
    torch.save(state, out)
    digest = hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()[:16]
    print(json.dumps({"sha": digest, **result.metrics}))


def largest_difference(first: Path, other: Path) -> float:
    """The largest absolute difference between two saved state dicts."""
    import torch

    a, b = torch.load(first), torch.load(other)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def table(name: str, runs: list[Run], label: str, tmp: Path) -> list[str]:
    """Run one table's runs, each in its own process, and return its Markdown rows."""
    rows = []
    for i, run in enumerate(runs):
        weights = tmp / f"{name}{i}.pt"
        env = dict(os.environ, OMP_NUM_THREADS=str(run.threads), MKL_NUM_THREADS=str(run.threads), **run.env)
        spec = json.dumps({"run": run._asdict(), "options": OPTIONS[name], "out": str(weights), "label": label})
        done = subprocess.run([sys.executable, __file__, "--child", spec], env=env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{run.name} failed:\n{done.stderr[-3000:]}")
        m = json.loads(done.stdout.strip().splitlines()[-1])
        diff = largest_difference(tmp / f"{name}0.pt", weights)
        rows.append(f"| {run.name} | `{m['sha']}` | {diff:.3g} | {m['best_val_MAE']:.6f} | {m['best_epoch']:.0f} | "
                    f"{m['test_MAE']:.6f} |")  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def cpu_name() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows: results differ by CPU, so each file says which."""
    info = Path("/proc/cpuinfo")
    names = [
        line.split(":", 1)[1].strip()
        for line in (info.read_text().splitlines() if info.exists() else [])
        if line.startswith("model name")
    ]
    return names[0] if names else platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="formation_energy_per_atom_eV")
    parser.add_argument("--out", type=Path, default=HERE / "results.md")
    parser.add_argument("--tables", nargs="+", choices=sorted(TABLES), default=["bits", "noise"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        child(Run(**spec["run"]), spec["options"], Path(spec["out"]), spec["label"])
        return
    import torch

    head = "| run | weights (sha256) | max abs weight diff vs first | best val MAE | best epoch | test MAE |\n|---|---|"
    head += "---|---|---|---|"
    lines = [
        f"# Reproducibility of a seeded finetuning run ({args.label}; 60 training, 30 validation, 200 test crystals)",
        "",
        f"torch {torch.__version__}, {torch.__config__.parallel_info().splitlines()[3].strip()}, "
        f"CPU {cpu_name()} (capability {torch.backends.cpu.get_cpu_capability()}). Written by `threads.py`.",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.tables:
            lines += ["", f"## {name}: {OPTIONS[name]}", "", head, *table(name, TABLES[name], args.label, Path(tmp))]
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
