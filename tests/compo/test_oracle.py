"""The likelihood oracle against a float64 full forward pass with W + r z."""

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from compo.config import ComPOConfig
from compo.data.formats import TokenizedPair
from compo.demo.families import build_family
from compo.demo.tiny import build_llama
from compo.errors import ConfigError
from compo.model.head import PLAIN, output_layer
from compo.model.loading import prepare_model
from compo.model.scoring import (
    HeadInputs,
    completion_index,
    pad_batch,
    pair_sequences,
    segment_sums,
    sequence_logprobs,
)
from compo.oracle import LikelihoodOracle, build_state, combine, pair_improved, sequence_totals
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


# --- compo.perturb.mlp_last_layers: the output layer and the MLPs of the last layers move

MOVED_FAMILIES = ["Llama", "Gemma2", "Phi", "Phi3", "Cohere", "GPT-NeoX"]  # plain, soft-cap,
# lm_head bias, fused gate_up projection, logit scale, other MLP names and final norm
LAYER_RADIUS = 5e-3
DIRECTIONS = 48


def random_pairs(count: int, vocab: int, seed: int) -> list[TokenizedPair]:
    generator = torch.Generator().manual_seed(seed)

    def ids(length):
        return torch.randint(3, vocab, (length,), generator=generator).tolist()

    return [TokenizedPair(ids(3 + i % 4), ids(2 + i % 5), ids(4 + i % 3), f"p{i}")
            for i in range(count)]


def padded_forward_logprobs(model64, pairs) -> torch.Tensor:
    """log pi(y|x) per sequence [2K] from Hugging Face's own forward on one right-padded
    batch (its logits; the padding never reaches earlier positions)."""
    sequences = pair_sequences(pairs)
    ids, mask = pad_batch(sequences, 0, "cpu")
    index, targets, segment = completion_index(sequences, ids.shape[1], 0, "cpu")
    logits = model64(input_ids=ids, attention_mask=mask).logits.double()
    picked = logits.reshape(-1, logits.shape[-1])[index].log_softmax(-1)
    picked = picked.gather(1, targets[:, None]).squeeze(1)
    return torch.zeros(len(sequences), dtype=torch.float64).index_add_(0, segment, picked)


def moved_forward_changes(model64, layout, pairs, keys, radius: float) -> torch.Tensor:
    """[P, 2K] change of log pi under the float64 model with every tensor of the layout
    moved by radius * z(key) at its element offset."""
    from compo.perturbation import normals

    base = padded_forward_logprobs(model64, pairs)
    params = dict(model64.named_parameters(remove_duplicate=False))
    originals = {b.name: params[b.name].detach().clone() for b in layout.blocks}
    out = []
    with torch.no_grad():
        for key in keys:
            for block in layout.blocks:
                z = normals([key], block.start * layout.width, block.rows * layout.width)[0]
                z = z.view(block.rows, layout.width).double()
                params[block.name].copy_(originals[block.name]
                                         + radius * (z.T if block.transposed else z))
            out.append(padded_forward_logprobs(model64, pairs) - base)
        for name, value in originals.items():
            params[name].copy_(value)
    return torch.stack(out)


@pytest.mark.parametrize("family", MOVED_FAMILIES)
@pytest.mark.parametrize("target", ["mlp", "attention_output"])
def test_moved_mlp_changes_match_float64_forward_and_votes_agree(family, target):
    model = build_family(family)
    perturb = ({"mlp_last_layers": 2} if target == "mlp"  # the old spelling still works
               else {"target": target, "last_layers": 2})
    config = ComPOConfig(num_perturbations=DIRECTIONS, radius=LAYER_RADIUS, perturb=perturb)
    oracle = LikelihoodOracle(model, config, pad_id=0, batch_size=4)
    # two layers' MLPs, >= 2 projections each; or one attention output projection each
    assert len(oracle.layout.moved_layers) >= (4 if target == "mlp" else 2)
    pairs = random_pairs(6, 128, seed=len(family))
    state = oracle.prepare(pairs, oracle.master_weight())
    ours = oracle.changes(state, 11, 0, list(range(DIRECTIONS)))
    keys = [direction_key(11, 0, i) for i in range(DIRECTIONS)]
    with torch.no_grad():
        exact = moved_forward_changes(copy.deepcopy(model).double(), oracle.layout, pairs,
                                      keys, LAYER_RADIUS)
    assert float((ours - exact).abs().max() / exact.abs().max()) < 1e-3
    ours_improved = torch.stack([pair_improved(row) for row in ours])
    exact_improved = torch.stack([pair_improved(row) for row in exact])
    agree = float((ours_improved == exact_improved).double().mean())
    assert agree >= 0.999, f"{family}: pair decisions agree {agree:.4f}"
    assert exact_improved.any() and not exact_improved.all()  # the votes are not constant


