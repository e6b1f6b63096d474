"""Robustness: random valid and invalid crystals (hypothesis), and a run that diverges to NaN.

Every random crystal is drawn with the one defect it has (or none), so each test knows what it must get: the valid
crystals train, embed and predict; the first bad one is refused with its own reason, naming it (``structures[i]``)
and the offending sites or elements; with ``skip_invalid`` every bad one is listed and every good one kept.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass

import lightning as L
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymatgen.core import Lattice, Structure

from matgl_cdssl import CDSSLModule, finetune, load_sample, predict, pretrain
from matgl_cdssl.data import MIN_INTERATOMIC_DISTANCE, build_dataset
from matgl_cdssl.hub import read_config
from matgl_cdssl.method import TrainingDiverged

ELEMENTS = ["H", "Li", "C", "O", "Na", "Si", "Cl", "Fe", "Cu", "Cs"]  # all in MEGNet's element types
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
#: An atom without neighbours, as pretraining and finetuning refuse it (MEGNet's default cutoff, 4 Å).
LONELY = r"has atom\(s\) at site\(s\) \[{}\] with no neighbour within the cutoff of 4\.0 Å; use a larger cutoff"


@dataclass(frozen=True)
class Case:
    """A random crystal and what the checks must say about it.

    Attributes:
        structure: The crystal.
        kind: Its one defect, or ``"valid"``.
        strict: The reason (a regex) pretraining and finetuning refuse it with; None if they accept it.
        lenient: The same where atoms without neighbours are allowed (embed, predict).
    """

    structure: Structure
    kind: str
    strict: str | None = None
    lenient: str | None = None

    @property
    def after_conversion(self) -> bool:
        """Whether the defect shows only in the converted graph (found after every crystal passed the checks)."""
        return self.kind in ("isolated atom", "no edge")


@st.composite
def valid_crystals(draw) -> Structure:
    """One or two atoms in a cell whose edges are 2.6 to 3.9 Å: every atom has neighbours, none overlap."""
    lengths = [draw(st.floats(2.6, 3.9)) for _ in range(3)]
    angles = [draw(st.floats(80.0, 100.0)) for _ in range(3)]
    species = [draw(st.sampled_from(ELEMENTS)) for _ in range(draw(st.integers(1, 2)))]
    coords = [[0.0, 0.0, 0.0], [0.5 + draw(st.floats(-0.05, 0.05)) for _ in range(3)]][: len(species)]
    return Structure(Lattice.from_parameters(*lengths, *angles), species, coords)


@st.composite
def cases(draw) -> Case:
    """A valid crystal (half the time) or one with a single defect, with the reason it must be refused for."""
    kind = draw(st.sampled_from(["valid"] * 8 + list(DEFECTS)))
    if kind == "valid":
        return Case(draw(valid_crystals()), kind)
    structure, strict = DEFECTS[kind](draw)
    return Case(structure, kind, strict, LENIENT.get(kind, strict))


def _nan_coordinates(draw):
    base = draw(valid_crystals())
    site, axis = draw(st.integers(0, len(base) - 1)), draw(st.integers(0, 2))
    coords = base.frac_coords.copy()
    coords[site, axis] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    reason = rf"has non-finite \(NaN or inf\) coordinates at site\(s\) \[{site}\]"
    return Structure(base.lattice, base.species, coords), reason


def _unknown_element(draw):
    base = draw(valid_crystals())
    species = [str(sp) for sp in base.species]
    species[draw(st.integers(0, len(base) - 1))] = "Og"
    return Structure(base.lattice, species, base.frac_coords), r"contains element\(s\) \['Og'\] outside"


def _disorder(draw):
    base = draw(valid_crystals())
    species: list = [str(sp) for sp in base.species]
    species[draw(st.integers(0, len(base) - 1))] = {"Fe": 0.5, "Cu": 0.5}
    structure = Structure(base.lattice, species, base.frac_coords)
    return structure, re.escape(f"({structure.composition.formula}) has partial occupancy or disorder")


def _overlap(draw):
    base = draw(valid_crystals())
    gap = draw(st.floats(0.01, MIN_INTERATOMIC_DISTANCE - 0.01))
    extra = draw(st.sampled_from(ELEMENTS))
    coords = [*base.frac_coords, base.frac_coords[0] + [gap / base.lattice.a, 0.0, 0.0]]
    structure = Structure(base.lattice, [*base.species, extra], coords)
    n, first = len(base), base.species[0]
    distance = structure.get_distance(0, n)
    return structure, rf"has overlapping atoms: sites 0 \({first}\) and {n} \({extra}\) are {distance:.3f} Å apart"


def _degenerate(draw):
    a, b = draw(st.floats(2.6, 3.9)), draw(st.floats(2.6, 3.9))
    flat = Lattice([[a, 0, 0], [0, b, 0], [draw(st.floats(-2.0, 2.0)), draw(st.floats(-2.0, 2.0)), 0]])  # volume 0
    return Structure(flat, ["Na"], [[0, 0, 0]]), r"has a degenerate lattice \(volume"


def _non_finite_lattice(draw):
    matrix = np.diag([draw(st.floats(2.6, 3.9)) for _ in range(3)])
    matrix[draw(st.integers(0, 2)), draw(st.integers(0, 2))] = draw(st.sampled_from([math.nan, math.inf]))
    return Structure(Lattice(matrix), ["Na"], [[0, 0, 0]]), r"has a non-finite \(NaN or inf\) lattice matrix"


def _isolated_atom(draw):
    """A bonded pair and a third atom more than 4 Å from every atom: refused for training, predicted as matgl does."""
    side, bond = draw(st.floats(9.0, 12.0)), draw(st.floats(1.5, 3.5))
    species = [draw(st.sampled_from(ELEMENTS)) for _ in range(3)]
    structure = Structure(Lattice.cubic(side), species, [[0, 0, 0], [bond / side, 0, 0], [0.5, 0.5, 0.5]])
    return structure, LONELY.format(2)


def _no_edge(draw):
    """One atom in a cell of at least 9 Å: no edge at all, refused everywhere."""
    structure = Structure(Lattice.cubic(draw(st.floats(9.0, 12.0))), [draw(st.sampled_from(ELEMENTS))], [[0, 0, 0]])
    return structure, LONELY.format(0)


DEFECTS = {
    "non-finite coordinates": _nan_coordinates,
    "unknown element": _unknown_element,
    "disorder": _disorder,
    "overlapping atoms": _overlap,
    "degenerate lattice": _degenerate,
    "non-finite lattice": _non_finite_lattice,
    "isolated atom": _isolated_atom,
    "no edge": _no_edge,
}

#: What embed() and predict() say instead, where atoms without neighbours are allowed (None: accepted).
LENIENT = {"isolated atom": None, "no edge": r"has no edge at all: no two atoms within the cutoff of 4\.0 Å"}


def _refusals(drawn: list[Case], *, lenient: bool = False) -> list[tuple[str, str]]:
    """``(name, reason)`` of each refused crystal, in the order they are found: the checks, then the graphs."""
    reasons = [
        (f"structures[{i}]", c.lenient if lenient else c.strict, c.after_conversion) for i, c in enumerate(drawn)
    ]
    found = [(name, reason) for name, reason, late in reasons if reason and not late]
    return found + [(name, reason) for name, reason, late in reasons if reason and late]


def _no_usable_crystal(drawn: list[Case], refused: list[tuple[str, str]]) -> str | None:
    """The error when every crystal is refused: none passes the checks, or none of those that do converts."""
    if len(refused) < len(drawn):
        return None
    if all(not c.after_conversion for c in drawn):
        return f"none of the {len(drawn)} structures is usable"
    return "no structure has every atom connected within the cutoff"


def _raises(call, pattern: str) -> None:
    with np.errstate(all="ignore"), pytest.raises(ValueError, match=pattern):
        call()


@SETTINGS
@given(drawn=st.lists(cases(), min_size=1, max_size=4))
def test_each_random_crystal_is_refused_for_its_defect_or_gives_a_finite_loss(drawn, backend, megnet):
    structures = [c.structure for c in drawn]
    convert = {"element_types": megnet.element_types, "cutoff": megnet.cutoff}
    refused = _refusals(drawn)
    if refused:  # the first bad crystal, by name, with its own reason
        name, reason = refused[0]
        _raises(lambda: build_dataset(structures, **convert), rf"^{re.escape(name)} {reason}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skip_invalid logs each crystal it leaves out
        if _no_usable_crystal(drawn, refused):
            _raises(lambda: build_dataset(structures, **convert, skip_invalid=True), _no_usable_crystal(drawn, refused))
            return
        with np.errstate(all="ignore"):
            dataset, names, skipped = build_dataset(structures, **convert, skip_invalid=True)
    assert [name for name, _ in skipped] == [name for name, _ in refused]
    assert all(re.match(pattern, reason) for (_, reason), (_, pattern) in zip(skipped, refused, strict=True))
    kept = [f"structures[{i}]" for i, c in enumerate(drawn) if not c.strict]
    assert sorted(names[int(item[-1]["structure_index"])] for item in dataset) == sorted(kept)
    assert len(dataset) == len(kept)
    _, loader = backend.loaders(dataset, dataset, batch_size=len(dataset))
    module = CDSSLModule(megnet, sigma=0.3, seed=1)
    module.train()
    metrics, n_edges = module.step(next(iter(loader)))
    assert n_edges > 0
    for name, value in metrics.items():
        assert torch.isfinite(value).all(), name
    assert float(metrics["Total_Loss"].detach()) >= 0


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    valid=st.lists(valid_crystals(), min_size=2, max_size=4),
    bad=st.one_of(st.none(), cases().filter(lambda c: c.strict is not None)),
    where=st.integers(0, 4),
    seed=st.integers(0, 10),
)
def test_pretrain_and_finetune_on_random_crystals(valid, bad, where, seed, backend, tmp_path_factory):
    """Valid crystals pretrain, finetune and predict; one bad crystal among them is refused, by name and reason."""
    drawn = [Case(s, "valid") for s in valid]
    if bad is not None:
        drawn.insert(min(where, len(drawn)), bad)
    structures, targets = [c.structure for c in drawn], np.linspace(-1, 1, len(drawn))
    out = tmp_path_factory.mktemp("p")
    options = {"max_epochs": 1, "batch_size": 4, "seed": seed, "enable_progress_bar": False}
    if bad is not None:
        name, reason = _refusals(drawn)[0]
        message = rf"^{re.escape(name)} {reason}"
        _raises(lambda: pretrain(structures, val_fraction=0.0, output_dir=out, **options), message)
        _raises(lambda: finetune(backend.megnet_class(), structures, targets, val_fraction=0.5, **options), message)
        assert not (out / "model").exists()
        return
    model = pretrain(structures, val_fraction=0.0, output_dir=out, **options)
    config = read_config(out / "model")
    assert (config["n_structures"], config["n_train"], config["n_skipped"]) == (len(drawn), len(drawn), 0)
    assert config["epochs"] == 1
    result = finetune(model, structures, targets, val_fraction=0.5, **options)
    assert math.isfinite(result.metrics["best_val_MAE"])
    predictions = predict(result, structures)
    assert predictions.shape == (len(drawn),)
    assert np.isfinite(predictions).all()


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
@given(drawn=st.lists(cases(), min_size=1, max_size=3))
def test_embed_on_random_crystals(drawn, megnet):
    """embed() allows atoms without neighbours (a warning names the crystal); the rest is refused as for training."""
    from matgl_cdssl import embed

    structures = [c.structure for c in drawn]
    refused = _refusals(drawn, lenient=True)
    if _no_usable_crystal(drawn, refused):
        _raises(lambda: embed(megnet, structures), _no_usable_crystal(drawn, refused))
        return
    if refused:  # the first, by name and reason, and how many more
        name, reason = refused[0]
        with np.errstate(all="ignore"), pytest.raises(ValueError, match=rf"^{re.escape(name)} {reason}") as info:
            embed(megnet, structures)
        more = f"({len(refused) - 1} more invalid crystal(s); pass skip_invalid=True to embed the rest)"
        assert str(info.value).endswith(more) if len(refused) > 1 else "more invalid" not in str(info.value)
        return
    with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
        warnings.simplefilter("always")
        X = embed(megnet, structures)
    assert X.shape == (len(structures), 96)
    assert np.isfinite(X).all()
    lonely = [f"structures[{i}]" for i, c in enumerate(drawn) if c.kind == "isolated atom"]
    messages = " ".join(str(w.message) for w in caught if "no neighbour within the cutoff" in str(w.message))
    assert all(name in messages for name in lonely)
    assert bool(messages) == bool(lonely)


class _WorseEveryEpoch(L.Callback):
    """Report a validation loss that grows with the epoch, so that epoch 0 stays the best (checkpoints run last)."""

    def on_validation_end(self, trainer, pl_module) -> None:
        trainer.callback_metrics["val_Total_Loss"] = torch.tensor(float(trainer.current_epoch))


def test_last_checkpoint_is_the_last_epoch_even_when_it_is_not_the_best(sample, tmp_path):
    """Resuming continues after the last finished epoch, not after the best one (Lightning's save_last would)."""
    out = tmp_path / "run"
    pretrain(sample.structures[:16], max_epochs=3, batch_size=8, sigma=0.1, output_dir=out, enable_progress_bar=False,
             callbacks=[_WorseEveryEpoch()])  # fmt: skip
    checkpoints = out / "checkpoints"
    assert torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)["epoch"] == 2
    best = [p for p in checkpoints.glob("epoch=*.ckpt")]
    assert [p.name.split("-")[0] for p in best] == ["epoch=0"]  # the best epoch, restored into the saved model
    assert json.loads((out / "model" / "cdssl.json").read_text())["best_score"] == 0.0
