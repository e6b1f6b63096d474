"""One way to copy or re-create a model: :func:`new_like`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from torch import nn

__all__ = ["READOUT", "new_like"]

READOUT = ("node_s2s", "edge_s2s", "output_proj")
"""MEGNet's readout modules (Set2Set over nodes and edges, output MLP); everything else is the backbone."""


def new_like(
    model: nn.Module, *, weights: Literal["all", "backbone", "none"] = "all", seed: int | None = None
) -> nn.Module:
    """A new model of the same architecture, rebuilt from the constructor arguments matgl records (``_init_args``).

    ``copy.deepcopy`` fails on a model that holds tensors from a previous forward pass, and a rebuilt model is what
    ``matgl.load_model`` would give; this is the package's only way to copy or re-create a model.

    Args:
        model: A matgl model (MEGNet).
        weights: What to take from ``model``: ``"all"`` its weights (a copy), ``"backbone"`` everything but the
            readout (:data:`READOUT`, freshly initialised: finetuning a pretrained backbone), ``"none"`` nothing (the
            same architecture at random initialisation: training from scratch).
        seed: Seed of the fresh initialisation, drawn without touching torch's global random state; None draws from
            torch's global generator (so ``lightning.seed_everything`` controls it).

    Returns:
        The new model, on the CPU.

    Example:
        >>> from matgl.models import MEGNet
        >>> a, b = new_like(MEGNet(), weights="none", seed=0), new_like(MEGNet(), weights="none", seed=0)
        >>> all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
        True
    """
    if weights not in ("all", "backbone", "none"):
        raise ValueError(f"weights must be 'all', 'backbone' or 'none'; got {weights!r}")
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        new = type(model)(**model._init_args)
    if weights != "none":
        state = {k: v for k, v in model.state_dict().items() if weights == "all" or k.split(".")[0] not in READOUT}
        new.load_state_dict(state, strict=weights == "all")
    return new
