"""``pretrain``: the engineering around :class:`~matgl_cdssl.module.CDSSLModule` (data, Trainer, outputs)."""

from __future__ import annotations

import importlib.util
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from torch.utils.data import Subset

from matgl_cdssl.backend import get_backend
from matgl_cdssl.data import build_dataset
from matgl_cdssl.io import load_head, read_config, save_pretrained
from matgl_cdssl.module import CDSSLModule
from matgl_cdssl.registry import load_model, source_folder

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import nn

__all__ = ["pretrain"]

logger = logging.getLogger(__name__)

LOGGERS = ("csv", "tensorboard")
"""Names that ``pretrain(..., loggers=...)`` accepts."""


def _split(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded train/validation split that uses every structure."""
    n_val = 0 if val_fraction == 0 else max(1, round(n * val_fraction))
    if n - n_val < 1:
        raise ValueError(
            f"{n} structure(s) are too few for val_fraction={val_fraction}: none would be left to train on"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[n_val:]), sorted(perm[:n_val])


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
            (for the last two, the pretext head is restored too).
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
        skip_invalid: Leave out invalid crystals, each logged with a warning and listed in ``cdssl.json``, instead
            of raising an error on the first.
        loggers: Lightning loggers of the per-epoch metrics: ``"csv"`` writes ``metrics.csv`` (merged across
            resumes), ``"tensorboard"`` writes TensorBoard event files to ``tensorboard/`` (needs the
            ``tensorboard`` or ``tensorboardX`` package). Both go to ``output_dir`` (a temporary folder when None).
            Ignored when ``trainer_kwargs`` has a ``logger``.
        graph_cache: A folder in which the converted graphs of the training and validation crystals are kept and
            reused by later runs on the same crystals, cutoff and elements (:mod:`matgl_cdssl.graph_cache`). The graphs
            then stream from disk shard by shard, and crystals are read from files one at a time, so they are never
            all in memory. Under DDP each rank reads whole shards of its own (a shard sampler, matgl's on PyG,
            :class:`~matgl_cdssl.shards.ShardBatchSampler` on DGL, replaces Lightning's distributed sampler).
        **trainer_kwargs: Passed to ``lightning.Trainer`` (e.g. ``accelerator``, ``devices``, ``precision``).

    Returns:
        The pretrained MEGNet, with the weights of the epoch with the lowest validation loss (the last epoch when
        ``val_fraction`` is 0). Its Set2Set readout and output MLP are untouched by pretraining.

    Raises:
        ValueError: Bad input, naming the offending structure (see :func:`matgl_cdssl.data.build_dataset`), a
            non-positive sigma, a cutoff that contradicts the model's, or an unknown logger name.
        ImportError: ``"tensorboard"`` in ``loggers`` but neither ``tensorboard`` nor ``tensorboardX`` installed.

    Example:
        >>> from matgl_cdssl.data import load_sample
        >>> model = pretrain(load_sample(20).structures, max_epochs=1, sigma=0.1,
        ...                  enable_progress_bar=False, enable_model_summary=False)  # doctest: +SKIP
    """
    try:
        ok = math.isfinite(float(sigma)) and float(sigma) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"sigma must be a positive length in Å (e.g. 0.1); got {sigma!r}")
    sigma = float(sigma)
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction!r}")
    if resume and ckpt_path is None:
        if output_dir is None:
            raise ValueError("resume=True needs output_dir: the run resumes from output_dir/checkpoints/last.ckpt")
        last = Path(output_dir) / "checkpoints" / "last.ckpt"
        if last.is_file():
            ckpt_path = last
            logger.info("Resuming from %s", last)
        else:
            logger.info("No %s to resume from; starting afresh", last)
    loggers = _check_loggers(loggers) if "logger" not in trainer_kwargs else ()
    backend = get_backend()
    start = time.perf_counter()
    L.seed_everything(seed, workers=True, verbose=False)

    head = None
    if isinstance(model, (str, Path)):
        source = source_folder(model)
        model = load_model(model, fresh_readout=False)
        if (source / "cdssl.json").is_file():
            head = load_head(source, model)
            head_hidden = tuple(read_config(source).get("head_hidden", head_hidden))
    elif model is None:
        kwargs: dict[str, Any] = {"cutoff": 4.0 if cutoff is None else float(cutoff)}
        if element_types is not None:
            kwargs["element_types"] = tuple(element_types)
        model = backend.megnet_class(**kwargs)
    if cutoff is not None and not math.isclose(float(cutoff), float(model.cutoff)):
        raise ValueError(f"cutoff={cutoff} contradicts the model's cutoff of {model.cutoff} Å; leave cutoff unset")

    world_size = _world_size(trainer_kwargs)
    if graph_cache is None:
        dataset, _names, skipped = build_dataset(
            structures, element_types=model.element_types, cutoff=model.cutoff, skip_invalid=skip_invalid
        )
        train_idx, val_idx = _split(len(dataset), val_fraction, seed)
        train_set, val_set = Subset(dataset, train_idx), Subset(dataset, val_idx or train_idx[:1])
        n_structures = len(dataset)
    else:
        train_set, val_set, train_idx, val_idx, skipped = _cached_split(
            structures, model, graph_cache, val_fraction, seed, skip_invalid, world_size
        )
        n_structures = len(train_idx) + len(val_idx)
        if world_size > 1:
            # The shard samplers give each rank whole shards of its own; Lightning's sampler would not.
            trainer_kwargs.setdefault("use_distributed_sampler", False)
    loaders = backend.loaders(train_set, val_set, batch_size=batch_size, seed=seed, **(loader_kwargs or {}))
    module = CDSSLModule(
        model,
        sigma=sigma,
        head=head,
        head_hidden=head_hidden,
        lr=lr,
        decay_steps=max_epochs,
        seed=seed,
        sync_dist=world_size > 1,
    )

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(output_dir) if output_dir is not None else Path(tmp)
        monitor = "val_Total_Loss" if val_idx else "train_Total_Loss"
        checkpoint = ModelCheckpoint(dirpath=root / "checkpoints", monitor=monitor, save_last=True, mode="min")
        trainer_kwargs.setdefault("logger", _make_loggers(loggers, root))
        trainer_kwargs.setdefault("callbacks", []).append(checkpoint)
        trainer_kwargs.setdefault("inference_mode", False)  # validation computes a gradient norm
        if _on_cpu(trainer_kwargs):  # threaded scatter sums otherwise differ in the last bit from run to run
            trainer_kwargs.setdefault("deterministic", True)
        trainer_kwargs.setdefault("default_root_dir", root)
        deterministic, warn_only = (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
        )
        trainer = L.Trainer(max_epochs=max_epochs, gradient_clip_val=gradient_clip_val, **trainer_kwargs)
        earlier = _set_aside_metrics(root) if ckpt_path is not None else None
        try:
            trainer.fit(
                module,
                loaders[0],
                loaders[1] if val_idx else None,
                ckpt_path=None if ckpt_path is None else str(ckpt_path),
            )
        finally:  # also when the run stops with an error (e.g. TrainingDiverged): keep the metrics, unfreeze
            module.teardown("fit")
            # The Trainer's deterministic=True is process-wide; give the caller back their own setting.
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
            if earlier is not None:
                _merge_metrics(root, earlier)
        if checkpoint.best_model_path:
            best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=False)
            module.load_state_dict(best["state_dict"])
            logger.info("Restored the best epoch (%s = %.5g)", monitor, float(checkpoint.best_model_score))
        if output_dir is not None and trainer.is_global_zero:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
            save_pretrained(
                module.model,
                root / "model",
                head=module.head,
                config={
                    "sigma": sigma,
                    "cutoff": model.cutoff,
                    "head_hidden": list(head_hidden),
                    "seed": seed,
                    "n_structures": n_structures,
                    "skipped": skipped,
                    "n_train": len(train_idx),
                    "n_val": len(val_idx),
                    "epochs": trainer.current_epoch,
                    "wall_time_s": round(time.perf_counter() - start, 1),
                    "total_wall_time_s": round(module.elapsed_s, 1),
                    "best_epoch_metric": monitor,
                    "best_score": None if checkpoint.best_model_score is None else float(checkpoint.best_model_score),
                    "last_epoch_metrics": metrics,
                },
            )
    return module.model