def test_without_moved_layers_the_master_is_the_output_layer(tokenizer):
    model = prepare_model(build_llama(len(tokenizer), hidden=32, layers=2, seed=1), "tiny")
    oracle = LikelihoodOracle(model, ComPOConfig(), tokenizer.pad_token_id)
    assert oracle.tail is None and len(oracle.layout.blocks) == 1
    assert torch.equal(oracle.master_weight(), output_layer(model).weight.float())


def test_moved_layers_log_probs_follow_the_master_and_the_fused_kernel_is_refused():
    model = build_family("Llama")
    config = ComPOConfig(perturb={"mlp_last_layers": 1})
    oracle = LikelihoodOracle(model, config, pad_id=0)
    pairs = random_pairs(3, 128, seed=0)
    master = oracle.master_weight()
    state = oracle.prepare(pairs, master)
    assert torch.allclose(oracle.logprobs(state, master), state.base_logprobs, atol=1e-6)
    moved = master.clone()
    moved[oracle.layout.moved_layers[0].start :] *= 1.5  # only the MLP rows change
    model15 = copy.deepcopy(model).double()
    params = dict(model15.named_parameters())
    with torch.no_grad():
        for block in oracle.layout.moved_layers:
            params[block.name].mul_(1.5)
    with torch.no_grad():
        expected = padded_forward_logprobs(model15, pairs)
    assert torch.allclose(oracle.logprobs(state, moved), expected, atol=1e-4)
    with pytest.raises(ConfigError, match="fused"):
        LikelihoodOracle(model, config.model_copy(update={"products": "fused"}), pad_id=0)


class OpLog(TorchDispatchMode):
    """The aten ops run inside the block, by name."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


ACCUMULATING_OPS = {"index_add", "index_add_", "scatter_add", "scatter_add_", "index_put",
                    "index_put_", "put_", "scatter_reduce", "scatter_reduce_"}  # atomics on CUDA


def test_sequence_sums_are_deterministic_left_to_right_passes():
    """Per-sequence sums (base log-probs, changes per direction, log-probs under a weight)
    run in deterministic mode, use no accumulating scatter (atomics on CUDA) and equal a
    left-to-right float64 sum per sequence, the bits a sequential index_add_ had on CPU."""
    g = torch.Generator().manual_seed(4)
    lengths = [5, 1, 0, 9, 3, 7]
    segment = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    hidden = torch.randn(len(segment), 16, generator=g)
    targets = torch.randint(0, 40, (len(segment),), generator=g)
    weight = torch.randn(40, 16, generator=g)
    inputs = HeadInputs(hidden, targets, segment, len(lengths))
    at_target, spread = 1e-3 * torch.randn(2, 2, len(segment), generator=g).abs()
    torch.use_deterministic_algorithms(True)
    try:
        with OpLog() as ops:
            state = build_state(inputs, weight, PLAIN, torch.float32)
            totals = sequence_totals(state, at_target, spread)
            again = sequence_logprobs(inputs, weight, PLAIN)
    finally:
        torch.use_deterministic_algorithms(False)
    assert "segment_reduce" in ops.names and not ACCUMULATING_OPS & set(ops.names)
    logprobs = PLAIN.logits(hidden, weight).log_softmax(-1)
    picked = logprobs.gather(1, targets[:, None]).squeeze(1).double()
    per_token = at_target.double() - torch.log1p(spread.double())

    def left_to_right(values: torch.Tensor) -> list[float]:
        out, first = [], 0
        for length in lengths:
            total = 0.0
            for value in values[first : first + length].tolist():
                total += value
            out.append(total)
            first += length
        return out

    assert state.base_logprobs.tolist() == left_to_right(picked)
    assert totals.tolist() == [left_to_right(row) for row in per_token]
    assert again.tolist() == state.base_logprobs.tolist()
    with pytest.raises(ValueError, match="sorted sequence numbers"):
        segment_sums(per_token, segment.flip(0), len(lengths))
