"""Algorithm 2's update as pure functions over tensors.

Votes follow Definition 3.1: y_i = -1 when the perturbed weights are better, +1 when
not, 0 for an abstention (a failed comparison: never counted as either side).
  g      = sum_i y_i z_i / || sum_i y_i z_i ||        (unit norm)
  g_clip = g with entries |g_j| < threshold zeroed    (sparse)
  ratio  = n_minus / m                                 (m counts non-abstained votes)
  W     <- W - step_scale * ratio * g_clip   if ratio > accept_ratio, else skip
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from compo.config import ClipConfig, ComPOConfig
from compo.perturbation import direction_chunks, direction_key, plan_blocks


@dataclass
class SparseUpdate:
    """Flat indices and values of an output-layer change (added to W)."""

    indices: torch.Tensor  # [k] int64, positions in W.view(-1)
    values: torch.Tensor  # [k] float32
    shape: tuple[int, int]

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


def count_votes(votes: torch.Tensor) -> tuple[int, int, int]:
    """(n_minus, m, abstained) from a vote vector of -1 / +1 / 0."""
    n_minus = int((votes == -1).sum())
    abstained = int((votes == 0).sum())
    return n_minus, votes.numel() - abstained, abstained


def vote_weighted_sum(seed: int, iteration: int, indices: torch.Tensor, votes: torch.Tensor,
                      shape: tuple[int, int], block_elements: int | None, device="cpu",
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """sum_i y_i z_i [V, d] float32, rebuilt from (index, vote) in index order.

    The grouping depends only on the sorted indices and block_elements, so the sum is
    bit-identical however the votes were gathered.
    """
    order = torch.argsort(indices)
    kept = [(int(i), int(v)) for i, v in zip(indices[order], votes[order], strict=True) if v]
    per_group, chunk_rows = plan_blocks(len(kept), shape, block_elements, device)
    total = torch.zeros(shape, dtype=torch.float32, device=device)
    for start in range(0, len(kept), per_group):
        group = kept[start : start + per_group]
        keys = [direction_key(seed, iteration, index) for index, _ in group]
        signs = torch.tensor([vote for _, vote in group], dtype=torch.float32, device=device)
        for rows, chunk in direction_chunks(keys, shape, chunk_rows, device, dtype):
            total[rows] += torch.einsum("p,prd->rd", signs, chunk.float())
    return total


def normalise(total: torch.Tensor) -> torch.Tensor:
    """Unit-norm copy (norm taken in float64); all zeros stay zeros."""
    norm = torch.linalg.vector_norm(total, dtype=torch.float64)
    return total / norm.to(total.dtype) if norm > 0 else torch.zeros_like(total)


def clip_threshold(unit: torch.Tensor, clip: ClipConfig) -> float:
    """Magnitude below which entries are zeroed, per the clip mode."""
    if clip.mode == "raw":
        return clip.value
    if clip.mode == "sigma":  # a unit vector's entries are ~1/sqrt(numel) in size
        return clip.value / math.sqrt(unit.numel())
    keep = max(1, math.ceil(clip.value * unit.numel()))
    return float(unit.abs().view(-1).topk(keep, sorted=False).values.min())


def clip_small(unit: torch.Tensor, threshold: float) -> torch.Tensor:
    """Zero every entry with |g_j| < threshold."""
    return torch.where(unit.abs() >= threshold, unit, torch.zeros_like(unit))


def accept(n_minus: int, m: int, accept_ratio: float) -> bool:
    """Update only when more than a fraction `accept_ratio` of directions improved."""
    return m > 0 and n_minus / m > accept_ratio


def to_sparse(dense: torch.Tensor) -> SparseUpdate:
    """Non-zero entries of a [V, d] tensor as a SparseUpdate."""
    flat = dense.reshape(-1)
    indices = flat.nonzero().squeeze(1)
    return SparseUpdate(indices.cpu(), flat[indices].float().cpu(), tuple(dense.shape))


def decide_update(total: torch.Tensor | None, votes: torch.Tensor,
                  config: ComPOConfig) -> UpdateDecision:
    """From the votes and sum y_i z_i: accept or skip, and the sparse step if accepted.

    `total` may be None when the votes alone already mean a skip (it is not needed then).
    """
    n_minus, m, abstained = count_votes(votes)
    ratio = n_minus / m if m else 0.0
    if not accept(n_minus, m, config.accept_ratio):
        return UpdateDecision(n_minus, m, abstained, ratio, False, 0.0, 0.0, 0.0, None)
    if total is None:
        raise ValueError("an accepted update needs sum y_i z_i (total)")
    unit = normalise(total)
    clipped = clip_small(unit, clip_threshold(unit, config.clip))
    step = config.step_scale * ratio
    update = to_sparse(clipped * -step)
    kept = update.indices.numel() / clipped.numel()
    norm = float(torch.linalg.vector_norm(update.values, dtype=torch.float64))
    return UpdateDecision(n_minus, m, abstained, ratio, True, step, kept, norm, update)
