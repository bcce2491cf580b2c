"""Generation under perturbed heads: directions never stored (memory per row independent of
V x d), antithetic rows, the prompt's KV cache computed once, the generation radius,
batches sized from free memory."""

import copy

import pytest
import torch

from compo.config import GenerationRadius, OracleConfig
from compo.model.head import head_of, output_layer
from compo.perturbation import direction, direction_key
from compo.service_oracle.generation import (
    PerturbedHead,
    encode_prefix,
    generate,
    generation_radius,
    perturbation_head,
    perturbation_products,
)
from compo.service_oracle.memory import (
    LOGIT_COPIES,
    fitting_batch,
    kv_bytes_per_token,
    peak_bytes,
    row_bytes,
)
from tests.compo.service_oracle.test_source import prompt_ids

NEW_TOKENS = 6
RADIUS = 0.05
KEYS = [direction_key(7, 2, index) for index in range(3)]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


SKY = "What color is the sky?"


def greedy_with_weight(model, weight, prompt, eos):
    """HF greedy generate of a copy of the model whose lm_head weight is `weight`."""
    twin = copy.deepcopy(model)
    output_layer(twin).weight.data.copy_(weight)
    out = twin.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False,
                        eos_token_id=eos, pad_token_id=eos)
    return out[0, len(prompt):].tolist()


def test_perturbed_rows_generate_like_the_moved_weight(loaded):
    model, tokenizer = loaded
    weight = output_layer(model).weight.detach().float().clone()
    prompt, eos = prompt_ids(tokenizer, SKY), tokenizer.eos_token_id
    head = perturbation_head(weight, KEYS, RADIUS, head_of(model), [1, -1, 1])
    greedy = OracleConfig(max_new_tokens=6, temperature=0)
    out = generate(model, encode_prefix(model, prompt), head, greedy, [torch.Generator()] * 3,
                   eos)
    for row, (key, sign) in enumerate(zip(KEYS, [1, -1, 1], strict=True)):
        rounded = direction(key, tuple(weight.shape)).bfloat16().float()  # bf16-exact
        assert out.tokens[row] == greedy_with_weight(model, weight + sign * RADIUS * rounded,
                                                     prompt, eos)
    assert out.tokens[0] != out.tokens[1] or out.tokens[1] != out.tokens[2]


def generation_peaks(loaded, directions=None) -> tuple:
    """(base, base peak, perturbed, perturbed peak, V, d, P): P rows generated unperturbed
    and perturbed (`directions`: the family, default dense), each peak from torch's
    profiler, which sees every tensor allocation."""
    model, tokenizer = loaded
    weight = output_layer(model).weight.detach().float().clone()
    prefix = encode_prefix(model, prompt_ids(tokenizer, SKY))
    keys = [direction_key(5, 0, index) for index in range(8)]
    config = OracleConfig(max_new_tokens=4, temperature=0)
    family = {} if directions is None else {"directions": directions}

    def run(perturbed: bool):
        head = (perturbation_head(weight, keys, RADIUS, head_of(model), **family)
                if perturbed else
                PerturbedHead(weight, None, RADIUS, head_of(model), copies=len(keys)))
        return generate(model, prefix, head, config, [torch.Generator()] * len(keys), None)

    run(True)  # once before measuring: the direction table is made on first use
    base, base_peak = peak_bytes(lambda: run(False), torch.device("cpu"))
    moved, moved_peak = peak_bytes(lambda: run(True), torch.device("cpu"))
    return base, base_peak, moved, moved_peak, *weight.shape, len(keys)


def test_a_perturbed_row_costs_memory_independent_of_v_times_d(loaded):
    """Peak CPU memory of generating P perturbed rows minus that of P unperturbed rows,
    per row, against one row's logits and hidden state: a materialised direction would be
    V x d floats a row."""
    base, base_peak, moved, moved_peak, vocab, width, rows = generation_peaks(loaded)
    one_row = 4 * (vocab + width)  # float32 logits and hidden state of one row
    assert base_peak > rows * 4 * vocab  # the measurement sees the rows' logits
    assert (moved_peak - base_peak) / rows < 2 * one_row
    assert 4 * vocab * width > 20 * one_row  # a stored direction would break the bound
    assert moved.tokens != base.tokens  # the rows were perturbed


