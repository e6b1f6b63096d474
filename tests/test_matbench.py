"""run_matbench with matbench's own MatbenchBenchmark/task API, on injected data (no network).

INJECTED DATA: matbench downloads a task's data inside ``task.load()``, through matminer's ``load_dataset``. The
``injected`` fixture replaces that download call only (``matbench.data_ops.load_dataset``), so that matbench's own
``task.load()`` runs and receives 60 real cubic perovskites (Castelli et al., Energy Environ. Sci. 5, 9034 (2012):
the perov5 subset shipped for the benchmark, ``heat_ref`` in eV per cell) under the columns of
``matbench_perovskites`` (``structure``, ``e_form``). Matbench v0.1's fold splits name ids of the full 18,928-crystal
set, so they are replaced by a 5-fold shuffled KFold over the 60 injected ids, the way matbench made its splits.
Everything else (fold iteration, ``task.record`` and its scoring, ``to_file``/``from_file`` and their validation) is
matbench's unchanged code.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re

import numpy as np
import pytest
import torch

if os.environ.get("CI") != "true":  # CI installs matbench (scripts/setup-env.sh): there, a missing one fails
    pytest.importorskip("matbench")

# Only modules and classes at module level: matbench's RecursiveDotDict objects break doctest collection.
import matbench.data_ops
import matbench.metadata
from matbench.bench import MatbenchBenchmark
from pymatgen.core import Structure
from sklearn.model_selection import KFold

from matgl_cdssl.apps import FinetuneResult, predict
from matgl_cdssl.bench import MATBENCH_PROTOCOL, load_results, load_task, run_matbench, supported_tasks, write_results
from matgl_cdssl.hub import load_model

TASK = "matbench_perovskites"
N_CRYSTALS = 60
TINY = {"max_epochs": 2, "batch_size": 16, "patience": None, "enable_progress_bar": False}


def _perovskites(n: int) -> tuple[list[Structure], list[float]]:
    task = load_task("perov_heat_ref")  # the perovskites shipped with the benchmark (matgl_cdssl/benchmark_data)
    return list(task.structures[:n]), list(task.targets[:n])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny graphs: one torch thread avoids thread contention on a busy, shared 2-core CPU (no check depends on it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def injected():
    """Make matbench's ``task.load()`` return 60 perovskites, with 5 KFold splits over their ids (see above)."""
    import pandas as pd

    structures, targets = _perovskites(N_CRYSTALS)
    frame = pd.DataFrame({"structure": structures, "e_form": targets})

    def load_dataset(name, *args, **kwargs):
        assert name == TASK, f"only {TASK} is injected, not {name}"
        return frame.copy()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(matbench.data_ops, "load_dataset", load_dataset)
        ids = list(matbench.data_ops.load(TASK).index)  # matbench's own id scheme, mb-perovskites-01 ...
        splits = {
            f"fold_{k}": {"train": [ids[i] for i in train], "test": [ids[i] for i in test]}
            for k, (train, test) in enumerate(KFold(n_splits=5, shuffle=True, random_state=18012019).split(ids))
        }
        mp.setitem(matbench.metadata.mbv01_validation.splits, TASK, splits)
        yield frame.set_index(pd.Index(ids))


@pytest.fixture(scope="module")
def fold0(injected, tmp_path_factory):
    """Fold 0 only, into a plain-JSON results file; returns the benchmark and a snapshot taken right after."""
    output = tmp_path_factory.mktemp("matbench") / "results.json"
    mb = MatbenchBenchmark(autoload=False, subset=[TASK])
    returned = run_matbench(benchmark=mb, output=output, folds=[0], **TINY)
    task = mb.matbench_perovskites
    snapshot = {"recorded": dict(task.is_recorded), "file": json.loads(output.read_text())}
    return returned, mb, output, snapshot


@pytest.fixture(scope="module")
def full(fold0):
    """The same benchmark, continued over all folds (fold 0 is already recorded and skipped)."""
    _, mb, output, _ = fold0
    run_matbench(benchmark=mb, output=output, **TINY)
    return mb, output


