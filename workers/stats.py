"""What a distributed iteration cost: bytes moved by kind, seconds by phase, faults."""

from __future__ import annotations

import pickle
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import ray


def serialized_size(*objects: Any) -> int:
    """Bytes of a call's arguments or a result: the values pickled, object refs as ids."""
    refs = [o for o in objects if isinstance(o, ray.ObjectRef)]
    values = tuple(o for o in objects if not isinstance(o, ray.ObjectRef))
    return sum(len(ref.binary()) for ref in refs) + len(pickle.dumps(values, protocol=5))


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
