"""Embeddings, linear probes and maps of the representation (``matgl_cdssl.analysis``), and their commands."""

from __future__ import annotations

import argparse
import csv
import sys
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

import matgl_cdssl
from matgl_cdssl.analysis import (
    embed,
    embedding_columns,
    knn_correlation,
    plot_map,
    probe,
    probe_models,
    structure_properties,
)
from matgl_cdssl.cli import build_parser, main
from matgl_cdssl.cli._analysis import _add_map_arguments, map_command
from matgl_cdssl.hub import new_like
from tests.helpers import matgl_forward


def random_like(model, seed):
    return new_like(model, weights="none", seed=seed)


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def pretrained():
    return matgl_cdssl.load_model("CDSSL-MEGNet-MP")


@pytest.fixture(scope="module")
def far_atom() -> Structure:
    """A Na-Cl pair 2.8 Å apart and a Cu atom 6 Å from both, in a 12 Å cube: the Cu has no neighbour within 4 Å."""
    return Structure(Lattice.cubic(12.0), ["Na", "Cl", "Cu"], [[0, 0, 0], [2.8 / 12, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="module")
def lonely() -> Structure:
    """One Cu atom in a 10 Å cube: no edge at all within MEGNet's 4 Å cutoff."""
    return Structure(Lattice.cubic(10.0), ["Cu"], [[0, 0, 0]])


# ---- embed ---------------------------------------------------------------------------------------------------------
def test_embed_shape_order_and_finite(megnet, tiny_structures):
    X = embed(megnet, tiny_structures, batch_size=5)
    assert X.shape == (len(tiny_structures), len(embedding_columns(megnet))) == (12, 96)
    assert X.dtype == np.float32
    assert np.isfinite(X).all()
    assert len(np.unique(X.round(5), axis=0)) == len(X)  # different crystals, different rows
    reversed_rows = embed(megnet, tiny_structures[::-1], batch_size=5)
    np.testing.assert_allclose(reversed_rows, X[::-1], rtol=1e-4, atol=1e-5)
    for i in (0, 2, 7):
        np.testing.assert_allclose(embed(megnet, [tiny_structures[i]])[0], X[i], rtol=1e-4, atol=1e-5)


def _forward_features(model, structure):
    """Final (edge, node, state) features from matgl's own ``predict_structure`` (hook on the last block)."""
    captured = {}
    hook = model.blocks[-1].register_forward_hook(lambda _m, _i, out: captured.update(out=[t.detach() for t in out]))
    try:
        model.eval()
        with torch.no_grad():
            model.predict_structure(structure)
    finally:
        hook.remove()
    return captured["out"]


@pytest.mark.parametrize("formula", ["CsCl", "Cu1", "LiFePO4_like"])
def test_embed_is_matgl_forward_pooled(request, pretrained, formula):
    structure = request.getfixturevalue(formula)
    edge, node, state = _forward_features(pretrained, structure)
    z = embed(pretrained, [structure])[0]
    d_node, d_edge = node.shape[1], edge.shape[1]
    np.testing.assert_allclose(z[:d_node], node.mean(0).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(z[d_node : d_node + d_edge], edge.mean(0).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(z[d_node + d_edge :], state.reshape(-1).numpy(), rtol=1e-4, atol=1e-5)


def test_embed_of_a_batch_is_matgl_forward_pooled(pretrained, sample):
    structures = sample.structures[:6]
    X = embed(pretrained, structures, batch_size=4)  # two batches, the second one partial
    for i, s in enumerate(structures):
        edge, node, state = _forward_features(pretrained, s)
        expected = torch.cat([node.mean(0), edge.mean(0), state.reshape(-1)]).numpy()
        np.testing.assert_allclose(X[i], expected, rtol=1e-4, atol=1e-5)


def test_embed_batch_size_invariant(megnet, sample):
    structures = sample.structures[:20]
    reference = embed(megnet, structures, batch_size=1)
    for batch_size in (3, 64):
        np.testing.assert_allclose(embed(megnet, structures, batch_size=batch_size), reference, rtol=1e-4, atol=1e-5)


def test_embed_by_name_and_restores_train_mode(pretrained, CsCl, LiFePO4_like):
    by_name = embed("CDSSL-MEGNet-MP", [CsCl, LiFePO4_like])
    pretrained.train()
    try:
        np.testing.assert_allclose(embed(pretrained, [CsCl, LiFePO4_like]), by_name, rtol=1e-5, atol=1e-6)
        assert pretrained.training
    finally:
        pretrained.eval()


def test_matgls_supervised_model_folder_embeds_and_probes_through_its_megnet(pretrained, CsCl, LiFePO4_like, capsys):
    """matgl's TransformedTargetModel folders (the benchmark's supervised arm) are embedded by the MEGNet inside."""
    folder = Path(str(files("matgl_cdssl").joinpath("benchmark_data/MEGNet-MP-2018.6.1-Eform")))
    wrapped = matgl_cdssl.load_model(folder)
    assert type(wrapped).__name__ == "TransformedTargetModel"
    by_folder = embed(folder, [CsCl, LiFePO4_like])
    np.testing.assert_allclose(embed(wrapped, [CsCl, LiFePO4_like]), by_folder, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(embed(wrapped.model, [CsCl, LiFePO4_like]), by_folder, rtol=1e-5, atol=1e-6)
    assert not np.allclose(embed(pretrained, [CsCl, LiFePO4_like]), by_folder, atol=1e-3)  # its own weights
    assert main(["probe", "--sample", "30", "--cv", "3", "--model", str(folder), "--baseline", "none"]) == 0
    assert f"| band_gap_eV | {folder} |" in capsys.readouterr().out


def test_embed_names_the_bad_crystal(megnet, CsCl, LiFePO4_like, lonely, tmp_path):
    with pytest.raises(ValueError, match=r"structures\[1\] has no edge at all"):
        embed(megnet, [CsCl, lonely, LiFePO4_like])
    path = tmp_path / "lonely.cif"
    lonely.to(filename=str(path))
    with pytest.raises(ValueError, match=r"lonely\.cif has no edge"):
        embed(megnet, [CsCl, path])
    with pytest.raises(ValueError, match=r"^mp-2 has no edge"):
        embed(megnet, [CsCl, lonely], names=["mp-1", "mp-2"])
    with pytest.raises(ValueError, match="names has 1 entries for 2 crystals"):
        embed(megnet, [CsCl, lonely], names=["mp-1"])
    overlapping = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.01, 0, 0]])
    with pytest.raises(ValueError, match=r"structures\[0\] has overlapping atoms"):
        embed(megnet, [overlapping, CsCl])
    with pytest.raises(ValueError, match="batch_size"):
        embed(megnet, [CsCl], batch_size=0)
    with pytest.raises(ValueError, match="expected a matgl MEGNet"):
        embed(torch.nn.Linear(2, 2), [CsCl])


def test_embed_skip_invalid_gives_nan_rows_and_warns(megnet, CsCl, LiFePO4_like, lonely, caplog):
    with pytest.warns(UserWarning, match=r"1 invalid crystal.*structures\[1\] has no edge"):
        X = embed(megnet, [CsCl, lonely, LiFePO4_like], skip_invalid=True)
    assert "Skipping" not in caplog.text  # reported once, by the warning, not also by build_dataset's log
    assert np.isnan(X[1]).all()
    np.testing.assert_allclose(X[[0, 2]], embed(megnet, [CsCl, LiFePO4_like]), rtol=1e-4, atol=1e-5)


def test_embed_accepts_atoms_without_neighbours_as_matgl_does(megnet, CsCl, far_atom):
    """An atom with no neighbour just receives no messages: embed counts such crystals in one warning."""
    with pytest.warns(UserWarning, match=r"2 crystal\(s\) have atoms with no neighbour.*structures\[1\]") as record:
        X = embed(megnet, [CsCl, far_atom, far_atom])
    assert len([w for w in record if "no neighbour" in str(w.message)]) == 1
    assert np.isfinite(X).all()
    node_feat, _ = matgl_forward(megnet, far_atom)  # matgl's own forward takes the crystal too
    n_nodes = node_feat.shape[0]
    np.testing.assert_allclose(X[1][:32], node_feat.mean(0).numpy(), rtol=1e-4, atol=1e-5)
    assert n_nodes == 3


def test_structure_properties(CsCl, Cu1):
    props = structure_properties([CsCl, Cu1])
    np.testing.assert_allclose(props["volume_per_atom"], [4.12**3 / 2, 2.55**3])
    np.testing.assert_allclose(props["density"], [CsCl.density, Cu1.density])


def test_fresh_architecture_is_seeded_and_keeps_global_rng(pretrained):
    state = torch.random.get_rng_state()
    a, b, c = random_like(pretrained, seed=0), random_like(pretrained, seed=0), random_like(pretrained, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert type(a) is type(pretrained)
    pa, pb, pc, pp = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c, pretrained))
    assert pa.shape == pp.shape
    assert torch.equal(pa, pb)
    assert not torch.equal(pa, pc)
    assert not torch.equal(pa, pp)


# ---- probe ---------------------------------------------------------------------------------------------------------
def test_probe_recovers_a_linear_signal_and_not_noise():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 20))
    y = X @ rng.normal(size=20) + 0.05 * rng.normal(size=300)
    good = probe(X, y)
    assert good["r2"] > 0.98
    assert good["mae"] < 0.2 * good["mae_mean_baseline"]
    noise = probe(X, rng.normal(size=300))
    assert noise["r2"] < 0.1
    assert noise["mae"] > 0.9 * noise["mae_mean_baseline"]


