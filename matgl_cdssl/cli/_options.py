"""Options shared by the commands, with defaults read from the functions they call, so each default lives once."""

from __future__ import annotations

import argparse
import inspect
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

from matgl_cdssl.method import check_sigma

__all__ = [
    "add_option",
    "add_trainer_options",
    "devices",
    "duration",
    "non_negative_int",
    "parameter_default",
    "positive_float",
    "positive_int",
    "sigma",
    "trainer_options",
]


def positive_float(text: str) -> float:
    """An argparse type: a number greater than zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive; got {text}")
    return value


def _whole(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}; got {text}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number greater than zero."""
    return _whole(text, 1)


def non_negative_int(text: str) -> int:
    """An argparse type: a whole number, zero or more."""
    return _whole(text, 0)


def duration(text: str) -> str:
    """An argparse type: a wall time as Lightning's ``max_time`` takes it, DD:HH:MM:SS."""
    import re

    if not re.fullmatch(r"\d+:\d\d:\d\d:\d\d", text):
        raise argparse.ArgumentTypeError(f"expected DD:HH:MM:SS (00:02:00:00 is two hours); got {text!r}")
    return text


def sigma(text: str) -> float:
    """An argparse type: a noise level, by the library's own rule (:func:`~matgl_cdssl.method.check_sigma`)."""
    try:
        return check_sigma(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def devices(text: str) -> int | str:
    """An argparse type: Lightning's ``devices`` (a count, or ``auto``/a list of ids)."""
    return int(text) if text.isdigit() else text


def parameter_default(func: Callable[..., Any], name: str) -> Any:
    """The default of parameter ``name`` of ``func``, a function or a dataclass (then a field's default).

    :class:`~matgl_cdssl.apps.TrainOptions` holds the defaults of :func:`~matgl_cdssl.finetune`'s training options.
    """
    default = inspect.signature(func).parameters[name].default
    if default is inspect.Parameter.empty:
        raise ValueError(f"{func.__qualname__}() has no default for {name!r}")
    return default


def add_option(
    parser: argparse.ArgumentParser,
    func: Callable[..., Any],
    name: str,
    *,
    flag: str | None = None,
    unset: bool = False,
    help: str = "",
    **kwargs: Any,
) -> None:
    """Add ``--<name>`` for parameter ``name`` of ``func``, with ``func``'s default (named in the help).

    Args:
        parser: The (sub)command's parser.
        func: The library function the option is passed to, or the dataclass that holds its default.
        name: The parameter (``max_epochs`` gives ``--max-epochs``).
        flag: Another flag for it (``--out`` for ``output_dir``); the value still lands in ``args.<name>``.
        unset: Default to None instead, so that an option not given can be told apart (``cdssl pretrain`` merges
            its options over those of a configuration file); the help still names ``func``'s default.
        help: What the option does.
        **kwargs: Passed to ``add_argument`` (``type``, ``choices``, ``nargs``, ...).
    """
    default = parameter_default(func, name)
    if isinstance(default, bool) and not unset:
        kwargs.setdefault("action", "store_true" if not default else "store_false")
    elif default not in (None, ()) and not isinstance(default, bool):
        shown = " ".join(map(str, default)) if isinstance(default, (tuple, list)) else default
        help = f"{help} (default: {shown})".strip()
    if isinstance(default, bool) and unset:
        kwargs.setdefault("action", "store_true")
    flag = flag or f"--{name.replace('_', '-')}"
    parser.add_argument(flag, dest=name, default=None if unset else default, help=help, **kwargs)


def add_trainer_options(parser: argparse.ArgumentParser, *extra: str) -> None:
    """Lightning's device options (``--accelerator``, ``--devices``, and any of ``extra``) and ``--no-progress-bar``."""
    parser.add_argument("--accelerator", help="Lightning accelerator (cpu, gpu, auto)")
    parser.add_argument("--devices", type=devices, help="Lightning devices (per node)")
    if "num_nodes" in extra:
        parser.add_argument("--num-nodes", type=int, help="Lightning nodes (multi-node DDP, e.g. under SLURM)")
    if "strategy" in extra:
        parser.add_argument("--strategy", help="Lightning strategy, e.g. ddp (see docs/distributed.md)")
    parser.add_argument("--no-progress-bar", action="store_true")


def trainer_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Lightning options of :func:`add_trainer_options` that were given."""
    names = ("accelerator", "devices", "num_nodes", "strategy")
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
