"""Byte counters from sizes: what a known payload counts, without pickling it."""

import numpy as np
import ray
import torch

from workers.protocol import INDEX_DTYPE, VOTE_DTYPE, VoteBatch, WeightPatch
from workers.stats import NUMBER_BYTES, payload_size


def test_a_patch_counts_its_arrays_and_header():
    indices = np.arange(0, 3000, 3, dtype=np.int32)
    patch = WeightPatch(5, 4, indices, np.ones(len(indices), np.float32))
    assert payload_size(patch) == patch.nbytes + 2 * NUMBER_BYTES == 8000 + 16
    assert payload_size(WeightPatch(5, None, indices[:0], np.zeros(0, np.float32))) == 8


def test_tensors_refs_and_answers_count_their_bytes():
    tensors = [torch.zeros(7, 3), torch.zeros(5, dtype=torch.bfloat16), torch.zeros(2, 2)[0]]
    assert payload_size(*tensors) == 7 * 3 * 4 + 5 * 2 + 2 * 4
    ref = ray.ObjectRef(b"\x01" * 28)
    args = (3, 2, 11, 0, range(0, 8), ref)  # round, version, seed, iteration, chunk, base
    assert payload_size(*args) == 4 * NUMBER_BYTES + 3 * NUMBER_BYTES + 28
    count = 8
    batch = VoteBatch(3, 2, np.arange(count, dtype=INDEX_DTYPE).tobytes(),
                      np.ones(count, VOTE_DTYPE).tobytes(), 0.5)
    assert payload_size(batch) == 5 * count + 3 * NUMBER_BYTES
    positions, values = np.arange(10, dtype=np.int64), np.zeros(10, np.float32)
    assert payload_size((positions, values)) == 80 + 40
    assert payload_size(["ab", "é"], None, {"k": 1.0}) == 2 + 2 + 1 + NUMBER_BYTES
