"""Theorem 3.1 in miniature, and the estimator's pure functions."""

import math

import pytest
import torch

from compo.config import ClipConfig, ComPOConfig
from compo.estimator import (
    NORM_BLOCK_ROWS,
    Counts,
    RowShards,
    SparseUpdate,
    SquareSums,
    Step,
    clip_small,
    clip_threshold,
    count_votes,
    counts_at_least,
    decide_from_shards,
    decide_update,
    fraction_threshold,
    kept_votes,
    normalise,
    plan_shards,
    vote_weighted_rows,
    vote_weighted_sum,
)
from compo.perturbation import direction, direction_key, normals

D, S, M = 100_000, 20, 2000
SHAPE = (100, 1000)  # d = 100,000 entries laid out as an output layer


def sparse_problem():
    """f(x) = g.x + 0.5 |x_S|^2 with an s-sparse gradient g at x = 0 (support S)."""
    generator = torch.Generator().manual_seed(0)
    support = torch.randperm(D, generator=generator)[:S]
    gradient = torch.zeros(D)
    gradient[support] = torch.randn(S, generator=generator)

    def f(x: torch.Tensor) -> torch.Tensor:
        """f of one point [..., D] or of the S support entries only [..., S]."""
        x_s = x.reshape(*x.shape[:-2], -1)[..., support] if x.shape[-1] != S else x
        return x_s @ gradient[support] + 0.5 * (x_s**2).sum(-1)

    return f, gradient, support


def comparison_votes(f, support, x, seed, iteration, radius):
    """y_i = sign(f(x + r z_i) - f(x)): -1 when the perturbed point is better.

    f only sees the support, so only those entries of each z_i are generated here.
    """
    keys = [direction_key(seed, iteration, index) for index in range(M)]
    z_s = torch.cat([normals(keys, int(j), 1) for j in support], dim=1)  # [M, S]
    x_s = x.reshape(-1)[support]
    better = f(x_s + radius * z_s) < f(x_s)
    return torch.where(better, -1, 1).to(torch.int8)


def cosine(a, b):
    return float(torch.nn.functional.cosine_similarity(a.reshape(-1), b.reshape(-1), dim=0))


def test_sparse_gradient_recovery_clipped_vs_unclipped():
    f, gradient, support = sparse_problem()
    x = torch.zeros(SHAPE)
    votes = comparison_votes(f, support, x, seed=0, iteration=0, radius=1e-3)
    total = vote_weighted_sum(0, 0, torch.arange(M), votes, SHAPE, 1 << 22)
    unit = normalise(total)
    clipped = clip_small(unit, clip_threshold(unit, ClipConfig(mode="sigma", value=4.5)))
    raw_cos = cosine(unit, gradient)  # g estimates the gradient; the step is -g
    clipped_cos = cosine(clipped, gradient)
    print(f"cosine with the true gradient: unclipped {raw_cos:.3f}, clipped {clipped_cos:.3f}")
    assert 0.05 < raw_cos < 0.2  # ~ sqrt(2 m / (pi d)) = 0.11
    assert clipped_cos >= 0.9


def test_iterating_the_update_decreases_f():
    f, _, support = sparse_problem()
    config = ComPOConfig(num_perturbations=M, radius=1e-3, step_scale=0.5,
                         clip=ClipConfig(mode="sigma", value=4.5))
    x = torch.zeros(SHAPE)
    values = [float(f(x))]
    for iteration in range(4):
        votes = comparison_votes(f, support, x, 0, iteration, config.radius)
        total = vote_weighted_sum(0, iteration, torch.arange(M), votes, SHAPE, 1 << 22)
        decision = decide_update(total, votes, config)
        assert decision.accepted
        decision.update.apply_(x)
        values.append(float(f(x)))
    assert all(b < a for a, b in zip(values, values[1:], strict=False))


def test_vote_sum_ignores_abstentions_and_gathering_order():
    shape = (6, 5)
    indices = torch.tensor([3, 0, 2, 1])
    votes = torch.tensor([1, -1, 0, -1], dtype=torch.int8)
    total = vote_weighted_sum(4, 1, indices, votes, shape, 7)
    want = sum(v * direction(direction_key(4, 1, i), shape)
               for i, v in [(3, 1), (0, -1), (1, -1)])
    assert torch.allclose(total, want, atol=1e-6)
    shuffled = vote_weighted_sum(4, 1, indices.flip(0), votes.flip(0), shape, 7)
    assert torch.equal(total, shuffled)
    assert count_votes(votes) == (2, 3, 1)


def test_skip_when_too_few_directions_improve():
    votes = torch.tensor([-1] * 2 + [1] * 8, dtype=torch.int8)
    decision = decide_update(torch.randn(4, 4), votes, ComPOConfig(accept_ratio=0.2))
    assert not decision.accepted and decision.update is None and decision.ratio == 0.2
    assert decide_update(None, votes, ComPOConfig(accept_ratio=0.2)) == decision


