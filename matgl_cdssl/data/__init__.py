"""Crystals in, batches out: readers, checks, datasets, the graph cache and the Materials Project split.

Crystals flow one way through this package:

read (:func:`read_structures`, :func:`iter_structures`: objects, files, folders, CSV, JSON Lines, extxyz) ->
check (:func:`structure_problem`, :func:`connectivity_problem`, :func:`check_values`: each rule written once and
naming what it rejects) -> convert (:func:`build_dataset`, in memory) or convert and cache (:func:`cached_dataset`,
on disk, streamed) -> split (:func:`seeded_permutation`, :func:`train_val_split`, :func:`split_cached`) -> loaders
(``matgl_cdssl._backend.get_backend().loaders``).

The bundled sample (:func:`load_sample`) holds 1,000 Materials Project crystals with their labels, from the hold-out
pool (:func:`in_holdout_pool`) that pretraining of ``CDSSL-MEGNet-MP`` never sees.
"""

from __future__ import annotations

from matgl_cdssl.data._cache import CachedGraphs, cached_dataset, split_cached
from matgl_cdssl.data._cache_keys import fingerprint_labels, fingerprint_structures
from matgl_cdssl.data._checks import (
    MIN_INTERATOMIC_DISTANCE,
    check_label_lengths,
    check_targets,
    check_values,
    connectivity_problem,
    isolated_atoms,
    structure_problem,
)
from matgl_cdssl.data._datasets import build_dataset, seeded_permutation, train_val_split
from matgl_cdssl.data._mp import hash_order, in_holdout_pool, read_mp_split, write_mp_split
from matgl_cdssl.data._readers import (
    STRUCTURE_SUFFIXES,
    csv_id_column,
    input_items,
    iter_structures,
    read_csv_structures,
    read_labelled_csv,
    read_structures,
)
from matgl_cdssl.data._sample import SAMPLE_LABELS, Sample, load_sample

__all__ = [
    "MIN_INTERATOMIC_DISTANCE",
    "SAMPLE_LABELS",
    "STRUCTURE_SUFFIXES",
    "CachedGraphs",
    "Sample",
    "build_dataset",
    "cached_dataset",
    "check_label_lengths",
    "check_targets",
    "check_values",
    "connectivity_problem",
    "csv_id_column",
    "fingerprint_labels",
    "fingerprint_structures",
    "hash_order",
    "in_holdout_pool",
    "input_items",
    "isolated_atoms",
    "iter_structures",
    "load_sample",
    "read_csv_structures",
    "read_labelled_csv",
    "read_mp_split",
    "read_structures",
    "seeded_permutation",
    "split_cached",
    "structure_problem",
    "train_val_split",
    "write_mp_split",
]
