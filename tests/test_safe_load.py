"""Loading a model folder never runs code it holds: crafted pickles are refused, legitimate folders still load."""

from __future__ import annotations

import os
import pickle
import re
import shutil
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch

from matgl_cdssl import load_model, save_pretrained
from matgl_cdssl.apps import FinetuneResult
from matgl_cdssl.hub import HEAD_FILE, Ensemble, load_head, new_like
from matgl_cdssl.hub._safe_load import safe_load
from matgl_cdssl.method import make_head

SHIPPED = Path(str(files("matgl_cdssl")))
#: matgl's supervised model (a matgl 2.x TransformedTargetModel, its Normalizer in model.pt) and our pretrained one.
EFORM = SHIPPED / "benchmark_data" / "MEGNet-MP-2018.6.1-Eform"
CDSSL = SHIPPED / "pretrained" / "CDSSL-MEGNet-MP-2026.11"


class _RunsCode:
    """Unpickling this runs ``touch <marker>``: a crafted model file could run anything the same way."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def _poison(file: Path, marker: Path) -> None:
    """Add the payload to what ``file`` holds (a dict), so that the payload alone can make loading fail."""
    torch.save({**safe_load(file), "payload": _RunsCode(marker)}, file)


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def _refused(file: Path) -> pytest.RaisesContext:
    """The error: it names the file and the global it asked for (``os.system`` is ``posix.system`` on Linux)."""
    return pytest.raises(pickle.UnpicklingError, match=rf"{re.escape(str(file))}: refusing .*'\w+\.system'")


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    state = b.state_dict()
    assert a.state_dict().keys() == state.keys()
    for key, value in a.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_the_crafted_file_runs_code_when_unpickled_without_restriction(tmp_path):
    """The payload is live: plain ``torch.load(weights_only=False)``, as matgl 2.2.1 loads, runs it."""
    marker = tmp_path / "FILE"
    file = _copy(CDSSL, tmp_path) / "model.pt"
    _poison(file, marker)
    torch.load(file, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("file_name", ["model.pt", "state.pt"])
@pytest.mark.parametrize("folder", [EFORM, CDSSL], ids=["matgl-TransformedTargetModel", "CDSSL"])
def test_load_model_refuses_a_folder_whose_files_would_run_code(folder, file_name, tmp_path):
    marker = tmp_path / "FILE"
    copy = _copy(folder, tmp_path)
    _poison(copy / file_name, marker)
    with _refused(copy / file_name):
        load_model(copy)
    assert not marker.exists()


def test_an_ensemble_with_a_crafted_member_is_refused(megnet, tmp_path):
    marker = tmp_path / "FILE"
    folder = Ensemble([megnet, new_like(megnet)]).save(tmp_path / "ensemble")
    _poison(folder / "member_1" / "state.pt", marker)
    with _refused(folder / "member_1" / "state.pt"):
        load_model(folder)
    assert not marker.exists()


def test_a_crafted_pretext_head_is_refused(tmp_path):
    marker = tmp_path / "FILE"
    copy = _copy(CDSSL, tmp_path)
    _poison(copy / HEAD_FILE, marker)
    model = load_model(copy, fresh_readout=False)
    with _refused(copy / HEAD_FILE):
        load_head(copy, model)
    assert not marker.exists()


def test_safe_load_reads_tensors_numpy_and_matgls_target_transformers(tmp_path):
    from matgl.data.transformer import LogTransformer, Normalizer

    content = {
        "tensor": torch.arange(6.0).reshape(2, 3),
        "parameter": torch.nn.Parameter(torch.ones(2)),
        "int64": torch.tensor([1, 2]),
        "array": np.linspace(0, 1, 5),
        "int_array": np.arange(4, dtype=np.int32),
        "scalar": np.float64(0.5),
        "dtype": torch.float64,
        "nested": [(1, "a", None, True), {"b": 2.0}],
        "normalizer": Normalizer(mean=-1.5, std=torch.tensor(2.0)),
        "log": LogTransformer(),
    }
    torch.save(content, tmp_path / "ok.pt")
    loaded = safe_load(tmp_path / "ok.pt")
    assert torch.equal(loaded["tensor"], content["tensor"])
    assert isinstance(loaded["parameter"], torch.nn.Parameter)
    assert torch.equal(loaded["int64"], content["int64"])
    np.testing.assert_array_equal(loaded["array"], content["array"])
    assert loaded["int_array"].dtype == np.int32
    assert loaded["scalar"] == 0.5
    assert loaded["dtype"] is torch.float64
    assert loaded["nested"] == content["nested"]
    assert (loaded["normalizer"].mean, float(loaded["normalizer"].std)) == (-1.5, 2.0)
    assert isinstance(loaded["log"], LogTransformer)


def test_safe_load_refuses_any_other_class(tmp_path):
    """Not only functions: an arbitrary class (here a harmless one) is not built either."""
    torch.save({"path": Path("x")}, tmp_path / "path.pt")
    with pytest.raises(pickle.UnpicklingError, match=r"refusing .*'pathlib\.\w*Path'"):
        safe_load(tmp_path / "path.pt")


@pytest.mark.parametrize("folder", [EFORM, CDSSL], ids=["matgl-TransformedTargetModel", "CDSSL"])
def test_the_shipped_folders_still_load(folder):
    model = load_model(folder, fresh_readout=False)
    assert "MEGNet" in {type(model).__name__, type(getattr(model, "model", model)).__name__}


def test_save_pretrained_finetuned_and_ensemble_folders_still_load(megnet, tmp_path):
    head = make_head(megnet, (64,))
    save_pretrained(megnet, tmp_path / "pretrained", head=head, config={"sigma": 0.3})
    _assert_same_weights(load_model(tmp_path / "pretrained"), megnet)
    _assert_same_weights(load_head(tmp_path / "pretrained", megnet), head)

    finetuned = FinetuneResult(new_like(megnet), data_mean=-1.0, data_std=0.5).property_model()
    finetuned.save(tmp_path / "finetuned")  # as `cdssl finetune --out` writes it
    _assert_same_weights(load_model(tmp_path / "finetuned"), finetuned)

    members = [megnet, new_like(megnet)]
    loaded = load_model(Ensemble(members).save(tmp_path / "ensemble"))
    assert isinstance(loaded, Ensemble)
    for member, original in zip(loaded.members, members, strict=True):
        _assert_same_weights(member, original)
