"""Converted crystal graphs, cached on disk and reused across runs.

Converting crystals into matgl graphs (neighbour search within the cutoff) is the slow part of preparing data.
:func:`cached_dataset` converts once, stores the graphs under ``cache_dir/<key>/`` and, on later calls with the same
crystals, labels, cutoff and element list (and the same backend and matgl version), loads them instead of converting.
The key naming each cache folder is a short SHA-256 of everything the graphs depend on (crystals, labels, element types,
cutoff, backend, matgl version): :mod:`matgl_cdssl.data._cache_keys`.

Storage per backend:

* **PyG** (matgl >= 3): matgl's ``write_mgl_shards`` writes the graphs as shards of ``shard_size`` crystals, and
  the dataset is matgl's ``MGLDiskDataset``, which streams: it keeps one shard in memory at a time. Its items
  are ``(graph, lattice, state_attr, labels)``, as with the in-memory ``MGLDataset``. matgl's ``MGLDataLoader``
  (:meth:`~matgl_cdssl._backend.GraphBackend.loaders`) batches it shard by shard, so a batch never spans two
  shards, and it requires the training and validation sets to be ``MGLDiskDataset`` objects alike.
* **DGL** (matgl 2.2.x): matgl 2.2.x has no streaming dataset, so :mod:`matgl_cdssl._backend._dgl_shards` gives it
  the same pieces on matgl's own dataset cache: each shard of ``shard_size`` crystals is saved by
  ``MGLDataset(save_cache=True)`` (``dgl.save_graphs``), and :class:`~matgl_cdssl._backend._dgl_shards.ShardedGraphs`
  reads one shard at a time, batched shard by shard by :class:`~matgl_cdssl._backend._dgl_shards.ShardBatchSampler`.

A cache is published atomically: it is written into a hidden temporary folder next to its final place, a
``complete.json`` marker is written last, and the folder is then renamed to ``cache_dir/<key>``. A folder without
the marker (an interrupted or damaged write) is never taken as a hit; it is removed and rebuilt.

Crystals are read, checked (as in :func:`matgl_cdssl.data.build_dataset`) and converted one at a time, so a cold
start never holds more than one shard of graphs. The first invalid crystal raises a ``ValueError`` naming
it, and nothing is cached; with ``skip_invalid=True`` invalid crystals are left out and listed in ``skipped.json``.
Each item carries the user's labels followed by ``structure_index``, its position among the cached crystals
(``names.json`` in the cache folder maps it back to each crystal's name).

:func:`split_cached` makes training/validation subsets that stream like the whole (on DGL, views of the cache; on
PyG, datasets of their own under ``<key>/splits/``, written from the cached graphs without converting again).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matgl_cdssl._backend import get_backend, matgl_version
from matgl_cdssl.data._cache_keys import CACHE_FORMAT, KEY_LENGTH, cache_folder
from matgl_cdssl.data._checks import check_label_lengths, connectivity_problem, structure_problem
from matgl_cdssl.data._readers import input_files, input_items, iter_structures

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

__all__ = ["MARKER", "CachedGraphs", "cached_dataset", "split_cached"]

logger = logging.getLogger(__name__)

#: File written last into a cache folder; a folder without it is incomplete.
MARKER = "complete.json"
_NAMES = "names.json"
_SKIPPED = "skipped.json"


# ---- the cache -----------------------------------------------------------------------------------------------------
@dataclass
class CachedGraphs:
    """What :func:`cached_dataset` returns.

    Attributes:
        dataset: The graphs, items ``(graph, lattice, state_attr, labels)``, streamed from disk one shard at a time:
            matgl's ``MGLDiskDataset`` on PyG, :class:`~matgl_cdssl._backend._dgl_shards.ShardedGraphs` on DGL.
        hit: True when the graphs were loaded from the cache without converting.
        folder: The cache folder.
        names: The name of every cached crystal; item ``i`` has ``structure_index == i``.
        skipped: ``(name, reason)`` for each crystal left out under ``skip_invalid``.
    """

    dataset: Any
    hit: bool
    folder: Path
    names: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _open_complete(folder: Path, key: str) -> Any | None:
    """The dataset in ``folder`` if it is a complete cache for ``key``, else None (after logging why)."""
    marker = folder / MARKER
    if not marker.is_file():
        if folder.exists():
            logger.warning("Graph cache %s has no %s (an interrupted write?); rebuilding it.", folder, MARKER)
        return None
    try:
        info = json.loads(marker.read_text())
        if info.get("key") != key or info.get("format") != CACHE_FORMAT:
            raise ValueError(f"{marker} is for key {info.get('key')!r} (format {info.get('format')!r})")
        dataset = get_backend().open_graphs(folder)
        if len(dataset) != info["n"]:
            raise ValueError(f"{folder} holds {len(dataset)} graphs; {marker} says {info['n']}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("Graph cache %s is unreadable (%s); rebuilding it.", folder, exc)
        return None
    return dataset


def _publish(folder: Path, key: str, write: Callable[[Path], dict[str, Any]]) -> tuple[Any, bool]:
    """Open the complete cache ``folder``, or build it with ``write(staging)`` and publish it atomically.

    ``write`` fills the staging folder and returns the marker's content (``n`` at least); the marker is written last
    and the folder renamed into place. Returns ``(dataset, hit)``.
    """
    dataset = _open_complete(folder, key)
    if dataset is not None:
        return dataset, True
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
    try:
        info = write(staging)
        info = {"key": key, "format": CACHE_FORMAT, "backend": get_backend().name, "matgl": matgl_version(), **info}
        (staging / MARKER).write_text(json.dumps(info, indent=1))
        if folder.exists() and not (folder / MARKER).is_file():
            shutil.rmtree(folder)  # an incomplete cache left by an interrupted write
        try:
            staging.rename(folder)
        except OSError:
            if not (folder / MARKER).is_file():
                raise
            # Another process (another DDP rank, say) published the same cache meanwhile: keep theirs.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    dataset = _open_complete(folder, key)
    if dataset is None:  # pragma: no cover - the folder was just written and checked
        raise RuntimeError(f"{folder}: the graph cache just written cannot be read back")
    return dataset, False


class _Checked:
    """A matgl converter that hands matgl's dataset writers graphs already built (and checked) by :meth:`build`.

    Converting each crystal once, before it reaches the writer, lets a crystal whose atoms lack neighbours be
    rejected (or skipped) without converting it twice or writing it.
    """

    def __init__(self, converter: Any) -> None:
        self.converter = converter
        self._built: dict[int, Any] = {}

    def build(self, structure: Any) -> Any:
        graph = self.converter.get_graph(structure)
        self._built[id(structure)] = graph
        return graph[0]

    def forget(self, structure: Any) -> None:
        self._built.pop(id(structure), None)

    def get_graph(self, structure: Any) -> Any:
        built = self._built.pop(id(structure), None)
        return built if built is not None else self.converter.get_graph(structure)


def _convert_into(
    staging: Path,
    structures: Any,
    *,
    element_types: Sequence[str],
    cutoff: float,
    labels: dict[str, Sequence] | None,
    shard_size: int,
    skip_invalid: bool,
) -> dict[str, Any]:
    """Read, check and convert the crystals one at a time into ``staging``; returns the marker's content."""
    backend = get_backend()
    converter = _Checked(backend.converter(element_types, cutoff))
    names: list[str] = []
    skipped: list[tuple[str, str]] = []
    n_read = 0
    if labels and not any(isinstance(x, (str, Path)) for x in structures):  # cached_dataset made it a list
        check_label_lengths(labels, len(structures))  # fail before converting anything when the count is known

    exhausted = False

    def records() -> Iterator[dict[str, Any]]:
        nonlocal n_read, exhausted
        for index, (name, structure) in enumerate(iter_structures(structures)):
            n_read = index + 1
            if labels and any(index >= len(values) for values in labels.values()):
                continue  # counted, and reported below with the label lengths
            problem = structure_problem(structure, element_types)
            if problem is None:
                problem = connectivity_problem(converter.build(structure), cutoff)
                if problem:
                    converter.forget(structure)
            if problem:
                if not skip_invalid:
                    raise ValueError(f"{name} {problem}")
                logger.warning("Skipping %s: it %s", name, problem)
                skipped.append((name, problem))
                continue
            # matgl's collate batches the first label: user labels first, the index last (as in build_dataset).
            item_labels = {key: _plain(values[index]) for key, values in (labels or {}).items()}
            item_labels["structure_index"] = len(names)
            names.append(name)
            yield {"structure": structure, "labels": item_labels}
        exhausted = True

    try:
        backend.write_graphs(records(), converter, staging, shard_size)
    except ValueError:
        if names or not exhausted:
            raise
        # matgl refuses to write an empty dataset: say below why it is empty
    if n_read == 0:
        raise ValueError("structures is empty: give at least one crystal (pymatgen Structure, ASE Atoms or file path)")
    check_label_lengths(labels, n_read)
    if not names:
        raise ValueError(f"none of the {n_read} structures is usable: {skipped[:3]} ...")
    (staging / _NAMES).write_text(json.dumps(names))
    (staging / _SKIPPED).write_text(json.dumps(skipped))
    return {
        "n": len(names),
        "n_read": n_read,
        "element_types": list(element_types),
        "cutoff": float(cutoff),
        "labels": [*(labels or {}), "structure_index"],
    }


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def cached_dataset(
    structures: Any,
    *,
    element_types: Sequence[str],
    cutoff: float,
    cache_dir: str | Path,
    labels: dict[str, Sequence] | None = None,
    shard_size: int = 1000,
    skip_invalid: bool = False,
) -> CachedGraphs:
    """Crystals as a matgl dataset, converted once and then loaded from ``cache_dir``.

    The crystals are read, checked and converted one at a time (:func:`~matgl_cdssl.data.iter_structures`) and
    written shard by shard, so a cold start never holds more than one shard of graphs (plus, for in-memory input,
    the caller's own crystals).

    Args:
        structures: See :func:`~matgl_cdssl.data.read_structures`.
        element_types: The model's element types.
        cutoff: Neighbour cutoff in Å.
        cache_dir: Parent folder of the caches; each lives in ``cache_dir/<key>`` (see :func:`cache_key`).
        labels: Optional labels, one value per crystal; the first one is what matgl's collate batches.
            ``structure_index`` (the position in :attr:`CachedGraphs.names`) is appended, as in
            :func:`matgl_cdssl.data.build_dataset`.
        shard_size: Crystals per shard.
        skip_invalid: Leave out invalid crystals (logged, listed in :attr:`CachedGraphs.skipped` and in the cache's
            ``skipped.json``) instead of raising on the first. A cache built this way is reused without the
            flag only if it skipped nothing; otherwise its first skipped crystal raises, as a cold start would.

    Returns:
        The :class:`CachedGraphs`.

    Raises:
        ValueError: a crystal that :func:`matgl_cdssl.data.build_dataset` would reject (named in the message), labels
            of the wrong length or a non-positive ``shard_size``. Nothing is cached then.
        FileNotFoundError: a path that does not exist.
    """
    if shard_size <= 0:
        raise ValueError(f"shard_size must be a positive number of crystals; got {shard_size}")
    structures = input_items(structures)
    if not hasattr(structures, "__len__"):  # a one-shot iterator: the key and the conversion both go through it
        structures = list(structures)
    folder = cache_folder(structures, element_types=element_types, cutoff=cutoff, cache_dir=cache_dir, labels=labels)
    files = [str(f) for f in input_files(structures)]

    def write(staging: Path) -> dict[str, Any]:
        info = _convert_into(
            staging,
            structures,
            element_types=element_types,
            cutoff=cutoff,
            labels=labels,
            shard_size=shard_size,
            skip_invalid=skip_invalid,
        )
        return {**info, "files": files}

    dataset, hit = _publish(folder, folder.name, write)
    rename = _renamer(json.loads((folder / MARKER).read_text()).get("files", []), files)
    names = [rename(name) for name in json.loads((folder / _NAMES).read_text())]
    skipped = [(rename(name), problem) for name, problem in json.loads((folder / _SKIPPED).read_text())]
    if skipped and not skip_invalid:
        name, problem = skipped[0]
        raise ValueError(f"{name} {problem} (found when the graph cache {folder} was built with skip_invalid)")
    logger.info("%s %d graphs in %s", "Loaded" if hit else "Converted and cached", len(dataset), folder)
    return CachedGraphs(dataset, hit, folder, names, skipped)


