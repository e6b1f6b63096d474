"""Saving and loading CDSSL-pretrained MEGNets, and moving their weights between matgl's backends.

A CDSSL model folder is matgl's own saved-model folder (``model.pt``, ``state.pt``, ``model.json``), so
``matgl.load_model(folder)`` opens it on the backend that wrote it, plus files of ours next to it:

- ``cdssl.json``: how it was pretrained (sigma, cutoff, data size, epochs, final metrics), and which backend and
  message-passing convention its weights use;
- ``cdssl_head.pt``: the pretext head's weights, needed only to continue pretraining;
- ``skipped.csv``: the crystals left out of pretraining (``skip_invalid``), with their ids and the reason, when any
  were (``model.json`` stays small: it carries ``cdssl.json``'s content, not this list).

:func:`load_folder` reads ``cdssl.json`` and converts the weights when they were written by the other backend.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from matgl_cdssl._backend import AGGREGATION_SIDE, BACKEND, get_backend, matgl_version, package_version
from matgl_cdssl.hub._safe_load import check_model_files, safe_load
from matgl_cdssl.method import make_head

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from torch import nn

__all__ = [
    "CONFIG_FILE",
    "HEAD_FILE",
    "SKIPPED_FILE",
    "convert_weights",
    "load_folder",
    "load_head",
    "read_config",
    "read_skipped",
    "save_pretrained",
]

logger = logging.getLogger(__name__)

CONFIG_FILE = "cdssl.json"
HEAD_FILE = "cdssl_head.pt"
SKIPPED_FILE = "skipped.csv"
_ID = re.compile(r"\[([^\[\]]+)\]$")
_EDGE_FUNC_KEY = re.compile(r"^(?P<prefix>(.*\.)?blocks\.\d+\.conv\.)edge_func\.layers\.0\.weight$")


def convert_weights(state_dict: Mapping[str, torch.Tensor], to: str) -> dict[str, torch.Tensor]:
    """Convert a MEGNet state dict to the message-passing convention of the other backend.

    matgl 2.2.x (DGL) aggregates each edge into its destination atom, matgl >= 3 (PyG) into its source atom. The
    parameter names are identical; the first layer of each block's edge update, which reads
    ``[v_src, v_dst, e, u]``, must have its ``v_src`` and ``v_dst`` column blocks swapped. With that swap both
    backends give the same outputs.

    Args:
        state_dict: A MEGNet state dict (keys may carry a prefix such as ``model.``) in the convention of the
            backend other than ``to``.
        to: ``"dgl"`` or ``"pyg"``, the backend the weights are for.

    Returns:
        A new state dict; the input is not modified.

    Raises:
        ValueError: ``to`` is not a backend, or ``state_dict`` has no MEGNet blocks.

    Example:
        >>> from matgl.models import MEGNet
        >>> sd = MEGNet().state_dict()
        >>> back = convert_weights(convert_weights(sd, to="dgl"), to="pyg")
        >>> all(torch.equal(sd[k], back[k]) for k in sd)
        True
    """
    if to not in AGGREGATION_SIDE:
        raise ValueError(f"to must be one of {sorted(AGGREGATION_SIDE)}; got {to!r}")
    out = dict(state_dict)
    n_converted = 0
    for key, weight in state_dict.items():
        match = _EDGE_FUNC_KEY.match(key)
        if match is None:
            continue
        node_weight = state_dict[f"{match['prefix']}node_func.layers.0.weight"]
        d_node = weight.shape[1] - node_weight.shape[1]  # edge input is [v, v, e, u]; node input is [v, e, u]
        out[key] = torch.cat([weight[:, d_node : 2 * d_node], weight[:, :d_node], weight[:, 2 * d_node :]], dim=1)
        n_converted += 1
    if n_converted == 0:
        raise ValueError("state_dict has no MEGNet block weights (blocks.<i>.conv.edge_func.layers.0.weight)")
    return out


def save_pretrained(
    model: nn.Module,
    path: str | Path,
    *,
    head: nn.Module | None = None,
    config: dict[str, Any] | None = None,
    skipped: Sequence[tuple[str, str]] = (),
) -> Path:
    """Save a pretrained MEGNet in matgl's folder format, with the CDSSL config and the pretext head.

    Args:
        model: The MEGNet.
        path: Folder to write (created if needed).
        head: The pretext head, saved to ``cdssl_head.pt``.
        config: Pretraining details, merged into ``cdssl.json`` (and the ``metadata`` of matgl's ``model.json``).
        skipped: ``(name, reason)`` of each crystal left out of pretraining, written to ``skipped.csv`` with the id
            in the name (``path[id]`` gives ``id``); ``cdssl.json`` records only their number.

    Returns:
        The folder.
    """
    path = Path(path)
    cfg = {
        "format_version": 1,
        "matgl_cdssl_version": package_version(),
        "backend": BACKEND,
        "matgl_version": matgl_version(),
        "aggregation": AGGREGATION_SIDE[BACKEND],
        **(config or {}),
        "n_skipped": len(skipped),
    }
    if skipped:
        cfg["skipped_file"] = SKIPPED_FILE
    model.save(path, metadata={"cdssl": cfg})
    if skipped:
        with (path / SKIPPED_FILE).open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "name", "reason"])
            for name, reason in skipped:
                match = _ID.search(str(name))
                writer.writerow([match.group(1) if match else str(name), str(name), str(reason)])
    if head is not None:
        torch.save(head.state_dict(), path / HEAD_FILE)
        cfg["has_head"] = True
    (path / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, default=str) + "\n")
    return path


def read_skipped(path: str | Path) -> list[dict[str, str]]:
    """The crystals left out of a model's pretraining (``skipped.csv``): ``{"id", "name", "reason"}`` each."""
    file = Path(path) / SKIPPED_FILE
    if not file.is_file():
        return []
    with file.open(newline="") as f:
        return list(csv.DictReader(f))


def read_config(path: str | Path) -> dict[str, Any]:
    """Read ``cdssl.json`` of a CDSSL model folder."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise ValueError(f"{path} is not a CDSSL model folder (no {CONFIG_FILE})")
    return json.loads(file.read_text())


def load_folder(name_or_path: str | Path, **kwargs: Any) -> nn.Module:
    """Load a CDSSL-pretrained MEGNet from a folder, or anything else through ``matgl.load_model``.

    A CDSSL folder written by the other backend has its weights converted (:func:`convert_weights`). The
    returned object is a plain matgl MEGNet; its Set2Set readout and output MLP were not trained by the pretext
    task. A matgl 2.x ``TransformedTargetModel`` folder of a MEGNet (such as matgl's own ``MEGNet-MP-2018.6.1-Eform``,
    saved from matgl 2.x's DGL line) loads on both lines: matgl 2.2.x opens it itself; on matgl >= 3 the MEGNet is
    rebuilt from its ``init_args`` with its weights converted from the DGL convention, and wrapped again with its
    target transformer (:func:`_load_transformed_megnet`). Any other path or name is passed to ``matgl.load_model``
    unchanged, so matgl's own models keep working. Every file unpickled is first read with
    :func:`~matgl_cdssl.hub._safe_load.safe_load`, so a folder whose files would run code is refused.

    Args:
        name_or_path: A CDSSL model folder, or any path or name ``matgl.load_model`` understands.
        **kwargs: Passed to ``matgl.load_model`` for non-CDSSL input.

    Returns:
        The model.

    Raises:
        pickle.UnpicklingError: ``model.pt`` or ``state.pt`` asks for anything but tensors, numpy arrays and matgl's
            target transformers (code it would run), naming the file.
    """
    get_backend()
    import matgl

    path = Path(name_or_path)
    if BACKEND == "pyg" and _is_transformed_megnet(path):
        return _load_transformed_megnet(path)
    if not (path / CONFIG_FILE).is_file():
        check_model_files(name_or_path, **kwargs)
        return matgl.load_model(name_or_path, **kwargs)
    cfg = read_config(path)
    if cfg.get("backend", BACKEND) == BACKEND:
        check_model_files(path)
        return matgl.load_model(path)
    init_args = safe_load(path / "model.pt")
    model = get_backend().megnet_class(**init_args)
    state = safe_load(path / "state.pt")
    model.load_state_dict(convert_weights(state, to=BACKEND))
    logger.info(
        "Converted %s weights written by matgl %s to the %s convention", path, cfg.get("matgl_version"), BACKEND
    )
    return model


def _is_transformed_megnet(path: Path) -> bool:
    """Whether ``path`` is a saved matgl 2.x ``TransformedTargetModel`` around a MEGNet."""
    try:
        info = json.loads((path / "model.json").read_text())
    except (OSError, ValueError):
        return False
    inner = (info.get("kwargs") or {}).get("model") or {}
    return info.get("@class") == "TransformedTargetModel" and inner.get("@class") == "MEGNet"


def _load_transformed_megnet(path: Path) -> nn.Module:
    """A matgl 2.x (DGL) ``TransformedTargetModel`` folder of a MEGNet, rebuilt on matgl >= 3 (PyG).

    The MEGNet is built from its ``init_args`` (``None`` entries take matgl's defaults, as matgl 2.x did), its
    ``model.``-prefixed weights are converted from the DGL convention (:func:`convert_weights`), and it is wrapped in
    matgl's ``TransformedTargetModel`` with the saved target transformer, so that predictions are matgl 2.2.x's.
    """
    from matgl.models import TransformedTargetModel

    saved = safe_load(path / "model.pt")  # holds matgl's Normalizer
    init_args = {k: v for k, v in saved["model"]["init_args"].items() if v is not None}
    model = get_backend().megnet_class(**init_args)
    state = safe_load(path / "state.pt")
    inner = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    model.load_state_dict(convert_weights(inner, to="pyg"))
    logger.info("Rebuilt %s (a matgl 2.x TransformedTargetModel) with weights converted to the PyG convention", path)
    return TransformedTargetModel(model=model, target_transformer=saved["target_transformer"])


def load_head(path: str | Path, model: nn.Module) -> nn.Module:
    """Rebuild the pretext head saved in a CDSSL folder, for continued pretraining."""
    path = Path(path)
    cfg = read_config(path)
    head = make_head(model, tuple(cfg.get("head_hidden", (64,))))
    if (path / HEAD_FILE).is_file():
        head.load_state_dict(safe_load(path / HEAD_FILE))
    else:
        logger.warning("%s has no %s; the pretext head starts from random weights", path, HEAD_FILE)
    return head