def test_products_of_bf16_rows_are_the_exact_float64_products():
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(3, 50, 16, generator=generator).bfloat16()
    hidden = torch.randn(3, 16, generator=generator).bfloat16()
    exact = torch.einsum("pvd,pd->pv", rows.double(), hidden.double())
    torch.testing.assert_close(perturbation_products(rows, hidden).double(), exact,
                               rtol=1e-6, atol=1e-6)
    assert perturbation_products(rows, hidden).dtype == torch.float32


@CUDA
def test_products_on_cuda_accumulate_bf16_in_float32():
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(4, 4096, 512, generator=generator).bfloat16()
    hidden = torch.randn(4, 512, generator=generator).bfloat16()
    exact = torch.einsum("pvd,pd->pv", rows.double(), hidden.double())
    ours = perturbation_products(rows.cuda(), hidden.cuda())
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.cpu().double(), exact, rtol=1e-5, atol=1e-4)


def test_the_prompt_is_encoded_once_and_never_again_per_row(loaded):
    model, tokenizer = loaded
    weight = output_layer(model).weight.detach().float().clone()
    lengths = []  # tokens per row of every body pass
    hook = model.get_input_embeddings().register_forward_hook(
        lambda module, args, out: lengths.append(args[0].shape))
    try:
        prompt = prompt_ids(tokenizer, SKY)
        prefix = encode_prefix(model, prompt)
        for start in (0, 3):  # two batches of three perturbations from the same prefix
            keys = [direction_key(1, 0, index) for index in range(start, start + 3)]
            head = perturbation_head(weight, keys, RADIUS, head_of(model))
            generate(model, prefix, head, OracleConfig(max_new_tokens=NEW_TOKENS, temperature=0),
                     [torch.Generator()] * 3, None)
    finally:
        hook.remove()
    assert lengths[0] == (1, len(prompt))  # the prompt, once
    assert all(shape == (3, 1) for shape in lengths[1:])  # then one new token per row
    assert len(lengths) == 1 + 2 * (NEW_TOKENS - 1)


def test_logit_radius_moves_each_logit_by_the_given_nats(loaded):
    model, tokenizer = loaded
    weight = output_layer(model).weight.detach().float().clone()
    prefix = encode_prefix(model, prompt_ids(tokenizer, SKY))
    radius = generation_radius(GenerationRadius(mode="logit", value=1.5), [prefix.hidden])
    keys = [direction_key(3, 0, index) for index in range(40)]
    head = perturbation_head(weight, keys, radius, head_of(model))
    base = PerturbedHead(weight, None, radius).logits(prefix.hidden)
    moved = head.logits(prefix.hidden.expand(len(keys), -1)) - base
    assert float(moved.std()) == pytest.approx(1.5, rel=0.05)
    assert generation_radius(GenerationRadius(mode="raw", value=0.25), [prefix.hidden]) == 0.25
    doubled = generation_radius(GenerationRadius(value=1.5), [prefix.hidden], scale=2.0)
    assert doubled == pytest.approx(radius / 2, rel=1e-2)  # a logit scale of 2 halves r


def test_batches_fit_half_the_free_memory_in_powers_of_two(loaded):
    model, _ = loaded
    shape = tuple(output_layer(model).weight.shape)
    per_row = row_bytes(shape, model.config, torch.float32, tokens=100)
    config = model.config
    kv = 2 * config.num_hidden_layers * config.num_key_value_heads * (
        config.hidden_size // config.num_attention_heads) * 4
    assert kv_bytes_per_token(config, torch.float32) == kv
    assert per_row == 100 * kv + LOGIT_COPIES * 4 * shape[0]  # no V x d term: no direction
    assert fitting_batch(free=10 * per_row, per_row=per_row, most=1600) == 4  # 5 fit: 4
    assert fitting_batch(free=10**15, per_row=per_row, most=1600) == 256
    assert fitting_batch(free=10**15, per_row=per_row, most=24) == 16
    assert fitting_batch(free=0, per_row=per_row, most=24) == 1
