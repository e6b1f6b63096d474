r"""Seeing what CDSSL learned: graph-level embeddings, linear probes and 2-D maps of a MEGNet's representation.

The embedding of a crystal is what MEGNet's message-passing blocks produce, pooled with means:

.. math::

    z(G) = \Big[\tfrac{1}{|V|}\textstyle\sum_{v} h_v \;\Big\Vert\; \tfrac{1}{|E|}\sum_{e} h_e \;\Big\Vert\; u\Big],

the mean over atoms of the final node features, the mean over edges of the final edge features and the final
state features, concatenated (in that order). These are the outputs of :func:`~matgl_cdssl.module.encode`, which
runs MEGNet's embedding, encoders and blocks; the edge input is the model's own bond expansion of the bond lengths,
exactly as in MEGNet's forward pass. MEGNet's Set2Set readout and output MLP are *not* used: the CDSSL pretext task
never trains them. With matgl's default MEGNet the embedding has 32 + 32 + 32 = 96 values.

On top of :func:`embed`: :func:`probe` (cross-validated ridge regression from embeddings to a property),
:func:`probe_models` (a table of probes for several models and properties) and :func:`plot_map` (a UMAP or PCA map
coloured by a property, with a k-nearest-neighbour measure of how organised the property is on the map). The
command-line subcommands ``cdssl embed`` and ``cdssl probe`` are defined here (:func:`add_parser`), as are the
options and handler of the map command (:func:`add_map_arguments`, :func:`map_command`).

:func:`probe` needs scikit-learn; :func:`plot_map` needs scikit-learn and matplotlib, and umap-learn for UMAP maps
(without it, it falls back to PCA with a warning).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping, Sequence

    import pandas as pd
    from torch import nn

__all__ = [
    "DEFAULT_ALPHAS",
    "PROPERTY_LABELS",
    "add_map_arguments",
    "add_parser",
    "embed",
    "embed_command",
    "embedding_columns",
    "format_probe_table",
    "knn_correlation",
    "map_command",
    "plot_map",
    "probe",
    "probe_command",
    "probe_models",
    "random_like",
    "structure_properties",
]

logger = logging.getLogger(__name__)

#: Ridge penalties tried by :func:`probe` (chosen inside each training fold by efficient leave-one-out).
DEFAULT_ALPHAS: np.ndarray = np.logspace(-3, 3, 13)

#: Axis labels (with units) of the properties that :func:`structure_properties` computes and the bundled sample has.
PROPERTY_LABELS: dict[str, str] = {
    "density": "density (g/cm³)",
    "volume_per_atom": "volume per atom (Å³)",
    "formation_energy_per_atom_eV": "formation energy (eV/atom)",
    "band_gap_eV": "band gap (eV)",
    "efermi_eV": "Fermi energy (eV)",
    "total_magnetization_muB": "total magnetisation (μB)",
    "volume_A3": "cell volume (Å³)",
}

_SAMPLE_PROBE_LABELS = ("formation_energy_per_atom_eV", "band_gap_eV")
_OUT_FORMATS = (".npy", ".npz", ".csv", ".parquet")


# ---- embeddings ------------------------------------------------------------------------------------------------
def _as_model(model: Any) -> nn.Module:
    """A matgl MEGNet from a model, a registered name or a folder."""
    from torch import nn

    if isinstance(model, (str, Path)):
        from matgl_cdssl.registry import load_model

        # The readout is not used here; leave torch's global RNG alone.
        model = load_model(model, fresh_readout=False)
    if not isinstance(model, nn.Module) or not all(
        hasattr(model, a) for a in ("embedding", "blocks", "bond_expansion", "element_types", "cutoff")
    ):
        raise ValueError(
            f"expected a matgl MEGNet, a registered name (e.g. 'CDSSL-MEGNet-MP') or a model folder; got "
            f"{type(model).__name__}"
        )
    return model


def random_like(model: Any, *, seed: int = 0) -> nn.Module:
    """The same architecture as ``model`` (same init arguments), freshly initialised from ``seed``.

    torch's global random state is left as it was.

    Args:
        model: A matgl MEGNet, a registered name or a model folder.
        seed: Seed of the initialisation.

    Returns:
        A new model of the same class.

    Example:
        >>> a, b = random_like("CDSSL-MEGNet-MP", seed=0), random_like("CDSSL-MEGNet-MP", seed=0)
        >>> all((p == q).all() for p, q in zip(a.parameters(), b.parameters()))
        True
    """
    import torch

    from matgl_cdssl.io import same_architecture

    model = _as_model(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return same_architecture(model)


def _last_linear_width(module: nn.Module) -> int | None:
    from torch import nn

    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def embedding_columns(model: Any) -> list[str]:
    """Names of the embedding's columns: ``node_mean_<i>``, then ``edge_mean_<i>``, then ``state_<i>``.

    Args:
        model: A matgl MEGNet, a registered name or a model folder.

    Returns:
        One name per column of :func:`embed`'s output.

    Example:
        >>> columns = embedding_columns("CDSSL-MEGNet-MP")
        >>> len(columns), columns[0], columns[32], columns[-1]
        (96, 'node_mean_0', 'edge_mean_0', 'state_31')
    """
    conv = _as_model(model).blocks[-1].conv
    widths = {part: _last_linear_width(getattr(conv, f"{part}_func")) for part in ("node", "edge", "state")}
    if None in widths.values():
        raise ValueError(f"cannot read the feature widths of this model's last block: {widths}")
    names = {"node": "node_mean", "edge": "edge_mean", "state": "state"}
    return [f"{names[part]}_{i}" for part, width in widths.items() for i in range(int(width))]


def embed(
    model: Any,
    structures: Sequence[Any],
    *,
    batch_size: int = 64,
    skip_invalid: bool = False,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """Graph-level representation of crystals: MEGNet's message-passing output, pooled with means.

    Each row is the concatenation of (1) the mean over atoms of the final node features, (2) the mean over edges of
    the final edge features and (3) the final state features: the output of MEGNet's embedding, encoders and
    message-passing blocks (:func:`~matgl_cdssl.module.encode`), not of its Set2Set readout, which CDSSL never
    trains. The edge input is the model's own bond expansion (``model.bond_expansion``) of the bond lengths, so
    the features are those of MEGNet's own forward pass. With matgl's default MEGNet, ``d = 32 + 32 + 32 = 96``
    (see :func:`embedding_columns`). Crystals are converted with matgl's converter (the model's ``element_types``
    and ``cutoff``) and batched with matgl's dataset and loader; the model runs in eval mode under
    ``torch.inference_mode`` on its own device, and its train/eval mode is restored afterwards.

    Args:
        model: A matgl MEGNet, a registered name (``"CDSSL-MEGNet-MP"``) or a model folder.
        structures: pymatgen Structures, ASE Atoms or structure files (see
            :func:`~matgl_cdssl.data.read_structures`); a multi-frame file gives one row per frame.
        batch_size: Crystals per batch. The result does not depend on it (up to float rounding).
        skip_invalid: Instead of raising on an invalid crystal, give it a row of NaN and warn, naming it and
            the reason.
        names: A name per crystal (per frame of a multi-frame file) for messages; default ``structures[i]`` or
            the file path.

    Returns:
        Array of shape ``(n_structures, d)``, float32, in the order of the input.

    Raises:
        ValueError: An invalid crystal (named, with the reason: unknown element, overlapping atoms, an atom with
            no neighbour within the cutoff, ...) unless ``skip_invalid``; no usable crystal at all; or a bad
            ``model``, ``batch_size`` or ``names``.

    Example:
        >>> from matgl_cdssl import load_sample
        >>> embed("CDSSL-MEGNet-MP", load_sample(3).structures).shape
        (3, 96)
    """
    import torch

    from matgl_cdssl.backend import get_backend
    from matgl_cdssl.data import build_dataset, read_structures
    from matgl_cdssl.module import bond_distances, encode

    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    model = _as_model(model)
    read_names, structs = read_structures(structures)  # file paths name their crystals
    dataset, _, skipped = build_dataset(
        structs,
        element_types=model.element_types,
        cutoff=model.cutoff,
        labels={"row": list(range(len(structs)))},  # the first label is the one matgl's collate batches
        skip_invalid=True,
        names=read_names if names is None else names,
        log_skips=False,  # reported below, once, as an error or a warning with every name
    )
    if skipped and not skip_invalid:
        name, reason = skipped[0]
        more = f" ({len(skipped) - 1} more invalid crystal(s); pass skip_invalid=True to embed the rest)"
        raise ValueError(f"{name} {reason}" + (more if len(skipped) > 1 else ""))
    if skipped:
        listing = "; ".join(f"{name} {reason}" for name, reason in skipped)
        warnings.warn(f"embed: {len(skipped)} invalid crystal(s) got rows of NaN: {listing}", stacklevel=2)

    backend = get_backend()
    _, loader = backend.loaders(dataset, dataset, batch_size=int(batch_size))
    device = next(model.parameters()).device
    rows: list[np.ndarray] = []
    pooled: list[np.ndarray] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for g, lattice, state_attr, row in loader:
                if device.type != "cpu":  # DGL graphs and PyG batches both have .to(device)
                    g, lattice, state_attr = g.to(device), lattice.to(device), state_attr.to(device)
                topo = backend.topology(g)
                edge_attr = model.bond_expansion(bond_distances(g, lattice, topo))
                edge_feat, node_feat, state_feat = encode(model, g, edge_attr, state_attr, topo)
                n = topo.num_graphs
                z = torch.cat(
                    [
                        _mean_by(node_feat, topo.node_graph, n),
                        _mean_by(edge_feat, topo.edge_graph, n),
                        state_feat.reshape(n, -1),
                    ],
                    dim=1,
                )
                pooled.append(z.float().cpu().numpy())
                rows.append(row.reshape(-1).long().cpu().numpy())
    finally:
        model.train(was_training)
    z = np.concatenate(pooled)
    out = np.full((len(structs), z.shape[1]), np.nan, dtype=np.float32)
    out[np.concatenate(rows)] = z
    return out


def _mean_by(x: Any, index: Any, n: int) -> Any:
    """Mean of the rows of ``x`` per group ``index`` (``n`` groups, each non-empty)."""
    import torch

    total = torch.zeros(n, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, index, x)
    count = torch.bincount(index, minlength=n).clamp_min(1).to(x.dtype)
    return total / count[:, None]


def structure_properties(structures: Sequence[Any]) -> dict[str, np.ndarray]:
    """Properties computed from the crystals themselves (pymatgen), as probe and map targets.

    Args:
        structures: See :func:`~matgl_cdssl.data.read_structures`.

    Returns:
        ``{"density": g/cm³, "volume_per_atom": Å³}``, arrays of shape ``(n_structures,)``.

    Example:
        >>> from pymatgen.core import Lattice, Structure
        >>> props = structure_properties([Structure(Lattice.cubic(4.0), ["Cs", "Cl"], [[0, 0, 0], [0.5] * 3])])
        >>> float(props["volume_per_atom"][0])
        32.0
    """
    from matgl_cdssl.data import read_structures

    _, structs = read_structures(structures)
    return {
        "density": np.array([float(s.density) for s in structs]),
        "volume_per_atom": np.array([s.volume / len(s) for s in structs]),
    }


# ---- linear probe -------------------------------------------------------------------------------------------------
def probe(
    X: Any, y: Any, *, cv: int = 5, alphas: Sequence[float] = DEFAULT_ALPHAS, seed: int = 0
) -> dict[str, float | int]:
    """How well a linear model reads a property off embeddings: cross-validated ridge regression.

    The model is scikit-learn's ``Pipeline(StandardScaler(), RidgeCV(alphas))`` (the penalty is chosen inside
    each training fold by efficient leave-one-out). Predictions for every crystal come from
    ``cross_val_predict`` with ``KFold(cv, shuffle=True, random_state=seed)``; R² and MAE are computed over all
    these out-of-fold predictions. As a reference, ``mae_mean_baseline`` is the MAE of predicting the training
    folds' mean. Rows whose label is NaN/inf, or whose embedding has a NaN (a crystal that :func:`embed` skipped),
    are left out and counted.

    Args:
        X: Embeddings, shape ``(n, d)``.
        y: Property, shape ``(n,)``.
        cv: Number of folds.
        alphas: Ridge penalties to choose from.
        seed: Seed of the fold assignment.

    Returns:
        ``r2``, ``mae`` (in the units of ``y``), ``mae_mean_baseline``, ``alpha`` (the penalty chosen on all the
        rows), ``n`` (rows used), ``n_dropped_label`` and ``n_dropped_embedding``.

    Raises:
        ValueError: Mismatched shapes, or fewer usable rows than ``2 * cv``.
        ImportError: scikit-learn is missing.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(200, 5))
        >>> probe(X, X @ [1.0, -2.0, 0.0, 0.5, 3.0])["r2"] > 0.99
        True
    """
    _require("sklearn", "scikit-learn", "probe")
    from sklearn.dummy import DummyRegressor
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import mean_absolute_error, r2_score
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float).reshape(-1)
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(f"X must have shape (n, d) with n = len(y) = {len(y)}; got {X.shape}")
    no_label = ~np.isfinite(y)
    no_embedding = ~np.isfinite(X).all(axis=1) & ~no_label
    keep = ~(no_label | no_embedding)
    n = int(keep.sum())
    if n < 2 * cv:
        raise ValueError(
            f"only {n} usable rows ({int(no_label.sum())} without a finite label, {int(no_embedding.sum())} without "
            f"a finite embedding); {cv}-fold cross-validation needs at least {2 * cv}"
        )
    X, y = X[keep], y[keep]
    folds = KFold(n_splits=cv, shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.asarray(alphas, dtype=float)))
    predicted = cross_val_predict(model, X, y, cv=folds)
    baseline = cross_val_predict(DummyRegressor(), X, y, cv=folds)
    alpha = float(model.fit(X, y)[-1].alpha_)
    return {
        "r2": float(r2_score(y, predicted)),
        "mae": float(mean_absolute_error(y, predicted)),
        "mae_mean_baseline": float(mean_absolute_error(y, baseline)),
        "alpha": alpha,
        "n": n,
        "n_dropped_label": int(no_label.sum()),
        "n_dropped_embedding": int(no_embedding.sum()),
    }


def probe_models(
    models: Mapping[str, Any],
    structures: Sequence[Any],
    properties: Mapping[str, Any] | None = None,
    *,
    structure_derived: bool = True,
    batch_size: int = 64,
    skip_invalid: bool = False,
    names: Sequence[str] | None = None,
    cv: int = 5,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    seed: int = 0,
) -> pd.DataFrame:
    """Linear probes of several models (or precomputed embeddings) on several properties of the same crystals.

    Args:
        models: Display name -> a matgl MEGNet, a registered name, a model folder, or an embedding array of shape
            ``(n_structures, d)`` computed beforehand.
        structures: The crystals (see :func:`~matgl_cdssl.data.read_structures`).
        properties: Property name -> values, shape ``(n_structures,)``; NaN where unknown (those crystals are left
            out for that property only and counted).
        structure_derived: Also probe ``density`` and ``volume_per_atom`` (:func:`structure_properties`), first.
        batch_size: See :func:`embed`.
        skip_invalid: See :func:`embed`; skipped crystals are left out of every probe and counted.
        names: See :func:`embed`.
        cv: See :func:`probe`.
        alphas: See :func:`probe`.
        seed: See :func:`probe`.

    Returns:
        A DataFrame with one row per (model, property) and the columns ``model``, ``property``, ``r2``, ``mae``,
        ``mae_mean_baseline``, ``alpha``, ``n``, ``n_dropped_label``, ``n_dropped_embedding``.

    Raises:
        ValueError: Properties of the wrong length, no property at all, or see :func:`embed` and :func:`probe`.
    """
    import pandas as pd

    from matgl_cdssl.data import read_structures

    read_names, structs = read_structures(structures)
    names = read_names if names is None else names
    targets: dict[str, np.ndarray] = structure_properties(structs) if structure_derived else {}
    for key, values in (properties or {}).items():
        values = np.asarray(values, dtype=float).reshape(-1)
        if len(values) != len(structs):
            raise ValueError(f"property {key!r} has {len(values)} values for {len(structs)} structures")
        targets[key] = values
    if not targets:
        raise ValueError("no property to probe: give properties or keep structure_derived=True")
    rows = []
    for name, model in models.items():
        if isinstance(model, np.ndarray):
            X = model
            if X.ndim != 2 or len(X) != len(structs):
                raise ValueError(f"embeddings of {name!r} have shape {X.shape}; expected ({len(structs)}, d)")
        else:
            X = embed(model, structs, batch_size=batch_size, skip_invalid=skip_invalid, names=names)
        for key, y in targets.items():
            result = probe(X, y, cv=cv, alphas=alphas, seed=seed)
            if result["n_dropped_label"]:
                logger.info("%s: left out %d crystal(s) without a value", key, result["n_dropped_label"])
            rows.append({"model": name, "property": key, **result})
    return pd.DataFrame(rows)


def format_probe_table(frame: pd.DataFrame, *, digits: int = 3) -> str:
    """A markdown table of :func:`probe_models`' results, grouped by property (in their order of appearance).

    Args:
        frame: The output of :func:`probe_models`.
        digits: Significant digits of R² and MAE.

    Returns:
        The table, as markdown text.
    """
    header = ["property", "model", "R²", "MAE", "MAE of the mean", "n", "left out"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 5) + "|"]
    order = {prop: i for i, prop in enumerate(frame["property"].unique())}
    for _, r in frame.sort_values("property", key=lambda col: col.map(order), kind="stable").iterrows():
        dropped = int(r["n_dropped_label"]) + int(r["n_dropped_embedding"])
        cells = [
            str(r["property"]),
            str(r["model"]),
            f"{r['r2']:.{digits}f}",
            f"{r['mae']:.{digits}g}",
            f"{r['mae_mean_baseline']:.{digits}g}",
            str(int(r["n"])),
            str(dropped),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- map -------------------------------------------------------------------------------------------------------
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
    _require("sklearn", "scikit-learn", "plot_map")
    _require("matplotlib", "matplotlib", "plot_map")
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


def _require(module: str, package: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{what} needs {package}: `pip install {package}`") from exc


# ---- command line ------------------------------------------------------------------------------------------------
def _add_source_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="*", type=Path, help="structure files (CIF, POSCAR, extxyz, or a CSV with CIFs)")
    p.add_argument("--sample", type=int, metavar="N", help="the first N crystals of the bundled sample instead")
    p.add_argument("--csv", type=Path, metavar="F", help="a CSV with a CIF column (and label columns) instead")
    p.add_argument("--cif-column", default="cif", help="CIF column of the CSV (default: cif)")
    p.add_argument("--id-column", help="id column of the CSV (default: material_id or id, else the row number)")
    p.add_argument("--model", default="CDSSL-MEGNet-MP", help="registered name or model folder")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--skip-invalid", action="store_true", help="give invalid crystals rows of NaN, warning")


def _read_source(args: argparse.Namespace, labels: Sequence[str] = ()) -> tuple[list[str], list[str], list, dict]:
    """``(ids, names, structures, labels)`` from the command's data source; labels are NaN where missing.

    ``ids`` label the output rows (material ids, CSV row ids or file paths); ``names`` name crystals in messages.
    """
    import pandas as pd

    from matgl_cdssl.data import load_sample, read_csv_structures, read_structures

    files = list(args.files or [])
    csv = args.csv
    if csv is None and len(files) == 1 and files[0].name.lower().endswith((".csv", ".csv.gz")):
        csv, files = files[0], []
    given = [bool(files), args.sample is not None, csv is not None]
    if sum(given) != 1:
        raise ValueError("give structure FILES, --sample N or --csv F (exactly one)")
    if args.sample is not None:
        sample = load_sample(args.sample)
        unknown = [k for k in labels if k not in sample.labels]
        if unknown:
            raise ValueError(f"the bundled sample has no label(s) {unknown}; its labels: {', '.join(sample.labels)}")
        return sample.material_ids, sample.material_ids, sample.structures, {k: sample.labels[k] for k in labels}
    if csv is not None:
        names, structures = read_csv_structures(csv, cif_column=args.cif_column, id_column=args.id_column)
        ids = [name[len(str(csv)) + 1 : -1] for name in names]
        values = {}
        if labels:
            frame = pd.read_csv(csv, usecols=lambda c: c in labels)
            unknown = [k for k in labels if k not in frame.columns]
            if unknown:
                raise ValueError(f"{csv}: no column(s) {unknown}")
            values = {k: pd.to_numeric(frame[k], errors="coerce").to_numpy(dtype=float) for k in labels}
        return ids, names, structures, values
    if labels:
        raise ValueError(f"label(s) {list(labels)} need --sample N or a CSV with those columns")
    names, structures = read_structures(files)
    return names, names, structures, {}


def add_parser(subparsers: Any) -> None:
    """Add ``cdssl embed`` and ``cdssl probe`` to the ``cdssl`` parser's subcommands."""
    p = subparsers.add_parser(
        "embed",
        help="graph-level embeddings of crystals (mean-pooled MEGNet block outputs)",
        description="Each row: mean over atoms of the final node features, mean over edges of the final edge "
        "features, and the final state features of MEGNet's message-passing blocks (no Set2Set readout). The output "
        "format follows OUT's suffix: .npy (array; ids in OUT with suffix .ids.txt), .npz (arrays 'embeddings' and "
        "'ids'), .csv or .parquet (an 'id' column and one column per feature; parquet needs pyarrow).",
    )
    _add_source_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="emb.npy, emb.npz, emb.csv or emb.parquet")
    p.set_defaults(func=embed_command)

    p = subparsers.add_parser(
        "probe",
        help="linear probe: how well ridge regression reads properties off the embeddings",
        description="Cross-validated ridge regression (StandardScaler + RidgeCV, KFold) from the embeddings to "
        "density and volume per atom (computed from the crystals) and to labels: with --sample, the sample's "
        "formation energy and band gap by default; with a CSV, the --labels columns. Crystals without a label are "
        "left out for that property only, and counted. Needs scikit-learn.",
    )
    _add_source_arguments(p)
    p.add_argument("--labels", nargs="+", metavar="COLUMN", help="label columns (CSV) or sample labels to probe")
    p.add_argument(
        "--baseline",
        choices=("random", "none"),
        default="random",
        help="also probe the same architecture at random initialisation (default: random)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation and of the folds")
    p.add_argument("--cv", type=int, default=5, help="cross-validation folds (default: 5)")
    p.add_argument("--out", type=Path, help="write the results as CSV")
    p.set_defaults(func=probe_command)


