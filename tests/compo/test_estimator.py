"""Theorem 3.1 in miniature, and the estimator's pure functions."""

import math

import torch

from compo.config import ClipConfig, ComPOConfig
from compo.estimator import (
    SparseUpdate,
    clip_small,
    clip_threshold,
    count_votes,
    decide_update,
    normalise,
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
