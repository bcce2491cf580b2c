"""The wire format between the coordinator and its workers (no Ray here).

Per iteration the coordinator sends the pairs' token ids and the weights version to use
(plus what brings a worker's output layer to that version: the step patches it missed or
a dense snapshot, whichever is smaller); a worker answers
chunks of perturbation indices with compact (index, vote) arrays. Requests for a round or
version a worker does not hold raise StaleVersionError: answers are never computed on
stale weights.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from compo.data.formats import TokenizedPair

PairIds = tuple[list[int], list[int], list[int]]  # prompt, chosen, rejected token ids
INDEX_DTYPE = np.int32  # perturbation indices in answers (m is far below 2**31)
VOTE_DTYPE = np.int8
NUMBER_BYTES = 8  # a number on the wire
REBUILD_METHODS = ("square_sums", "counts", "step")  # what RowShards answers per shard


class StaleVersionError(RuntimeError):
    """A request for a round or weights version this worker does not hold."""


@dataclass
class WeightPatch:
    """Output-layer entries set to new values, taking version `base` to `version`.
    Values are the new float32 entries, so applying is exact."""

    version: int
    base: int
    indices: np.ndarray  # flat positions in W.view(-1), int32 when they fit
    values: np.ndarray  # float32

    @property
    def nbytes(self) -> int:
        return self.indices.nbytes + self.values.nbytes


@dataclass
class WeightChain:
    """Consecutive step patches: the chain's first base to its last version."""

    patches: tuple[WeightPatch, ...]

    @property
    def version(self) -> int:
        return self.patches[-1].version

    @property
    def base(self) -> int:
        return self.patches[0].base

    @property
    def nbytes(self) -> int:
        return sum(patch.nbytes for patch in self.patches)


@dataclass
class WeightSnapshot:
    """The whole output layer at `version` (float32 [R, d]): for workers too far behind,
    of unknown state, or new; whatever they held before."""

    version: int
    values: np.ndarray
    base = None  # from anything

    @property
    def nbytes(self) -> int:
        return self.values.nbytes


WeightUpdate = WeightPatch | WeightChain | WeightSnapshot
CHAIN_FRACTION = 4  # step patches kept: at most 1/CHAIN_FRACTION of the dense layer's bytes


class WeightVersions:
    """Coordinator side of the patch protocol: versions of the run's one float32 master.

    Per version it costs O(changed entries): `watch` names the positions the next step may
    change (the accepted step's kept entries), `advance` compares only those. Recent step
    patches are kept while they total at most `chain_bytes`; a lagging worker gets them
    or a dense snapshot (the master itself, no copy), whichever is fewer bytes.
    """

    def __init__(self, base: torch.Tensor, chain_bytes: int | None = None):
        self.base: torch.Tensor | None = base  # what workers loaded, until the first advance
        self.current: torch.Tensor | None = None  # the latest version's tensor (no copy)
        self.version, self.dense_bytes = 0, base.numel() * 4
        self.chain_bytes = self.dense_bytes // CHAIN_FRACTION if chain_bytes is None else \
            chain_bytes
        self.chain: deque[WeightPatch] = deque()
        self.watched = torch.zeros(0, dtype=torch.int64)  # positions a step may change
        self.published = torch.zeros(0, dtype=torch.float32)  # their values at `version`
        self.small = base.numel() <= np.iinfo(np.int32).max

    def watch(self, positions: torch.Tensor) -> None:
        """Positions the next versions may change (read on the version published now)."""
        positions = positions.to(torch.int64).cpu()
        if self.current is None:
            raise RuntimeError("watch before the first advance: publish the weights first")
        pending = self._values(self.current).view(torch.int32) != \
            self.published.view(torch.int32)  # changed, not yet published: keep them
        fresh = self._values(self.current, positions)
        self.watched = torch.cat([self.watched[pending], positions])
        self.published = torch.cat([self.published[pending], fresh])

    def advance(self, weight: torch.Tensor) -> WeightUpdate | None:
        """The next version's update if `weight` moved at the watched positions, else None.
        The first call adopts `weight` as the master: a resumed one is a dense version 1."""
        if self.current is None:
            same = weight is self.base or torch.equal(weight.view(torch.int32),
                                                      self.base.view(torch.int32))
            self.current, self.base = weight, None  # one full compare per run, then no base
            if same:
                return None
            self.version = 1
            return self.snapshot()
        self.current = weight
        values = self._values(weight)
        changed = values.view(torch.int32) != self.published.view(torch.int32)
        if not bool(changed.any()):
            return None
        self.published = values
        self.version += 1
        if not bool(changed.all()):  # usually every kept entry changed: no copies then
            values, positions = values[changed], self.watched[changed]
        else:
            positions = self.watched
        patch = WeightPatch(self.version, self.version - 1, self._compact(positions),
                            values.numpy())
        self.chain.append(patch)
        while len(self.chain) > 1 and sum(p.nbytes for p in self.chain) > self.chain_bytes:
            self.chain.popleft()
        return patch

    def patch_for(self, version: int) -> WeightUpdate | None:
        """What a worker holding `version` needs: nothing, the step patches since then, or
        a dense snapshot, whichever is fewer bytes (a snapshot when the chain is too short)."""
        if version == self.version:
            return None
        first = self.version - len(self.chain)  # the oldest kept patch's base
        if 0 <= first <= version < self.version:
            chain = WeightChain(tuple(self.chain)[version - first:])
            if chain.nbytes < self.dense_bytes:
                return chain
        return self.snapshot()

    def snapshot(self) -> WeightSnapshot:
        """The current version as a whole (a view of the master: no copy on the CPU)."""
        return WeightSnapshot(self.version, self.current.detach().float().cpu().numpy())

    def _values(self, weight: torch.Tensor, positions: torch.Tensor | None = None):
        """The float32 values at `positions` (the watched ones) in `weight`, on the CPU."""
        positions = self.watched if positions is None else positions
        return torch.index_select(weight.view(-1), 0, positions.to(weight.device)).float().cpu()

    def _compact(self, positions: torch.Tensor) -> np.ndarray:
        """Flat positions as int32 when the layer is small enough, else int64."""
        return positions.numpy().astype(np.int32 if self.small else np.int64)


