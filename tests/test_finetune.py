"""finetune(): matgl's ModelLightningModule on labelled crystals, from a pretrained folder or a fresh MEGNet."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch

from matgl_cdssl.apps import finetune


@pytest.fixture(scope="module")
def pretrained_dir(pretrained_session):
    return pretrained_session[1] / "model"


def test_finetune_from_folder_reports_metrics(pretrained_dir, sample):
    y = sample.labels["formation_energy_per_atom_eV"]
    s = sample.structures
    result = finetune(
        pretrained_dir,
        s[:40],
        y[:40],
        val_structures=s[40:56],
        val_targets=y[40:56],
        test_structures=s[56:80],
        test_targets=y[56:80],
        max_epochs=3,
        batch_size=8,
        enable_progress_bar=False,
    )
    assert type(result.model).__name__ == "MEGNet"
    assert set(result.metrics) == {"best_val_MAE", "best_epoch", "epochs", "test_MAE"}
    assert all(math.isfinite(v) for v in result.metrics.values())
    assert result.data_mean == pytest.approx(float(np.mean(y[:40])), rel=1e-6)
    assert 0 <= result.metrics["best_epoch"] < 3


def test_finetune_holds_out_validation_when_not_given(backend, sample):
    y = sample.labels["band_gap_eV"][:30]
    result = finetune(
        backend.megnet_class(), sample.structures[:30], y, val_fraction=0.2, max_epochs=1, enable_progress_bar=False
    )
    assert math.isfinite(result.metrics["best_val_MAE"])
    # min_val holds out at least that many: all 30 here (3 by the fraction), so none would be left to train on.
    with pytest.raises(ValueError, match=r"30 structure\(s\) are too few for val_fraction=0.1 with min_val=30"):
        finetune(backend.megnet_class(), sample.structures[:30], y, val_fraction=0.1, min_val=30, max_epochs=1)


def test_finetune_rejects_bad_targets(backend, sample):
    s = sample.structures[:4]
    with pytest.raises(ValueError, match=r"targets has non-finite values \(NaN or inf\) at index\(es\) \[2\]"):
        finetune(backend.megnet_class(), s, [0.1, 0.2, math.nan, 0.3], max_epochs=1)
    with pytest.raises(ValueError, match="targets has 3 values for 4 structures"):
        finetune(backend.megnet_class(), s, [0.1, 0.2, 0.3], max_epochs=1)


def _snapshot(model):
    from matgl_cdssl.apps import split_parameters

    backbone, readout = split_parameters(model)
    return [p.detach().clone() for p in backbone], [p.detach().clone() for p in readout]


def _changed(before, after):
    return [not bool((a == b).all()) for a, b in zip(before, after, strict=True)]


@pytest.mark.parametrize("option", [{"freeze_backbone": True}, {"backbone_lr": 0.0}])
def test_frozen_or_zero_rate_backbone_keeps_pretrained_weights(pretrained_dir, sample, option):
    from matgl_cdssl import load_model

    model = load_model(pretrained_dir)
    backbone0, readout0 = _snapshot(model)
    y = sample.labels["band_gap_eV"]
    result = finetune(
        model, sample.structures[:24], y[:24], max_epochs=2, batch_size=8, enable_progress_bar=False, **option
    )
    backbone1, readout1 = _snapshot(result.model)
    assert not any(_changed(backbone0, backbone1))
    assert any(_changed(readout0, readout1))
    assert all(p.requires_grad for p in result.model.parameters())  # unfrozen again for the caller


def test_backbone_and_readout_learning_rates(backend):
    from matgl_cdssl.apps import optimizer_for, split_parameters

    model = backend.megnet_class()
    backbone, readout = split_parameters(model)
    assert len(backbone) + len(readout) == len(list(model.parameters()))
    groups = optimizer_for(model, lr=1e-3, backbone_lr=1e-4).param_groups
    assert [g["lr"] for g in groups] == [1e-3, 1e-4]
    assert [len(g["params"]) for g in groups] == [len(readout), len(backbone)]
    frozen = optimizer_for(model, lr=1e-3, freeze_backbone=True).param_groups
    assert len(frozen) == 1
    assert not any(p.requires_grad for p in backbone)


def test_state_attributes_of_another_width_train_save_and_load(backend, sample, tmp_path):
    import matgl
    import torch

    s, y = sample.structures[:30], sample.labels["formation_energy_per_atom_eV"][:30]
    temperature = np.linspace(0, 1, 30)[:, None] * np.ones((1, 3))
    result = finetune(
        backend.megnet_class(),
        s[:20],
        y[:20],
        state_attr=temperature[:20],
        val_structures=s[20:],
        val_targets=y[20:],
        val_state_attr=temperature[20:],
        max_epochs=1,
        enable_progress_bar=False,
    )
    assert result.model.state_encoder.layers[0].in_features == 3
    result.model.save(tmp_path / "m")
    loaded = matgl.load_model(tmp_path / "m")
    a = loaded.predict_structure(s[0], state_attr=torch.tensor([[0.0, 0.0, 0.0]]))
    b = loaded.predict_structure(s[0], state_attr=torch.tensor([[1.0, 1.0, 1.0]]))
    assert float(a) != float(b)


def test_state_attributes_are_checked(backend, sample):
    s, y = sample.structures[:6], sample.labels["band_gap_eV"][:6]
    with pytest.raises(ValueError, match="val_state_attr is needed too"):
        finetune(
            backend.megnet_class(),
            s[:4],
            y[:4],
            state_attr=np.zeros((4, 2)),
            val_structures=s[4:],
            val_targets=y[4:],
            max_epochs=1,
        )
    with pytest.raises(ValueError, match=r"shape \(n_structures, k\) = \(4, k\).*NaN or inf"):
        finetune(backend.megnet_class(), s[:4], y[:4], state_attr=[[0.0, 1.0]] * 3 + [[math.nan, 0.0]], max_epochs=1)


def test_property_model_predicts_the_property_itself(backend, sample):
    y = sample.labels["formation_energy_per_atom_eV"][:24]
    result = finetune(backend.megnet_class(), sample.structures[:24], y, max_epochs=1, enable_progress_bar=False)
    assert result.data_std != pytest.approx(1.0)
    s = sample.structures[30]
    normalised = float(result.model.predict_structure(s))
    direct = float(result.property_model().predict_structure(s))
    assert direct == pytest.approx(normalised * result.data_std + result.data_mean, rel=1e-5, abs=1e-6)
    assert float(result.model.predict_structure(s)) == pytest.approx(normalised)  # the original is untouched


def test_cli_finetune_writes_a_matgl_model_that_predicts_the_property(pretrained_dir, sample, tmp_path, capsys):
    import json

    import matgl
    import pandas as pd

    from matgl_cdssl.cli import main

    frame = pd.DataFrame(
        {
            "material_id": sample.material_ids[:40],
            "cif": [s.to(fmt="cif") for s in sample.structures[:40]],
            "e_form": sample.labels["formation_energy_per_atom_eV"][:40],
        }
    )
    frame[:30].to_csv(tmp_path / "train.csv", index=False)
    frame[30:].to_csv(tmp_path / "test.csv", index=False)
    out = tmp_path / "ft"
    code = main(["finetune", str(tmp_path / "train.csv"), "--target", "e_form", "--model", str(pretrained_dir),
                 "--test", str(tmp_path / "test.csv"), "--out", str(out), "--max-epochs", "2", "--batch-size", "8",
                 "--freeze-backbone", "--no-progress-bar"])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"test_MAE", "best_val_MAE", "data_mean", "data_std"} <= set(metrics)
    model = matgl.load_model(out / "model")
    predictions = np.array([float(model.predict_structure(s)) for s in sample.structures[30:40]])
    mae = float(np.abs(predictions - frame["e_form"][30:].to_numpy()).mean())
    assert mae == pytest.approx(metrics["test_MAE"], rel=1e-4)


def test_cli_finetune_names_a_bad_target_row(tmp_path, sample, capsys):
    import pandas as pd

    from matgl_cdssl.cli import main

    pd.DataFrame({"cif": [s.to(fmt="cif") for s in sample.structures[:3]], "y": ["0.1", "", "0.3"]}).to_csv(
        tmp_path / "d.csv", index=False
    )
    assert main(["finetune", str(tmp_path / "d.csv"), "--target", "y", "--out", str(tmp_path / "o")]) == 1
    assert "d.csv[1]: column 'y' holds '', not a finite number" in capsys.readouterr().err


def _fit_logging(backend, sample, root, **kwargs):
    """finetune a fresh MEGNet on 24 crystals with a CSV log of the epochs; the log as a frame."""
    import pandas as pd
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger

    torch.manual_seed(0)  # the same fresh MEGNet every time
    finetune(
        backend.megnet_class(),
        sample.structures[:24],
        sample.labels["band_gap_eV"][:24],
        val_fraction=0.25,
        batch_size=9,
        logger=CSVLogger(root, name="", version=""),
        callbacks=[LearningRateMonitor(logging_interval="epoch")],
        enable_progress_bar=False,
        **kwargs,
    )
    return pd.read_csv(root / "metrics.csv")


def test_finetuning_learning_rate_steps_once_per_epoch(backend, sample, tmp_path):
    """Each parameter group's logged rate is matgl's cosine of that epoch (matgl 2.2.x would step it twice)."""
    metrics = _fit_logging(backend, sample, tmp_path, max_epochs=4, patience=None, lr_patience=None, lr=2e-3,
                           backbone_lr=5e-4)  # fmt: skip
    columns = sorted(c for c in metrics.columns if c.startswith("lr-"))
    assert len(columns) == 2  # readout and backbone
    cosine = np.array([0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])
    logged = {c: metrics[c].dropna().to_numpy() for c in columns}  # one row per epoch, in order
    assert all(len(v) == 4 for v in logged.values())
    assert {round(float(v[0]), 9) for v in logged.values()} == {2e-3, 5e-4}
    for values in logged.values():
        np.testing.assert_allclose(values, values[0] * cosine, rtol=1e-6)


def test_plateau_schedule_halves_every_rate_when_validation_stalls(backend, sample, tmp_path):
    """With lr_patience=1 and rates too small to improve validation, every group's rate halves every second epoch."""
    metrics = _fit_logging(backend, sample, tmp_path, max_epochs=6, patience=None, lr_patience=1, lr=2e-6,
                           backbone_lr=5e-7)  # fmt: skip
    logged = {c: metrics[c].dropna().to_numpy() for c in metrics.columns if c.startswith("lr-")}
    assert len(logged) == 2  # readout and backbone
    for values in logged.values():  # epochs 0-2 at the start rate; the stall is seen after epochs 2 and 4
        np.testing.assert_allclose(values / values[0], [1, 1, 1, 0.5, 0.5, 0.25], rtol=1e-6)


