"""The on-disk graph cache: misses, hits, keys, interrupted writes, and equivalence with the in-memory dataset."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

import matgl_cdssl
from matgl_cdssl._backend import get_backend, matgl_version
from matgl_cdssl.data import build_dataset
from matgl_cdssl.data._cache import MARKER, cached_dataset, split_cached
from matgl_cdssl.data._cache_keys import cache_folder, cache_key, fingerprint_labels, fingerprint_structures
from matgl_cdssl.method import CDSSLModule


@pytest.fixture(scope="module")
def crystals():
    sample = matgl_cdssl.load_sample(20)
    return sample.structures, {"band_gap": sample.labels["band_gap_eV"]}


def _args(megnet, tmp_path, labels, **overrides):
    args = {"element_types": megnet.element_types, "cutoff": megnet.cutoff, "cache_dir": tmp_path, "labels": labels}
    args.update(overrides)
    return args


def _assert_same_items(cached, reference):
    backend = get_backend()
    assert len(cached) == len(reference)
    for i in range(len(reference)):
        (g1, lat1, state1, labels1), (g2, lat2, state2, labels2) = cached[i], reference[i]
        t1, t2 = backend.topology(g1), backend.topology(g2)
        assert t1.src.numel() == t2.src.numel(), f"item {i}: edge count"
        assert torch.equal(t1.src, t2.src)
        assert torch.equal(t1.dst, t2.dst)
        assert torch.equal(backend.node_types(g1), backend.node_types(g2))
        assert torch.equal(backend.frac_coords(g1), backend.frac_coords(g2))
        assert torch.equal(backend.pbc_offset(g1), backend.pbc_offset(g2))
        assert torch.equal(lat1, lat2)
        assert torch.equal(state1, state2)
        assert list(labels1) == list(labels2) == ["band_gap", "structure_index"]
        for key in labels1:
            assert torch.equal(labels1[key], labels2[key]) or (labels1[key].isnan() and labels2[key].isnan())


def test_miss_then_hit_loads_the_same_graphs(crystals, megnet, tmp_path):
    structures, labels = crystals
    first = cached_dataset(structures, **_args(megnet, tmp_path, labels), shard_size=7)
    assert not first.hit
    assert first.names == [f"structures[{i}]" for i in range(len(structures))]
    assert first.skipped == []
    folder = cache_folder(structures, **_args(megnet, tmp_path, labels))
    assert (folder / MARKER).is_file()
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temporary folder left behind
    files = {p.name: p.stat().st_mtime_ns for p in folder.rglob("*")}

    second = cached_dataset(structures, **_args(megnet, tmp_path, labels), shard_size=7)
    assert second.hit
    assert second.names == first.names
    assert {p.name: p.stat().st_mtime_ns for p in folder.rglob("*")} == files  # nothing was rewritten

    reference, _, _ = build_dataset(structures, element_types=megnet.element_types, cutoff=megnet.cutoff, labels=labels)
    _assert_same_items(first.dataset, reference)
    _assert_same_items(second.dataset, reference)


def test_other_cutoff_elements_or_labels_miss(crystals, megnet, tmp_path):
    structures, labels = crystals
    assert not cached_dataset(structures, **_args(megnet, tmp_path, labels)).hit
    assert cached_dataset(structures, **_args(megnet, tmp_path, labels)).hit
    assert not cached_dataset(structures, **_args(megnet, tmp_path, labels, cutoff=megnet.cutoff + 0.5)).hit
    reordered = [*megnet.element_types[1:], megnet.element_types[0]]
    assert not cached_dataset(structures, **_args(megnet, tmp_path, labels, element_types=reordered)).hit
    assert not cached_dataset(structures, **_args(megnet, tmp_path, {"band_gap": labels["band_gap"] + 1.0})).hit
    assert not cached_dataset(structures[:10], **_args(megnet, tmp_path, None)).hit
    assert len(list(tmp_path.iterdir())) == 5


def test_interrupted_cache_is_rebuilt(crystals, megnet, tmp_path):
    structures, labels = crystals
    cached_dataset(structures, **_args(megnet, tmp_path, labels))
    folder = cache_folder(structures, **_args(megnet, tmp_path, labels))
    (folder / MARKER).unlink()  # as if the process had died before publishing the cache
    rebuilt = cached_dataset(structures, **_args(megnet, tmp_path, labels))
    assert not rebuilt.hit
    assert len(rebuilt.dataset) == len(structures)
    assert (folder / MARKER).is_file()
    assert cached_dataset(structures, **_args(megnet, tmp_path, labels)).hit


def test_files_hit_until_one_changes(crystals, megnet, tmp_path):
    structures, _ = crystals
    paths = []
    for i, s in enumerate(structures[:3]):
        paths.append(tmp_path / f"{i}.cif")
        s.to(filename=str(paths[-1]))
    cache = tmp_path / "cache"
    assert not cached_dataset(paths, **_args(megnet, cache, None)).hit
    cached = cached_dataset([str(p) for p in paths], **_args(megnet, cache, None))
    assert cached.hit
    assert len(cached.dataset) == 3
    assert cached.names == [str(p) for p in paths]
    assert cached_dataset(tmp_path, **_args(megnet, cache, None)).names == [str(p) for p in paths]  # the folder
    structures[1].to(filename=str(paths[0]))  # rewritten in place: a new size and mtime
    assert not cached_dataset(paths, **_args(megnet, cache, None)).hit


def test_a_copy_elsewhere_hits_and_its_crystals_are_named_by_the_copy(crystals, megnet, tmp_path):
    structures, _ = crystals
    lonely = Structure(Lattice.cubic(3 * megnet.cutoff), ["Na"], [[0, 0, 0]])
    first, second = tmp_path / "a" / "mine.csv", tmp_path / "b" / "mine.csv"
    first.parent.mkdir()
    rows = [f'x{i},"{s.to(fmt="cif")}"' for i, s in enumerate([*structures[:3], lonely])]
    first.write_text("material_id,cif\n" + "\n".join(rows) + "\n")
    cache = tmp_path / "cache"
    built = cached_dataset(first, **_args(megnet, cache, None), skip_invalid=True)
    assert not built.hit
    second.parent.mkdir()
    second.write_bytes(first.read_bytes())
    first.unlink()  # the names must not point at it any more
    again = cached_dataset(second, **_args(megnet, cache, None), skip_invalid=True)
    assert again.hit
    assert again.folder == built.folder
    assert again.names == [f"{second}[x{i}]" for i in range(3)]
    assert [name for name, _ in again.skipped] == [f"{second}[x3]"]
    assert "no neighbour" in again.skipped[0][1]


def test_invalid_crystal_is_named_and_nothing_is_cached(crystals, megnet, tmp_path):
    structures, _ = crystals
    overlapping = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.01, 0, 0]])
    with pytest.raises(ValueError, match=r"structures\[3\] has overlapping atoms"):
        cached_dataset([*structures[:3], overlapping], **_args(megnet, tmp_path, None))
    lonely = Structure(Lattice.cubic(3 * megnet.cutoff), ["Na"], [[0, 0, 0]])
    with pytest.raises(ValueError, match=r"structures\[1\] has atom\(s\) at site\(s\) \[0\] with no neighbour"):
        cached_dataset([structures[0], lonely], **_args(megnet, tmp_path, None))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("shard_size", [1000, 7])
def test_batches_give_the_in_memory_loss(crystals, megnet, tmp_path, shard_size):
    structures, labels = crystals
    backend = get_backend()
    cached_dataset(structures, **_args(megnet, tmp_path, labels), shard_size=shard_size)
    result = cached_dataset(structures, **_args(megnet, tmp_path, labels), shard_size=shard_size)
    assert result.hit
    cached = result.dataset
    reference, _, _ = build_dataset(structures, element_types=megnet.element_types, cutoff=megnet.cutoff, labels=labels)
    # A disk dataset is batched shard by shard, so batches cut at shard ends; compare batch by batch.
    sizes = [len(structures)] if shard_size >= len(structures) else None
    _, cached_val = backend.loaders(cached, cached, batch_size=len(structures))
    cached_batches = list(cached_val)
    if sizes is None:
        sizes = [int(b[3].numel()) for b in cached_batches]
        assert sizes == [7, 7, 6]
    offsets = np.cumsum([0, *sizes])
    reference_batches = []
    for start, stop in itertools.pairwise(offsets):
        subset = torch.utils.data.Subset(reference, range(start, stop))
        reference_batches.append(next(iter(backend.loaders(subset, subset, batch_size=len(structures))[1])))
    for cached_batch, reference_batch in zip(cached_batches, reference_batches, strict=True):
        losses = []
        for batch in (cached_batch, reference_batch):
            torch.manual_seed(0)  # CDSSLModule draws its prediction head from torch's global generator
            module = CDSSLModule(megnet, sigma=0.1, seed=0).eval()
            with torch.no_grad():
                losses.append(module.step(batch)[0]["Total_Loss"])
        assert torch.isfinite(losses[0])
        torch.testing.assert_close(losses[0], losses[1])


def test_fingerprints_and_keys(crystals, tmp_path):
    structures, labels = crystals
    s = structures[0]
    assert fingerprint_structures(structures) == fingerprint_structures(list(structures))
    assert fingerprint_structures([s]) == fingerprint_structures(s)
    nudged = s.copy()
    nudged.translate_sites([0], [1e-9, 0, 0])
    assert fingerprint_structures([nudged]) == fingerprint_structures([s])
    nudged.translate_sites([0], [1e-3, 0, 0])
    assert fingerprint_structures([nudged]) != fingerprint_structures([s])
    assert fingerprint_structures(structures[:2]) != fingerprint_structures(structures[1::-1])

    from ase.build import bulk

    assert fingerprint_structures([bulk("Cu")]) != fingerprint_structures([bulk("Cu", a=3.7)])

    path = tmp_path / "first.cif"
    s.to(filename=str(path))
    before = fingerprint_structures([path])
    assert fingerprint_structures([str(path)]) == before
    os.utime(path, ns=(1, 1))
    assert fingerprint_structures([path]) == before  # the content is the same
    (tmp_path / "copy").mkdir()
    copy = tmp_path / "copy" / "first.cif"
    copy.write_bytes(path.read_bytes())
    assert fingerprint_structures([copy]) == before  # the same file in another folder
    assert fingerprint_structures([copy.rename(tmp_path / "copy" / "second.cif")]) != before  # another name
    path.write_text(path.read_text().replace("_cell_length_a", "_cell_length_a ", 1))
    assert fingerprint_structures([path]) != before  # another content
    with pytest.raises(FileNotFoundError, match=r"missing\.cif"):
        fingerprint_structures([tmp_path / "missing.cif"])
    with pytest.raises(ValueError, match=r"structures\[1\] is a int"):
        fingerprint_structures([s, 3])

    assert fingerprint_labels(labels) == fingerprint_labels({"band_gap": list(labels["band_gap"])})
    assert fingerprint_labels(labels) != fingerprint_labels({"gap": labels["band_gap"]})

    key = cache_key("abc", ["H", "O"], 4, "pyg", matgl_version())
    assert len(key) == 16
    assert key == cache_key("abc", ("H", "O"), 4.0, "pyg", matgl_version())
    assert key != cache_key("abc", ["O", "H"], 4, "pyg", matgl_version())
    assert key != cache_key("abc", ["H", "O"], 4, "dgl", matgl_version())
    assert key != cache_key("abc", ["H", "O"], 4, "pyg", "0.0.0")
    assert key != cache_key("abc", ["H", "O"], 4, "pyg", matgl_version(), labels_fingerprint="x")


def test_pretrain_with_a_graph_cache_reuses_it(sample, tmp_path):
    import json

    import torch

    from matgl_cdssl import pretrain

    cache = tmp_path / "graphs"
    kwargs = {"max_epochs": 2, "batch_size": 8, "sigma": 0.1, "seed": 1, "val_fraction": 0.25, "graph_cache": cache,
              "enable_progress_bar": False}  # fmt: skip
    first = pretrain(sample.structures[:24], output_dir=tmp_path / "a", **kwargs)
    folders = sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))
    assert len(folders) == 1  # one cache of all the crystals
    if not get_backend().subsets_stream:  # the training and validation parts, each a streaming dataset of its own
        assert sorted(p.name.split("-")[0] for p in (cache / folders[0] / "splits").iterdir()) == ["train", "val"]
    stamps = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    second = pretrain(sample.structures[:24], output_dir=tmp_path / "b", **kwargs)
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == stamps  # a hit: nothing rewritten
    config = json.loads((tmp_path / "b" / "model" / "cdssl.json").read_text())
    assert (config["n_train"], config["n_val"], config["n_structures"]) == (18, 6, 24)
    assert all(
        torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    )


def test_skip_invalid_with_a_graph_cache(crystals, megnet, tmp_path):
    structures, _ = crystals
    overlapping = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.01, 0, 0]])
    lonely = Structure(Lattice.cubic(3 * megnet.cutoff), ["Na"], [[0, 0, 0]])
    inputs = [structures[0], overlapping, *structures[1:4], lonely, structures[4]]
    cached = cached_dataset(inputs, **_args(megnet, tmp_path, None), skip_invalid=True)
    assert [name for name, _ in cached.skipped] == ["structures[1]", "structures[5]"]
    assert "overlapping atoms" in cached.skipped[0][1]
    assert "no neighbour" in cached.skipped[1][1]
    assert cached.names == ["structures[0]", "structures[2]", "structures[3]", "structures[4]", "structures[6]"]
    assert [int(cached.dataset[i][3]["structure_index"]) for i in range(5)] == [0, 1, 2, 3, 4]
    frac = get_backend().frac_coords
    assert [frac(cached.dataset[i][0]).shape[0] for i in range(5)] == [len(s) for s in structures[:5]]
    again = cached_dataset(inputs, **_args(megnet, tmp_path, None), skip_invalid=True)
    assert again.hit
    assert again.skipped == cached.skipped
    # Without skip_invalid the same cache is not a way around the check: its first skipped crystal is reported.
    with pytest.raises(ValueError, match=r"structures\[1\] has overlapping atoms.*built with skip_invalid"):
        cached_dataset(inputs, **_args(megnet, tmp_path, None))


def test_pretrain_skip_invalid_with_a_graph_cache(sample, tmp_path):
    import json

    from matgl_cdssl import pretrain
    from matgl_cdssl.hub import read_skipped

    overlapping = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.01, 0, 0]])
    crystals = [*sample.structures[:10], overlapping, *sample.structures[10:20]]
    pretrain(crystals, max_epochs=1, batch_size=8, sigma=0.1, skip_invalid=True, graph_cache=tmp_path / "graphs",
             output_dir=tmp_path / "run", enable_progress_bar=False)  # fmt: skip
    config = json.loads((tmp_path / "run" / "model" / "cdssl.json").read_text())
    assert config["n_structures"] == 20
    assert config["n_skipped"] == 1
    skipped = read_skipped(tmp_path / "run" / "model")  # a file of its own: model.json stays small
    assert [(r["id"], r["name"]) for r in skipped] == [("10", "structures[10]")]
    assert "overlapping atoms" in skipped[0]["reason"]
    model_json = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    assert "skipped" not in model_json["metadata"]["cdssl"]


def test_split_parts_hold_the_cached_graphs(crystals, megnet, tmp_path):
    structures, labels = crystals
    cached = cached_dataset(structures, **_args(megnet, tmp_path, labels), shard_size=6)
    parts = {"train": [0, 2, 3, 5, 7, 11, 13, 17, 19], "val": [1, 4, 18]}
    split = split_cached(cached, parts, shard_size=4)
    for name, indices in parts.items():
        _assert_same_items(split[name], torch.utils.data.Subset(cached.dataset, indices))
    if not get_backend().subsets_stream:
        assert split["train"].num_shards == 3
        assert split["val"].num_shards == 1
        stamps = {p: p.stat().st_mtime_ns for p in (cached.folder / "splits").rglob("*")}
        split_cached(cached, parts, shard_size=4)
        assert {p: p.stat().st_mtime_ns for p in (cached.folder / "splits").rglob("*")} == stamps  # reused


def test_conversion_streams_one_shard_at_a_time(crystals, megnet, tmp_path, monkeypatch):
    """A cold start converts and writes each shard before reading the crystals of the next one."""
    import json as json_module

    import matgl_cdssl.data._cache as graph_cache

    structures, _ = crystals
    jsonl = tmp_path / "crystals.jsonl"
    jsonl.write_text("".join(json_module.dumps(s.as_dict()) + "\n" for s in structures))
    shards_on_disk = []
    real = graph_cache.iter_structures

    def observed(inputs):
        for i, item in enumerate(real(inputs)):
            shards_on_disk.append((i, len(list((tmp_path / "cache").rglob("shard_*")))))
            yield item

    monkeypatch.setattr(graph_cache, "iter_structures", observed)
    cached = cached_dataset(jsonl, **_args(megnet, tmp_path / "cache", None), shard_size=5)
    assert len(cached.dataset) == 20
    assert cached.names[3] == f"{jsonl}[3]"
    # When crystal i is read, the shards of all crystals before the last multiple of 5 are already written.
    assert shards_on_disk == [(i, i // 5) for i in range(20)]
