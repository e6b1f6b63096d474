"""Pretraining at Materials Project scale: peak memory, time per epoch and start-up, at 10k, 20k and 33k crystals.

For each size N the script takes the first N crystals of the pretraining split (outside the hold-out pool) of
``mp_multi.csv.gz`` in file order, writes them to a CSV of their own, and runs ``matgl_cdssl.pretrain`` on that
file in a fresh process per run, so that each run's peak resident memory (``ru_maxrss``) is its own:

* ``cold``: ``graph_cache=`` an empty folder: the crystals are read from the CSV and converted one at a time into
  the cache (on PyG, streamed to disk shard by shard), then ``--epochs`` epochs are trained;
* ``warm``: the same call again, stopped after its first training step: start-up with the cache already built;
* ``memory``: (``--in-memory`` sizes) no graph cache: every crystal and graph is held in memory, as
  ``pretrain(structures)`` does with a list of Structures; stopped after the first step.

Start-up is the time from the ``pretrain`` call to the first training batch. Time per epoch is the training part
of each epoch (validation excluded). Everything runs on the CPU with ``--threads`` torch threads.

    python speed/scale.py --csv ../shared/data/mp_multi/mp_multi.csv.gz --out docs/results/performance/scale

Results: ``runs.jsonl`` (one line per run) and ``scale_<backend>.md`` in ``--out``.
"""

from __future__ import annotations

import matgl_cdssl  # on matgl 2.2.x this selects the DGL backend (before or after `import matgl`)

# isort: split
import argparse
import csv
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from matgl_cdssl._backend import get_backend, matgl_version
from matgl_cdssl.data import in_holdout_pool


def write_subsets(source: Path, sizes: list[int], work: Path) -> dict[int, Path]:
    """The first N pretraining-split rows of ``source`` as ``work/mp_<N>.csv.gz`` (0 means all of them)."""
    csv.field_size_limit(2**31 - 1)
    paths = {n: work / f"mp_{n or 'all'}.csv.gz" for n in sizes}
    if all(p.is_file() for p in paths.values()):
        return paths
    with gzip.open(source, "rt", newline="") as f:
        rows = [(r["material_id"], r["cif"]) for r in csv.DictReader(f) if not in_holdout_pool(r["material_id"])]
    for n, path in paths.items():
        with gzip.open(path, "wt", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["material_id", "cif"])
            writer.writerows(rows[: n or None])
    return paths


