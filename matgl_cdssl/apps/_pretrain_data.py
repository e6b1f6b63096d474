"""Step 2 of :func:`~matgl_cdssl.pretrain`: read, check and convert the crystals, then split them."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch.utils.data import Subset

from matgl_cdssl.data import build_dataset, cached_dataset, split_cached, train_val_split

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import nn

__all__ = ["Data", "datasets", "kept_targets"]

logger = logging.getLogger(__name__)


@dataclass
class Data:
    """What step 2 gives: the training and validation sets, their indices, the crystals left out and the property.

    ``targets`` holds the property's label of every crystal kept, in dataset order (NaN: none), or is None without
    a property; the labels of crystals left out under ``skip_invalid`` are not in it.
    """

    train: Any
    val: Any
    train_idx: list[int]
    val_idx: list[int]
    skipped: list[tuple[str, str]]
    targets: list[float] | None = None


def kept_targets(dataset: Any) -> list[float]:
    """The property's label of every crystal in ``dataset`` (the kept ones), in dataset order: one pass over its items.

    With a graph cache this reads every shard once (``speed/label_pass.py`` measures it against an epoch).
    """
    return [float(item[3]["target"]) for item in dataset]


def datasets(
    structures: Sequence[Any],
    model: nn.Module,
    cache_dir: str | Path | None,
    val_fraction: float,
    seed: int,
    skip_invalid: bool,
    world_size: int,
    labels: dict[str, list[float]] | None = None,
) -> Data:
    """Step 2: read, check and convert the crystals (in memory, or through the graph cache), then split them.

    The split (:func:`~matgl_cdssl.data.train_val_split`, sorted) is drawn over the valid crystals, with or without a
    cache. With a cache, each part streams (:func:`~matgl_cdssl.data.split_cached`): on PyG a dataset of its own with
    shards of at most 1000 crystals and at least one per rank, on DGL a view of the cache's shards. ``labels`` (one
    value per input crystal) travel with the graphs, first, so that batches carry them.
    """
    if cache_dir is None:
        dataset, _names, skipped = build_dataset(
            structures, element_types=model.element_types, cutoff=model.cutoff, skip_invalid=skip_invalid, labels=labels
        )
    else:
        cached = cached_dataset(
            structures,
            element_types=model.element_types,
            cutoff=model.cutoff,
            cache_dir=cache_dir,
            skip_invalid=skip_invalid,
            labels=labels,
        )
        logger.info(
            "Graph cache %s: %d crystals (%s)", cached.folder, len(cached.dataset), "hit" if cached.hit else "miss"
        )
        dataset, skipped = cached.dataset, cached.skipped
    targets = None if labels is None else kept_targets(dataset)
    train_idx, val_idx = (sorted(part) for part in train_val_split(len(dataset), val_fraction, seed))
    if cache_dir is None:
        train, val = Subset(dataset, train_idx), Subset(dataset, val_idx or train_idx[:1])
        return Data(train, val, train_idx, val_idx, skipped, targets)
    parts = []
    for name, idx in (("train", train_idx), ("val", val_idx)):
        if not idx:  # no validation: the loader needs a set of the same kind, which is never iterated
            parts.append(parts[0])
            continue
        shard_size = max(1, min(1000, math.ceil(len(idx) / world_size)))
        parts.append(split_cached(cached, {name: idx}, shard_size=shard_size)[name])
    return Data(parts[0], parts[1], train_idx, val_idx, skipped, targets)
