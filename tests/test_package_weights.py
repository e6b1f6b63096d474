"""``scripts/package_weights.py``: a joint pretraining packaged as its own family, and the shipped card regenerated."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from matgl_cdssl.hub import PretrainedCard
from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "package_weights.py"
JOINT = ROOT / "studies" / "eform-start" / "checkpoints" / "eform-joint"
CONFIG = ROOT / "studies" / "eform-start" / "joint.yaml"
SHIPPED = ROOT / "matgl_cdssl" / "pretrained" / "CDSSL-MEGNet-MP-2026.11"
NAME = "CDSSL-MEGNet-MP-Eform-2026.12"


def _script():
    return load_script(SCRIPT, "package_weights")


def test_shipped_readme_regenerates_from_its_card():
    card = json.loads((SHIPPED / "card.json").read_text())
    assert _script().card_markdown(card) == (SHIPPED / "README.md").read_text()


@pytest.fixture(scope="module")
def joint_release(tmp_path_factory) -> tuple[Path, Path]:
    """The example joint run packaged into a temporary folder: the release's folder and the results folder."""
    if not (JOINT / "model" / "cdssl.json").is_file():
        pytest.skip(f"the example joint run {JOINT} is not there")
    tmp = tmp_path_factory.mktemp("package")
    run = tmp / "run"
    shutil.copytree(JOINT / "model", run / "model")
    shutil.copy(JOINT / "metrics.csv", run / "metrics.csv")
    selection = tmp / "selection.md"
    selection.write_text("# Selection\n\n| start | band gap (eV) |\n|:--|--:|\n| joint | 0.5 |\n")
    command = [sys.executable, str(SCRIPT), str(run), "--name", NAME, "--changes", "First release.",
               "--config", str(CONFIG), "--selection", str(selection), "--dest-root", str(tmp / "pretrained"),
               "--results", str(tmp / "results")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    return tmp / "pretrained" / NAME, tmp / "results"


def test_joint_card_loads_and_says_what_it_saw(joint_release):
    folder, _ = joint_release
    raw = json.loads((folder / "card.json").read_text())
    card = PretrainedCard.from_dict(raw)
    assert card.name == NAME
    assert card.family == "CDSSL-MEGNet-MP-Eform"
    assert card.version == "2026.12"
    assert card.labels_seen == ("mp_formation_energy",)
    assert card.training["start"] == "MEGNet-MP-2018.6.1-Eform"
    labels = card.training["labels"]
    assert labels["property"] == "formation_energy_per_atom_eV"
    assert labels["weight"] == 1.0
    assert labels["n_labelled"] == 33003
    assert card.metrics["property"]["name"] == "formation_energy_per_atom_eV"
    assert card.metrics["selection"]["file"].endswith("selection.md")
    assert "MEGNet-MP-2018.6.1-Eform" in card.description


def test_joint_checksums_match_the_files(joint_release):
    folder, _ = joint_release
    card = PretrainedCard.from_dict(json.loads((folder / "card.json").read_text()))
    assert {"model.pt", "state.pt", "model.json", "cdssl.json", "holdout_ids.txt"} <= set(card.files)
    for name, digest in card.files.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name


def test_joint_readme_names_the_start_and_the_labels(joint_release):
    folder, results = joint_release
    readme = (folder / "README.md").read_text()
    card = json.loads((folder / "card.json").read_text())
    assert readme == _script().card_markdown(card)
    assert "Release 2026.12 of `CDSSL-MEGNet-MP-Eform`" in readme
    assert "`MEGNet-MP-2018.6.1-Eform`" in readme
    assert "Chem. Mater. 31, 3564 (2019)" in readme
    assert "formation energies per atom" in readme
    assert "`formation_energy_per_atom_eV`" in readme
    assert "LEAK" in readme
    assert "without labels" not in readme
    assert "## Selection" in readme
    assert "### Selection" in readme  # the selection file's own heading nests under the section
    assert "freshly initialised on every load by default" in readme
    assert (results / "metrics.csv").is_file()
    assert (results / "curves.png").is_file()
