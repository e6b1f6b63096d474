"""Named pretrained weights: cards, names, listing and the shipped folders.

Each pretrained model ships inside the package as a folder under ``matgl_cdssl/pretrained/<name>/``: matgl's
saved-model files, ``cdssl.json``, ``card.json`` (the :class:`PretrainedCard`, with the sha256 of every file) and a
``README.md`` model card generated from it. :func:`pretrained_folder` verifies the checksums.

Names are versioned the way matgl names its weights (``MEGNet-MP-2018.6.1-Eform``): every release has a name of its
own, ``<family>-<YYYY.MM>`` (``CDSSL-MEGNet-MP-2026.11``), which keeps loading the same weights forever, so that
published results stay reproducible; the family name alone (``CDSSL-MEGNet-MP``) resolves to its newest release.

Loading by name and registration with plain matgl are :mod:`matgl_cdssl.hub._registry`.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import json
import re
import warnings
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

__all__ = [
    "CARD_FILE",
    "MATGL_COPIES",
    "MATGL_LABELS",
    "PretrainedCard",
    "get_card",
    "is_registered",
    "known_names",
    "labels_seen",
    "list_models",
    "looks_like_ours",
    "matgl_copy",
    "pretrained_folder",
    "register_pretrained",
    "resolve",
    "source_folder",
    "unknown_name",
]

CARD_FILE = "card.json"


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
        labels_seen: The labels the weights were trained on, in the benchmark's task vocabulary (e.g.
            ``("mp_formation_energy",)``): the tasks on which they leak; empty for label-free (self-supervised)
            weights. Cards written before this field load with it empty.
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
    labels_seen: tuple[str, ...] = ()

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
        d["labels_seen"] = list(self.labels_seen)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainedCard:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**d, "citation": tuple(d.get("citation", ())), "labels_seen": tuple(d.get("labels_seen", ()))})


#: matgl's own pretrained models of which a copy ships inside the package (``benchmark_data/``): loading one of these
#: names reads the copy, offline, on either backend, instead of asking matgl to download it.
MATGL_COPIES = ("MEGNet-MP-2018.6.1-Eform",)

#: The labels each shipped matgl copy was trained on (:func:`labels_seen`): the Materials Project formation energies.
MATGL_LABELS: dict[str, tuple[str, ...]] = {"MEGNet-MP-2018.6.1-Eform": ("mp_formation_energy",)}


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


def known_names() -> list[str]:
    """Every registered release and family name, sorted."""
    return sorted({*_REGISTRY, *_newest()})


def is_registered(name: str | Path) -> bool:
    """Whether ``name`` is a registered release or family name."""
    return resolve(name) in _REGISTRY


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
    for name in known_names():
        if not fnmatch.fnmatch(name, pattern):
            continue
        if name in newest:
            out[name] = f"the newest release, {newest[name]}: {_REGISTRY[newest[name]].description}"
        else:
            out[name] = _REGISTRY[name].description
    return out


def unknown_name(name: str) -> ValueError:
    """The error for an unknown name: the closest known names ("Did you mean ...") and the list of all."""
    known = known_names()
    lowered = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    if name.lower() in lowered and lowered[name.lower()] not in close:
        close.insert(0, lowered[name.lower()])
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(
        f"Unknown pretrained model {name!r}.{hint} Known models: {', '.join(known)} (see matgl_cdssl.list_models())."
    )


def looks_like_ours(name: str) -> bool:
    """Whether a name that is not registered was meant as one of ours (misspelt), not as a matgl name or path."""
    return name.lower().startswith("cdssl") or bool(difflib.get_close_matches(name, known_names(), cutoff=0.8))


def get_card(name: str) -> PretrainedCard:
    """The card of a registered model (of the newest release, for a family name).

    Raises:
        ValueError: unknown name, listing the known names and the closest matches.
    """
    release = resolve(name)
    if release not in _REGISTRY:
        raise unknown_name(name)
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
    if is_registered(name_or_path):
        return pretrained_folder(str(name_or_path))
    return matgl_copy(name_or_path) or Path(name_or_path)


def labels_seen(name_or_path: str | Path) -> tuple[str, ...] | None:
    """The labels that a model's weights were trained on, in the benchmark's task vocabulary; None: not recorded.

    A registered name answers from its card (:attr:`PretrainedCard.labels_seen`); matgl's shipped copies
    (:data:`MATGL_COPIES`, by name or by their folder) from :data:`MATGL_LABELS`; a CDSSL model folder from its
    ``cdssl.json``: its ``"labels_seen"`` list, else empty for a label-free run and None for a joint pretraining
    (a ``"target"`` entry) that does not name its property. Any other name or folder: None.

    Example:
        >>> labels_seen("CDSSL-MEGNet-MP"), labels_seen("MEGNet-MP-2018.6.1-Eform")
        ((), ('mp_formation_energy',))
    """
    if is_registered(name_or_path):
        return get_card(str(name_or_path)).labels_seen
    for name, seen in MATGL_LABELS.items():
        copy = matgl_copy(name)
        if str(name_or_path) == name or (copy is not None and Path(name_or_path).resolve() == copy.resolve()):
            return seen
    config = Path(name_or_path) / "cdssl.json"
    if not config.is_file():
        return None
    record = json.loads(config.read_text())
    if "labels_seen" in record:
        return tuple(record["labels_seen"])
    return None if (record.get("target") or {}).get("weight") else ()


_register_shipped()