def _check_fold(task, fold, truth):
    fold_key = task.folds_map[fold]
    test_ids = list(task.validation[fold_key].test)
    data = task.results[fold_key].data
    assert list(data) == test_ids
    predictions = np.array([data[i] for i in test_ids])
    assert np.isfinite(predictions).all()
    scores = task.results[fold_key].scores
    assert scores.mae == pytest.approx(np.mean(np.abs(predictions - truth.loc[test_ids, "e_form"].to_numpy())))
    params = task.results[fold_key].parameters
    assert params["seed"] == fold
    assert {"best_val_MAE", "best_epoch", "data_mean", "data_std"} <= set(params)
    return predictions


def test_requested_fold_is_recorded_and_scored_by_matbench(fold0, injected):
    returned, mb, _, snapshot = fold0
    assert returned is mb
    assert snapshot["recorded"] == {0: True, 1: False, 2: False, 3: False, 4: False}
    task = mb.matbench_perovskites
    predictions = _check_fold(task, 0, injected)
    assert len(predictions) == len(task.get_test_data(0)) == N_CRYSTALS // 5
    # The file written after the fold holds the same predictions, in matbench's results format.
    written = snapshot["file"]["tasks"][TASK]["results"]["fold_0"]
    assert written["data"] == pytest.approx(dict(task.results.fold_0.data))
    assert written["scores"]["mae"] == pytest.approx(task.results.fold_0.scores.mae)
    assert snapshot["file"]["user_metadata"]["model"] == "CDSSL-MEGNet-MP"


def test_all_folds_write_a_file_that_matbench_reads_back(full, injected, tmp_path):
    mb, output = full
    task = mb.matbench_perovskites
    assert task.all_folds_recorded
    for fold in task.folds:
        _check_fold(task, fold, injected)
    loaded = MatbenchBenchmark.from_file(str(output))  # matbench validates every fold and id as it loads
    for fold_key in task.folds_keys:
        assert loaded.matbench_perovskites.results[fold_key].scores == pytest.approx(
            dict(task.results[fold_key].scores)
        )
    assert loaded.matbench_perovskites.scores.mae.mean == pytest.approx(task.scores.mae.mean)
    assert math.isfinite(loaded.matbench_perovskites.scores.mae.mean)
    # results.json.gz: gzip-compressed, read back with load_results.
    gz = write_results(mb, tmp_path / "results.json.gz")
    assert gz.read_bytes()[:2] == b"\x1f\x8b"
    assert load_results(gz).matbench_perovskites.scores.mae.mean == pytest.approx(task.scores.mae.mean)
    assert load_results(output).matbench_perovskites.scores.mae.mean == pytest.approx(task.scores.mae.mean)


def test_batched_predict_matches_matgl_predict_structure(injected):
    structures = list(injected["structure"][:7])
    model = load_model("CDSSL-MEGNet-MP")
    batched = predict(FinetuneResult(model, data_mean=-1.5, data_std=0.25), structures, batch_size=3)  # 3, 3 and 1
    single = np.array([float(model.predict_structure(s)) * 0.25 - 1.5 for s in structures])
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ("matbench_expt_gap", "'matbench_expt_gap' is regression on composition inputs"),
        ("matbench_mp_is_metal", "'matbench_mp_is_metal' is classification on structure inputs"),
        ("matbench_glass", "'matbench_glass' is classification on composition inputs"),
        ("matbench_perovskite", "'matbench_perovskite' is not a matbench v0.1 task"),
    ],
)
def test_unsupported_tasks_are_named(task, message):
    with pytest.raises(ValueError, match=message) as info:
        run_matbench([TASK, task], output=None)
    assert TASK in str(info.value)  # the message lists the supported tasks


