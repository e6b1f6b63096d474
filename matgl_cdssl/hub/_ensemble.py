"""Ensembles: K finetuned models of one property, saved together, predicting a mean and a standard deviation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from matgl_cdssl.hub._io import load_folder

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["ENSEMBLE_FILE", "Ensemble", "is_ensemble"]

#: The file that marks a folder as an ensemble and lists its members' subfolders.
ENSEMBLE_FILE = "ensemble.json"


def is_ensemble(path: str | Path) -> bool:
    """Whether ``path`` is an ensemble folder written by :meth:`Ensemble.save`."""
    return (Path(path) / ENSEMBLE_FILE).is_file()


class Ensemble(nn.Module):
    """K matgl models that predict the same property, each finetuned from its own seed.

    The prediction is the members' mean; their standard deviation is the uncertainty
    (:func:`matgl_cdssl.apps.predict` with ``return_std=True``). Each member is a plain matgl model whose raw output is
    the property itself (a ``FinetuneResult.property_model()``), so every member also loads on its own with
    ``matgl.load_model``.

    Args:
        members: The models (at least one), with the same element types and cutoff.
        metadata: What to record in ``ensemble.json`` (target, seeds, each member's start, metrics, ...).
    """

    def __init__(self, members: Sequence[nn.Module], metadata: dict[str, Any] | None = None) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        first = members[0]
        for k, member in enumerate(members[1:], start=1):
            if tuple(member.element_types) != tuple(first.element_types) or float(member.cutoff) != float(first.cutoff):
                raise ValueError(f"ensemble member {k} has other element types or another cutoff than member 0")
        self.members = nn.ModuleList(members)
        self.metadata = dict(metadata or {})

    @property
    def element_types(self) -> tuple[str, ...]:
        """The members' element types."""
        return tuple(self.members[0].element_types)

    @property
    def cutoff(self) -> float:
        """The members' neighbour cutoff, in Å."""
        return float(self.members[0].cutoff)

    def __len__(self) -> int:
        return len(self.members)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Every member's output, stacked: shape ``(K, ...)``."""
        return torch.stack([member(*args, **kwargs) for member in self.members])

    def predict_structure(self, structure: Any, **kwargs: Any) -> torch.Tensor:
        """The members' mean prediction for one crystal (matgl's ``predict_structure`` of each member)."""
        return torch.stack([member.predict_structure(structure, **kwargs) for member in self.members]).mean(0)

    def save(self, path: str | Path) -> Path:
        """Write ``ensemble.json`` and one matgl model folder per member (``member_0/``, ...) into ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        folders = [f"member_{k}" for k in range(len(self.members))]
        for folder, member in zip(folders, self.members, strict=True):
            member.save(path / folder)
        info = {"format": 1, "members": folders, **self.metadata}
        (path / ENSEMBLE_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Ensemble:
        """Read an ensemble folder written by :meth:`save`.

        Raises:
            ValueError: ``path`` is not an ensemble folder, or a member folder is missing.
        """
        path = Path(path)
        if not is_ensemble(path):
            raise ValueError(f"{path} is not an ensemble folder (no {ENSEMBLE_FILE})")
        info = json.loads((path / ENSEMBLE_FILE).read_text())
        missing = [folder for folder in info["members"] if not (path / folder).is_dir()]
        if missing:
            raise ValueError(f"{path}: ensemble member folder(s) {missing} are missing")
        members = [load_folder(path / folder) for folder in info["members"]]
        return cls(members, {k: v for k, v in info.items() if k not in ("format", "members")})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.members)} x {type(self.members[0]).__name__})"
