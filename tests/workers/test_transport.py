"""The coordinator without Ray: the same classes drive the body and head workers through
the in-process transport; votes equal the local oracle's, a dead worker's chunks go
elsewhere, and the step is rebuilt in shards exactly."""

import pytest
import torch

from compo.data.encoding import load_tokenized
from compo.estimator import decide_from_shards
from compo.model.loading import load_model, load_tokenizer
from compo.oracle import LikelihoodOracle
from compo.votes import LikelihoodVotes, LocalVoteSource
from workers.body import Body
from workers.body_handle import RemoteBody
from workers.coordinator import RayVoteSource
from workers.transport import InProcess, LocalPool, Placement
from workers.worker import Worker

M, SEED = 64, 3


@pytest.fixture
def setup(make_config):
    config = make_config("in-process", {"num_workers": 3, "chunk_size": 8})
    tokenizer = load_tokenizer(config.model.path)
    pairs = load_tokenized(config.data, tokenizer)[0][:2]
    oracle = LikelihoodOracle(load_model(config.model), config.compo, tokenizer.pad_token_id)
    local = LocalVoteSource(LikelihoodVotes(oracle), config.compo)
    return config, pairs, local


def in_process(config, workers: int) -> tuple[RayVoteSource, InProcess]:
    transport, body = InProcess(), Body(config.model, config.compo)
    head = body.head_part()
    pool = LocalPool([Worker(config.model, config.compo, f"worker-{i}", head=head.to("cpu"))
                      for i in range(workers)])
    placement = Placement(transport, pool, RemoteBody(body, config.ray, transport))
    return RayVoteSource(config, progress=False, placement=placement), transport


def test_in_process_votes_and_steps_equal_the_local_oracles(setup):
    config, pairs, local = setup
    weight = local.oracle.scorer.master_weight()
    source, transport = in_process(config, 3)
    source.start(weight.clone())
    accepted = []
    for iteration in (0, 1):
        local_base, base = local.prepare(pairs, weight), source.prepare(pairs, weight)
        assert torch.equal(base, local_base.double()) or torch.equal(base, local_base)
        indices = list(range(M))
        votes = source.votes(SEED, iteration, indices)
        assert torch.equal(votes, local.votes(SEED, iteration, indices))
        if iteration == 1:
            transport.dead.add(id(source.workers[1].actor))  # dies: its chunks go elsewhere
        ours = decide_from_shards(votes, config.compo, tuple(weight.shape),
                                  *source.rebuild(SEED, iteration, indices, votes, weight))
        theirs = decide_from_shards(votes, config.compo, tuple(weight.shape),
                                    *local.rebuild(SEED, iteration, indices, votes, weight))
        assert ours.accepted == theirs.accepted
        accepted.append(ours.accepted)
        if ours.accepted:
            assert torch.equal(ours.update.indices, theirs.update.indices)
            assert torch.equal(ours.update.values, theirs.update.values)
    assert accepted == [True, True]  # both steps rebuilt in shards, the second on two
    stats = source.metrics()["ray"]
    assert stats["workers"] <= 2 and stats["failures"] >= 1
    assert source.body.passes == 2  # the body ran once per iteration