def test_probe_drops_and_counts_missing_values():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(100, 4))
    y = X.sum(axis=1)
    y[:7] = np.nan
    X[10] = np.nan
    result = probe(X, y, cv=4)
    assert (result["n"], result["n_dropped_label"], result["n_dropped_embedding"]) == (92, 7, 1)
    assert result["r2"] > 0.99
    with pytest.raises(ValueError, match=r"only 5 usable rows \(2 without a finite label, 1 without"):
        probe(X[5:13], y[5:13])
    with pytest.raises(ValueError, match="shape"):
        probe(X, y[:50])


def test_probe_models_returns_every_model_and_property(megnet, sample):
    structures = sample.structures[:60]
    eform = sample.labels["formation_energy_per_atom_eV"][:60].copy()
    eform[:4] = np.nan
    precomputed = embed(megnet, structures)
    frame = probe_models(
        {"random seed 0": megnet, "random seed 1": random_like(megnet, seed=1), "precomputed": precomputed},
        structures,
        {"eform": eform},
        cv=3,
    )
    assert list(frame["model"].unique()) == ["random seed 0", "random seed 1", "precomputed"]
    assert list(frame["property"].unique()) == ["density", "volume_per_atom", "eform"]
    assert len(frame) == 9
    assert np.isfinite(frame[["r2", "mae"]].to_numpy()).all()
    assert frame.loc[frame.property == "eform", "n_dropped_label"].tolist() == [4, 4, 4]
    same = frame[frame.model != "random seed 1"].groupby("property")["r2"].agg(["min", "max"])
    np.testing.assert_allclose(same["min"], same["max"], atol=1e-4)  # a model and its embeddings probe the same
    with pytest.raises(ValueError, match="'eform' has 3 values for 60 structures"):
        probe_models({"m": precomputed}, structures, {"eform": [1.0, 2.0, 3.0]})


