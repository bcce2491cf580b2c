"""The wire format between the coordinator and its workers (no Ray here).

Per iteration the coordinator sends the pairs' token ids and the weights version to use
(plus a patch that brings a worker's output layer to that version); a worker answers
chunks of perturbation indices with compact (index, vote) arrays. Requests for a round or
version a worker does not hold raise StaleVersionError: answers are never computed on
stale weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from pydantic import SecretStr

from compo.config import TrainConfig
from compo.data.formats import TokenizedPair

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
        from compo.service_oracle.reporting import checked_run_id, service_token  # needs httpx

        token = service_token(config)
        return cls(config, checked_run_id(run_id), None if token is None else SecretStr(token))


