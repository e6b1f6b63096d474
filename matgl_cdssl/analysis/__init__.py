"""Seeing what CDSSL learned: embeddings, linear probes, 2-D maps and the pretraining curves.

- :func:`embed`: graph-level embeddings, MEGNet's message-passing output pooled with means (no readout).
- :func:`probe`, :func:`probe_models`: cross-validated ridge regression from embeddings to properties.
- :func:`plot_map`, :func:`knn_correlation`: UMAP or PCA maps coloured by a property, and how organised it is.
- :func:`plot_pretraining`, :func:`read_metrics`: the paper's Fig. 3 diagnostics of a pretraining run.

:func:`probe` needs scikit-learn; :func:`plot_map` needs scikit-learn and matplotlib, and umap-learn for UMAP maps.
"""

from __future__ import annotations

from matgl_cdssl.analysis._embed import as_model, embed, embedding_columns
from matgl_cdssl.analysis._maps import PROPERTY_LABELS, knn_correlation, plot_map
from matgl_cdssl.analysis._plots import PRETRAINING_METRICS, plot_pretraining, read_metrics
from matgl_cdssl.analysis._probe import DEFAULT_ALPHAS, format_probe_table, probe, probe_models, structure_properties

__all__ = [
    "DEFAULT_ALPHAS",
    "PRETRAINING_METRICS",
    "PROPERTY_LABELS",
    "as_model",
    "embed",
    "embedding_columns",
    "format_probe_table",
    "knn_correlation",
    "plot_map",
    "plot_pretraining",
    "probe",
    "probe_models",
    "read_metrics",
    "structure_properties",
]
