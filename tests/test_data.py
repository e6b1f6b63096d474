"""Reading crystals from CSV files, the Materials Project split, and run configurations."""

from __future__ import annotations

import gzip
import itertools
import os

import pandas as pd
import pytest
import torch
import yaml

from matgl_cdssl.cli import main
from matgl_cdssl.data import in_holdout_pool, load_sample, read_csv_structures, read_structures
from matgl_cdssl.hub import load_model


@pytest.fixture
def csv_of_sample(tmp_path, sample):
    path = tmp_path / "crystals.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("material_id,cif\n")
        for mp_id, s in zip(sample.material_ids[:12], sample.structures[:12], strict=True):
            f.write(f'{mp_id},"{s.to(fmt="cif")}"\n')
    return path


def test_read_csv(csv_of_sample, sample):
    names, structures = read_csv_structures(csv_of_sample)
    assert len(structures) == 12
    assert names[0] == f"{csv_of_sample}[{sample.material_ids[0]}]"
    assert structures[3].composition == sample.structures[3].composition
    kept, _ = read_csv_structures(csv_of_sample, keep=lambda i: i == sample.material_ids[5])
    assert kept == [f"{csv_of_sample}[{sample.material_ids[5]}]"]
    names2, _ = read_structures([csv_of_sample])  # a CSV path is one of the accepted inputs
    assert names2 == names


def test_csv_errors_name_the_row(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text('material_id,cif\nmp-1,"not a cif"\n')
    with pytest.raises(ValueError, match=r"bad\.csv\[mp-1\]: could not read the CIF"):
        read_csv_structures(bad)
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("material_id,structure\nmp-1,x\n")
    with pytest.raises(ValueError, match="no 'cif' column"):
        read_csv_structures(nocol)


def test_holdout_pool_is_stable_and_about_ten_percent():
    ids = [f"mp-{i}" for i in range(20000)]
    share = sum(map(in_holdout_pool, ids)) / len(ids)
    assert 0.09 < share < 0.11
    assert in_holdout_pool("mp-1000") is in_holdout_pool("mp-1000")
    assert all(in_holdout_pool(i) for i in load_sample(50).material_ids)  # the sample comes from the pool


def test_pretrain_from_config(tmp_path, csv_of_sample, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"path": csv_of_sample.name},
                "pretrain": {"sigma": 0.2, "max_epochs": 1, "batch_size": 6, "seed": 3},
                "out": "run",
            }
        )
    )
    assert main(["pretrain", "--config", str(config), "--no-progress-bar", "--max-epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "12 crystals, 2 epochs" in out
    # resume: the last checkpoint is at epoch 2 already, so a longer run continues from there
    assert main(["pretrain", "--config", str(config), "--no-progress-bar", "--max-epochs", "3", "--resume"]) == 0
    assert "3 epochs" in capsys.readouterr().out
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert sorted(metrics.dropna(subset=["val_MAE"])["epoch"]) == [0, 1, 2], "resuming keeps the earlier epochs"

    # A configuration elsewhere continues from that run's folder, named relative to the configuration file (the
    # current folder is not the file's); at a vanishing rate the result keeps the start's weights.
    (tmp_path / "next").mkdir()
    continued = tmp_path / "next" / "run.yaml"
    options = {"model": "../run/model", "max_epochs": 1, "lr": 1e-12}
    continued.write_text(
        yaml.safe_dump({"data": {"path": f"../{csv_of_sample.name}"}, "pretrain": options, "out": "run"})
    )
    assert main(["pretrain", "--config", str(continued), "--no-progress-bar"]) == 0
    start, result = (load_model(tmp_path / d / "run" / "model", fresh_readout=False) for d in ("", "next"))
    torch.testing.assert_close(result.state_dict(), start.state_dict(), rtol=0, atol=1e-6)


def test_cli_pretrains_from_a_folder_through_the_graph_cache(tmp_path, sample, capsys):
    import json

    folder = tmp_path / "crystals"
    folder.mkdir()
    for i, s in enumerate(sample.structures[:6]):
        s.to(filename=str(folder / f"{i}.cif"))
    (folder / "more.jsonl").write_text("".join(json.dumps(s.as_dict()) + "\n" for s in sample.structures[6:14]))
    args = ["pretrain", str(folder), "--out", str(tmp_path / "run"), "--graph-cache", str(tmp_path / "graphs"),
            "--max-epochs", "1", "--batch-size", "4", "--no-progress-bar"]  # fmt: skip
    assert main(args) == 0
    assert "14 crystals, 1 epochs" in capsys.readouterr().out
    (cache,) = [p for p in (tmp_path / "graphs").iterdir() if not p.name.startswith(".")]
    names = json.loads((cache / "names.json").read_text())
    assert names[:2] == [str(folder / "0.cif"), str(folder / "1.cif")]
    assert names[6] == f"{folder / 'more.jsonl'}[0]"


def test_mp_split_is_written_once_and_read_from_disk(tmp_path, csv_of_sample, sample, caplog):
    import json
    import logging

    from matgl_cdssl.data import read_mp_split, write_mp_split

    ids, structures = read_mp_split(csv_of_sample, "holdout")  # the sample lies in the hold-out pool
    written = write_mp_split(csv_of_sample, "holdout", tmp_path / "inputs")
    names, from_file = read_structures(written)
    assert names == [f"{written}[{i}]" for i in ids]  # the same crystals, in the same (hash) order
    assert from_file == structures
    stamp = written.stat().st_mtime_ns
    assert write_mp_split(csv_of_sample, "holdout", tmp_path / "inputs").stat().st_mtime_ns == stamp  # not rewritten
    os.utime(csv_of_sample, ns=(stamp + 10**9, stamp + 10**9))  # the same data, copied again later (a new date)
    assert write_mp_split(csv_of_sample, "holdout", tmp_path / "inputs").stat().st_mtime_ns == stamp  # still kept
    # The same source gives the same bytes in another folder (no file name or time in the gzip header).
    assert write_mp_split(csv_of_sample, "holdout", tmp_path / "elsewhere").read_bytes() == written.read_bytes()

    # A run configuration with a split reads it through that file, so a graph cache is hit by later runs.
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"path": str(csv_of_sample), "split": "holdout"},
                "pretrain": {"max_epochs": 1, "batch_size": 6, "graph_cache": "graphs"},
                "out": "run",
            }
        )
    )
    assert main(["pretrain", "--config", str(config), "--no-progress-bar"]) == 0
    assert (tmp_path / "run" / "inputs" / written.name).is_file()
    assert (tmp_path / "graphs").is_dir()  # relative to the configuration file
    assert json.loads((tmp_path / "run" / "model" / "cdssl.json").read_text())["n_structures"] == 12
    # Another run (another output folder, so another copy of the split) is given the graphs of the first.
    caplog.set_level(logging.INFO, logger="matgl_cdssl")
    config.write_text(config.read_text().replace("out: run", "out: run2"))
    assert main(["pretrain", "--config", str(config), "--no-progress-bar"]) == 0
    assert "crystals (hit)" in caplog.text


