"""Pair re-selection as the reference code does it: running offset, wrap once, none left."""

import torch

from compo.config import ReselectConfig
from compo.data.reselect import select_noisy

MARGINS = [5.0, 0.5, -0.5, 9.0, 1.0]  # rule reference, delta 3: pairs 1 and 4 are noisy


def scorer(calls):
    def score(indices):
        calls.append(list(indices))
        return torch.tensor([MARGINS[i] for i in indices])
    return score


def test_next_noisy_pair_from_the_offset_and_the_offset_after_it():
    calls = []
    config = ReselectConfig(delta=3.0, rule="reference", scan_batch=2)
    first = select_noisy(scorer(calls), len(MARGINS), 0, 1, config)
    assert (first.indices, first.offset, first.scanned) == ([1], 2, 2)
    second = select_noisy(scorer(calls), len(MARGINS), first.offset, 1, config)
    assert (second.indices, second.offset, second.scanned) == ([4], 0, 3)  # 2 (< 0), 3, 4
    assert calls[0] == [0, 1] and calls[1] == [2, 3] and calls[2] == [4, 0]


def test_the_scan_wraps_to_the_start_and_a_batch_may_take_a_pair_twice():
    config = ReselectConfig(delta=3.0, rule="reference", scan_batch=8)
    picked = select_noisy(scorer([]), len(MARGINS), 2, 3, config)
    assert picked.indices == [4, 1, 4] and picked.offset == 0


def test_abs_rule_and_no_noisy_pair_left():
    wide = ReselectConfig(delta=0.6, rule="abs")
    assert select_noisy(scorer([]), len(MARGINS), 0, 2, wide).indices == [1, 2]
    none = ReselectConfig(delta=0.1, rule="abs")
    assert select_noisy(scorer([]), len(MARGINS), 3, 1, none) is None
