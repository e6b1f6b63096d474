"""Pretraining diagnostics (``plot_pretraining``, ``cdssl plot``) and the loggers that write what they read."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import matgl_cdssl
from matgl_cdssl.analysis import PRETRAINING_METRICS, plot_pretraining, read_metrics
from matgl_cdssl.cli import build_parser, main
from matgl_cdssl.cli._analysis import _add_map_arguments, plot_pretraining_command

COMMITTED = Path(__file__).resolve().parents[1] / "docs" / "results" / "cdssl-megnet-mp" / "metrics.csv"


def _check_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert width > 2 * height > 400  # three panels side by side
    assert image[..., :3].std() > 0.05  # something was drawn


def test_read_metrics_of_a_real_run_has_one_row_per_epoch(pretrained_run):
    _, out = pretrained_run
    raw = pd.read_csv(out / "metrics.csv")
    assert len(raw) > raw["epoch"].nunique()  # Lightning writes train and val of an epoch on separate rows
    frame = read_metrics(out)
    assert list(frame.index) == [0, 1]
    assert set(PRETRAINING_METRICS) <= set(frame.columns)
    assert frame[list(PRETRAINING_METRICS)].notna().all().all()
    for epoch in (0, 1):
        rows = raw[raw["epoch"] == epoch]
        for column in PRETRAINING_METRICS:
            assert frame.loc[epoch, column] == rows[column].dropna().iloc[-1]


def test_plot_pretraining_of_a_real_run(pretrained_run, tmp_path):
    _, out = pretrained_run
    png = plot_pretraining(out, tmp_path / "figs" / "pre.png")
    assert png == tmp_path / "figs" / "pre.png"
    _check_png(png)


def test_plot_pretraining_defaults_next_to_the_csv(tmp_path):
    csv = tmp_path / "run" / "metrics.csv"
    csv.parent.mkdir()
    csv.write_bytes(COMMITTED.read_bytes())
    assert plot_pretraining(tmp_path / "run") == tmp_path / "run" / "pretraining.png"
    assert plot_pretraining(csv, None) == tmp_path / "run" / "pretraining.png"
    _check_png(tmp_path / "run" / "pretraining.png")


def test_read_metrics_of_the_committed_production_run():
    frame = read_metrics(COMMITTED)
    assert list(frame.index) == list(range(32))
    last = frame.iloc[-1]
    assert last["val_MAE"] == pytest.approx(0.0562, abs=5e-5)  # docs/results/cdssl-megnet-mp/README.md
    assert last["val_Baseline_MAE"] == pytest.approx(0.1107, abs=5e-5)
    assert (frame["val_Total_Loss"].diff().dropna() < 0).mean() > 0.8  # mostly falling


def test_a_run_without_validation_plots_its_training_curves(tmp_path):
    frame = pd.read_csv(COMMITTED)
    train_only = frame[[c for c in frame.columns if not c.startswith("val_")]].dropna(subset=["train_MAE"])
    train_only.to_csv(tmp_path / "metrics.csv", index=False)
    assert list(read_metrics(tmp_path).columns) == ["step", "train_Grad_Norm", "train_MAE", "train_Total_Loss"]
    _check_png(plot_pretraining(tmp_path))


def test_missing_metrics_csv_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"empty-run[/\\]metrics\.csv: no such file"):
        plot_pretraining(tmp_path / "empty-run")
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty-run[/\\]metrics\.csv"):
        read_metrics(tmp_path / "empty-run")


def test_missing_columns_are_named(tmp_path):
    frame = pd.read_csv(COMMITTED).drop(columns=["train_Grad_Norm", "val_Grad_Norm"])
    frame.to_csv(tmp_path / "metrics.csv", index=False)
    with pytest.raises(ValueError, match="lacks") as info:
        plot_pretraining(tmp_path, tmp_path / "x.png")
    message = str(info.value)
    assert str(tmp_path / "metrics.csv") in message
    assert "train_Grad_Norm or val_Grad_Norm" in message
    assert "MAE or" not in message  # only what is missing
    assert not (tmp_path / "x.png").exists()

    pd.DataFrame({"step": [1], "val_loss": [0.3]}).to_csv(tmp_path / "metrics.csv", index=False)
    with pytest.raises(ValueError, match="epoch, train_Total_Loss or val_Total_Loss, train_MAE or val_MAE"):
        read_metrics(tmp_path)


def test_empty_metrics_csv(tmp_path):
    (tmp_path / "metrics.csv").write_text("")
    with pytest.raises(ValueError, match="not a readable metrics CSV"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.csv").write_text(",".join(["epoch", "step", *PRETRAINING_METRICS]) + "\n")
    with pytest.raises(ValueError, match="no rows yet"):
        read_metrics(tmp_path)


# ---- the command line ----------------------------------------------------------------------------------------------
def test_plot_parser():
    parser = build_parser()
    args = parser.parse_args(["plot", "pretraining", "runs/x", "--out", "a.png"])
    assert args.func is plot_pretraining_command
    assert args.run_dir == Path("runs/x")
    assert args.out == Path("a.png")
    assert parser.parse_args(["plot", "pretraining", "runs/x"]).out is None
    with pytest.raises(SystemExit):
        parser.parse_args(["plot"])
    with pytest.raises(SystemExit):
        parser.parse_args(["plot", "pretraining"])


def test_plot_map_takes_the_arguments_of_the_map_command():
    reference = argparse.ArgumentParser()
    _add_map_arguments(reference)
    plot = next(a for a in build_parser()._subparsers._group_actions[0].choices["plot"]._actions if a.dest == "plot")
    mapper = plot.choices["map"]
    assert {s for a in reference._actions for s in a.option_strings} == {
        s for a in mapper._actions for s in a.option_strings
    }
    assert mapper.get_default("func").__name__ == "map_command"


def test_cli_plot_pretraining(tmp_path, capsys):
    (tmp_path / "metrics.csv").write_bytes(COMMITTED.read_bytes())
    assert main(["plot", "pretraining", str(tmp_path), "--out", str(tmp_path / "curves.png")]) == 0
    assert f"wrote {tmp_path / 'curves.png'}" in capsys.readouterr().out
    _check_png(tmp_path / "curves.png")


def test_cli_plot_pretraining_reports_errors(tmp_path, capsys):
    assert main(["plot", "pretraining", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert "cdssl plot: error:" in err
    assert "metrics.csv: no such file" in err


# ---- the loggers behind metrics.csv --------------------------------------------------------------------------------
def test_unknown_logger_is_named(sample):
    with pytest.raises(ValueError, match=r"unknown logger\(s\) \['wandb'\].*choose from csv, tensorboard"):
        matgl_cdssl.pretrain(sample.structures[:4], loggers=("csv", "wandb"), max_epochs=1)


def test_tensorboard_without_tensorboard_says_what_to_install(sample, monkeypatch):
    for name in ("tensorboard", "tensorboardX"):  # as on a machine without either package
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        matgl_cdssl.pretrain(sample.structures[:4], loggers=("csv", "tensorboard"), max_epochs=1)


def test_tensorboard_logger_and_csv_merged_across_resume(sample, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    options = {"batch_size": 8, "enable_progress_bar": False, "enable_model_summary": False}
    structures = sample.structures[:16]
    matgl_cdssl.pretrain(structures, max_epochs=2, output_dir=tmp_path, loggers=("csv", "tensorboard"), **options)
    assert list(read_metrics(tmp_path).index) == [0, 1]
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    scalars = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert set(PRETRAINING_METRICS) <= set(scalars.Tags()["scalars"])
    val_mae = [e.value for e in scalars.Scalars("val_MAE")]
    np.testing.assert_allclose(val_mae, read_metrics(tmp_path)["val_MAE"].to_numpy(), rtol=1e-6)

    matgl_cdssl.pretrain(
        structures,
        max_epochs=3,
        output_dir=tmp_path,
        ckpt_path=tmp_path / "checkpoints" / "last.ckpt",
        loggers=("csv", "tensorboard"),
        **options,
    )
    merged = read_metrics(tmp_path)
    assert list(merged.index) == [0, 1, 2]  # the resumed epoch appended to the earlier ones
    np.testing.assert_allclose(merged["val_MAE"].to_numpy()[:2], val_mae, rtol=1e-6)
    scalars = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert len(scalars.Scalars("val_MAE")) == 3
