"""Seeded finetuning repeats bit for bit on the CPU at one thread count. Across thread counts it depends on the CPU's
BLAS code path (no setting holds on every CPU), so that is a study, not a test: see studies/reproducibility."""

from __future__ import annotations

import pytest
import torch

from matgl_cdssl.apps import finetune

pytestmark = pytest.mark.filterwarnings("ignore:finetune. the validation set has:UserWarning")  # 8 crystals suffice


def weights_of(megnet, sample, **kwargs):
    """The weights of a short seeded finetuning run (24 training and 8 validation crystals, 2 epochs)."""
    s, y = sample.structures, sample.labels["formation_energy_per_atom_eV"]
    result = finetune(megnet, s[:24], y[:24], val_structures=s[24:32], val_targets=y[24:32], max_epochs=2,
                      batch_size=12, seed=3, accelerator="cpu", enable_progress_bar=False, **kwargs)  # fmt: skip
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()}


def test_same_seed_gives_identical_weights_at_two_threads(megnet, sample):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # threaded accumulating index_put (the backward of a gather) races without determinism
    try:
        first, second = weights_of(megnet, sample), weights_of(megnet, sample)
    finally:
        torch.set_num_threads(threads)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.are_deterministic_algorithms_enabled()  # fit gives the process-wide setting back


def test_deterministic_is_a_cpu_default_the_caller_can_override(megnet, sample):
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        weights_of(megnet, sample, deterministic=False)
        assert torch.are_deterministic_algorithms_enabled()  # the caller's own setting, given back
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
