"""The Triton kernels: on CPU under TRITON_INTERPRET=1 at small shapes, on CUDA at a
Mistral-like width when a GPU is there. Bit identity of the generator with the pure-Python
reference (and that every CUDA user of directions takes it); the fused oracle and the
generation products against the eager ones; when `products: auto` picks the fused kernel."""

import importlib.util
import logging

import pytest
import torch

from compo import perturbation
from compo.errors import ConfigError
from compo.estimator import vote_weighted_rows
from compo.kernels import fused
from compo.kernels.fused import (
    TILES,
    Blocks,
    auto_reason,
    fused_available,
    fused_row_products,
    fused_token_changes,
)
from compo.model.head import Head
from compo.model.scoring import HeadInputs
from compo.oracle import build_state, logprob_changes, pair_improved, token_changes, use_fused
from compo.perturbation import (
    direction_key,
    direction_rows,
    generator_for,
    normals,
    reference_values,
    table_tensor,
)
from compo.service_oracle.generation import add_products_, perturbation_products

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="needs triton (pip install 'compo[gpu]')")
SMALL = Blocks(tokens=16, rows=16, words=16)  # several tiles and ragged edges at toy sizes
RADIUS = 5e-4
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU: compiled Triton kernels")


@pytest.fixture
def interpreter():
    """The CPU device, with kernels run by Triton's interpreter (tests/conftest.py turns it
    on for the session on machines without CUDA; it cannot be turned on later)."""
    if not fused.interpreting():
        pytest.skip("Triton's interpreter is off (CUDA is here: the GPU tests run the "
                    "compiled kernels)")
    return torch.device("cpu")


def test_triton_generator_equals_the_pure_python_reference(interpreter):
    keys = [direction_key(3, 2, i) for i in range(3)]
    rows = direction_rows(keys, 5, 42, 72, interpreter, generator="triton")  # 37 rows x 18 words
    assert torch.equal(rows, direction_rows(keys, 5, 42, 72, generator="compiled"))
    assert rows[2].reshape(-1)[:50].tolist() == reference_values(keys[2], 5 * 72, 50)
    for start, count in [(3, 70_001), (1, 2), (7, 1), (0, 4)]:  # unaligned starts and ends
        made = normals(keys, start, count, generator="triton")
        assert torch.equal(made, normals(keys, start, count, generator="compiled"))
        assert made[1, :9].tolist() == reference_values(keys[1], start, min(count, 9))
    for dtype in (torch.bfloat16, torch.float16):  # written straight in the operand type
        made = normals(keys, 3, 1000, dtype=dtype, generator="triton")
        assert made.dtype == dtype and torch.equal(made.float(), normals(keys, 3, 1000))


def test_direction_values_are_exact_in_fp16():
    table = table_tensor(torch.device("cpu"))
    assert torch.equal(table.half().float(), table)  # fp16 tensor-core products are exact


def test_cuda_directions_come_from_the_triton_generator(interpreter, monkeypatch):
    """On CUDA every user of directions (eager oracle, rebuild, moved MLPs via normals,
    generation) goes through one Triton launch per block; here the routing is pointed at
    Triton on CPU (the interpreter) and the bits compared with the compiled CPU path."""
    assert generator_for("cuda") == "triton"
    assert generator_for("cpu") == ("compiled" if perturbation.cpu.available() else "torch")
    state = make_state(12, 40, 32, None)
    keys = [direction_key(2, 3, i) for i in range(3)]
    kept = [(0, 1), (1, -1), (2, 1)]
    hidden = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))

    def users():
        logits = torch.zeros(3, 40)
        return (token_changes(state, keys, RADIUS, chunk_rows=16),
                vote_weighted_rows(2, 3, kept, (40, 32), range(5, 33), 640),
                add_products_(logits, keys, hidden, 0.5))

    want = users()
    launches, fill = [], fused.triton_fill

    def spy(out, keys, start, table):
        launches.append(out.numel())
        return fill(out, keys, start, table)

    monkeypatch.setattr(perturbation, "generator_for", lambda device_type: "triton")
    monkeypatch.setattr(fused, "triton_fill", spy)
    got = users()
    assert launches and sum(launches) >= 3 * 40 * 32  # all three drew their blocks from it
    assert torch.equal(got[0][0], want[0][0]) and torch.equal(got[0][1], want[0][1])
    assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])


