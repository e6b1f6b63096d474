"""The run ledger: an append-only JSONL file of finished runs, keyed on what each run's result depends on.

A benchmark keeps every run it finishes in ``OUTPUT_DIR/runs.jsonl`` (:class:`Ledger`), so that an interrupted
benchmark resumes where it stopped and a report is rewritten from the file alone. A run is found again by its key
(:func:`run_key`): its task, size, seed and arm, and its fingerprint (:func:`run_fingerprint`), a hash of the
model's weights (:func:`weights_digest`), the rates, the budget and the split. The fingerprints are part of the
committed ledgers (``docs/results/*/runs.jsonl``): what they hash must not change.

What else a result depends on is the run's **stamp** (:class:`Stamp`), kept with each record and compared when a
ledger is read: the digest of its task's crystals and targets (:func:`task_digest`), the backend, the matgl, torch,
Lightning and matgl-cdssl versions and the Trainer's options (accelerator, devices, precision, ...:
:func:`environment`). A record of the same key with another stamp (a corrected CSV under the same name, a GPU run
in a folder of CPU runs, another matgl) is kept in the file but not reused. Records written before runs were stamped
are stamped once, explicitly, with the environment that made them (:func:`upgrade_ledger`, ``cdssl upgrade-ledger``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matgl_cdssl._backend import BACKEND, matgl_version, package_version
from matgl_cdssl.apps import process_count
from matgl_cdssl.data import fingerprint_labels, fingerprint_structures
from matgl_cdssl.hub import READOUT

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterator, Sequence

    from torch import nn

    from matgl_cdssl.bench._protocol import BenchmarkSettings, Candidate
    from matgl_cdssl.bench._tasks import TaskData

__all__ = [
    "Ledger",
    "Stamp",
    "data_digest",
    "environment",
    "run_fingerprint",
    "run_key",
    "task_digest",
    "upgrade_ledger",
    "weights_digest",
]

logger = logging.getLogger(__name__)


def weights_digest(model: nn.Module, *, weights: bool = True) -> str:
    """A SHA-256 of a model's class, constructor arguments and backbone weights: different models never share runs.

    The readout is left out: no arm uses it (a pretrained arm gets a fresh one), and a model loaded by name has a
    random one. ``weights=False`` digests the architecture alone (the scratch arm, which uses no weights).
    """
    digest = hashlib.sha256(f"{type(model).__qualname__}:{json.dumps(model._init_args, default=str)}".encode())
    for key, value in model.state_dict().items() if weights else ():
        if key.split(".")[0] in READOUT:
            continue
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


#: What a run's fingerprint hashes of its settings, in this order (the order of the 0.2-0.4 settings' fields): never
#: the grid, the seeds or the protocol's name, so that a run keeps its fingerprint whatever grid it was chosen from.
_BUDGET = ("freeze_backbone", "batch_size", "loss", "max_epochs", "patience", "lr_patience", "min_val", "max_val")


def run_fingerprint(
    model_digest: str, settings: BenchmarkSettings, task: TaskData, split: dict[str, Any], candidate: Candidate
) -> str:
    """What a run's result depends on besides its size, seed and arm: the weights, its rates, the budget, the split.

    The grid a rate was chosen from is left out (a run with the same rate is the same run, whatever else the grid
    held).

    The split's indices are hashed themselves (they depend on the task, the seed and, through the validation block,
    on the largest training size), so a cached run is reused only for exactly the same crystals.
    """
    indices = {
        "test": [int(i) for i in split["test"]],
        "val": {str(n): [int(i) for i in v] for n, v in split["val"].items()},
        "train": {str(n): [int(i) for i in v] for n, v in split["train"].items()},
    }
    budget = {k: getattr(settings, k) for k in _BUDGET}
    if budget["lr_patience"] is None:  # the cosine schedule's runs keep the fingerprints they had before lr_patience
        del budget["lr_patience"]
    rates = [candidate.lr, candidate.backbone_lr]
    payload = json.dumps([model_digest, budget, rates, task.name, len(task.structures), indices], default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def run_key(record: dict[str, Any]) -> tuple:
    """What identifies a benchmark run in its ledger: ``(fingerprint, task, n_train, seed, arm)``."""
    return record["fingerprint"], record["task"], record["n_train"], record["seed"], record["arm"]


def data_digest(structures: Sequence[Any], targets: Sequence[float]) -> str:
    """A SHA-256 (16 hex digits) of crystals and their targets, in order: a run is reused only for the same data.

    The crystals as the graph cache fingerprints them (lattice, species and fractional coordinates, rounded to 1e-6);
    the targets as numbers.
    """
    payload = [len(structures), fingerprint_structures(list(structures)), fingerprint_labels({"target": targets})]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]


def task_digest(task: TaskData) -> str:
    """:func:`data_digest` of a task's pool and of its test pool (when it has one), as given (before any check)."""
    parts = [data_digest(task.structures, task.targets)]
    if task.test_structures is not None:
        parts.append(data_digest(task.test_structures, task.test_targets))
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


