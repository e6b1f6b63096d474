"""Robustness: random valid and invalid crystals (hypothesis), and a run that diverges to NaN.

Every input either works or fails with one of our documented errors (a ``ValueError`` that names the crystal);
nothing else may escape.
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pymatgen.core import Lattice, Structure

from matgl_cdssl import CDSSLModule, finetune, load_sample, pretrain
from matgl_cdssl.data import build_dataset
from matgl_cdssl.method import TrainingDiverged

ELEMENTS = ["H", "Li", "C", "O", "Na", "Si", "Cl", "Fe", "Cu", "Cs", "Og"]  # Og: outside MEGNet's element types
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def crystals(draw, max_atoms: int = 5) -> Structure:
    """Random crystals: plausible and implausible cells, any positions, sometimes NaN or unknown elements."""
    if draw(st.booleans()):  # a small cell in which every atom has a neighbour within 4 Å: mostly valid
        a = draw(st.floats(2.2, 3.9))
        n = draw(st.integers(1, 2))
        species = [draw(st.sampled_from(ELEMENTS[:-1])) for _ in range(n)]
        coords = [[draw(st.floats(0.0, 1.0)) for _ in range(3)] for _ in range(n)]
        return Structure(Lattice.cubic(a), species, coords, validate_proximity=False)
    lengths = [draw(st.floats(0.5, 9.0)) for _ in range(3)]
    angles = [draw(st.floats(50.0, 130.0)) for _ in range(3)]
    n = draw(st.integers(1, max_atoms))
    species = [draw(st.sampled_from(ELEMENTS)) for _ in range(n)]
    coords = np.array([[draw(st.floats(0.0, 1.0)) for _ in range(3)] for _ in range(n)])
    if draw(st.booleans()) and draw(st.booleans()):
        coords[draw(st.integers(0, n - 1)), draw(st.integers(0, 2))] = math.nan
    with np.errstate(all="ignore"):
        lattice = Lattice.from_parameters(*lengths, *angles)
    return Structure(lattice, species, coords, validate_proximity=False)


def _documented(error: ValueError) -> bool:
    """Our input errors name the crystal (``structures[i]``) or say that none was usable."""
    return any(text in str(error) for text in ("structures[", "no structure", "none of the"))


def _dataset_or_documented_error(structures, megnet):
    """Build the dataset; a ValueError must name a crystal. Returns None when the input was rejected."""
    error = None
    try:
        with np.errstate(all="ignore"):
            dataset, _, _ = build_dataset(structures, element_types=megnet.element_types, cutoff=megnet.cutoff)
    except ValueError as exc:
        error = exc
    if error is not None:
        assert _documented(error), str(error)
        return None
    return dataset


@SETTINGS
@given(structures=st.lists(crystals(), min_size=1, max_size=3))
def test_transform_and_loss_on_random_crystals(structures, backend, megnet):
    dataset = _dataset_or_documented_error(structures, megnet)
    assume(dataset is not None)
    assume(sum(backend.topology(item[0]).src.numel() for item in dataset) < 20_000)  # keep examples small
    _, loader = backend.loaders(dataset, dataset, batch_size=len(dataset))
    batch = next(iter(loader))
    module = CDSSLModule(megnet, sigma=0.3, seed=1)
    module.train()
    metrics, n_edges = module.step(batch)
    assert n_edges > 0
    for name, value in metrics.items():
        assert torch.isfinite(value).all(), name
    assert float(metrics["Total_Loss"].detach()) >= 0


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(structures=st.lists(crystals(max_atoms=3), min_size=2, max_size=4), seed=st.integers(0, 10))
def test_pretrain_and_finetune_on_random_crystals(structures, seed, backend, tmp_path_factory):
    targets = np.linspace(-1, 1, len(structures))
    error = result = None
    try:
        with np.errstate(all="ignore"):
            model = pretrain(structures, max_epochs=1, batch_size=4, val_fraction=0.0, seed=seed,
                             enable_progress_bar=False, output_dir=tmp_path_factory.mktemp("p"))  # fmt: skip
            result = finetune(model, structures, targets, max_epochs=1, val_fraction=0.5, enable_progress_bar=False)
    except ValueError as exc:
        error = exc
    if error is not None:
        assert _documented(error), str(error)
    else:
        assert math.isfinite(result.metrics["best_val_MAE"])


class _PoisonGradients(L.Callback):
    """Turn one gradient into NaN from a given epoch on, as a diverging run would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.current_epoch >= self.epoch:
            next(p for p in pl_module.parameters() if p.grad is not None).grad.fill_(math.nan)