def test_supported_tasks_are_the_structure_regressions():
    assert TASK in supported_tasks()
    assert "matbench_mp_gap" in supported_tasks()
    assert "matbench_mp_is_metal" not in supported_tasks()
    assert "matbench_expt_gap" not in supported_tasks()


def test_unknown_fold_and_fold_options_are_named():
    with pytest.raises(ValueError, match=r"matbench_perovskites: no fold\(s\) \[7\]; its folds are \[0, 1, 2, 3, 4\]"):
        run_matbench(TASK, output=None, folds=[7])
    with pytest.raises(ValueError, match="'val_structures' comes from each matbench fold"):
        run_matbench(TASK, output=None, val_structures=[])
    mb = MatbenchBenchmark(autoload=False, subset=[TASK])
    with pytest.raises(ValueError, match=r"task\(s\) \['matbench_mp_gap'\] are not in the given benchmark"):
        run_matbench("matbench_mp_gap", benchmark=mb, output=None)


def test_a_bad_crystal_is_named_by_its_matbench_id(injected):
    mb = MatbenchBenchmark(autoload=False, subset=[TASK])
    task = mb.matbench_perovskites
    task.load()
    bad_id = list(task.validation.fold_0.train)[3]
    lattice = task.df.at[bad_id, "structure"].lattice
    task.df.at[bad_id, "structure"] = Structure(lattice, ["Sr", "Ti"], [[0, 0, 0], [0.01, 0, 0]])
    expected = f"matbench_perovskites fold 0, training data: {bad_id} (structures[3]) has overlapping atoms"
    with pytest.raises(ValueError, match=re.escape(expected)):
        run_matbench(benchmark=mb, output=None, folds=[0], **TINY)
    assert not task.is_recorded[0]


