"""The engineering of training runs as Lightning callbacks, so that the LightningModules hold only the science.

:func:`~matgl_cdssl.apps.pretrain` adds three to its Trainer around :class:`~matgl_cdssl.method.CDSSLModule`:

- :class:`FreezeUnreached`: freezes, for ``fit``, the parameters the loss never reaches (found on a probe crystal),
  which DDP's gradient reduction would otherwise stop on;
- :class:`DivergenceGuard`: logs ``train_Grad_Norm`` and stops the run with
  :class:`~matgl_cdssl.method.TrainingDiverged` before a NaN or infinite gradient reaches the weights;
- :class:`PieceTimer`: limits each piece of a run resumed in pieces (``max_time``) and keeps the whole run's wall time
  across resumes.

:func:`~matgl_cdssl.apps.fit` uses :class:`ShorterRun`, the shorter run inside a longer one.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer
from torch import nn

from matgl_cdssl._backend import get_backend
from matgl_cdssl.method import CDSSLModule, TrainingDiverged, global_norm

__all__ = ["DivergenceGuard", "FreezeUnreached", "PieceTimer", "ShorterRun", "unreached_parameters"]

#: Checkpoint key of the whole run's wall time in seconds (:class:`PieceTimer`).
ELAPSED_KEY = "cdssl_elapsed_s"


def unreached_parameters(module: CDSSLModule) -> list[nn.Parameter]:
    """Parameters the loss never reaches: for the pretext alone, the readout and the last block's node/state update.

    With a property (``target_weight`` > 0) the readout is reached too. Found by differentiating the loss of a
    two-atom probe crystal, so it holds for any MEGNet configuration; the module's noise streams are left as they were.
    """
    from pymatgen.core import Lattice, Structure

    cutoff = float(module.model.cutoff)
    elements = module.model.element_types
    probe = Structure(Lattice.cubic(0.8 * cutoff), [elements[0], elements[-1]], [[0, 0, 0], [0.5, 0.5, 0.5]])
    g, lattice, state = get_backend().converter(elements, cutoff).get_graph(probe)
    device = module.device
    batch = (
        g.to(device),
        torch.as_tensor(lattice, dtype=torch.float32, device=device).reshape(1, 3, 3),
        torch.as_tensor(state, dtype=torch.float32, device=device).reshape(1, -1),
        torch.zeros(1, device=device),  # a label, for the property's loss
    )
    generator, module.noise.generator = module.noise.generator, torch.Generator().manual_seed(0)
    try:
        with torch.enable_grad():
            loss = module._loss(batch)[0]
    finally:
        module.noise.generator = generator
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [p for p, grad in zip(params, grads, strict=True) if grad is None]


class FreezeUnreached(L.Callback):
    """For ``fit``, freeze the parameters the loss never reaches (:func:`unreached_parameters`).

    They would get no gradient anyway; frozen, they are left out of DDP's gradient reduction, which otherwise stops
    with an error about unused parameters. They are unfrozen when the fit ends, or stops with an error, so the model
    finetunes normally afterwards.
    """

    def __init__(self) -> None:
        self.frozen: list[nn.Parameter] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Freeze (for ``fit`` only)."""
        if stage == "fit":
            self.frozen = unreached_parameters(pl_module)
            for parameter in self.frozen:
                parameter.requires_grad_(False)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Unfreeze what :meth:`setup` froze."""
        if stage == "fit":
            self._unfreeze()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """Unfreeze when the fit stops with an error (Lightning calls no ``teardown`` then)."""
        self._unfreeze()

    def _unfreeze(self) -> None:
        for parameter in self.frozen:
            parameter.requires_grad_(True)
        self.frozen = []


def _last_saved(trainer: L.Trainer) -> str:
    """The checkpoint to resume from: ``last.ckpt`` where one is kept, else the newest file any callback saved."""
    saved = [Path(path) for cb in trainer.checkpoint_callbacks
             for path in (getattr(cb, "last_model_path", ""), getattr(cb, "best_model_path", "")) if path]  # fmt: skip
    saved = [path for path in saved if path.is_file()]
    return str(max(saved, key=lambda p: (p.name == "last.ckpt", p.stat().st_mtime))) if saved else ""


class DivergenceGuard(L.Callback):
    """Log the global gradient norm (``train_Grad_Norm``, before any clipping); stop the run if it is NaN or infinite.

    The check runs where the optimiser is about to step: the gradients are already synchronised, so every DDP rank
    stops at the same step, before the bad update reaches the weights.
    """

    def __init__(self) -> None:
        self.loss: float | None = None

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        """Keep the training loss, for the message (Lightning divides it by ``accumulate_grad_batches`` here)."""
        self.loss = float(loss.detach()) * trainer.accumulate_grad_batches

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        """Check and log the gradient norm.

        Raises:
            TrainingDiverged: a non-finite loss or gradient, naming the epoch, step and last good checkpoint.
        """
        norm = global_norm([p.grad for p in pl_module.parameters()])
        if not torch.isfinite(norm):
            checkpoint = _last_saved(trainer) or "none saved yet"
            raise TrainingDiverged(
                f"non-finite gradient norm ({float(norm)}; training loss {self.loss if self.loss is not None else '?'})"
                f" at epoch {trainer.current_epoch}, global step {trainer.global_step}. The run stopped before this "
                f"update, so no weight is NaN; the last good checkpoint is {checkpoint} (resume from it). Try a lower "
                "lr, gradient_clip_val, or a smaller sigma, and check the crystals of this batch."
            )
        pl_module.log(
            "train_Grad_Norm",
            norm,
            on_step=False,
            on_epoch=True,
            prog_bar=False,
            batch_size=1,
            sync_dist=trainer.world_size > 1,
        )


class PieceTimer(Timer):
    """The wall clock of a run resumed in pieces: Lightning's ``max_time`` for each piece, and the whole run's time.

    Lightning's own timer restores the time spent before the checkpoint and counts it against the limit, so a run
    resumed with ``max_time="00:00:20:00"`` after 80 minutes stops at once. This one starts each piece's limit at zero
    (no limit when ``duration`` is None); what it saves in checkpoints is still the whole run's time: Lightning's
    ``Timer`` state (earlier pieces plus this one, per stage) and, under ``cdssl_elapsed_s``, the wall time spent in
    ``fit`` (:attr:`elapsed_s`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.earlier: dict[str, float] = {}
        self.elapsed_before = 0.0
        self.fit_started: float | None = None

    @property
    def state_key(self) -> str:
        return "Timer"  # reads the state that Lightning's own timer saved, and the other way round

    @property
    def elapsed_s(self) -> float:
        """Wall time spent in ``fit`` so far, including the pieces before a resume."""
        started = self.fit_started
        return self.elapsed_before + (time.perf_counter() - started if started is not None else 0.0)

    def on_fit_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        """Start the wall clock (and check the limit, as Lightning's timer does)."""
        self.fit_started = time.perf_counter()
        super().on_fit_start(trainer, *args, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        elapsed = state["time_elapsed"]
        return {"time_elapsed": {stage: t + self.earlier.get(stage, 0.0) for stage, t in elapsed.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.earlier = dict(state_dict.get("time_elapsed", {}))  # kept for the next checkpoint, not for the limit

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Store the whole run's wall time at the checkpoint's top level (where CDSSLModule used to)."""
        checkpoint[ELAPSED_KEY] = self.elapsed_s

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Restore the wall time of the pieces before the resume."""
        self.elapsed_before = float(checkpoint.get(ELAPSED_KEY, 0.0))


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
