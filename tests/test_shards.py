"""Graph shards that stream from disk on matgl 2.2.x (DGL): storage, one-shard memory, and shard-local batching."""

from __future__ import annotations

import pytest
import torch

import matgl_cdssl
from matgl_cdssl._backend import BACKEND, get_backend

pytestmark = pytest.mark.skipif(BACKEND != "dgl", reason="matgl >= 3 streams with its own MGLDiskDataset")


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, megnet_seed0):
    """20 crystals in shards of 6, 6, 6 and 2."""
    from matgl_cdssl._backend._dgl_shards import ShardedGraphs, write_shards

    structures = matgl_cdssl.load_sample(20).structures
    folder = tmp_path_factory.mktemp("shards")
    records = ({"structure": s, "labels": {"structure_index": i}} for i, s in enumerate(structures))
    converter = get_backend().converter(megnet_seed0.element_types, megnet_seed0.cutoff)
    write_shards(records, converter, folder, shard_size=6)
    return ShardedGraphs(folder), structures


def _index(dataset, position):
    return int(dataset[position][3]["structure_index"])


def test_shards_hold_the_graphs_in_order_one_shard_in_memory(sharded, megnet):
    from matgl_cdssl.data import build_dataset

    dataset, structures = sharded
    assert (len(dataset), dataset.num_shards) == (20, 4)
    assert [dataset.shard_of(i) for i in (0, 5, 6, 17, 18, 19)] == [0, 0, 1, 2, 3, 3]
    reference, _, _ = build_dataset(structures, element_types=megnet.element_types, cutoff=megnet.cutoff)
    backend = get_backend()
    for i in (0, 7, 19, 3):
        graph, lattice, state, labels = dataset[i]
        ref_graph, ref_lattice, ref_state, _ = reference[i]
        assert int(labels["structure_index"]) == i
        assert torch.equal(backend.topology(graph).src, backend.topology(ref_graph).src)
        assert torch.equal(backend.pbc_offset(graph), backend.pbc_offset(ref_graph))
        assert torch.equal(graph.edata["bond_dist"], ref_graph.edata["bond_dist"])  # as matgl's MGLDataset makes it
        assert torch.equal(lattice, ref_lattice)
        assert torch.equal(state, ref_state)
        assert dataset._loaded[0] == dataset.shard_of(i)  # only the shard of the last item is held
    assert dataset[-1][3]["structure_index"] == 19
    with pytest.raises(IndexError, match="out of range for 20 graphs"):
        dataset[20]
    assert repr(dataset).endswith("graphs=20, shards=4)")


def test_batches_stay_in_one_shard_and_cover_every_crystal(sharded):
    from matgl_cdssl._backend._dgl_shards import ShardBatchSampler

    dataset, _ = sharded
    sampler = ShardBatchSampler(dataset, 4, shuffle=False)
    batches = list(sampler)
    assert [len(b) for b in batches] == [4, 2, 4, 2, 4, 2, 2]  # cut at the ends of the shards
    assert [i for b in batches for i in b] == list(range(20))  # validation: the stored order
    for batch in batches:
        assert len({dataset.shard_of(i) for i in batch}) == 1
    assert len(sampler) == len(batches)


def test_shuffle_follows_seed_and_epoch(sharded):
    from matgl_cdssl._backend._dgl_shards import ShardBatchSampler

    dataset, _ = sharded

    def order(seed, epoch):
        sampler = ShardBatchSampler(dataset, 4, shuffle=True, seed=seed)
        sampler.sampler.set_epoch(epoch)  # what Lightning calls at the start of each epoch
        batches = list(sampler)
        assert all(len({dataset.shard_of(i) for i in b}) == 1 for b in batches)
        return [i for b in batches for i in b]

    assert sorted(order(0, 0)) == list(range(20))
    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)
    unset = ShardBatchSampler(dataset, 4, shuffle=True)  # nobody sets the epoch: each pass is the next epoch
    assert [i for b in unset for i in b] == order(0, 0)
    assert [i for b in unset for i in b] == order(0, 1)


@pytest.mark.parametrize("world_size", [2, 3, 5])
def test_ranks_read_disjoint_crystals_in_equal_numbers_of_batches(sharded, world_size):
    from matgl_cdssl._backend._dgl_shards import ShardBatchSampler

    dataset, _ = sharded
    seen, counts = [], []
    for rank in range(world_size):
        sampler = ShardBatchSampler(dataset, 4, shuffle=True, seed=3, rank=rank, world_size=world_size)
        batches = list(sampler)
        counts.append(len(batches))
        seen.append({i for b in batches for i in b})
        if world_size <= dataset.num_shards:  # whole shards per rank: each shard it touches, it reads entirely
            shards = {dataset.shard_of(i) for i in seen[-1]}
            assert seen[-1] == {i for i in range(20) if dataset.shard_of(i) in shards}
    assert len(set(counts)) == 1  # DDP needs the same number of steps on every rank
    assert set().union(*seen) == set(range(20))
    for a in range(world_size):
        for b in range(a + 1, world_size):
            assert not seen[a] & seen[b]


def test_a_subset_is_batched_by_the_shards_of_its_items(sharded):
    from torch.utils.data import Subset

    from matgl_cdssl._backend._dgl_shards import ShardBatchSampler

    dataset, _ = sharded
    subset = Subset(dataset, [19, 0, 7, 8, 1, 13])
    batches = list(ShardBatchSampler(subset, 8, shuffle=False))
    assert batches == [[1, 4], [2, 3], [5], [0]]  # positions in the subset, grouped by shard 0, 1, 2, 3
    assert [_index(subset, p) for b in batches for p in b] == [0, 1, 7, 8, 13, 19]


def test_loader_batches_a_cached_split_shard_by_shard(sharded):
    from torch.utils.data import Subset

    dataset, _ = sharded
    train, val = Subset(dataset, list(range(0, 20, 2))), Subset(dataset, list(range(1, 20, 2)))
    train_loader, val_loader = get_backend().loaders(train, val, batch_size=4, seed=0)
    assert sorted(int(i) for batch in train_loader for i in batch[3]) == list(range(0, 20, 2))
    assert [int(i) for batch in val_loader for i in batch[3]] == list(range(1, 20, 2))


def test_bad_shards_and_datasets_are_named(sharded, tmp_path):
    import shutil

    from matgl_cdssl._backend._dgl_shards import ShardBatchSampler, ShardedGraphs, write_shards

    dataset, _ = sharded
    with pytest.raises(FileNotFoundError, match="no index of graph shards"):
        ShardedGraphs(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(dataset.folder, broken)
    (broken / "shard_00002" / "dgl_graph.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"shard_00002: incomplete shard \(no dgl_graph.bin\)"):
        ShardedGraphs(broken)
    with pytest.raises(ValueError, match="empty"):
        write_shards(iter([]), None, tmp_path / "empty", shard_size=4)
    with pytest.raises(TypeError, match="needs a ShardedGraphs"):
        ShardBatchSampler(list(range(4)), 2, shuffle=False)
    with pytest.raises(ValueError, match="2 crystals cannot give each of 3 ranks a batch"):
        list(ShardBatchSampler(torch.utils.data.Subset(dataset, [0, 1]), 2, shuffle=False, rank=0, world_size=3))
