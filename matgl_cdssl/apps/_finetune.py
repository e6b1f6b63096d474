"""``finetune`` and ``fit``: train (pretrained) MEGNets on labelled crystals with matgl's ``ModelLightningModule``."""

from __future__ import annotations

import logging
import tempfile
import warnings
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
from matgl_cdssl.apps._callbacks import ShorterRun
from matgl_cdssl.apps._optim import cosine_schedule, optimizer_for, plateau_schedule, set_state_width
from matgl_cdssl.apps._options import RELIABLE_VAL, TrainOptions
from matgl_cdssl.apps._predict import EnsembleResult
from matgl_cdssl.apps._runs import deterministic_on_cpu
from matgl_cdssl.data import build_dataset, check_values, train_val_split
from matgl_cdssl.hub import load_head, megnet_of, new_like, read_config, source_folder
from matgl_cdssl.method import GaussianPositionNoise, pretext

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import nn

__all__ = ["FinetuneResult", "PropertyModule", "finetune", "fit"]

logger = logging.getLogger(__name__)

#: What :func:`finetune` starts from: a MEGNet (or matgl's ``TransformedTargetModel`` of one), a name or a folder.
Start = Any


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


def finetune(
    model: Start | Sequence[Start],
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
    seed: int = 0,
    output_dir: str | Path | None = None,
    skip_invalid: bool = False,
    ensemble: int = 1,
    options: TrainOptions | None = None,
    **kwargs: Any,
) -> FinetuneResult | EnsembleResult:
    """Finetune a MEGNet on one property with matgl's ``ModelLightningModule``.

    Targets are normalised with the training mean and standard deviation (matgl's ``data_mean``/``data_std``);
    the epoch with the lowest validation MAE is restored at the end (early stopping after ``patience`` epochs
    without improvement). The optimiser is Adam, its rates halved whenever the validation MAE has not improved for
    ``lr_patience`` epochs (a schedule that does not depend on the epoch cap), or with ``lr_patience=None`` matgl's
    cosine decay over ``max_epochs``. The training options and their defaults, the benchmark's tested protocol, are
    those of :class:`~matgl_cdssl.apps.TrainOptions`; give them as keywords (``max_epochs=100``) or ``options=``.

    **Every start, one rule**: each member keeps the backbone of its start (embedding, encoders, message-passing
    blocks) and gets a fresh readout (Set2Set and output MLP) drawn from its own seed, ``seed + k``
    (``new_like(start, weights="backbone", seed=seed + k)``), whether the start is a registered name, a folder, a
    model object or matgl's supervised ``MEGNet-MP-2018.6.1-Eform`` (its target transformer dropped). A start is
    never trained in place; to continue training a model's own readout, use :func:`fit`.

    Args:
        model: The start: a registered name such as ``"CDSSL-MEGNet-MP"``, a model folder, a MEGNet, matgl's
            ``"MEGNet-MP-2018.6.1-Eform"`` (the copy shipped in the package) or its folder, or any name
            ``matgl.load_model`` knows; or a list of starts for an ensemble (member ``k`` from start
            ``k mod len(starts)``), all with the same element types and cutoff.
        structures: Training crystals (see :func:`~matgl_cdssl.data.read_structures`).
        targets: One value per training crystal.
        val_structures: Validation crystals; if None, ``val_fraction`` of the training crystals (at most ``max_val``,
            at least ``min_val``) are held out, drawn from ``seed`` (``val_fraction=0``: no validation, see
            :func:`fit`). Fewer than 150 validation crystals (the smallest of the benchmark's tested rule) give a
            warning: the best epoch then follows a noisy MAE.
        val_targets: Their values.
        test_structures: Optional test crystals, evaluated with the restored best weights.
        test_targets: Their values.
        state_attr: Optional MEGNet state attributes of the training crystals, shape ``(n, k)`` (for example a
            temperature or a fidelity). When ``k`` differs from the model's state width (2 for matgl's default
            MEGNet), the first state-encoder layer is replaced by a fresh one
            (:func:`~matgl_cdssl.apps.set_state_width`). When given, the validation and test sets need theirs too.
        val_state_attr: State attributes of the validation crystals.
        test_state_attr: State attributes of the test crystals.
        seed: Seeds the split, the readout initialisation and the batch order. On the CPU the same seed and data give
            identical weights at the same thread count (see :func:`fit`).
        output_dir: Where to keep checkpoints; a temporary folder when None.
        skip_invalid: Leave out invalid crystals (and their targets), each with a warning, instead of raising.
        ensemble: Train this many members, member ``k`` from seed ``seed + k`` (its own readout initialisation and
            batch order; the same training and validation split, drawn from ``seed``) and from start
            ``k mod len(starts)``. The prediction is their mean and the uncertainty their standard deviation
            (:func:`~matgl_cdssl.apps.predict`). At least the number of starts.
        options: The training options (:class:`~matgl_cdssl.apps.TrainOptions`: ``loss``, ``max_epochs``, ``patience``,
            ``lr_patience``, ``batch_size``, ``lr``, ``backbone_lr``, ``freeze_backbone``, ``denoising_weight``,
            ``val_fraction``, ``min_val``, ``max_val``); default ``TrainOptions()``.
        **kwargs: Any of those options by name (they override ``options``), ``shorter`` (see :func:`fit`); the
            rest go to ``lightning.Trainer``. ``denoising_weight > 0`` adds that weight times the CDSSL pretext loss
            (:class:`PropertyModule`), with the pretext head and sigma of each start (CDSSL names or folders only).

    Returns:
        A :class:`FinetuneResult`, or with ``ensemble > 1`` an :class:`~matgl_cdssl.apps.EnsembleResult`.

    Raises:
        ValueError: targets or state attributes with NaN or inf, or whose length does not match the structures;
            state attributes given for training but not for validation or test; ``ensemble < 1`` or fewer members
            than starts; starts with other element types or cutoffs; or ``denoising_weight > 0`` for a start without
            a pretext head (not a CDSSL folder or name).

    Example:
        >>> from matgl_cdssl import finetune, load_sample
        >>> sample = load_sample(40)
        >>> result = finetune("CDSSL-MEGNet-MP", sample.structures, sample.labels["band_gap_eV"], max_epochs=1,
        ...                   freeze_backbone=True, enable_progress_bar=False)
        >>> sorted(result.metrics)
        ['best_epoch', 'best_val_MAE', 'epochs']
    """
    opts, rest = TrainOptions.take(options, kwargs)
    starts = list(model) if isinstance(model, (list, tuple)) else [model]
    if int(ensemble) < max(1, len(starts)):
        raise ValueError(f"ensemble must be a positive number of members, at least one per start; got {ensemble!r}")
    L.seed_everything(seed, workers=True, verbose=False)
    templates = _templates(starts)
    heads = [_pretrained_folder(s) for s in starts] if opts.denoising_weight else None  # fails early without one
    first = templates[0]
    width = None if state_attr is None else np.asarray(state_attr).reshape(len(state_attr), -1).shape[1]
    if state_attr is not None:
        for name, given, other in (("val_state_attr", val_state_attr, val_structures),
                                   ("test_state_attr", test_state_attr, test_structures)):  # fmt: skip
            if other is not None and given is None:
                raise ValueError(f"state_attr was given for training, so {name} is needed too")

    def dataset(structs: Sequence[Any], values: Sequence[float] | None, name: str, state: Any) -> tuple[Any, list]:
        values = check_values([] if values is None else values, name).tolist()
        if len(values) != len(structs):
            raise ValueError(f"{name} has {len(values)} values for {len(structs)} structures")
        ds, _, skipped = build_dataset(structs, element_types=first.element_types, cutoff=first.cutoff,
                                       labels={name: values}, state_attr=state, skip_invalid=skip_invalid)  # fmt: skip
        return ds, skipped

    train, _ = dataset(structures, targets, "targets", state_attr)
    val = None  # val_fraction=0 without val_structures: no validation (fit trains max_epochs, keeps the last)
    if val_structures is None and opts.val_fraction != 0:
        if not opts.val_fraction > 0:
            raise ValueError(f"val_fraction must be positive without a validation set; got {opts.val_fraction!r}")
        train_idx, val_idx = train_val_split(len(train), opts.val_share(len(train)), seed, min_val=opts.min_val)
        train, val = Subset(train, train_idx), Subset(train, val_idx)
    elif val_structures is not None:
        val, _ = dataset(val_structures, val_targets, "val_targets", val_state_attr)
    if val is not None and len(val) < RELIABLE_VAL:
        warnings.warn(
            f"finetune: the validation set has {len(val)} crystals, fewer than {RELIABLE_VAL} (the smallest of the "
            "benchmark's tested rule): the best epoch, early stopping and the learning-rate schedule follow a noisy "
            "validation MAE; give more validation crystals (val_structures, val_fraction or min_val) if you can",
            stacklevel=2,
        )
    test, left_out = (None, [])
    if test_structures is not None:
        test, left_out = dataset(test_structures, test_targets, "test_targets", test_state_attr)
    results = []
    for k in range(int(ensemble)):
        member = new_like(templates[k % len(starts)], weights="backbone", seed=seed + k)
        if width is not None:
            set_state_width(member, width)
        head = load_head(heads[k % len(starts)], member) if heads is not None else None  # each its own copy
        sigma = float(read_config(heads[k % len(starts)])["sigma"]) if heads is not None else 0.3
        member_dir = None if output_dir is None else Path(output_dir) / (f"member_{k}" if ensemble > 1 else "")
        run = {"test": test, "seed": seed + k, "output_dir": member_dir, "head": head, "sigma": sigma}
        results.append(fit(member, train, val, options=opts, **run, **rest))
    if int(ensemble) == 1:
        return results[0]
    names = [_start_name(starts[k % len(starts)]) for k in range(int(ensemble))]
    return EnsembleResult.evaluate(results, val, test, starts=names, left_out=dict(left_out))