# ---- map -----------------------------------------------------------------------------------------------------------
def _clustered(n=80, seed=0):
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, 2, size=n)
    X = rng.normal(size=(n, 12)) + 4.0 * cluster[:, None]
    return X, cluster + 0.1 * rng.normal(size=n)


def test_knn_correlation():
    x = np.linspace(0.0, 1.0, 200)[:, None]
    assert knn_correlation(x, np.sin(3 * x[:, 0]), k=5) > 0.99
    rng = np.random.default_rng(0)
    assert abs(knn_correlation(rng.normal(size=(500, 2)), rng.normal(size=500))) < 0.2
    with pytest.raises(ValueError, match="more than k=10"):
        knn_correlation(x[:5], x[:5, 0])


def test_plot_map_pca_writes_png(tmp_path):
    X, color = _clustered()
    X[3] = np.nan
    result = plot_map(X, color, tmp_path / "maps" / "pca.png", method="pca", label="cluster")
    assert (tmp_path / "maps" / "pca.png").read_bytes()[:8] == PNG_MAGIC
    assert result["method"] == "pca"
    assert (result["n"], result["n_dropped"], result["coords"].shape) == (79, 1, (79, 2))
    assert result["knn_correlation"] > 0.9 > 0.3 > abs(result["knn_correlation_shuffled"])
    with pytest.raises(ValueError, match="method"):
        plot_map(X, color, tmp_path / "x.png", method="tsne")


