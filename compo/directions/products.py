"""Low-rank directions without a dense [V, d] block: the oracle's products and the update's sum.

Oracle: per token, h z^T = ((h B^T) A) / sqrt(r), O(r (V + d)) instead of V d; on the CPU
without a soft-cap, the exact change's sums come from one compiled pass (fused_sums).
Update: sum_i y_i z_i = A_Y^T diag(y) B_Y / sqrt(r), A_Y [P r, V] and B_Y [P r, d] the
stacked factors of the voted directions: on AMX tiles where the CPU has them (bf16
factors, float32 sums), else float32 GEMMs over fixed blocks of rows and of directions;
either way each row's bits are the same however the rows are split between processes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from compo.directions.config import DirectionsConfig
from compo.directions.low_rank import low_rank_direction, low_rank_factors
from compo.kernels import cpu
from compo.perturbation import direction

UPDATE_GROUP = 16  # directions per GEMM of the update: fixed, so never a device's choice
FACTOR_VALUES = 1 << 25  # factor values the update holds at once (any: not in the bits)


def product_blocks(hidden: torch.Tensor, keys: Sequence[int], shape: tuple[int, int],
                   rank: int, budget: int) -> Iterator[tuple[slice, torch.Tensor]]:
    """(output rows, h z^T [P, N, rows] float32) covering the V rows, about `budget`
    products a block; hidden [N, d]."""
    rows_total = shape[0]
    a, b = low_rank_factors(keys, shape, rank, hidden.device)  # [P, r, V], [P, r, d]
    projected = hidden.float() @ b.transpose(1, 2) / math.sqrt(rank)  # h B^T / sqrt(r): [P, N, r]
    per_block = max(1, budget // max(1, len(keys) * hidden.shape[0]))
    for start in range(0, rows_total, per_block):
        rows = slice(start, min(rows_total, start + per_block))
        yield rows, torch.bmm(projected, a[:, :, rows])  # [P, N, r] x [P, r, rows]


def low_rank_group(count: int, rank: int, shape: tuple[int, int], budget: int) -> int:
    """Directions per oracle call: as many as `budget` factor values hold, at least
    UPDATE_GROUP (the compiled pass reads probs once per call: one direction a call would
    make it memory-bound), at most `count`."""
    return max(1, min(count, max(UPDATE_GROUP, budget // (rank * sum(shape)))))


def fused_applies(probs: torch.Tensor, base_logits: torch.Tensor | None) -> bool:
    """Whether fused_sums serves these votes: CPU, no soft-cap, the kernel built here."""
    return probs.device.type == "cpu" and base_logits is None and cpu.available()


def fused_sums(hidden: torch.Tensor, probs: torch.Tensor, targets: torch.Tensor,
               keys: Sequence[int], rank: int, step: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per direction and token [P, N]: the target's logit change step * h z^T (float32)
    and sum_v p_v expm1(change_v) (float64), in one pass over probs [N, V], never [P, N, V]."""
    a, b = low_rank_factors(keys, (probs.shape[1], hidden.shape[1]), rank)
    u = hidden.float() @ b.transpose(1, 2) * (step / math.sqrt(rank))  # [P, N, r]
    return cpu.low_rank_sums(u, a, probs, targets)


def update_rows(keys: Sequence[int], votes: np.ndarray, shape: tuple[int, int], rows: range,
                rank: int, block_rows: int, device="cpu") -> torch.Tensor:
    """Rows `rows` of sum_i y_i z_i [len(rows), d] float32 for low-rank directions: on
    AMX tiles where the CPU has them (amx_rows), else float32 GEMMs (gemm_rows)."""
    if torch.device(device).type == "cpu" and cpu.amx_ready():
        return amx_rows(keys, votes, shape, rows, rank)
    return gemm_rows(keys, votes, shape, rows, rank, block_rows, device)


