"""Algorithm 2's update as pure functions over tensors.

Votes follow Definition 3.1: y_i = -1 when the perturbed weights are better, +1 when
not, 0 for an abstention (a failed comparison: never counted as either side).
  g      = sum_i y_i z_i / || sum_i y_i z_i ||        (unit norm)
  g_clip = g with entries |g_j| < threshold zeroed    (sparse)
  ratio  = n_minus / m                                 (m counts non-abstained votes)
  W     <- W - step_scale * ratio * g_clip   if ratio > accept_ratio, else skip

The training loop works on row shards of sum_i y_i z_i (RowShards, decide_from_shards), in
one piece here or one shard per Ray worker, with the same bits either way. The whole-tensor
forms (vote_weighted_sum, normalise, clip_threshold, clip_small, decide_update) state the
same math plainly; the tests check the theory and the shards against them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from compo.config import ClipConfig, ComPOConfig
from compo.directions import DirectionsConfig
from compo.directions.products import update_rows
from compo.perturbation import direction_key, direction_rows, plan_blocks

# Rows per partial sum of squares: the norm adds these parts in row order, so any split of
# the rows into shards of whole blocks gives the same bits.
NORM_BLOCK_ROWS = 64
FLOAT32_INF_BITS = 0x7F800000  # +inf as int32: above every finite magnitude
SEARCH_POINTS = 64  # thresholds tried per round of the fraction-mode search (~6 rounds)
UNIT_STEP = -1.0  # step_entries makes -step * g_j: with -1 the entries g_j themselves, exactly


@dataclass
class SparseUpdate:
    """Flat indices and values of an output-layer change (added to W)."""

    indices: torch.Tensor  # [k] int64, positions in W.view(-1)
    values: torch.Tensor  # [k] float32
    shape: tuple[int, int]

    def scaled(self, factor: float) -> SparseUpdate:
        """The same entries times `factor` (float32, as the step has always been made)."""
        return SparseUpdate(self.indices, self.values * factor, self.shape)

    def apply_(self, weight: torch.Tensor) -> torch.Tensor:
        """Add the update into `weight` in place (float32 master copy)."""
        weight.view(-1).index_add_(0, self.indices.to(weight.device),
                                   self.values.to(weight.device, weight.dtype))
        return weight

    @property
    def nbytes(self) -> int:
        return self.indices.numel() * 8 + self.values.numel() * 4


@dataclass
class UpdateDecision:
    """Everything decided from one iteration's votes."""

    n_minus: int
    m: int
    abstained: int
    ratio: float
    accepted: bool
    step: float
    kept_fraction: float
    update_norm: float
    update: SparseUpdate | None
    direction: SparseUpdate | None = None  # g_clip itself (unit norm before clipping)


def count_votes(votes: torch.Tensor) -> tuple[int, int, int]:
    """(n_minus, m, abstained) from a vote vector of -1 / +1 / 0."""
    n_minus = int((votes == -1).sum())
    abstained = int((votes == 0).sum())
    return n_minus, votes.numel() - abstained, abstained


def kept_votes(indices: torch.Tensor, votes: torch.Tensor) -> np.ndarray:
    """[K, 2] int64 (index, vote) sorted by index, abstentions (0) dropped: what the
    rebuild needs (an array: 16 bytes a vote on the wire, no per-vote Python work)."""
    index, vote = indices.long().numpy(), votes.long().numpy()
    order = np.argsort(index, kind="stable")
    pairs = np.stack([index[order], vote[order]], axis=1)
    return pairs[pairs[:, 1] != 0]


def vote_weighted_rows(seed: int, iteration: int, kept: np.ndarray | Sequence[tuple[int, int]],
                       shape: tuple[int, int], rows: range, block_elements: int | None,
                       device="cpu", dtype: torch.dtype = torch.float32,
                       directions: DirectionsConfig | None = None) -> torch.Tensor:
    """Rows `rows` of sum_i y_i z_i [len(rows), d] float32, from kept_votes.

    Directions are added one at a time in index order, so every entry is the same sum
    however the rows are split between processes, and however the votes were gathered.
    Low-rank directions: GEMMs over fixed blocks (compo/directions/products.py).
    """
    kept = np.asarray(kept, dtype=np.int64).reshape(-1, 2)  # (index, vote) pairs
    if directions is not None and directions.kind == "low_rank":
        keys = [direction_key(seed, iteration, int(index)) for index in kept[:, 0]]
        return update_rows(keys, kept[:, 1], shape, rows, directions.rank, NORM_BLOCK_ROWS,
                           device)
    per_group, chunk_rows = plan_blocks(len(kept), shape, block_elements, device)
    total = torch.zeros(len(rows), shape[1], dtype=torch.float32, device=device)
    for start in range(0, len(kept), per_group):
        group = kept[start : start + per_group].tolist()
        keys = [direction_key(seed, iteration, index) for index, _ in group]
        for first in range(rows.start, rows.stop, chunk_rows):
            last = min(rows.stop, first + chunk_rows)
            chunk = direction_rows(keys, first, last, shape[1], device, dtype)  # [P, r, d]
            part = total[first - rows.start : last - rows.start]
            for (_, vote), values in zip(group, chunk, strict=True):
                part.add_(values.float(), alpha=vote)  # vote is +-1: exact
    return total