def test_at_least_rule_counts_improving_directions_as_the_reference_code():
    votes = torch.tensor([-1] * 330 + [1] * 1470, dtype=torch.int8)  # 330 / 1800 = 0.183
    strict = ComPOConfig(num_perturbations=1800, accept_ratio=0.2)
    at_least = ComPOConfig(num_perturbations=1800, accept_rule="at_least", accept_count=330)
    assert not decide_update(None, votes, strict).accepted
    total = torch.randn(8, 8)
    assert decide_update(total, votes, at_least).accepted
    fewer = torch.tensor([-1] * 329 + [1] * 1471, dtype=torch.int8)
    assert not decide_update(None, fewer, at_least).accepted


def test_the_step_is_minus_step_times_the_unit_clipped_direction_bit_for_bit():
    total = torch.randn(30, 20)
    votes = torch.tensor([-1] * 7 + [1] * 3, dtype=torch.int8)
    decision = decide_update(total, votes, ComPOConfig(step_scale=0.3))
    unit = normalise(total)
    kept = clip_small(unit, clip_threshold(unit, ComPOConfig().clip)).reshape(-1)
    positions = kept.nonzero().squeeze(1)
    assert torch.equal(decision.direction.indices, positions)
    assert torch.equal(decision.direction.values, kept[positions])
    assert torch.equal(decision.update.values, kept[positions] * -decision.step)


def test_accepted_step_is_adaptive_sparse_and_descends():
    total = torch.randn(50, 40)
    votes = torch.tensor([-1] * 6 + [1] * 4, dtype=torch.int8)
    config = ComPOConfig(step_scale=0.1, clip=ClipConfig(mode="fraction", value=0.05))
    decision = decide_update(total, votes, config)
    assert decision.accepted and math.isclose(decision.step, 0.1 * 0.6)
    assert decision.update.indices.numel() == 100  # 5% of 2000 entries
    dense = torch.zeros(50, 40)
    decision.update.apply_(dense)
    assert float((dense * total).sum()) < 0  # moves against sum y_i z_i


def test_clip_modes():
    unit = normalise(torch.randn(1000, 100))
    assert clip_threshold(unit, ClipConfig(mode="raw", value=2.2e-4)) == 2.2e-4
    sigma = clip_threshold(unit, ClipConfig(mode="sigma", value=2.326))
    kept = float((clip_small(unit, sigma) != 0).float().mean())
    assert 0.015 < kept < 0.025  # ~2% of a Gaussian-like unit vector
    frac = clip_threshold(unit, ClipConfig(mode="fraction", value=0.01))
    assert int((unit.abs() >= frac).sum()) == 1000


def test_sparse_update_applies_in_place():
    update = SparseUpdate(torch.tensor([0, 5]), torch.tensor([1.0, -2.0]), (2, 3))
    weight = torch.zeros(2, 3)
    update.apply_(weight)
    assert weight.tolist() == [[1.0, 0, 0], [0, 0, -2.0]]


def sharded(votes, config, shape, seed, iteration, workers, device="cpu"):
    """The decision with rows of sum y_i z_i rebuilt shard by shard, as Ray workers do."""
    kept = kept_votes(torch.arange(len(votes)), votes)
    holders = [RowShards(lambda rows: vote_weighted_rows(seed, iteration, kept, shape, rows,
                                                         1 << 12, device))
               for _ in range(workers)]

    def run(call, shards):  # shard i on holder i, like one shard per worker
        return [call.on(holders[i], rows) for i, rows in enumerate(shards)]

    return decide_from_shards(votes, config, shape, plan_shards(shape[0], workers), run)


@pytest.mark.parametrize("clip", [ClipConfig(mode="sigma", value=2.326),
                                  ClipConfig(mode="raw", value=3e-3),
                                  ClipConfig(mode="fraction", value=0.03)])
def test_sharded_rebuild_gives_the_same_step_bit_for_bit(clip):
    shape = (300, 48)  # 5 norm blocks of 64 rows, the last one short
    votes = torch.tensor([-1, 1, 0, -1] * 30, dtype=torch.int8)
    config = ComPOConfig(clip=clip, accept_ratio=0.1)
    total = vote_weighted_sum(7, 2, torch.arange(len(votes)), votes, shape, 1 << 12)
    dense = decide_update(total, votes, config)
    assert dense.accepted and dense.update.indices.numel() > 0
    for workers in (1, 2, 3, 5, 8):
        got = sharded(votes, config, shape, 7, 2, workers)
        assert torch.equal(got.update.indices, dense.update.indices), workers
        assert torch.equal(got.update.values, dense.update.values), workers
        assert (got.kept_fraction, got.update_norm) == (dense.kept_fraction, dense.update_norm)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: shards rebuilt "
                    "on the GPU must give the GPU's one-piece step bit for bit")