def test_the_shorter_run_inside_a_longer_one_is_the_shorter_run(backend, sample):
    """fit(shorter=(patience, max_epochs)) under the plateau schedule reports the shorter run, trained alone."""
    s, y = sample.structures, sample.labels["band_gap_eV"]
    data = {"val_structures": s[24:32], "val_targets": y[24:32], "test_structures": s[32:48], "test_targets": y[32:48]}

    def run(**options):
        torch.manual_seed(0)  # the same fresh MEGNet every time
        model = backend.megnet_class()
        return finetune(model, s[:24], y[:24], batch_size=8, lr=1e-3, lr_patience=1, enable_progress_bar=False,
                        **data, **options)  # fmt: skip

    short = run(max_epochs=6, patience=None)
    longer = run(max_epochs=9, patience=None, shorter=(100, 6))
    inside = {k.removeprefix("shorter_"): v for k, v in longer.metrics.items() if k.startswith("shorter_")}
    assert inside["epochs"] == short.metrics["epochs"] == 6  # stopped by the shorter cap, not its patience
    assert short.metrics["best_epoch"] > 0  # a later epoch than the first, which any schedule would share
    assert inside["best_epoch"] == short.metrics["best_epoch"]
    assert inside["best_val_MAE"] == pytest.approx(short.metrics["best_val_MAE"], rel=1e-6)
    assert inside["test_MAE"] == pytest.approx(short.metrics["test_MAE"], rel=1e-6)
    assert longer.metrics["epochs"] == 9
    assert longer.metrics["best_val_MAE"] <= inside["best_val_MAE"]


