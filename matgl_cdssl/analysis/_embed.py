r"""Graph-level embeddings of crystals: what MEGNet's message-passing blocks produce, pooled with means.

.. math::

    z(G) = \Big[\tfrac{1}{|V|}\textstyle\sum_{v} h_v \;\Big\Vert\; \tfrac{1}{|E|}\sum_{e} h_e \;\Big\Vert\; u\Big],

the mean over atoms of the final node features, the mean over edges of the final edge features and the final
state features, concatenated (in that order). These are the outputs of :func:`~matgl_cdssl.method.encode`, which
runs MEGNet's embedding, encoders and blocks; the edge input is the model's own bond expansion of the bond lengths,
exactly as in MEGNet's forward pass. MEGNet's Set2Set readout and output MLP are *not* used: the CDSSL pretext task
never trains them. With matgl's default MEGNet the embedding has 32 + 32 + 32 = 96 values.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from matgl_cdssl._backend import get_backend
from matgl_cdssl.data import build_dataset, read_structures
from matgl_cdssl.hub import megnet_of
from matgl_cdssl.method import bond_distances, encode

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["as_model", "embed", "embedding_columns"]


def as_model(model: Any) -> nn.Module:
    """A matgl MEGNet from a model, a registered name or a folder (matgl's ``TransformedTargetModel`` unwrapped)."""
    model = megnet_of(model)  # a name or folder with its readout as saved: torch's global RNG is left alone
    if not isinstance(model, nn.Module) or not all(
        hasattr(model, a) for a in ("embedding", "blocks", "bond_expansion", "element_types", "cutoff")
    ):
        raise ValueError(
            f"expected a matgl MEGNet, a registered name (e.g. 'CDSSL-MEGNet-MP') or a model folder; got "
            f"{type(model).__name__}"
        )
    return model


def _last_linear_width(module: nn.Module) -> int | None:
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
    conv = as_model(model).blocks[-1].conv
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
    message-passing blocks (:func:`~matgl_cdssl.method.encode`), not of its Set2Set readout, which CDSSL never
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
        ValueError: An invalid crystal (named, with the reason: unknown element, overlapping atoms, no edge at
            all within the cutoff, ...) unless ``skip_invalid``; no usable crystal at all; or a bad ``model``,
            ``batch_size`` or ``names``. A crystal in which only some atoms have no neighbour within the cutoff is
            embedded (those atoms receive no messages, as in matgl's ``predict_structure``), with one warning that
            counts such crystals.

    Example:
        >>> from matgl_cdssl import load_sample
        >>> embed("CDSSL-MEGNet-MP", load_sample(3).structures).shape
        (3, 96)
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    model = as_model(model)
    read_names, structs = read_structures(structures)  # file paths name their crystals
    dataset, _, skipped = build_dataset(
        structs,
        element_types=model.element_types,
        cutoff=model.cutoff,
        labels={"row": list(range(len(structs)))},  # the first label is the one matgl's collate batches
        skip_invalid=True,
        names=read_names if names is None else names,
        log_skips=False,  # reported below, once, as an error or a warning with every name
        allow_isolated=True,  # as matgl's forward: an atom without neighbours receives no messages
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
    total = torch.zeros(n, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, index, x)
    count = torch.bincount(index, minlength=n).clamp_min(1).to(x.dtype)
    return total / count[:, None]
