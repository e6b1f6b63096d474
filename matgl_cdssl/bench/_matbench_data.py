"""Matbench's tasks and results files: the shipped tasks, the supported ones, and writing, reading and resuming results.

Matbench: A. Dunn, Q. Wang, A. Ganose, D. Dopp, A. Jain, npj Comput. Mater. 6, 138 (2020).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matgl_cdssl.bench._tasks import read_shipped, shipped_structures

if TYPE_CHECKING:
    from matbench.bench import MatbenchBenchmark

__all__ = [
    "SHIPPED",
    "check_task",
    "load_data",
    "load_results",
    "resume_results",
    "shipped_frame",
    "supported_tasks",
    "write_results",
]


_INSTALL = (
    "matbench is not installed. Install it next to a current matminer: `pip install -c constraints/<backend>.txt "
    "matminer` then `pip install --no-deps matbench==0.6` (see docs/matbench.md)."
)


SHIPPED = ("matbench_jdft2d", "matbench_phonons")
"""Matbench tasks whose data ship in ``matgl_cdssl/benchmark_data`` (complete, matbench's ids and order), so that
:func:`run_matbench` runs them offline; matbench's own folds (``matbench_v0.1_validation.json``) select the rows."""


def shipped_frame(name: str) -> Any:
    """The shipped data of a Matbench task as matbench loads it: index = matbench ids, ``structure`` and the target.

    Example:
        >>> frame = shipped_frame("matbench_jdft2d")
        >>> len(frame), list(frame.columns), frame.index[0]
        (636, ['structure', 'exfoliation_en'], 'mb-jdft2d-001')
    """
    import pandas as pd

    if name not in SHIPPED:
        raise ValueError(f"{name!r} is not shipped; shipped matbench tasks: {', '.join(SHIPPED)}")
    rows = read_shipped(f"{name}.json.gz")
    target = _matbench_metadata()[name]["target"]
    index = pd.Index([r["id"] for r in rows], name="mbid")
    return pd.DataFrame({"structure": shipped_structures(rows), target: [r["target"] for r in rows]}, index=index)


def _matbench_metadata() -> dict[str, Any]:
    try:
        from matbench.metadata import mbv01_metadata
    except ImportError as exc:
        raise ImportError(_INSTALL) from exc
    return mbv01_metadata


def supported_tasks() -> list[str]:
    """Names of the matbench v0.1 tasks that the runner supports: regression on crystal structures."""
    return [
        name
        for name, meta in _matbench_metadata().items()
        if meta["input_type"] == "structure" and meta["task_type"] == "regression"
    ]


def check_task(name: str) -> None:
    """Raise a ValueError naming ``name`` unless it is a matbench structure regression task."""
    metadata = _matbench_metadata()
    supported = supported_tasks()
    if name not in metadata:
        raise ValueError(f"{name!r} is not a matbench v0.1 task; supported tasks: {', '.join(supported)}")
    meta = metadata[name]
    if name not in supported:
        raise ValueError(
            f"matbench task {name!r} is {meta['task_type']} on {meta['input_type']} inputs; only regression on "
            f"crystal structures is supported ({', '.join(supported)})"
        )


def write_results(benchmark: MatbenchBenchmark, path: str | Path) -> Path:
    """Write a benchmark in matbench's results format (``benchmark.as_dict()`` as JSON).

    A plain name is written by matbench's own ``to_file``. A name ending in ``.gz`` (matbench's conventional
    ``results.json.gz``) is gzip-compressed: matbench 0.6's ``to_file`` would write uncompressed text under it.
    Read either back with :func:`load_results`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            json.dump(benchmark.as_dict(), f)
    else:
        benchmark.to_file(str(path))
    return path


def load_results(path: str | Path) -> MatbenchBenchmark:
    """Read a results file written by :func:`write_results` (or matbench's ``to_file``), gzipped or not.

    Matbench validates the file as it loads it; matbench 0.6 accepts only tasks with every fold recorded.
    """
    from matbench.bench import MatbenchBenchmark

    return MatbenchBenchmark.from_dict(_read_json(path))


def _read_json(path: str | Path) -> dict[str, Any]:
    """A results file's JSON, gzip-compressed or not."""
    path = Path(path)
    with path.open("rb") as f:
        opener = gzip.open if f.read(2) == b"\x1f\x8b" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def load_data(task: Any) -> None:
    """Load a task's data: the shipped rows for a shipped task (no download), else matbench's own download."""
    if task.df is None and task.dataset_name in SHIPPED:
        task.df = shipped_frame(task.dataset_name)  # matbench's own rows and ids, shipped
    task.load()


def resume_results(path: str | Path) -> MatbenchBenchmark:
    """The folds recorded in the results file of an unfinished run, in a benchmark to continue with.

    matbench 0.6 reads back only files with every fold recorded (:func:`load_results`). This rebuilds a
    ``MatbenchBenchmark`` with the file's metadata and, through matbench's own ``task.record``, each fold the file
    holds (its predictions and parameters); ``run_matbench(benchmark=...)`` then runs the remaining folds and keeps
    the learning rate those folds chose. The tasks' data are loaded (shipped tasks offline).

    Example (a run stopped after fold 0)::

        mb = run_matbench(["matbench_jdft2d"], benchmark=resume_results("r.json.gz"), output="r.json.gz")
    """
    from matbench.bench import MatbenchBenchmark

    saved = _read_json(path)
    benchmark = MatbenchBenchmark(autoload=False, subset=list(saved["tasks"]))
    if saved.get("user_metadata"):
        benchmark.add_metadata(saved["user_metadata"])
    for task in benchmark.tasks:
        load_data(task)
        for fold in task.folds:
            result = saved["tasks"][task.dataset_name]["results"].get(task.folds_map[fold], {})
            if not result.get("data"):
                continue
            ids = task.get_test_data(fold, include_target=False).index
            task.record(fold, [result["data"][i] for i in ids], params=result.get("parameters") or {})
    return benchmark
