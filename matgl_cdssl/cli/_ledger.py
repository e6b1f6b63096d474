"""``cdssl upgrade-ledger``: stamp, once, a benchmark ledger written before runs were stamped."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from matgl_cdssl.bench import upgrade_ledger

__all__ = ["add_parser"]

#: The versions a stamp names.
_VERSIONS = ("matgl", "torch", "lightning", "matgl-cdssl")


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or name not in _VERSIONS or not value:
        raise argparse.ArgumentTypeError(f"expected PACKAGE=VERSION with PACKAGE one of {', '.join(_VERSIONS)}; got "
                                         f"{text!r}")  # fmt: skip
    return name, value


def add_parser(sub: Any) -> None:
    """Add ``cdssl upgrade-ledger``."""
    p = sub.add_parser(
        "upgrade-ledger",
        help="stamp the runs of a benchmark ledger written before runs were stamped, so that they are reused",
        description="A benchmark reuses a cached run only if it was made with the same data, backend, versions and "
        "Trainer options (its stamp). Records written before stamps carry none: this stamps each of them, once, with "
        "its task's data (built-in tasks) and the environment that made them, as the results' README states it. "
        "Records of other tasks are left unstamped (not reused).",
    )
    p.add_argument("ledger", type=Path, help="the ledger, OUT/runs.jsonl (rewritten in place)")
    p.add_argument("--backend", required=True, choices=("dgl", "pyg"))
    p.add_argument("--versions", required=True, nargs=len(_VERSIONS), type=_pair, metavar="PACKAGE=VERSION",
                   help=f"the versions of {', '.join(_VERSIONS)}, e.g. torch=2.13.0+cpu")  # fmt: skip
    p.add_argument("--accelerator", required=True, help="cpu, cuda or mps")
    p.add_argument("--devices", type=int, default=1, help="processes (default 1)")
    p.add_argument("--precision", default="32-true", help="Lightning's precision (default 32-true)")
    p.set_defaults(func=upgrade_command)


def upgrade_command(args: argparse.Namespace) -> int:
    """Run ``cdssl upgrade-ledger``.

    Side Effects:
        Rewrites the ledger, each unstamped record of a built-in task with its stamp.
    """
    versions = dict(args.versions)
    if missing := [v for v in _VERSIONS if v not in versions]:
        raise ValueError(f"--versions lacks {missing}")
    trainer = {"accelerator": args.accelerator, "devices": args.devices, "precision": args.precision}
    counts = upgrade_ledger(args.ledger, {"backend": args.backend, "versions": versions, "trainer": trainer})
    print(f"{args.ledger}: {counts['upgraded']} record(s) stamped, {counts['already']} already stamped, "
          f"{counts['left']} of other tasks left unstamped")  # fmt: skip
    return 0
