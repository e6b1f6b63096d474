"""``TrainOptions``: the training options of :func:`~matgl_cdssl.finetune` and :func:`~matgl_cdssl.apps.fit`, once."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = ["LOSSES", "RELIABLE_VAL", "TrainOptions"]

#: matgl's loss names that :class:`TrainOptions` accepts.
LOSSES = ("l1_loss", "mse_loss", "huber_loss", "smooth_l1_loss")

#: The smallest validation set of the benchmark's tested rule (``clip(n_train // 4, 150, 500)``); :func:`finetune`
#: warns below it: the best epoch, early stopping and the plateau schedule then follow a noisy validation MAE.
RELIABLE_VAL = 150


@dataclass(frozen=True)
class TrainOptions:
    """How a property is trained: the budget, the schedule, the rates and how validation is held out.

    The defaults are the benchmark's tested protocol (docs/benchmark.md, "Protocol", 0.4): Adam, batch 32, the rates
    halved after ``lr_patience`` = 40 epochs without a better validation MAE, early stopping after ``patience`` = 200
    such epochs under a cap of ``max_epochs`` = 2000, the best validation epoch restored; a validation set of
    ``val_fraction`` = 0.2 of the labelled crystals (the benchmark's ``n_train // 4``), at most ``max_val`` = 500.

    Args:
        loss: matgl's loss name (:data:`LOSSES`).
        max_epochs: Epoch cap.
        patience: Early-stopping patience in epochs (None or 0: no early stopping).
        lr_patience: Halve the learning rates after this many epochs without a better validation MAE (torch's
            ``ReduceLROnPlateau``, a schedule independent of the cap); None: matgl's cosine decay over ``max_epochs``.
        batch_size: Crystals per batch.
        lr: Learning rate of the readout, and of the backbone unless ``backbone_lr`` is given.
        backbone_lr: Learning rate of the backbone (embedding, encoders and message-passing blocks).
        freeze_backbone: Train only the readout (Set2Set and output MLP).
        denoising_weight: Weight of the CDSSL pretext loss added to the property loss (0: plain finetuning).
        val_fraction: Share of the labelled crystals held out for validation when no validation set is given.
        min_val: Hold out at least this many crystals then.
        max_val: And at most this many (the benchmark's cap), unless ``min_val`` asks for more.

    Example:
        >>> TrainOptions(max_epochs=100).replace(lr=3e-3).lr
        0.003
    """

    loss: str = "l1_loss"
    max_epochs: int = 2000
    patience: int | None = 200
    lr_patience: int | None = 40
    batch_size: int = 32
    lr: float = 1e-3
    backbone_lr: float | None = None
    freeze_backbone: bool = False
    denoising_weight: float = 0.0
    val_fraction: float = 0.2
    min_val: int = 0
    max_val: int = 500

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {self.loss!r}")
        for name in ("max_epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive whole number; got {getattr(self, name)!r}")
        if self.denoising_weight < 0:
            raise ValueError(f"denoising_weight must be non-negative; got {self.denoising_weight!r}")

    def replace(self, **changes: Any) -> TrainOptions:
        """A copy with ``changes`` (checked as a new record)."""
        return replace(self, **changes)

    def val_share(self, n: int) -> float:
        """The share of ``n`` labelled crystals to hold out: ``val_fraction``, or less where ``max_val`` caps it."""
        return min(float(self.val_fraction), int(self.max_val) / max(int(n), 1))

    def fit_kwargs(self) -> dict[str, Any]:
        """The options :func:`~matgl_cdssl.apps.fit` uses (the validation split is the caller's)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _SPLIT}

    @classmethod
    def take(cls, options: TrainOptions | None, kwargs: dict[str, Any]) -> tuple[TrainOptions, dict[str, Any]]:
        """``options`` (default: the defaults) with the keyword arguments that name its fields, and the others.

        This is how :func:`~matgl_cdssl.finetune` and :func:`~matgl_cdssl.apps.fit` read ``max_epochs=...`` and
        friends next to ``options=``: a keyword wins over the record; what is left goes to ``lightning.Trainer``.
        """
        names = {f.name for f in fields(cls)}
        chosen = {k: v for k, v in kwargs.items() if k in names}
        rest = {k: v for k, v in kwargs.items() if k not in names}
        return replace(options if options is not None else cls(), **chosen), rest


_SPLIT = ("val_fraction", "min_val", "max_val")
