"""predict(), ensembles with uncertainty, denoising during finetuning, and `cdssl predict`."""

from __future__ import annotations

import csv
import math

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.core import Lattice, Structure

import matgl_cdssl
from matgl_cdssl.apps import EnsembleResult, FinetuneResult, predict, predict_all
from matgl_cdssl.cli import main
from matgl_cdssl.hub import READOUT, Ensemble, load_model

TINY = {"max_epochs": 2, "batch_size": 8, "patience": None, "enable_progress_bar": False}


@pytest.fixture(scope="module")
def trained(sample, pretrained_session):
    """A model finetuned for two epochs on 30 band gaps, from the session's pretraining run."""
    y = sample.labels["band_gap_eV"]
    return matgl_cdssl.finetune(pretrained_session[1] / "model", sample.structures[:30], y[:30], seed=3, **TINY)


@pytest.fixture(scope="module")
def far_atom() -> Structure:
    """A Na-Cl pair 2.8 Å apart and a Cu atom 6 Å from both: the Cu has no neighbour within 4 Å."""
    return Structure(Lattice.cubic(12.0), ["Na", "Cl", "Cu"], [[0, 0, 0], [2.8 / 12, 0, 0], [0.5, 0.5, 0.5]])


def _loop(model, structures):
    model.eval()
    with torch.no_grad():
        return np.array([float(model.predict_structure(s)) for s in structures])


def test_predict_is_matgl_predict_structure_batched_in_input_order(trained, sample):
    structures = sample.structures[40:47]
    reference = _loop(trained.property_model(), structures)
    for model in (trained, trained.property_model()):  # normalised model + statistics, or the property itself
        for batch_size in (3, 64):  # batches of 3, 3 and 1
            np.testing.assert_allclose(predict(model, structures, batch_size=batch_size), reference, atol=2e-5)
    mean, std = predict(trained, structures, return_std=True)
    np.testing.assert_allclose(mean, reference, atol=2e-5)
    assert np.isnan(std).all()  # one model: no spread
    reversed_order = predict(trained, structures[::-1])
    np.testing.assert_allclose(reversed_order, reference[::-1], atol=2e-5)


def test_predict_takes_atoms_without_neighbours_as_matgl_does(trained, sample, far_atom):
    model = trained.property_model()
    with pytest.warns(UserWarning, match=r"1 crystal\(s\) have atoms with no neighbour.*structures\[1\]"):
        found = predict(model, [sample.structures[0], far_atom])
    np.testing.assert_allclose(found, _loop(model, [sample.structures[0], far_atom]), atol=2e-5)


def test_predict_names_what_it_cannot_predict(trained, sample, CsCl):
    lonely = Structure(Lattice.cubic(10.0), ["Cu"], [[0, 0, 0]])  # no edge at all
    with pytest.raises(ValueError, match=r"structures\[1\] has no edge at all"):
        predict(trained, [CsCl, lonely])
    with pytest.warns(UserWarning, match="1 invalid crystal"):
        found = predict_all(trained, [CsCl, lonely, sample.structures[0]], skip_invalid=True, names=["a", "b", "c"])
    assert np.isnan(found.mean[1])
    assert np.isfinite(found.mean[[0, 2]]).all()
    assert list(found.reasons) == ["b"]
    assert "no edge" in found.reasons["b"]
    with pytest.raises(ValueError, match="pretrained weights, whose readout was never trained"):
        predict("CDSSL-MEGNet-MP", [CsCl])
    with pytest.raises(ValueError, match="batch_size"):
        predict(trained, [CsCl], batch_size=0)


class _BackboneAtStart(L.Callback):
    """Records each run's backbone weights as training starts."""

    def __init__(self):
        self.backbones = []

    def on_train_start(self, trainer, pl_module):
        state = pl_module.model.state_dict()
        self.backbones.append({k: v.detach().clone() for k, v in state.items() if k.split(".")[0] not in READOUT})


