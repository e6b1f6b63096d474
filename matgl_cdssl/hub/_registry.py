"""Named pretrained weights: cards, listing, loading by name, and registration with plain matgl.

Each pretrained model ships inside the package as a folder under ``matgl_cdssl/pretrained/<name>/``: matgl's
saved-model files, ``cdssl.json``, ``card.json`` (the :class:`PretrainedCard`, with the sha256 of every file) and a
``README.md`` model card generated from it. Loading by name works offline, verifies the checksums, and converts the
weights to the installed backend's message-passing convention.

Names are versioned the way matgl names its weights (``MEGNet-MP-2018.6.1-Eform``): every release has a name of its
own, ``<family>-<YYYY.MM>`` (``CDSSL-MEGNet-MP-2026.11``), which keeps loading the same weights forever, so that
published results stay reproducible; the family name alone (``CDSSL-MEGNet-MP``) resolves to its newest release.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import json
import logging
import re
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from matgl_cdssl._backend import BACKEND, get_backend
from matgl_cdssl.hub._copy import new_like
from matgl_cdssl.hub._ensemble import Ensemble, is_ensemble
from matgl_cdssl.hub._io import CONFIG_FILE, load_folder, read_config

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "MATGL_COPIES",
    "PretrainedCard",
    "get_card",
    "list_models",
    "load_model",
    "matgl_copy",
    "pretrained_folder",
    "register",
    "register_pretrained",
    "resolve",
    "source_folder",
]

logger = logging.getLogger(__name__)

CARD_FILE = "card.json"
MODEL_FILES = ("model.pt", "state.pt", "model.json")


@dataclass(frozen=True)
class PretrainedCard:
    """Registry entry and model card of a named pretrained model.

    Attributes:
        name: The model's name, e.g. ``CDSSL-MEGNet-MP``.
        description: One line, shown by :func:`list_models`.
        architecture: The matgl architecture.
        weights_backend: The message-passing convention of the shipped weights (``"dgl"`` or ``"pyg"``).
        files: File name -> sha256 of every shipped file that loading reads.
        sigma: Noise level of the pretraining, in Å.
        cutoff: Neighbour cutoff, in Å.
        dataset: What it was pretrained on.
        license: Licence of the weights and the data they derive from.
        citation: References to cite.
        metrics: Final pretext metrics and downstream results.
        training: Epochs, wall time, hardware and the command that reproduces it.
        notes: Anything else a user should know.
        changes: What changed against the family's previous release.
    """

    name: str
    description: str
    architecture: str
    weights_backend: str
    files: dict[str, str]
    sigma: float
    cutoff: float
    dataset: str
    license: str
    citation: tuple[str, ...] = ()
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    changes: str = ""

    @property
    def family(self) -> str:
        """The name without its version (``CDSSL-MEGNet-MP`` for ``CDSSL-MEGNet-MP-2026.11``)."""
        match = _VERSIONED.match(self.name)
        return match["family"] if match else self.name

    @property
    def version(self) -> str:
        """The release, ``YYYY.MM`` (empty for an unversioned name)."""
        match = _VERSIONED.match(self.name)
        return match["version"] if match else ""

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, as stored in ``card.json``."""
        d = asdict(self)
        d["citation"] = list(self.citation)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainedCard:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**d, "citation": tuple(d.get("citation", ()))})


#: matgl's own pretrained models of which a copy ships inside the package (``benchmark_data/``): loading one of these
#: names reads the copy, offline, on either backend, instead of asking matgl to download it.
MATGL_COPIES = ("MEGNet-MP-2018.6.1-Eform",)


def matgl_copy(name: str | Path) -> Path | None:
    """The shipped copy of a matgl model named in :data:`MATGL_COPIES`, else None."""
    if str(name) not in MATGL_COPIES:
        return None
    return Path(str(files("matgl_cdssl").joinpath(f"benchmark_data/{name}")))


_VERSIONED = re.compile(r"^(?P<family>.+)-(?P<version>\d{4}\.\d{1,2}(?:\.\d+)*)$")
_REGISTRY: dict[str, PretrainedCard] = {}
_FOLDERS: dict[str, Path] = {}


def _newest() -> dict[str, str]:
    """Family name -> its newest release, for every family with a versioned release."""
    releases: dict[str, list[PretrainedCard]] = {}
    for card in _REGISTRY.values():
        if card.version:
            releases.setdefault(card.family, []).append(card)
    return {
        family: max(cards, key=lambda c: tuple(int(p) for p in c.version.split("."))).name
        for family, cards in releases.items()
        if family not in _REGISTRY
    }


