"""Low-rank directions z = sum_k a_k b_k^T / sqrt(r) from the counter-based generator.

Definition. For a direction with key k = direction_key(seed, iteration, index) and a
[V, d] target, the first r * (V + d) elements of the key's stream (compo/perturbation.py)
are read row-major as A [r, V] followed by B [r, d]; z = A^T B / sqrt(r). A pure function of
(seed, iteration, index) like the Gaussian, bit-identical on every device; each entry of z
has mean 0 and variance 1, and distinct entries are uncorrelated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from compo.perturbation import normals


def low_rank_factors(keys: Sequence[int], shape: tuple[int, int], rank: int, device="cpu",
                     dtype: torch.dtype = torch.float32
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The factors of each key's direction: A [P, r, V] and B [P, r, d] (bf16-exact values)."""
    rows, cols = shape
    values = normals(keys, 0, rank * (rows + cols), device, dtype)  # [P, r (V + d)]
    a = values[:, : rank * rows].view(len(keys), rank, rows)  # [P, r, V]
    b = values[:, rank * rows:].view(len(keys), rank, cols)  # [P, r, d]
    return a, b


def low_rank_direction(key: int, shape: tuple[int, int], rank: int, device="cpu",
                       dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """One whole [V, d] direction A^T B / sqrt(r) (tests and references; float64 default)."""
    a, b = low_rank_factors([key], shape, rank, device, dtype)
    return a[0].T @ b[0] / math.sqrt(rank)  # [V, d]
