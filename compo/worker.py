"""One device's part of a distributed run, and the wire format both sides share.

A plain class (no Ray): workers/actor.py wraps it in a Ray actor. Per iteration it gets
the pairs' token ids and the weights version to use (plus a patch that brings its output
layer to that version), computes the hidden-state cache once, then answers chunks of
perturbation indices with compact (index, vote) arrays. Requests for a round or version
it does not hold raise StaleVersionError: answers are never computed on stale weights.
With the service oracle (oracle.kind=service) the votes are the comparison service's
verdicts on responses this worker generates; one worker generates the base responses of
an iteration and the coordinator hands them to all.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from pydantic import SecretStr

from compo.config import ComPOConfig, ModelConfig, TrainConfig
from compo.data import TokenizedPair
from compo.estimator import RowShards
from compo.modeling import load_model, load_tokenizer
from compo.oracle import LikelihoodOracle
from compo.train import LocalVoteSource, VoteSource, step_rows

PairIds = tuple[list[int], list[int], list[int]]  # prompt, chosen, rejected token ids
INDEX_DTYPE = np.int32  # perturbation indices in answers (m is far below 2**31)
VOTE_DTYPE = np.int8
REBUILD_METHODS = ("square_sums", "counts", "step")  # what RowShards answers per shard


class StaleVersionError(RuntimeError):
    """A request for a round or weights version this worker does not hold."""


@dataclass
class WeightPatch:
    """Output-layer entries set to new values, taking version `base` to `version`.

    base None: a full patch, applied to the output layer as loaded (new or restarted
    workers, resumed runs). Values are the new float32 entries, so applying is exact.
    """

    version: int
    base: int | None
    indices: np.ndarray  # flat positions in W.view(-1), int32 when they fit
    values: np.ndarray  # float32

    @property
    def nbytes(self) -> int:
        return self.indices.nbytes + self.values.nbytes


class WeightVersions:
    """Coordinator side of the patch protocol: the current version and its patches."""

    def __init__(self, base: torch.Tensor):
        self.base, self.held, self.version = base, base.clone(), 0
        self.step: WeightPatch | None = None  # held version - 1 -> held version
        self.full: WeightPatch | None = None  # loaded weights -> held version

    def advance(self, weight: torch.Tensor) -> WeightPatch | None:
        """The next version's patch if `weight` moved from the held version, else None."""
        changed = (weight != self.held).view(-1).nonzero().squeeze(1)
        if changed.numel() == 0:
            return None
        values = weight.view(-1)[changed]
        self.held.view(-1)[changed] = values
        self.version += 1
        self.step = WeightPatch(self.version, self.version - 1, self._compact(changed),
                                values.cpu().numpy())
        return self.step

    def patch_for(self, version: int) -> WeightPatch | None:
        """What a worker holding `version` needs: nothing, the last step, or a full patch."""
        if version == self.version:
            return None
        if self.step is not None and version == self.step.base:
            return self.step
        if self.full is None or self.full.version != self.version:
            changed = (self.held != self.base).view(-1).nonzero().squeeze(1)
            self.full = WeightPatch(self.version, None, self._compact(changed),
                                    self.held.view(-1)[changed].cpu().numpy())
        return self.full

    def _compact(self, positions: torch.Tensor) -> np.ndarray:
        """Flat positions as int32 when the layer is small enough, else int64."""
        fits = self.held.numel() <= np.iinfo(np.int32).max
        return positions.cpu().numpy().astype(np.int32 if fits else np.int64)


class VoteBatch(NamedTuple):
    """A chunk's answer: raw bytes keep it at 5 bytes per perturbation plus a header."""

    round: int
    version: int
    indices: bytes  # INDEX_DTYPE
    votes: bytes  # VOTE_DTYPE: -1 / +1 / 0
    seconds: float
    oracle: dict | None = None  # service oracle: comparison counts of this chunk

    def index_array(self) -> np.ndarray:
        return np.frombuffer(self.indices, dtype=INDEX_DTYPE)

    def vote_array(self) -> np.ndarray:
        return np.frombuffer(self.votes, dtype=VOTE_DTYPE)


