"""A new oracle kind is one module and one registry line: registered here, it votes in this
process (LocalVoteSource) and through the coordinator's classes on the in-process transport
(RayVoteSource, a body and head workers), with the same votes."""

import pytest
import torch

from compo.data.encoding import load_tokenized
from compo.model.loading import load_tokenizer
from compo.oracles import ORACLES
from compo.oracles.likelihood import LikelihoodKind
from compo.train import default_source
from compo.votes import LikelihoodVotes, LocalVoteSource
from workers.body import Body
from workers.body_handle import RemoteBody
from workers.coordinator import RayVoteSource
from workers.transport import InProcess, LocalPool, Placement
from workers.worker import Worker

M, SEED = 48, 5


class ChosenVotes(LikelihoodVotes):
    """A pair improves when log pi(y+) rises, whatever y- does (a looser rule)."""

    def votes(self, seed, iteration, indices):
        changes = self.scorer.changes(self.state, seed, iteration, list(indices))  # [P, S]
        return torch.tensor([-1 if bool((row[0::2] > 0).any()) else 1 for row in changes],
                            dtype=torch.int8)


class ChosenKind(LikelihoodKind):
    name = "chosen"

    def fed(self, scorer):
        return ChosenVotes(scorer)


@pytest.fixture
def chosen(monkeypatch):
    monkeypatch.setitem(ORACLES, "chosen", ChosenKind())  # the one registry line


def test_a_registered_kind_votes_in_process_and_on_the_coordinators_classes(chosen,
                                                                           make_config):
    config = make_config("chosen", {"num_workers": 2, "chunk_size": 8})
    config.oracle = config.oracle.model_copy(update={"kind": "chosen"})
    tokenizer = load_tokenizer(config.model.path)
    pairs = load_tokenized(config.data, tokenizer)[0][:2]
    body = Body(config.model, config.compo)
    local = default_source(config, body.oracle.model, tokenizer, "chosen")
    assert isinstance(local, LocalVoteSource) and isinstance(local.oracle, ChosenVotes)
    weight = local.oracle.scorer.master_weight()
    local.prepare(pairs, weight)
    indices = list(range(M))
    ours = local.votes(SEED, 0, indices)
    likelihood = LikelihoodVotes(local.oracle.scorer)
    likelihood.prepare(pairs, weight)
    assert not torch.equal(ours, likelihood.votes(SEED, 0, indices))  # the kind decides

    transport, setup, head = InProcess(), ORACLES["chosen"].setup(config, "chosen"), \
        body.head_part()
    pool = LocalPool([Worker(config.model, config.compo, f"worker-{i}", setup=setup,
                             head=head.to("cpu")) for i in range(2)])
    placement = Placement(transport, pool, RemoteBody(body, config.ray, transport))
    source = RayVoteSource(config, progress=False, placement=placement).start(weight.clone())
    try:
        source.prepare(pairs, weight)
        assert torch.equal(source.votes(SEED, 0, indices), ours)
    finally:
        source.close()
