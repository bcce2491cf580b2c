"""Low-rank directions: the definition's layout, moments and the config's rules."""

import math

import pytest
import torch
from pydantic import ValidationError

from compo.directions import DirectionsConfig, low_rank_direction, low_rank_factors
from compo.perturbation import direction_key, normals


def test_factors_are_the_keys_stream_read_as_a_then_b():
    key, shape, rank = direction_key(7, 3, 11), (5, 4), 3
    a, b = low_rank_factors([key], shape, rank)
    stream = normals([key], 0, rank * 9)[0]
    assert torch.equal(a[0].reshape(-1), stream[:15])
    assert torch.equal(b[0].reshape(-1), stream[15:])
    z = low_rank_direction(key, shape, rank)
    expected = sum(a[0, k].double()[:, None] * b[0, k].double()[None, :] for k in range(rank))
    assert torch.allclose(z, expected / math.sqrt(rank), rtol=0, atol=1e-12)


def test_entries_have_unit_variance_and_are_uncorrelated():
    shape, rank = (6, 5), 4
    zs = torch.stack([low_rank_direction(direction_key(1, 0, i), shape, rank).reshape(-1)
                      for i in range(4000)])  # [n, V d]
    second = zs.T @ zs / len(zs)  # estimates E[vec z vec z^T] = I
    assert (second.diagonal() - 1).abs().max() < 0.12
    off = second - torch.diag(second.diagonal())
    assert off.abs().max() < 0.12
    assert zs.mean(0).abs().max() < 0.08


def test_the_same_key_gives_the_same_direction_and_another_key_another():
    shape = (8, 3)
    first = low_rank_direction(direction_key(2, 1, 0), shape, 2)
    assert torch.equal(first, low_rank_direction(direction_key(2, 1, 0), shape, 2))
    assert not torch.equal(first, low_rank_direction(direction_key(2, 1, 1), shape, 2))


def test_rank_goes_with_low_rank_only():
    assert DirectionsConfig().name == "gaussian"
    assert DirectionsConfig(kind="low_rank", rank=4).name == "rank4"
    with pytest.raises(ValidationError, match="set rank: 4 with low_rank"):
        DirectionsConfig(kind="low_rank")
    with pytest.raises(ValidationError, match="remove rank for gaussian"):
        DirectionsConfig(rank=2)
