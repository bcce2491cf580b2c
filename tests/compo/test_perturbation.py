import math
from statistics import NormalDist

import pytest
import torch

from compo import perturbation
from compo.perturbation import (
    GOLDEN,
    TABLE_SIZE,
    direction,
    direction_chunks,
    direction_key,
    fill_torch,
    mix64,
    mix64_int,
    normals,
    quantile_table,
    reference_values,
    round_to_bf16,
)

NORMAL = NormalDist()
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU: compares CUDA directions bit for bit")


def test_tensor_mix_matches_pure_python_bit_for_bit():
    values = [0, 1, 2**31, 2**63 - 1, 12345678901234567, GOLDEN]
    signed = [v - 2**64 if v >= 2**63 else v for v in values]
    mixed = mix64(torch.tensor(signed, dtype=torch.int64)).tolist()
    assert [m % 2**64 for m in mixed] == [mix64_int(v) for v in values]


def test_the_definition_by_hand():
    key = direction_key(7, 3, 11)
    bits = mix64_int(key + 2 * GOLDEN)  # word 1 holds elements 4..7
    lanes = [(bits >> (16 * k)) & 0xFFFF for k in range(4)]
    assert reference_values(key, 4, 4) == [quantile_table()[u] for u in lanes]


@pytest.mark.parametrize("start,count", [(0, 9), (1, 5), (3, 1), (6, 2), (1_000_001, 7),
                                         (5, 70_001)])
def test_torch_and_cpu_paths_equal_the_pure_python_reference(start, count):
    keys = [direction_key(7, 3, 11), direction_key(0, 0, 0), direction_key(2**40, 9, 1599)]
    want = torch.tensor([reference_values(k, start, count) for k in keys])
    assert torch.equal(normals(keys, start, count), want)
    torch_path = torch.stack([fill_torch(torch.empty(count), k, start) for k in keys])
    assert torch.equal(torch_path, want)


@pytest.mark.gpu
@needs_cuda
def test_cuda_directions_equal_the_pure_python_reference():
    keys = [direction_key(1, 2, i) for i in range(3)]
    want = torch.tensor([reference_values(k, 3, 5000) for k in keys])
    assert torch.equal(normals(keys, 3, 5000, "cuda").cpu(), want)
    rows = perturbation.direction_rows(keys, 2, 9, 613, "cuda", torch.bfloat16)
    assert torch.equal(rows.float().cpu(), perturbation.direction_rows(keys, 2, 9, 613))


def test_values_do_not_depend_on_chunking_or_grouping():
    keys = [direction_key(0, 2, i) for i in range(3)]
    shape = (37, 11)  # odd sizes: chunk edges fall inside 64-bit words
    whole = torch.stack([direction(k, shape) for k in keys])
    for chunk_rows in (1, 5, 37):
        pieces = torch.cat([rows for _, rows in direction_chunks(keys, shape, chunk_rows)], 1)
        assert torch.equal(pieces, whole)
    single = torch.cat([rows for _, rows in direction_chunks(keys[1:2], shape, 4)], 1)
    assert torch.equal(single[0], whole[1])


def test_values_are_bf16_exact_so_both_direction_dtypes_are_the_same_numbers():
    z = direction(direction_key(3, 1, 4), (64, 96))
    assert torch.equal(z.bfloat16().float(), z)
    assert all(round_to_bf16(v) == v for v in quantile_table())
    assert round_to_bf16(1 + 2**-8) == 1.0 and round_to_bf16(1 + 3 * 2**-8) == 1 + 2**-6


def test_table_is_the_bf16_rounded_normal_quantiles_and_antisymmetric():
    table = quantile_table()
    assert len(table) == TABLE_SIZE and list(table) == sorted(table)
    assert all(table[u] == -table[TABLE_SIZE - 1 - u] for u in range(TABLE_SIZE))
    for u in (0, 1, 100, 32767, 32768, 40000, 65535):
        exact = NORMAL.inv_cdf((u + 0.5) / TABLE_SIZE)
        assert abs(table[u] - exact) <= abs(exact) * 2**-8  # bf16: half a step of 2**-7


def test_table_moments_match_the_standard_normal():
    table = torch.tensor(quantile_table(), dtype=torch.float64)
    assert table.sum() == 0  # antisymmetric: the mean is exactly zero
    variance = table.square().mean()
    assert abs(variance - 1) < 2e-5
    assert abs(table.pow(4).mean() / variance**2 - 3) < 1e-3
    assert table.max() == 4.3125  # N(0, 1) quantile at 1 - 0.5 / 65536, in bf16


