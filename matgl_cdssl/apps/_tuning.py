"""Learning-rate selection on validation data: one rule for every arm of a comparison.

Each arm (a pretrained MEGNet or the same architecture from scratch) picks its own learning rate from a small grid and,
when it starts from pretrained weights, whether its backbone learns at a lower rate. The rule is the same for every
arm: train each candidate on the same tuning split(s), and keep the one whose best validation MAE, combined over the
splits by a geometric mean (so that no split's unit or scale dominates), is lowest. Test data are never used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

__all__ = ["Candidate", "candidates", "choose", "tune"]


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
