"""Distributed pretraining: 2-process Lightning DDP on CPU (gloo), run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import matgl_cdssl

SCRIPT = Path(__file__).parent / "scripts" / "ddp_pretrain.py"


@pytest.fixture(scope="module", params=["in-memory", "graph-cache"])
def ddp_run(request, tmp_path_factory):
    """A 2-rank run on graphs built in memory, and one on the graph cache (on PyG: matgl's shard sampler)."""
    out = tmp_path_factory.mktemp("ddp")
    cache = [str(out / "graphs")] if request.param == "graph-cache" else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), *cache],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_ddp_ranks_train_on_disjoint_crystals_with_their_own_noise(ddp_run):
    ranks = [json.loads((ddp_run / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    for epoch in ("0", "1"):
        seen = [r["seen"][epoch] for r in ranks]
        assert len(seen[0]) == len(seen[1]) == 16
        assert not set(seen[0]) & set(seen[1]), f"ranks must see disjoint crystals (epoch {epoch})"
        assert len(set(seen[0]) | set(seen[1])) == 32  # together, the whole training split
    assert ranks[0]["noise_seed"] != ranks[1]["noise_seed"]  # each rank its own noise, derived from the seed
    assert ranks[0]["noise_seed"] == 7


def test_ddp_run_saves_a_loadable_model_and_synced_metrics(ddp_run, sample):
    run = ddp_run / "run"
    model = matgl_cdssl.load_model(run / "model")
    assert float(model.predict_structure(sample.structures[0])) == pytest.approx(
        float(model.predict_structure(sample.structures[0]))
    )
    config = json.loads((run / "model" / "cdssl.json").read_text())
    assert config["epochs"] == 2
    lines = (run / "metrics.csv").read_text().splitlines()
    assert "val_MAE" in lines[0]
    assert len(lines) > 2
