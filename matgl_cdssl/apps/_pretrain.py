"""``pretrain``: the engineering around :class:`~matgl_cdssl.method.CDSSLModule` (model, data, Trainer, outputs).

:func:`pretrain` runs four steps, each a function of its own: :func:`_resolve_model` (a new MEGNet, a folder or a
name, with its pretext head), :func:`~matgl_cdssl.apps._pretrain_data.datasets` (in memory or through the graph
cache, split by :func:`~matgl_cdssl.data.train_val_split`), :func:`_trainer` (Lightning with checkpoints, loggers and
determinism, plus the callbacks of :mod:`~matgl_cdssl.apps._callbacks`: the DDP freeze, the divergence guard and the
wall clock) and :func:`_save` (the model folder of :func:`~matgl_cdssl.hub.save_pretrained`).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from matgl_cdssl._backend import get_backend
from matgl_cdssl.apps._callbacks import DivergenceGuard, FreezeUnreached, PieceTimer
from matgl_cdssl.apps._pretrain_data import Data, datasets
from matgl_cdssl.apps._runs import (
    check_loggers,
    deterministic_on_cpu,
    make_loggers,
    merge_metrics,
    process_count,
    resume_from,
    set_aside_metrics,
)
from matgl_cdssl.data import check_targets
from matgl_cdssl.hub import (
    labels_seen,
    load_head,
    load_model,
    megnet_of,
    read_config,
    save_pretrained,
    source_folder,
)
from matgl_cdssl.method import CDSSLModule, check_sigma

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import nn

__all__ = ["pretrain"]

logger = logging.getLogger(__name__)


def pretrain(
    structures: Sequence[Any],
    *,
    sigma: float = 0.3,
    cutoff: float | None = None,
    max_epochs: int = 100,
    batch_size: int = 32,
    lr: float = 1e-3,
    val_fraction: float = 0.1,
    seed: int = 0,
    model: nn.Module | str | Path | None = None,
    output_dir: str | Path | None = None,
    element_types: Sequence[str] | None = None,
    head_hidden: tuple[int, ...] = (64,),
    gradient_clip_val: float | None = None,
    ckpt_path: str | Path | None = None,
    resume: bool = False,
    loader_kwargs: dict[str, Any] | None = None,
    skip_invalid: bool = False,
    loggers: Sequence[str] = ("csv",),
    graph_cache: str | Path | None = None,
    val_grad_norm: bool = False,
    keep_every: int | None = None,
    targets: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
    target_weight: float = 1.0,
    **trainer_kwargs: Any,
) -> nn.Module:
    """Pretrain a matgl MEGNet by crystal denoising (CDSSL) on unlabelled crystals.

    Args:
        structures: pymatgen Structures, ASE Atoms, or paths to structure files or folders (CIF, POSCAR, extxyz,
            CSV with a ``cif`` column, JSON/JSON Lines of Structure dicts; see
            :func:`matgl_cdssl.data.read_structures`). With ``graph_cache``, files are read one crystal at a time.
        sigma: Noise level in Å (standard deviation of each Cartesian displacement component); must be > 0. The
            default, 0.3 Å, gave the best downstream validation MAE in the sweep of docs/results/sigma_sweep.
        cutoff: Neighbour cutoff in Å for a new model (matgl's MEGNet default, 4.0, when None). Must match
            ``model.cutoff`` when continuing from a model.
        max_epochs: Training epochs.
        batch_size: Crystals per batch.
        lr: Adam learning rate (cosine decay to 1% over ``max_epochs``).
        val_fraction: Fraction of crystals held out for validation (0 to train on all).
        seed: Seeds the split, the initial weights, the batch order and the noise. On the CPU, two runs with the
            same seed and inputs give identical weights (the Trainer's ``deterministic=True`` is the default there;
            on GPUs pass ``deterministic=True`` or ``"warn"`` yourself, at some cost in speed).
        model: Continue from this MEGNet, a CDSSL model folder or a registered name such as ``"CDSSL-MEGNet-MP"``
            (for the last two, the pretext head is restored too), or matgl's supervised ``"MEGNet-MP-2018.6.1-Eform"``
            (a copy ships with the package; its ``TransformedTargetModel`` is unwrapped and a fresh pretext head made).
            A new MEGNet with matgl's default architecture is made when None.
        output_dir: Where to write ``checkpoints/`` (Lightning, for resuming), ``metrics.csv`` (per-epoch
            metrics) and ``model/`` (the pretrained MEGNet in matgl's format, with ``cdssl.json`` and the head).
            Nothing is written when None.
        element_types: Element types of a new model (matgl's 89 default elements when None).
        head_hidden: Hidden layer sizes of the pretext head.
        gradient_clip_val: Clip the global gradient norm to this value.
        ckpt_path: Resume from this Lightning checkpoint (e.g. ``output_dir/checkpoints/last.ckpt``).
        resume: Resume from ``output_dir/checkpoints/last.ckpt`` (written after every epoch) when it exists, and
            start afresh (with a log message) when it does not: a killed run continues to the same ``max_epochs``.
            Needs ``output_dir``; ignored when ``ckpt_path`` is given.
        loader_kwargs: Passed to matgl's ``MGLDataLoader`` (e.g. ``num_workers``).
        skip_invalid: Leave out invalid crystals, each logged with a warning and listed in ``skipped.csv``, instead
            of raising an error on the first.
        loggers: Lightning loggers of the per-epoch metrics: ``"csv"`` writes ``metrics.csv`` (merged across
            resumes), ``"tensorboard"`` writes TensorBoard event files to ``tensorboard/`` (needs the
            ``tensorboard`` or ``tensorboardX`` package). Both go to ``output_dir`` (a temporary folder when None).
            Ignored when ``trainer_kwargs`` has a ``logger``.
        graph_cache: A folder in which the converted graphs of the training and validation crystals are kept and
            reused by later runs on the same crystals, cutoff and elements (:func:`~matgl_cdssl.data.cached_dataset`).
            The graphs then stream from disk shard by shard, and crystals are read from files one at a time, so they are
            never all in memory. Under DDP each rank reads whole shards of its own (a shard sampler, matgl's on PyG,
            ``ShardBatchSampler`` of :mod:`matgl_cdssl._backend._dgl_shards` on DGL, replaces Lightning's distributed
            sampler).
        val_grad_norm: Also log the gradient norm on validation batches (``val_Grad_Norm``). Off by default: it
            doubles the cost of validation and runs the Trainer with ``inference_mode=False``.
        keep_every: Also keep the checkpoint of every ``keep_every``-th epoch, as
            ``output_dir/checkpoints/every/epoch=<e>.ckpt`` (``e`` counts from 0, as in Lightning: ``epoch=7`` holds
            the weights after 8 epochs), for looking back along a long run; by default only the best and the last
            are kept.
        targets: A property of the crystals, learnt next to the pretext: one value per crystal in the order of
            ``structures`` (NaN where a crystal has none), or ``{name: values}`` to record the property's name. The
            loss is the pretext loss plus ``target_weight`` times the MSE of MEGNet's own prediction on the clean
            crystals (:func:`~matgl_cdssl.method.property_loss`), so that 30k cheap labels and the denoising task
            shape one start. The labels are standardised with the start's normaliser (matgl's
            ``TransformedTargetModel``, or an earlier joint run's ``cdssl.json``) when it has one, else with the mean
            and standard deviation of the labels of the crystals trained on (not of those ``skip_invalid`` leaves
            out); the weight, both, the name and their number (``n_labelled``) are saved in ``cdssl.json``
            (``target``). The readout is then trained, and kept in the saved folder.
        target_weight: Weight of the property's loss when ``targets`` is given.
        **trainer_kwargs: Passed to ``lightning.Trainer`` (e.g. ``accelerator``, ``devices``, ``precision``).

    Returns:
        The pretrained MEGNet, with the weights of the epoch with the lowest validation loss (the last epoch when
        ``val_fraction`` is 0). Without ``targets``, its Set2Set readout and output MLP are untouched by pretraining.

    Raises:
        ValueError: Bad input, naming the offending structure (see :func:`~matgl_cdssl.data.build_dataset`), a
            non-positive sigma, a cutoff that contradicts the model's, or an unknown logger name.
        ImportError: ``"tensorboard"`` in ``loggers`` but neither ``tensorboard`` nor ``tensorboardX`` installed.

    Example:
        >>> from matgl_cdssl import load_sample
        >>> model = pretrain(load_sample(20).structures, max_epochs=1, sigma=0.1,
        ...                  enable_progress_bar=False, enable_model_summary=False)  # doctest: +SKIP
    """
    sigma = check_sigma(sigma)
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction!r}")
    ckpt_path = resume_from(ckpt_path, resume, output_dir)
    loggers = check_loggers(loggers) if "logger" not in trainer_kwargs else ()
    # The engineering of the run, as callbacks; the timer's max_time is checked (DD:HH:MM:SS) before minutes of reading.
    clock = PieceTimer(duration=trainer_kwargs.pop("max_time", None), interval="step")
    engineering = [FreezeUnreached(), DivergenceGuard(), clock]
    trainer_kwargs = {**trainer_kwargs, "callbacks": [*(trainer_kwargs.get("callbacks") or []), *engineering]}
    start = time.perf_counter()
    L.seed_everything(seed, workers=True, verbose=False)

    name = next(iter(targets)) if isinstance(targets, Mapping) else None  # the property's, when it is named
    seen = _labels_seen(model, learnt=False if targets is None else name)
    model, head, head_hidden, normaliser = _resolve_model(model, cutoff, element_types, head_hidden)
    world_size = process_count(trainer_kwargs)
    labels = check_targets(targets, target_weight)
    data = datasets(structures, model, graph_cache, val_fraction, seed, skip_invalid, world_size, labels)
    target = _target_scale(data.targets, normaliser, target_weight)
    if labels is not None:  # what the readout learnt, for the card of weights made this way (leakage)
        target["name"] = name
    if graph_cache is not None and world_size > 1:
        # The shard samplers give each rank whole shards of its own; Lightning's sampler would not.
        trainer_kwargs.setdefault("use_distributed_sampler", False)
    loaders = get_backend().loaders(data.train, data.val, batch_size=batch_size, seed=seed, **(loader_kwargs or {}))
    module = CDSSLModule(
        model,
        sigma=sigma,
        head=head,
        head_hidden=head_hidden,
        lr=lr,
        decay_steps=max_epochs,
        seed=seed,
        sync_dist=world_size > 1,
        val_grad_norm=val_grad_norm,
        target_weight=target["weight"],
        target_mean=target["mean"],
        target_std=target["std"],
    )

    # On the CPU the Trainer is deterministic (unless the caller chose), and torch's setting is given back afterwards.
    with tempfile.TemporaryDirectory() as tmp, deterministic_on_cpu(trainer_kwargs):
        root = Path(output_dir) if output_dir is not None else Path(tmp)
        monitor = "val_Total_Loss" if data.val_idx else "train_Total_Loss"
        checkpoint = ModelCheckpoint(dirpath=root / "checkpoints", monitor=monitor, mode="min")  # the best epoch
        # last.ckpt after every epoch, to resume from: Lightning's save_last writes it only when a best one is saved.
        latest = ModelCheckpoint(root / "checkpoints", "last", enable_version_counter=False)
        trainer_kwargs["callbacks"].append(latest)
        if keep_every is not None:
            if int(keep_every) < 1:
                raise ValueError(f"keep_every must be a positive number of epochs; got {keep_every!r}")
            every = ModelCheckpoint(root / "checkpoints" / "every", "{epoch}", every_n_epochs=int(keep_every),
                                    save_top_k=-1, save_on_train_epoch_end=True)  # fmt: skip
            trainer_kwargs["callbacks"].append(every)
        trainer = _trainer(trainer_kwargs, root, loggers, checkpoint, max_epochs, gradient_clip_val, val_grad_norm)
        _fit(trainer, module, loaders, data, root, ckpt_path)
        if checkpoint.best_model_path:
            best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
            module.load_state_dict(best["state_dict"])
            logger.info("Restored the best epoch (%s = %.5g)", monitor, float(checkpoint.best_model_score))
        if output_dir is not None and trainer.is_global_zero:
            _save(module, trainer, checkpoint, data, root / "model", seed=seed, start=start, target=target, clock=clock,
                  seen=seen)  # fmt: skip
    return module.model


def _resolve_model(
    model: nn.Module | str | Path | None,
    cutoff: float | None,
    element_types: Sequence[str] | None,
    head_hidden: tuple[int, ...],
) -> tuple[nn.Module, nn.Module | None, tuple[int, ...], tuple[float, float] | None]:
    """Step 1: ``(model, head, head_hidden, normaliser)`` from a MEGNet, a folder or a name, or a new MEGNet.

    A CDSSL folder or name has its pretext head restored. ``normaliser`` is the start's ``(mean, std)`` of its
    property, when it has one: matgl's ``TransformedTargetModel`` (unwrapped here to its MEGNet) or an earlier joint
    run's ``cdssl.json``.
    """
    head = None
    normaliser = None
    if isinstance(model, (str, Path)):
        source = source_folder(model)
        loaded = load_model(model, fresh_readout=False)
        model = megnet_of(loaded)
        if model is not loaded:
            normaliser = tuple(float(getattr(loaded.transformer, k)) for k in ("mean", "std"))
        if (source / "cdssl.json").is_file():
            head = load_head(source, model)
            config = read_config(source)
            head_hidden = tuple(config.get("head_hidden", head_hidden))
            if config.get("target"):
                normaliser = (float(config["target"]["mean"]), float(config["target"]["std"]))
    elif model is None:
        kwargs: dict[str, Any] = {"cutoff": 4.0 if cutoff is None else float(cutoff)}
        if element_types is not None:
            kwargs["element_types"] = tuple(element_types)
        model = get_backend().megnet_class(**kwargs)
    if cutoff is not None and not math.isclose(float(cutoff), float(model.cutoff)):
        raise ValueError(f"cutoff={cutoff} contradicts the model's cutoff of {model.cutoff} Å; leave cutoff unset")
    return model, head, tuple(head_hidden), normaliser


def _labels_seen(model: Any, *, learnt: str | bool | None) -> list[str] | None:
    """The labels the saved weights will have seen: the start's plus the property ``learnt`` beside the pretext.

    ``learnt`` is the property's name, None for an unnamed one, False without a property. The start's labels come
    from :func:`~matgl_cdssl.hub.labels_seen`; None where either is unknown (a model object, an unnamed property).
    """
    start = () if model is None else labels_seen(model) if isinstance(model, (str, Path)) else None
    if start is None or learnt is None:
        return None
    return sorted({*start, *([learnt] if learnt else [])})


def _target_scale(
    targets: list[float] | None, normaliser: tuple[float, float] | None, target_weight: float
) -> dict[str, Any]:
    """The property's weight, mean and standard deviation (``{"weight": 0.0, ...}`` without targets).

    ``targets`` are the labels of the crystals trained on (``Data.targets``: those left out under
    ``skip_invalid`` are not among them). Without the start's normaliser, their mean and standard deviation (NaN left
    out); ``n_labelled`` counts them.
    """
    if targets is None:
        return {"weight": 0.0, "mean": 0.0, "std": 1.0}
    values = torch.tensor(targets, dtype=torch.float64)
    values = values[torch.isfinite(values)]
    if normaliser is None:
        std = float(values.std()) if len(values) > 1 else 1.0
        normaliser = (float(values.mean()), std if std > 0 else 1.0)
    return {"weight": float(target_weight), "mean": normaliser[0], "std": normaliser[1], "n_labelled": len(values)}


def _trainer(
    trainer_kwargs: dict[str, Any],
    root: Path,
    loggers: Sequence[str],
    checkpoint: ModelCheckpoint,
    max_epochs: int,
    gradient_clip_val: float | None,
    val_grad_norm: bool,
) -> L.Trainer:
    """Step 3: the Lightning Trainer, with the checkpoint callback and the loggers."""
    kwargs = dict(trainer_kwargs)
    kwargs.setdefault("logger", make_loggers(loggers, root))
    kwargs["callbacks"] = [*kwargs["callbacks"], checkpoint]
    if val_grad_norm:  # a gradient on validation batches
        kwargs.setdefault("inference_mode", False)
    kwargs.setdefault("default_root_dir", root)
    return L.Trainer(max_epochs=max_epochs, gradient_clip_val=gradient_clip_val, **kwargs)


def _fit(
    trainer: L.Trainer,
    module: CDSSLModule,
    loaders: tuple,
    data: Data,
    root: Path,
    ckpt_path: Any,
) -> None:
    """Run ``trainer.fit``; keep the metrics of earlier runs on a resume (also when the run stops with an error)."""
    earlier = set_aside_metrics(root) if ckpt_path is not None else None
    try:
        trainer.fit(
            module,
            loaders[0],
            loaders[1] if data.val_idx else None,
            ckpt_path=None if ckpt_path is None else str(ckpt_path),
        )
    finally:  # also when the run stops with an error (e.g. TrainingDiverged): keep the metrics
        if earlier is not None:
            merge_metrics(root, earlier)


def _save(
    module: CDSSLModule,
    trainer: L.Trainer,
    checkpoint: ModelCheckpoint,
    data: Data,
    folder: Path,
    *,
    seed: int,
    start: float,
    target: dict[str, Any],
    clock: PieceTimer,
    seen: list[str] | None,
) -> None:
    """Step 4: the model folder (:func:`~matgl_cdssl.hub.save_pretrained`) with how it was pretrained."""
    config = {
        "sigma": module.noise.sigma,
        "cutoff": module.model.cutoff,
        "head_hidden": list(module.hparams.head_hidden),
        "seed": seed,
        "n_structures": len(data.train_idx) + len(data.val_idx),
        "n_train": len(data.train_idx),
        "n_val": len(data.val_idx),
        "epochs": trainer.current_epoch,
        "wall_time_s": round(time.perf_counter() - start, 1),
        "total_wall_time_s": round(clock.elapsed_s, 1),
        "best_epoch_metric": checkpoint.monitor,
        "best_score": None if checkpoint.best_model_score is None else float(checkpoint.best_model_score),
        "last_epoch_metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
    }
    if target["weight"]:  # a joint run: its readout was trained on this property, in these units
        config["target"] = target
    if seen is not None:
        config["labels_seen"] = seen
    save_pretrained(module.model, folder, head=module.head, config=config, skipped=data.skipped)
