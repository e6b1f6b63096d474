"""Linear probes: how well ridge regression reads a property off embeddings (needs scikit-learn)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from matgl_cdssl.analysis._embed import embed
from matgl_cdssl.data import read_structures

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import pandas as pd

__all__ = ["DEFAULT_ALPHAS", "format_probe_table", "probe", "probe_models", "require", "structure_properties"]

logger = logging.getLogger(__name__)

#: Ridge penalties tried by :func:`probe` (chosen inside each training fold by efficient leave-one-out).
DEFAULT_ALPHAS: np.ndarray = np.logspace(-3, 3, 13)


def require(module: str, package: str, what: str) -> Any:
    """Import an optional dependency, or raise an ``ImportError`` that says how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{what} needs {package}: `pip install {package}`") from exc


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
    _, structs = read_structures(structures)
    return {
        "density": np.array([float(s.density) for s in structs]),
        "volume_per_atom": np.array([s.volume / len(s) for s in structs]),
    }


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
    require("sklearn", "scikit-learn", "probe")
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
