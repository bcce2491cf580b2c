"""Generative oracle: delta-form generation, seeded sampling, verdicts to votes, config."""

import copy
import socket

import pytest
import torch

from compo.config import ComPOConfig, DataConfig, ModelConfig, OracleConfig, TrainConfig
from compo.config_files import parse_config
from compo.errors import ConfigError
from compo.model.head import head_of, output_layer
from compo.perturbation import direction, direction_key
from compo.service_oracle.generation import (
    PerturbedHead,
    encode_prefix,
    generate,
    perturbation_head,
)
from compo.service_oracle.source import ServiceVoteSource, votes_from_results
from compo.train import default_source
from compo.votes import LocalVoteSource
from oracle_service.schemas import ComparisonError, ComparisonResult, ErrorKind, VerdictLabel

RADIUS = 0.05  # big enough that the tiny model's perturbed responses differ from the base
NEW_TOKENS = 6


def prompt_ids(tokenizer, text="What is 2 plus 3?"):
    return [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]


def reference_generation(model, weight, prompt, eos_id):
    """Greedy HF generate of a copy of the model whose lm_head weight is `weight`."""
    twin = copy.deepcopy(model)
    output_layer(twin).weight.data.copy_(weight)
    out = twin.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False,
                        output_logits=True, return_dict_in_generate=True, eos_token_id=eos_id,
                        pad_token_id=eos_id)
    return out.sequences[0, len(prompt):].tolist(), [step[0] for step in out.logits]


def test_delta_head_generation_equals_a_model_whose_weight_is_w_plus_rz(loaded):
    model, tokenizer = loaded
    weight = output_layer(model).weight.detach().float().clone()
    prompt, eos = prompt_ids(tokenizer), tokenizer.eos_token_id
    keys = [direction_key(3, 1, index) for index in range(3)]
    config = OracleConfig(max_new_tokens=NEW_TOKENS, temperature=0)
    perturbed = perturbation_head(weight, keys, RADIUS, head_of(model))
    ours = generate(model, encode_prefix(model, prompt), perturbed, config,
                    [torch.Generator()] * 3, eos, keep_logits=True)
    base = generate(model, encode_prefix(model, prompt), PerturbedHead(weight, None, RADIUS),
                    config, [torch.Generator()], eos)
    assert base.tokens[0] == reference_generation(model, weight, prompt, eos)[0]
    for row, key in enumerate(keys):
        perturbed = weight + RADIUS * direction(key, tuple(weight.shape))
        tokens, logits = reference_generation(model, perturbed, prompt, eos)
        assert ours.tokens[row] == tokens
        for step, expected in enumerate(logits):
            torch.testing.assert_close(ours.logits[step][row], expected, atol=1e-5, rtol=1e-5)
    assert any(tokens != base.tokens[0] for tokens in ours.tokens)


def test_generation_stops_at_eos_and_keeps_it(loaded):
    model, tokenizer = loaded
    weight = output_layer(model).weight.detach().float().clone()
    eos, prefix = tokenizer.eos_token_id, encode_prefix(model, prompt_ids(tokenizer))
    weight[eos] = prefix.hidden[0].float() * 100.0  # EOS wins the first step by far
    out = generate(model, prefix, PerturbedHead(weight, None, RADIUS),
                   OracleConfig(max_new_tokens=NEW_TOKENS, temperature=0), [torch.Generator()], eos)
    assert out.tokens == [[eos]]


def service_source(loaded, tmp_path, pairs_file, url="http://127.0.0.1:9", **oracle):
    model, tokenizer = loaded
    config = TrainConfig(
        model=ModelConfig(path="unused"), data=DataConfig(path=str(pairs_file)),
        compo=ComPOConfig(num_perturbations=4), seed=5,
        oracle=OracleConfig(**{"kind": "service", "service_url": url,
                               "max_new_tokens": NEW_TOKENS,
                               "radius": {"mode": "raw", "value": 1e-9}, **oracle}))
    return ServiceVoteSource(model, tokenizer, config, "gen-test")


def prepared(source, tokenizer, pairs_file):
    from compo.data.encoding import load_tokenized

    pairs, _ = load_tokenized(DataConfig(path=str(pairs_file)), tokenizer)
    weight = output_layer(source.model).weight.detach().float().clone()
    source.prepare(pairs[:1], weight)
    return source


