"""``cdssl list``, ``cdssl register`` and ``cdssl info``: the named weights and the installation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from matgl_cdssl._backend import BACKEND, matgl_version, package_version
from matgl_cdssl.hub import labels_seen, list_models, register

if TYPE_CHECKING:
    import argparse

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    """Add ``cdssl info``, ``cdssl list`` and ``cdssl register``."""
    p = sub.add_parser("info", help="print the detected backend and versions")
    p.set_defaults(func=info_command)

    p = sub.add_parser("list", help="list the named pretrained models")
    p.add_argument("pattern", nargs="?", default="*", help="glob pattern (default: all)")
    p.set_defaults(func=list_command)

    p = sub.add_parser("register", help="make plain matgl.load_model() find the named pretrained models offline")
    p.set_defaults(func=register_command)


def info_command(args: argparse.Namespace) -> int:
    """Print the backend and package versions."""
    print(f"matgl-cdssl {package_version()}; matgl {matgl_version()}; backend {BACKEND}")
    return 0


def list_command(args: argparse.Namespace) -> int:
    """Print the named pretrained models with their descriptions and the labels their weights saw."""
    for name, description in list_models(args.pattern).items():
        seen = labels_seen(name)
        print(f"{name}: {description} [{'labels seen: ' + ', '.join(seen) if seen else 'no labels seen'}]")
    return 0


def register_command(args: argparse.Namespace) -> int:
    """Register the named pretrained models with matgl.

    Side Effects:
        Writes the weights into matgl's cache folder (see :func:`~matgl_cdssl.register`).
    """
    for name, where in register().items():
        print(f"registered {name}: {where}")
    return 0