def test_plot_map_umap(tmp_path):
    pytest.importorskip("umap")
    X, color = _clustered(60)
    result = plot_map(X, color, tmp_path / "umap.png", method="umap")
    assert result["method"] == "umap"
    assert (tmp_path / "umap.png").read_bytes()[:8] == PNG_MAGIC
    assert result["knn_correlation"] > 0.9


def test_plot_map_falls_back_to_pca_without_umap(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "umap", None)  # `import umap` now raises ImportError
    X, color = _clustered()
    with pytest.warns(UserWarning, match="umap-learn is not installed.*pip install umap-learn"):
        result = plot_map(X, color, tmp_path / "fallback.png")
    assert result["method"] == "pca"
    assert (tmp_path / "fallback.png").read_bytes()[:8] == PNG_MAGIC
    assert "pip install umap-learn" in caplog.text


def test_map_command(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    _add_map_arguments(parser)
    png = tmp_path / "map.png"
    args = parser.parse_args(["--sample", "40", "--method", "pca", "--color", "band_gap_eV", "--out", str(png)])
    assert map_command(args) == 0
    assert png.read_bytes()[:8] == PNG_MAGIC
    out = capsys.readouterr().out
    assert "PCA map of 40 crystals coloured by band_gap_eV: kNN correlation (k=10)" in out
    args = parser.parse_args(["--sample", "5", "--color", "no_such_label", "--out", str(png)])
    with pytest.raises(ValueError, match=r"no label.*no_such_label"):
        map_command(args)


# ---- command line --------------------------------------------------------------------------------------------------
def test_parser_has_embed_and_probe():
    args = build_parser().parse_args(["embed", "a.cif", "--out", "e.npz"])
    assert (args.model, args.batch_size, str(args.out)) == ("CDSSL-MEGNet-MP", 64, "e.npz")
    args = build_parser().parse_args(["probe", "--sample", "10"])
    assert (args.baseline, args.cv, args.seed) == ("random", 5, 0)


def test_cli_embed_formats(tmp_path, pretrained, sample, capsys):
    expected = embed(pretrained, sample.structures[:5])
    assert main(["embed", "--sample", "5", "--out", str(tmp_path / "e.npz")]) == 0
    saved = np.load(tmp_path / "e.npz")
    assert saved["ids"].tolist() == sample.material_ids[:5]
    np.testing.assert_allclose(saved["embeddings"], expected, rtol=1e-5, atol=1e-6)
    assert "embedded 5 crystals with CDSSL-MEGNet-MP: 96 values each" in capsys.readouterr().out

    assert main(["embed", "--sample", "5", "--out", str(tmp_path / "e.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), expected, rtol=1e-5, atol=1e-6)
    assert (tmp_path / "e.ids.txt").read_text().split() == sample.material_ids[:5]

    files = []
    for i, s in enumerate(sample.structures[:3]):
        files.append(str(tmp_path / f"s{i}.cif"))
        s.to(filename=files[-1])
    assert main(["embed", *files, "--out", str(tmp_path / "e.csv")]) == 0
    with open(tmp_path / "e.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:2] == ["id", "node_mean_0"]
    assert rows[0][-1] == "state_31"
    assert [r[0] for r in rows[1:]] == files
    np.testing.assert_allclose(np.array(rows[1:])[:, 1:].astype(float), expected[:3], rtol=1e-4, atol=1e-5)


def test_cli_embed_reports_problems(tmp_path, monkeypatch, capsys, sample, lonely):
    assert main(["embed", "--sample", "3", "--out", str(tmp_path / "e.txt")]) == 1
    assert "unknown format '.txt'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "fastparquet", None)
    assert main(["embed", "--sample", "3", "--out", str(tmp_path / "e.parquet")]) == 1
    assert "parquet needs pyarrow (`pip install pyarrow`)" in capsys.readouterr().err
    assert main(["embed", "--out", str(tmp_path / "e.npz")]) == 1
    assert "exactly one" in capsys.readouterr().err

    files = [str(tmp_path / "ok.cif"), str(tmp_path / "lonely.cif")]
    sample.structures[0].to(filename=files[0])
    lonely.to(filename=files[1])
    assert main(["embed", *files, "--out", str(tmp_path / "e.npz")]) == 1
    assert "lonely.cif has no edge at all" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="lonely.cif"):
        assert main(["embed", *files, "--skip-invalid", "--out", str(tmp_path / "e.npz")]) == 0
    assert "1 invalid crystal(s) have rows of NaN" in capsys.readouterr().out
    assert np.isnan(np.load(tmp_path / "e.npz")["embeddings"][1]).all()


def test_cli_probe_sample(tmp_path, capsys):
    out = tmp_path / "probe.csv"
    assert main(["probe", "--sample", "40", "--cv", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| property | model | R² | MAE |")
    for name in ("CDSSL-MEGNet-MP", "random init (seed 0)"):
        assert f"| density | {name} |" in printed
        assert f"| band_gap_eV | {name} |" in printed
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8  # 2 models x (density, volume per atom, formation energy, band gap)
    assert {r["property"] for r in rows} == {
        "density",
        "volume_per_atom",
        "formation_energy_per_atom_eV",
        "band_gap_eV",
    }


def test_cli_probe_csv_labels_with_missing_values(tmp_path, sample, capsys):
    path = tmp_path / "data.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["material_id", "cif", "gap"])
        for i, (mid, s) in enumerate(zip(sample.material_ids[:30], sample.structures[:30], strict=True)):
            gap = "" if i < 3 else ("n/a" if i == 3 else f"{sample.labels['band_gap_eV'][i]:.4f}")
            writer.writerow([mid, s.to(fmt="cif"), gap])
    assert main(["probe", str(path), "--labels", "gap", "--baseline", "none", "--cv", "3"]) == 0
    printed = capsys.readouterr().out
    assert "| gap | CDSSL-MEGNet-MP |" in printed
    assert "random init" not in printed
    assert "gap: left out 4 crystal(s) without a value" in printed
    assert main(["probe", str(path), "--labels", "nope", "--baseline", "none"]) == 1
    assert "no column(s) ['nope']" in capsys.readouterr().err


def test_cli_embed_writes_parquet_with_ids(tmp_path, sample):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    out = tmp_path / "e.parquet"
    assert main(["embed", "--sample", "4", "--out", str(out)]) == 0
    frame = pd.read_parquet(out)
    assert list(frame["id"]) == list(sample.material_ids[:4])
    assert frame.shape == (4, 97)
    np.testing.assert_allclose(frame.drop(columns="id").to_numpy(), embed("CDSSL-MEGNet-MP", sample.structures[:4]),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
