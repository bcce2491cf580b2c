import ctypes
import logging
import math
import shutil
import subprocess

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


def low_rank_build(tmp_path, march: str | None) -> ctypes.CDLL | None:
    """low_rank.c alone, with the library's flags and -march=`march` (None: the compiler's
    default target); None where the compiler or the CPU cannot build or run that target."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or (march == "native" and not cpu.available()):
        return None
    target = tmp_path / f"low_rank-{march}.so"
    flags = [] if march is None else [f"-march={march}"]
    built = subprocess.run([compiler, *cpu.FLAGS, *flags, "-o", str(target),
                            str(cpu.SOURCES[1]), "-lm"], capture_output=True)
    if built.returncode != 0:
        return None
    lib = ctypes.CDLL(str(target))
    lib.compo_low_rank_changes.restype = ctypes.c_int
    lib.compo_low_rank_changes.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 6 + [
        ctypes.c_void_p] * 2
    return lib


def test_low_rank_sums_have_the_same_bits_on_every_instruction_set(tmp_path):
    """AVX-512, AVX2 + FMA and the compiler's baseline (fmaf in software where the target has
    no FMA): one explicit rounding per operation, in one order, so one result."""
    avx2 = {"avx2", "fma"} <= set(cpu.machine().split())
    marches = ["native", None] + (["haswell"] if avx2 else [])
    builds = {march: low_rank_build(tmp_path, march) for march in marches}
    builds = {march: lib for march, lib in builds.items() if lib is not None}
    if len(builds) < 2:
        pytest.skip("needs a C compiler that builds low_rank.c for two targets")
    g = torch.Generator().manual_seed(0)
    count, tokens, rank, vocab = 3, 11, 16, 700  # a partial last block, a short token group
    u = (torch.randn(count, tokens, rank, generator=g) * 0.06 / math.sqrt(rank)).contiguous()
    a = torch.randn(count, rank, vocab, generator=g).bfloat16().float()
    probs = (torch.randn(tokens, vocab, generator=g) * 3).softmax(-1).contiguous()
    targets = torch.randint(vocab, (tokens,), generator=g)
    assert torch.einsum("pnk,pkv->pnv", u, a).abs().max() > 0.25  # libm's expm1 too
    results = []
    for lib in builds.values():
        spread = torch.empty(count, tokens, dtype=torch.float64)
        at_target = torch.empty(count, tokens)
        assert lib.compo_low_rank_changes(*(t.data_ptr() for t in (u, a, probs, targets)),
                                          count, tokens, rank, vocab, 0, tokens,
                                          spread.data_ptr(), at_target.data_ptr()) == 0
        results.append((spread, at_target))
    for spread, at_target in results[1:]:
        assert torch.equal(spread, results[0][0]) and torch.equal(at_target, results[0][1])


@pytest.mark.skipif(not cpu.available(), reason="no C compiler: the torch path serves")
def test_a_partial_last_block_sums_as_a_whole_one_padded_with_zero_probabilities():
    g = torch.Generator().manual_seed(1)
    count, tokens, rank, vocab, padded = 2, 9, 4, 3001, 3072  # 3,001 = 11 blocks + 185 rows
    u = torch.randn(count, tokens, rank, generator=g) * 0.02
    a = torch.randn(count, rank, padded, generator=g).bfloat16().float()
    probs = torch.zeros(tokens, padded)
    probs[:, :vocab] = torch.randn(tokens, vocab, generator=g).softmax(-1)
    targets = torch.randint(vocab, (tokens,), generator=g)
    partial = cpu.low_rank_sums(u, a[:, :, :vocab], probs[:, :vocab], targets)
    whole = cpu.low_rank_sums(u, a, probs, targets)  # the same rows, then terms p = 0
    assert torch.equal(partial[0], whole[0]) and torch.equal(partial[1], whole[1])
