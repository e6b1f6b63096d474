"""The run ledger's stamps: a cached run is reused only for the same data, backend, versions and Trainer options."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from matgl_cdssl.bench import (
    BenchmarkSettings,
    Ledger,
    Stamp,
    TaskData,
    benchmark,
    environment,
    load_task,
    task_digest,
    task_sizes,
    upgrade_ledger,
)

SETTINGS = BenchmarkSettings(lr_grid=(1e-3,), backbone_lr_scales=(1.0,), max_epochs=1, min_val=4, max_val=8,
                             batch_size=8)  # fmt: skip


@pytest.fixture(scope="module")
def own_task(sample):
    """A user task: 40 crystals of the bundled sample with their band gap."""
    return TaskData("my_band_gap", sample.structures[:40], sample.labels["band_gap_eV"][:40].tolist(), n_test=10)


def _shifted(task: TaskData, by: float = 1.0) -> TaskData:
    """The same crystals under the same name, every target shifted: a corrected CSV of the same shape."""
    return TaskData(task.name, task.structures, [y + by for y in task.targets], n_test=task.n_test)


def _stamps(env: dict) -> list[tuple[str, dict]]:
    """``env`` and, for each of its parts, a copy with that part changed alone."""
    changed = [("backend", {**env, "backend": "dgl" if env["backend"] == "pyg" else "pyg"})]
    for part in ("versions", "trainer"):
        for key, value in env[part].items():
            changed.append((f"{part}.{key}", {**env, part: {**env[part], key: f"{value}-other"}}))
    return changed


def test_a_record_is_found_only_under_its_own_stamp(own_task, tmp_path):
    path = tmp_path / "runs.jsonl"
    env = environment()
    stamp = Stamp({own_task.name: task_digest(own_task)}, env)
    record = {"fingerprint": "f", "task": own_task.name, "n_train": 10, "seed": 0, "arm": "scratch", "test_MAE": 0.5}
    Ledger(path, stamp=stamp).append(record)
    key = ("f", own_task.name, 10, 0, "scratch")
    found = Ledger(path, stamp=stamp)
    assert key in found
    assert found[key] == record  # the stamp stays in the file, not in the record given back
    assert json.loads(path.read_text())["stamp"] == {"data": task_digest(own_task), **env}
    assert key in Ledger(path)  # a ledger without a stamp finds every record
    other_data = Stamp({own_task.name: task_digest(_shifted(own_task))}, env)
    assert key not in Ledger(path, stamp=other_data)
    changes = _stamps(env)
    assert {name for name, _ in changes} >= {"backend", "versions.matgl", "versions.torch", "versions.lightning",
                                             "versions.matgl-cdssl", "trainer.accelerator", "trainer.devices",
                                             "trainer.precision"}  # fmt: skip
    for name, changed in changes:
        assert key not in Ledger(path, stamp=Stamp(stamp.data, changed)), name
    # A record written before stamps is not reused under one.
    unstamped = tmp_path / "old.jsonl"
    unstamped.write_text(json.dumps(record) + "\n")
    assert key not in Ledger(unstamped, stamp=stamp)
    assert key in Ledger(unstamped)


def test_a_last_line_cut_short_is_dropped_with_a_warning_and_the_ledger_goes_on(tmp_path, caplog):
    """A session that ends while a record is written leaves half a line; the next session resumes past it."""
    path = tmp_path / "runs.jsonl"
    whole = json.dumps({"id": "a", "test_MAE": 0.5})
    path.write_text(whole + "\n" + json.dumps({"id": "b", "test_MAE": 0.25})[:17])
    with caplog.at_level(logging.WARNING):
        ledger = Ledger(path, key=lambda r: r["id"])
    assert list(ledger) == [{"id": "a", "test_MAE": 0.5}]
    assert "last line is incomplete" in caplog.text
    assert str(path) in caplog.text
    assert path.read_text() == whole + "\n"  # the torn line is gone, so the next record starts its own line
    ledger.append({"id": "b", "test_MAE": 0.25})
    assert [r["id"] for r in Ledger(path, key=lambda r: r["id"])] == ["a", "b"]
    # A complete last line without its line end is kept, and the next record still gets a line of its own.
    path.write_text(whole)
    Ledger(path, key=lambda r: r["id"]).append({"id": "c", "test_MAE": 0.1})
    assert [r["id"] for r in Ledger(path, key=lambda r: r["id"])] == ["a", "c"]


def test_the_environment_resolves_the_trainer_and_ignores_what_changes_no_result():
    env = environment()
    assert env["backend"] in ("dgl", "pyg")
    assert set(env["versions"]) == {"matgl", "torch", "lightning", "matgl-cdssl"}
    assert environment({"enable_progress_bar": False, "logger": False, "precision": 32}) == env
    assert environment({"precision": "bf16"})["trainer"]["precision"] == "bf16-mixed"
    assert environment({"deterministic": True})["trainer"]["deterministic"] is True
    assert environment({"devices": 2, "accelerator": "cpu"})["trainer"]["devices"] == 2
    if not torch.cuda.is_available():  # Lightning's "auto" is the CPU here: the same runs
        assert env["trainer"]["accelerator"] == "cpu"
        assert environment({"accelerator": "cpu"}) == env


def test_the_data_digest_sees_every_target_and_crystal(own_task):
    digest = task_digest(own_task)
    assert task_digest(TaskData("other name", list(own_task.structures), list(own_task.targets))) == digest
    assert task_digest(_shifted(own_task)) != digest
    moved = own_task.structures[3].copy()
    moved.translate_sites([0], [0.01, 0, 0])
    crystals = [*own_task.structures[:3], moved, *own_task.structures[4:]]
    assert task_digest(TaskData(own_task.name, crystals, own_task.targets)) != digest
    with_test = TaskData(own_task.name, own_task.structures, own_task.targets, own_task.structures[:5],
                         own_task.targets[:5])  # fmt: skip
    assert task_digest(with_test) != digest
    assert task_digest(TaskData(own_task.name, own_task.structures, own_task.targets, own_task.structures[:5],
                                [y + 1 for y in own_task.targets[:5]])) != task_digest(with_test)  # fmt: skip


def test_changed_data_or_trainer_options_make_new_runs_and_the_same_ones_are_reused(megnet, own_task, tmp_path):
    out = tmp_path / "bench"

    def runs(task: TaskData, **trainer_kwargs) -> list[dict]:
        benchmark(megnet, arms=("scratch",), tasks=[task], sizes=(10,), seeds=(0,), output_dir=out, settings=SETTINGS,
                  progress=False, curves=False, **trainer_kwargs)  # fmt: skip
        return [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]

    first = runs(own_task)
    assert len(first) == 1
    assert len(runs(own_task, enable_progress_bar=False)) == 1  # nothing that changes a result: reused
    shifted = runs(_shifted(own_task))  # the same name, crystals and split, every target + 1.0: trained again
    assert len(shifted) == 2
    assert shifted[1]["fingerprint"] == first[0]["fingerprint"]  # the key alone could not tell them apart
    assert shifted[1]["stamp"]["data"] != first[0]["stamp"]["data"]
    assert len(runs(own_task)) == 2  # the original data again: its run is still there
    moved = own_task.structures[0].copy()
    moved.translate_sites([0], [0.02, 0.0, 0.0])
    other_crystal = TaskData(own_task.name, [moved, *own_task.structures[1:]], own_task.targets, n_test=own_task.n_test)
    assert len(runs(other_crystal)) == 3
    assert len(runs(own_task, deterministic=True)) == 4  # a Trainer option that can change a result
    if not torch.cuda.is_available():
        assert len(runs(own_task, accelerator="cpu")) == 4  # what "auto" resolves to here: the same runs


def test_upgrade_stamps_old_records_once_with_the_stated_environment(own_task, tmp_path):
    from matgl_cdssl.cli import main

    jdft2d = load_task("matbench_jdft2d")
    old = {"fingerprint": "f", "n_train": 50, "seed": 0, "arm": "scratch", "test_MAE": 1.0}
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps({**old, "task": t}) + "\n" for t in ("matbench_jdft2d", own_task.name)))
    env = environment({"accelerator": "cpu"})
    stamp = Stamp.of([jdft2d, own_task], {"accelerator": "cpu"})
    assert upgrade_ledger(path, env) == {"upgraded": 1, "already": 0, "left": 1}  # a user's task: not built in
    found = Ledger(path, stamp=stamp)
    assert ("f", "matbench_jdft2d", 50, 0, "scratch") in found
    assert ("f", own_task.name, 50, 0, "scratch") not in found
    assert upgrade_ledger(path, env, tasks=[own_task]) == {"upgraded": 1, "already": 1, "left": 0}
    assert len(Ledger(path, stamp=stamp)) == 2
    # Stated otherwise, the stamp does not match this environment: nothing is reused.
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({**old, "task": "matbench_jdft2d"}) + "\n")
    argv = ["upgrade-ledger", str(other), "--backend", "dgl" if env["backend"] == "pyg" else "pyg", "--versions",
            *(f"{k}={v}" for k, v in env["versions"].items()), "--accelerator", "cpu"]  # fmt: skip
    assert main(argv) == 0
    assert json.loads(other.read_text())["stamp"]["backend"] != env["backend"]
    assert len(Ledger(other, stamp=stamp)) == 0
    # A record that says where it ran must agree with the environment stated.
    clash = tmp_path / "clash.jsonl"
    clash.write_text(json.dumps({**old, "task": "matbench_jdft2d", "backend": "elsewhere"}) + "\n")
    with pytest.raises(ValueError, match=r"line 1: the record says \{'backend': 'elsewhere'\}"):
        upgrade_ledger(clash, env)


@pytest.mark.parametrize(("n_crystals", "n_test"), [(25, 10), (20, 10), (12, 10)])
def test_full_size_without_a_crystal_to_train_on_is_refused_naming_what_is_missing(own_task, n_crystals, n_test):
    """25 - 10 test = 15 is 1 training crystal and the 14 validation ones; 20 - 10 = 10 is the validation set alone."""
    settings = BenchmarkSettings(min_val=14 if n_crystals == 25 else 10, max_val=20)
    task = TaskData("tiny", own_task.structures[:n_crystals], own_task.targets[:n_crystals], n_test=n_test)
    if n_crystals == 25:
        assert task_sizes(task, ["full"], settings) == [1]
        return
    message = (
        rf"task 'tiny': training size 'full' leaves no crystal to train on: the task has {n_crystals} crystals, "
        rf"10 go to its test set, and validation needs 10 \(min_val=10\): give it at least 11 crystals"
    )
    with pytest.raises(ValueError, match=message):
        task_sizes(task, ["full"], settings)
