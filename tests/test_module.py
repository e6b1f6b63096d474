"""CDSSLModule: the encoder is matgl's MEGNet, the outputs are physically sensible, and training learns."""

from __future__ import annotations

import hashlib
import json
import math

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.core.operations import SymmOp

import matgl_cdssl
from matgl_cdssl import CDSSLModule, GaussianPositionNoise
from matgl_cdssl.method import bond_distances, encode, pretext
from tests.helpers import graph_of


def test_encode_matches_matgl_forward(backend, megnet, tiny_structures):
    """Our encoder pass gives exactly the final block features of matgl's own MEGNet.forward."""
    for s in tiny_structures[:4]:
        g, lat, state = graph_of(s, megnet)
        captured: dict = {}
        hook = megnet.blocks[-1].register_forward_hook(lambda _m, _i, out, box=captured: box.update(out=out))
        try:
            megnet.predict_structure(s)
        finally:
            hook.remove()
        edge, node, _ = encode(megnet, g, megnet.bond_expansion(bond_distances(g, lat)), state.reshape(1, -1))
        torch.testing.assert_close(node, captured["out"][1], atol=1e-5, rtol=0)
        torch.testing.assert_close(edge, captured["out"][0], atol=1e-5, rtol=0)


def _per_atom_prediction(module, backend, structure):
    g, lat, state = graph_of(structure, module.model)
    pred = module(g, lat, state.reshape(1, -1)).detach()
    src = backend.topology(g).src
    return torch.zeros(len(structure), pred.shape[1]).index_add_(0, src, pred)


def test_prediction_is_rotation_and_translation_invariant(backend, megnet, LiFePO4_like):
    module = CDSSLModule(megnet, sigma=0.1).eval()
    reference = _per_atom_prediction(module, backend, LiFePO4_like)
    rotated = LiFePO4_like.copy()
    rotated.apply_operation(SymmOp.from_axis_angle_and_translation([1, 2, 3], 37.0))
    torch.testing.assert_close(_per_atom_prediction(module, backend, rotated), reference, atol=1e-4, rtol=1e-4)
    shifted = LiFePO4_like.copy()
    shifted.translate_sites(list(range(len(shifted))), [0.31, -0.12, 0.57], frac_coords=True, to_unit_cell=True)
    torch.testing.assert_close(_per_atom_prediction(module, backend, shifted), reference, atol=1e-4, rtol=1e-4)


def test_step_metrics_and_gradients(batch_of, tiny_structures, megnet):
    module = CDSSLModule(megnet, sigma=0.1).train()
    results, n_edges = module.step(batch_of(tiny_structures))
    assert set(results) == {"Total_Loss", "MAE"}
    assert n_edges > 0
    assert all(torch.isfinite(v) for v in results.values())
    results["Total_Loss"].backward()
    assert all(p.grad is not None for p in module.head.parameters())
    assert megnet.blocks[-1].conv.edge_func.layers[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in megnet.output_proj.parameters())
    megnet.zero_grad(set_to_none=True)


def test_step_sees_the_lengths_of_the_transformed_crystal(batch_of, tiny_structures, megnet):
    """The step's noisy lengths (clean bond vectors plus displacement differences) are transform + bond_distances's."""
    batch = batch_of(tiny_structures)
    g, lat = batch[0], batch[1]
    module = CDSSLModule(megnet, sigma=0.2, seed=3).train()
    module.noise.generator = torch.Generator().manual_seed(11)
    _, _, target, noisy_attr = pretext(module.model, module.head, module.noise, batch)
    noisy = GaussianPositionNoise(0.2, generator=torch.Generator().manual_seed(11))(g, lat)  # the same draws
    torch.testing.assert_close(noisy_attr, megnet.bond_expansion(bond_distances(noisy, lat)), atol=0, rtol=0)
    torch.testing.assert_close(target, megnet.bond_expansion(bond_distances(g, lat)))


def test_validation_step_replays_fixed_noise_and_skips_the_gradient_norm_by_default(batch_of, tiny_structures, megnet):
    module = CDSSLModule(megnet, sigma=0.1).eval()
    batch = batch_of(tiny_structures)
    module.on_validation_epoch_start()
    with torch.no_grad():
        first, _ = module.step(batch)
    module.on_validation_epoch_start()
    with torch.no_grad():
        again, _ = module.step(batch)
    assert "Grad_Norm" not in first  # opt-in: it doubles the cost of validation
    assert float(first["Total_Loss"]) == float(again["Total_Loss"]), "validation noise must replay every epoch"


