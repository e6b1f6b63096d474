"""The ``cdssl`` command, run in-process."""

from __future__ import annotations

import json

import pytest

from matgl_cdssl.cli import build_parser, main


def test_parser_defaults_and_validation():
    args = build_parser().parse_args(["pretrain", "a.cif", "b.cif", "--out", "x", "--sigma", "0.2"])
    assert [str(f) for f in args.files] == ["a.cif", "b.cif"]
    assert args.sigma == 0.2
    assert args.max_epochs is None  # unset options fall back to the config file, then to pretrain()'s defaults
    with pytest.raises(SystemExit):
        build_parser().parse_args(["pretrain", "a.cif", "--out", "x", "--sigma", "0"])


def test_max_time_is_checked_when_the_command_is_read(capsys):
    args = build_parser().parse_args(["pretrain", "a.cif", "--out", "x", "--max-time", "00:02:30:00"])
    assert args.max_time == "00:02:30:00"
    with pytest.raises(SystemExit):  # HH:MM:SS: Lightning would refuse it only after the crystals were read
        build_parser().parse_args(["pretrain", "a.cif", "--out", "x", "--max-time", "02:30:00"])
    assert "expected DD:HH:MM:SS" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["benchmark", "--patience", "0"], "--patience: must be at least 1; got 0"),  # not silently the default
        (["benchmark", "--max-epochs", "-5"], "--max-epochs: must be at least 1; got -5"),
        (["benchmark", "--lr-patience", "-1"], "--lr-patience: must be at least 0; got -1"),
        (["benchmark", "--sizes", "0"], "a training size is a positive whole number or 'full'; got '0'"),
        (["benchmark", "--task-sizes", "matbench_phonons"], "expected TASK=SIZE,SIZE,..."),
        (["benchmark", "--task-sizes", "matbench_phonons=50,0"], "a training size is a positive whole number"),
        (["benchmark", "--check-convergence", "-1"], "expected SEEDS or TASK=SEEDS"),
        (["benchmark", "--check-extension", "matbench_phonons=-2"], "expected SEEDS or TASK=SEEDS"),
        (["benchmark", "--check-convergence", "matbench_jdft2d=x"], "expected SEEDS or TASK=SEEDS"),
        (["finetune", "--patience", "2.5"], "--patience: '2.5' is not a whole number"),
    ],
)
def test_whole_number_options_are_checked_when_the_command_is_read(argv, message, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert message in capsys.readouterr().err


def test_benchmark_settings_take_the_options_given_and_default_the_others():
    from matgl_cdssl.bench import BenchmarkSettings
    from matgl_cdssl.cli._finetune import benchmark_settings

    def settings(*argv: str) -> BenchmarkSettings:
        return benchmark_settings(build_parser().parse_args(["benchmark", *argv]))

    assert settings() == BenchmarkSettings()
    assert settings("--patience", "7", "--lr-grid", "0.01", "--freeze-backbone") == BenchmarkSettings(
        patience=7, lr_grid=(0.01,), freeze_backbone=True
    )
    assert settings("--lr-patience", "0").lr_patience is None  # 0: matgl's cosine decay
    assert settings("--lr-patience", "5").lr_patience == 5
    assert settings("--min-val", "80").n_val(250) == 80  # not the default 150, and more than n_train // 4 = 62
    assert settings("--more-seeds", "1").seeds_wide(50) == (0, 1, 2, 3, 4)  # no more seeds where an interval is wide
    assert settings("--protocol", "0.4").more_seeds == 1
    assert settings().more_seeds == 2


def test_task_sizes_override_sizes_for_their_task():
    from matgl_cdssl.bench import DEFAULT_SUITE
    from matgl_cdssl.cli._finetune import _sizes

    def sizes(*argv: str, tasks: list | None = None) -> list | dict | None:
        return _sizes(build_parser().parse_args(["benchmark", *argv]), tasks)

    assert sizes("--sizes", "50", "full") == [50, "full"]
    assert sizes() is None  # each task's own curve
    mapping = sizes("--sizes", "50", "100", "--task-sizes", "matbench_phonons=50,500")
    assert list(mapping) == list(DEFAULT_SUITE)
    assert mapping["matbench_phonons"] == (50, 500)
    assert all(mapping[t] == [50, 100] for t in DEFAULT_SUITE if t != "matbench_phonons")
    # Without --sizes, the other tasks keep their own curves; a user's task (--data) is named by its target.
    assert sizes("--task-sizes", "gap=10,full", tasks=["perov_heat_ref"]) == {"gap": (10, "full")}


def test_a_task_can_have_its_own_convergence_check():
    from matgl_cdssl.bench import DEFAULT_SUITE
    from matgl_cdssl.cli._finetune import _convergence

    def seeds(*argv: str, tasks: list | None = None) -> int | dict:
        return _convergence(build_parser().parse_args(["benchmark", *argv]).check_convergence, tasks)

    assert seeds() == 0  # no check
    assert seeds("--check-convergence") == 1  # the first seed
    assert seeds("--check-convergence", "3") == 3
    assert seeds("--check-convergence", "0") == 0  # as TASK=0 is: not checked
    mapping = seeds("--check-convergence", "matbench_jdft2d=3")
    assert mapping == {**dict.fromkeys(DEFAULT_SUITE, 1), "matbench_jdft2d": 3}
    both = seeds("--check-convergence", "2", "gap=0", tasks=["perov_heat_ref", "gap"])
    assert both == {"perov_heat_ref": 2, "gap": 0}
    # --check-extension takes the same forms; "0 TASK=N" checks that task alone.
    args = build_parser().parse_args(["benchmark", "--check-convergence", "--check-extension", "0",
                                      "matbench_phonons=3"])  # fmt: skip
    assert _convergence(args.check_extension, None) == {**dict.fromkeys(DEFAULT_SUITE, 0), "matbench_phonons": 3}
    assert _convergence(args.check_convergence, None) == 1
    assert _convergence(build_parser().parse_args(["benchmark"]).check_extension, None) == 0


def test_pretrain_from_files(tmp_path, sample, capsys):
    files = []
    for i, s in enumerate(sample.structures[:20]):
        files.append(str(tmp_path / f"s{i}.cif"))
        s.to(filename=files[-1])
    out = tmp_path / "run"
    code = main(
        [
            "pretrain",
            *files,
            "--out",
            str(out),
            "--max-epochs",
            "2",
            "--batch-size",
            "8",
            "--sigma",
            "0.05",
            "--no-progress-bar",
            "--accelerator",
            "cpu",
            "--devices",
            "1",
        ]
    )
    assert code == 0
    assert "saved the pretrained MEGNet" in capsys.readouterr().out
    config = json.loads((out / "model" / "cdssl.json").read_text())
    assert config["sigma"] == 0.05
    assert config["n_structures"] == 20
    assert (out / "metrics.csv").is_file()


def test_pretrain_reports_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.cif"
    bad.write_text("garbage")
    assert main(["pretrain", str(bad), "--out", str(tmp_path / "run"), "--no-progress-bar"]) == 1
    assert "bad.cif: could not read a crystal structure" in capsys.readouterr().err


def test_pretrain_needs_files_or_sample_and_out(tmp_path, capsys):
    assert main(["pretrain", "--out", str(tmp_path)]) == 2
    assert "give structure FILES, --sample N, or a --config" in capsys.readouterr().err
    assert main(["pretrain", "--sample", "4"]) == 2
    assert "give --out" in capsys.readouterr().err


def test_info(capsys):
    assert main(["info"]) == 0
    assert "backend" in capsys.readouterr().out


@pytest.mark.parametrize("config", ["cdssl-megnet-mp.yaml", "cdssl-megnet-mp-2026.12.yaml"])
def test_the_production_configs_run_as_shipped_with_a_tiny_budget(config, tmp_path, caplog):
    """The release runs' own configuration files, on 24 crystals for an epoch, then resumed for one more.

    The device command is the same with ``--accelerator gpu`` (and the graph cache built here, reused there): this
    checks everything but the device. Only the data (``--sample``), the budget and the output are overridden; the
    pieces end at an epoch count, not at a wall time (the config's ``max_time``, hours, stays in force).
    """
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / config
    common = ["pretrain", "--config", str(path), "--sample", "24", "--out", str(tmp_path / "run"), "--graph-cache",
              str(tmp_path / "cache"), "--accelerator", "cpu", "--batch-size", "8", "--no-progress-bar"]  # fmt: skip
    import logging

    import torch

    caplog.set_level(logging.INFO, logger="matgl_cdssl")
    assert main([*common, "--max-epochs", "1"]) == 0
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    first = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert "(miss)" in caplog.text
    caplog.clear()
    assert main([*common, "--max-epochs", "2", "--resume"]) == 0  # the next piece: one more epoch
    assert "(hit)" in caplog.text  # the graph cache built by the first piece is reused
    second = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert first == 3  # 23 training crystals (val_fraction 0.05 of 24 keeps 1 back) in batches of 8
    assert second == 2 * first  # the resumed piece trained exactly its one epoch, from where the first stopped
    config_json = json.loads((tmp_path / "run" / "model" / "cdssl.json").read_text())
    assert config_json["epochs"] == 2
    assert config_json["sigma"] == 0.3


@pytest.mark.parametrize(
    ("column", "csv_input", "message"),
    [
        ("prediction", True, "in.csv: the output already has a 'prediction' column; choose another name with --column"),
        ("note", True, "in.csv: the output already has a 'note' column"),
        ("id", False, "CsCl.cif: the output already has a 'id' column"),
        ("uncertainty", False, "--column 'uncertainty': cdssl predict writes that column itself"),
        ("reason", True, "--column 'reason': cdssl predict writes that column itself"),
    ],
)
def test_predict_refuses_a_column_the_output_already_has_before_any_model_is_loaded(
    column, csv_input, message, tmp_path, capsys
):
    """The model named does not exist: an error about the column, not the model, shows that none was loaded."""
    from pymatgen.core import Lattice, Structure

    crystal = Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    if csv_input:
        inputs = tmp_path / "in.csv"
        inputs.write_text(f'cif,note,prediction\n"{crystal.to(fmt="cif")}",a,b\n')
    else:
        inputs = tmp_path / "CsCl.cif"
        crystal.to(filename=str(inputs))
    out = tmp_path / "out.csv"
    argv = ["predict", str(tmp_path / "no-such-model"), str(inputs), "--out", str(out), "--column", column]
    assert main([*argv, "--no-progress-bar"]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()
