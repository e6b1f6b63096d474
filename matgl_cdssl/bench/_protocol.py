"""The protocol: the arms, the budget and the one rule by which every arm chooses its learning rate.

Each configuration (task, training size, seed) trains every arm on the same split, with the same selection rule for
its learning rate and the same budget (:class:`BenchmarkSettings`):

- ``CDSSL``: the pretrained model (``CDSSL-MEGNet-MP`` or any folder), its readout freshly initialised from the seed;
- ``scratch``: the same architecture, initialised from the seed;
- ``supervised``: transfer from matgl's supervised formation-energy MEGNet (its backbone, a fresh readout).

Learning-rate selection on validation data: each arm picks its own learning rate from a small grid
(:func:`candidates`) and, when it starts from pretrained weights, whether its backbone learns at a lower rate. The
rule is the same for every arm: train each candidate on the same tuning split(s), and keep the one whose best
validation MAE, combined over the splits by a geometric mean (so that no split's unit or scale dominates), is lowest
(:func:`choose`). Test data are never used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from matgl_cdssl.hub import megnet_of

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from torch import nn

__all__ = [
    "ARMS",
    "QUICK",
    "SUPERVISED",
    "SUPERVISED_LEAKS",
    "BenchmarkSettings",
    "Candidate",
    "arm_start",
    "arm_templates",
    "candidates",
    "choose",
    "tune",
]


ARMS = ("CDSSL", "scratch", "supervised")
"""The default arms: the pretrained model (``model``), the same architecture from scratch, and transfer from matgl's
supervised formation-energy MEGNet (:data:`SUPERVISED`)."""

#: matgl's supervised formation-energy MEGNet, shipped for the ``"supervised"`` arm (see benchmark_data/ATTRIBUTION.md).
SUPERVISED = "MEGNet-MP-2018.6.1-Eform"
#: Tasks whose labels the supervised arm's pretraining saw (Materials Project formation energies): leakage.
SUPERVISED_LEAKS = ("mp_formation_energy",)


@dataclass(frozen=True)
class BenchmarkSettings:
    """The selection rule and the budget, identical for every arm.

    Each arm picks its own learning rate per task from ``lr_grid`` (and, when it starts from pretrained weights, the
    backbone's rate as a fraction of it from ``backbone_lr_scales``): every candidate trains at the ``tune_sizes``
    (those among the benchmark's sizes; the smallest size if none is) with the first seed, and the lowest geometric
    mean of the best validation MAEs wins (:func:`choose`). Every run then trains until its
    validation MAE has not improved for ``patience`` epochs, under a cap of ``max_epochs``, its rates halved
    whenever the validation MAE has not improved for ``lr_patience`` epochs (None: matgl's cosine decay over the cap,
    the 0.2 protocol), and its best validation epoch is tested. The validation set has ``clip(n_train // 4, min_val,
    max_val)`` crystals. :meth:`doubled` is the same rule with twice the budget (the convergence check).

    The defaults are the 0.4 protocol (docs/benchmark.md, "Protocol"); the 0.3 protocol is ``max_epochs=1000,
    patience=100, lr_patience=20, min_val=50`` with ``tune_sizes=(100,)``.
    """

    lr_grid: tuple[float, ...] = (1e-3, 3e-3)
    backbone_lr_scales: tuple[float, ...] = (1.0, 0.1)
    tune_sizes: tuple[int, ...] = (100, 250)
    freeze_backbone: bool = False
    batch_size: int = 32
    loss: str = "l1_loss"
    max_epochs: int = 2000
    patience: int = 200
    lr_patience: int | None = 40
    min_val: int = 150
    max_val: int = 500

    def n_val(self, n_train: int) -> int:
        """Validation crystals for a training set of ``n_train``."""
        return int(np.clip(n_train // 4, self.min_val, self.max_val))

    def doubled(self) -> BenchmarkSettings:
        """Twice the budget: the epoch cap, the patience and the schedule's patience.

        The rates of the run at twice the budget halve half as often and it waits twice as long for a better epoch,
        so it trains about twice as many epochs at every rate. (Doubling the patience alone would add epochs at rates
        already annealed to a few percent, where little can change.)
        """
        lr_patience = None if self.lr_patience is None else 2 * self.lr_patience
        return replace(self, max_epochs=2 * self.max_epochs, patience=2 * self.patience, lr_patience=lr_patience)

    def extended(self) -> BenchmarkSettings:
        """Twice the epoch cap and the patience, the same schedule (the extension check).

        With the plateau schedule (``lr_patience``) the longer run repeats the shorter one epoch for epoch and goes
        on after it would have stopped, so its test MAE changes only if a later epoch validates better: whether the
        run stopped too early, with nothing else changed. (Under matgl's cosine decay the cap sets the schedule, and
        this is :meth:`doubled`.)
        """
        return replace(self, max_epochs=2 * self.max_epochs, patience=2 * self.patience)


QUICK = {
    "tasks": ("mp_formation_energy", "perov_heat_ref"),
    "sizes": (50, 250),
    "seeds": (0,),
    "settings": BenchmarkSettings(
        lr_grid=(3e-3,), backbone_lr_scales=(1.0,), max_epochs=40, patience=10, lr_patience=3, min_val=50, max_val=100
    ),
    "n_test": 200,
}
"""``quick=True``: two tasks, two sizes, one seed, one learning rate and a small budget (about half a minute on 2 CPU
cores)."""


def arm_start(arm: str | Path | nn.Module, model: str | Path | nn.Module = "CDSSL-MEGNet-MP") -> tuple[nn.Module, str]:
    """An arm's starting point and what a run takes from it (:func:`~matgl_cdssl.hub.new_like`'s ``weights``).

    ``"CDSSL"`` is ``model``; ``"scratch"`` ``model``'s architecture at random initialisation (``"none"``);
    ``"supervised"`` matgl's supervised formation-energy MEGNet (:data:`SUPERVISED`, shipped); any other name, folder
    or MEGNet is a pretrained arm. A pretrained arm keeps the backbone and gets a fresh readout from the run's seed
    (``"backbone"``).
    """
    if isinstance(arm, str) and arm == "CDSSL":
        return megnet_of(model), "backbone"
    if isinstance(arm, str) and arm == "scratch":
        return megnet_of(model), "none"
    if isinstance(arm, str) and arm == "supervised":
        return megnet_of(Path(str(files("matgl_cdssl").joinpath(f"benchmark_data/{SUPERVISED}")))), "backbone"
    return megnet_of(arm), "backbone"


def arm_templates(arms: Sequence[str], model: str | Path | nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Each arm's :func:`arm_start`, by its name in the table; every arm has the CDSSL model's elements and cutoff.

    Raises:
        ValueError: ``arms`` lacks ``"scratch"`` (every arm is compared with it), or an arm has other element types
            or another cutoff than ``model``.
    """
    cdssl = megnet_of(model)
    out = {str(arm): arm_start(arm, cdssl) for arm in dict.fromkeys(arms)}
    if "scratch" not in out:
        raise ValueError(f"arms={tuple(arms)!r} needs 'scratch': every arm is compared with it")
    for arm, (net, _) in out.items():
        if tuple(net.element_types) != tuple(cdssl.element_types) or float(net.cutoff) != float(cdssl.cutoff):
            raise ValueError(f"arm {arm!r} has other element types or another cutoff than the CDSSL model")
    return out


@dataclass(frozen=True, order=True)
class Candidate:
    """One point of the grid: the readout's learning rate and the backbone's (None: the same)."""

    lr: float
    backbone_lr: float | None = None

    def __str__(self) -> str:
        return f"lr={self.lr:g}" + ("" if self.backbone_lr is None else f", backbone_lr={self.backbone_lr:g}")


def candidates(lr_grid: Sequence[float], backbone_lr_scales: Sequence[float], *, pretrained: bool) -> list[Candidate]:
    """The grid of one arm: every rate of ``lr_grid`` and, for a pretrained arm, every backbone scale of it.

    Example:
        >>> [str(c) for c in candidates([1e-3, 3e-3], [1.0, 0.1], pretrained=True)][:2]
        ['lr=0.001', 'lr=0.001, backbone_lr=0.0001']
        >>> len(candidates([1e-3, 3e-3], [1.0, 0.1], pretrained=False))  # from scratch there is no backbone to spare
        2
    """
    if not lr_grid or any(not (lr > 0 and math.isfinite(lr)) for lr in lr_grid):
        raise ValueError(f"lr_grid must hold positive learning rates; got {tuple(lr_grid)!r}")
    if not backbone_lr_scales or any(not (0 < s <= 1) for s in backbone_lr_scales):
        raise ValueError(f"backbone_lr_scales must lie in (0, 1] (1: the backbone learns at lr); got "
                         f"{tuple(backbone_lr_scales)!r}")  # fmt: skip
    scales = backbone_lr_scales if pretrained else (1.0,)
    grid = [Candidate(float(lr), None if s == 1 else float(lr) * float(s)) for lr in lr_grid for s in scales]
    return list(dict.fromkeys(grid))


def choose(scores: Mapping[Candidate, Sequence[float]]) -> Candidate:
    """The candidate with the lowest geometric mean of its validation MAEs (ties: the first in the grid's order).

    Example:
        >>> choose({Candidate(1e-3): [0.2, 4.0], Candidate(3e-3): [0.1, 6.0]})  # 0.894 vs 0.775
        Candidate(lr=0.003, backbone_lr=None)
    """
    if not scores:
        raise ValueError("no candidate to choose from")
    lengths = {len(v) for v in scores.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError("every candidate needs one validation MAE per tuning split, the same splits for all")

    def score(c: Candidate) -> float:
        values = scores[c]
        return math.inf if any(not math.isfinite(v) or v <= 0 for v in values) else math.fsum(map(math.log, values))

    return min(scores, key=score)


def tune(train: Callable[[Candidate], Sequence[float]], grid: Sequence[Candidate]) -> tuple[Candidate, dict]:
    """Run ``train`` (a candidate's validation MAEs over the tuning splits) on each candidate; the choice and scores."""
    scores = {c: list(train(c)) for c in grid}
    return choose(scores), scores
