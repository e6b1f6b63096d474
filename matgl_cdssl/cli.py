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

    p = sub.add_parser(
        "pretrain",
        help="pretrain a MEGNet by crystal denoising on structure files",
        description="Options given on the command line override those of --config.",
    )
    p.add_argument("files", nargs="*", type=Path, help="CIF, POSCAR, extxyz or CSV (cif column) files")
    p.add_argument("--config", type=Path, help="YAML run configuration (data, pretrain options, out)")
    p.add_argument("--sample", type=int, metavar="N", help="use the first N crystals of the bundled sample instead")
    p.add_argument("--out", type=Path, help="output folder: checkpoints/, metrics.csv, model/")
    p.add_argument(
        "--sigma",
        type=_positive_float,
        help="noise level in Å (default 0.3, chosen by the sweep in docs/results/sigma_sweep)",
    )
    p.add_argument("--cutoff", type=_positive_float, help="neighbour cutoff in Å (default: matgl's MEGNet, 4.0)")
    p.add_argument("--max-epochs", type=int)
    p.add_argument("--max-time", help="stop after this wall time, DD:HH:MM:SS (resume later with --resume)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=_positive_float)
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--model", help="continue from this CDSSL model folder or matgl model")
    p.add_argument("--gradient-clip-val", type=_positive_float, help="clip the gradient norm to this value")
    p.add_argument("--skip-invalid", action="store_true", default=None, help="leave out invalid crystals, warning")
    p.add_argument(
        "--resume",
        nargs="?",
        const="last",
        metavar="CKPT",
        help="resume from a Lightning checkpoint (default: OUT/checkpoints/last.ckpt)",
    )
    p.add_argument("--accelerator", help="Lightning accelerator (cpu, gpu, auto)")
    p.add_argument("--devices", type=_devices, help="Lightning devices")
    p.add_argument("--no-progress-bar", action="store_true")
    p.set_defaults(func=pretrain_command)

    p = sub.add_parser("info", help="print the detected backend and versions")
    p.set_defaults(func=info_command)

    p = sub.add_parser("list", help="list the named pretrained models")
    p.add_argument("pattern", nargs="?", default="*", help="glob pattern (default: all)")
    p.set_defaults(func=list_command)

    p = sub.add_parser("register", help="make plain matgl.load_model() find the named pretrained models offline")
    p.set_defaults(func=register_command)
    return parser


_OPTIONS = (
    "sigma",
    "cutoff",
    "max_epochs",
    "max_time",
    "batch_size",
    "lr",
    "val_fraction",
    "seed",
    "model",
    "gradient_clip_val",
    "skip_invalid",
    "accelerator",
    "devices",
)


def _load_config(path: Path) -> tuple[dict, list | None, Path | None]:
    """Read a run configuration: pretrain options, structures (from its data section) and output folder."""
    import yaml

    from matgl_cdssl.mp import read_mp_split

    config = yaml.safe_load(path.read_text()) or {}
    unknown = set(config) - {"data", "pretrain", "out"}
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {sorted(unknown)}; expected data, pretrain, out")
    options = dict(config.get("pretrain") or {})
    bad = set(options) - set(_OPTIONS)
    if bad:
        raise ValueError(f"{path}: unknown pretrain option(s) {sorted(bad)}; known: {', '.join(_OPTIONS)}")
    structures = None
    if "data" in config:
        data = config["data"]
        source = (path.parent / data["path"]).resolve()
        if data.get("split"):
            _, structures = read_mp_split(source, data["split"])
        else:
            structures = [source]
    out = (path.parent / config["out"]).resolve() if "out" in config else None
    return options, structures, out


def pretrain_command(args: argparse.Namespace) -> int:
    """Run ``cdssl pretrain``.

    Side Effects:
        Writes ``OUT/checkpoints``, ``OUT/metrics.csv`` and the model folder ``OUT/model``.
    """
    import matgl_cdssl

    options, structures, out = _load_config(args.config) if args.config else ({}, None, None)
    options.update({k: getattr(args, k) for k in _OPTIONS if getattr(args, k) is not None})
    out = args.out or out
    if out is None:
        print("cdssl pretrain: give --out (or out: in the --config file)", file=sys.stderr)
        return 2
    if args.files or args.sample is not None:
        if bool(args.files) == (args.sample is not None):
            print("cdssl pretrain: give structure FILES or --sample N (not both)", file=sys.stderr)
            return 2
        structures = matgl_cdssl.load_sample(args.sample).structures if args.sample is not None else args.files
    if structures is None:
        print("cdssl pretrain: give structure FILES, --sample N, or a --config with a data section", file=sys.stderr)
        return 2
    if args.resume == "last":
        ckpt = Path(out) / "checkpoints" / "last.ckpt"
        args.resume = ckpt if ckpt.is_file() else None
        if args.resume is None:
            print(f"cdssl pretrain: no {ckpt} to resume from; starting afresh", file=sys.stderr)
    matgl_cdssl.pretrain(
        structures, output_dir=out, ckpt_path=args.resume, enable_progress_bar=not args.no_progress_bar, **options
    )
    config = json.loads((Path(out) / "model" / "cdssl.json").read_text())
    print(
        f"saved the pretrained MEGNet to {Path(out) / 'model'} ({config['n_structures']} crystals, "
        f"{config['epochs']} epochs, best {config['best_epoch_metric']} = {config['best_score']:.5g})"
    )
    return 0


def info_command(args: argparse.Namespace) -> int:
    """Print the backend and package versions."""
    import matgl_cdssl
    from matgl_cdssl.backend import matgl_version

    print(f"matgl-cdssl {matgl_cdssl.__version__}; matgl {matgl_version()}; backend {matgl_cdssl.BACKEND}")
    return 0


def list_command(args: argparse.Namespace) -> int:
    """Print the named pretrained models with their descriptions."""
    import matgl_cdssl

    for name, description in matgl_cdssl.list_models(args.pattern).items():
        print(f"{name}: {description}")
    return 0


def register_command(args: argparse.Namespace) -> int:
    """Register the named pretrained models with matgl.

    Side Effects:
        Writes the weights into matgl's cache folder (see ``matgl_cdssl.register``).
    """
    import matgl_cdssl

    for name, where in matgl_cdssl.register().items():
        print(f"registered {name}: {where}")
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