@pytest.mark.parametrize("noise", ["independent", "shared"])
def test_sampling_is_seeded_and_shared_noise_isolates_the_perturbation(loaded, tmp_path,
                                                                       pairs_file, noise):
    source = prepared(service_source(loaded, tmp_path, pairs_file, temperature=1.0,
                                     noise=noise), loaded[1], pairs_file)
    base = source.base_responses(5, 0)
    texts = [row[0] for row in source.responses(5, 0, range(4))]
    assert texts == [row[0] for row in source.responses(5, 0, range(4))]  # reproducible
    if noise == "shared":  # radius ~0: each perturbed response replays the base stream
        assert texts == base * 4
    else:
        assert len(set(texts)) > 1
    other = prepared(service_source(loaded, tmp_path, pairs_file, temperature=1.0,
                                    noise=noise), loaded[1], pairs_file)
    assert other.base_responses(5, 0) == base and other.base_responses(5, 1) != base


def result(label: VerdictLabel) -> ComparisonResult:
    error = None
    if label is VerdictLabel.ABSTAIN:
        error = ComparisonError(kind=ErrorKind.MALFORMED_OUTPUT, message="no verdict")
    return ComparisonResult(verdict=label, error=error)


def test_verdicts_become_votes_and_abstentions_stay_zero():
    a, b, tie, abstain = (VerdictLabel.A, VerdictLabel.B, VerdictLabel.TIE,
                          VerdictLabel.ABSTAIN)
    single = votes_from_results([result(v) for v in (b, a, tie, abstain)], 4, 1, "any")
    assert single.tolist() == [-1, 1, 1, 0]
    pairs = [result(v) for v in (b, abstain, a, tie, abstain, abstain, b, a)]
    assert votes_from_results(pairs, 4, 2, "any").tolist() == [-1, 1, 0, -1]
    assert votes_from_results(pairs, 4, 2, "all").tolist() == [-1, 1, 0, 1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_service_makes_explicit_abstentions(loaded, tmp_path, pairs_file, caplog):
    url = f"http://127.0.0.1:{free_port()}"
    source = prepared(service_source(loaded, tmp_path, pairs_file, url=url), loaded[1],
                      pairs_file)
    votes = source.votes(5, 0, list(range(4)))
    assert votes.tolist() == [0, 0, 0, 0]
    metrics = source.metrics()["oracle"]
    assert metrics["errors"] == {"connection_error": 4}
    assert metrics["verdicts"]["abstain"] == 4 == metrics["comparisons"]
    assert "4 comparisons abstain" in caplog.text


def test_oracle_config_is_strict_and_selects_the_source(loaded, model_dir, pairs_file):
    base = {"model": {"path": str(model_dir)}, "data": {"path": str(pairs_file)}}
    with pytest.raises(ConfigError, match="oracle.temprature: unknown key"):
        parse_config(TrainConfig, {**base, "oracle": {"temprature": 1.0}})
    with pytest.raises(ConfigError, match="oracle.kind"):
        parse_config(TrainConfig, {**base, "oracle": {"kind": "judge"}})
    model, tokenizer = loaded
    assert isinstance(default_source(parse_config(TrainConfig, base), model, tokenizer, "r"),
                      LocalVoteSource)
    service = parse_config(TrainConfig, {**base, "oracle": {"kind": "service"}})
    with pytest.raises(ConfigError, match="needs oracle.service_url"):
        default_source(service, model, tokenizer, "r")
    service.oracle_service_url = "http://127.0.0.1:9"
    assert isinstance(default_source(service, model, tokenizer, "r").oracle, ServiceVoteSource)
    with pytest.raises(ConfigError, match="cannot be used with the oracle service"):
        default_source(service, model, tokenizer, "my run")


@pytest.mark.parametrize("temperature, noise", [(0.0, "shared"), (1.0, "shared"),
                                                (1.0, "independent")])
def test_perturbed_responses_identical_to_the_base_are_counted(loaded, tmp_path, pairs_file,
                                                               temperature, noise):
    url = f"http://127.0.0.1:{free_port()}"  # votes abstain; what was generated is counted
    source = prepared(service_source(loaded, tmp_path, pairs_file, url=url,
                                     temperature=temperature, noise=noise), loaded[1],
                      pairs_file)
    source.votes(5, 0, list(range(4)))
    base = source.base_responses(5, 0)[0]
    texts = [row[0] for row in source.responses(5, 0, range(4))]
    same = sum(text == base for text in texts)
    oracle = source.metrics()["oracle"]
    assert (oracle["identical"], oracle["responses"]) == (same, 4)
    assert oracle["identical_share"] == same / 4
    assert oracle["base_chars"] == len(base)
    assert oracle["perturbed_chars"] == sum(map(len, texts)) / 4
    # radius ~0: greedy responses, and sampled ones under common random numbers (the
    # default), equal the base one; with independent streams they mostly do not
    assert same == 4 if noise == "shared" else same < 4
