"""The Triton kernels: on CPU under TRITON_INTERPRET=1 at small shapes, on CUDA at a
Mistral-like width when a GPU is there. Bit identity of the generator with the pure-Python
reference; the fused oracle against the eager one (torch matmul on generated blocks)."""

import importlib.util

import pytest
import torch

from compo.errors import ConfigError
from compo.kernels import fused
from compo.kernels.fused import Blocks, fused_available, fused_token_changes, triton_directions
from compo.model.head import Head
from compo.model.scoring import HeadInputs
from compo.oracle import build_state, logprob_changes, pair_improved, token_changes, use_fused
from compo.perturbation import direction_key, direction_rows, reference_values

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
    rows = triton_directions(keys, 5, 42, 72, interpreter, SMALL)  # 37 rows, 18 words each
    assert torch.equal(rows, direction_rows(keys, 5, 42, 72))
    flat = rows[2].reshape(-1)
    assert flat[:50].tolist() == reference_values(keys[2], 5 * 72, 50)


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
def test_fused_kernel_agrees_with_the_eager_oracle(interpreter, cap):
    state = make_state(37, 70, 64, cap)  # ragged token and row tiles
    keys = [direction_key(1, 5, i) for i in range(3)]
    at_target, spread = fused_token_changes(
        state.inputs.hidden, keys, state.probs, state.inputs.targets, RADIUS,
        state.base_logits, state.cap, SMALL)
    want_target, want_spread = token_changes(state, keys, RADIUS, chunk_rows=32)
    assert torch.allclose(at_target, want_target, rtol=1e-5, atol=1e-9)
    assert torch.allclose(spread, want_spread, rtol=1e-4, atol=1e-9)
    assert want_target.abs().min() > 0  # a real signal, not zeros on both sides
    fused_changes = logprob_changes(state, keys, RADIUS, 32, fused=True)
    eager_changes = logprob_changes(state, keys, RADIUS, 32)
    assert torch.allclose(fused_changes, eager_changes, rtol=1e-4, atol=1e-8)


def test_fused_kernel_refuses_widths_that_do_not_split_into_words(interpreter):
    state = make_state(8, 20, 30, None)
    with pytest.raises(ValueError, match="d % 4 == 0"):
        fused_token_changes(state.inputs.hidden, [1], state.probs, state.inputs.targets,
                            RADIUS, None, None, SMALL)


def test_products_setting_decides_the_path(monkeypatch):
    hidden = torch.zeros(2, 4)
    monkeypatch.setenv(fused.INTERPRET_ENV, "1")  # the interpreter is for tests, not for auto
    assert not use_fused("auto", hidden)
    monkeypatch.delenv(fused.INTERPRET_ENV, raising=False)
    assert not use_fused("auto", hidden) and not use_fused("eager", hidden)
    assert not fused_available(torch.device("cpu"))
    with pytest.raises(ConfigError, match="products is 'fused'.*CUDA"):
        use_fused("fused", hidden)


@pytest.mark.gpu
@needs_cuda
def test_cuda_generator_is_bit_identical_and_fused_agrees_on_a_gpu():
    keys = [direction_key(0, 1, i) for i in range(2)]
    rows = triton_directions(keys, 0, 300, 4096, "cuda")
    assert torch.equal(rows.cpu(), direction_rows(keys, 0, 300, 4096))
    state = make_state(1000, 4000, 4096, None, torch.bfloat16, "cuda")
    at_target, spread = fused_token_changes(state.inputs.hidden, keys, state.probs,
                                            state.inputs.targets, RADIUS, None, None)
    want_target, want_spread = token_changes(state, keys, RADIUS, chunk_rows=1024)
    assert torch.allclose(at_target, want_target, rtol=1e-4, atol=1e-7)
    assert torch.allclose(spread, want_spread, rtol=1e-3, atol=1e-7)
    votes = [pair_improved(logprob_changes(state, keys, RADIUS, 1024, fused=f)) for f in
             (True, False)]
    assert torch.equal(votes[0], votes[1])
