import math

import torch

from compo.perturbation import (
    GOLDEN,
    direction,
    direction_chunks,
    direction_key,
    mix64,
    mix64_int,
    normals,
)


def reference_normals(key: int, start: int, count: int) -> list[float]:
    """The documented definition, in pure Python double precision."""
    out = []
    for element in range(start, start + count):
        bits = mix64_int(key + (element // 2 + 1) * GOLDEN)
        u1 = (((bits >> 40) & 0xFFFFFF) + 1) * 2.0**-24
        u2 = ((bits >> 8) & 0xFFFFFF) * 2.0**-24
        radius = math.sqrt(-2.0 * math.log(u1))
        angle = 2 * math.pi * u2
        out.append(radius * (math.cos(angle) if element % 2 == 0 else math.sin(angle)))
    return out


def test_tensor_mix_matches_pure_python_bit_for_bit():
    values = [0, 1, 2**31, 2**63 - 1, 12345678901234567, GOLDEN]
    signed = [v - 2**64 if v >= 2**63 else v for v in values]
    mixed = mix64(torch.tensor(signed, dtype=torch.int64)).tolist()
    assert [m % 2**64 for m in mixed] == [mix64_int(v) for v in values]


def test_elements_match_the_definition_at_any_offset():
    key = direction_key(7, 3, 11)
    for start, count in [(0, 8), (1, 5), (1_000_001, 7)]:
        got = normals([key], start, count)[0].double()
        want = torch.tensor(reference_normals(key, start, count), dtype=torch.float64)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


def test_values_do_not_depend_on_chunking_or_grouping():
    keys = [direction_key(0, 2, i) for i in range(3)]
    shape = (37, 11)  # odd sizes: chunk edges fall inside element pairs
    whole = torch.stack([direction(k, shape) for k in keys])
    for chunk_rows in (1, 5, 37):
        pieces = torch.cat([rows for _, rows in direction_chunks(keys, shape, chunk_rows)], 1)
        assert torch.equal(pieces, whole)
    single = torch.cat([rows for _, rows in direction_chunks(keys[1:2], shape, 4)], 1)
    assert torch.equal(single[0], whole[1])


def test_keys_are_distinct_and_streams_look_gaussian_and_independent():
    keys = {direction_key(s, it, i) for s in range(3) for it in range(3) for i in range(50)}
    assert len(keys) == 450
    a = direction(direction_key(1, 0, 0), (200, 500)).view(-1).double()
    b = direction(direction_key(1, 0, 1), (200, 500)).view(-1).double()
    assert abs(a.mean()) < 0.01 and abs(a.var() - 1) < 0.01
    assert abs((a**4).mean() - 3) < 0.05  # Gaussian kurtosis
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1]) < 0.01