def test_cli_runs_a_fold_through_matbench(injected, tmp_path, capsys):
    from matgl_cdssl.cli import main

    out = tmp_path / "cli.json.gz"
    code = main(["matbench", "--task", TASK, "--folds", "1", "--max-epochs", "1", "--batch-size", "16", "--out",
                 str(out), "--no-progress-bar"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert f"{TASK}: folds [1], test MAE per fold [" in printed
    with gzip.open(out, "rt") as f:
        written = json.load(f)
    fold = written["tasks"][TASK]["results"]["fold_1"]
    assert len(fold["data"]) == N_CRYSTALS // 5
    assert np.isfinite(fold["scores"]["mae"])
    # Another fold into the same file: it is added, and fold 1 kept (it used to be overwritten).
    assert main(["matbench", "--task", TASK, "--folds", "2", "--max-epochs", "1", "--batch-size", "16", "--out",
                 str(out), "--no-progress-bar"]) == 0  # fmt: skip
    assert f"{TASK}: folds [1, 2], test MAE per fold [" in capsys.readouterr().out
    assert _folds_in(out)["fold_1"] == fold


def test_cli_grid_options_reach_each_folds_selection(injected, tmp_path):
    from matgl_cdssl.cli import main

    def rates(*options: str) -> list[tuple]:
        out = tmp_path / f"{'_'.join(options)}.json.gz"
        assert main(["matbench", "--task", TASK, "--folds", "1", "--model", "scratch", "--lr-grid", "0.001", "0.003",
                     "--backbone-lr-scales", "1", "0.1", "--max-epochs", "1", "--patience", "0", "--lr-patience", "0",
                     "--batch-size", "16", "--out", str(out), "--no-progress-bar", *options]) == 0  # fmt: skip
        with gzip.open(out, "rt") as f:
            selection = json.load(f)["tasks"][TASK]["results"]["fold_1"]["parameters"]["lr_selection"]
        return [(r["lr"], r["beyond_edge"]) for r in selection]

    assert rates("--no-extend-edges") == [(1e-3, False), (1.4e-3, False), (2.1e-3, False), (3e-3, False)]
    assert rates("--unequal-grids", "--no-extend-edges") == [(1e-3, False), (3e-3, False)]
    assert [beyond for _, beyond in rates("--unequal-grids")] == [False, False, True]  # a 2-rate choice is at an edge


@pytest.mark.parametrize("name", ["matbench_jdft2d", "matbench_phonons"])
def test_shipped_matbench_tasks_are_matbenchs_own(name):
    from matgl_cdssl.bench import shipped_frame

    frame = shipped_frame(name)
    meta = matbench.metadata.mbv01_metadata[name]
    assert len(frame) == meta["n_samples"]
    folds = matbench.metadata.mbv01_validation.splits[name]
    for fold in folds.values():  # matbench's own fold file names exactly these crystals
        assert set(fold["train"]) | set(fold["test"]) == set(frame.index)
    mad = float(np.abs(frame[meta["target"]] - frame[meta["target"]].mean()).mean())
    assert mad == pytest.approx(meta["mad"], rel=1e-4)
    assert all(isinstance(s, Structure) for s in frame["structure"][:20])


def test_run_matbench_on_a_shipped_task_offline(tmp_path):
    mb = run_matbench("matbench_jdft2d", output=tmp_path / "results.json.gz", folds=[0], seed=3, **TINY)
    task = mb.matbench_jdft2d
    assert task.is_recorded[0]
    assert not task.is_recorded[1]
    test_ids = matbench.metadata.mbv01_validation.splits["matbench_jdft2d"]["fold_0"]["test"]
    assert len(task.results["fold_0"]["data"]) == len(test_ids)  # every test crystal of matbench's fold predicted
    assert math.isfinite(task.results["fold_0"]["scores"]["mae"])


def test_each_fold_chooses_on_its_own_carve_out_and_refits_on_the_whole_training_fold(injected, monkeypatch):
    """No run that chooses fold k's rate or epochs, nor its refit, sees a crystal of fold k's test set (by id)."""
    import matgl_cdssl.bench._matbench as runner

    real, calls = runner.finetune, []

    def finetune(model, structures, *args, **kwargs):  # watches the real finetune: which crystals each run gets
        result = real(model, structures, *args, **kwargs)
        calls.append({"crystals": [id(s) for s in structures], "kwargs": kwargs, "metrics": result.metrics,
                      "rates": kwargs["callbacks"][-1]})  # fmt: skip
        return result

    monkeypatch.setattr(runner, "finetune", finetune)
    mb = MatbenchBenchmark(autoload=False, subset=[TASK])
    run_matbench(benchmark=mb, output=None, folds=[0, 1], model="supervised", lr_grid=[1e-4, 3e-3], extend_edges=False,
                 **{**TINY, "max_epochs": 3, "lr_patience": 1})  # fmt: skip
    task = getattr(mb, TASK)
    by_object = {id(s): i for i, s in task.df["structure"].items()}
    assert len(calls) == 2 * 3  # per fold: two candidates on the carve-out, then the refit
    selections = []
    for fold in (0, 1):
        split = task.validation[task.folds_map[fold]]
        train_ids, test_ids = set(split.train), set(split.test)
        params = task.results[task.folds_map[fold]].parameters
        *carve_outs, refit = calls[3 * fold : 3 * fold + 3]
        for call in calls[3 * fold : 3 * fold + 3]:
            seen = {by_object[c] for c in call["crystals"]}
            assert not seen & test_ids  # never this fold's test crystals
            assert seen == train_ids  # the fold's training data (the carve-out validates on a part of it)
        assert all(call["kwargs"].get("val_fraction") is None for call in carve_outs)  # the fold's own carve-out
        assert refit["kwargs"]["val_fraction"] == 0  # the refit: the whole training fold, no validation
        assert refit["metrics"] == {"epochs": params["refit"]["epochs"]}
        assert params["refit"] == {"epochs": params["best_epoch"] + 1, "n_train": len(train_ids)}
        assert refit["kwargs"]["max_epochs"] == params["best_epoch"] + 1
        # The choice comes from this fold's carve-out runs alone: their validation MAEs are the fold's selection.
        scores = {(c["kwargs"]["lr"], c["kwargs"]["backbone_lr"]): c["metrics"]["best_val_MAE"] for c in carve_outs}
        selection = {(r["lr"], r["backbone_lr"]): r["best_val_MAE"] for r in params["lr_selection"]}
        assert selection == scores
        chosen = (params["lr"], params["backbone_lr"])
        assert selection[chosen] == min(selection.values())
        assert params["best_val_MAE"] == selection[chosen]  # the carve-out run reported is the choice's
        # The refit repeats the chosen carve-out run's rates, epoch by epoch, for as many epochs as chosen.
        chosen_run = next(c for c in carve_outs if (c["kwargs"]["lr"], c["kwargs"]["backbone_lr"]) == chosen)
        assert refit["rates"].rates == chosen_run["rates"].rates[: params["refit"]["epochs"]]
        assert params["protocol"] == MATBENCH_PROTOCOL
        assert math.isfinite(params["carve_out"]["test_MAE"])
        assert params["carve_out"]["test_MAE"] != pytest.approx(task.results[task.folds_map[fold]].scores.mae)
        selections.append(selection)
    assert selections[0] != selections[1]  # each fold chose on its own data


def test_the_refit_trains_a_fixed_number_of_epochs_without_validation(injected):
    """finetune(val_fraction=0), the refit's engine: every crystal trains, the last epoch is kept."""
    from matgl_cdssl.apps import finetune

    structures, targets = list(injected["structure"][:16]), injected["e_form"][:16].to_numpy()
    result = finetune("CDSSL-MEGNet-MP", structures, targets, val_fraction=0, max_epochs=2,
                      lr_patience=None, batch_size=8, enable_progress_bar=False)  # fmt: skip
    assert result.metrics == {"epochs": 2.0}  # no best epoch: there is no validation
    assert result.data_mean == pytest.approx(float(np.mean(targets)), rel=1e-5)  # all 16 crystals trained
    with pytest.raises(ValueError, match=r"without validation data .* no plateau to halve the rates on"):
        finetune("CDSSL-MEGNet-MP", structures, targets, val_fraction=0, max_epochs=1, enable_progress_bar=False)


def test_folds_recorded_under_another_protocol_are_not_continued(injected):
    mb = MatbenchBenchmark(autoload=False, subset=[TASK])
    task = getattr(mb, TASK)
    task.load()
    # As the 0.4 runner recorded its folds: one rate chosen on fold 0 for all, the carve-out model's predictions.
    test_ids = task.get_test_data(0, include_target=False).index
    task.record(0, np.zeros(len(test_ids)), params={"lr": 1e-3, "backbone_lr": None, "lr_selection": []})
    with pytest.raises(ValueError, match=r"fold\(s\) \[0\] were recorded under another protocol"):
        run_matbench(benchmark=mb, output=None, folds=[1], **TINY)
    assert not task.is_recorded[1]


def test_every_arm_chooses_from_as_many_candidates_and_lr_grid_excludes_lr(injected):
    """Scratch has no backbone rate to choose: as many rates, spread over lr_grid's range (the benchmark's rule)."""
    grid = {"lr_grid": [1e-3, 3e-3], "backbone_lr_scales": (1.0, 0.1), "extend_edges": False}
    equal, unequal = (MatbenchBenchmark(autoload=False, subset=[TASK]) for _ in range(2))
    run_matbench(benchmark=equal, output=None, folds=[0], model="scratch", **grid, **TINY)
    run_matbench(benchmark=unequal, output=None, folds=[1], model="scratch", **grid, equal_grids=False, **TINY)
    chosen = [[(r["lr"], r["backbone_lr"]) for r in getattr(mb, TASK).results[f"fold_{f}"].parameters["lr_selection"]]
              for mb, f in ((equal, 0), (unequal, 1))]  # fmt: skip
    assert chosen[0] == [(1e-3, None), (1.4e-3, None), (2.1e-3, None), (3e-3, None)]  # as many as CDSSL's 2 x 2
    assert chosen[1] == [(1e-3, None), (3e-3, None)]  # the 0.4 rule, on request
    # One benchmark is one run: its folds are not continued with other settings (here the grid).
    with pytest.raises(ValueError, match=r"the given benchmark holds folds recorded with other settings .*'lr_grid'"):
        run_matbench(benchmark=equal, output=None, folds=[1], model="scratch", **grid, equal_grids=False, **TINY)
    assert not getattr(equal, TASK).is_recorded[1]
    with pytest.raises(ValueError, match="either lr_grid"):
        run_matbench(benchmark=unequal, output=None, folds=[2], lr_grid=[1e-3], lr=1e-3, **TINY)


def test_a_choice_at_the_grids_edge_competes_with_one_step_beyond_it_in_its_fold(injected, monkeypatch):
    import matgl_cdssl.bench._matbench as runner

    real, trained = runner.finetune, []

    def finetune(*args, **kwargs):
        result = real(*args, **kwargs)
        trained.append((kwargs["lr"], kwargs.get("val_fraction"), result.metrics.get("best_val_MAE")))
        return result

    monkeypatch.setattr(runner, "finetune", finetune)
    mb = MatbenchBenchmark(autoload=False, subset=[TASK])
    run_matbench(benchmark=mb, output=None, folds=[0], model="scratch", lr_grid=[1e-3, 3e-3], **TINY)
    params = getattr(mb, TASK).results["fold_0"].parameters
    selection = params["lr_selection"]
    first = min(selection[:2], key=lambda r: r["best_val_MAE"])  # the choice on the grid alone, at one of its edges
    step = {1e-3: float(f"{1e-3 / 3:.2g}"), 3e-3: 9e-3}[first["lr"]]  # one step (the grid's ratio) beyond that edge
    assert [(r["lr"], r["beyond_edge"]) for r in selection] == [(1e-3, False), (3e-3, False), (step, True)]
    assert params["lr"] == min(selection, key=lambda r: r["best_val_MAE"])["lr"]  # all three compete, one rule
    # The step beyond trained on the fold's carve-out like the others, and the refit followed the choice.
    carve_outs = [t for t in trained if t[1] is None]
    assert [t[0] for t in carve_outs] == [1e-3, 3e-3, step]
    assert {t[0]: t[2] for t in carve_outs} == {r["lr"]: r["best_val_MAE"] for r in selection}
    assert trained[-1][:2] == (params["lr"], 0)
    assert getattr(mb, TASK).results["fold_0"].parameters["refit"]["epochs"] == params["best_epoch"] + 1


def test_an_unfinished_results_file_is_continued_where_it_stopped(injected, tmp_path):
    from matgl_cdssl.bench import resume_results

    path = tmp_path / "results.json.gz"
    run_matbench(TASK, output=path, folds=[0], model="scratch", lr_grid=[1e-3, 3e-3], extend_edges=False, **TINY)
    with pytest.raises(ValueError, match="unless all folds recorded"):  # matbench 0.6 refuses a partial file
        load_results(path)
    resumed = resume_results(path)
    task = getattr(resumed, TASK)
    assert [f for f in task.folds if task.is_recorded[f]] == [0]
    with gzip.open(path, "rt") as f:
        saved = json.load(f)["tasks"][TASK]["results"]["fold_0"]
    assert dict(task.results["fold_0"]["data"]) == pytest.approx(saved["data"])  # the same predictions, re-recorded
    run_matbench(
        TASK, output=path, benchmark=resumed, model="scratch", lr_grid=[1e-3, 3e-3], extend_edges=False, **TINY
    )
    done = load_results(path)  # every fold now: matbench reads it back
    task = getattr(done, TASK)
    assert all(task.is_recorded.values())
    assert dict(task.results["fold_0"]["data"]) == pytest.approx(saved["data"])  # fold 0 kept, not run again
    assert task.results["fold_0"].parameters["lr_selection"] == saved["parameters"]["lr_selection"]
    assert all(len(task.results[task.folds_map[f]].parameters["lr_selection"]) == 2 for f in task.folds)


def _folds_in(path) -> dict:
    with gzip.open(path, "rt") as f:
        return {k: v for k, v in json.load(f)["tasks"][TASK]["results"].items() if v.get("data")}


def test_a_results_file_is_continued_not_overwritten_and_other_settings_are_refused(injected, tmp_path):
    path = tmp_path / "results.json.gz"
    options = {"model": "scratch", "lr_grid": [1e-3, 3e-3], "extend_edges": False, **TINY}
    run_matbench(TASK, output=path, folds=[0], **options)
    first = _folds_in(path)
    mb = run_matbench(TASK, output=path, folds=[1], **options)  # the next fold, into the same file
    task = getattr(mb, TASK)
    assert [f for f in task.folds if task.is_recorded[f]] == [0, 1]
    saved = _folds_in(path)
    assert list(saved) == ["fold_0", "fold_1"]
    assert saved["fold_0"] == first["fold_0"]  # kept as it was, not lost to the second call
    # The same file with other settings would mix two runs in one file: refused, naming it and what differs.
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} holds folds recorded with other settings .*"
                                         r"\['finetune_max_epochs'\]"):  # fmt: skip
        run_matbench(TASK, output=path, folds=[2], **{**options, "max_epochs": 1})
    with pytest.raises(ValueError, match=r"task\(s\) \['matbench_jdft2d'\] are not in .*results.json.gz, which this"):
        run_matbench("matbench_jdft2d", output=path, folds=[2], **options)
    assert _folds_in(path) == saved