def resolve(name: str | Path) -> str:
    """The release a name stands for: itself for a release, the newest release for a family name.

    Example:
        >>> resolve("CDSSL-MEGNet-MP") == max(n for n in list_models() if n.startswith("CDSSL-MEGNet-MP-"))
        True
    """
    name = str(name)
    return name if name in _REGISTRY else _newest().get(name, name)


def _known_names() -> list[str]:
    return sorted({*_REGISTRY, *_newest()})


def register_pretrained(card: PretrainedCard, folder: str | Path) -> None:
    """Add a named model to the registry (a warning if the name was already registered)."""
    if card.name in _REGISTRY:
        warnings.warn(f"overwriting the registered pretrained model {card.name!r}", stacklevel=2)
    _REGISTRY[card.name] = card
    _FOLDERS[card.name] = Path(folder)


def _register_shipped() -> None:
    root = Path(str(files("matgl_cdssl").joinpath("pretrained")))
    for card_file in sorted(root.glob(f"*/{CARD_FILE}")):
        card = PretrainedCard.from_dict(json.loads(card_file.read_text()))
        _REGISTRY[card.name] = card
        _FOLDERS[card.name] = card_file.parent


def list_models(pattern: str = "*") -> dict[str, str]:
    """Names of the registered pretrained models matching a glob pattern, with their one-line descriptions.

    Every release is listed under its versioned name, and each family name with the release it resolves to.

    Example:
        >>> "CDSSL-MEGNet-MP" in list_models() and "CDSSL-MEGNet-MP-2026.11" in list_models()
        True
    """
    newest = _newest()
    out = {}
    for name in _known_names():
        if not fnmatch.fnmatch(name, pattern):
            continue
        if name in newest:
            out[name] = f"the newest release, {newest[name]}: {_REGISTRY[newest[name]].description}"
        else:
            out[name] = _REGISTRY[name].description
    return out


def _unknown(name: str) -> ValueError:
    known = _known_names()
    lowered = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    if name.lower() in lowered and lowered[name.lower()] not in close:
        close.insert(0, lowered[name.lower()])
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(
        f"Unknown pretrained model {name!r}.{hint} Known models: {', '.join(known)} (see matgl_cdssl.list_models())."
    )


def _looks_like_ours(name: str) -> bool:
    return name.lower().startswith("cdssl") or bool(difflib.get_close_matches(name, _known_names(), cutoff=0.8))


def get_card(name: str) -> PretrainedCard:
    """The card of a registered model (of the newest release, for a family name).

    Raises:
        ValueError: unknown name, listing the known names and the closest matches.
    """
    release = resolve(name)
    if release not in _REGISTRY:
        raise _unknown(name)
    return _REGISTRY[release]


def pretrained_folder(name: str, *, verify: bool = True) -> Path:
    """The shipped folder of a registered model, after checking the sha256 of its files.

    Raises:
        ValueError: unknown name.
        RuntimeError: a missing or corrupted file.
    """
    card = get_card(name)
    folder = _FOLDERS[card.name]
    if verify:
        for fname, expected in card.files.items():
            path = folder / fname
            if not path.is_file():
                raise RuntimeError(f"{name}: {path} is missing; reinstall matgl-cdssl")
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != expected:
                raise RuntimeError(
                    f"{name}: checksum mismatch for {path} (sha256 {digest}, expected {expected}); the file is "
                    "corrupted or was modified: reinstall matgl-cdssl"
                )
    return folder


def source_folder(name_or_path: str | Path) -> Path:
    """The folder behind a registered name (checksums verified) or a shipped matgl copy, or the path itself."""
    if resolve(name_or_path) in _REGISTRY:
        return pretrained_folder(str(name_or_path))
    return matgl_copy(name_or_path) or Path(name_or_path)


def load_model(name_or_path: str | Path, *, fresh_readout: bool = True, **kwargs: Any) -> nn.Module:
    """Load a pretrained model by name, a CDSSL folder, or anything ``matgl.load_model`` accepts.

    Args:
        name_or_path: A registered name (see :func:`list_models`), a model folder, an ensemble folder
            (:class:`~matgl_cdssl.hub.Ensemble`, from ``finetune(..., ensemble=K)``), or a matgl model name (those of
            :data:`MATGL_COPIES` load the copy shipped with the package, readout and normaliser included).
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
    if resolve(name) in _REGISTRY:
        model = load_folder(pretrained_folder(name))
        return new_like(model, weights="backbone") if fresh_readout else model
    if matgl_copy(name) is not None:
        return load_folder(matgl_copy(name))
    if is_ensemble(name_or_path):
        return Ensemble.load(name_or_path)
    if Path(name_or_path).exists() or not _looks_like_ours(name):
        return load_folder(name_or_path, **kwargs)
    raise _unknown(name)


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
    for name in names or _known_names():
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
    state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
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


_register_shipped()
