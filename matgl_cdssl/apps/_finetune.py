"""``finetune``: train a (pretrained) MEGNet on labelled crystals with matgl's ``ModelLightningModule``."""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from matgl.utils.training import ModelLightningModule
from torch.utils.data import Subset

from matgl_cdssl._backend import OncePerEpochSchedule, get_backend
from matgl_cdssl.apps._predict import dataset_outputs, predict_all
from matgl_cdssl.data import build_dataset, check_values, train_val_split
from matgl_cdssl.hub import READOUT, Ensemble, load_head, load_model, new_like, read_config, source_folder
from matgl_cdssl.method import GaussianPositionNoise, pretext

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import nn

__all__ = [
    "EnsembleResult",
    "FinetuneResult",
    "PropertyModule",
    "ShorterRun",
    "calibration",
    "finetune",
    "fit",
    "optimizer_for",
    "plateau_schedule",
    "set_state_width",
    "split_parameters",
]

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

    def property_model(self) -> nn.Module:
        """A copy of the model whose raw output is the property itself, for matgl's ``predict_structure``.

        ``data_std`` and ``data_mean`` are folded into the last linear layer of the output MLP
        (``y = std * (W h + b) + mean``), which is exact.
        """
        model = new_like(self.model)
        last = model.output_proj.layers[-1]
        with torch.no_grad():
            last.weight.mul_(self.data_std)
            last.bias.mul_(self.data_std).add_(self.data_mean)
        return model


@dataclass
class EnsembleResult:
    """What :func:`finetune` returns with ``ensemble=K``: the K members and the ensemble's own metrics.

    Attributes:
        results: Each member's :class:`FinetuneResult` (member ``k`` from seed ``seed + k``).
        metrics: ``members``, ``std_scale``, the members' mean ``best_val_MAE`` and, with test data, the
            ensemble's ``test_MAE`` (of the members' mean), ``member_test_MAE`` (the members' average),
            ``test_spearman_error_std`` (Spearman correlation between the absolute error and the uncertainty),
            ``test_within_1_std`` and ``test_within_2_std`` (fractions of test crystals whose error is within one and
            two uncertainties).
        std_scale: The factor by which the members' standard deviation is scaled to give the uncertainty, chosen on
            the validation crystals (:meth:`evaluate`).
    """

    results: list[FinetuneResult]
    metrics: dict[str, float] = field(default_factory=dict)
    std_scale: float = 1.0

    @property
    def ensemble(self) -> Ensemble:
        """The members as property models (raw output = the property), as one :class:`~matgl_cdssl.hub.Ensemble`."""
        return self.property_model()

    def property_model(self) -> Ensemble:
        """An :class:`~matgl_cdssl.hub.Ensemble` of the members' property models; ``.save(folder)`` writes it."""
        metadata = {"std_scale": self.std_scale, "metrics": self.metrics}
        return Ensemble([r.property_model() for r in self.results], metadata)

    @classmethod
    def evaluate(
        cls,
        results: list[FinetuneResult],
        val: Any,
        test_structures: Any = None,
        test_targets: Any = None,
        test_state: Any = None,
    ) -> EnsembleResult:
        """The ensemble of ``results``: its spread's scale from the validation set ``val``, its test metrics.

        The members share their pretrained backbone, so their spread understates the error; ``std_scale`` is the
        factor that makes it right on the validation crystals in the Gaussian maximum-likelihood sense
        (``sqrt(mean((error / std)^2))``, sigma scaling). The test crystals, when given, are touched once, after.
        """
        ensemble = cls(results)
        outputs, y_val = dataset_outputs(ensemble, val)
        spread = outputs.std(axis=0, ddof=1)
        ok = spread > 0
        z = (outputs.mean(0) - y_val)[ok] / spread[ok]
        ensemble.std_scale = float(np.sqrt(np.mean(z**2))) if ok.any() else 1.0
        ensemble.metrics = {"members": float(len(results)), "std_scale": ensemble.std_scale}
        ensemble.metrics["best_val_MAE"] = float(np.mean([r.metrics["best_val_MAE"] for r in results]))
        if test_structures is not None:
            found = predict_all(ensemble, test_structures, state_attr=test_state, skip_invalid=True)
            y = np.asarray(test_targets, dtype=float)
            ok = np.isfinite(found.mean)
            ensemble.metrics.update(calibration(y[ok], found.mean[ok], found.std[ok]))
            ensemble.metrics["member_test_MAE"] = float(np.mean([r.metrics["test_MAE"] for r in results]))
        return ensemble