def test_a_platform_whose_table_differs_is_refused(monkeypatch):
    monkeypatch.setattr(perturbation, "TABLE_SHA256", "0" * 64)
    quantile_table.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="differs from the reference"):
            quantile_table()
    finally:
        monkeypatch.undo()
        quantile_table.cache_clear()
    assert len(quantile_table()) == TABLE_SIZE


def sample(count: int, directions: int = 4) -> torch.Tensor:
    """`count` values from each of a few directions, float64 [directions * count]."""
    keys = [direction_key(5, 0, i) for i in range(directions)]
    return normals(keys, 0, count).double().reshape(-1)


def ks_distance_from_normal(values: torch.Tensor) -> float:
    """Kolmogorov-Smirnov distance between the values' empirical CDF and N(0, 1)'s."""
    ordered = values.double().sort().values
    n = ordered.numel()
    cdf = 0.5 * torch.erfc(-ordered / math.sqrt(2))
    upper = torch.arange(1, n + 1, dtype=torch.float64) / n - cdf
    lower = cdf - torch.arange(0, n, dtype=torch.float64) / n
    return float(torch.maximum(upper, lower).max())


def test_streams_have_normal_moments_and_tails():
    z = sample(1 << 20)  # 4M values
    n = z.numel()
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / n)
    assert abs(z.pow(4).mean() / z.var() ** 2 - 3) < 5 * math.sqrt(96 / n)
    for level in (1.0, 2.0, 3.0, 4.0):
        tail = 2 * (1 - NORMAL.cdf(level))
        seen = float((z.abs() > level).double().mean())
        # bf16 rounding moves a value by up to 2**-8 of itself: quantiles just above a
        # level may land on it (a level of 1.0 is a bf16 value, and 0.2% of the mass sits on it)
        rounding = 2 * NORMAL.pdf(level) * level * 2**-8
        assert abs(seen - tail) < 5 * math.sqrt(tail * (1 - tail) / n) + rounding, level
    assert ks_distance_from_normal(z[: 1 << 20]) < 1.95 / math.sqrt(1 << 20)


def test_neighbouring_values_and_lanes_are_uncorrelated():
    z = sample(1 << 20, directions=1)
    n = z.numel()
    for lag in (1, 2, 3, 4, 5, 8):  # inside one 64-bit word (lag < 4) and across words
        correlation = float(torch.corrcoef(torch.stack([z[:-lag], z[lag:]]))[0, 1])
        assert abs(correlation) < 5 / math.sqrt(n), lag
    lanes = z.view(-1, 4)  # the four lanes of each word
    assert torch.corrcoef(lanes.T).sub(torch.eye(4, dtype=torch.float64)).abs().max() < 0.005


def test_normalised_directions_are_uniform_on_the_sphere():
    dim, count = 4096, 1000
    keys = [direction_key(11, 4, i) for i in range(count)]
    u = normals(keys, 0, dim).double()
    u /= u.norm(dim=1, keepdim=True)
    critical = 1.95 / math.sqrt(count)  # KS at the 0.1% level
    g = torch.Generator().manual_seed(0)
    fixed = torch.randn(dim, generator=g, dtype=torch.float64)
    for axis in (torch.eye(dim, dtype=torch.float64)[0], fixed / fixed.norm()):
        # on the sphere, sqrt(dim) * <u, w> is N(0, 1) to O(1/dim) for every unit w
        assert ks_distance_from_normal(math.sqrt(dim) * (u @ axis)) < critical
    pairs = (u[: count // 2] * u[count // 2 :]).sum(1)  # independent pairs
    assert ks_distance_from_normal(math.sqrt(dim) * pairs) < 1.95 / math.sqrt(count // 2)
    basis = torch.linalg.qr(torch.randn(dim, 8, generator=g, dtype=torch.float64))[0]
    second = dim * (u @ basis).T @ (u @ basis) / count  # E[u u^T] = I / dim: isotropic
    assert (second - torch.eye(8, dtype=torch.float64)).abs().max() < 5 * math.sqrt(2 / count)


def test_keys_are_distinct_and_directions_independent():
    keys = {direction_key(s, it, i) for s in range(3) for it in range(3) for i in range(50)}
    assert len(keys) == 450
    a = direction(direction_key(1, 0, 0), (200, 500)).view(-1).double()
    b = direction(direction_key(1, 0, 1), (200, 500)).view(-1).double()
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1]) < 5 / math.sqrt(a.numel())
