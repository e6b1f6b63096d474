"""2-D maps of embeddings coloured by a property, and a kNN measure of how organised the property is.

:func:`plot_map` needs scikit-learn and matplotlib, and umap-learn for UMAP maps (without it, it falls back to PCA
with a warning).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from matgl_cdssl.analysis._probe import require

__all__ = ["PROPERTY_LABELS", "knn_correlation", "plot_map"]

logger = logging.getLogger(__name__)

#: Axis labels (with units) of the properties that ``structure_properties`` computes and the bundled sample has.
PROPERTY_LABELS: dict[str, str] = {
    "density": "density (g/cm³)",
    "volume_per_atom": "volume per atom (Å³)",
    "formation_energy_per_atom_eV": "formation energy (eV/atom)",
    "band_gap_eV": "band gap (eV)",
    "efermi_eV": "Fermi energy (eV)",
    "total_magnetization_muB": "total magnetisation (μB)",
    "volume_A3": "cell volume (Å³)",
}


def knn_correlation(points: Any, values: Any, *, k: int = 10) -> float:
    """Pearson correlation between each point's value and the mean value of its ``k`` nearest neighbours.

    Near 1 when points close together have similar values (the property is organised in the space), near 0 when
    neighbours are unrelated. The point itself is not among its neighbours. Euclidean distance.

    Args:
        points: Coordinates, shape ``(n, m)`` (e.g. a 2-D map, or embeddings).
        values: The property, shape ``(n,)``, finite.
        k: Number of neighbours.

    Returns:
        The correlation.

    Example:
        >>> x = np.linspace(0, 1, 100)[:, None]
        >>> round(knn_correlation(x, x[:, 0] ** 2, k=5), 2)
        1.0
    """
    from sklearn.neighbors import NearestNeighbors

    points = np.asarray(points, dtype=float)
    values = np.asarray(values, dtype=float).reshape(-1)
    if len(points) != len(values) or len(values) <= k:
        raise ValueError(f"need more than k={k} points with one value each; got {len(points)} points, {len(values)}")
    neighbours = NearestNeighbors(n_neighbors=k).fit(points).kneighbors(return_distance=False)
    return float(np.corrcoef(values, values[neighbours].mean(axis=1))[0, 1])


def _project(X: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, str]:
    """2-D coordinates of standardised ``X`` by UMAP or PCA, and the method actually used."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    X = StandardScaler().fit_transform(X)
    if method == "umap":
        try:
            import umap
        except ImportError:
            message = (
                "umap-learn is not installed, so the map is a PCA projection instead of UMAP; for a UMAP map, "
                "`pip install umap-learn`"
            )
            logger.warning(message)
            warnings.warn(message, stacklevel=3)
            method = "pca"
        else:
            n_neighbors = min(15, len(X) - 1)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*n_jobs value.*")  # a fixed seed makes UMAP serial
                reducer = umap.UMAP(n_components=2, n_neighbors=n_neighbors, random_state=seed)
                return np.asarray(reducer.fit_transform(X)), "umap"
    return PCA(n_components=2, random_state=seed).fit_transform(X), method


def plot_map(
    embeddings: Any,
    color: Any,
    path: str | Path,
    *,
    method: str = "umap",
    label: str = "density (g/cm³)",
    seed: int = 0,
    k: int = 10,
    title: str | None = None,
) -> dict[str, Any]:
    """A 2-D map of embeddings coloured by a property, saved as PNG, with a measure of how organised it is.

    The embeddings are standardised (zero mean, unit variance per column) and projected to 2-D by UMAP
    (umap-learn, ``n_neighbors=15``, ``random_state=seed``) or PCA. If umap-learn is not installed, the map falls
    back to PCA with a warning that says how to install it. Organisation is measured by :func:`knn_correlation`
    with ``k`` neighbours: on the map, in the full (standardised) embedding space, and on the map with the
    property randomly permuted over the crystals (mean of 20 permutations), the chance level. Crystals with a NaN
    embedding or value are left out and counted.

    Args:
        embeddings: Shape ``(n, d)``, e.g. from :func:`embed`.
        color: The property, shape ``(n,)``.
        path: Where to write the PNG (folders are created).
        method: ``"umap"`` or ``"pca"``.
        label: Colour-bar label.
        seed: Seed of UMAP and of the permutations.
        k: Neighbours of the kNN correlation.
        title: First line of the figure title; the (next) line always gives the method and the kNN correlation.

    Returns:
        ``path``, ``method`` (the one used), ``knn_correlation``, ``knn_correlation_shuffled``,
        ``knn_correlation_embedding``, ``k``, ``n``, ``n_dropped`` and ``coords`` (the map, shape ``(n, 2)``).

    Raises:
        ValueError: An unknown method, mismatched shapes, or too few crystals.
    """
    require("sklearn", "scikit-learn", "plot_map")
    require("matplotlib", "matplotlib", "plot_map")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if method not in ("umap", "pca"):
        raise ValueError(f"method must be 'umap' or 'pca'; got {method!r}")
    X = np.asarray(embeddings, dtype=float)
    c = np.asarray(color, dtype=float).reshape(-1)
    if X.ndim != 2 or len(X) != len(c):
        raise ValueError(f"embeddings must have shape (n, d) with n = len(color) = {len(c)}; got {X.shape}")
    keep = np.isfinite(X).all(axis=1) & np.isfinite(c)
    if keep.sum() <= max(k, 3):
        raise ValueError(f"only {int(keep.sum())} crystals with a finite embedding and value; need more than {k}")
    X, c = X[keep], c[keep]
    coords, used = _project(X, method, seed)
    rng = np.random.default_rng(seed)
    shuffled = [knn_correlation(coords, rng.permutation(c), k=k) for _ in range(20)]
    scaled = (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1.0)
    result: dict[str, Any] = {
        "path": Path(path),
        "method": used,
        "knn_correlation": knn_correlation(coords, c, k=k),
        "knn_correlation_shuffled": float(np.mean(shuffled)),
        "knn_correlation_embedding": knn_correlation(scaled, c, k=k),
        "k": k,
        "n": int(keep.sum()),
        "n_dropped": int((~keep).sum()),
        "coords": coords,
    }
    fig, ax = plt.subplots(figsize=(6.0, 5.0))
    order = np.argsort(c)  # extreme values on top
    points = ax.scatter(coords[order, 0], coords[order, 1], c=c[order], s=8, cmap="viridis", linewidths=0)
    fig.colorbar(points, ax=ax, label=label)
    ax.set_xlabel(f"{used.upper()} 1")
    ax.set_ylabel(f"{used.upper()} 2")
    ax.set_xticks([])
    ax.set_yticks([])
    summary = (
        f"{used.upper()} of {result['n']} crystals; kNN corr. {result['knn_correlation']:.2f} "
        f"(shuffled {result['knn_correlation_shuffled']:.2f})"
    )
    ax.set_title(f"{title}\n{summary}" if title else summary, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return result
