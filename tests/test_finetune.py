"""finetune(): matgl's ModelLightningModule on labelled crystals, from a pretrained folder or a fresh MEGNet."""

from __future__ import annotations

import math

import numpy as np
import pytest

from matgl_cdssl.finetune import finetune


@pytest.fixture(scope="module")
def pretrained_dir(pretrained_run):
    return pretrained_run[1] / "model"


def test_finetune_from_folder_reports_metrics(pretrained_dir, sample):
    y = sample.labels["formation_energy_per_atom_eV"]
    s = sample.structures
    result = finetune(
        pretrained_dir,
        s[:40],
        y[:40],
        val_structures=s[40:56],
        val_targets=y[40:56],
        test_structures=s[56:80],
        test_targets=y[56:80],
        max_epochs=3,
        batch_size=8,
        enable_progress_bar=False,
    )
    assert type(result.model).__name__ == "MEGNet"
    assert set(result.metrics) == {"best_val_MAE", "best_epoch", "epochs", "test_MAE"}
    assert all(math.isfinite(v) for v in result.metrics.values())
    assert result.data_mean == pytest.approx(float(np.mean(y[:40])), rel=1e-6)
    assert 0 <= result.metrics["best_epoch"] < 3


def test_finetune_holds_out_validation_when_not_given(backend, sample):
    y = sample.labels["band_gap_eV"][:30]
    result = finetune(
        backend.megnet_class(), sample.structures[:30], y, val_fraction=0.2, max_epochs=1, enable_progress_bar=False
    )
    assert math.isfinite(result.metrics["best_val_MAE"])


def test_finetune_rejects_bad_targets(backend, sample):
    s = sample.structures[:4]
    with pytest.raises(ValueError, match=r"targets has non-finite values \(NaN or inf\) at index\(es\) \[2\]"):
        finetune(backend.megnet_class(), s, [0.1, 0.2, math.nan, 0.3], max_epochs=1)
    with pytest.raises(ValueError, match="targets has 3 values for 4 structures"):
        finetune(backend.megnet_class(), s, [0.1, 0.2, 0.3], max_epochs=1)