def test_nan_gradients_stop_the_run_and_keep_the_last_good_checkpoint(sample, tmp_path):
    out = tmp_path / "run"
    kwargs = {"max_epochs": 3, "batch_size": 8, "sigma": 0.1, "enable_progress_bar": False, "output_dir": out}
    with pytest.raises(TrainingDiverged, match=r"non-finite gradient norm .* at epoch 1.*last\.ckpt"):
        pretrain(sample.structures[:24], callbacks=[_PoisonGradients(epoch=1)], **kwargs)
    last = out / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    # The stopped run's metrics are kept, and the run resumes from the last good checkpoint and finishes.
    assert (out / "metrics.csv").is_file()
    pretrain(sample.structures[:24], ckpt_path=last, **kwargs)
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == 2


def test_same_seed_gives_identical_weights_on_cpu(sample, tmp_path):
    def run(name):
        model = pretrain(sample.structures[:24], max_epochs=2, batch_size=8, sigma=0.2, seed=3, accelerator="cpu",
                         enable_progress_bar=False, output_dir=tmp_path / name)  # fmt: skip
        return {k: v.clone() for k, v in model.state_dict().items()}

    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # threaded scatter sums are where runs used to differ in the last bit
    try:
        first, second = run("a"), run("b")
    finally:
        torch.set_num_threads(threads)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.are_deterministic_algorithms_enabled()  # the process-wide setting is given back
    other = pretrain(sample.structures[:24], max_epochs=2, batch_size=8, sigma=0.2, seed=4, accelerator="cpu",
                     enable_progress_bar=False, output_dir=tmp_path / "c").state_dict()  # fmt: skip
    assert not all(torch.equal(first[k], other[k]) for k in first)


KILLED_RUN = """
import os
import sys

import lightning as L

import matgl_cdssl


class Kill(L.Callback):
    # At the start of epoch 3 the checkpoint of epoch 2 is complete (Lightning runs checkpoint callbacks last).
    # os._exit skips every clean-up, as SIGKILL would; the moment is fixed by the epoch, not by a clock.
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 3:
            os._exit(137)


matgl_cdssl.pretrain(matgl_cdssl.load_sample(24).structures, max_epochs=6, batch_size=8, sigma=0.1, seed=0,
                     output_dir=sys.argv[1], enable_progress_bar=False, callbacks=[Kill()])
"""


def test_a_killed_run_resumes_and_reaches_the_same_epoch_count(tmp_path):
    import json
    import os
    import subprocess
    import sys

    import pandas as pd

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, str(out)], env=env, capture_output=True, timeout=600)
    assert proc.returncode == 137, proc.stderr[-2000:]
    assert not (out / "model").exists()  # killed before it could save anything but checkpoints
    killed_at = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["epoch"]
    assert killed_at == 2  # the checkpoint of the last finished epoch: 0-2 done, 3 killed at its start
    pretrain(load_sample(24).structures, max_epochs=6, batch_size=8, sigma=0.1, seed=0,
             output_dir=out, resume=True, enable_progress_bar=False)  # fmt: skip
    assert json.loads((out / "model" / "cdssl.json").read_text())["epochs"] == 6
    epochs = pd.read_csv(out / "metrics.csv")["epoch"].dropna().astype(int)
    assert sorted(set(epochs)) == list(range(6))  # every epoch logged, the ones before the kill kept


def test_max_time_limits_each_resumed_piece_not_the_whole_run(tmp_path):
    """A run resumed after a long first piece still trains for its own ``max_time`` (Lightning's timer would stop)."""
    import pandas as pd

    out, structures = tmp_path / "run", load_sample(16).structures
    kwargs = {"max_epochs": 2, "batch_size": 8, "sigma": 0.1, "seed": 0, "output_dir": out,
              "enable_progress_bar": False, "max_time": "00:00:30:00"}  # fmt: skip
    pretrain(structures, **{**kwargs, "max_epochs": 1})
    last = out / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert 0 < state["callbacks"]["Timer"]["time_elapsed"]["train"] < 1800
    state["callbacks"]["Timer"]["time_elapsed"]["train"] = 7200.0  # as if the first piece had taken two hours
    torch.save(state, last)
    pretrain(structures, **kwargs, resume=True)
    epochs = pd.read_csv(out / "metrics.csv")["epoch"].dropna().astype(int)
    assert sorted(set(epochs)) == [0, 1]  # the second piece trained its epoch
    after = torch.load(last, map_location="cpu", weights_only=False)["callbacks"]["Timer"]["time_elapsed"]["train"]
    assert after > 7200.0  # the checkpoint still counts the whole run's time


def test_resume_needs_an_output_folder(sample):
    with pytest.raises(ValueError, match="resume=True needs output_dir"):
        pretrain(sample.structures[:8], max_epochs=1, resume=True)


@SETTINGS
@given(structures=st.lists(crystals(), min_size=1, max_size=3))
def test_embed_on_random_crystals(structures, megnet):
    from matgl_cdssl import embed

    error = X = None
    try:
        with np.errstate(all="ignore"):
            X = embed(megnet, structures)
    except ValueError as exc:
        error = exc
    if error is not None:
        assert _documented(error), str(error)
    else:
        assert X.shape == (len(structures), 96)
        assert np.isfinite(X).all()