def test_folds_run_apart_merge_into_one_benchmark(injected, tmp_path):
    from matgl_cdssl.bench import resume_results

    options = {"model": "scratch", "lr_grid": [1e-3, 3e-3], "extend_edges": False, **TINY}
    main, part = tmp_path / "r.json.gz", tmp_path / "r.folds-1.json.gz"
    run_matbench(TASK, output=main, folds=[0], **options)
    run_matbench(TASK, output=part, folds=[1], **options)  # as another process would, into its own file
    merged = resume_results(main, part)
    task = getattr(merged, TASK)
    assert [f for f in task.folds if task.is_recorded[f]] == [0, 1]
    for fold, path in ((0, main), (1, part)):
        assert dict(task.results[f"fold_{fold}"]["data"]) == pytest.approx(_folds_in(path)[f"fold_{fold}"]["data"])
    assert merged.user_metadata["model"] == "scratch"  # the run's own metadata
    write_results(merged, main)
    assert list(_folds_in(main)) == ["fold_0", "fold_1"]
    assert not [f.name for f in tmp_path.iterdir() if f.name.startswith(".")]  # no partial file left behind
    again = getattr(resume_results(main, part), TASK)  # fold 1 is in both files now, recorded the same: fine
    assert [f for f in again.folds if again.is_recorded[f]] == [0, 1]
    # The same fold recorded differently (another seed), or another run's file: refused, each named.
    other = tmp_path / "other.json.gz"
    run_matbench(TASK, output=other, folds=[1], seed=5, **options)
    with pytest.raises(ValueError, match=rf"fold 1 is recorded in both {re.escape(str(main))} and .*other.json.gz"):
        resume_results(main, other)
    elsewhere = tmp_path / "elsewhere.json.gz"
    run_matbench(TASK, output=elsewhere, folds=[2], **{**options, "model": "CDSSL-MEGNet-MP"})
    with pytest.raises(ValueError, match=r"elsewhere.json.gz and .*r.json.gz were written by different runs .*'model'"):
        resume_results(main, elsewhere)


