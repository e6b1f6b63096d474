"""The protocol: the arms, the budget and the one rule by which every arm chooses its learning rate.

Each configuration (task, training size, seed) trains every arm on the same split, with the same selection rule for
its learning rate and the same budget (:class:`BenchmarkSettings`):

- ``CDSSL``: the pretrained model (``CDSSL-MEGNet-MP`` or any folder), its readout freshly initialised from the seed;
- ``scratch``: the same architecture, initialised from the seed;
- ``supervised``: transfer from matgl's supervised formation-energy MEGNet (its backbone, a fresh readout).

Learning-rate selection on validation data: each arm picks its own learning rate from a grid of the same number of
candidates (:meth:`BenchmarkSettings.grid`) and, when it starts from pretrained weights, whether its backbone learns
at a lower rate. The rule is the same for every arm: train each candidate on the same tuning split(s), and keep the
one whose best validation MAE, combined over the splits by a geometric mean (so that no split's unit or scale
dominates), is lowest (:func:`choose`); where the choice sits at the edge of the grid, one step beyond that edge is
tried too (:func:`beyond_edges`). Test data are never used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from matgl_cdssl.apps import RELIABLE_VAL, TrainOptions
from matgl_cdssl.hub import labels_seen, megnet_of

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from torch import nn

__all__ = [
    "ARMS",
    "PROTOCOLS",
    "QUICK",
    "SUPERVISED",
    "BenchmarkSettings",
    "Candidate",
    "arm_labels_seen",
    "arm_start",
    "arm_templates",
    "beyond_edges",
    "candidates",
    "choose",
    "spread",
    "tune",
]


ARMS = ("CDSSL", "scratch", "supervised")
"""The default arms: the pretrained model (``model``), the same architecture from scratch, and transfer from matgl's
supervised formation-energy MEGNet (:data:`SUPERVISED`)."""

#: matgl's supervised formation-energy MEGNet, shipped for the ``"supervised"`` arm (see benchmark_data/ATTRIBUTION.md).
SUPERVISED = "MEGNet-MP-2018.6.1-Eform"

#: The training options' defaults (:class:`~matgl_cdssl.apps.TrainOptions`): the budget's defaults are read from it.
_TRAIN = TrainOptions()


@dataclass(frozen=True)
class BenchmarkSettings:
    """The selection rule, the seeds and the budget, identical for every arm.

    Each arm picks its own learning rate per task from its grid (:meth:`grid`): a pretrained arm every rate of
    ``lr_grid`` times every backbone scale of ``backbone_lr_scales``; scratch, which has no backbone to spare, as
    many rates spread over the range of ``lr_grid`` (``equal_grids``; False: ``lr_grid`` itself, the 0.4 protocol).
    Every candidate trains at the ``tune_sizes`` (those among the benchmark's sizes; the smallest size if none is)
    with the first seed, and the lowest geometric mean of the best validation MAEs wins (:func:`choose`); with
    ``extend_edges``, a choice at the edge of its grid is tried against one step beyond that edge, by the same rule
    (:func:`beyond_edges`). Every run then trains until its validation MAE has not improved for ``patience`` epochs,
    under a cap of ``max_epochs``, its rates halved whenever the validation MAE has not improved for ``lr_patience``
    epochs (None: matgl's cosine decay over the cap, the 0.2 protocol), and its best validation epoch is tested. The
    validation set has ``clip(n_train // 4, min_val, max_val)`` crystals. Sizes up to ``small_size`` run the seeds
    ``seeds_small``, larger ones ``seeds`` (the first seed of ``seeds`` chooses the rates); a configuration (task,
    size) whose paired interval between any two arms is still wider than ±:data:`~matgl_cdssl.bench.WIDE` after its
    seeds ran gets ``more_seeds`` times as many (:meth:`seeds_wide`; 1: never), every arm alike: the rule reads the
    intervals' widths only, never which arm leads. :meth:`doubled` is the
    same rule with twice the budget (the convergence check), :meth:`extended` twice the patience and the cap alone.

    The budget's defaults (loss, batch, patience, cap, schedule, ``max_val``) are those of
    :class:`~matgl_cdssl.apps.TrainOptions`, ``min_val`` its :data:`~matgl_cdssl.apps.RELIABLE_VAL`. The defaults are
    the 0.5 protocol (:data:`PROTOCOLS`, docs/benchmark.md, "Protocol"); ``PROTOCOLS["0.4"]`` is 0.4; the 0.3 protocol
    is 0.4 with ``max_epochs=1000, patience=100, lr_patience=20, min_val=50`` and ``tune_sizes=(100,)``.
    Only the budget enters a run's fingerprint (:func:`~matgl_cdssl.bench.run_fingerprint`), never the grid, the
    seeds or ``protocol``.
    """

    protocol: str = "0.5"
    lr_grid: tuple[float, ...] = (1e-3, 3e-3)
    backbone_lr_scales: tuple[float, ...] = (1.0, 0.1)
    equal_grids: bool = True
    extend_edges: bool = True
    tune_sizes: tuple[int, ...] = (100, 250)
    seeds: tuple[int, ...] = (0, 1, 2)
    seeds_small: tuple[int, ...] = (0, 1, 2, 3, 4)
    small_size: int = 250
    more_seeds: int = 2
    freeze_backbone: bool = _TRAIN.freeze_backbone
    batch_size: int = _TRAIN.batch_size
    loss: str = _TRAIN.loss
    max_epochs: int = _TRAIN.max_epochs
    patience: int | None = _TRAIN.patience
    lr_patience: int | None = _TRAIN.lr_patience
    min_val: int = RELIABLE_VAL
    max_val: int = _TRAIN.max_val

    def train_options(self, candidate: Candidate, *, freeze_backbone: bool | None = None) -> TrainOptions:
        """The options a run of this budget trains with, at a candidate's rates.

        Example:
            >>> BenchmarkSettings().train_options(Candidate(3e-3)).replace(max_epochs=5).lr
            0.003
        """
        return TrainOptions(
            loss=self.loss,
            max_epochs=self.max_epochs,
            patience=self.patience,
            lr_patience=self.lr_patience,
            batch_size=self.batch_size,
            lr=candidate.lr,
            backbone_lr=candidate.backbone_lr,
            freeze_backbone=self.freeze_backbone if freeze_backbone is None else freeze_backbone,
        )

    def n_val(self, n_train: int) -> int:
        """Validation crystals for a training set of ``n_train``."""
        return int(np.clip(n_train // 4, self.min_val, self.max_val))

    def seeds_at(self, n_train: int) -> tuple[int, ...]:
        """The seeds of a training size: ``seeds_small`` up to ``small_size`` labels, else ``seeds``."""
        return self.seeds_small if n_train <= self.small_size else self.seeds

    def seeds_wide(self, n_train: int) -> tuple[int, ...]:
        """The seeds of a training size whose paired interval is still wide: ``more_seeds`` times as many.

        The seeds of :meth:`seeds_at`, then as many new ones as it takes, counting on from the largest.

        Example:
            >>> BenchmarkSettings().seeds_wide(100), BenchmarkSettings().seeds_wide(500)
            ((0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (0, 1, 2, 3, 4, 5))
        """
        base = self.seeds_at(n_train)
        start = max(base) + 1
        return (*base, *range(start, start + (self.more_seeds - 1) * len(base)))

    @property
    def all_seeds(self) -> tuple[int, ...]:
        """Every seed some size may run (:meth:`seeds_wide` too), ``seeds`` first (its first seed chooses the rates)."""
        wide = (*self.seeds_wide(self.small_size), *self.seeds_wide(self.small_size + 1))
        return tuple(dict.fromkeys((*self.seeds, *self.seeds_small, *wide)))

    def grid(self, *, pretrained: bool) -> list[Candidate]:
        """An arm's candidates: ``lr_grid`` x ``backbone_lr_scales`` when ``pretrained``; else the scratch rates.

        Example:
            >>> [str(c) for c in BenchmarkSettings().grid(pretrained=False)]  # as many as a pretrained arm's 4
            ['lr=0.001', 'lr=0.0014', 'lr=0.0021', 'lr=0.003']
        """
        full = candidates(self.lr_grid, self.backbone_lr_scales, pretrained=True)
        if pretrained:
            return full
        rates = spread(self.lr_grid, len(full)) if self.equal_grids else self.lr_grid
        return candidates(rates, (1.0,), pretrained=False)

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
        on after it would have stopped, so its validation MAE changes only if a later epoch validates better:
        whether the run stopped too early, with nothing else changed.

        Raises:
            ValueError: under matgl's cosine decay (``lr_patience=None``), where the cap sets the schedule, so the
                longer run follows another schedule from its first epoch and holds no shorter run to compare.
        """
        if self.lr_patience is None:
            raise ValueError("the extension check needs the plateau schedule (lr_patience, --lr-patience N): under "
                             "matgl's cosine decay (lr_patience=None) the epoch cap sets the schedule, so the longer "
                             "run does not repeat the shorter one; use the convergence check instead")  # fmt: skip
        return replace(self, max_epochs=2 * self.max_epochs, patience=2 * self.patience)


#: The named protocols: 0.5 (the default: equal grids, edges extended, 5 seeds up to 250 labels), and 0.4 (scratch
#: chooses from ``lr_grid`` alone, no edge extension, 3 seeds everywhere), which rebuilds the 0.4 report from its cache.
PROTOCOLS = {
    "0.5": BenchmarkSettings(),
    "0.4": BenchmarkSettings(
        protocol="0.4", equal_grids=False, extend_edges=False, seeds_small=(0, 1, 2), more_seeds=1
    ),
}
#: The day each protocol was frozen (0.5: before any test number under it was looked at).
PROTOCOL_DATES = {"0.4": "2026-12-02", "0.5": "2026-12-06"}


QUICK = {
    "tasks": ("mp_formation_energy", "perov_heat_ref"),
    "sizes": (50, 250),
    "seeds": (0,),
    "settings": BenchmarkSettings(
        lr_grid=(3e-3,),
        backbone_lr_scales=(1.0,),
        seeds=(0,),
        seeds_small=(0,),
        more_seeds=1,
        max_epochs=40,
        patience=10,
        lr_patience=3,
        min_val=50,
        max_val=100,
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


def arm_labels_seen(arm: str | Path | nn.Module, model: str | Path | nn.Module) -> tuple[str, ...] | None:
    """The labels an arm's weights saw (:func:`~matgl_cdssl.hub.labels_seen`); None: not recorded.

    Scratch uses no weights (none); ``"CDSSL"`` is ``model``'s, ``"supervised"`` :data:`SUPERVISED`'s; a MEGNet
    given as an object does not record them.
    """
    source = {"CDSSL": model, "supervised": SUPERVISED}.get(arm, arm) if isinstance(arm, str) else arm
    if isinstance(arm, str) and arm == "scratch":
        return ()
    return labels_seen(source) if isinstance(source, (str, Path)) else None


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


def spread(lr_grid: Sequence[float], k: int) -> tuple[float, ...]:
    """``k`` rates spread geometrically over the range of ``lr_grid``, rounded to two significant digits inside it.

    Example:
        >>> spread([1e-3, 3e-3], 4)
        (0.001, 0.0014, 0.0021, 0.003)
        >>> spread([3e-3], 4)  # a single rate has no range to spread over
        (0.003,)
    """
    lo, hi = min(lr_grid), max(lr_grid)
    if k < 2 or lo == hi:
        return tuple(dict.fromkeys(float(r) for r in sorted(lr_grid)))
    inner = (float(f"{lo * (hi / lo) ** (i / (k - 1)):.2g}") for i in range(1, k - 1))
    return (float(lo), *inner, float(hi))


def _scale(c: Candidate) -> float:
    return 1.0 if c.backbone_lr is None else float(f"{c.backbone_lr / c.lr:.6g}")


def _beyond(values: Sequence[float], value: float, upper: float = math.inf) -> float | None:
    """One step (the ratio of the two outermost values) beyond the edge of ``values`` that ``value`` sits on.

    Rounded to two significant digits, as the grids are.
    """
    values = sorted(set(values))
    if len(values) < 2 or value not in (values[0], values[-1]):
        return None
    step = values[1] / values[0] if value == values[0] else values[-1] / values[-2]
    new = float(f"{(value / step if value == values[0] else value * step):.2g}")
    return new if new <= upper and new not in values else None


def beyond_edges(grid: Sequence[Candidate], chosen: Candidate) -> list[Candidate]:
    """The candidates one step beyond each edge of ``grid`` that ``chosen`` sits on, its other rate kept.

    A step is the ratio of the grid's two outermost values on that side: in the rate, and (for a pretrained arm's
    grid) in the backbone scale, which stays at most 1. A grid of one rate has no edge to go beyond.

    Example:
        >>> grid = candidates([1e-3, 3e-3], [1.0, 0.1], pretrained=True)
        >>> [str(c) for c in beyond_edges(grid, Candidate(3e-3, 3e-4))]
        ['lr=0.009, backbone_lr=0.0009', 'lr=0.003, backbone_lr=3e-05']
    """
    lr = _beyond([c.lr for c in grid], chosen.lr)
    scale = _beyond([_scale(c) for c in grid], _scale(chosen), upper=1.0)
    out = []
    if lr is not None:
        out.append(Candidate(lr, None if chosen.backbone_lr is None else float(f"{lr * _scale(chosen):.2g}")))
    if scale is not None:
        out.append(Candidate(chosen.lr, None if scale == 1 else float(f"{chosen.lr * scale:.2g}")))
    return [c for c in out if c not in grid]


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
