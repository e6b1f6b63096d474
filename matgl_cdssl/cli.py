"""Command-line interface: ``cdssl pretrain``, ``cdssl info``.

Only this module prints; the library logs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive; got {text}")
    return value


def _devices(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def build_parser() -> argparse.ArgumentParser:
    """The ``cdssl`` argument parser (no network access, no heavy imports)."""
    parser = argparse.ArgumentParser(prog="cdssl", description="Crystal denoising self-supervised learning for matgl.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="pretrain a MEGNet by crystal denoising on structure files")
    p.add_argument("files", nargs="*", type=Path, help="CIF, POSCAR or extxyz files (one or more crystals each)")
    p.add_argument("--sample", type=int, metavar="N", help="use the first N crystals of the bundled sample instead")
    p.add_argument("--out", type=Path, required=True, help="output folder: checkpoints/, metrics.csv, model/")
    p.add_argument("--sigma", type=_positive_float, default=0.1, help="noise level in Å (default 0.1)")
    p.add_argument("--cutoff", type=_positive_float, help="neighbour cutoff in Å (default: matgl's MEGNet, 4.0)")
    p.add_argument("--max-epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=_positive_float, default=1e-3)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", help="continue from this CDSSL model folder or matgl model")
    p.add_argument("--gradient-clip-val", type=_positive_float, help="clip the gradient norm to this value")
    p.add_argument("--skip-invalid", action="store_true", help="leave out invalid crystals (with a warning each)")
    p.add_argument("--resume", type=Path, metavar="CKPT", help="resume from a Lightning checkpoint")
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator (cpu, gpu, auto)")
    p.add_argument("--devices", type=_devices, default="auto", help="Lightning devices")
    p.add_argument("--no-progress-bar", action="store_true")
    p.set_defaults(func=pretrain_command)

    p = sub.add_parser("info", help="print the detected backend and versions")
    p.set_defaults(func=info_command)
    return parser


def pretrain_command(args: argparse.Namespace) -> int:
    """Run ``cdssl pretrain``.

    Side Effects:
        Writes ``args.out/checkpoints``, ``args.out/metrics.csv`` and the model folder ``args.out/model``.
    """
    import matgl_cdssl

    if bool(args.files) == (args.sample is not None):
        print("cdssl pretrain: give structure FILES or --sample N (not both)", file=sys.stderr)
        return 2
    structures = matgl_cdssl.load_sample(args.sample).structures if args.sample is not None else args.files
    matgl_cdssl.pretrain(
        structures,
        sigma=args.sigma,
        cutoff=args.cutoff,
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        val_fraction=args.val_fraction,
        seed=args.seed,
        model=args.model,
        output_dir=args.out,
        gradient_clip_val=args.gradient_clip_val,
        skip_invalid=args.skip_invalid,
        ckpt_path=args.resume,
        accelerator=args.accelerator,
        devices=args.devices,
        enable_progress_bar=not args.no_progress_bar,
    )
    config = json.loads((args.out / "model" / "cdssl.json").read_text())
    print(
        f"saved the pretrained MEGNet to {args.out / 'model'} ({config['n_structures']} crystals, "
        f"{config['epochs'] + 1} epochs, best {config['best_epoch_metric']} = {config['best_score']:.5g})"
    )
    return 0


def info_command(args: argparse.Namespace) -> int:
    """Print the backend and package versions."""
    import matgl_cdssl
    from matgl_cdssl.backend import matgl_version

    print(f"matgl-cdssl {matgl_cdssl.__version__}; matgl {matgl_version()}; backend {matgl_cdssl.BACKEND}")
    return 0


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
