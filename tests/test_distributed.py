"""Distributed pretraining: 2-process Lightning DDP on CPU (gloo), run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import matgl_cdssl

pytestmark = pytest.mark.slow  # each test starts 2-process DDP runs

SCRIPT = Path(__file__).parent / "scripts" / "ddp_pretrain.py"


def _ddp(out: Path, label: str, epochs: int, *extra: str) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), label, str(epochs), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((out / f"{label}-rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module", params=["in-memory", "graph-cache"])
def ddp_run(request, tmp_path_factory):
    """A 2-rank run on graphs built in memory, and one on the graph cache (on PyG: matgl's shard sampler)."""
    out = tmp_path_factory.mktemp("ddp")
    cache = ["--graph-cache", str(out / "graphs")] if request.param == "graph-cache" else []
    return out, _ddp(out, "full", 2, *cache)


def test_ddp_ranks_train_on_disjoint_crystals_with_their_own_noise(ddp_run):
    _, ranks = ddp_run
    assert all(r["world"] == 2 for r in ranks)
    for epoch in ("0", "1"):
        seen = [r["seen"][epoch] for r in ranks]
        assert len(seen[0]) == len(seen[1]) == 16
        assert not set(seen[0]) & set(seen[1]), f"ranks must see disjoint crystals (epoch {epoch})"
        assert len(set(seen[0]) | set(seen[1])) == 32  # together, the whole training split
    assert ranks[0]["noise"].keys() == ranks[1]["noise"].keys() == {str(step) for step in range(8)}
    assert all(ranks[0]["noise"][s] != ranks[1]["noise"][s] for s in ranks[0]["noise"])  # each rank its own noise


def test_ddp_run_saves_the_best_checkpoint_as_a_loadable_model_and_synced_metrics(ddp_run, sample):
    run = ddp_run[0] / "run"
    model = matgl_cdssl.load_model(run / "model")
    best = next((run / "checkpoints").glob("epoch=*.ckpt"))
    weights = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
    state = model.state_dict()
    assert all(torch.equal(state[k], weights[f"model.{k}"]) for k in state)  # the saved model is the best epoch
    config = json.loads((run / "model" / "cdssl.json").read_text())
    assert config["epochs"] == 2
    lines = (run / "metrics.csv").read_text().splitlines()
    assert "val_MAE" in lines[0]
    assert len(lines) > 2


def test_a_resumed_ddp_run_draws_each_ranks_own_noise_as_an_uninterrupted_one(ddp_run, tmp_path):
    """Stop after epoch 0, resume to epoch 2: every rank draws at every step what the uninterrupted run drew."""
    out, full = ddp_run
    cache = ["--graph-cache", str(out / "graphs")] if (out / "graphs").exists() else []
    first = _ddp(tmp_path, "first", 1, *cache)
    resumed = _ddp(tmp_path, "resumed", 2, "--resume", *cache)
    for rank in (0, 1):
        assert first[rank]["noise"] == {s: full[rank]["noise"][s] for s in map(str, range(4))}
        assert resumed[rank]["noise"] == {s: full[rank]["noise"][s] for s in map(str, range(4, 8))}
    assert resumed[0]["noise"]["4"] != resumed[1]["noise"]["4"]  # not one stream restored on every rank
