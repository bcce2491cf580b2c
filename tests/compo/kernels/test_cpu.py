import logging

import pytest
import torch

from compo import perturbation
from compo.kernels import cpu
from compo.perturbation import direction_key, fill_torch, normals, reference_values, table_tensor


@pytest.fixture
def fresh_library(monkeypatch, tmp_path):
    """The kernel is looked up again (in an empty cache dir); the real one afterwards."""
    monkeypatch.setenv(cpu.CACHE_ENV, str(tmp_path))
    cpu.library.cache_clear()
    yield tmp_path
    monkeypatch.undo()
    cpu.library.cache_clear()


def test_the_compiled_kernel_is_built_once_and_matches_the_reference(fresh_library):
    assert cpu.available()
    built = list((fresh_library / "compo").glob("directions-*.so"))
    assert len(built) == 1
    key = direction_key(3, 1, 4)
    out = cpu.fill(torch.empty(1, 11), [key], 5, table_tensor(torch.device("cpu")))
    assert out[0].tolist() == reference_values(key, 5, 11)
    cpu.library.cache_clear()
    assert cpu.available() and list((fresh_library / "compo").glob("*.so")) == built


def test_several_directions_at_an_unaligned_offset_match_the_torch_path():
    keys = [direction_key(0, 7, i) for i in range(3)]
    count, start = 70_001, 3
    out = cpu.fill(torch.empty(3, count), keys, start, table_tensor(torch.device("cpu")))
    for row, key in zip(out, keys, strict=True):
        assert torch.equal(row, fill_torch(torch.empty(count), key, start))


def test_without_a_compiler_directions_come_from_torch_with_the_same_bits(
        fresh_library, monkeypatch, caplog):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with caplog.at_level(logging.WARNING, logger=cpu.__name__):
        assert not cpu.available()
    assert "could not build the CPU direction kernel" in caplog.text
    keys = [direction_key(1, 2, 3)]
    assert normals(keys, 9, 50)[0].tolist() == reference_values(keys[0], 9, 50)


def test_fill_refuses_a_tensor_it_cannot_write():
    with pytest.raises(ValueError, match="contiguous float32 CPU"):
        cpu.fill(torch.empty(2, 8).T, [1, 2], 0, perturbation.table_tensor(torch.device("cpu")))


@pytest.mark.parametrize("count_keys", [1, 5])
def test_fills_split_over_threads_give_the_same_bits(count_keys):
    keys = [direction_key(2, 9, i) for i in range(count_keys)]
    count, start = 3 * cpu.SPLIT_VALUES + 7, 11  # large enough to split, unaligned
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = normals(keys, start, count)
        torch.set_num_threads(3)
        split = normals(keys, start, count)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(split, alone)
    assert split[-1, -5:].tolist() == reference_values(keys[-1], start + count - 5, 5)


needs_amx = pytest.mark.skipif(not cpu.amx_ready(), reason="needs a CPU with AMX tiles (and "
                               "a compiler that targets them): the float32 GEMMs serve")


@needs_amx
def test_amx_products_match_float64_for_any_split_of_the_rows():
    g = torch.Generator().manual_seed(0)
    k, vocab, n, row0 = 64, 301, 45, 7  # edges: rows and columns not multiples of 32
    a = torch.randn(k, vocab, generator=g).bfloat16()
    b = torch.randn(k, n, generator=g).bfloat16()
    start = torch.randn(vocab - row0, n, generator=g)
    reference = start.double() + a[:, row0:].double().T @ b.double()
    whole = start.clone()
    cpu.amx_add_products(a, cpu.amx_strips(b), row0, whole)
    assert ((whole.double() - reference).abs() / reference.abs().max()).max() < 2e-7
    bounds = ((0, 5), (5, 70), (70, vocab - row0))
    parts = [start[lo:hi].clone() for lo, hi in bounds]
    for (lo, _), part in zip(bounds, parts, strict=True):
        cpu.amx_add_products(a, cpu.amx_strips(b), row0 + lo, part)
    assert torch.equal(torch.cat(parts), whole)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = start.clone()
        cpu.amx_add_products(a, cpu.amx_strips(b), row0, one)
        assert torch.equal(one, whole)
    finally:
        torch.set_num_threads(threads)


@needs_amx
def test_amx_products_refuse_a_depth_that_is_not_whole_tile_products():
    a, b = torch.ones(48, 64, dtype=torch.bfloat16), torch.ones(48, 32, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="K = 48 \\(a multiple of 32\\)"):
        cpu.amx_add_products(a, cpu.amx_strips(b), 0, torch.zeros(64, 32))