def test_config_rejects_unknown_options(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"pretrain": {"sigmaa": 0.2}, "out": "run"}))
    assert main(["pretrain", "--config", str(config)]) == 1


def test_folders_json_and_jsonl_read_one_crystal_at_a_time(tmp_path, sample):
    import json

    import ase.io
    from pymatgen.io.ase import AseAtomsAdaptor

    from matgl_cdssl.data import iter_structures

    crystals = sample.structures[:4]
    folder = tmp_path / "crystals"
    folder.mkdir()
    for i, s in enumerate(crystals[:2]):
        s.to(filename=str(folder / f"c{i}.cif"))
    (folder / "notes.txt").write_text("not a structure: ignored")
    ase.io.write(folder / "frames.extxyz", [AseAtomsAdaptor.get_atoms(s) for s in crystals], format="extxyz")
    ids = sample.material_ids[:4]
    entries = [{"material_id": mp_id, "structure": s.as_dict()} for mp_id, s in zip(ids, crystals, strict=True)]
    (tmp_path / "list.json").write_text(json.dumps(entries))
    (tmp_path / "mapping.json").write_text(json.dumps({"a": crystals[0].as_dict(), "b": crystals[1].as_dict()}))
    with gzip.open(tmp_path / "lines.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(s.as_dict()) + "\n" for s in crystals)

    names, structures = read_structures([folder])  # files sorted by name; each extxyz frame is a crystal
    assert names == [
        str(folder / "c0.cif"),
        str(folder / "c1.cif"),
        *(f"{folder / 'frames.extxyz'}[{i}]" for i in range(4)),
    ]
    assert [s.composition for s in structures] == [s.composition for s in [*crystals[:2], *crystals]]
    names, structures = read_structures(tmp_path / "list.json")
    assert names == [f"{tmp_path / 'list.json'}[{mp_id}]" for mp_id in sample.material_ids[:4]]
    assert structures[2] == crystals[2]
    assert read_structures(tmp_path / "mapping.json")[0] == [f"{tmp_path / 'mapping.json'}[{k}]" for k in "ab"]
    names, structures = read_structures(tmp_path / "lines.jsonl.gz")
    assert names == [f"{tmp_path / 'lines.jsonl.gz'}[{i}]" for i in range(4)]
    assert structures[3] == crystals[3]

    # Lazy: the first crystal of a file comes before the rest of the file is read.
    stream = iter_structures([tmp_path / "lines.jsonl.gz", tmp_path / "missing.cif"])
    assert next(stream)[1] == crystals[0]
    assert len(list(itertools.islice(stream, 3))) == 3
    with pytest.raises(FileNotFoundError, match=r"missing\.cif"):
        next(stream)


def test_json_errors_name_the_file_and_entry(tmp_path, sample):
    import json

    (tmp_path / "bad.jsonl").write_text(json.dumps(sample.structures[0].as_dict()) + '\n{"x": 1}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl\[1\]: not a pymatgen Structure dictionary"):
        read_structures(tmp_path / "bad.jsonl")
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(ValueError, match=r"broken\.json: invalid JSON"):
        read_structures(tmp_path / "broken.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="a folder with no structure files"):
        read_structures(tmp_path / "empty")