def apply_update(weight: torch.Tensor, version: int, update: WeightUpdate,
                 holder: str = "worker") -> int:
    """Bring `weight` (at `version`) to update.version in place: a dense snapshot, or
    step patches from `version` on; returns the version it holds now."""
    if version == update.version:
        return version
    if isinstance(update, WeightSnapshot):
        with warnings.catch_warnings():  # Ray hands out read-only arrays: only read here
            warnings.simplefilter("ignore", UserWarning)
            values = torch.from_numpy(update.values)
        weight.copy_(values.view(weight.shape))
        return update.version
    patches = update.patches if isinstance(update, WeightChain) else (update,)
    start = next((i for i, p in enumerate(patches) if p.base == version), None)
    if start is None:
        raise StaleVersionError(f"{holder}: holds version {version}, the patches go from "
                                f"{update.base} to {update.version}")
    flat = weight.view(-1)
    for patch in patches[start:]:
        positions = torch.tensor(patch.indices, dtype=torch.int64, device=flat.device)
        flat[positions] = torch.tensor(patch.values, dtype=flat.dtype, device=flat.device)
    return update.version


class VoteBatch(NamedTuple):
    """A chunk's answer: raw bytes keep it at 5 bytes per perturbation plus a header."""

    round: int
    version: int
    indices: bytes  # INDEX_DTYPE
    votes: bytes  # VOTE_DTYPE: -1 / +1 / 0
    seconds: float
    oracle: dict | None = None  # service oracle: comparison counts of this chunk

    @property
    def nbytes(self) -> int:
        """Bytes on the wire: the arrays, three numbers, the counts' keys and values."""
        counts = sum(len(k) + NUMBER_BYTES for k in self.oracle) if self.oracle else 0
        return len(self.indices) + len(self.votes) + 3 * NUMBER_BYTES + counts

    def index_array(self) -> np.ndarray:
        return np.frombuffer(self.indices, dtype=INDEX_DTYPE)

    def vote_array(self) -> np.ndarray:
        return np.frombuffer(self.votes, dtype=VOTE_DTYPE)


def answer_matches(batch: VoteBatch, round_id: int, version: int,
                   indices: Sequence[int]) -> bool:
    """Whether an answer is for this round, this weights version and exactly these indices."""
    if (batch.round, batch.version) != (round_id, version):
        return False
    expected = (np.arange(indices.start, indices.stop, indices.step, dtype=INDEX_DTYPE)
                if isinstance(indices, range) else np.asarray(indices, dtype=INDEX_DTYPE))
    got = batch.index_array()
    return (len(got) == len(expected) == len(batch.vote_array())
            and bool((got == expected).all()))


def pair_ids(pairs: Sequence[TokenizedPair]) -> list[PairIds]:
    """Only the token ids of pairs (what travels to workers)."""
    return [(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in pairs]


def as_pairs(ids: Sequence[PairIds]) -> list[TokenizedPair]:
    """TokenizedPairs rebuilt from token ids."""
    return [TokenizedPair(list(p), list(c), list(r), source=f"pair {i}")
            for i, (p, c, r) in enumerate(ids)]



