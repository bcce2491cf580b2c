"""One device's part of a distributed run: a plain class (no Ray) that holds the model.

workers/actor.py wraps it in a Ray actor. Per iteration it applies the coordinator's
weights update (step patches or a dense snapshot), computes the hidden-state cache once,
then answers chunks of perturbation indices (workers/protocol.py). With a generative
oracle (oracle.kind=service) the votes are the comparison service's verdicts on responses
this worker generates; one worker generates the base responses of an iteration and the
coordinator hands them to all. Which oracle: compo/oracles/ (the run's OracleSetup).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np

from compo.config import ComPOConfig, ModelConfig
from compo.estimator import SHARD_CALLS, RowShards, ShardCall
from compo.model.export import fingerprint
from compo.model.loading import load_model, load_tokenizer
from compo.oracle import HeadFeed, LikelihoodOracle
from compo.oracles import OracleSetup, kind_of
from compo.votes import LocalVoteSource, VoteSource, step_rows
from workers.body import HeadPart
from workers.memory import resident_bytes
from workers.protocol import (
    INDEX_DTYPE,
    VOTE_DTYPE,
    PairIds,
    StaleVersionError,
    VoteBatch,
    WeightUpdate,
    apply_update,
    as_pairs,
)


class Worker:
    """A float32 master of the moved parameters and its version number, with the model
    (generation workers, or a worker that runs its own body) or without it (a head worker
    fed by the body: `head`)."""

    def __init__(self, model: ModelConfig, compo: ComPOConfig, name: str = "worker",
                 node: str = "local", setup: OracleSetup | None = None,
                 head: HeadPart | None = None):
        """`setup`: the run's oracle (None: the likelihood oracle of `compo`)."""
        started = time.perf_counter()
        self.name, self.node = name, node
        kind = kind_of(setup)
        self.generative = kind.generative
        self.head = None if head is None else head.to(model.device)  # its own master
        if self.head is not None:
            self.oracle = kind.fed(self.head.oracle)
        else:
            network = load_model(model)  # first: its errors say what is wrong with the path
            tokenizer = load_tokenizer(model.path)
            self.oracle = kind.build(network, tokenizer, model, compo, setup)
        self.source: VoteSource = LocalVoteSource(self.oracle, compo)
        # the master as loaded (version 0); a head worker's is the body's copy, moved here
        self.weight = (self.head.master if self.head is not None
                       else self.likelihood_oracle().master_weight())
        self.head_sha256 = fingerprint(self.weight)  # the coordinator checks it is its own
        self.compo = compo
        self.version = 0  # 0: the output layer as loaded
        self.prepared: tuple[int, int] | None = None  # (round, version) prepared
        self.shards: tuple[tuple[int, int, int], RowShards] | None = None  # rebuild rows
        self.load_seconds = time.perf_counter() - started

    def describe(self) -> dict:
        """Who and where this worker is, and what it holds."""
        return {"name": self.name, "node": self.node, "pid": os.getpid(),
                "device": str(self.weight.device), "version": self.version,
                "shape": list(self.weight.shape), "head_sha256": self.head_sha256,
                "holds_model": self.head is None, "resident_bytes": resident_bytes(),
                "load_seconds": self.load_seconds}

    def apply(self, update: WeightUpdate) -> int:
        """Bring the output layer to update.version; returns the version now held."""
        self.version = apply_update(self.weight, self.version, update, self.name)
        return self.version

    def prepare(self, round_id: int, version: int, pairs: Sequence[PairIds] | HeadFeed,
                patch: WeightUpdate | None = None) -> tuple[int, np.ndarray]:
        """Apply `patch`, then take the body's feed (a head worker) or run the body once
        for `pairs`; (version, base log-probs [S])."""
        if patch is not None:
            self.apply(patch)
        self._check_version(version)
        if self.head is not None:
            base = self.oracle.prepare_fed(pairs.to(self.weight.device), self.weight)
        else:
            base = self.source.prepare(as_pairs(pairs), self.weight)
        self.prepared = (round_id, version)
        return self.version, base.cpu().numpy()

    def base_responses(self, round_id: int, version: int, seed: int,
                       iteration: int) -> list[str]:
        """Service oracle: the iteration's base response per prompt, generated here."""
        self._check_prepared(round_id, version)
        if not self.generative:
            raise TypeError(f"{self.name}: only a generative oracle has base responses")
        return self.oracle.base_responses(seed, iteration)

    def evaluate(self, round_id: int, version: int, seed: int, iteration: int,
                 indices: Sequence[int], base: Sequence[str] | None = None) -> VoteBatch:
        """Votes of these perturbation indices under the prepared round and version;
        `base`: the iteration's base responses (service oracle)."""
        self._check_prepared(round_id, version)
        started = time.perf_counter()
        indices = list(indices)
        if base is not None:
            self.oracle.use_base(seed, iteration, base)
        votes = self.source.votes(seed, iteration, indices)
        counts = self.oracle.take_counts() or None
        return VoteBatch(round_id, version, np.asarray(indices, INDEX_DTYPE).tobytes(),
                         votes.numpy().astype(VOTE_DTYPE).tobytes(),
                         time.perf_counter() - started, counts)

    def logprobs(self, round_id: int, version: int) -> np.ndarray:
        """Log-probs [S] of the round's pairs under the output layer this worker holds."""
        self._check_version(version)
        if self.prepared is None or self.prepared[0] != round_id:
            raise StaleVersionError(f"{self.name} on {self.node}: prepared round "
                                    f"{self.prepared and self.prepared[0]}, asked for {round_id}")
        return self.source.logprobs(self.weight).cpu().numpy()

    def rebuild(self, round_id: int, version: int, seed: int, iteration: int,
                kept: Sequence[tuple[int, int]], call: ShardCall, rows: range):
        """One shard's part of the accepted step: a typed call (compo.estimator SquareSums,
        Counts, Step) on rows of sum y_i z_i (computed once per round, kept until its Step)."""
        self._check_prepared(round_id, version)
        if not isinstance(call, SHARD_CALLS):
            raise TypeError(f"rebuild takes a compo.estimator shard call "
                            f"({', '.join(c.__name__ for c in SHARD_CALLS)}), not {call!r}")
        key = (round_id, seed, iteration)
        if self.shards is None or self.shards[0] != key:
            self.shards = (key, step_rows(seed, iteration, kept, self.weight, self.compo))
        result = call.on(self.shards[1], rows)
        if isinstance(result, tuple):  # (positions, values): positions as int32 if they fit
            positions, values = result
            small = self.weight.numel() <= np.iinfo(np.int32).max
            return positions.numpy().astype(np.int32 if small else np.int64), values.numpy()
        return result.numpy()

    def likelihood_oracle(self) -> LikelihoodOracle:
        """The likelihood oracle inside the oracle (it holds the loaded layer)."""
        return self.oracle.scorer

    def _check_prepared(self, round_id: int, version: int) -> None:
        self._check_version(version)
        if self.prepared != (round_id, version):
            raise StaleVersionError(f"{self.name} on {self.node}: prepared (round, version) "
                                    f"{self.prepared}, asked for {(round_id, version)}")

    def _check_version(self, version: int) -> None:
        if self.version != version:
            raise StaleVersionError(f"{self.name} on {self.node}: holds weights version "
                                    f"{self.version}, asked for {version}")
