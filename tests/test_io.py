"""Saving, loading through matgl, finetuning with matgl's ModelLightningModule, and cross-backend weights."""

from __future__ import annotations

import json
from pathlib import Path

import matgl
import pytest
import torch

import matgl_cdssl
from matgl_cdssl import BACKEND, convert_weights, load_model
from matgl_cdssl.hub import CONFIG_FILE, HEAD_FILE, load_head, megnet_of
from tests.helpers import finetune_with_matgl, matgl_forward

FIXTURES = Path(__file__).parent / "data" / "conversion"


def test_pretrain_writes_matgl_folder_head_and_metrics(pretrained_run):
    model, out = pretrained_run
    folder = out / "model"
    for name in ("model.pt", "state.pt", "model.json", CONFIG_FILE, HEAD_FILE):
        assert (folder / name).is_file(), name
    assert (out / "metrics.csv").is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file()
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["backend"] == BACKEND
    assert config["sigma"] == 0.3  # the default, chosen by the sigma sweep
    assert config["n_structures"] == 48
    assert config["n_train"] + config["n_val"] == 48
    loaded = matgl.load_model(folder)
    assert type(loaded) is type(model)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)


def test_load_model_returns_plain_megnet_and_falls_through(pretrained_run, tmp_path):
    model, out = pretrained_run
    loaded = load_model(out / "model")
    assert type(loaded).__module__.startswith("matgl.models")
    assert type(loaded).__name__ == "MEGNet"
    model.save(tmp_path / "plain")  # a plain matgl folder, no cdssl.json: matgl.load_model handles it
    assert type(load_model(tmp_path / "plain")).__name__ == "MEGNet"


def test_finetune_with_matgl_model_lightning_module(pretrained_run, sample, tmp_path):
    """save -> matgl.load_model -> matgl's standard ModelLightningModule finetunes it."""
    model = matgl.load_model(pretrained_run[1] / "model")
    readout_before = model.output_proj.layers[0].weight.detach().clone()
    finetune_with_matgl(model, sample, tmp_path)
    assert not torch.equal(model.output_proj.layers[0].weight, readout_before)


def test_continue_pretraining_from_folder_restores_head(pretrained_run, sample):
    _, out = pretrained_run
    model = load_model(out / "model")
    head = load_head(out / "model", model)
    saved = torch.load(out / "model" / HEAD_FILE, weights_only=True)
    for key, value in head.state_dict().items():
        assert torch.equal(value, saved[key])
    again = matgl_cdssl.pretrain(
        sample.structures[:24],
        model=out / "model",
        max_epochs=1,
        batch_size=12,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
    )
    assert type(again).__name__ == "MEGNet"
    with pytest.raises(ValueError, match="contradicts the model's cutoff"):
        matgl_cdssl.pretrain(sample.structures[:24], model=model, cutoff=5.0, max_epochs=1)


def test_convert_weights_swaps_only_the_edge_update_input_blocks(megnet):
    sd = megnet.state_dict()
    converted = convert_weights(sd, to="dgl")
    changed = sorted(k for k in sd if not torch.equal(sd[k], converted[k]))
    assert changed == [f"blocks.{i}.conv.edge_func.layers.0.weight" for i in range(3)]
    w, c = sd[changed[0]], converted[changed[0]]
    torch.testing.assert_close(c[:, :32], w[:, 32:64], rtol=0, atol=0)
    torch.testing.assert_close(c[:, 64:], w[:, 64:], rtol=0, atol=0)
    back = convert_weights(converted, to="pyg")
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    prefixed = convert_weights({f"model.{k}": v for k, v in sd.items()}, to="pyg")
    assert torch.equal(prefixed[f"model.{changed[0]}"], c)
    with pytest.raises(ValueError, match="to must be one of"):
        convert_weights(sd, to="jax")
    with pytest.raises(ValueError, match="no MEGNet block"):
        convert_weights({"weight": torch.zeros(2)}, to="dgl")


@pytest.mark.parametrize("written_by", ["dgl", "pyg"])
def test_cross_backend_weights_give_identical_node_features(written_by, sample):
    """A folder written by either backend reproduces that backend's node features on real crystals."""
    folder = FIXTURES / written_by
    reference = torch.load(folder / "reference.pt", weights_only=True)
    model = load_model(folder)  # converted when written_by != BACKEND
    structures = sample.structures[: len(reference["node_feat"])]
    worst_node = worst_pred = 0.0
    for structure, node_ref, pred_ref in zip(structures, reference["node_feat"], reference["prediction"], strict=True):
        node_feat, prediction = matgl_forward(model, structure)
        worst_node = max(worst_node, float((node_feat - node_ref).abs().max()))
        worst_pred = max(worst_pred, float((prediction - pred_ref).abs().max()))
    assert worst_node < 1e-5
    assert worst_pred < 1e-5
    if written_by != BACKEND:
        # the test is sensitive: without conversion the features differ
        unconverted = matgl.load_model(folder)
        diff = max(
            float((matgl_forward(unconverted, s)[0] - ref).abs().max())
            for s, ref in zip(structures, reference["node_feat"], strict=True)
        )
        assert diff > 1e-5


def test_matgls_supervised_formation_energy_megnet_loads_on_both_lines():
    """matgl's own MEGNet-MP-2018.6.1-Eform (a matgl 2.x DGL TransformedTargetModel) gives matgl 2.2.x's predictions."""
    from importlib.resources import files

    import numpy as np

    folder = Path(str(files("matgl_cdssl").joinpath("benchmark_data/MEGNet-MP-2018.6.1-Eform")))
    reference = json.loads((Path(__file__).parent / "data" / "eform_reference.json").read_text())
    model = matgl_cdssl.load_model(folder)
    assert type(model).__name__ == "TransformedTargetModel"
    assert type(model.model).__name__ == "MEGNet"
    # megnet_of unwraps it, from the model or straight from the folder (its readout as saved, the RNG untouched)
    assert megnet_of(model) is model.model
    state = torch.get_rng_state()
    inner = megnet_of(folder)
    assert torch.equal(torch.get_rng_state(), state)
    assert type(inner).__name__ == "MEGNet"
    inner_state = inner.state_dict()
    for key, value in model.model.state_dict().items():
        assert torch.equal(inner_state[key], value), key
    sample = matgl_cdssl.load_sample(16)
    assert sample.material_ids == reference["material_ids"]
    predicted = np.array([float(model.predict_structure(s)) for s in sample.structures])
    np.testing.assert_allclose(predicted, reference["prediction"], atol=1e-5)  # written on matgl 2.2.1
    # A trained model: close to the DFT values (which its Materials Project training set may have included).
    assert np.abs(predicted - sample.labels["formation_energy_per_atom_eV"][:16]).mean() < 0.1
