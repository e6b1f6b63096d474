"""``finetune``: train a (pretrained) MEGNet on labelled crystals with matgl's ``ModelLightningModule``."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch.utils.data import Subset

from matgl_cdssl.backend import get_backend
from matgl_cdssl.data import build_dataset
from matgl_cdssl.registry import load_model

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import nn

__all__ = ["FinetuneResult", "finetune"]

logger = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
        model: The trained MEGNet, with the weights of the best validation epoch. As with any MEGNet trained by
            matgl's ``ModelLightningModule``, its raw output is the *normalised* target: the property is
            ``output * data_std + data_mean``.
        data_mean: Mean of the training targets.
        data_std: Standard deviation of the training targets.
        metrics: ``best_val_MAE``, ``best_epoch``, ``epochs`` and, when test data were given, ``test_MAE`` (in the
            target's units).
    """

    model: nn.Module
    data_mean: float
    data_std: float
    metrics: dict[str, float] = field(default_factory=dict)


def _targets(values: Sequence[float], name: str) -> list[float]:
    array = np.asarray(values, dtype=float).reshape(-1)
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"{name} has non-finite values (NaN or inf) at index(es) {bad[:10].tolist()}")
    return array.tolist()


def finetune(
    model: nn.Module | str | Path,
    structures: Sequence[Any],
    targets: Sequence[float],
    *,
    val_structures: Sequence[Any] | None = None,
    val_targets: Sequence[float] | None = None,
    test_structures: Sequence[Any] | None = None,
    test_targets: Sequence[float] | None = None,
    val_fraction: float = 0.1,
    loss: str = "l1_loss",
    max_epochs: int = 200,
    patience: int | None = 50,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    output_dir: str | Path | None = None,
    skip_invalid: bool = False,
    **trainer_kwargs: Any,
) -> FinetuneResult:
    """Finetune a MEGNet on one property with matgl's ``ModelLightningModule``.

    Targets are normalised with the training mean and standard deviation (matgl's ``data_mean``/``data_std``);
    the epoch with the lowest validation MAE is restored at the end (early stopping after ``patience`` epochs
    without improvement).

    Args:
        model: A MEGNet, a registered name such as ``"CDSSL-MEGNet-MP"``, a CDSSL model folder, or any name
            ``matgl.load_model`` knows. The model is trained in place.
        structures: Training crystals (see :func:`matgl_cdssl.data.read_structures`).
        targets: One value per training crystal.
        val_structures: Validation crystals; if None, ``val_fraction`` of the training crystals are held out.
        val_targets: Their values.
        test_structures: Optional test crystals, evaluated with the restored best weights.
        test_targets: Their values.
        val_fraction: Fraction held out for validation when no validation set is given.
        loss: matgl's loss name: ``"l1_loss"``, ``"mse_loss"``, ``"huber_loss"`` or ``"smooth_l1_loss"``.
        max_epochs: Maximum epochs.
        patience: Early-stopping patience in epochs (None: no early stopping).
        batch_size: Crystals per batch.
        lr: Learning rate (Adam, cosine decay over ``max_epochs``).
        seed: Seeds the split, the readout initialisation order and the batch order.
        output_dir: Where to keep checkpoints; a temporary folder when None.
        skip_invalid: Leave out invalid crystals (and their targets), each with a warning, instead of raising.
        **trainer_kwargs: Passed to ``lightning.Trainer``.

    Returns:
        A :class:`FinetuneResult`.

    Raises:
        ValueError: targets with NaN or inf, or whose length does not match the structures.
    """
    from matgl.utils.training import ModelLightningModule

    L.seed_everything(seed, workers=True, verbose=False)
    if isinstance(model, (str, Path)):
        model = load_model(model)
    backend = get_backend()

    def dataset(structs: Sequence[Any], values: Sequence[float], name: str) -> Any:
        values = _targets(values, name)
        if len(values) != len(structs):
            raise ValueError(f"{name} has {len(values)} values for {len(structs)} structures")
        ds, _, _ = build_dataset(
            structs,
            element_types=model.element_types,
            cutoff=model.cutoff,
            labels={name: values},
            skip_invalid=skip_invalid,
        )
        return ds

    train = dataset(structures, targets, "targets")
    if val_structures is None:
        n_val = max(1, round(len(train) * val_fraction))
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
        train, val = Subset(train, perm[n_val:]), Subset(train, perm[:n_val])
    else:
        val = dataset(val_structures, val_targets if val_targets is not None else [], "val_targets")
    y = np.array([float(item[3]["targets"]) for item in train])
    train_loader, val_loader = backend.loaders(train, val, batch_size=batch_size)
    module = ModelLightningModule(
        model=model,
        data_mean=float(y.mean()),
        data_std=float(y.std()) or 1.0,
        loss=loss,
        lr=lr,
        decay_steps=max_epochs,
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(output_dir) if output_dir is not None else Path(tmp)
        checkpoint = ModelCheckpoint(dirpath=root / "checkpoints", monitor="val_MAE", mode="min")
        callbacks = [checkpoint, *([EarlyStopping("val_MAE", patience=patience)] if patience else [])]
        trainer_kwargs.setdefault("logger", False)
        trainer_kwargs.setdefault("enable_model_summary", False)
        trainer_kwargs.setdefault("callbacks", []).extend(callbacks)
        trainer = L.Trainer(max_epochs=max_epochs, default_root_dir=root, **trainer_kwargs)
        trainer.fit(module, train_loader, val_loader)
        best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=False)
        module.load_state_dict(best["state_dict"])
        metrics = {
            "best_val_MAE": float(checkpoint.best_model_score),
            "best_epoch": float(best["epoch"]),
            "epochs": float(trainer.current_epoch),
        }
        if test_structures is not None:
            test = dataset(test_structures, test_targets if test_targets is not None else [], "test_targets")
            _, test_loader = backend.loaders(test, test, batch_size=64)
            metrics["test_MAE"] = float(trainer.test(module, test_loader, verbose=False)[0]["test_MAE"])
    return FinetuneResult(module.model, module.data_mean, module.data_std, metrics)