class Clock(L.Callback):
    """Start-up (pretrain call to first training batch) and the training time of each epoch."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.startup_s: float | None = None
        self.epoch_s: list[float] = []
        self.atoms = self.edges = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.startup_s is None:
            self.startup_s = time.perf_counter() - self.start
        if trainer.current_epoch == 0:  # the size of an epoch in atoms and edges, what its time should scale with
            topo = get_backend().topology(batch[0])
            self.atoms += int(topo.node_graph.numel())
            self.edges += int(topo.src.numel())

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epoch_s.append(time.perf_counter() - self._epoch_start)


def child(args: argparse.Namespace) -> None:
    """One run in this process; prints one JSON line."""
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    clock = Clock(start)
    kwargs = {"max_steps": 1, "limit_val_batches": 0} if args.mode != "cold" else {}
    with tempfile.TemporaryDirectory() as tmp:
        model = matgl_cdssl.pretrain(
            [args.data],
            graph_cache=None if args.mode == "memory" else args.cache,
            max_epochs=args.epochs,
            batch_size=32,
            sigma=0.3,
            val_fraction=0.05,
            seed=0,
            skip_invalid=True,  # as configs/cdssl-megnet-mp.yaml: MP has crystals with isolated atoms
            output_dir=tmp,
            accelerator="cpu",
            devices=1,
            logger=False,
            callbacks=[clock],
            enable_progress_bar=False,
            enable_model_summary=False,
            **kwargs,
        )
        config = json.loads((Path(tmp) / "model" / "cdssl.json").read_text())
    assert model is not None
    print(
        json.dumps(
            {
                "backend": get_backend().name,
                "matgl": matgl_version(),
                "torch": torch.__version__,
                "threads": args.threads,
                "mode": args.mode,
                "n": config["n_structures"],
                "n_train": config["n_train"],
                "n_skipped": len(config["skipped"]),
                "startup_s": round(clock.startup_s or float("nan"), 2),
                "epoch_s": [round(t, 2) for t in clock.epoch_s],
                "train_atoms": clock.atoms,
                "train_edges": clock.edges,
                "total_s": round(time.perf_counter() - start, 2),
                "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
            }
        )
    )


def run(script_args: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": script_args[script_args.index("--threads") + 1]}
    proc = subprocess.run(
        [sys.executable, __file__, *script_args], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"run {script_args} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _epoch(r: dict) -> float:
    """Mean training time of an epoch, leaving out the first when there are more (it includes warm-up)."""
    epochs = r["epoch_s"][1:] or r["epoch_s"]
    return sum(epochs) / len(epochs)


def report(runs: list[dict]) -> str:
    """A markdown table and the ratios the targets are about."""
    backend = runs[0]["backend"]
    lines = [
        f"Pretraining at Materials Project scale: matgl {runs[0]['matgl']} ({backend}), torch {runs[0]['torch']}, "
        f"{runs[0]['threads']} thread(s), batch 32, val_fraction 0.05. Command: "
        "`python speed/scale.py --csv ../shared/data/mp_multi/mp_multi.csv.gz "
        "--out docs/results/performance/scale`",
        "",
        "| crystals | run | start-up (s) | train epochs (s) | training edges | µs per edge per epoch | peak RSS (GB) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        cold = r["mode"] == "cold"
        epochs = ", ".join(f"{t:.1f}" for t in r["epoch_s"]) if cold else ""
        per_edge = f"{_epoch(r) / r['train_edges'] * 1e6:.2f}" if cold and r.get("train_edges") else ""
        edges = f"{r['train_edges']:,}" if cold and r.get("train_edges") else ""
        lines.append(
            f"| {r['n']:,} | {r['mode']} | {r['startup_s']:.1f} | {epochs} | {edges} | {per_edge} | "
            f"{r['peak_rss_gb']:.2f} |"
        )
    cold = sorted((r for r in runs if r["mode"] == "cold"), key=lambda r: r["n"])
    warm = {r["n"]: r for r in runs if r["mode"] == "warm"}
    memory = {r["n"]: r for r in runs if r["mode"] == "memory"}
    lines.append("")
    for r in cold[1:]:
        base = cold[0]
        ratio = (_epoch(r) / r["train_edges"]) / (_epoch(base) / base["train_edges"])
        lines.append(
            f"- Linearity: epoch time per training edge at {r['n']:,} crystals / at {base['n']:,} = {ratio:.3f} "
            f"(1.0 is exactly linear); per crystal: "
            f"{(_epoch(r) / r['n_train']) / (_epoch(base) / base['n_train']):.3f}"
        )
    for r in cold:
        if r["n"] in warm:
            lines.append(
                f"- Start-up at {r['n']:,}: cold {r['startup_s']:.1f} s, warm (cache hit) "
                f"{warm[r['n']]['startup_s']:.1f} s: {r['startup_s'] / warm[r['n']]['startup_s']:.0f}x faster"
            )
    for n, r in memory.items():
        lines.append(
            f"- Peak RSS at {n:,} without a graph cache (all in memory): {r['peak_rss_gb']:.2f} GB; start-up "
            f"{r['startup_s']:.1f} s"
        )
    if cold:
        lines.append(
            f"- Peak RSS at {cold[-1]['n']:,} with the graph cache: {cold[-1]['peak_rss_gb']:.2f} GB (target < 4 GB)"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--csv", type=Path, help="mp_multi.csv.gz")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 20000, 0], help="0: the whole split")
    parser.add_argument("--in-memory", type=int, nargs="*", default=[10000, 0], help="sizes also run without a cache")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "cdssl-scale")
    parser.add_argument("--out", type=Path, default=Path("docs/results/performance/scale"))
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from runs_<backend>.jsonl")
    # internal: one run
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("cold", "warm", "memory"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    backend = get_backend().name
    log = args.out / f"runs_{backend}.jsonl"
    if args.report_only:
        text = report([json.loads(line) for line in log.read_text().splitlines() if line.strip()])
        (args.out / f"scale_{backend}.md").write_text(text)
        print(text)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    paths = write_subsets(args.csv, args.sizes, args.work)
    runs = []
    log.unlink(missing_ok=True)
    for n in args.sizes:
        cache = args.work / f"cache_{backend}_{n or 'all'}"
        common = ["--child", "--data", str(paths[n]), "--cache", str(cache), "--threads", str(args.threads)]
        modes = ["cold", "warm", *(["memory"] if n in args.in_memory else [])]
        for mode in modes:
            if mode == "cold" and cache.exists():
                import shutil

                shutil.rmtree(cache)
            result = run([*common, "--mode", mode, "--epochs", str(args.epochs)])
            print(json.dumps(result), flush=True)
            runs.append(result)
            with log.open("a") as f:
                f.write(json.dumps(result) + "\n")
    text = report(runs)
    (args.out / f"scale_{backend}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