def _templates(starts: list[Start]) -> list[nn.Module]:
    """Each start's MEGNet (loaded, unwrapped; never changed), checked to share the first one's elements and cutoff."""
    if not starts:
        raise ValueError("finetune needs at least one start")
    templates = [megnet_of(start) for start in starts]
    first = templates[0]
    for start, net in zip(starts[1:], templates[1:], strict=True):
        if tuple(net.element_types) != tuple(first.element_types) or float(net.cutoff) != float(first.cutoff):
            raise ValueError(f"start {_start_name(start)} has other element types or another cutoff than the first")
    return templates


def _start_name(start: Start) -> str:
    """How an ensemble records a start: its name or folder, or the class of a model object."""
    return str(start) if isinstance(start, (str, Path)) else f"{type(start).__name__} object"


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
    seed: int = 0,
    output_dir: str | Path | None = None,
    head: nn.Module | None = None,
    sigma: float = 0.3,
    shorter: tuple[int, int] | None = None,
    options: TrainOptions | None = None,
    **kwargs: Any,
) -> FinetuneResult:
    """Finetune on matgl datasets whose items carry the target as their first label (what :func:`finetune` builds).

    This is the engine of :func:`finetune` for callers that convert their crystals once and train many times
    (the benchmark). It trains ``model`` as it is, in place (its readout included). ``train``, ``val`` and ``test``
    are datasets; ``options`` and keyword arguments naming its fields are the training options
    (:class:`~matgl_cdssl.apps.TrainOptions`; its validation split is not used here), the other keywords go to
    ``lightning.Trainer``.
    ``head`` and ``sigma`` are the pretext head and noise level for ``denoising_weight > 0``. ``shorter``:
    ``(patience, max_epochs)`` of a shorter run to report too (:class:`~matgl_cdssl.apps.ShorterRun`), as the metrics
    ``shorter_best_val_MAE``, ``shorter_best_epoch``, ``shorter_epochs`` and ``shorter_test_MAE``; it needs the
    plateau schedule (``lr_patience``), else a ValueError. ``val=None`` trains ``max_epochs`` epochs on ``train``
    and keeps the last (a refit on all the labelled data for a number of epochs chosen on validation before); there
    is then no plateau to halve the rates on (``lr_patience=None``) and no best epoch.

    On the CPU the Trainer's ``deterministic`` defaults to True, as in :func:`pretrain`: the same seed and data give
    identical weights at the same thread count on the same machine (not across thread counts: see docs/benchmark.md,
    "Reproducibility"). Pass ``deterministic=False`` to leave it off.
    """
    opts, trainer_kwargs = TrainOptions.take(options, kwargs)
    if val is None and opts.lr_patience is not None:
        raise ValueError("without validation data (val=None) there is no plateau to halve the rates on: give "
                         "lr_patience=None")  # fmt: skip
    if shorter is not None and opts.lr_patience is None:  # the cap sets the cosine schedule: no shorter run inside
        raise ValueError("shorter= needs the plateau schedule (lr_patience): under matgl's cosine decay the epoch cap "
                         "sets the schedule, so a longer run does not hold the shorter one")  # fmt: skip
    L.seed_everything(seed, workers=True, verbose=False)
    y = np.array([float(next(iter(item[3].values()))) for item in train])
    head = head if opts.denoising_weight else None
    optimizer = optimizer_for(model, lr=opts.lr, backbone_lr=opts.backbone_lr, freeze_backbone=opts.freeze_backbone,
                              head=head)  # fmt: skip
    if opts.lr_patience is None:
        schedule = cosine_schedule(optimizer, opts.max_epochs)
    else:
        schedule = plateau_schedule(optimizer, opts.lr_patience)
    module = PropertyModule(
        model=model,
        data_mean=float(y.mean()),
        data_std=float(y.std()) or 1.0,
        loss=opts.loss,
        lr=opts.lr,
        optimizer=optimizer,
        scheduler=schedule,
        head=head,
        sigma=sigma,
        denoising_weight=opts.denoising_weight,
        seed=seed,
    )
    train_loader, val_loader = get_backend().loaders(train, train if val is None else val, batch_size=opts.batch_size)
    with tempfile.TemporaryDirectory() as tmp, deterministic_on_cpu(trainer_kwargs):
        root = Path(output_dir) if output_dir is not None else Path(tmp)
        checkpoint = ModelCheckpoint(dirpath=root / "checkpoints", monitor="val_MAE", mode="min")
        callbacks = [checkpoint, *([EarlyStopping("val_MAE", patience=opts.patience)] if opts.patience else [])]
        callbacks = callbacks if val is not None else []
        short = ShorterRun(*shorter) if shorter is not None else None
        trainer_kwargs.setdefault("logger", False)
        trainer_kwargs.setdefault("enable_model_summary", False)
        trainer_kwargs["callbacks"] = [*trainer_kwargs.get("callbacks", []), *callbacks, *([short] if short else [])]
        trainer = L.Trainer(max_epochs=opts.max_epochs, default_root_dir=root, **trainer_kwargs)
        trainer.fit(module, train_loader, val_loader if val is not None else None)
        _, test_loader = get_backend().loaders(test, test, batch_size=64) if test is not None else (None, None)
        shorter_metrics = {}
        if short is not None and short.state is not None:
            module.load_state_dict(short.state)
            shorter_metrics = {"shorter_best_val_MAE": short.best, "shorter_best_epoch": float(short.best_epoch),
                               "shorter_epochs": float(short.epochs or trainer.current_epoch)}  # fmt: skip
            if test_loader is not None:
                shorter_metrics["shorter_test_MAE"] = _test_mae(trainer, module, test_loader)
        metrics = {"epochs": float(trainer.current_epoch)}
        if val is not None:  # the best validation epoch's weights (without validation, the last epoch's)
            # this run's own file; matgl 2.2's module pickles its optimiser class, which weights_only=True refuses
            best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=False)
            module.load_state_dict(best["state_dict"])
            metrics = {"best_val_MAE": float(checkpoint.best_model_score), "best_epoch": float(best["epoch"])} | metrics
        if test_loader is not None:
            metrics["test_MAE"] = _test_mae(trainer, module, test_loader)
        metrics |= shorter_metrics
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return FinetuneResult(module.model, module.data_mean, module.data_std, metrics)
