"""Reading the torch files of a model folder without running code that they may hold.

A ``.pt`` file is a pickle, and unpickling can call any importable function: a model folder someone sends you could
run code the moment it is loaded. :func:`safe_load` reads such a file with an unpickler that builds only what a model
folder legitimately holds, the globals of :data:`ALLOWED_GLOBALS` (tensors and what torch's own ``weights_only``
loading allows, numpy arrays and scalars, matgl's target transformers such as ``Normalizer``), and refuses anything
else with a ``pickle.UnpicklingError`` that names the file and what it asked for. It works alike on torch 2.2
(matgl 2.2.x, which has no ``torch.serialization.add_safe_globals``) and on newer torch, through
``torch.load(pickle_module=...)``.

Every load of a file a user may pass goes through it: the files of CDSSL, finetuned, ensemble and matgl model folders
(:func:`check_model_files` checks them before ``matgl.load_model`` opens them, since matgl 2.2.x unpickles without
restriction) and the pretext head. Out of scope: Lightning's own loading of a training checkpoint (``--resume``,
``ckpt_path``, and the best checkpoint of a run restored at its end), which unpickles without restriction; resume only
from run folders you wrote. Also out of scope: graph caches (``graph_cache=``), which matgl's datasets read.
"""

from __future__ import annotations

import pickle
import types
from pathlib import Path
from typing import Any

import torch
from torch._weights_only_unpickler import _get_allowed_globals

from matgl_cdssl._backend import BACKEND, get_backend

__all__ = ["ALLOWED_GLOBALS", "check_model_files", "safe_load"]

#: The globals, besides those of torch's ``weights_only`` loading (tensors, storages, dtypes, ``OrderedDict``), that a
#: model file may ask for: numpy arrays and scalars (numpy 1 and 2 spell their module differently), the bytes helper
#: of pickle protocol 2, and matgl's target transformers (``model.pt`` of a ``TransformedTargetModel``).
ALLOWED_GLOBALS = frozenset(
    {
        "_codecs.encode",
        "numpy.dtype",
        "numpy.ndarray",
        "numpy.core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray._reconstruct",
        "numpy._core.multiarray.scalar",
        "matgl.data.transformer.LogTransformer",
        "matgl.data.transformer.Normalizer",
    }
)

#: The files of a matgl model folder that ``matgl.load_model`` unpickles.
_PICKLED = ("model.pt", "state.pt")


class _Refused(pickle.UnpicklingError):
    """A global that is not allowed; :func:`safe_load` turns it into an error naming the file."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _Unpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only allowed globals, so nothing else can be called while unpickling."""

    def find_class(self, module: str, name: str) -> Any:
        key = f"{module}.{name}"
        torch_allowed = _get_allowed_globals()  # torch's own weights_only allow-list, as the installed torch has it
        if key in torch_allowed:
            return torch_allowed[key]
        if key in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise _Refused(key)


def _load(file: Any, **kwargs: Any) -> Any:
    return _Unpickler(file, **kwargs).load()


#: What ``torch.load`` takes as ``pickle_module``: its ``Unpickler`` and ``load``.
_RESTRICTED_PICKLE = types.ModuleType("matgl_cdssl_restricted_pickle")
_RESTRICTED_PICKLE.Unpickler = _Unpickler  # type: ignore[attr-defined]
_RESTRICTED_PICKLE.load = _load  # type: ignore[attr-defined]


def safe_load(file: str | Path, *, map_location: Any = "cpu") -> Any:
    """``torch.load`` of a file that may come from anyone: it builds only what :data:`ALLOWED_GLOBALS` allows.

    Args:
        file: A file written by ``torch.save``.
        map_location: As for ``torch.load``.

    Returns:
        What the file holds.

    Raises:
        pickle.UnpicklingError: the file asks for any other global (a function it would call, say); nothing it holds
            was run. The message names the file and the global.
    """
    try:
        return torch.load(file, map_location=map_location, pickle_module=_RESTRICTED_PICKLE, weights_only=False)
    except _Refused as exc:
        raise pickle.UnpicklingError(
            f"{file}: refusing to load it: it asks for {exc.name!r}, which a model file does not hold (allowed: "
            "tensors, numpy arrays and matgl's target transformers). Unpickling it could run arbitrary code; load "
            "model files only from sources you trust."
        ) from None


def check_model_files(name_or_path: str | Path, **kwargs: Any) -> None:
    """Check with :func:`safe_load` the files that ``matgl.load_model(name_or_path, **kwargs)`` would unpickle.

    A local model folder is checked on both matgl lines (matgl >= 4.1 restricts its own loading too, but fails with a
    less clear error). On matgl 2.2.x, which unpickles without restriction, a name that matgl resolves itself (a
    Hugging Face repo id, one of its pretrained models) is resolved by matgl's own lookup (which downloads it) and its
    files are checked as well; if that lookup fails, ``matgl.load_model`` is left to report it as it does.

    Raises:
        pickle.UnpicklingError: a file asks for a global that :func:`safe_load` does not allow.
    """
    folder = Path(name_or_path)
    if all((folder / name).is_file() for name in _PICKLED):
        files = {name: folder / name for name in _PICKLED}
    elif BACKEND == "dgl":
        get_backend()
        import matgl.utils.io as matgl_io

        try:
            files = matgl_io._get_file_paths(folder, str_path=str(name_or_path), **kwargs)
        except Exception:  # matgl.load_model raises its own error for a name it cannot resolve
            return
    else:
        return  # matgl >= 4.1 resolves and loads the name with weights_only=True and its own allow-list
    for name in _PICKLED:
        safe_load(files[name])
