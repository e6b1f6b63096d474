"""Matbench's tasks and results files: the shipped tasks, the supported ones, and writing, reading and resuming results.

Matbench: A. Dunn, Q. Wang, A. Ganose, D. Dopp, A. Jain, npj Comput. Mater. 6, 138 (2020).
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matgl_cdssl.bench._tasks import read_shipped, shipped_structures

if TYPE_CHECKING:
    from collections.abc import Mapping

    from matbench.bench import MatbenchBenchmark

__all__ = [
    "SHIPPED",
    "check_task",
    "load_data",
    "load_results",
    "metadata_differences",
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
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")  # renamed over the file once written whole, so that
    try:  # a file read during a run (another process merging the folds written so far) is never half-written
        if path.name.endswith(".gz"):
            with gzip.open(partial, "wt", encoding="utf-8") as f:
                json.dump(benchmark.as_dict(), f)
        else:
            benchmark.to_file(str(partial))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
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


def resume_results(*paths: str | Path) -> MatbenchBenchmark:
    """The folds recorded in the results files of an unfinished run, in one benchmark to continue with.

    matbench 0.6 reads back only files with every fold recorded (:func:`load_results`). This rebuilds a
    ``MatbenchBenchmark`` with the files' metadata and, through matbench's own ``task.record``, each fold they hold
    (its predictions and parameters); ``run_matbench(benchmark=...)`` then runs the remaining folds. The tasks' data
    are loaded (shipped tasks offline).

    Several files are the folds of one run spread over processes or machines, each writing its own file
    (``run_matbench(folds=[3, 4], output="r.folds-3-4.json.gz")``): their folds are merged into one benchmark, which
    :func:`write_results` then writes as one file (complete once every fold is in).

    Example (a run stopped after fold 0; then folds 3 and 4 run elsewhere)::

        mb = run_matbench(["matbench_jdft2d"], benchmark=resume_results("r.json.gz"), output="r.json.gz")
        write_results(resume_results("r.json.gz", "r.folds-3-4.json.gz"), "r.json.gz")

    Raises:
        ValueError: Files written by different runs (their metadata differ: another model, protocol, grid or
            version), or a fold recorded in two files with different predictions or parameters; each named.
    """
    from matbench.bench import MatbenchBenchmark

    if not paths:
        raise TypeError("resume_results needs at least one results file")
    saved = {Path(path): _read_json(path) for path in paths}
    (first, head), *others = saved.items()
    metadata = head.get("user_metadata") or {}
    for path, other in others:
        theirs = other.get("user_metadata") or {}
        differ = metadata_differences(metadata, theirs)
        if differ:
            raise ValueError(f"{path} and {first} were written by different runs (their metadata differ in {differ}): "
                             "only the folds of one run are merged")  # fmt: skip
    benchmark = MatbenchBenchmark(
        autoload=False, subset=list(dict.fromkeys(n for s in saved.values() for n in s["tasks"]))
    )
    if metadata:
        benchmark.add_metadata(metadata)
    for task in benchmark.tasks:
        load_data(task)
        for fold in task.folds:
            held = {path: s["tasks"][task.dataset_name]["results"].get(task.folds_map[fold], {})
                    for path, s in saved.items() if task.dataset_name in s["tasks"]}  # fmt: skip
            held = {path: result for path, result in held.items() if result.get("data")}
            if not held:
                continue
            (where, result), *more = held.items()
            for path, other in more:
                if (other["data"], other.get("parameters")) != (result["data"], result.get("parameters")):
                    raise ValueError(f"{task.dataset_name} fold {fold} is recorded in both {where} and {path}, "
                                     "differently: a fold is run once")  # fmt: skip
            ids = task.get_test_data(fold, include_target=False).index
            task.record(fold, [result["data"][i] for i in ids], params=result.get("parameters") or {})
    return benchmark


def metadata_differences(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ between two results files' ``user_metadata`` (compared as JSON reads them)."""
    ours, theirs = (json.loads(json.dumps(dict(m), sort_keys=True)) for m in (ours, theirs))
    return sorted(key for key in ours.keys() | theirs.keys() if ours.get(key) != theirs.get(key))