def test_validation_gradient_norm_is_opt_in(batch_of, tiny_structures, megnet):
    module = CDSSLModule(megnet, sigma=0.1, val_grad_norm=True).eval()
    module.on_validation_epoch_start()
    with torch.no_grad():
        first, _ = module.step(batch_of(tiny_structures))
    assert float(first["Grad_Norm"]) > 0
    assert all(p.grad is None for p in module.parameters()), "validation must not leave gradients behind"


def test_rejects_non_positive_sigma(megnet):
    for sigma in (0, -0.05):
        with pytest.raises(ValueError, match="sigma must be a positive"):
            CDSSLModule(megnet, sigma=sigma)


def test_pretext_learns_beyond_copying_the_noisy_input(tmp_path, sample):
    """On a fixed small set, validation MAE of h(G~) - E_clean falls below the copy-the-noisy-input baseline."""
    matgl_cdssl.pretrain(
        sample.structures[:160],
        sigma=0.3,
        lr=3e-3,
        max_epochs=10,
        batch_size=16,
        seed=0,
        output_dir=tmp_path,
        val_grad_norm=True,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    val = metrics.dropna(subset=["val_MAE"])
    train = metrics.dropna(subset=["train_Total_Loss"])
    assert len(val) == 10
    assert len(train) == 10
    assert val["val_MAE"].iloc[-1] < val["val_Baseline_MAE"].iloc[-1]
    assert train["train_Total_Loss"].iloc[-1] < 0.5 * train["train_Total_Loss"].iloc[0]
    for column in ("train_Grad_Norm", "val_Grad_Norm", "train_MAE", "val_Total_Loss", "val_Baseline_MAE"):
        assert metrics[column].notna().any(), column


class _RecordClippedNorm(L.Callback):
    """Records the global gradient norm that the optimiser stepped with (after Lightning's clipping)."""

    def __init__(self):
        self.norms: list[float] = []

    def on_before_zero_grad(self, trainer, pl_module, optimizer):
        grads = [p.grad.norm() for p in pl_module.parameters() if p.grad is not None]
        if grads:
            self.norms.append(float(torch.linalg.vector_norm(torch.stack(grads))))


def test_gradient_clipping(tmp_path, sample):
    recorder = _RecordClippedNorm()
    matgl_cdssl.pretrain(
        sample.structures[:40],
        max_epochs=2,
        batch_size=10,
        gradient_clip_val=1e-3,
        output_dir=tmp_path,
        callbacks=[recorder],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics["train_Grad_Norm"].dropna().min() > 1e-3  # logged before clipping
    assert "val_Grad_Norm" not in metrics  # opt-in (val_grad_norm=True)
    assert recorder.norms
    assert max(recorder.norms) <= 1e-3 * 1.001


def _cosine(lr: float, alpha: float, epochs: int) -> list[float]:
    """Closed-form cosine decay from ``lr`` to ``alpha * lr`` over ``epochs``, one value per epoch."""
    return [lr * (alpha + (1 - alpha) * 0.5 * (1 + math.cos(math.pi * e / epochs))) for e in range(epochs)]


def test_pretraining_learning_rate_steps_once_per_epoch(tmp_path, sample):
    """The logged rate of every epoch is the documented cosine (matgl 2.2.x's mixin would step it twice)."""
    from lightning.pytorch.callbacks import LearningRateMonitor

    matgl_cdssl.pretrain(
        sample.structures[:20],
        max_epochs=4,
        batch_size=10,
        lr=1e-3,
        output_dir=tmp_path,
        callbacks=[LearningRateMonitor(logging_interval="epoch")],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    logged = metrics["lr-Adam"].dropna().to_numpy()  # LearningRateMonitor logs once per epoch, in order
    assert len(logged) == 4
    np.testing.assert_allclose(logged, _cosine(1e-3, 0.01, 4), rtol=1e-6)


def test_callbacks_of_the_caller_are_not_changed(tmp_path, sample):
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Count(L.Callback):
        def __init__(self):
            self.epochs = 0

        def on_train_epoch_end(self, trainer, pl_module):
            self.epochs += 1
            self.checkpointers = sum(isinstance(c, ModelCheckpoint) for c in trainer.callbacks)

    count = Count()
    callbacks = [count]
    for run in ("a", "b"):
        matgl_cdssl.pretrain(sample.structures[:12], max_epochs=1, batch_size=6, output_dir=tmp_path / run,
                             callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
        assert callbacks == [count]
        assert count.checkpointers == 2  # the best epoch and the last one; the second run has no more
    assert count.epochs == 2


def test_keep_every_keeps_the_checkpoints_along_the_run(tmp_path, sample):
    matgl_cdssl.pretrain(sample.structures[:12], max_epochs=4, batch_size=6, output_dir=tmp_path, keep_every=2,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    kept = sorted(p.name for p in (tmp_path / "checkpoints" / "every").iterdir())
    assert kept == ["epoch=1.ckpt", "epoch=3.ckpt"]  # after 2 and 4 epochs
    states = [torch.load(tmp_path / "checkpoints" / "every" / k, weights_only=False)["state_dict"] for k in kept]
    assert not all(torch.equal(states[0][k], states[1][k]) for k in states[0])  # two different moments of the run
    with pytest.raises(ValueError, match="keep_every must be a positive"):
        matgl_cdssl.pretrain(sample.structures[:12], max_epochs=1, keep_every=0)


class _RecordNoise(L.Callback):
    """The noise stream at each training draw, by (global step, batch index): a digest of the generator's state."""

    def __init__(self):
        self.states: dict[tuple[int, int], str] = {}
        self.batch_idx = -1

    def on_train_start(self, trainer, pl_module):
        draw = pl_module.noise.displacements

        def recorded(g):
            if pl_module.training:
                state = pl_module.noise.generator.get_state().numpy().tobytes()
                self.states[(trainer.global_step, self.batch_idx)] = hashlib.sha256(state).hexdigest()[:16]
            return draw(g)

        pl_module.noise.displacements = recorded

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch_idx = batch_idx


def test_micro_batches_of_one_step_draw_their_own_noise_and_a_resumed_run_draws_the_same(tmp_path, sample):
    """With accumulate_grad_batches=2, each micro-batch of a step has its own noise, in a run in one piece or two."""
    structures = sample.structures[:8]  # 4 batches of 2 per epoch: 2 optimiser steps of 2 micro-batches
    kwargs = {"max_epochs": 2, "batch_size": 2, "val_fraction": 0.0, "sigma": 0.1, "seed": 0,
              "accumulate_grad_batches": 2, "enable_progress_bar": False, "enable_model_summary": False}  # fmt: skip
    full = _RecordNoise()
    matgl_cdssl.pretrain(structures, output_dir=tmp_path / "full", callbacks=[full], **kwargs)
    assert sorted(full.states) == [(step, idx) for step in range(4) for idx in (2 * (step % 2), 2 * (step % 2) + 1)]
    for step in range(4):
        first, second = (full.states[k] for k in sorted(full.states) if k[0] == step)
        assert first != second, f"the two micro-batches of step {step} drew the same noise"
    assert len(set(full.states.values())) == 8
    pieces = [_RecordNoise(), _RecordNoise()]
    matgl_cdssl.pretrain(
        structures, output_dir=tmp_path / "pieces", callbacks=[pieces[0]], **{**kwargs, "max_epochs": 1}
    )
    matgl_cdssl.pretrain(structures, output_dir=tmp_path / "pieces", callbacks=[pieces[1]], resume=True, **kwargs)
    assert pieces[0].states | pieces[1].states == full.states


def test_a_resumed_run_keeps_the_wall_time_of_a_checkpoint_from_before_the_callbacks(tmp_path, sample, megnet):
    """The whole run's wall time is read from the checkpoint key ``cdssl_elapsed_s`` (written by CDSSLModule before
    the engineering moved to callbacks, by :class:`PieceTimer` now), and the model is unfrozen after the fit."""
    kwargs = {"max_epochs": 1, "batch_size": 6, "output_dir": tmp_path, "enable_progress_bar": False,
              "enable_model_summary": False}  # fmt: skip
    matgl_cdssl.pretrain(sample.structures[:12], **kwargs)
    last = tmp_path / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert 0 < state["cdssl_elapsed_s"] < 600
    state["cdssl_elapsed_s"] = 5000.0  # as if the earlier pieces had taken 5000 s
    torch.save(state, last)
    model = matgl_cdssl.pretrain(sample.structures[:12], resume=True, **{**kwargs, "max_epochs": 2})
    config = json.loads((tmp_path / "model" / "cdssl.json").read_text())
    assert 5000 < config["total_wall_time_s"] < 5600
    assert torch.load(last, map_location="cpu", weights_only=False)["cdssl_elapsed_s"] > 5000
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {name for name, p in megnet.named_parameters() if not p.requires_grad}  # as matgl made them
