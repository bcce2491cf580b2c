"""The body and head roles without Ray: a head worker fed by the body votes as a worker
that runs its own body, bit for bit, and holds no model."""

import numpy as np
import pytest
import torch

from compo.config import ComPOConfig, DataConfig, ModelConfig
from compo.data.encoding import load_tokenized
from compo.model.loading import load_tokenizer
from workers.body import Body
from workers.protocol import pair_ids
from workers.worker import Worker

M, SEED, ITERATION = 48, 5, 2


@pytest.fixture(scope="module")
def pairs(model_dir, pairs_path):
    return pair_ids(load_tokenized(DataConfig(path=str(pairs_path)),
                                   load_tokenizer(model_dir))[0][:2])


@pytest.mark.parametrize("moved_layers", [0, 1])
def test_a_fed_head_worker_votes_as_a_worker_with_the_model(model_dir, pairs, moved_layers):
    compo = ComPOConfig(num_perturbations=M, radius=1e-2,
                        perturb={"mlp_last_layers": moved_layers})
    model = ModelConfig(path=str(model_dir))
    whole, body = Worker(model, compo, "whole"), Body(model, compo)
    head = Worker(model, compo, "head", head=body.head_part())
    assert head.describe()["holds_model"] is False and whole.describe()["holds_model"]
    assert head.head_sha256 == whole.head_sha256
    for round_id in (1, 2):
        assert np.array_equal(whole.prepare(round_id, 0, pairs)[1],
                              head.prepare(round_id, 0, body.feed(pairs))[1])
        mine, theirs = (worker.evaluate(round_id, 0, SEED, ITERATION + round_id, range(M))
                        for worker in (whole, head))
        assert mine.votes == theirs.votes and len(set(mine.vote_array())) == 2
        assert np.array_equal(whole.logprobs(round_id, 0), head.logprobs(round_id, 0))
    assert body.describe()["passes"] == 2  # once per round, whatever the head workers do
    with pytest.raises(TypeError, match="the body feeds it"):
        head.likelihood_oracle().feed([])


def test_a_body_spread_by_device_map_feeds_the_same_hidden_states(model_dir, pairs):
    compo = ComPOConfig(num_perturbations=M, radius=1e-2)
    whole = Body(ModelConfig(path=str(model_dir)), compo).feed(pairs)
    spread = Body(ModelConfig(path=str(model_dir), device="auto"), compo).feed(pairs)  # no GPU
    assert torch.equal(whole.inputs.hidden, spread.inputs.hidden)  # here: all on the CPU
    assert torch.equal(whole.inputs.targets, spread.inputs.targets)