def _on_cpu(trainer_kwargs: dict[str, Any]) -> bool:
    """Whether the Trainer will run on the CPU."""
    accelerator = trainer_kwargs.get("accelerator", "auto")
    return accelerator == "cpu" or (accelerator in (None, "auto") and not torch.cuda.is_available())


def _world_size(trainer_kwargs: dict[str, Any]) -> int:
    """Processes the Trainer will run: devices per node (an int, a list of ids, or "auto"/-1 for all) times nodes."""
    devices = trainer_kwargs.get("devices", 1)
    if isinstance(devices, (list, tuple)):
        per_node = len(devices)
    elif str(devices).strip() in ("auto", "-1"):
        per_node = 1 if _on_cpu(trainer_kwargs) else torch.cuda.device_count()
    elif isinstance(devices, str) and "," in devices:
        per_node = len([d for d in devices.split(",") if d.strip()])
    else:
        per_node = int(devices)
    return max(1, per_node) * max(1, int(trainer_kwargs.get("num_nodes", 1)))


def _cached_split(
    structures: Sequence[Any],
    model: nn.Module,
    cache_dir: str | Path,
    val_fraction: float,
    seed: int,
    skip_invalid: bool,
    world_size: int,
) -> tuple[Any, Any, list[int], list[int], list[tuple[str, str]]]:
    """Training and validation graphs from the graph cache: ``(train_set, val_set, train_idx, val_idx, skipped)``.

    All crystals are converted into one cache; the split is drawn over the valid ones, as without a cache. Each part
    streams (:func:`matgl_cdssl.graph_cache.split_cached`): on PyG a dataset of its own with shards of at most 1000
    crystals and at least one per rank, on DGL a view of the cache's shards.
    """
    from matgl_cdssl.graph_cache import cached_dataset, split_cached

    cached = cached_dataset(
        structures,
        element_types=model.element_types,
        cutoff=model.cutoff,
        cache_dir=cache_dir,
        skip_invalid=skip_invalid,
    )
    logger.info("Graph cache %s: %d crystals (%s)", cached.folder, len(cached.dataset), "hit" if cached.hit else "miss")
    train_idx, val_idx = _split(len(cached.dataset), val_fraction, seed)
    sets = []
    for name, idx in (("train", train_idx), ("val", val_idx)):
        if not idx:  # no validation: the loader needs a set of the same kind, which is never iterated
            sets.append(sets[0])
            continue
        shard_size = max(1, min(1000, math.ceil(len(idx) / world_size)))
        sets.append(split_cached(cached, {name: idx}, shard_size=shard_size)[name])
    return sets[0], sets[1], train_idx, val_idx, cached.skipped