def amx_rows(keys: Sequence[int], votes: np.ndarray, shape: tuple[int, int], rows: range,
             rank: int) -> torch.Tensor:
    """update_rows on AMX tiles: bf16 factors (exact), float32 sums in an order fixed by the
    direction index alone (each group of UPDATE_GROUP padded to whole tile products), so a
    row's bits depend neither on the split of the rows nor on the pass size."""
    total = torch.zeros(len(rows), shape[1], dtype=torch.float32)
    per_pass = pass_size(rank, shape)
    for start in range(0, len(keys), per_pass):
        a, b = [], []
        for s in range(start, min(len(keys), start + per_pass), UPDATE_GROUP):
            stacked, weighted = weighted_factors(keys[s : s + UPDATE_GROUP],
                                                 votes[s : s + UPDATE_GROUP], shape, rank,
                                                 "cpu", torch.bfloat16)
            pad = -stacked.shape[0] % cpu.AMX_KSTEP  # zero factors add nothing
            a.append(torch.nn.functional.pad(stacked, (0, 0, 0, pad)))
            b.append(torch.nn.functional.pad(weighted, (0, 0, 0, pad)))
        cpu.amx_add_products(torch.cat(a), cpu.amx_strips(torch.cat(b)), rows.start, total)
    return total / math.sqrt(rank)


def pass_size(rank: int, shape: tuple[int, int]) -> int:
    """Directions whose factors the update holds at once: whole groups, about
    FACTOR_VALUES values."""
    return UPDATE_GROUP * max(1, FACTOR_VALUES // (UPDATE_GROUP * rank * sum(shape)))


def gemm_rows(keys: Sequence[int], votes: np.ndarray, shape: tuple[int, int], rows: range,
              rank: int, block_rows: int, device="cpu") -> torch.Tensor:
    """update_rows as float32 GEMMs (torch).

    One GEMM per block of block_rows rows counted from row 0 (never from the shard's
    start) and per UPDATE_GROUP directions, added into the block in index order: every
    row's value is the same sum of the same GEMMs' outputs for any split of the rows.
    Blocks run inside passes over as many groups as FACTOR_VALUES hold, so a block's sum
    stays in cache across groups (the pass size does not change the bits).
    """
    first = rows.start - rows.start % block_rows
    last = min(shape[0], -(-rows.stop // block_rows) * block_rows)  # whole blocks
    total = torch.zeros(last - first, shape[1], dtype=torch.float32, device=device)
    per_pass = pass_size(rank, shape)
    for start in range(0, len(keys), per_pass):
        groups = [weighted_factors(keys[s : s + UPDATE_GROUP], votes[s : s + UPDATE_GROUP],
                                   shape, rank, device)
                  for s in range(start, min(len(keys), start + per_pass), UPDATE_GROUP)]
        for block in range(first, last, block_rows):
            end = min(shape[0], block + block_rows)
            out = total[block - first : end - first]
            for stacked, weighted in groups:
                out.addmm_(stacked[:, block:end].T, weighted)  # [block rows, d]
    return total[rows.start - first : rows.stop - first] / math.sqrt(rank)


def weighted_factors(keys: Sequence[int], votes: np.ndarray, shape: tuple[int, int],
                     rank: int, device, dtype: torch.dtype = torch.float32
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """A_Y [P r, V] and diag(y) B_Y [P r, d] of one group (exact in bf16 too: y is +-1)."""
    a, b = low_rank_factors(keys, shape, rank, device, dtype)
    y = torch.as_tensor(votes, dtype=dtype, device=device)  # [P], +-1
    return a.reshape(-1, shape[0]), (b * y[:, None, None]).reshape(-1, shape[1])


def dense_direction(directions: DirectionsConfig, key: int, shape: tuple[int, int]
                    ) -> torch.Tensor:
    """The whole [V, d] direction of `key` in float64, of either family (references)."""
    if directions.kind == "low_rank":
        return low_rank_direction(key, shape, directions.rank)
    return direction(key, shape).double()