def test_an_ensemble_trains_saves_loads_and_predicts_with_uncertainty(pretrained_session, sample, tmp_path):
    y = sample.labels["formation_energy_per_atom_eV"]
    starts_recorder = _BackboneAtStart()
    result = matgl_cdssl.finetune(
        pretrained_session[1] / "model",
        sample.structures[:30],
        y[:30],
        test_structures=sample.structures[30:50],
        test_targets=y[30:50],
        ensemble=3,
        seed=5,
        callbacks=[starts_recorder],
        **TINY,
    )
    assert isinstance(result, EnsembleResult)
    assert len(result.results) == 3
    assert len({r.data_mean for r in result.results}) == 1  # the same training split for every member
    readouts = [r.model.output_proj.layers[-1].weight.detach() for r in result.results]
    assert not torch.equal(readouts[0], readouts[1])  # each member its own initialisation
    # ... and each starts from the pretrained backbone, not from the member trained before it.
    pretrained = load_model(pretrained_session[1] / "model", fresh_readout=False).state_dict()
    starts = starts_recorder.backbones
    assert len(starts) == 3
    for start in starts:
        assert all(torch.equal(start[k], pretrained[k]) for k in start)
    for key in ("test_MAE", "member_test_MAE", "test_spearman_error_std", "test_within_1_std", "test_within_2_std"):
        assert math.isfinite(result.metrics[key]), key
    assert 0 <= result.metrics["test_within_1_std"] <= result.metrics["test_within_2_std"] <= 1

    folder = result.property_model().save(tmp_path / "ensemble")
    loaded = load_model(folder)
    assert isinstance(loaded, Ensemble)
    assert len(loaded) == 3
    structures = sample.structures[30:36]
    members = np.stack([_loop(r.property_model(), structures) for r in result.results])
    mean, std = predict(folder, structures, return_std=True)
    np.testing.assert_allclose(mean, members.mean(0), atol=2e-5)
    assert result.std_scale == result.metrics["std_scale"] == loaded.metadata["std_scale"] > 0  # saved with it
    np.testing.assert_allclose(std, members.std(0, ddof=1) * result.std_scale, atol=2e-5)  # the scaled spread
    assert (std > 0).all()
    np.testing.assert_allclose(float(loaded.predict_structure(structures[0])), members[:, 0].mean(), atol=2e-5)
    mae = np.abs(predict(result, sample.structures[30:50]) - y[30:50]).mean()
    assert mae == pytest.approx(result.metrics["test_MAE"], rel=1e-5)
    with pytest.raises(ValueError, match="ensemble must be a positive"):
        matgl_cdssl.finetune(pretrained_session[1] / "model", sample.structures[:10], y[:10], ensemble=0)


