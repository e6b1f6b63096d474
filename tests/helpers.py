"""Test helpers shared by the tests and the fixture scripts."""

from __future__ import annotations

from typing import Any

import torch

from matgl_cdssl.backend import get_backend


def graph_of(structure: Any, model: torch.nn.Module) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """matgl graph, lattice ``(1, 3, 3)`` and state attributes of one crystal, as matgl's converter makes them."""
    g, lat, state = get_backend().converter(model.element_types, model.cutoff).get_graph(structure)
    return g, torch.as_tensor(lat, dtype=torch.float32).reshape(1, 3, 3), torch.tensor(state, dtype=torch.float32)


def matgl_forward(model: torch.nn.Module, structure: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Final node features (forward hook on the last block) and the prediction of matgl's own ``forward``."""
    captured: dict[str, torch.Tensor] = {}
    hook = model.blocks[-1].register_forward_hook(lambda _m, _i, out: captured.update(node_feat=out[1].detach()))
    try:
        model.eval()
        with torch.no_grad():
            prediction = model.predict_structure(structure)
    finally:
        hook.remove()
    return captured["node_feat"], prediction.detach().reshape(-1)