def test_a_shorter_run_under_the_cosine_schedule_is_refused(backend, sample):
    """Under the cosine decay the cap sets the schedule: a longer run does not hold the shorter one."""
    s, y = sample.structures, sample.labels["band_gap_eV"]
    with pytest.raises(ValueError, match="shorter= needs the plateau schedule"):
        finetune(backend.megnet_class(), s[:16], y[:16], val_structures=s[16:24], val_targets=y[16:24], max_epochs=4,
                 lr_patience=None, shorter=(100, 2), enable_progress_bar=False)  # fmt: skip


class _StartOfTraining(L.Callback):
    """Records each run's weights and validation-set size as training starts."""

    def __init__(self):
        self.states, self.n_val = [], []

    def on_train_start(self, trainer, pl_module):
        self.states.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})
        self.n_val.append(len(trainer.val_dataloaders.dataset))


def _readout(key):
    from matgl_cdssl.hub import READOUT

    return key.split(".")[0] in READOUT


def test_training_options_default_to_the_benchmark_protocol(backend, sample):
    """One record holds the defaults; they are the benchmark's tested budget, and finetune and the CLI read them."""
    import inspect

    from matgl_cdssl.apps import TrainOptions, fit
    from matgl_cdssl.bench import BenchmarkSettings
    from matgl_cdssl.cli import build_parser

    defaults, settings = TrainOptions(), BenchmarkSettings()
    for name in ("loss", "max_epochs", "patience", "lr_patience", "batch_size", "freeze_backbone"):
        assert getattr(defaults, name) == getattr(settings, name), name
    assert defaults.max_val == settings.max_val
    args = build_parser().parse_args(["finetune", "train.csv", "--target", "y", "--out", "o"])
    assert (args.max_epochs, args.patience, args.lr_patience, args.batch_size, args.val_fraction, args.max_val) == (
        defaults.max_epochs, defaults.patience, defaults.lr_patience, defaults.batch_size, defaults.val_fraction,
        defaults.max_val)  # fmt: skip
    assert {"options", "kwargs"} <= set(inspect.signature(fit).parameters)  # fit reads the same record
    with pytest.raises(ValueError, match="loss must be one of"):
        TrainOptions(loss="l2")
    assert TrainOptions().replace(max_epochs=5).max_epochs == 5