def vote_weighted_sum(seed: int, iteration: int, indices: torch.Tensor, votes: torch.Tensor,
                      shape: tuple[int, int], block_elements: int | None, device="cpu",
                      dtype: torch.dtype = torch.float32,
                      directions: DirectionsConfig | None = None) -> torch.Tensor:
    """sum_i y_i z_i [V, d] float32, rebuilt from (index, vote) pairs in index order."""
    return vote_weighted_rows(seed, iteration, kept_votes(indices, votes), shape,
                              range(shape[0]), block_elements, device, dtype, directions)


def block_square_sums(rows: torch.Tensor) -> torch.Tensor:
    """Float64 sum of squares of each NORM_BLOCK_ROWS block of rows (the norm's parts)."""
    return torch.stack([block.double().square().sum() for block in rows.split(NORM_BLOCK_ROWS)])


def norm_from_sums(square_sums: torch.Tensor) -> float:
    """The norm from every block's sum of squares, added in row order."""
    return float(square_sums.double().cpu().sum().sqrt())


def unit_rows(rows: torch.Tensor, norm: float) -> torch.Tensor:
    """Rows divided by the whole vector's norm (float32); all zeros when the norm is 0."""
    if norm == 0:
        return torch.zeros_like(rows)
    return rows / torch.tensor(norm, dtype=torch.float64).to(rows.dtype)


def normalise(total: torch.Tensor) -> torch.Tensor:
    """Unit-norm copy (norm taken in float64, by row blocks); all zeros stay zeros."""
    return unit_rows(total, norm_from_sums(block_square_sums(total)))


