"""The ``cdssl`` command: the one part of the package that uses argparse, and the only one that prints.

One small module per command group, each adding its subcommands with ``add_parser(subparsers)``:
:mod:`~matgl_cdssl.cli._pretrain` (``pretrain``), :mod:`~matgl_cdssl.cli._finetune` (``finetune``, ``benchmark``,
``matbench``), :mod:`~matgl_cdssl.cli._ledger` (``upgrade-ledger``), :mod:`~matgl_cdssl.cli._predict` (``predict``),
:mod:`~matgl_cdssl.cli._analysis` (``embed``, ``probe``, ``plot``) and :mod:`~matgl_cdssl.cli._hub` (``info``,
``list``, ``register``). Defaults are read from the
signatures of the functions the options go to (:func:`~matgl_cdssl.cli._options.add_option`), so each lives in one
place. The library logs; only this package prints.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from matgl_cdssl.cli import _analysis, _finetune, _hub, _ledger, _predict, _pretrain

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``cdssl`` argument parser (no network access)."""
    parser = argparse.ArgumentParser(prog="cdssl", description="Crystal denoising self-supervised learning for matgl.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (_pretrain, _finetune, _ledger, _predict, _analysis, _hub):
        group.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cdssl`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"cdssl {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