#: Trainer options that change nothing a run computes (what is shown, logged or kept on disk).
_COSMETIC = ("enable_progress_bar", "enable_model_summary", "logger", "callbacks", "default_root_dir",
             "log_every_n_steps", "enable_checkpointing")  # fmt: skip
#: Lightning's short precision names, in its full ones.
_PRECISION = {"32": "32-true", "64": "64-true", "16": "16-mixed", "bf16": "bf16-mixed"}


def _installed(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:  # pragma: no cover - e.g. pytorch-lightning alone
        return "unknown"


def environment(trainer_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Where runs with ``lightning.Trainer(**trainer_kwargs)`` run: the backend, the versions, the Trainer's options.

    The accelerator is resolved as Lightning resolves ``"auto"`` (``cuda``, ``mps`` or ``cpu``), the devices to the
    number of processes, the precision to Lightning's full name (default ``32-true``); other options that change a
    result (``strategy``, ``deterministic``, ...) are kept as given, those that do not (progress bar, logger,
    callbacks) are left out.

    Example:
        >>> env = environment({"accelerator": "cpu", "enable_progress_bar": False})
        >>> env["trainer"], sorted(env["versions"])
        ({'accelerator': 'cpu', 'devices': 1, 'precision': '32-true'}, ['lightning', 'matgl', 'matgl-cdssl', 'torch'])
    """
    import torch

    kwargs = dict(trainer_kwargs or {})
    accelerator = kwargs.pop("accelerator", None) or "auto"
    accelerator = accelerator if isinstance(accelerator, str) else type(accelerator).__name__
    if accelerator in ("auto", "gpu"):
        mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
        gpu = "cuda" if torch.cuda.is_available() else "mps" if mps else None
        accelerator = gpu or ("cpu" if accelerator == "auto" else "gpu")
    devices = process_count({**kwargs, "accelerator": accelerator})
    precision = str(kwargs.pop("precision", None) or "32-true")
    trainer = {"accelerator": accelerator, "devices": devices, "precision": _PRECISION.get(precision, precision)}
    for key, value in sorted(kwargs.items()):
        if key not in (*_COSMETIC, "devices", "num_nodes"):
            scalar = isinstance(value, (bool, int, float, str)) or value is None
            trainer[key] = value if scalar else type(value).__name__
    versions = {"matgl": matgl_version(), "torch": _installed("torch"), "lightning": _installed("lightning"),
                "matgl-cdssl": package_version()}  # fmt: skip
    return {"backend": BACKEND, "versions": versions, "trainer": trainer}


@dataclass(frozen=True)
class Stamp:
    """What a benchmark's runs depend on besides their keys: each task's data and the environment.

    A record's stamp (``stamp(record)``) is its task's :func:`task_digest` (``data``) and the :func:`environment`.

    Attributes:
        data: Each task's :func:`task_digest`, by name.
        environment: :func:`environment`.
    """

    data: Mapping[str, str]
    environment: Mapping[str, Any]

    @classmethod
    def of(cls, tasks: Sequence[TaskData], trainer_kwargs: Mapping[str, Any] | None = None) -> Stamp:
        """The stamp of runs of ``tasks`` (their data as given, before any check) with these Trainer options."""
        return cls({t.name: task_digest(t) for t in tasks}, environment(trainer_kwargs))

    def __call__(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return {"data": self.data.get(record["task"]), **self.environment}


def upgrade_ledger(path: str | Path, environment: Mapping[str, Any], tasks: Sequence[TaskData] = ()) -> dict[str, int]:
    """Stamp, once, the records of a ledger written before runs were stamped, so that they keep being reused.

    Each record without a stamp gets its task's :func:`task_digest` (a built-in task is loaded from the shipped data,
    which are fixed; another task must be given in ``tasks``, as the benchmark ran it) and ``environment``: the one
    the runs were made in, as their README states it (an :func:`environment`, e.g. ``{"backend": "pyg", "versions":
    {...}, "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32-true"}}``). A field that a record holds
    itself (``backend``, a version, ``accelerator``, ...) must agree with it. The file is rewritten in place, its
    records in their order.

    Returns:
        How many records were ``upgraded``, ``already`` stamped, and ``left`` unstamped (a task neither built in nor
        given: it is not reused).

    Raises:
        ValueError: ``environment`` lacks a part, or a record contradicts it.
    """
    from matgl_cdssl.bench._tasks import TASKS, load_task

    path = Path(path)
    if missing := [k for k in ("backend", "versions", "trainer") if k not in environment]:
        raise ValueError(f"the environment needs {missing} (see matgl_cdssl.bench.environment())")
    flat = {"backend": environment["backend"], **environment["versions"], **environment["trainer"]}
    given, digests = {t.name: t for t in tasks}, {}
    counts = {"upgraded": 0, "already": 0, "left": 0}
    lines = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        record = json.loads(line)
        task = record.get("task")
        if "stamp" in record:
            counts["already"] += 1
        elif task in given or task in TASKS:
            if clash := {k: record[k] for k, v in flat.items() if k in record and record[k] != v}:
                raise ValueError(f"{path}, line {n}: the record says {clash}, not the environment given")
            if task not in digests:
                digests[task] = task_digest(given[task] if task in given else load_task(task))
            record["stamp"] = {"data": digests[task], **environment}
            counts["upgraded"] += 1
        else:
            counts["left"] += 1
        lines.append(json.dumps(record) + "\n")
    temporary = path.with_name(path.name + ".upgrading")
    temporary.write_text("".join(lines))
    temporary.replace(path)
    return counts


class Ledger:
    """An append-only JSONL file of records, one per line, each found by its key.

    A later record wins over an earlier one of the same key (a run trained again, e.g. for its shorter run).

    With a ``stamp``, each line holds its record's stamp (``"stamp"``), and only the records whose stamp is
    ``stamp(record)`` are found (the others stay in the file): the records it gives back carry no stamp.

    Args:
        path: The file (read if it exists; created by the first :meth:`append`), or None to keep the records in
            memory only.
        key: A record's key (default: a benchmark run's, :func:`run_key`).
        stamp: What a record must have been made with to be found (a benchmark's :class:`Stamp`), or None.

    Example:
        >>> import tempfile
        >>> ledger = Ledger(Path(tempfile.mkdtemp()) / "runs.jsonl", key=lambda r: r["id"])
        >>> ledger.append({"id": "a", "test_MAE": 0.5})
        >>> "a" in ledger, ledger["a"]["test_MAE"], len(Ledger(ledger.path, key=lambda r: r["id"]))
        (True, 0.5, 1)
    """

    def __init__(
        self,
        path: str | Path | None,
        key: Callable[[dict[str, Any]], Hashable] = run_key,
        stamp: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.path = None if path is None else Path(path)
        self.key, self.stamp = key, stamp
        self._records: dict[Hashable, dict[str, Any]] = {}
        unstamped = other = 0
        if self.path is not None and self.path.is_file():
            for line in self._complete_lines():
                record = json.loads(line)
                if stamp is not None:
                    made = record.pop("stamp", None)
                    unstamped += made is None
                    if made != stamp(record):
                        other += made is not None
                        continue
                self._records[key(record)] = record
        if unstamped:
            logger.warning("%s: %d record(s) carry no stamp (written before runs were stamped) and are not reused; "
                           "`cdssl upgrade-ledger` stamps them with the environment that made them", self.path,
                           unstamped)  # fmt: skip
        if other:
            logger.info("%s: %d record(s) of other tasks, data or environments are not reused here", self.path, other)

    def _complete_lines(self) -> list[str]:
        """The file's lines; a last line cut short (a process stopped while writing it) is dropped, with a warning.

        Only the last line can be cut short (records are appended whole, one line each); it is removed from the file,
        so that the next record starts a line of its own, and its run is simply trained again. A complete last line
        without its line end gets one.
        """
        text = self.path.read_text()
        lines = text.splitlines()
        if lines and not text.endswith("\n"):  # the next record must start a line of its own
            try:
                json.loads(lines[-1])
            except json.JSONDecodeError:
                logger.warning("%s: its last line is incomplete (a process stopped while writing it): removed, its "
                               "record is not reused: %.80s", self.path, lines[-1])  # fmt: skip
                lines.pop()
            self.path.write_text("".join(line + "\n" for line in lines))
        return lines

    def __contains__(self, key: Hashable) -> bool:
        return key in self._records

    def __getitem__(self, key: Hashable) -> dict[str, Any]:
        return self._records[key]

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._records.values())

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` (and its stamp) as the file's last line (with a path) and keep it under its key."""
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(record if self.stamp is None else {**record, "stamp": self.stamp(record)}) + "\n")
        self._records[self.key(record)] = record
