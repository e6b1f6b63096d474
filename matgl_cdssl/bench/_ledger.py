"""The run ledger: an append-only JSONL file of finished runs, keyed on what each run's result depends on.

A benchmark keeps every run it finishes in ``OUTPUT_DIR/runs.jsonl`` (:class:`Ledger`), so that an interrupted
benchmark resumes where it stopped and a report is rewritten from the file alone. A run is found again by its key
(:func:`run_key`): its task, size, seed and arm, and its fingerprint (:func:`run_fingerprint`), a hash of the
model's weights (:func:`weights_digest`), the rates, the budget and the split. The fingerprints are part of the
committed ledgers (``docs/results/*/runs.jsonl``): what they hash must not change.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matgl_cdssl.hub import READOUT

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterator

    from torch import nn

    from matgl_cdssl.bench._protocol import BenchmarkSettings, Candidate
    from matgl_cdssl.bench._tasks import TaskData

__all__ = ["Ledger", "run_fingerprint", "run_key", "weights_digest"]


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
    budget = {k: v for k, v in asdict(settings).items() if k not in ("lr_grid", "backbone_lr_scales", "tune_sizes")}
    if budget["lr_patience"] is None:  # the cosine schedule's runs keep the fingerprints they had before lr_patience
        del budget["lr_patience"]
    rates = [candidate.lr, candidate.backbone_lr]
    payload = json.dumps([model_digest, budget, rates, task.name, len(task.structures), indices], default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def run_key(record: dict[str, Any]) -> tuple:
    """What identifies a benchmark run in its ledger: ``(fingerprint, task, n_train, seed, arm)``."""
    return record["fingerprint"], record["task"], record["n_train"], record["seed"], record["arm"]


class Ledger:
    """An append-only JSONL file of records, one per line, each found by its key.

    A later record wins over an earlier one of the same key (a run trained again, e.g. for its shorter run).

    Args:
        path: The file (read if it exists; created by the first :meth:`append`), or None to keep the records in
            memory only.
        key: A record's key (default: a benchmark run's, :func:`run_key`).

    Example:
        >>> import tempfile
        >>> ledger = Ledger(Path(tempfile.mkdtemp()) / "runs.jsonl", key=lambda r: r["id"])
        >>> ledger.append({"id": "a", "test_MAE": 0.5})
        >>> "a" in ledger, ledger["a"]["test_MAE"], len(Ledger(ledger.path, key=lambda r: r["id"]))
        (True, 0.5, 1)
    """

    def __init__(self, path: str | Path | None, key: Callable[[dict[str, Any]], Hashable] = run_key) -> None:
        self.path = None if path is None else Path(path)
        self.key = key
        self._records: dict[Hashable, dict[str, Any]] = {}
        if self.path is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                record = json.loads(line)
                self._records[key(record)] = record

    def __contains__(self, key: Hashable) -> bool:
        return key in self._records

    def __getitem__(self, key: Hashable) -> dict[str, Any]:
        return self._records[key]

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._records.values())

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` as the file's last line (with a path) and keep it under its key."""
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        self._records[self.key(record)] = record