def calibration(y: np.ndarray, mean: np.ndarray, std: np.ndarray) -> dict[str, float]:
    """How well an ensemble's spread tracks its error: MAE, Spearman(|error|, std), fractions within 1 and 2 std."""
    from scipy.stats import spearmanr

    error = np.abs(np.asarray(mean, dtype=float) - np.asarray(y, dtype=float))
    std = np.asarray(std, dtype=float)
    return {
        "test_MAE": float(error.mean()),
        "test_spearman_error_std": float(spearmanr(error, std).statistic),
        "test_within_1_std": float(np.mean(error <= std)),
        "test_within_2_std": float(np.mean(error <= 2 * std)),
    }


class PropertyModule(OncePerEpochSchedule, ModelLightningModule):
    """matgl's ``ModelLightningModule``, with the learning rate stepped once per epoch and optional denoising.

    matgl 2.2.x's module steps an epoch scheduler twice per epoch (see
    :class:`~matgl_cdssl._backend.OncePerEpochSchedule`). With ``denoising_weight > 0`` the training loss is the
    property loss plus ``denoising_weight`` times the CDSSL pretext loss (:func:`~matgl_cdssl.method.pretext`) on the
    same training batch, with the pretrained pretext head and the pretraining's sigma, so that finetuning keeps the
    denoising task alive (as self-conditioned denoising does for molecules); it is logged as
    ``train_Denoising_Loss``. Validation, early stopping and the test are on the property alone.

    Args:
        *args: Those of matgl's ``ModelLightningModule``.
        head: The pretext head (``cdssl_head.pt`` of the pretrained folder), needed for denoising.
        sigma: The pretraining's noise level, in Å.
        denoising_weight: Weight of the pretext loss (0: plain finetuning).
        seed: Seed of the denoising noise.
        **kwargs: Those of matgl's ``ModelLightningModule``.
    """

    def __init__(
        self,
        *args: Any,
        head: nn.Module | None = None,
        sigma: float = 0.3,
        denoising_weight: float = 0.0,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.denoising_weight = float(denoising_weight)
        if self.denoising_weight < 0:
            raise ValueError(f"denoising_weight must be non-negative; got {denoising_weight!r}")
        if self.denoising_weight and head is None:
            raise ValueError("denoising_weight > 0 needs the pretext head")
        self.head = head if self.denoising_weight else None
        self.noise = GaussianPositionNoise(sigma, generator=torch.Generator().manual_seed(int(seed)))

    def configure_optimizers(self) -> Any:
        """Matgl's optimiser and scheduler; a plateau schedule (:func:`plateau_schedule`) watches ``val_MAE``."""
        optimizers, schedulers = super().configure_optimizers()
        if isinstance(schedulers[0], torch.optim.lr_scheduler.ReduceLROnPlateau):
            return {"optimizer": optimizers[0], "lr_scheduler": {"scheduler": schedulers[0], "monitor": "val_MAE"}}
        return optimizers, schedulers

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        """Matgl's training step, plus the weighted pretext loss when denoising."""
        loss = super().training_step(batch, batch_idx)
        if self.head is None:
            return loss
        denoising = pretext(self.model, self.head, self.noise, batch)[0]
        self.log("train_Denoising_Loss", denoising, on_epoch=True, on_step=False, batch_size=int(batch[1].shape[0]))
        return loss + self.denoising_weight * denoising


def _test_mae(trainer: L.Trainer, module: L.LightningModule, loader: Any) -> float:
    """The test MAE of the module's present weights."""
    return float(trainer.test(module, loader, verbose=False)[0]["test_MAE"])


class ShorterRun(L.Callback):
    """The shorter run inside a longer one: where a smaller ``patience`` or ``max_epochs`` would have ended it.

    With the same schedule, a run with less patience or a lower epoch cap is the start of this one, stopped where
    Lightning's ``EarlyStopping`` on ``val_MAE`` (``patience`` epochs without a strictly better score) or the cap
    would have stopped it. The callback keeps that run's best weights (``state``), score, epoch and length, so that
    one run gives both results, on the same machine: a rerun elsewhere may part from the first epochs on (floating
    point), so a stored shorter run is no baseline for a longer one.

    Args:
        patience: The shorter run's early-stopping patience, in epochs.
        max_epochs: Its epoch cap.
    """

    def __init__(self, patience: int, max_epochs: int) -> None:
        self.patience, self.max_epochs = int(patience), int(max_epochs)
        self.best, self.best_epoch, self.wait = math.inf, -1, 0
        self.epochs: int | None = None
        self.state: dict[str, torch.Tensor] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(patience={self.patience}, max_epochs={self.max_epochs})"

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Follow ``val_MAE`` as the shorter run's early stopping would, until it would have stopped."""
        if trainer.sanity_checking or self.epochs is not None:
            return
        score = float(trainer.callback_metrics["val_MAE"])
        if score < self.best:
            self.best, self.best_epoch, self.wait = score, trainer.current_epoch, 0
            self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        else:
            self.wait += 1
        if self.wait >= self.patience or trainer.current_epoch + 1 >= self.max_epochs:
            self.epochs = trainer.current_epoch + 1


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split a MEGNet's parameters into ``(backbone, readout)``; the readout is :data:`READOUT`."""
    backbone, readout = [], []
    for name, parameter in model.named_parameters():
        (readout if name.split(".")[0] in READOUT else backbone).append(parameter)
    return backbone, readout


def set_state_width(model: nn.Module, width: int) -> nn.Module:
    """Give a MEGNet (with float state features) a state input of ``width`` values per crystal.

    MEGNet's state encoder reads matgl's default state, 2 zeros per crystal. A different width replaces the first
    layer of the state encoder by a freshly initialised one (the rest of the model, pretrained or not, is kept) and
    records the new width in the model's saved arguments, so that the model saves and loads with matgl.
    """
    first = model.state_encoder.layers[0]
    if first.in_features != width:
        model.state_encoder.layers[0] = type(first)(width, first.out_features, bias=first.bias is not None)
        model._init_args["dim_state_embedding"] = width
    return model


def optimizer_for(
    model: nn.Module,
    *,
    lr: float,
    backbone_lr: float | None = None,
    freeze_backbone: bool = False,
    head: nn.Module | None = None,
) -> torch.optim.Optimizer:
    """Adam as matgl builds it, with its own learning rate for the backbone, or with the backbone frozen.

    A pretext ``head`` (denoising during finetuning) trains with the readout's rate.
    """
    backbone, readout = split_parameters(model)
    readout = [*readout, *(head.parameters() if head is not None else [])]
    for parameter in backbone:
        parameter.requires_grad_(not freeze_backbone)
    groups = [{"params": readout, "lr": lr}]
    if not freeze_backbone:
        groups.append({"params": backbone, "lr": lr if backbone_lr is None else backbone_lr})
    return torch.optim.Adam(groups, lr=lr, eps=1e-8)


def cosine_schedule(optimizer: torch.optim.Optimizer, epochs: int, alpha: float = 0.01) -> Any:
    """Matgl's default schedule, per parameter group: cosine decay over ``epochs`` to ``alpha`` times each rate."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: alpha + (1 - alpha) * 0.5 * (1 + math.cos(math.pi * min(epoch, epochs) / epochs))
    )


def plateau_schedule(optimizer: torch.optim.Optimizer, patience: int, factor: float = 0.5) -> Any:
    """Every rate times ``factor`` after ``patience`` epochs without a better validation MAE (``ReduceLROnPlateau``)."""
    if int(patience) < 1:
        raise ValueError(f"lr_patience must be a positive number of epochs; got {patience!r}")
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=int(patience))


def finetune(
    model: nn.Module | str | Path,
    structures: Sequence[Any],
    targets: Sequence[float],
    *,
    val_structures: Sequence[Any] | None = None,
    val_targets: Sequence[float] | None = None,
    test_structures: Sequence[Any] | None = None,
    test_targets: Sequence[float] | None = None,
    state_attr: Any = None,
    val_state_attr: Any = None,
    test_state_attr: Any = None,
    val_fraction: float = 0.1,
    min_val: int = 0,
    loss: str = "l1_loss",
    max_epochs: int = 200,
    patience: int | None = 50,
    lr_patience: int | None = None,
    batch_size: int = 16,
    lr: float = 1e-3,
    backbone_lr: float | None = None,
    freeze_backbone: bool = False,
    seed: int = 0,
    output_dir: str | Path | None = None,
    skip_invalid: bool = False,
    ensemble: int = 1,
    denoising_weight: float = 0.0,
    **trainer_kwargs: Any,
) -> FinetuneResult | EnsembleResult:
    """Finetune a MEGNet on one property with matgl's ``ModelLightningModule``.

    Targets are normalised with the training mean and standard deviation (matgl's ``data_mean``/``data_std``);
    the epoch with the lowest validation MAE is restored at the end (early stopping after ``patience`` epochs
    without improvement). The optimiser is Adam with matgl's cosine decay over ``max_epochs``, or, with
    ``lr_patience``, with its rates halved whenever the validation MAE has not improved for ``lr_patience`` epochs
    (a schedule that does not depend on the epoch cap, so that a longer budget continues the same run).

    Args:
        model: A MEGNet, a registered name such as ``"CDSSL-MEGNet-MP"`` (its readout freshly initialised from
            ``seed``), a CDSSL model folder, or any name ``matgl.load_model`` knows. The model is trained in place.
        structures: Training crystals (see :func:`~matgl_cdssl.data.read_structures`).
        targets: One value per training crystal.
        val_structures: Validation crystals; if None, ``val_fraction`` of the training crystals are held out.
        val_targets: Their values.
        test_structures: Optional test crystals, evaluated with the restored best weights.
        test_targets: Their values.
        state_attr: Optional MEGNet state attributes of the training crystals, shape ``(n, k)`` (for example a
            temperature or a fidelity). When ``k`` differs from the model's state width (2 for matgl's default
            MEGNet), the first state-encoder layer is replaced by a fresh one (:func:`set_state_width`). When
            given, the validation and test sets need theirs too.
        val_state_attr: State attributes of the validation crystals.
        test_state_attr: State attributes of the test crystals.
        val_fraction: Fraction held out for validation when no validation set is given.
        min_val: Hold out at least this many crystals then (a small fraction of a small set validates noisily).
        loss: matgl's loss name: ``"l1_loss"``, ``"mse_loss"``, ``"huber_loss"`` or ``"smooth_l1_loss"``.
        max_epochs: Maximum epochs.
        patience: Early-stopping patience in epochs (None: no early stopping).
        lr_patience: Halve the learning rates after this many epochs without a better validation MAE (torch's
            ``ReduceLROnPlateau``) instead of the cosine decay over ``max_epochs`` (None, the default).
        batch_size: Crystals per batch.
        lr: Learning rate of the readout, and of the backbone unless ``backbone_lr`` is given.
        backbone_lr: Learning rate of the backbone (embedding, encoders and message-passing blocks).
        freeze_backbone: Train only the readout (Set2Set and output MLP); the pretrained backbone is kept as is.
        seed: Seeds the split, the readout initialisation of a named model and the batch order.
        output_dir: Where to keep checkpoints; a temporary folder when None.
        skip_invalid: Leave out invalid crystals (and their targets), each with a warning, instead of raising.
        ensemble: Train this many members, member ``k`` from seed ``seed + k`` (its own readout initialisation and
            batch order; the same training and validation split, drawn from ``seed``), from the same pretrained
            backbone. The prediction is their mean and the uncertainty their standard deviation
            (:func:`~matgl_cdssl.apps.predict`).
        denoising_weight: Add this weight times the CDSSL pretext loss on the training crystals to the property loss
            (:class:`PropertyModule`), with the pretext head and sigma of the pretrained folder or name ``model``.
            0, the default, is plain finetuning.
        **trainer_kwargs: Passed to ``lightning.Trainer``.

    Returns:
        A :class:`FinetuneResult`, or with ``ensemble > 1`` an :class:`EnsembleResult`.

    Raises:
        ValueError: targets or state attributes with NaN or inf, or whose length does not match the structures;
            state attributes given for training but not for validation or test; ``ensemble < 1``; or
            ``denoising_weight > 0`` for a model without a pretext head (not a CDSSL folder or name).

    Example:
        >>> from matgl_cdssl import finetune, load_sample
        >>> sample = load_sample(40)
        >>> result = finetune("CDSSL-MEGNet-MP", sample.structures, sample.labels["band_gap_eV"], max_epochs=1,
        ...                   freeze_backbone=True, enable_progress_bar=False)
        >>> sorted(result.metrics)
        ['best_epoch', 'best_val_MAE', 'epochs']
    """
    if int(ensemble) < 1:
        raise ValueError(f"ensemble must be a positive number of members; got {ensemble!r}")
    source = model
    L.seed_everything(seed, workers=True, verbose=False)
    if isinstance(model, (str, Path)):
        model = load_model(model)
    pretrained = _pretrained_folder(source) if denoising_weight else None  # fails early without a pretext head
    sigma = float(read_config(pretrained)["sigma"]) if pretrained is not None else 0.3
    if state_attr is not None:
        set_state_width(model, np.asarray(state_attr).reshape(len(state_attr), -1).shape[1])
        for name, given in (("val_state_attr", val_state_attr), ("test_state_attr", test_state_attr)):
            other = {"val_state_attr": val_structures, "test_state_attr": test_structures}[name]
            if other is not None and given is None:
                raise ValueError(f"state_attr was given for training, so {name} is needed too")

    def dataset(structs: Sequence[Any], values: Sequence[float], name: str, state: Any) -> Any:
        values = check_values(values, name).tolist()
        if len(values) != len(structs):
            raise ValueError(f"{name} has {len(values)} values for {len(structs)} structures")
        ds, _, _ = build_dataset(
            structs,
            element_types=model.element_types,
            cutoff=model.cutoff,
            labels={name: values},
            state_attr=state,
            skip_invalid=skip_invalid,
        )
        return ds

    train = dataset(structures, targets, "targets", state_attr)
    if val_structures is None:
        if not val_fraction > 0:
            raise ValueError(f"val_fraction must be positive when no validation set is given; got {val_fraction!r}")
        train_idx, val_idx = train_val_split(len(train), val_fraction, seed, min_val=min_val)
        train, val = Subset(train, train_idx), Subset(train, val_idx)
    else:
        val = dataset(val_structures, [] if val_targets is None else val_targets, "val_targets", val_state_attr)
    test = None
    if test_structures is not None:
        test = dataset(test_structures, [] if test_targets is None else test_targets, "test_targets", test_state_attr)
    options = {
        "loss": loss,
        "max_epochs": max_epochs,
        "patience": patience,
        "lr_patience": lr_patience,
        "batch_size": batch_size,
        "lr": lr,
        "backbone_lr": backbone_lr,
        "freeze_backbone": freeze_backbone,
        "denoising_weight": denoising_weight,
        **trainer_kwargs,
    }
    # Every member starts from the same, untrained backbone (made before member 0 trains its model in place), with
    # its own readout initialisation from its own seed.
    members = [model, *(new_like(model, weights="backbone", seed=seed + k) for k in range(1, int(ensemble)))]
    results = []
    for k, member in enumerate(members):
        head = load_head(pretrained, member) if pretrained is not None else None  # each member its own copy
        member_dir = None if output_dir is None else Path(output_dir) / (f"member_{k}" if ensemble > 1 else "")
        run = {"test": test, "seed": seed + k, "output_dir": member_dir, "head": head, "sigma": sigma}
        results.append(fit(member, train, val, **run, **options))
    if int(ensemble) == 1:
        return results[0]
    return EnsembleResult.evaluate(results, val, test_structures, test_targets, test_state_attr)


def _pretrained_folder(source: Any) -> Path:
    """The CDSSL folder behind ``model`` (a registered name or a folder): its pretext head and sigma, for denoising."""
    folder = source_folder(source) if isinstance(source, (str, Path)) else None
    if folder is None or not (folder / "cdssl.json").is_file():
        raise ValueError(
            "denoising_weight > 0 needs the pretext head and sigma of a CDSSL pretraining: give model as a "
            "registered name (such as 'CDSSL-MEGNet-MP') or a folder written by pretrain(), not "
            f"{type(source).__name__ if not isinstance(source, (str, Path)) else repr(str(source))}"
        )
    return folder


def fit(
    model: nn.Module,
    train: Any,
    val: Any,
    *,
    test: Any = None,
    loss: str = "l1_loss",
    max_epochs: int = 200,
    patience: int | None = 50,
    lr_patience: int | None = None,
    batch_size: int = 16,
    lr: float = 1e-3,
    backbone_lr: float | None = None,
    freeze_backbone: bool = False,
    seed: int = 0,
    output_dir: str | Path | None = None,
    head: nn.Module | None = None,
    sigma: float = 0.3,
    denoising_weight: float = 0.0,
    shorter: tuple[int, int] | None = None,
    **trainer_kwargs: Any,
) -> FinetuneResult:
    """Finetune on matgl datasets whose items carry the target as their first label (what :func:`finetune` builds).

    This is the engine of :func:`finetune` for callers that convert their crystals once and train many times
    (the benchmark). Arguments are those of :func:`finetune`; ``train``, ``val`` and ``test`` are datasets;
    ``head`` and ``sigma`` are the pretext head and noise level for ``denoising_weight > 0``. ``shorter``:
    ``(patience, max_epochs)`` of a shorter run to report too (:class:`ShorterRun`), as the metrics
    ``shorter_best_val_MAE``, ``shorter_best_epoch``, ``shorter_epochs`` and ``shorter_test_MAE``.
    """
    L.seed_everything(seed, workers=True, verbose=False)
    y = np.array([float(next(iter(item[3].values()))) for item in train])
    head = head if denoising_weight else None
    optimizer = optimizer_for(model, lr=lr, backbone_lr=backbone_lr, freeze_backbone=freeze_backbone, head=head)
    schedule = (
        cosine_schedule(optimizer, max_epochs) if lr_patience is None else plateau_schedule(optimizer, lr_patience)
    )
    module = PropertyModule(
        model=model,
        data_mean=float(y.mean()),
        data_std=float(y.std()) or 1.0,
        loss=loss,
        lr=lr,
        optimizer=optimizer,
        scheduler=schedule,
        head=head,
        sigma=sigma,
        denoising_weight=denoising_weight,
        seed=seed,
    )
    train_loader, val_loader = get_backend().loaders(train, val, batch_size=batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(output_dir) if output_dir is not None else Path(tmp)
        checkpoint = ModelCheckpoint(dirpath=root / "checkpoints", monitor="val_MAE", mode="min")
        callbacks = [checkpoint, *([EarlyStopping("val_MAE", patience=patience)] if patience else [])]
        short = ShorterRun(*shorter) if shorter is not None else None
        trainer_kwargs.setdefault("logger", False)
        trainer_kwargs.setdefault("enable_model_summary", False)
        trainer_kwargs["callbacks"] = [*trainer_kwargs.get("callbacks", []), *callbacks, *([short] if short else [])]
        trainer = L.Trainer(max_epochs=max_epochs, default_root_dir=root, **trainer_kwargs)
        trainer.fit(module, train_loader, val_loader)
        _, test_loader = get_backend().loaders(test, test, batch_size=64) if test is not None else (None, None)
        shorter_metrics = {}
        if short is not None and short.state is not None:
            module.load_state_dict(short.state)
            shorter_metrics = {"shorter_best_val_MAE": short.best, "shorter_best_epoch": float(short.best_epoch),
                               "shorter_epochs": float(short.epochs or trainer.current_epoch)}  # fmt: skip
            if test_loader is not None:
                shorter_metrics["shorter_test_MAE"] = _test_mae(trainer, module, test_loader)
        best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=False)
        module.load_state_dict(best["state_dict"])
        metrics = {
            "best_val_MAE": float(checkpoint.best_model_score),
            "best_epoch": float(best["epoch"]),
            "epochs": float(trainer.current_epoch),
        }
        if test_loader is not None:
            metrics["test_MAE"] = _test_mae(trainer, module, test_loader)
        metrics |= shorter_metrics
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return FinetuneResult(module.model, module.data_mean, module.data_std, metrics)
