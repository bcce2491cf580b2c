"""Pair re-selection under the current policy, as the public reference code does it.

github PeterLauLukChen/ComparisonPO, compute_gradients.py: `noisy_pair_select` scores the
pairs from `st_idx` on with the current model and returns the first with `chosen_logps >
rejected_logps and |margin| < noise_threshold and |margin| != 0`, plus `prompt_index + 1`
as the next offset; `find_noisy_pairs` repeats it per pair of the batch and, at the end of
the data, starts again from index 0 once ("No more noisy pairs found. Resetting index.").
Here: the scan walks the pairs cyclically from the offset, at most one full turn per pair
picked; the margins come from `score` (under the current weights), `scan_batch` pairs per
call, so a run is a deterministic function of (offset, weights) and resumes exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from compo.config import ReselectConfig
from compo.data.split import noisy_mask

# score(pair indices) -> margins [len(indices)]: log pi(y+) - log pi(y-) under current weights
Scorer = Callable[[Sequence[int]], torch.Tensor]


@dataclass
class Selection:
    """The pairs picked for one iteration and where the next scan starts."""

    indices: list[int]
    offset: int  # the running offset after this selection (mod the number of pairs)
    scanned: int  # candidate positions looked at


def select_noisy(score: Scorer, num_pairs: int, offset: int, needed: int,
                 config: ReselectConfig) -> Selection | None:
    """The next `needed` noisy pairs from `offset` (cyclic); None when a full turn finds none."""
    noisy: dict[int, bool] = {}  # position -> qualifies, scored once per selection
    picked, position, scanned = [], offset % num_pairs, 0
    for _ in range(needed):
        for _ in range(num_pairs):
            if position not in noisy:
                chunk = [(position + i) % num_pairs
                         for i in range(min(config.scan_batch, num_pairs))]
                flags = noisy_mask(score(chunk), config.delta, config.rule).tolist()
                for candidate, flag in zip(chunk, flags, strict=True):
                    noisy.setdefault(candidate, flag)
            found, position, scanned = noisy[position], (position + 1) % num_pairs, scanned + 1
            if found:
                picked.append((position - 1) % num_pairs)
                break
        else:
            return None
    return Selection(picked, position, scanned)