def counts_at_least(unit: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """How many |entries| are >= each of the sorted thresholds: int64 [T], one pass."""
    thresholds = thresholds.to(unit.device, unit.dtype)
    below = torch.searchsorted(thresholds, unit.abs().reshape(-1), right=True)  # t <= |u|
    counts = torch.bincount(below, minlength=len(thresholds) + 1)[1:]
    return counts.flip(0).cumsum(0).flip(0).cpu()


def fraction_threshold(count: Callable[[torch.Tensor], torch.Tensor], numel: int,
                       fraction: float) -> float:
    """The k-th largest |entry| (k = ceil(fraction * numel)), found exactly by searching
    float32 bit patterns with `count(thresholds) -> counts_at_least` of all shards."""
    keep = max(1, math.ceil(fraction * numel))
    low, high = 0, FLOAT32_INF_BITS  # count(>= low) >= keep > count(>= high)
    while high - low > 1:
        step = max(1, (high - low) // SEARCH_POINTS)
        patterns = torch.arange(low, high, step, dtype=torch.int32)
        counts = count(patterns.view(torch.float32))
        above = int((counts >= keep).sum())  # counts fall as the thresholds rise
        low = int(patterns[above - 1])
        high = int(patterns[above]) if above < len(patterns) else high
    return float(torch.tensor(low, dtype=torch.int32).view(torch.float32))


def fixed_threshold(clip: ClipConfig, numel: int) -> float:
    """The raw or sigma threshold (fraction mode depends on the entries)."""
    if clip.mode == "raw":
        return clip.value
    if clip.mode == "sigma":  # a unit vector's entries are ~1/sqrt(numel) in size
        return clip.value / math.sqrt(numel)
    raise ValueError("clip mode 'fraction' has no fixed threshold: use fraction_threshold")


def clip_threshold(unit: torch.Tensor, clip: ClipConfig) -> float:
    """Magnitude below which entries of a whole unit vector are zeroed."""
    if clip.mode == "fraction":
        return fraction_threshold(lambda t: counts_at_least(unit, t), unit.numel(), clip.value)
    return fixed_threshold(clip, unit.numel())


def clip_small(unit: torch.Tensor, threshold: float) -> torch.Tensor:
    """Zero every entry with |g_j| < threshold."""
    return torch.where(unit.abs() >= threshold, unit, torch.zeros_like(unit))


def step_entries(unit: torch.Tensor, threshold: float, step: float,
                 first: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat positions (offset by `first`) and values -step * g_j of the kept entries."""
    flat = unit.reshape(-1)
    positions = (flat.abs() >= threshold).nonzero().squeeze(1)
    return (positions + first).cpu(), (flat[positions] * -step).float().cpu()


def accept(n_minus: int, m: int, accept_ratio: float) -> bool:
    """Update only when more than a fraction `accept_ratio` of directions improved."""
    return m > 0 and n_minus / m > accept_ratio


def accepts(n_minus: int, m: int, config: ComPOConfig) -> bool:
    """The configured rule: strict (the paper), or at_least a count (the reference code,
    compute_gradients.py: `flag = total_count_negative < negone_num_threshold`, 330)."""
    if config.accept_rule == "at_least":
        return m > 0 and n_minus >= config.accept_count
    return accept(n_minus, m, config.accept_ratio)


def decide_update(total: torch.Tensor | None, votes: torch.Tensor,
                  config: ComPOConfig) -> UpdateDecision:
    """From the votes and sum y_i z_i: accept or skip, and the sparse step if accepted.

    `total` may be None when the votes alone already mean a skip (it is not needed then).
    """
    if total is None:
        return decide_from_shards(votes, config, (1, 1), [], None)
    shard = RowShards(lambda rows: total[rows.start : rows.stop])
    return decide_from_shards(votes, config, tuple(total.shape), [range(total.shape[0])],
                              shard.run)


class RowShards:
    """Rows of sum_i y_i z_i kept between the calls of one decision: the shards a worker
    computes, or all rows in one process. `compute(rows)` makes them."""

    def __init__(self, compute: Callable[[range], torch.Tensor]):
        self.compute = compute
        self.held: dict[range, torch.Tensor] = {}

    def rows(self, rows: range) -> torch.Tensor:
        if rows not in self.held:
            self.held[rows] = self.compute(rows)
        return self.held[rows]

    def square_sums(self, rows: range) -> torch.Tensor:
        return block_square_sums(self.rows(rows)).cpu()

    def counts(self, rows: range, norm: float, thresholds: torch.Tensor) -> torch.Tensor:
        return counts_at_least(unit_rows(self.rows(rows), norm), thresholds)

    def step(self, rows: range, norm: float, threshold: float, step: float):
        """The shard's part of the update; its rows are dropped afterwards."""
        held = self.rows(rows)
        del self.held[rows]
        return step_entries(unit_rows(held, norm), threshold, step, rows.start * held.shape[1])

    def run(self, method: str, shards: Sequence[range], *args) -> list:
        """`method` on every shard, in shard order (what a pool of workers does too)."""
        return [getattr(self, method)(rows, *args) for rows in shards]


# run(method, shards, *args) -> [RowShards.<method>(rows, *args) for each shard]
ShardRunner = Callable[..., list]


def plan_shards(rows: int, workers: int) -> list[range]:
    """Contiguous row ranges of whole norm blocks, as even as possible, one per worker
    (fewer when there are fewer blocks)."""
    blocks = math.ceil(rows / NORM_BLOCK_ROWS)
    count = max(1, min(workers, blocks))
    edges = [min(rows, (blocks * i // count) * NORM_BLOCK_ROWS) for i in range(count + 1)]
    return [range(a, b) for a, b in zip(edges, edges[1:], strict=False)]


def decide_from_shards(votes: torch.Tensor, config: ComPOConfig, shape: tuple[int, int],
                       shards: Sequence[range], run: ShardRunner | None) -> UpdateDecision:
    """Accept or skip from the votes; if accepted, the sparse step from row shards of
    sum y_i z_i: their block norms, the clip threshold, then each shard's kept entries."""
    n_minus, m, abstained = count_votes(votes)
    ratio = n_minus / m if m else 0.0
    if not accepts(n_minus, m, config):
        return UpdateDecision(n_minus, m, abstained, ratio, False, 0.0, 0.0, 0.0, None)
    if run is None:
        raise ValueError("an accepted update needs sum y_i z_i (total)")
    norm = norm_from_sums(torch.cat(run("square_sums", shards)))
    numel = shape[0] * shape[1]
    if config.clip.mode == "fraction":
        threshold = fraction_threshold(
            lambda t: torch.stack(run("counts", shards, norm, t)).sum(0), numel,
            config.clip.value)
    else:
        threshold = fixed_threshold(config.clip, numel)
    step = config.step_scale * ratio
    parts = run("step", shards, norm, threshold, UNIT_STEP)
    direction = SparseUpdate(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                             shape)
    update = direction.scaled(-step)  # the same float32 product -step * g_j as ever
    kept = update.indices.numel() / numel
    size = float(torch.linalg.vector_norm(update.values, dtype=torch.float64))
    return UpdateDecision(n_minus, m, abstained, ratio, True, step, kept, size, update,
                          direction)
