"""Graphs stored as shards that stream from disk, for matgl 2.2.x (DGL), whose datasets live in memory.

matgl >= 3 streams graphs with its own ``write_mgl_shards``, ``MGLDiskDataset`` and ``ShardBatchSampler``. matgl 2.2.x
has none of these, so this module gives the DGL backend the same three pieces, built on matgl 2.2.x's own dataset
cache: each shard is a folder written by ``MGLDataset(save_cache=True)`` (``dgl.save_graphs`` plus matgl's lattice,
state and label files) and read back by ``MGLDataset``, one shard in memory at a time.

* :func:`write_shards` converts records shard by shard, so no more than one shard of graphs is ever held.
* :class:`ShardedGraphs` is the dataset: items ``(graph, lattice, state_attr, labels)`` as with ``MGLDataset``.
* :class:`ShardBatchSampler` batches a :class:`ShardedGraphs`, or a ``torch.utils.data.Subset`` of one (a
  training/validation split needs no copy), shard by shard: a batch never spans two shards, shards and the crystals
  in them are shuffled from ``seed`` and the epoch, and under DDP each rank reads shards of its own. Its semantics
  follow matgl >= 3's ``ShardBatchSampler``.

A private detail of the DGL backend: only :mod:`matgl_cdssl._backend._dgl` uses this module.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset, Sampler, Subset

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = ["INDEX", "ShardBatchSampler", "ShardedGraphs", "write_shards"]

#: The file listing the shards of a folder, in order: ``[{"name": "shard_00000", "n": 1000}, ...]``.
INDEX = "shards.json"


def _mgl_dataset(folder: Path, name: str, **data: Any) -> Any:
    """The ``MGLDataset`` of matgl 2.2.x saved as ``folder/name`` (given ``structures``) or loaded from it."""
    from matgl.graph.data import MGLDataset

    with contextlib.redirect_stdout(io.StringIO()):  # matgl prints its cache status
        return MGLDataset(save_cache=True, directory_name=name, raw_dir=str(folder), save_dir=str(folder), **data)


def write_shards(records: Iterable[dict[str, Any]], converter: Any, folder: Path, shard_size: int) -> None:
    """Convert ``{"structure": ..., "labels": {...}}`` records and save them as shards of ``shard_size`` crystals.

    Records are consumed one at a time, and each shard is converted and saved by matgl's ``MGLDataset`` as soon as
    it is full, so a conversion holds at most one shard of crystals and graphs. The index (:data:`INDEX`) is
    written last.

    Raises:
        ValueError: no records (as matgl's writer of PyG shards does), or a non-positive ``shard_size``.
    """
    if shard_size <= 0:
        raise ValueError(f"shard_size must be a positive number of crystals; got {shard_size}")
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Any]] = []

    def flush(chunk: list[dict[str, Any]]) -> None:
        name = f"shard_{len(shards):05d}"
        labels: dict[str, list] = {}
        for record in chunk:
            for key, value in record["labels"].items():
                labels.setdefault(key, []).append(value)
        _mgl_dataset(folder, name, structures=[r["structure"] for r in chunk], converter=converter, labels=labels)
        shards.append({"name": name, "n": len(chunk)})

    chunk: list[dict[str, Any]] = []
    for record in records:
        chunk.append(record)
        if len(chunk) == shard_size:
            flush(chunk)
            chunk = []
    if chunk:
        flush(chunk)
    if not shards:
        raise ValueError("cannot create an empty MGL dataset")
    (folder / INDEX).write_text(json.dumps(shards, indent=0))


class ShardedGraphs(Dataset):
    """The graphs saved by :func:`write_shards`, read from disk one shard at a time.

    Indexing loads the shard that holds the item (matgl's ``MGLDataset``) and keeps it until an item of another
    shard is asked for, so memory holds one shard. Batch with :class:`ShardBatchSampler`, which reads shard by shard;
    a random order over the whole set would reload a shard for almost every item.

    Args:
        folder: A folder written by :func:`write_shards`.

    Raises:
        FileNotFoundError: no index, or a shard listed in it is missing or incomplete.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        index = self.folder / INDEX
        if not index.is_file():
            raise FileNotFoundError(f"{index}: no index of graph shards")
        self.shards: list[dict[str, Any]] = json.loads(index.read_text())
        for shard in self.shards:
            files = ("dgl_graph.bin", "lattice.pt", "state_attr.pt", "labels.json")
            missing = [f for f in files if not (self.folder / shard["name"] / f).is_file()]
            if missing:
                raise FileNotFoundError(f"{self.folder / shard['name']}: incomplete shard (no {', '.join(missing)})")
        self.starts = [0]
        for shard in self.shards:
            self.starts.append(self.starts[-1] + int(shard["n"]))
        self._loaded: tuple[int, Any] | None = None

    @property
    def num_shards(self) -> int:
        """Number of shards."""
        return len(self.shards)

    def shard_of(self, index: int) -> int:
        """The shard that holds item ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} graphs")
        return bisect.bisect_right(self.starts, index) - 1

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, index: int) -> tuple:
        index = int(index)
        if index < 0:
            index += len(self)
        shard = self.shard_of(index)
        if self._loaded is None or self._loaded[0] != shard:
            self._loaded = None  # let the previous shard go before reading the next
            self._loaded = (shard, _mgl_dataset(self.folder, self.shards[shard]["name"]))
        return self._loaded[1][index - self.starts[shard]]

    def __getstate__(self) -> dict[str, Any]:  # data-loader workers read their own shards
        return {**self.__dict__, "_loaded": None}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.folder)!r}, graphs={len(self)}, shards={self.num_shards})"


class _Epoch:
    """Holds the epoch of a :class:`ShardBatchSampler`; Lightning calls ``set_epoch`` on ``batch_sampler.sampler``."""

    def __init__(self) -> None:
        self.epoch = 0
        self.set = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.set = int(epoch), True


class ShardBatchSampler(Sampler[list[int]]):
    """Batches of one shard each over a :class:`ShardedGraphs` or a ``Subset`` of one.

    Each epoch the shards are put in an order (shuffled from ``seed + epoch`` when ``shuffle``), and so are the
    crystals within each shard; consecutive crystals are batched, and a batch never spans two shards. Under DDP
    (``torch.distributed`` initialised, or ``rank``/``world_size`` given) rank ``r`` takes shards ``r, r + w, ...``
    of that order, so ranks read disjoint crystals; when there are fewer shards than ranks, each shard's crystals are
    dealt out to the ranks instead. Every rank yields the same number of batches (DDP needs it): a rank with fewer
    repeats its last batch, as matgl >= 3's ``ShardBatchSampler`` does.

    The epoch comes from ``set_epoch`` (which Lightning calls through ``sampler``); without it, each pass over the
    sampler moves to the next epoch.

    Args:
        dataset: The :class:`ShardedGraphs` or ``Subset`` the loader indexes (indices are into it).
        batch_size: Crystals per batch.
        shuffle: Shuffle shards and crystals (training) or keep the stored order (validation).
        seed: Base seed of the shuffles.
        rank: This process's rank, with ``world_size``; read from ``torch.distributed`` when None.
        world_size: Number of ranks.
    """

    def __init__(
        self,
        dataset: ShardedGraphs | Subset,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive; got {batch_size}")
        base, indices = (dataset.dataset, dataset.indices) if isinstance(dataset, Subset) else (dataset, None)
        if not isinstance(base, ShardedGraphs):
            raise TypeError(f"ShardBatchSampler needs a ShardedGraphs or a Subset of one, not {type(base).__name__}")
        groups: dict[int, list[int]] = {}
        for position, index in enumerate(range(len(base)) if indices is None else indices):
            groups.setdefault(base.shard_of(int(index)), []).append(position)
        self.groups = [groups[shard] for shard in sorted(groups)]
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.sampler = _Epoch()

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of ``epoch``."""
        self.sampler.set_epoch(epoch)

    def _context(self) -> tuple[int, int]:
        if self.rank is not None and self.world_size is not None:
            return self.rank, self.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _plan(self, epoch: int) -> tuple[list[list[int]], int]:
        """This rank's batches for ``epoch``, and how many batches every rank yields."""
        rank, world_size = self._context()
        generator = torch.Generator().manual_seed(self.seed + epoch)
        groups = self.groups
        if self.shuffle:  # the shard order, then the order within each shard
            groups = [groups[i] for i in torch.randperm(len(groups), generator=generator).tolist()]
            groups = [[g[i] for i in torch.randperm(len(g), generator=generator).tolist()] for g in groups]
        if len(groups) >= world_size:
            mine = [groups[r::world_size] for r in range(world_size)]
        else:  # fewer shards than ranks: deal each shard's crystals out to the ranks
            mine = [[g[r::world_size] for g in groups if g[r::world_size]] for r in range(world_size)]
        counts = [sum(math.ceil(len(g) / self.batch_size) for g in assigned) for assigned in mine]
        if min(counts) == 0:
            raise ValueError(f"{sum(map(len, groups))} crystals cannot give each of {world_size} ranks a batch")
        batches = [g[i : i + self.batch_size] for g in mine[rank] for i in range(0, len(g), self.batch_size)]
        return batches, max(counts)

    def __len__(self) -> int:
        return self._plan(self.sampler.epoch)[1]

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.sampler.epoch
        if not self.sampler.set:  # nobody sets the epoch: move on by one per pass
            self.sampler.epoch += 1
        batches, target = self._plan(epoch)
        yield from batches
        for _ in range(target - len(batches)):
            yield batches[-1]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(shards={len(self.groups)}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"seed={self.seed})"
        )
