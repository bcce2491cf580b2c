"""The coordinator's own CPU per iteration against the number of workers, without Ray.

The same classes as on a cluster (RayVoteSource, WorkerGroup, ActorManager, ChunkQueue,
ShardCalls, RemoteBody) drive instant fake workers through the in-process transport
(workers/transport.py): every call answers at once, so what is timed is the coordinator's
work (chunks, answers, shards, patches; the CPU spent inside the fakes is measured by the
transport and left out). One iteration:
prepare (the body's feed), m votes, an accepted step rebuilt in shards, the step
published and acknowledged. Prints a line per case and, last, one JSON object.

  python bench/coordinator.py --json
  python bench/coordinator.py --workers 30 300 --iterations 2
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from compo.config import ComPOConfig, DataConfig, ModelConfig, RayConfig, TrainConfig
from compo.data.formats import TokenizedPair
from compo.estimator import RowShards, decide_from_shards, plan_shards
from compo.model.export import fingerprint
from workers.body_handle import RemoteBody
from workers.coordinator import RayVoteSource
from workers.protocol import INDEX_DTYPE, VOTE_DTYPE, VoteBatch, apply_update
from workers.transport import InProcess, LocalPool, Placement

ROWS, COLUMNS = 32000, 4  # a 7B vocabulary's rows (its 500 row shards), few columns
PAIRS = [TokenizedPair([1, 2], [3, 4], [5, 6], source="pair 0")]
M_FIXED, M_PER_WORKER = 1800, 60  # the two request sizes
GOAL_S = 0.2  # seconds per iteration at 1,000 workers (m = 60 per worker)


def direction_sum(rows: range) -> torch.Tensor:
    """Stand-in rows of sum y_i z_i: deterministic, instant."""
    generator = torch.Generator().manual_seed(rows.start)
    return torch.randn(len(rows), COLUMNS, generator=generator)


class FakeBody:
    """Answers the body's calls at once (no model)."""

    def describe(self) -> dict:
        return {"name": "body", "node": "local", "passes": 0}

    def head_part(self) -> None:
        return None

    def feed(self, pairs) -> list:
        return pairs


class FakeWorker:
    """A head worker that answers at once: votes -1 for every third index, rows of a
    stand-in sum, patches applied to its own copy."""

    def __init__(self, name: str, weight: torch.Tensor):
        self.name, self.weight, self.version = name, weight.clone(), 0
        self.sha256 = fingerprint(weight)
        self.shards = RowShards(direction_sum)

    def describe(self) -> dict:
        return {"name": self.name, "node": "local", "pid": 0,
                "shape": list(self.weight.shape), "head_sha256": self.sha256}

    def apply(self, update) -> int:
        if update is not None:
            self.version = apply_update(self.weight, self.version, update, self.name)
        return self.version

    def prepare(self, round_id, version, feed, update=None):
        self.apply(update)
        self.shards = RowShards(direction_sum)
        return self.version, np.zeros(2)

    def evaluate(self, round_id, version, seed, iteration, indices, base=None) -> VoteBatch:
        index = np.asarray(indices, INDEX_DTYPE)
        votes = np.where(index % 3 == 0, -1, 1).astype(VOTE_DTYPE)
        return VoteBatch(round_id, version, index.tobytes(), votes.tobytes(), 0.0)

    def rebuild(self, round_id, version, seed, iteration, kept, call, rows):
        result = call.on(self.shards, rows)
        if isinstance(result, tuple):
            return result[0].numpy().astype(np.int32), result[1].numpy()
        return result.numpy()

    def logprobs(self, round_id, version) -> np.ndarray:
        return np.zeros(2)


def config(workers: int) -> TrainConfig:
    compo = ComPOConfig(num_perturbations=M_FIXED, accept_ratio=0.2, clip={"mode": "fraction",
                                                                           "value": 0.05})
    ray = RayConfig(num_workers=workers)
    return TrainConfig(model=ModelConfig(path="unused"), data=DataConfig(path="unused"),
                       compo=compo, ray=ray)


def measure(workers: int, m: int, iterations: int, rows: int = ROWS) -> dict:
    """Coordinator CPU seconds per iteration (process time), and how many workers voted."""
    run = config(workers)
    weight = torch.zeros(rows, COLUMNS)
    transport = InProcess()
    body = RemoteBody(FakeBody(), run.ray, transport)
    pool = LocalPool([FakeWorker(f"worker-{i}", weight) for i in range(workers)])
    shards = len(plan_shards(rows, workers))
    source = RayVoteSource(run, progress=False, placement=Placement(transport, pool, body))
    source.start(weight.clone())
    seconds, busy = [], 0
    for iteration in range(iterations + 1):  # the first one warms up
        started, in_actors = time.process_time(), transport.actor_seconds
        source.prepare(PAIRS, weight)
        indices = list(range(m))
        votes = source.votes(0, iteration, indices)
        parts, runner = source.rebuild(0, iteration, indices, votes, weight)
        decision = decide_from_shards(votes, run.compo, tuple(weight.shape), parts, runner)
        decision.update.apply_(weight)
        source.logprobs(weight)
        if iteration:  # the coordinator's part: what the fakes spent is not its own
            spent = time.process_time() - started
            seconds.append(spent - (transport.actor_seconds - in_actors))
        busy = sum(1 for n, _ in source.group.stats.work.values() if n)
    source.close()
    return {"workers": workers, "m": m, "seconds_per_iteration": sum(seconds) / len(seconds),
            "busy_workers": busy, "shards": shards, "calls": transport.calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[30, 300, 1000])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--rows", type=int, default=ROWS, help="rows of the moved master "
                        "(its row shards: one per 64 rows, at most one per worker)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    cases = []
    for workers in args.workers:
        for m in (M_FIXED, M_PER_WORKER * workers):
            case = measure(workers, m, args.iterations, args.rows)
            cases.append(case)
            print(f"{workers:5d} workers  m = {m:6d}: {case['seconds_per_iteration']:.3f} s "
                  f"per iteration, {case['busy_workers']} workers voted, "
                  f"{case['shards']} row shards")
    per_worker = {c["workers"]: round(c["seconds_per_iteration"], 4) for c in cases
                  if c["m"] == M_PER_WORKER * c["workers"]}
    largest = max(per_worker)
    summary = {"seconds_per_iteration": per_worker, "goal_s": GOAL_S,
               "meets_goal": per_worker[largest] <= GOAL_S, "cases": cases}
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