def _renamer(recorded: Sequence[str], files: Sequence[str]) -> Callable[[str], str]:
    """Names of crystals read from the ``recorded`` files, spelled with the same files' paths now (``files``).

    A crystal's name is its file's path, or the path and ``[id]`` (a CSV row, a JSON entry): the part before one of
    its ``[`` is looked up among the recorded paths.
    """
    if len(recorded) != len(files):  # a cache written before the files were recorded
        return lambda name: name
    moved = {old: new for old, new in zip(recorded, files, strict=True) if old != new}

    def rename(name: str) -> str:
        if name in moved:
            return moved[name]
        for cut in (i for i, c in enumerate(name) if c == "["):
            if name[:cut] in moved:
                return moved[name[:cut]] + name[cut:]
        return name

    return rename


def split_cached(cached: CachedGraphs, parts: dict[str, Sequence[int]], shard_size: int = 1000) -> dict[str, Any]:
    """Subsets of a cached dataset (a training/validation split, say) that stream like the whole.

    On DGL the subsets are ``torch.utils.data.Subset`` views of the cached shards, which
    :class:`~matgl_cdssl._backend._dgl_shards.ShardBatchSampler` batches shard by shard. On PyG, matgl's loaders
    batch ``MGLDiskDataset`` objects shard by shard and take no subsets, so each part is written once as a dataset
    of its own (by matgl's ``write_mgl_shards``, from the cached graphs: nothing is converted again) under
    ``<cache folder>/splits/<key>/<part>`` and reused by later calls with the same indices and ``shard_size``.

    Args:
        cached: From :func:`cached_dataset`.
        parts: Indices into ``cached.dataset`` for each part, e.g. ``{"train": [...], "val": [...]}``.
        shard_size: Crystals per shard of each part (PyG; on DGL the parts keep the cache's shards). Under DDP every
            rank reads whole shards of its own, so a part needs at least as many shards as there are ranks.

    Returns:
        ``{part: dataset}``, the items in the order of the indices.
    """
    from torch.utils.data import Subset

    backend = get_backend()
    if backend.subsets_stream:
        return {name: Subset(cached.dataset, list(indices)) for name, indices in parts.items()}
    out = {}
    for name, indices in parts.items():
        indices = [int(i) for i in indices]
        if not indices:
            raise ValueError(f"split part {name!r} is empty")
        digest = hashlib.sha256(json.dumps([cached.folder.name, indices, shard_size]).encode()).hexdigest()
        folder = cached.folder / "splits" / f"{name}-{digest[:KEY_LENGTH]}"

        def write(staging: Path, indices: list[int] = indices) -> dict[str, Any]:
            items = (cached.dataset[i] for i in indices)  # each read once: graph, lattice, state, labels
            records = ({"structure": item[:3], "labels": item[3]} for item in items)
            backend.write_graphs(records, _Converted(), staging, shard_size)
            return {"n": len(indices), "source": cached.folder.name, "shard_size": shard_size}

        out[name], hit = _publish(folder, folder.name, write)
        logger.info("Graph cache split %s: %d graphs (%s)", folder, len(indices), "hit" if hit else "written")
    return out


class _Converted:
    """A matgl converter for records whose "structure" is already converted: ``(graph, lattice, state_attr)``."""

    @staticmethod
    def get_graph(converted: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
        return converted