def test_a_small_validation_set_follows_the_fraction_and_warns(backend, sample):
    """50 labels: val_fraction 0.2 holds out 10 crystals (the benchmark's n_train // 4), with a warning."""
    seen = _StartOfTraining()
    y = sample.labels["band_gap_eV"][:50]
    with pytest.warns(UserWarning, match=r"the validation set has 10 crystals, fewer than 150"):
        finetune(backend.megnet_class(), sample.structures[:50], y, max_epochs=1, callbacks=[seen],
                 enable_progress_bar=False)  # fmt: skip
    assert seen.n_val == [10]
    from matgl_cdssl.apps import TrainOptions

    assert TrainOptions(max_val=500).val_share(5000) == pytest.approx(0.1)  # at most max_val crystals


@pytest.mark.parametrize("kind", ["folder", "model object", "registered name", "matgl name", "matgl folder"])
def test_every_kind_of_start_keeps_its_backbone_and_draws_its_readout_from_the_seed(request, sample, kind):
    from matgl_cdssl import load_model
    from matgl_cdssl.hub import matgl_copy, megnet_of, new_like

    eform = "MEGNet-MP-2018.6.1-Eform"
    if kind == "folder":
        start = request.getfixturevalue("pretrained_dir")
    elif kind == "model object":
        start = load_model(request.getfixturevalue("pretrained_dir"))
    else:
        start = {"registered name": "CDSSL-MEGNet-MP", "matgl name": eform, "matgl folder": matgl_copy(eform)}[kind]
    saved = megnet_of(start)
    before = {k: v.detach().clone() for k, v in saved.state_dict().items()}
    seen = _StartOfTraining()
    y = sample.labels["band_gap_eV"]
    finetune(start, sample.structures[:16], y[:16], val_structures=sample.structures[16:24], val_targets=y[16:24],
             seed=7, max_epochs=1, callbacks=[seen], enable_progress_bar=False)  # fmt: skip
    fresh = new_like(saved, weights="backbone", seed=7).state_dict()
    (state,) = seen.states
    for key, value in state.items():
        torch.testing.assert_close(value, fresh[key] if _readout(key) else before[key], rtol=0, atol=0, msg=key)
    assert any(not torch.equal(state[k], before[k]) for k in state if _readout(k))  # not the saved readout
    if kind == "model object":  # a start is never trained in place
        assert all(torch.equal(v, before[k]) for k, v in start.state_dict().items())
