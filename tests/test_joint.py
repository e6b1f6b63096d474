"""Pretraining from matgl's supervised start, and joint pretraining with a property (``pretrain(targets=...)``)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import matgl_cdssl
from matgl_cdssl.data import train_val_split
from matgl_cdssl.hub import load_model, megnet_of, read_config

SUPERVISED = "MEGNet-MP-2018.6.1-Eform"
QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


@pytest.fixture(scope="module")
def crystals(sample):
    """Sixteen sample crystals with their formation energies (eV/atom)."""
    return sample.structures[:16], [float(v) for v in sample.labels["formation_energy_per_atom_eV"][:16]]


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_the_supervised_name_loads_the_shipped_copy_and_unwraps_to_its_megnet():
    wrapped = load_model(SUPERVISED)
    assert type(wrapped).__name__ == "TransformedTargetModel"
    assert type(megnet_of(wrapped)).__name__ == "MEGNet"


def test_pretrain_continues_the_supervised_backbone_with_a_fresh_head(crystals, tmp_path):
    structures, _ = crystals
    start = _weights(megnet_of(load_model(SUPERVISED)))
    model = matgl_cdssl.pretrain(structures, model=SUPERVISED, max_epochs=0, output_dir=tmp_path, **QUIET)
    assert type(model).__name__ == "MEGNet"
    after = _weights(model)
    assert after.keys() == start.keys()
    assert all(torch.equal(after[k], start[k]) for k in start)  # no epoch: the supervised weights, unchanged
    assert (tmp_path / "model" / "cdssl_head.pt").is_file()
    assert "target" not in read_config(tmp_path / "model")


def test_without_targets_the_readout_is_not_trained_and_with_them_it_is(crystals):
    structures, y = crystals
    readout = ("output_proj", "node_s2s", "edge_s2s")
    start = _weights(megnet_of(load_model(SUPERVISED)))
    plain = _weights(matgl_cdssl.pretrain(structures, model=SUPERVISED, max_epochs=1, batch_size=8, **QUIET))
    joint = _weights(matgl_cdssl.pretrain(structures, model=SUPERVISED, targets=y, max_epochs=1, batch_size=8, **QUIET))
    in_readout = [k for k in start if k.startswith(readout)]
    assert in_readout
    assert all(torch.equal(plain[k], start[k]) for k in in_readout)
    assert any(not torch.equal(joint[k], start[k]) for k in in_readout)


def test_the_property_is_megnets_own_prediction_in_the_starts_units(crystals, tmp_path):
    """With a vanishing rate the logged validation MAE is that of matgl's supervised model on the same crystals."""
    structures, y = crystals
    matgl_cdssl.pretrain(
        structures, model=SUPERVISED, targets=y, max_epochs=1, lr=1e-12, val_fraction=0.5, output_dir=tmp_path, **QUIET
    )
    config = read_config(tmp_path / "model")
    assert config["target"]["mean"] == pytest.approx(-1.65459073)  # the supervised start's own normaliser
    assert config["target"]["std"] == pytest.approx(1.07266128)
    assert config["target"]["weight"] == 1.0
    assert config["target"]["n_labelled"] == len(y)
    assert config["target"]["name"] is None  # an unnamed sequence
    supervised = load_model(SUPERVISED).eval()
    _, val = train_val_split(len(structures), 0.5, 0)
    with torch.no_grad():
        expected = np.mean([abs(float(supervised.predict_structure(structures[i])) - y[i]) for i in val])
    assert expected < 0.2  # matgl's model knows these formation energies
    assert config["last_epoch_metrics"]["val_Property_MAE"] == pytest.approx(expected, rel=1e-3)
    total = config["last_epoch_metrics"]
    assert total["val_Total_Loss"] == pytest.approx(total["val_Pretext_Loss"] + total["val_Property_Loss"], rel=1e-5)


def test_crystals_without_a_label_count_for_the_pretext_only(crystals, tmp_path):
    structures, y = crystals
    partial = [v if i % 2 else math.nan for i, v in enumerate(y)]
    matgl_cdssl.pretrain(structures, targets=partial, target_weight=0.5, max_epochs=1, output_dir=tmp_path, **QUIET)
    config = read_config(tmp_path / "model")
    assert config["target"]["n_labelled"] == len(y) // 2
    labelled = [v for v in partial if not math.isnan(v)]
    assert config["target"]["mean"] == pytest.approx(np.mean(labelled))  # a new model: the labels' own scale
    assert config["target"]["std"] == pytest.approx(np.std(labelled, ddof=1))
    assert math.isfinite(config["last_epoch_metrics"]["train_Total_Loss"])


