"""The coordinator's weights versions, pure (no Ray, no model): sparse step patches or a
dense snapshot, whichever is fewer bytes; advance reads only the watched positions."""

import numpy as np
import torch

from workers.protocol import (
    WeightChain,
    WeightSnapshot,
    WeightVersions,
    apply_update,
)

SHAPE = (64, 50)  # 3,200 entries, dense 12,800 bytes
KEPT = 64  # entries per step: 2%, 512 bytes per patch


def sparse_step(master: torch.Tensor, versions: WeightVersions, seed: int) -> torch.Tensor:
    """A ComPO-like step: KEPT random entries change; the versions watch them first."""
    generator = torch.Generator().manual_seed(seed)
    positions = torch.randperm(master.numel(), generator=generator)[:KEPT]
    versions.watch(positions)
    master.view(-1).index_add_(0, positions, torch.randn(KEPT, generator=generator))
    return positions


def started(chain_bytes: int | None = None) -> tuple[torch.Tensor, WeightVersions]:
    master = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(0))
    versions = WeightVersions(master.clone(), chain_bytes)
    assert versions.advance(master) is None and versions.version == 0
    return master, versions


def test_a_lagging_worker_gets_the_chain_or_the_snapshot_whichever_is_smaller():
    master, versions = started(chain_bytes=10 * 10**6)  # keep every patch: choice by bytes
    loaded = master.clone()
    held = {0: loaded.clone()}
    for seed in range(1, 31):
        sparse_step(master, versions, seed)
        assert versions.advance(master).nbytes == KEPT * 8
        held[versions.version] = master.clone()
    dense = master.numel() * 4
    for behind in (1, 5, 24, 25, 30):
        update = versions.patch_for(30 - behind)
        if behind * KEPT * 8 < dense:  # 24 patches: 12,288 bytes < 12,800
            assert isinstance(update, WeightChain) and update.nbytes == behind * KEPT * 8
        else:
            assert isinstance(update, WeightSnapshot) and update.nbytes == dense
        weight = held[30 - behind].clone()
        assert apply_update(weight, 30 - behind, update) == 30
        assert torch.equal(weight, master)  # bit for bit, either way


def test_the_chain_is_bounded_and_older_workers_get_the_snapshot():
    master, versions = started()  # default bound: a quarter of the dense bytes (3,200)
    for seed in range(1, 21):
        sparse_step(master, versions, seed)
        versions.advance(master)
    kept = sum(patch.nbytes for patch in versions.chain)
    assert len(versions.chain) == 6 and kept <= master.numel() * 4 // 4
    assert isinstance(versions.patch_for(14), WeightChain)
    for version in (13, 0, -1, 99):  # too old, as loaded, unknown (failed), never published
        assert isinstance(versions.patch_for(version), WeightSnapshot)
    snapshot = versions.patch_for(0)
    assert np.shares_memory(snapshot.values, master.numpy())  # the master itself, no copy


def test_advance_reads_only_the_watched_positions():
    master, versions = started()
    positions = sparse_step(master, versions, 1)
    outside = torch.ones(master.numel(), dtype=torch.bool)
    outside[positions] = False
    master.view(-1)[outside] = float("nan")  # never looked at: not a change, not a patch
    patch = versions.advance(master)
    assert sorted(patch.indices.tolist()) == sorted(positions.tolist())
    assert versions.advance(master) is None  # no step since: no new version
    master.view(-1)[outside] = 7.0
    assert versions.advance(master) is None and versions.version == 1


def test_a_step_that_changes_nothing_makes_no_version_and_bits_count():
    master, versions = started()
    versions.watch(torch.tensor([3, 4]))
    master.view(-1)[3] = master.view(-1)[3] + 0.0  # same bits
    assert versions.advance(master) is None
    master.view(-1)[4] = 0.0
    versions.advance(master)
    master.view(-1)[4] = -0.0  # equal as a number, not as bits: the worker must get it
    patch = versions.advance(master)
    assert patch.indices.tolist() == [4] and np.signbit(patch.values[0])


def test_unpublished_changes_stay_watched():
    master, versions = started()
    versions.watch(torch.tensor([1, 2]))
    master.view(-1)[1] += 1.0  # not published before the next watch
    versions.watch(torch.tensor([2, 9]))
    master.view(-1)[9] += 1.0
    assert sorted(versions.advance(master).indices.tolist()) == [1, 9]


def test_a_resumed_master_is_a_dense_version_for_every_worker():
    base = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(0))
    resumed = base.clone()
    resumed.view(-1)[:100] += 1.0
    versions = WeightVersions(base)
    update = versions.advance(resumed)
    assert isinstance(update, WeightSnapshot) and versions.version == 1
    assert versions.base is None  # no copy of the loaded layer kept after adopting
    weight = base.clone()
    assert apply_update(weight, 0, versions.patch_for(0)) == 1
    assert torch.equal(weight, resumed)
