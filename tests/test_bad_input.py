"""Every kind of bad input gets a clear error naming the offending item; nothing is dropped silently."""

from __future__ import annotations

import math

import ase
import pytest
from pymatgen.core import Lattice, Molecule, Structure

import matgl_cdssl
from matgl_cdssl.data import build_dataset

GOOD = Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _bad_structures():
    lat = Lattice.cubic(4.0)
    return {
        "isolated atom": (
            Structure(Lattice.cubic(10.0), ["Cu", "Cu"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
            r"site\(s\) \[0, 1\] with no neighbour within the cutoff of 4.0 Å",
        ),
        "partial occupancy": (
            Structure(lat, [{"Fe": 0.5, "Ni": 0.5}, "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
            "partial occupancy or disorder",
        ),
        "NaN coordinates": (
            Structure(lat, ["Na", "Cl"], [[0, 0, 0], [math.nan, 0.5, 0.5]]),
            r"non-finite \(NaN or inf\) coordinates at site\(s\) \[1\]",
        ),
        "inf coordinates": (
            Structure(lat, ["Na", "Cl"], [[0, 0, 0], [0.5, math.inf, 0.5]]),
            r"non-finite \(NaN or inf\) coordinates",
        ),
        "overlapping atoms": (
            Structure(lat, ["Na", "Cl"], [[0, 0, 0], [0.01, 0, 0]]),
            r"overlapping atoms: sites 0 \(Na\) and 1 \(Cl\) are 0.040 Å apart",
        ),
        "unknown element": (
            Structure(lat, ["Am", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
            r"element\(s\) \['Am'\] outside the model's element_types",
        ),
        "molecule": (Molecule(["C", "O"], [[0, 0, 0], [0, 0, 1.13]]), "is a pymatgen Molecule"),
        "non-periodic ASE atoms": (ase.Atoms("CO", positions=[[0, 0, 0], [0, 0, 1.13]]), "not a periodic crystal"),
        "not a structure": ({"lattice": [1, 2, 3]}, "is a dict; expected a pymatgen Structure"),
    }


@pytest.mark.parametrize("case", list(_bad_structures()))
def test_bad_structure_is_named(case, megnet):
    bad, message = _bad_structures()[case]
    with pytest.raises(ValueError, match=message) as info:
        build_dataset([GOOD, GOOD, bad], element_types=megnet.element_types, cutoff=megnet.cutoff)
    assert str(info.value).startswith("structures[2]")


def test_pretrain_reports_bad_structure_by_index():
    bad, _ = _bad_structures()["partial occupancy"]
    with pytest.raises(ValueError, match=r"^structures\[1\] .*partial occupancy"):
        matgl_cdssl.pretrain([GOOD, bad], max_epochs=1)


def test_a_bad_max_time_is_refused_before_any_crystal_is_read(tmp_path):
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    with pytest.raises(MisconfigurationException, match="DD:HH:MM:SS"):  # the path does not exist: never read
        matgl_cdssl.pretrain([str(tmp_path / "missing.cif")], max_epochs=1, max_time="02:30:00")


def test_skip_invalid_keeps_the_good_and_lists_the_bad(megnet, caplog):
    cases = _bad_structures()
    inputs = [GOOD, cases["isolated atom"][0], GOOD, cases["overlapping atoms"][0], GOOD]
    dataset, names, skipped = build_dataset(
        inputs, element_types=megnet.element_types, cutoff=megnet.cutoff, skip_invalid=True
    )
    assert len(dataset) == 3
    assert [name for name, _ in skipped] == ["structures[3]", "structures[1]"]
    assert "Skipping structures[3]" in caplog.text
    assert "Skipping structures[1]" in caplog.text
    kept = sorted(names[int(item[-1]["structure_index"])] for item in dataset)
    assert kept == ["structures[0]", "structures[2]", "structures[4]"]


def test_empty_input():
    with pytest.raises(ValueError, match="structures is empty"):
        matgl_cdssl.pretrain([])


@pytest.mark.parametrize("sigma", [0, -0.1, math.nan])
def test_non_positive_sigma(sigma):
    with pytest.raises(ValueError, match="sigma must be a positive length in Å"):
        matgl_cdssl.pretrain([GOOD], sigma=sigma)


def test_unreadable_and_missing_files(tmp_path, megnet):
    garbage = tmp_path / "broken.cif"
    garbage.write_text("this is not a CIF file\n")
    with pytest.raises(ValueError, match=r"broken\.cif: could not read a crystal structure"):
        build_dataset([GOOD, garbage], element_types=megnet.element_types, cutoff=megnet.cutoff)
    missing = tmp_path / "missing.cif"
    with pytest.raises(FileNotFoundError, match=r"missing\.cif: no such file"):
        build_dataset([missing], element_types=megnet.element_types, cutoff=megnet.cutoff)


def test_files_and_ase_are_read(tmp_path, megnet):
    import ase.io
    from pymatgen.io.ase import AseAtomsAdaptor

    GOOD.to(filename=str(tmp_path / "CsCl.cif"))
    GOOD.to(filename=str(tmp_path / "POSCAR"), fmt="poscar")
    atoms = AseAtomsAdaptor.get_atoms(GOOD)
    ase.io.write(tmp_path / "frames.extxyz", [atoms, atoms, atoms])
    inputs = [tmp_path / "CsCl.cif", str(tmp_path / "POSCAR"), tmp_path / "frames.extxyz", atoms]
    dataset, names, skipped = build_dataset(inputs, element_types=megnet.element_types, cutoff=megnet.cutoff)
    assert len(dataset) == 6
    assert not skipped
    assert names[2].endswith("frames.extxyz[0]")
    assert names[5] == "structures[3]"


def test_label_length_mismatch(megnet):
    with pytest.raises(ValueError, match="label 'y' has 1 values for 2 structures"):
        build_dataset([GOOD, GOOD], element_types=megnet.element_types, cutoff=megnet.cutoff, labels={"y": [1.0]})


def test_predict_refuses_a_pretraining_folder_and_names_the_fix(sample, tmp_path):
    """A ``pretrain()`` folder (plain or joint) has no property readout to predict with; its finetuned models do."""
    import numpy as np

    from matgl_cdssl.hub import Ensemble

    structures, y = sample.structures[:8], sample.labels["band_gap_eV"][:8]
    quiet = {"max_epochs": 0, "enable_progress_bar": False, "enable_model_summary": False}
    matgl_cdssl.pretrain(structures, output_dir=tmp_path / "plain", **quiet)
    matgl_cdssl.pretrain(structures, targets=y, output_dir=tmp_path / "joint", **quiet)
    for run, readout in (
        ("plain", "its readout was never trained"),
        ("joint", "trained next to the pretext, in normalised units"),
    ):
        folder = tmp_path / run / "model"
        for given in (folder, str(folder), tmp_path / run):  # the model folder, as a string, or the run's folder
            with pytest.raises(ValueError, match=f"written by pretrain.*{readout}.*finetune it first") as info:
                matgl_cdssl.predict(given, [GOOD])
            assert str(folder) in str(info.value)
    # What finetuning writes is still accepted: one model's folder and an ensemble's.
    result = matgl_cdssl.finetune(tmp_path / "plain" / "model", structures, y, max_epochs=1, batch_size=4,
                                  patience=None, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    one = tmp_path / "finetuned"
    result.property_model().save(one)
    both = Ensemble([result.property_model(), result.property_model()]).save(tmp_path / "ensemble")
    expected = matgl_cdssl.predict(result, [GOOD])
    np.testing.assert_allclose(matgl_cdssl.predict(one, [GOOD]), expected, atol=2e-5)
    np.testing.assert_allclose(matgl_cdssl.predict(both, [GOOD]), expected, atol=2e-5)