@pytest.mark.parametrize("cache", [False, True])
def test_the_labels_of_crystals_left_out_do_not_count(crystals, tmp_path, cache):
    """Under skip_invalid the scale and ``n_labelled`` come from the crystals trained on, not from all labels given."""
    from pymatgen.core import Lattice, Structure

    structures, y = crystals
    lonely = Structure(Lattice.cubic(12.0), ["Na"], [[0, 0, 0]])  # no neighbour within 4 Å: left out after conversion
    unknown = Structure(Lattice.cubic(3.0), ["Og"], [[0, 0, 0]])  # not among MEGNet's elements: left out on reading
    matgl_cdssl.pretrain(
        [lonely, *structures, unknown],
        targets=[1000.0, *y, -1000.0],
        skip_invalid=True,
        max_epochs=1,
        output_dir=tmp_path,
        graph_cache=tmp_path / "graphs" if cache else None,
        **QUIET,
    )
    config = read_config(tmp_path / "model")
    assert config["target"]["n_labelled"] == len(y)
    assert config["target"]["mean"] == pytest.approx(np.mean(y))
    assert config["target"]["std"] == pytest.approx(np.std(y, ddof=1))


def test_a_joint_folder_continues_in_its_own_units(crystals, tmp_path):
    structures, y = crystals
    matgl_cdssl.pretrain(structures, model=SUPERVISED, targets=y, max_epochs=1, output_dir=tmp_path / "a", **QUIET)
    matgl_cdssl.pretrain(
        structures, model=tmp_path / "a" / "model", targets=y, max_epochs=1, output_dir=tmp_path / "b", **QUIET
    )
    assert read_config(tmp_path / "b" / "model")["target"]["mean"] == pytest.approx(-1.65459073)


@pytest.mark.parametrize(
    ("targets", "weight", "message"),
    [
        ({"a": [0.0] * 16, "b": [0.0] * 16}, 1.0, "names one property"),
        ([math.nan] * 16, 1.0, "every value is NaN"),
        ([0.0] * 3 + ["abc"] + [0.0] * 12, 1.0, r"targets\[3\] is 'abc'"),
        ([0.0] * 5 + [math.inf] + [0.0] * 10, 1.0, r"targets\[5\] is inf"),
        ([0.0] * 16, 0.0, "target_weight must be a positive number"),
        ([0.0] * 16, -1.0, "target_weight must be a positive number"),
    ],
)
def test_bad_targets_are_refused_before_any_work(crystals, targets, weight, message):
    structures, _ = crystals
    with pytest.raises(ValueError, match=message):
        matgl_cdssl.pretrain(structures, targets=targets, target_weight=weight, max_epochs=1, **QUIET)


def test_too_few_targets_name_the_problem(crystals):
    structures, y = crystals
    with pytest.raises(ValueError, match="label"):
        matgl_cdssl.pretrain(structures, targets=y[:5], max_epochs=1, **QUIET)


def test_cli_reads_the_property_from_the_csv(sample, tmp_path, capsys):
    import pandas as pd

    from matgl_cdssl.cli import main

    rows = pd.DataFrame(
        {
            "cif": [s.to(fmt="cif") for s in sample.structures[:12]],
            "eform": [*sample.labels["formation_energy_per_atom_eV"][:11], ""],
        }
    )
    rows.to_csv(tmp_path / "train.csv", index=False)
    out = tmp_path / "run"
    args = [str(tmp_path / "train.csv"), "--out", str(out), "--max-epochs", "1", "--no-progress-bar"]
    assert main(["pretrain", *args, "--target", "eform", "--target-weight", "0.5"]) == 0
    config = json.loads((out / "model" / "cdssl.json").read_text())
    assert config["target"]["weight"] == 0.5
    assert config["target"]["n_labelled"] == 11
    assert config["target"]["name"] == "eform"  # what the readout learnt, for the leakage of weights made this way
    assert main(["pretrain", *args, "--target", "band_gap"]) != 0
    assert "train.csv: no column 'band_gap'" in capsys.readouterr().err


def test_the_folder_says_which_labels_its_weights_saw(crystals, tmp_path):
    from matgl_cdssl.bench import leaks
    from matgl_cdssl.hub import labels_seen

    structures, y = crystals
    named = {"formation_energy_per_atom_eV": y}
    matgl_cdssl.pretrain(structures, targets=named, max_epochs=0, output_dir=tmp_path / "joint", **QUIET)
    matgl_cdssl.pretrain(structures, model=SUPERVISED, max_epochs=0, output_dir=tmp_path / "inherits", **QUIET)
    matgl_cdssl.pretrain(structures, max_epochs=0, output_dir=tmp_path / "plain", **QUIET)
    matgl_cdssl.pretrain(structures, targets=y, max_epochs=0, output_dir=tmp_path / "unnamed", **QUIET)
    assert labels_seen(tmp_path / "joint" / "model") == ("formation_energy_per_atom_eV",)
    assert labels_seen(tmp_path / "inherits" / "model") == ("mp_formation_energy",)  # from matgl's supervised start
    assert labels_seen(tmp_path / "plain" / "model") == ()
    assert labels_seen(tmp_path / "unnamed" / "model") is None  # not recorded: the report cannot clear it
    for folder in ("joint", "inherits"):
        seen = labels_seen(tmp_path / folder / "model")
        assert leaks("mp_formation_energy", seen)
        assert not leaks("mp_band_gap", seen)