def _check_loggers(loggers: Sequence[str] | str) -> tuple[str, ...]:
    """Validate the logger names of :func:`pretrain` before any work is done."""
    names = tuple(dict.fromkeys((loggers,) if isinstance(loggers, str) else loggers))
    unknown = [name for name in names if name not in LOGGERS]
    if unknown:
        raise ValueError(f"unknown logger(s) {unknown} in loggers={names!r}; choose from {', '.join(LOGGERS)}")
    if "tensorboard" in names and not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
        raise ImportError(
            f"loggers={names!r} needs TensorBoard, but neither tensorboard nor tensorboardX is installed: "
            "pip install tensorboard, or leave 'tensorboard' out of loggers ('csv' writes metrics.csv)"
        )
    return names


def _make_loggers(names: Sequence[str], root: Path) -> Logger | list[Logger] | bool:
    """The Lightning loggers named in ``names``, writing under ``root`` (False, i.e. none, when empty)."""
    made: list[Logger] = []
    for name in names:
        if name == "csv":
            made.append(CSVLogger(root, name="", version=""))
        else:
            from lightning.pytorch.loggers import TensorBoardLogger

            made.append(TensorBoardLogger(root, name="tensorboard", version="", default_hp_metric=False))
    return made[0] if len(made) == 1 else made or False


def _set_aside_metrics(root: Path) -> Path | None:
    """Move ``metrics.csv`` of the interrupted run aside: Lightning's CSV logger would overwrite it on resume."""
    metrics = root / "metrics.csv"
    if not metrics.is_file():
        return None
    aside = root / "metrics.before-resume.csv"
    metrics.replace(aside)
    return aside


def _merge_metrics(root: Path, earlier: Path) -> None:
    """Prepend the earlier epochs to the resumed run's ``metrics.csv`` (rows of epochs that were redone are dropped)."""
    import pandas as pd

    new = pd.read_csv(root / "metrics.csv") if (root / "metrics.csv").is_file() else pd.DataFrame()
    old = pd.read_csv(earlier)
    if "epoch" in new and len(new):
        old = old[old["epoch"] < new["epoch"].min()]
    pd.concat([old, new], ignore_index=True).to_csv(root / "metrics.csv", index=False)
    earlier.unlink()