def test_denoising_during_finetuning_adds_the_pretext_loss(pretrained_session, sample, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    y = sample.labels["band_gap_eV"][:24]
    folder = pretrained_session[1] / "model"
    plain = matgl_cdssl.finetune(folder, sample.structures[:24], y, seed=1, **TINY)
    zero = matgl_cdssl.finetune(folder, sample.structures[:24], y, seed=1, denoising_weight=0.0, **TINY)
    state, state0 = plain.model.state_dict(), zero.model.state_dict()
    torch.testing.assert_close(state0, state, atol=1e-5, rtol=1e-4)  # weight 0 is plain finetuning (to float noise)
    logger = CSVLogger(tmp_path, name="", version="")
    denoised = matgl_cdssl.finetune(folder, sample.structures[:24], y, seed=1, denoising_weight=1.0, logger=logger,
                                    **TINY)  # fmt: skip
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics["train_Denoising_Loss"].dropna().gt(0).all()
    changed = denoised.model.state_dict()
    assert max(float((state[k] - changed[k]).abs().max()) for k in state) > 1e-3  # the pretext loss moved them
    with pytest.raises(ValueError, match="needs the pretext head and sigma of a CDSSL pretraining"):
        matgl_cdssl.finetune(denoised.model, sample.structures[:24], y, denoising_weight=1.0, **TINY)


def _write_csv(path, rows):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_cli_finetune_then_predict_on_a_csv_of_cifs(sample, pretrained_session, tmp_path, capsys):
    y = sample.labels["band_gap_eV"]
    train = [{"material_id": f"mp-{i}", "cif": sample.structures[i].to(fmt="cif"), "gap": y[i]} for i in range(24)]
    _write_csv(tmp_path / "train.csv", train)
    out = tmp_path / "ft"
    model = str(pretrained_session[1] / "model")
    args = ["finetune", str(tmp_path / "train.csv"), "--target", "gap", "--out", str(out), "--model", model,
            "--max-epochs", "2", "--batch-size", "8", "--no-progress-bar"]  # fmt: skip
    assert main([*args, "--ensemble", "2"]) == 0
    capsys.readouterr()
    candidates = [
        {"material_id": f"new-{i}", "cif": sample.structures[50 + i].to(fmt="cif"), "note": f"n{i}"} for i in range(5)
    ]
    candidates.insert(2, {"material_id": "broken", "cif": "not a cif", "note": "bad"})
    _write_csv(tmp_path / "candidates.csv", candidates)
    predictions = tmp_path / "predictions.csv"
    command = ["predict", str(out / "model"), str(tmp_path / "candidates.csv"), "--out", str(predictions)]
    assert main(command) == 1
    assert "candidates.csv[broken]: could not read the CIF" in capsys.readouterr().err
    assert main([*command, "--skip-invalid", "--no-progress-bar"]) == 0
    frame = pd.read_csv(predictions, keep_default_na=False)
    assert list(frame["material_id"]) == [c["material_id"] for c in candidates]  # every row, in input order
    assert list(frame["note"]) == [c["note"] for c in candidates]  # the input's columns are kept
    assert frame.loc[2, "prediction"] == ""
    assert "could not read the CIF" in frame.loc[2, "reason"]
    good = frame.drop(index=2)
    values = good["prediction"].astype(float).to_numpy()
    ensemble = load_model(out / "model")
    np.testing.assert_allclose(values, predict(ensemble, sample.structures[50:55]), atol=2e-5)
    assert (good["uncertainty"].astype(float) > 0).all()
    assert (good["reason"] == "").all()


def test_cli_predict_on_files_with_one_model(trained, sample, tmp_path):
    folder = tmp_path / "model"
    trained.property_model().save(folder)
    files = []
    for i in range(3):
        files.append(tmp_path / f"s{i}.cif")
        sample.structures[i].to(filename=str(files[-1]))
    out = tmp_path / "p.csv"
    assert main(["predict", str(folder), *map(str, files), "--out", str(out), "--no-progress-bar"]) == 0
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["id", "prediction"]  # one model: no uncertainty column
    assert list(frame["id"]) == [str(f) for f in files]
    np.testing.assert_allclose(frame["prediction"], _loop(trained.property_model(), sample.structures[:3]), atol=2e-5)


def test_finetune_result_and_property_model_agree(trained, sample):
    """FinetuneResult un-normalises; property_model folds the statistics into the last layer: same numbers."""
    structures = sample.structures[60:64]
    normalised = FinetuneResult(trained.model, trained.data_mean, trained.data_std)
    np.testing.assert_allclose(
        predict(normalised, structures), predict(trained.property_model(), structures), atol=2e-5
    )


def test_an_ensemble_over_several_starts_takes_each_members_backbone_from_its_start(pretrained_session, sample,
                                                                                   tmp_path):  # fmt: skip
    from matgl_cdssl.hub import megnet_of

    folder, eform = pretrained_session[1] / "model", "MEGNet-MP-2018.6.1-Eform"
    y = sample.labels["formation_energy_per_atom_eV"]
    recorder = _BackboneAtStart()
    val = {"val_structures": sample.structures[24:30], "val_targets": y[24:30]}
    result = matgl_cdssl.finetune([folder, eform], sample.structures[:24], y[:24], ensemble=3, seed=2,
                                  callbacks=[recorder], **val, **{**TINY, "max_epochs": 1})  # fmt: skip
    assert isinstance(result, EnsembleResult)
    assert result.starts == [str(folder), eform, str(folder)]  # member k from start k mod 2
    # Member k is the single run from its start with seed + k (what studies/eform-start/selection.py builds on) ...
    single = matgl_cdssl.finetune(eform, sample.structures[:24], y[:24], seed=3, **val, **{**TINY, "max_epochs": 1})
    torch.testing.assert_close(result.results[1].model.state_dict(), single.model.state_dict())
    # ... and the ensemble's val_MAE is that of the members' mean on the validation crystals.
    on_val = np.stack([predict(r, sample.structures[24:30]) for r in result.results])
    assert result.metrics["val_MAE"] == pytest.approx(np.abs(on_val.mean(0) - y[24:30]).mean(), rel=1e-5)
    backbones = [{k: v for k, v in megnet_of(s).state_dict().items() if k.split(".")[0] not in READOUT}
                 for s in (folder, eform)]  # fmt: skip
    assert any(not torch.equal(backbones[0][k], backbones[1][k]) for k in backbones[0])  # two different starts
    for k, start in enumerate(recorder.backbones):
        assert all(torch.equal(start[key], backbones[k % 2][key]) for key in start), f"member {k}"
    saved = load_model(result.property_model().save(tmp_path / "ensemble"))
    assert saved.metadata["starts"] == result.starts
    members = np.stack([_loop(r.property_model(), sample.structures[30:34]) for r in result.results])
    np.testing.assert_allclose(predict(tmp_path / "ensemble", sample.structures[30:34]), members.mean(0), atol=2e-5)
    with pytest.raises(ValueError, match="at least one per start"):
        matgl_cdssl.finetune([folder, eform], sample.structures[:24], y[:24], ensemble=1)


def test_a_single_start_in_a_list_is_the_single_start(pretrained_session, sample):
    folder = pretrained_session[1] / "model"
    y = sample.labels["band_gap_eV"][:24]
    alone = matgl_cdssl.finetune(folder, sample.structures[:24], y, seed=4, ensemble=2, **{**TINY, "max_epochs": 1})
    listed = matgl_cdssl.finetune([folder], sample.structures[:24], y, seed=4, ensemble=2, **{**TINY, "max_epochs": 1})
    assert alone.starts == listed.starts == [str(folder)] * 2
    for a, b in zip(alone.results, listed.results, strict=True):
        torch.testing.assert_close(a.model.state_dict(), b.model.state_dict())
    assert alone.metrics == pytest.approx(listed.metrics)


def test_ensemble_test_metrics_cover_the_same_named_crystals(pretrained_session, sample, far_atom):
    """A test crystal that finetune cannot use is left out of both test_MAE and member_test_MAE, by name."""
    y = sample.labels["formation_energy_per_atom_eV"]
    good = sample.structures[30:36]
    with pytest.warns(UserWarning, match=r"1 invalid test crystal\(s\) left out .*: structures\[6\]"):
        result = matgl_cdssl.finetune(pretrained_session[1] / "model", sample.structures[:24], y[:24], ensemble=2,
                                      test_structures=[*good, far_atom], test_targets=[*y[30:36], 0.0],
                                      skip_invalid=True, **{**TINY, "max_epochs": 1})  # fmt: skip
    assert list(result.left_out) == ["structures[6]"]
    assert "no neighbour" in result.left_out["structures[6]"]
    assert result.metrics["test_left_out"] == 1
    members = np.stack([predict(r, good) for r in result.results])
    assert result.metrics["test_MAE"] == pytest.approx(np.abs(members.mean(0) - y[30:36]).mean(), rel=1e-5)
    assert result.metrics["member_test_MAE"] == pytest.approx(np.abs(members - y[30:36]).mean(), rel=1e-5)
    assert result.metrics["member_test_MAE"] == pytest.approx(
        np.mean([r.metrics["test_MAE"] for r in result.results]), rel=1e-5
    )
    assert result.property_model().metadata["test_left_out"] == result.left_out


def test_cli_finetune_an_ensemble_over_two_starts(sample, pretrained_session, tmp_path):
    import json

    y = sample.labels["band_gap_eV"]
    rows = [{"material_id": f"mp-{i}", "cif": sample.structures[i].to(fmt="cif"), "gap": y[i]} for i in range(24)]
    _write_csv(tmp_path / "train.csv", rows)
    out, folder = tmp_path / "ft", str(pretrained_session[1] / "model")
    command = ["finetune", str(tmp_path / "train.csv"), "--target", "gap", "--out", str(out), "--model", folder,
               "MEGNet-MP-2018.6.1-Eform", "--ensemble", "2", "--max-epochs", "1", "--no-progress-bar"]  # fmt: skip
    assert main(command) == 0
    info = json.loads((out / "model" / "ensemble.json").read_text())
    assert info["starts"] == [folder, "MEGNet-MP-2018.6.1-Eform"]
    assert json.loads((out / "metrics.json").read_text())["model"] == info["starts"]
