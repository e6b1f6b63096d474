"""The main job (``examples/demo.py``, run by ``scripts/demo.sh``): public API only, and every step runs.

The run uses ``--quick``: each step (pretraining, three starts on two tasks, the ensemble and its predictions) on a
tiny budget, so that the demo's code path is the one tested, not its numbers.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers import load_script
from tests.test_studies import _private_uses

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.py"


def _demo():
    return load_script(DEMO, "cdssl_demo")


def test_the_demo_uses_only_the_public_api():
    assert _private_uses(DEMO) == []


@pytest.fixture
def demo_process_state():
    """The demo, a script, quietens loggers and warnings for its process: give them back to the other tests."""
    names = ("lightning", "lightning.pytorch", "matgl_cdssl")
    levels = {name: logging.getLogger(name).level for name in names}
    with warnings.catch_warnings():
        yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.slow
def test_the_demo_runs_every_step(tmp_path, demo_process_state):
    demo = _demo()
    results = demo.main(["--quick", "--out", str(tmp_path)])

    assert (tmp_path / "pretrain" / "model" / "cdssl.json").is_file()
    assert sorted(results["task"].unique()) == sorted(demo.TASKS)
    assert sorted(results["start"].unique()) == sorted(demo.STARTS)
    assert np.isfinite(results["test_MAE"]).all()
    leaked = results[results["leakage"]]
    assert list(zip(leaked["start"], leaked["task"], strict=True)) == sorted(demo.LEAKAGE)
    assert pd.read_csv(tmp_path / "results.csv").shape == results.shape

    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert len(predictions) == 8  # --quick's test crystals
    assert (predictions["uncertainty_band_gap_eV"] > 0).all()
    assert np.allclose(predictions["abs_error"], (predictions["predicted_band_gap_eV"] -
                                                  predictions["true_band_gap_eV"]).abs())  # fmt: skip
    assert "(leakage)" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "demo.png").stat().st_size > 0
