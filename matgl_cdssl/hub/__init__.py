"""Models in and out: saving, loading, weight conversion between backends, copying, and the named-weights registry.

- :func:`save_pretrained` / :func:`load_folder`: a CDSSL model folder is matgl's saved-model folder plus
  ``cdssl.json``, the pretext head and ``skipped.csv``; loading converts weights written by the other backend
  (:func:`convert_weights`).
- :func:`new_like`: the one way to copy a model or re-create its architecture (fresh readout, fresh everything).
- :func:`load_model`, :func:`list_models`, :func:`get_card`, :func:`register`: named pretrained weights shipped in
  ``matgl_cdssl/pretrained/<name>/`` with a model card and checksums, loadable offline by name, also through plain
  ``matgl.load_model`` after :func:`register`.

Loading a folder never runs code that its files may hold: every torch file is first read by an unpickler that builds
only tensors, numpy arrays and matgl's target transformers (``_safe_load``), on both matgl lines.
"""

from __future__ import annotations

from matgl_cdssl.hub._cards import (
    MATGL_COPIES,
    MATGL_LABELS,
    PretrainedCard,
    get_card,
    labels_seen,
    list_models,
    matgl_copy,
    pretrained_folder,
    register_pretrained,
    resolve,
    source_folder,
)
from matgl_cdssl.hub._copy import READOUT, new_like
from matgl_cdssl.hub._ensemble import ENSEMBLE_FILE, Ensemble, is_ensemble
from matgl_cdssl.hub._io import (
    CONFIG_FILE,
    HEAD_FILE,
    SKIPPED_FILE,
    convert_weights,
    load_folder,
    load_head,
    read_config,
    read_skipped,
    save_pretrained,
)
from matgl_cdssl.hub._registry import load_model, megnet_of, register

__all__ = [
    "CONFIG_FILE",
    "ENSEMBLE_FILE",
    "HEAD_FILE",
    "MATGL_COPIES",
    "MATGL_LABELS",
    "READOUT",
    "SKIPPED_FILE",
    "Ensemble",
    "PretrainedCard",
    "convert_weights",
    "get_card",
    "is_ensemble",
    "labels_seen",
    "list_models",
    "load_folder",
    "load_head",
    "load_model",
    "matgl_copy",
    "megnet_of",
    "new_like",
    "pretrained_folder",
    "read_config",
    "read_skipped",
    "register",
    "register_pretrained",
    "resolve",
    "save_pretrained",
    "source_folder",
]
