"""The likelihood oracle against a float64 full forward pass with W + r z."""

import torch

from compo.config import ComPOConfig
from compo.data.formats import TokenizedPair
from compo.demo.tiny import build_llama
from compo.model.head import output_layer
from compo.model.loading import prepare_model
from compo.oracle import LikelihoodOracle, combine
from compo.perturbation import direction, direction_key

RADIUS = 5e-4  # the paper's Mistral-7B radius


def make_pairs(tokenizer):
    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    eos = tokenizer.eos_token_id
    return [
        TokenizedPair([1, *ids("What is 2 plus 3?")], ids(" 2 plus 3 is 5.") + [eos],
                      ids(" 2 plus 3 is 6.") + [eos], "a"),
        TokenizedPair([1, *ids("The sky is")], ids(" blue, and the grass is green.") + [eos],
                      ids(" green.") + [eos], "b"),
    ]


def full_forward_logprobs(model64, pairs) -> torch.Tensor:
    """log pi(y|x) per sequence [2K] from Hugging Face's own float64 forward (logits)."""
    totals = []
    for pair in pairs:
        for completion in (pair.chosen_ids, pair.rejected_ids):
            ids = torch.tensor([pair.prompt_ids + completion])
            logits = model64(input_ids=ids).logits[0].double()
            logprobs = logits[len(pair.prompt_ids) - 1 : -1].log_softmax(-1)
            totals.append(logprobs.gather(1, torch.tensor(completion)[:, None]).sum())
    return torch.stack(totals)


def float64_changes(model64, pairs, weight, key, radius):
    """log pi(W + r z) - log pi(W) per sequence from two float64 full forwards."""
    head = output_layer(model64)
    z = direction(key, tuple(weight.shape)).double()
    head.weight.data = weight.double().clone()
    base = full_forward_logprobs(model64, pairs)
    head.weight.data = weight.double() + radius * z
    moved = full_forward_logprobs(model64, pairs)
    return moved - base


def build_pair_of_models(tokenizer, **overrides):
    model = prepare_model(build_llama(len(tokenizer), hidden=32, layers=2, seed=3, **overrides))
    model64 = prepare_model(build_llama(len(tokenizer), hidden=32, layers=2, seed=3,
                                        **overrides).double())
    return model, model64


def test_changes_match_float64_forward_and_votes_agree(tokenizer):
    count = 1000
    model, model64 = build_pair_of_models(tokenizer)
    pairs = make_pairs(tokenizer)
    oracle = LikelihoodOracle(model, ComPOConfig(radius=RADIUS, block_elements=1 << 16), 0)
    weight = oracle.master_weight()
    state = oracle.prepare(pairs, weight)
    ours = oracle.changes(state, 5, 0, list(range(count)))
    votes = oracle.votes(state, 5, 0, list(range(count)))
    exact = torch.stack([float64_changes(model64, pairs, weight, direction_key(5, 0, i), RADIUS)
                         for i in range(count)])
    # relative to each perturbation's largest change (a change can be ~0 by chance)
    relative = (ours - exact).abs().amax(1) / exact.abs().amax(1)
    exact_votes = torch.tensor([combine((row[0::2] > 0) & (row[1::2] < 0), "any")
                                for row in exact], dtype=torch.int8)
    agreement = float((votes == exact_votes).float().mean())
    print(f"max relative error {float(relative.max()):.2e}, vote agreement {agreement:.4f}")
    assert float(relative.max()) < 1e-3
    assert agreement >= 0.999


def test_softcapped_logits_are_exact(tokenizer):
    """Gemma-2 style final soft-capping goes through the cancellation-free identity."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    def build(dtype):
        torch.manual_seed(4)
        config = Gemma2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                              head_dim=16, final_logit_softcapping=0.5, pad_token_id=0,
                              tie_word_embeddings=False)
        return prepare_model(Gemma2ForCausalLM(config).to(dtype))

    model, model64 = build(torch.float32), build(torch.float64)
    pairs = make_pairs(tokenizer)
    oracle = LikelihoodOracle(model, ComPOConfig(radius=1e-2), 0)
    weight = oracle.master_weight()
    state = oracle.prepare(pairs, weight)
    assert state.cap == 0.5  # small: logits reach the cap, so the capping really matters
    assert float(state.base_logits.abs().max()) > 0.3
    ours = oracle.changes(state, 1, 0, list(range(20)))
    for index in range(20):
        exact = float64_changes(model64, pairs, weight, direction_key(1, 0, index), 1e-2)
        assert float((ours[index] - exact).abs().max() / exact.abs().max()) < 1e-3


def test_vote_rules():
    improved = torch.tensor([True, False, False])
    assert combine(improved, "any") == -1
    assert combine(improved, "all") == 1
    assert combine(improved, "majority") == 1
    assert combine(torch.tensor([True, True, False]), "majority") == -1


def test_blocks_do_not_change_votes(tokenizer):
    model, _ = build_pair_of_models(tokenizer)
    pairs = make_pairs(tokenizer)
    results = []
    for block in (100, 1 << 14, 1 << 22):  # one row at a time .. many directions at once
        oracle = LikelihoodOracle(model, ComPOConfig(radius=RADIUS, block_elements=block), 0)
        state = oracle.prepare(pairs, oracle.master_weight())
        results.append(oracle.changes(state, 2, 1, list(range(30))))
    assert torch.allclose(results[0], results[1], rtol=1e-5, atol=1e-9)
    assert torch.allclose(results[0], results[2], rtol=1e-5, atol=1e-9)