def _write_embeddings(path: Path, X: np.ndarray, ids: Sequence[str], columns: Sequence[str]) -> list[Path]:
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        np.save(path, X)
        ids_path = path.with_suffix(".ids.txt")
        ids_path.write_text("".join(f"{i}\n" for i in ids))
        return [path, ids_path]
    if suffix == ".npz":
        np.savez(path, embeddings=X, ids=np.asarray(ids, dtype=str))
        return [path]
    import pandas as pd

    frame = pd.concat([pd.DataFrame({"id": list(ids)}), pd.DataFrame(X, columns=list(columns))], axis=1)
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return [path]


def _check_out(path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix not in _OUT_FORMATS:
        raise ValueError(f"--out {path}: unknown format {suffix!r}; use one of {', '.join(_OUT_FORMATS)}")
    if suffix == ".parquet":
        for engine in ("pyarrow", "fastparquet"):
            try:
                __import__(engine)
                return
            except ImportError:
                pass
        raise ValueError(
            f"--out {path}: writing parquet needs pyarrow (`pip install pyarrow`); or write .npz or .csv, which "
            "also hold the ids"
        )


def embed_command(args: argparse.Namespace) -> int:
    """Run ``cdssl embed``.

    Side Effects:
        Writes the embeddings (and ids) to ``--out``; with ``.npy``, the ids go to a ``.ids.txt`` file beside it.
    """
    _check_out(args.out)
    ids, names, structures, _ = _read_source(args)
    model = _as_model(args.model)
    X = embed(model, structures, batch_size=args.batch_size, skip_invalid=args.skip_invalid, names=names)
    columns = embedding_columns(model)
    if len(columns) != X.shape[1]:
        columns = [f"e{i}" for i in range(X.shape[1])]
    written = _write_embeddings(args.out, X, ids, columns)
    n_nan = int((~np.isfinite(X).all(axis=1)).sum())
    skipped = f"; {n_nan} invalid crystal(s) have rows of NaN" if n_nan else ""
    print(f"embedded {len(X)} crystals with {args.model}: {X.shape[1]} values each{skipped}")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def probe_command(args: argparse.Namespace) -> int:
    """Run ``cdssl probe``: print a markdown table of R² and MAE per (model, property).

    Side Effects:
        Writes the results as CSV to ``--out`` when given.
    """
    labels = list(args.labels or (_SAMPLE_PROBE_LABELS if args.sample is not None else ()))
    _, names, structures, properties = _read_source(args, labels)
    model = _as_model(args.model)
    models: dict[str, Any] = {str(args.model): model}
    if args.baseline == "random":
        models[f"random init (seed {args.seed})"] = random_like(model, seed=args.seed)
    frame = probe_models(
        models,
        structures,
        properties,
        batch_size=args.batch_size,
        skip_invalid=args.skip_invalid,
        names=names,
        cv=args.cv,
        seed=args.seed,
    )
    print(format_probe_table(frame))
    first = frame.drop_duplicates("property")
    for _, r in first.iterrows():
        if r["n_dropped_label"]:
            print(f"{r['property']}: left out {int(r['n_dropped_label'])} crystal(s) without a value")
        if r["n_dropped_embedding"]:
            print(f"{r['property']}: left out {int(r['n_dropped_embedding'])} invalid crystal(s) (--skip-invalid)")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(args.out, index=False)
        print(f"wrote {args.out}")
    return 0


def add_map_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the map command (``cdssl plot map``): model, data source, ``--color``, ``--method``, ``--out``."""
    _add_source_arguments(parser)
    parser.add_argument(
        "--color",
        default="density",
        help="density, volume_per_atom, or a label (a sample label or a CSV column); default: density",
    )
    parser.add_argument("--method", choices=("umap", "pca"), default="umap", help="projection (default: umap)")
    parser.add_argument("--seed", type=int, default=0, help="seed of UMAP")
    parser.add_argument("--k", type=int, default=10, help="neighbours of the kNN correlation (default: 10)")
    parser.add_argument("--out", type=Path, required=True, help="PNG file")


def map_command(args: argparse.Namespace) -> int:
    """Run the map command: embed, project to 2-D, colour by ``--color``, save a PNG, print the kNN correlation.

    Side Effects:
        Writes the PNG to ``--out``.
    """
    derived = args.color in ("density", "volume_per_atom")
    _, names, structures, labels = _read_source(args, () if derived else (args.color,))
    color = structure_properties(structures)[args.color] if derived else labels[args.color]
    X = embed(args.model, structures, batch_size=args.batch_size, skip_invalid=args.skip_invalid, names=names)
    result = plot_map(
        X,
        color,
        args.out,
        method=args.method,
        label=PROPERTY_LABELS.get(args.color, args.color),
        seed=args.seed,
        k=args.k,
    )
    dropped = f" ({result['n_dropped']} left out: no value or invalid)" if result["n_dropped"] else ""
    print(
        f"{result['method'].upper()} map of {result['n']} crystals{dropped} coloured by {args.color}: kNN correlation "
        f"(k={result['k']}) {result['knn_correlation']:.3f} on the map, {result['knn_correlation_shuffled']:.3f} "
        f"with the values shuffled, {result['knn_correlation_embedding']:.3f} in the full embedding"
    )
    print(f"wrote {result['path']}")
    return 0
