"""The optimiser and schedules of finetuning: backbone and readout rates, matgl's cosine decay, plateau halving."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from matgl_cdssl.hub import READOUT

if TYPE_CHECKING:
    from torch import nn

__all__ = ["cosine_schedule", "optimizer_for", "plateau_schedule", "set_state_width", "split_parameters"]


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split a MEGNet's parameters into ``(backbone, readout)``; the readout is :data:`READOUT`."""
    backbone, readout = [], []
    for name, parameter in model.named_parameters():
        (readout if name.split(".")[0] in READOUT else backbone).append(parameter)
    return backbone, readout


def set_state_width(model: nn.Module, width: int) -> nn.Module:
    """Give a MEGNet (with float state features) a state input of ``width`` values per crystal.

    MEGNet's state encoder reads matgl's default state, 2 zeros per crystal. A different width replaces the first
    layer of the state encoder by a freshly initialised one (the rest of the model, pretrained or not, is kept) and
    records the new width in the model's saved arguments, so that the model saves and loads with matgl.
    """
    first = model.state_encoder.layers[0]
    if first.in_features != width:
        model.state_encoder.layers[0] = type(first)(width, first.out_features, bias=first.bias is not None)
        model._init_args["dim_state_embedding"] = width
    return model


def optimizer_for(
    model: nn.Module,
    *,
    lr: float,
    backbone_lr: float | None = None,
    freeze_backbone: bool = False,
    head: nn.Module | None = None,
) -> torch.optim.Optimizer:
    """Adam as matgl builds it, with its own learning rate for the backbone, or with the backbone frozen.

    A pretext ``head`` (denoising during finetuning) trains with the readout's rate.
    """
    backbone, readout = split_parameters(model)
    readout = [*readout, *(head.parameters() if head is not None else [])]
    for parameter in backbone:
        parameter.requires_grad_(not freeze_backbone)
    groups = [{"params": readout, "lr": lr}]
    if not freeze_backbone:
        groups.append({"params": backbone, "lr": lr if backbone_lr is None else backbone_lr})
    return torch.optim.Adam(groups, lr=lr, eps=1e-8)


def cosine_schedule(optimizer: torch.optim.Optimizer, epochs: int, alpha: float = 0.01) -> Any:
    """Matgl's default schedule, per parameter group: cosine decay over ``epochs`` to ``alpha`` times each rate."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: alpha + (1 - alpha) * 0.5 * (1 + math.cos(math.pi * min(epoch, epochs) / epochs))
    )


def plateau_schedule(optimizer: torch.optim.Optimizer, patience: int, factor: float = 0.5) -> Any:
    """Every rate times ``factor`` after ``patience`` epochs without a better validation MAE (``ReduceLROnPlateau``)."""
    if int(patience) < 1:
        raise ValueError(f"lr_patience must be a positive number of epochs; got {patience!r}")
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=int(patience))
