"""Loading pretrained models by name, folder or matgl name, and registering ours with plain matgl.

The names, cards and shipped folders are :mod:`matgl_cdssl.hub._cards`. Loading by name works offline, verifies the
checksums, and converts the weights to the installed backend's message-passing convention.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from matgl_cdssl._backend import BACKEND, get_backend
from matgl_cdssl.hub._cards import (
    get_card,
    is_registered,
    known_names,
    looks_like_ours,
    matgl_copy,
    pretrained_folder,
    unknown_name,
)
from matgl_cdssl.hub._copy import new_like
from matgl_cdssl.hub._ensemble import Ensemble, is_ensemble
from matgl_cdssl.hub._io import CONFIG_FILE, load_folder, read_config
from matgl_cdssl.hub._safe_load import safe_load

if TYPE_CHECKING:
    from torch import nn

__all__ = ["MODEL_FILES", "load_model", "megnet_of", "register"]

logger = logging.getLogger(__name__)

MODEL_FILES = ("model.pt", "state.pt", "model.json")


def load_model(name_or_path: str | Path, *, fresh_readout: bool = True, **kwargs: Any) -> nn.Module:
    """Load a pretrained model by name, a CDSSL folder, or anything ``matgl.load_model`` accepts.

    Args:
        name_or_path: A registered name (see :func:`~matgl_cdssl.hub.list_models`), a model folder, an ensemble
            folder (:class:`~matgl_cdssl.hub.Ensemble`, from ``finetune(..., ensemble=K)``), or a matgl model name
            (those of :data:`~matgl_cdssl.hub.MATGL_COPIES` load the copy shipped with the package, readout and
            normaliser included).
        fresh_readout: For registered names: a freshly initialised readout (Set2Set and output MLP), which the
            pretext task never trained, drawn from torch's global RNG (so that seeding controls it as for a new model):
            ``new_like(model, weights="backbone")``.
        **kwargs: Passed to ``matgl.load_model`` for other names.

    Returns:
        A plain matgl model. Registered weights are verified (sha256) and converted to the installed backend.

    Raises:
        ValueError: an unknown or misspelt CDSSL name, with the known names and the closest match.
        RuntimeError: a corrupted shipped file.

    Example:
        >>> model = load_model("CDSSL-MEGNet-MP")
        >>> type(model).__name__, model.cutoff
        ('MEGNet', 4.0)
    """
    name = str(name_or_path)
    if is_registered(name):
        model = load_folder(pretrained_folder(name))
        return new_like(model, weights="backbone") if fresh_readout else model
    if matgl_copy(name) is not None:
        return load_folder(matgl_copy(name))
    if is_ensemble(name_or_path):
        return Ensemble.load(name_or_path)
    if Path(name_or_path).exists() or not looks_like_ours(name):
        return load_folder(name_or_path, **kwargs)
    raise unknown_name(name)


def megnet_of(model: str | Path | nn.Module) -> nn.Module:
    """The MEGNet of a model, a registered name or a folder; matgl's ``TransformedTargetModel`` unwrapped.

    matgl's own supervised models wrap their MEGNet with a target transformer; any other model is returned as it is.

    Args:
        model: A loaded model, or a name or folder for :func:`load_model` (its readout as saved; torch's global RNG is
            left as it was).

    Returns:
        The MEGNet whose blocks and readout make the (untransformed) prediction.
    """
    if isinstance(model, (str, Path)):
        with torch.random.fork_rng(devices=[]):  # a folder rebuilt from init_args would draw fresh weights first
            model = load_model(model, fresh_readout=False)
    return model.model if type(model).__name__ == "TransformedTargetModel" else model


# ---- registration with plain matgl ---------------------------------------------------------------------------
_HF_ORG = "materialyze"
_PATCHED = False
_RESOLVED: dict[str, Path] = {}  # registered name -> folder with weights in this backend's convention


def _matgl_cache() -> Path:
    from matgl.config import MATGL_CACHE

    return Path(MATGL_CACHE)


def _write_model_files(model: nn.Module, folder: Path) -> None:
    """Write matgl's three model files for ``model`` (already in this backend's convention) into ``folder``."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def register(names: list[str] | None = None) -> dict[str, str]:
    """Make plain ``matgl.load_model(name)`` load our pretrained models, offline. Registering twice is harmless.

    - matgl 2.2.x (DGL): the weights, converted to the DGL convention, are written to matgl's local cache of named
      models, ``~/.cache/matgl/<name>/``, which matgl 2.2.x reads when its online sources are unreachable. This
      lasts across processes.
    - matgl >= 3 (PyG): matgl resolves bare names on the Hugging Face Hub only. ``register()`` therefore hooks
      matgl's name resolution in this process (robust online and offline), and also writes the weights as a Hub
      cache entry (``~/.cache/matgl/models--materialyze--<name>``), which matgl uses in later processes when the
      Hub is unreachable. If a matgl 2.2.x registration exists in the same cache, that entry is not written, because
      matgl 2.2.x would read it first with the wrong message-passing convention; the hook still works.

    Args:
        names: Which models (all registered ones when None: every release and every family name).

    Returns:
        Name -> where it was registered.
    """
    get_backend()
    out: dict[str, str] = {}
    for name in names or known_names():
        folder = pretrained_folder(name)
        model = load_folder(folder)
        cache = _matgl_cache()
        hub_entry = cache / f"models--{_HF_ORG}--{name}"
        legacy = cache / name
        if BACKEND == "dgl":
            if not _is_current(legacy, model):
                _write_model_files(model, legacy)
                (legacy / CONFIG_FILE).write_text(json.dumps({**read_config(folder), "backend": "dgl"}, indent=2))
            if hub_entry.exists():
                warnings.warn(
                    f"removed {hub_entry}, a matgl>=3 registration of {name}: matgl 2.2.x would read it first with "
                    "the wrong message-passing convention. matgl>=3 sessions can call matgl_cdssl.register() again.",
                    stacklevel=2,
                )
                shutil.rmtree(hub_entry)
            out[name] = str(legacy)
        else:
            _RESOLVED[name] = folder
            if get_card(name).weights_backend != BACKEND:  # the hook must serve weights in this convention
                _RESOLVED[name] = cache / "cdssl" / BACKEND / name
                if not _is_current(_RESOLVED[name], model):
                    _RESOLVED[name].parent.mkdir(parents=True, exist_ok=True)
                    _write_model_files(model, _RESOLVED[name])
            _patch_matgl_loader()
            out[name] = "in-process hook on matgl.load_model"
            if (legacy / CONFIG_FILE).is_file():
                warnings.warn(
                    f"{legacy} holds a matgl 2.2.x registration of {name}; not writing a Hub cache entry that matgl "
                    "2.2.x would read with the wrong convention. Call matgl_cdssl.register() in each process instead.",
                    stacklevel=2,
                )
                continue
            snapshot = hub_entry / "snapshots" / ("0" * 40)
            if not _is_current(snapshot, model):
                snapshot.parent.mkdir(parents=True, exist_ok=True)
                _write_model_files(model, snapshot)
                (hub_entry / "refs").mkdir(exist_ok=True)
                (hub_entry / "refs" / "main").write_text("0" * 40)
            out[name] += f" and {snapshot}"
    return out


def _is_current(folder: Path, model: nn.Module) -> bool:
    """Whether ``folder`` already holds exactly these weights."""
    if not all((folder / f).is_file() for f in MODEL_FILES):
        return False
    state = safe_load(folder / "state.pt")
    current = model.state_dict()
    return state.keys() == current.keys() and all(torch.equal(state[k], current[k]) for k in current)


def _patch_matgl_loader() -> None:
    """Let matgl (>= 3) resolve registered names to the shipped folders, in this process."""
    global _PATCHED
    if _PATCHED:
        return
    import matgl.utils.io as matgl_io

    original = matgl_io._get_file_paths

    def _get_file_paths(path: Path, str_path: str | None = None, **kwargs: Any) -> dict[str, Path]:
        name = str_path if str_path is not None else str(path)
        if name in _RESOLVED and not Path(name).exists():
            return {fn: _RESOLVED[name] / fn for fn in MODEL_FILES}
        return original(path, str_path=str_path, **kwargs)

    matgl_io._get_file_paths = _get_file_paths
    _PATCHED = True
