"""Test helpers shared by the tests and the fixture scripts."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from matgl_cdssl._backend import get_backend


def graph_of(structure: Any, model: torch.nn.Module) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """matgl graph, lattice ``(1, 3, 3)`` and state attributes of one crystal, as matgl's converter makes them."""
    g, lat, state = get_backend().converter(model.element_types, model.cutoff).get_graph(structure)
    return g, torch.as_tensor(lat, dtype=torch.float32).reshape(1, 3, 3), torch.tensor(state, dtype=torch.float32)


def matgl_forward(model: torch.nn.Module, structure: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Final node features (forward hook on the last block) and the prediction of matgl's own ``forward``."""
    captured: dict[str, torch.Tensor] = {}
    hook = model.blocks[-1].register_forward_hook(lambda _m, _i, out: captured.update(node_feat=out[1].detach()))
    try:
        model.eval()
        with torch.no_grad():
            prediction = model.predict_structure(structure)
    finally:
        hook.remove()
    return captured["node_feat"], prediction.detach().reshape(-1)


def finetune_with_matgl(model: torch.nn.Module, sample: Any, tmp_path: Any, n: int = 40) -> Any:
    """Two epochs of matgl's standard ModelLightningModule on formation energy; returns the Trainer."""
    import lightning as L
    import numpy as np
    from matgl.utils.training import ModelLightningModule

    from matgl_cdssl.data import build_dataset

    y = sample.labels["formation_energy_per_atom_eV"][:n]
    dataset, _, _ = build_dataset(
        sample.structures[:n], element_types=model.element_types, cutoff=model.cutoff, labels={"eform": y}
    )
    n_train = n * 4 // 5
    train, val = torch.utils.data.Subset(dataset, range(n_train)), torch.utils.data.Subset(dataset, range(n_train, n))
    train_loader, val_loader = get_backend().loaders(train, val, batch_size=8)
    _, _, _, labels = next(iter(val_loader))
    np.testing.assert_allclose(labels.numpy(), y[n_train : n_train + 8], rtol=1e-6)  # the batched label is the target
    module = ModelLightningModule(model=model, data_mean=float(np.mean(y)), data_std=float(np.std(y)), lr=1e-3)
    trainer = L.Trainer(
        max_epochs=2,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
    )
    trainer.fit(module, train_loader, val_loader)
    assert np.isfinite(float(trainer.callback_metrics["val_MAE"]))
    return trainer


def load_script(path: Path, name: str) -> Any:
    """A script that is not part of the package (an example, a release tool), imported as a module."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