@dataclass
class Chunk:
    """Perturbation indices answered by one task; `first` is its place in the request."""

    first: int
    indices: Sequence[int]  # a range() when contiguous: a few bytes on the wire
    sent: int = 0
    done: bool = False


def make_chunks(indices: Sequence[int], size: int) -> list[Chunk]:
    """Fixed chunks of the index list, independent of the number of workers."""
    chunks = []
    for first in range(0, len(indices), size):
        part = [int(i) for i in indices[first : first + size]]
        run = range(part[0], part[-1] + 1)
        chunks.append(Chunk(first, run if part == list(run) else part))
    return chunks


def answer_matches(batch: VoteBatch, round_id: int, version: int,
                   indices: Sequence[int]) -> bool:
    """Whether an answer is for this round, this weights version and exactly these indices."""
    expected = np.asarray(indices, dtype=INDEX_DTYPE)
    return ((batch.round, batch.version) == (round_id, version)
            and np.array_equal(batch.index_array(), expected)
            and len(batch.vote_array()) == len(expected))


def pair_ids(pairs: Sequence[TokenizedPair]) -> list[PairIds]:
    """Only the token ids of pairs (what travels to workers)."""
    return [(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in pairs]


def as_pairs(ids: Sequence[PairIds]) -> list[TokenizedPair]:
    """TokenizedPairs rebuilt from token ids."""
    return [TokenizedPair(list(p), list(c), list(r), source=f"pair {i}")
            for i, (p, c, r) in enumerate(ids)]


@dataclass(frozen=True)
class ServiceSetup:
    """What a worker needs to vote with the service oracle. The token travels as a
    SecretStr (never printed); a token in the worker's own environment wins."""

    config: TrainConfig
    run_id: str
    token: SecretStr | None = None

    @classmethod
    def for_run(cls, config: TrainConfig, run_id: str) -> ServiceSetup:
        """The run's setup, with the token of this process's environment (if set)."""
        from compo.reporting import checked_run_id, service_token  # needs httpx

        token = service_token(config)
        return cls(config, checked_run_id(run_id), None if token is None else SecretStr(token))


class OracleWorker:
    """Holds the model, a float32 master output layer and its version number."""

    def __init__(self, model: ModelConfig, compo: ComPOConfig, name: str = "worker",
                 node: str = "local", service: ServiceSetup | None = None):
        started = time.perf_counter()
        self.name, self.node = name, node
        network = load_model(model)  # first: its errors say what is wrong with the path
        tokenizer = load_tokenizer(model.path)
        self.source: VoteSource = (
            service_source(network, tokenizer, service) if service is not None else
            LocalVoteSource(LikelihoodOracle(network, compo, tokenizer.pad_token_id,
                                             model.batch_size)))
        self.weight = self.source_oracle().master_weight()
        self.compo = compo
        self.version = 0  # 0: the output layer as loaded
        self.prepared: tuple[int, int] | None = None  # (round, version) prepared
        self.shards: tuple[tuple[int, int, int], RowShards] | None = None  # rebuild rows
        self.load_seconds = time.perf_counter() - started

    @property
    def generative(self) -> bool:
        return not isinstance(self.source, LocalVoteSource)

    def describe(self) -> dict:
        """Who and where this worker is, and what it holds."""
        return {"name": self.name, "node": self.node, "pid": os.getpid(),
                "device": str(self.weight.device), "version": self.version,
                "shape": list(self.weight.shape), "load_seconds": self.load_seconds}

    def apply(self, patch: WeightPatch) -> int:
        """Bring the output layer to patch.version; returns the version now held."""
        if self.version == patch.version:
            return self.version
        if patch.base is None:
            self.weight = self.source_oracle().master_weight()
        elif patch.base != self.version:
            raise StaleVersionError(f"{self.name}: holds version {self.version}, the patch "
                                    f"goes from {patch.base} to {patch.version}")
        flat = self.weight.view(-1)
        positions = torch.tensor(patch.indices, dtype=torch.int64, device=flat.device)
        flat[positions] = torch.tensor(patch.values, dtype=flat.dtype, device=flat.device)
        self.version = patch.version
        return self.version

    def prepare(self, round_id: int, version: int, pairs: Sequence[PairIds],
                patch: WeightPatch | None = None) -> tuple[int, np.ndarray]:
        """Apply `patch`, run the body once for `pairs`; (version, base log-probs [S])."""
        if patch is not None:
            self.apply(patch)
        self._check_version(version)
        base = self.source.prepare(as_pairs(pairs), self.weight)
        self.prepared = (round_id, version)
        return self.version, base.cpu().numpy()

    def base_responses(self, round_id: int, version: int, seed: int,
                       iteration: int) -> list[str]:
        """Service oracle: the iteration's base response per prompt, generated here."""
        self._check_prepared(round_id, version)
        if not self.generative:
            raise TypeError(f"{self.name}: the likelihood oracle has no base responses")
        return self.source.base_responses(seed, iteration)

    def evaluate(self, round_id: int, version: int, seed: int, iteration: int,
                 indices: Sequence[int], base: Sequence[str] | None = None) -> VoteBatch:
        """Votes of these perturbation indices under the prepared round and version;
        `base`: the iteration's base responses (service oracle)."""
        self._check_prepared(round_id, version)
        started = time.perf_counter()
        indices = list(indices)
        if base is not None:
            self.source.use_base(seed, iteration, base)
        votes = self.source.votes(seed, iteration, indices)
        counts = self.source.take_counts() if self.generative else None
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
                kept: Sequence[tuple[int, int]], method: str, rows: range, *args):
        """One shard's part of the accepted step: RowShards.<method> on rows of
        sum y_i z_i (computed once per round, then kept until its `step`)."""
        self._check_prepared(round_id, version)
        if method not in REBUILD_METHODS:
            raise ValueError(f"unknown rebuild method {method!r}; one of {REBUILD_METHODS}")
        key = (round_id, seed, iteration)
        if self.shards is None or self.shards[0] != key:
            self.shards = (key, step_rows(seed, iteration, kept, self.weight, self.compo))
        result = getattr(self.shards[1], method)(rows, *args)
        if isinstance(result, tuple):  # (positions, values): positions as int32 if they fit
            positions, values = result
            small = self.weight.numel() <= np.iinfo(np.int32).max
            return positions.numpy().astype(np.int32 if small else np.int64), values.numpy()
        return result.numpy()

    def source_oracle(self) -> LikelihoodOracle:
        """The likelihood oracle inside the vote source (it holds the loaded layer)."""
        return self.source.scorer if self.generative else self.source.oracle

    def _check_prepared(self, round_id: int, version: int) -> None:
        self._check_version(version)
        if self.prepared != (round_id, version):
            raise StaleVersionError(f"{self.name} on {self.node}: prepared (round, version) "
                                    f"{self.prepared}, asked for {(round_id, version)}")

    def _check_version(self, version: int) -> None:
        if self.version != version:
            raise StaleVersionError(f"{self.name} on {self.node}: holds weights version "
                                    f"{self.version}, asked for {version}")


def service_source(network, tokenizer, service: ServiceSetup) -> VoteSource:
    """The service oracle's vote source; the token from this process's environment first."""
    from compo.generative import ServiceVoteSource  # needs the service extra (httpx)
    from compo.reporting import service_token

    passed = service.token.get_secret_value() if service.token is not None else None
    token = service_token(service.config) or passed
    return ServiceVoteSource(network, tokenizer, service.config, service.run_id, token)