def test_a_selection_stopped_half_way_resumes_with_the_candidates_left(injected, tmp_path, monkeypatch):
    import matgl_cdssl.bench._matbench as runner

    real, trained = runner.finetune, []

    def finetune(*args, stop_at=None, **kwargs):
        if len(trained) == stop_at:  # the end of a session, during the selection's second candidate
            raise KeyboardInterrupt
        trained.append((kwargs["lr"], kwargs["backbone_lr"], kwargs["max_epochs"]))
        return real(*args, **kwargs)

    path = tmp_path / "results.json.gz"
    monkeypatch.setattr(runner, "finetune", lambda *a, **k: finetune(*a, stop_at=1, **k))
    with pytest.raises(KeyboardInterrupt):
        run_matbench(TASK, output=path, folds=[0], model="scratch", lr_grid=[1e-3, 3e-3], extend_edges=False, **TINY)
    assert not path.exists()  # no fold recorded
    kept = [json.loads(line) for line in (tmp_path / "results.selection.jsonl").read_text().splitlines()]
    assert [(r["task"], r["fold"], r["lr"], r["backbone_lr"]) for r in kept] == [(TASK, 0, 1e-3, None)]

    trained.clear()
    monkeypatch.setattr(runner, "finetune", finetune)
    mb = run_matbench(TASK, output=path, folds=[0], model="scratch", lr_grid=[1e-3, 3e-3], extend_edges=False, **TINY)
    params = getattr(mb, TASK).results["fold_0"].parameters
    scores = {r["lr"]: r["best_val_MAE"] for r in params["lr_selection"]}
    assert scores[1e-3] == kept[0]["best_val_MAE"]  # read back, not trained again ...
    assert trained[0] == (3e-3, None, 2)  # ... only the candidate left was
    # The choice's carve-out run is trained once more if it was in the stopped process; with the same seed it
    # reproduces the score it was chosen by. Then the refit, for the chosen number of epochs.
    refit = (params["lr"], None, params["best_epoch"] + 1)
    assert trained[1:] == [*([(1e-3, None, 2)] if params["lr"] == 1e-3 else []), refit]
    assert params["best_val_MAE"] == pytest.approx(scores[params["lr"]], rel=1e-5)
    # The same fold and options again, into another results file of the same stem (``results.*``, which shares the
    # selection: a run's folds spread over files): the selection is read back, only the choice's run and the refit.
    trained.clear()
    again = tmp_path / "results.again.json.gz"
    run_matbench(TASK, output=again, folds=[0], model="scratch", lr_grid=[1e-3, 3e-3], extend_edges=False, **TINY)
    assert trained == [(params["lr"], None, 2), refit]
    # Other finetune options are another selection: nothing is read back.
    trained.clear()
    run_matbench(
        TASK,
        output=tmp_path / "results.other.json.gz",
        folds=[0],
        model="scratch",
        lr_grid=[1e-3, 3e-3],
        extend_edges=False,
        **{**TINY, "max_epochs": 1},
    )
    assert trained[:2] == [(1e-3, None, 1), (3e-3, None, 1)]


def test_a_test_crystal_without_edges_gets_the_training_median_when_asked(tmp_path):
    """matbench_phonons' fold 4 holds mb-phonons-0037, whose atoms are all more than 4 Å apart: no graph edge."""
    kwargs = {"folds": [4], "model": "scratch", "skip_invalid": True, **TINY, "max_epochs": 1}
    with pytest.raises(ValueError, match=r"fold 4, test data .*: mb-phonons-0037 has no edge at all"):
        run_matbench("matbench_phonons", output=None, **kwargs)
    mb = run_matbench("matbench_phonons", output=None, unpredictable="median", **kwargs)
    task = mb.matbench_phonons
    result = task.results["fold_4"]
    assert list(result.parameters["unpredictable"]) == ["mb-phonons-0037"]
    _, train_y = task.get_train_and_val_data(4)
    assert result.data["mb-phonons-0037"] == pytest.approx(float(np.median(train_y)))
    assert np.isfinite(list(result.data.values())).all()
    with pytest.raises(ValueError, match="unpredictable must be 'raise' or 'median'"):
        run_matbench("matbench_phonons", output=None, unpredictable="zero", **kwargs)
