"""What a distributed iteration cost: bytes moved by kind, seconds by phase, faults."""

from __future__ import annotations

import dataclasses
import pickle
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
import torch

from workers.protocol import VoteBatch
from workers.transport import Done

NUMBER_BYTES = 8  # a Python int, float or bool: one 64-bit value
HANDLE_BYTES = 28  # a Ray object ref's id


def payload_size(*objects: Any) -> int:
    """Bytes of a call's arguments or a result, from sizes, never pickled: arrays and
    tensors numel * element size, bytes and text their length, object refs their id,
    numbers 8, containers and dataclasses the sum of their items, None nothing."""
    return sum(value_size(o) for o in objects)


def value_size(obj: Any) -> int:
    """payload_size of one value."""
    fixed = FIXED_SIZES.get(type(obj))  # the frequent kinds first, by exact type
    if fixed is not None:
        return fixed(obj)
    if obj is None:
        return 0
    if isinstance(obj, bool | int | float):
        return NUMBER_BYTES
    if isinstance(obj, np.ndarray | np.generic):
        return obj.nbytes
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, bytes | bytearray | memoryview):
        return len(obj)
    if isinstance(obj, str):
        return len(obj.encode())
    if isinstance(obj, ray.ObjectRef):
        return len(obj.binary())
    if isinstance(obj, Done):  # an in-process handle: counted as a Ray ref would be
        return HANDLE_BYTES
    if isinstance(obj, VoteBatch):  # the most frequent answer, without recursion
        return obj.nbytes
    if isinstance(obj, range):
        return 3 * NUMBER_BYTES
    if isinstance(obj, list | tuple | set | frozenset):
        return sum(value_size(item) for item in obj)
    if isinstance(obj, dict):
        return sum(value_size(k) + value_size(v) for k, v in obj.items())
    if dataclasses.is_dataclass(obj):
        return sum(value_size(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    return len(pickle.dumps(obj, protocol=5))  # anything else (none is sent today)


FIXED_SIZES = {type(None): lambda _: 0, int: lambda _: NUMBER_BYTES, float: lambda _: NUMBER_BYTES,
               bool: lambda _: NUMBER_BYTES, range: lambda _: 3 * NUMBER_BYTES,
               Done: lambda _: HANDLE_BYTES, VoteBatch: lambda batch: batch.nbytes,
               np.ndarray: lambda array: array.nbytes}


@dataclass
class IterationStats:
    """One iteration's cost: bytes by kind, seconds by phase, faults, work per worker."""

    bytes: Counter = field(default_factory=Counter)
    seconds: Counter = field(default_factory=Counter)
    marks: dict = field(default_factory=lambda: {"start": time.perf_counter()})
    perturbations: int = 0  # indices voted on
    update_bytes: int = 0  # indices + values of the published step (inside the puts)
    redispatched: int = 0
    failures: int = 0
    rejected: int = 0
    base_mismatch: int = 0
    work: dict = field(default_factory=dict)  # worker -> [perturbations, seconds]

    def report(self) -> dict:
        """The iteration's Ray figures (the "ray" entry of its metrics.jsonl row)."""
        now = time.perf_counter()
        rebuild = self.marks.get("publish", now) - self.marks.get("votes_done", now)
        vote_bytes = self.bytes["vote_args"] + self.bytes["vote_results"]
        per_worker = {name: {"perturbations": n, "seconds": s, "per_s": n / s if s else 0.0}
                      for name, (n, s) in sorted(self.work.items())}
        return {
            "update_bytes": self.update_bytes,
            "bytes": {**self.bytes, "total": sum(self.bytes.values()),
                      "votes_per_perturbation": vote_bytes / max(self.perturbations, 1)},
            "seconds": {**self.seconds, "rebuild": rebuild},
            "redispatched": self.redispatched, "failures": self.failures,
            "rejected": self.rejected, "base_mismatch": self.base_mismatch,
            "per_worker": per_worker,
        }