def make_state(n_tokens: int, rows: int, cols: int, cap: float | None, dtype=torch.float32,
               device="cpu"):
    """An oracle state over random hidden states and output layer (3 sequences)."""
    g = torch.Generator().manual_seed(7)
    hidden = (3 * torch.randn(n_tokens, cols, generator=g)).to(dtype).to(device)
    weight = (0.3 * torch.randn(rows, cols, generator=g)).to(device)
    targets = torch.randint(0, rows, (n_tokens,), generator=g).to(device)
    segment = (torch.arange(n_tokens) * 3 // n_tokens).to(device)
    inputs = HeadInputs(hidden, targets, segment, 3)
    return build_state(inputs, weight, Head(None, 1.0, cap), dtype)


@pytest.mark.parametrize("cap", [None, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_kernel_agrees_with_the_eager_oracle(interpreter, cap, dtype):
    state = make_state(37, 70, 64, cap, dtype)  # ragged token and row tiles
    keys = [direction_key(1, 5, i) for i in range(3)]
    at_target, spread = fused_token_changes(
        state.inputs.hidden, keys, table_tensor(interpreter), state.probs,
        state.inputs.targets, RADIUS, state.base_logits, state.cap, SMALL)
    want_target, want_spread = token_changes(state, keys, RADIUS, chunk_rows=32)
    assert torch.allclose(at_target, want_target, rtol=1e-5, atol=1e-9)
    assert torch.allclose(spread, want_spread, rtol=1e-4, atol=1e-9)
    assert want_target.abs().min() > 0  # a real signal, not zeros on both sides
    fused_changes = logprob_changes(state, keys, RADIUS, 32, fused=True)
    eager_changes = logprob_changes(state, keys, RADIUS, 32)
    assert torch.allclose(fused_changes, eager_changes, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("cap", [None, 2.0])
def test_the_default_tiles_agree_with_the_eager_oracle(interpreter, cap):
    state = make_state(130, 200, 64, cap)  # more than one default tile of tokens and rows
    keys = [direction_key(1, 6, i) for i in range(2)]
    fused_changes = logprob_changes(state, keys, RADIUS, 64, fused=True)
    assert torch.allclose(fused_changes, logprob_changes(state, keys, RADIUS, 64),
                          rtol=1e-4, atol=1e-8)


def test_generation_products_agree_with_the_direction_blocks(interpreter):
    keys = [direction_key(4, 0, i) for i in range(3)]
    hidden = torch.randn(3, 72, generator=torch.Generator().manual_seed(2))
    table = table_tensor(interpreter)
    got = fused_row_products(hidden, keys, table, 70, Blocks(tokens=1, rows=16, words=8,
                                                              warps=4))
    want = perturbation_products(direction_rows(keys, 0, 70, 72), hidden)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    half = fused_row_products(hidden.half(), keys, table, 70)  # default tile, fp16 states
    torch.testing.assert_close(half, perturbation_products(direction_rows(keys, 0, 70, 72),
                                                           hidden.half()), rtol=1e-5, atol=1e-5)


def test_fused_kernel_refuses_widths_that_do_not_split_into_words(interpreter):
    state = make_state(8, 20, 30, None)
    with pytest.raises(ValueError, match="d % 4 == 0"):
        fused_token_changes(state.inputs.hidden, [1], table_tensor(interpreter), state.probs,
                            state.inputs.targets, RADIUS, None, None, SMALL)


def test_products_setting_decides_the_path(monkeypatch, caplog):
    hidden = torch.zeros(2, 4)
    monkeypatch.setenv(fused.INTERPRET_ENV, "1")  # the interpreter is for tests, not for auto
    fused.explain_eager.cache_clear()
    with caplog.at_level(logging.INFO, logger=fused.__name__):
        assert not use_fused("auto", hidden) and not use_fused("auto", hidden)
    assert [r.getMessage() for r in caplog.records].count(
        "compo.products auto: eager products (directions in blocks, torch matmul), not the "
        "fused kernel: the model is on cpu; the fused kernel runs on CUDA") == 1  # once
    monkeypatch.delenv(fused.INTERPRET_ENV, raising=False)
    assert not use_fused("auto", hidden) and not use_fused("eager", hidden)
    assert not fused_available(torch.device("cpu"))
    with pytest.raises(ConfigError, match="products is 'fused'.*CUDA"):
        use_fused("fused", hidden)


@pytest.mark.parametrize("capability, fused_runs", [((7, 5), False), ((8, 0), True),
                                                     ((9, 0), True)])
def test_auto_takes_the_fused_kernel_only_from_compute_capability_8(monkeypatch, capability,
                                                                       fused_runs):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a GPU")
    cuda = torch.device("cuda", 0)
    reason = auto_reason(cuda, 4096)
    assert (reason is None) == fused_runs
    if not fused_runs:
        assert "compute capability 7.5" in reason and "8.0 or newer" in reason
        with pytest.raises(ConfigError, match="compute capability 7.5"):
            fused_available(cuda, required=True)
    assert "multiple of 4" in auto_reason(cuda, 4098)
    monkeypatch.setattr(fused, "triton_installed", lambda: False)
    assert "triton is not installed" in auto_reason(cuda, 4096)


def test_every_variant_has_a_default_tile():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for cap in (None, 30.0):
            tile = fused.tile_for(dtype, cap)
            assert tile is TILES[fused.DOTS[dtype], cap is not None]
            assert 4 * tile.words >= 16  # tl.dot needs K >= 16


@pytest.mark.gpu
@needs_cuda
def test_cuda_generator_is_bit_identical_and_fused_agrees_on_a_gpu():
    keys = [direction_key(0, 1, i) for i in range(2)]
    rows = direction_rows(keys, 0, 300, 4096, "cuda")
    assert torch.equal(rows.cpu(), direction_rows(keys, 0, 300, 4096))
    state = make_state(1000, 4000, 4096, None, torch.bfloat16, "cuda")
    table = table_tensor(torch.device("cuda"))
    at_target, spread = fused_token_changes(state.inputs.hidden, keys, table, state.probs,
                                            state.inputs.targets, RADIUS, None, None)
    want_target, want_spread = token_changes(state, keys, RADIUS, chunk_rows=1024)
    assert torch.allclose(at_target, want_target, rtol=1e-4, atol=1e-7)
    assert torch.allclose(spread, want_spread, rtol=1e-3, atol=1e-7)
    votes = [pair_improved(logprob_changes(state, keys, RADIUS, 1024, fused=f)) for f in
             (True, False)]
    assert torch.equal(votes[0], votes[1])
    hidden = torch.randn(2, 4096, device="cuda", dtype=torch.bfloat16)
    torch.testing.assert_close(
        fused_row_products(hidden, keys, table, 4000),
        perturbation_products(direction_rows(keys, 0, 4000, 4096, "cuda"), hidden),
        rtol=1e-4, atol=1e-3)
