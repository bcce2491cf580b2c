"""Where an iteration's votes come from: the VoteSource interface and the in-process source.

A source prepares an iteration's pairs under the current output weight, answers votes of
perturbation indices (-1 better / +1 not / 0 abstain), gives log-probs under another
weight, and rebuilds the rows of sum y_i z_i for an accepted step. The training loop
(compo/train.py) only talks to this interface; any oracle (compo/oracles/) in this
process (LocalVoteSource) and Ray workers (workers/coordinator.py) implement it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from compo.config import ComPOConfig
from compo.data.formats import TokenizedPair
from compo.estimator import RowShards, ShardRunner, kept_votes, vote_weighted_rows
from compo.model.loading import DTYPES
from compo.oracle import HeadFeed, LikelihoodOracle, OracleState
from compo.oracles import Oracle

Shards = tuple[list[range], ShardRunner]  # row ranges of sum y_i z_i, and who computes them


class VoteSource(Protocol):
    """The votes of one iteration, wherever they are computed."""

    def prepare(self, pairs: Sequence[TokenizedPair], weight: torch.Tensor) -> torch.Tensor:
        """Set up an iteration's pairs under `weight`; returns base log-probs [S]."""

    def votes(self, seed: int, iteration: int, indices: Sequence[int]) -> torch.Tensor:
        """Votes (-1 / +1 / 0 abstain) of the given perturbation indices."""

    def logprobs(self, weight: torch.Tensor) -> torch.Tensor:
        """Log-probs [S] of the prepared pairs under another output weight."""

    def rebuild(self, seed: int, iteration: int, indices: Sequence[int], votes: torch.Tensor,
                weight: torch.Tensor) -> Shards:
        """Where the rows of sum y_i z_i are rebuilt if the step is accepted."""

    def metrics(self) -> dict:
        """Extra figures of the last iteration for its metrics.jsonl row."""

    def close(self) -> None:
        """Release what the source holds (workers, connections)."""


def step_rows(seed: int, iteration: int, kept: Sequence[tuple[int, int]],
              weight: torch.Tensor, compo: ComPOConfig) -> RowShards:
    """Rows of sum y_i z_i for `weight`'s shape and device, made on demand (here or on a
    Ray worker: the same settings, so the same bits)."""
    shape = tuple(weight.shape)
    return RowShards(lambda rows: vote_weighted_rows(
        seed, iteration, kept, shape, rows, compo.block_elements, weight.device,
        DTYPES[compo.direction_dtype], compo.directions))


def local_rebuild(seed: int, iteration: int, indices: Sequence[int], votes: torch.Tensor,
                  weight: torch.Tensor, compo: ComPOConfig) -> Shards:
    """All rows of sum y_i z_i in this process, in one shard."""
    kept = kept_votes(torch.tensor(list(indices)), votes)
    shard = step_rows(seed, iteration, kept, weight, compo)
    return [range(weight.shape[0])], shard.run


class LikelihoodVotes:
    """The likelihood oracle as an Oracle (compo/oracles/base.py): it keeps the prepared
    state between calls."""

    def __init__(self, oracle: LikelihoodOracle):
        self.scorer = oracle
        self.state: OracleState | None = None

    def prepare(self, pairs, weight):
        self.state = self.scorer.prepare(pairs, weight)
        return self.state.base_logprobs

    def prepare_fed(self, feed: HeadFeed, weight: torch.Tensor) -> torch.Tensor:
        """prepare from what a body sent (compo/oracle.py HeadFeed): no body pass here."""
        self.state = self.scorer.state(feed, weight)
        return self.state.base_logprobs

    def votes(self, seed, iteration, indices):
        return self.scorer.votes(self.state, seed, iteration, indices)

    def logprobs(self, weight):
        return self.scorer.logprobs(self.state, weight)

    def metrics(self) -> dict:
        return {}

    def take_counts(self) -> dict:
        return {}

    def abstentions(self) -> None:
        return None  # every direction gets a vote

    def close(self) -> None:
        self.state = None


class LocalVoteSource:
    """Votes of any oracle (compo/oracles/) computed in this process."""

    def __init__(self, oracle: Oracle, compo: ComPOConfig):
        self.oracle, self.compo = oracle, compo

    def prepare(self, pairs, weight):
        return self.oracle.prepare(pairs, weight)

    def votes(self, seed, iteration, indices):
        return self.oracle.votes(seed, iteration, indices)

    def logprobs(self, weight):
        return self.oracle.logprobs(weight)

    def rebuild(self, seed, iteration, indices, votes, weight):
        return local_rebuild(seed, iteration, indices, votes, weight, self.compo)

    def metrics(self) -> dict:
        return self.oracle.metrics()

    def abstentions(self):
        """The oracle's account of this iteration's abstentions (None: count the 0 votes)."""
        return self.oracle.abstentions()

    def close(self) -> None:
        self.oracle.close()
