"""Generation under low-rank directions (compo.directions kind low_rank): the rows' logits are
those of the materialised W + r z, a row costs r (V + d) extra (never V x d), and a row's
low-rank term does not depend on the batch it is generated in."""

import torch

from compo.config import ComPOConfig, OracleConfig
from compo.directions import DirectionsConfig, low_rank_direction, low_rank_factors
from compo.model.head import PLAIN, head_of, output_layer
from compo.perturbation import direction_key
from compo.service_oracle.generation import (
    PerturbedHead,
    add_low_rank_products_,
    encode_prefix,
    generate,
    perturbation_head,
)
from compo.service_oracle.source import ServiceVoteSource
from tests.compo.service_oracle.test_generation import SKY, generation_peaks, greedy_with_weight
from tests.compo.service_oracle.test_source import prepared, prompt_ids, service_source

RADIUS = 0.05
RANK = 4
LOW_RANK = DirectionsConfig(kind="low_rank", rank=RANK)
KEYS = [direction_key(7, 2, index) for index in range(3)]
SIGNS = [1, -1, 1]


def moved(weight: torch.Tensor, key: int, sign: int) -> torch.Tensor:
    """W + sign * r z(key) with the low-rank direction materialised in float64."""
    z = low_rank_direction(key, tuple(weight.shape), RANK)
    return weight.double() + sign * RADIUS * z


def test_low_rank_logits_are_those_of_the_materialised_weight():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(300, 48, generator=generator)
    hidden = torch.randn(3, 48, generator=generator)
    head = perturbation_head(weight, KEYS, RADIUS, PLAIN, SIGNS, LOW_RANK)
    ours = head.logits(hidden)
    for row, (key, sign) in enumerate(zip(KEYS, SIGNS, strict=True)):
        exact = hidden[row].double() @ moved(weight, key, sign).T
        torch.testing.assert_close(ours[row].double(), exact, rtol=1e-5, atol=1e-5)
    plain = PerturbedHead(weight, None, RADIUS, PLAIN, copies=3).logits(hidden)
    assert (ours - plain).abs().max() > 1e-3  # the rows did move


def test_low_rank_rows_generate_like_the_moved_weight(loaded):
    model, tokenizer = loaded
    weight = output_layer(model).weight.detach().float().clone()
    prompt, eos = prompt_ids(tokenizer, SKY), tokenizer.eos_token_id
    head = perturbation_head(weight, KEYS, RADIUS, head_of(model), SIGNS, LOW_RANK)
    greedy = OracleConfig(max_new_tokens=6, temperature=0)
    out = generate(model, encode_prefix(model, prompt), head, greedy, [torch.Generator()] * 3,
                   eos)
    for row, (key, sign) in enumerate(zip(KEYS, SIGNS, strict=True)):
        reference = moved(weight, key, sign).float()
        assert out.tokens[row] == greedy_with_weight(model, reference, prompt, eos)
    assert out.tokens[0] != out.tokens[1] or out.tokens[1] != out.tokens[2]


def test_a_row_products_do_not_depend_on_its_batch():
    """The low-rank term of a row has the same bits in a batch of 3 as alone (the base
    logits' GEMM is the model's own business)."""
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(500, 64, generator=generator)
    hidden = torch.randn(3, 64, generator=generator).bfloat16()
    factors = low_rank_factors(KEYS, tuple(weight.shape), RANK)
    signs = torch.tensor(SIGNS, dtype=torch.float32)[:, None]
    batch = add_low_rank_products_(torch.zeros(3, 500), factors, hidden, RADIUS * signs)
    for row in range(3):
        one = tuple(f[row : row + 1] for f in factors)
        alone = add_low_rank_products_(torch.zeros(1, 500), one, hidden[row : row + 1],
                                       RADIUS * signs[row : row + 1])
        assert torch.equal(alone[0], batch[row])


def test_a_low_rank_row_costs_its_factors_never_v_times_d(loaded):
    """Peak CPU memory of P low-rank rows minus that of P unperturbed rows, per row: at most
    the row's factors r (V + d) and two rows of logits, far below one V x d direction."""
    base, base_peak, low, low_peak, vocab, width, rows = generation_peaks(loaded, LOW_RANK)
    factors = 4 * RANK * (vocab + width)
    assert (low_peak - base_peak) / rows < factors + 2 * 4 * (vocab + width)
    assert 4 * vocab * width > 4 * (factors + 2 * 4 * (vocab + width))  # V x d would break it
    assert low.tokens != base.tokens


def test_the_service_source_generates_with_its_directions(loaded, tmp_path, pairs_file):
    """ServiceVoteSource reads compo.directions: with low rank its perturbed responses are
    the texts of the low-rank head generating directly, not the dense ones."""
    model, tokenizer = loaded
    greedy = {"temperature": 0, "radius": {"mode": "raw", "value": RADIUS}}
    dense_source = service_source(loaded, tmp_path, pairs_file, **greedy)
    config = dense_source.config.model_copy(
        update={"compo": ComPOConfig(num_perturbations=4, directions=LOW_RANK)})
    source = ServiceVoteSource(model, tokenizer, config, "gen-test")
    assert source.directions.name == "rank4"  # read from compo.directions
    source = prepared(source, tokenizer, pairs_file)
    texts = [row[0] for row in source.responses(5, 0, range(3))]
    keys = [direction_key(5, 0, index) for index in range(3)]
    head = perturbation_head(source.weight, keys, RADIUS, head_of(model), [1] * 3, LOW_RANK)
    out = generate(model, source.prefixes[0], head, source.config.oracle,
                   [torch.Generator()] * 3, tokenizer.eos_token_id)
    assert texts == [tokenizer.decode(row, skip_special_tokens=True) for row in out.tokens]
    dense = prepared(dense_source, tokenizer, pairs_file)
    assert texts != [row[0] for row in dense.responses(5, 0, range(3))]