def test_sharded_rebuild_on_cuda_gives_the_same_step_bit_for_bit():
    shape, config = (1000, 256), ComPOConfig(accept_ratio=0.1)
    votes = torch.tensor([-1, 1, 0, -1] * 50, dtype=torch.int8)
    one = sharded(votes, config, shape, 7, 2, 1, "cuda")
    for workers in (2, 7, 16):
        got = sharded(votes, config, shape, 7, 2, workers, "cuda")
        assert torch.equal(got.update.indices, one.update.indices)
        assert torch.equal(got.update.values, one.update.values)


def test_shards_are_whole_norm_blocks_covering_every_row():
    for rows, workers in [(300, 1), (300, 2), (300, 7), (64, 3), (32000, 30), (1, 4)]:
        shards = plan_shards(rows, workers)
        assert shards[0].start == 0 and shards[-1].stop == rows
        assert all(a.stop == b.start for a, b in zip(shards, shards[1:], strict=False))
        assert all(s.start % NORM_BLOCK_ROWS == 0 and len(s) > 0 for s in shards)
        assert len(shards) == min(workers, -(-rows // NORM_BLOCK_ROWS))


def test_fraction_threshold_is_the_kth_largest_magnitude_even_with_ties():
    generator = torch.Generator().manual_seed(3)
    unit = torch.randn(5000, generator=generator).round(decimals=2)  # many ties
    unit[:7] = 0.0
    for fraction in (1e-4, 0.01, 0.37, 1.0):
        keep = math.ceil(fraction * unit.numel())
        expected = float(unit.abs().topk(keep).values.min())
        assert fraction_threshold(lambda t: counts_at_least(unit, t), unit.numel(),
                                  fraction) == expected


def test_the_step_finishes_the_fraction_search_with_the_same_entries_even_with_ties():
    """Two rounds of counts, then the step at the window's low end cut to the k-th largest:
    the entries of the exact threshold, in the same order (fewer shard rounds, same bits)."""
    generator = torch.Generator().manual_seed(5)
    total = torch.randn(300, 48, generator=generator).round(decimals=1)  # many ties
    total[:3] = 0.0
    votes = torch.tensor([-1, 1, -1, -1], dtype=torch.int8)
    rounds = []
    for fraction in (1e-4, 0.03, 0.5, 1.0):
        config = ComPOConfig(accept_ratio=0.1, clip=ClipConfig(mode="fraction", value=fraction))
        unit = normalise(total)
        kept = (unit.abs() >= clip_threshold(unit, config.clip)).reshape(-1).nonzero()
        shards = RowShards(lambda rows: total[rows.start : rows.stop])

        def run(call, parts, shards=shards):
            rounds.append(type(call).__name__)
            return shards.run(call, parts)

        got = decide_from_shards(votes, config, tuple(total.shape), plan_shards(300, 3), run)
        assert torch.equal(got.update.indices, kept.squeeze(1)), fraction
        assert torch.equal(got.direction.values, unit.reshape(-1)[kept.squeeze(1)]), fraction
    assert rounds[:4] == ["SquareSums", "Counts", "Counts", "Step"]


def test_shard_calls_are_typed_a_wrong_field_fails_at_construction():
    with pytest.raises(TypeError):
        Counts(1.0)  # thresholds missing
    with pytest.raises(TypeError):
        Step(norm=1.0, threshold=0.1, stpe=1.0)
    held = RowShards(lambda rows: torch.ones(len(rows), 2))
    assert [c.method for c in (SquareSums(), Counts(1.0, torch.ones(1)), Step(1.0, 0, 1))] == [
        "square_sums", "counts", "step"]
    assert held.run(Counts(2.0, torch.tensor([0.5, 0.6])), [range(0, 3)])[0].tolist() == [6, 0]


def test_one_clip_threshold_over_the_whole_stack_of_moved_tensors():
    """With moved MLPs the stack [R, d] is one vector: its unit norm and its clip threshold
    are global, so a block whose entries are larger keeps more of them (compo/model/layout.py)."""
    head_rows, mlp_rows, width = 64, 192, 32
    total = torch.randn(head_rows + mlp_rows, width, generator=torch.Generator().manual_seed(0))
    total[head_rows:] *= 3.0  # the votes say more about the MLP blocks
    config = ComPOConfig(num_perturbations=10, accept_ratio=0.1,
                         clip=ClipConfig(mode="fraction", value=0.1))
    votes = torch.tensor([-1] * 5 + [1] * 5, dtype=torch.int8)
    decision = decide_update(total, votes, config)
    kept_rows = decision.update.indices // width
    assert decision.update.indices.numel() == math.ceil(0.1 * total.numel())
    in_head = int((kept_rows < head_rows).sum())
    assert in_head < 0.02 * head_rows * width  # a per-tensor threshold would keep 10% there
    unit = normalise(total)
    assert torch.allclose(decision.direction.values.double(),
                          unit.view(-1)[decision.direction.indices].double())
