"""The coordinator's worker actors: their states, weights versions and patches, preparation
rounds, answers, failures and restarts. The coordinator (workers/coordinator.py) holds one
group and drives it through these public methods.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from compo.config import RayConfig
from compo.errors import DistributedError
from compo.model.export import fingerprint
from workers.protocol import WeightVersions
from workers.stats import IterationStats, payload_size
from workers.transport import Pool, Transport, failure_reason

log = logging.getLogger(__name__)

UNKNOWN_VERSION = -1  # a worker that failed: its next call carries a dense snapshot


@dataclass
class WorkerState:
    """The coordinator's record of one worker actor."""

    name: str
    node: str  # "ip/node id" for logs
    node_id: str
    actor: Any
    pid: int  # at start (a restarted actor has another)
    version: int = 0  # last acknowledged weights version (UNKNOWN_VERSION after a failure)
    ready_round: int | None = None  # round it is prepared for (None: not usable)
    pending: Any = None  # an outstanding call whose answer says the worker is back
    pending_round: int | None = None  # round of a pending prepare (None: another call)
    failures: int = 0  # failed calls in a row, restarts included
    strikes: int = 0  # failures in a row that count toward giving up (restarts do not)
    dead: bool = False  # given up: too many strikes, or its node is dead
    last_heard: float = 0.0
    in_flight: int = 0  # chunks it holds
    retry_at: float | None = None  # restarting: probe it (send a prepare) at this time

    def lost(self) -> None:
        """After a failure: not usable, holding an unknown version, no chunks of ours."""
        self.version, self.ready_round, self.in_flight = UNKNOWN_VERSION, None, 0


# on_lost(worker, the chunk of the failed call or None, reason): its work goes elsewhere
LostHandler = Callable[[WorkerState, Any, str], None]


class WorkerGroup:
    """Worker actors at a weights version, prepared per round; failed ones probed again."""

    def __init__(self, settings: RayConfig, pool: Pool, transport: Transport):
        self.settings, self.pool, self.transport = settings, pool, transport
        self.on_lost: LostHandler | None = None
        self.workers: list[WorkerState] = []
        self.weights: WeightVersions | None = None
        self.round, self.refs, self.pairs_ref = 0, {}, None
        self.pending_owners: dict[Any, WorkerState] = {}  # pending call -> its worker
        self.stats, self.base_logprobs = IterationStats(), {}
        self.last_progress = time.monotonic()

    @property
    def version(self) -> int:
        return self.weights.version

    def start(self, base_weight: torch.Tensor, model_path: str) -> None:
        """Wait for every worker to load the model; each must hold `base_weight`."""
        described = self.pool.wait_loaded(self.settings.load_timeout_s, model_path)
        expected = fingerprint(base_weight)
        for info in described:
            if tuple(info["shape"]) != tuple(base_weight.shape):
                raise DistributedError(f"{info['name']} on {info['node']}: output layer "
                                       f"{info['shape']}, the coordinator's "
                                       f"{list(base_weight.shape)}")
            if info["head_sha256"] != expected:
                raise DistributedError(f"{info['name']} on {info['node']}: its output layer "
                                       f"differs from the one the coordinator read from "
                                       f"{model_path}; every node must see the same files")
        self.workers = [WorkerState(i["name"], i["node"], i["node_id"], actor, i["pid"])
                        for i, actor in zip(described, self.pool.actors, strict=True)]
        self.weights = WeightVersions(base_weight)

    def shutdown(self) -> None:
        if self.pool.actors:
            self.pool.shutdown()

    # -- who can work -------------------------------------------------------------------

    def prepared(self) -> list[WorkerState]:
        return [w for w in self.workers if not w.dead and w.ready_round == self.round]

    def usable(self) -> list[WorkerState]:
        return [w for w in self.prepared() if w.version == self.version]

    def owner_of(self, ref) -> WorkerState | None:
        return self.pending_owners.get(ref)

    def set_pending(self, worker: WorkerState, ref: Any) -> None:
        """`ref` is the call whose answer says `worker` is back (None: none)."""
        if worker.pending is not None:
            self.pending_owners.pop(worker.pending, None)
        worker.pending = ref
        if ref is not None:
            self.pending_owners[ref] = worker

    def missing(self, what: str) -> str:
        """'no worker <what>: who is not usable and why' (for a DistributedError)."""
        usable = self.usable()
        states = ", ".join(f"{w.name} on {w.node} ({'dead' if w.dead else 'not answering'})"
                           for w in self.workers if w not in usable)
        return f"no worker {what}: {states or 'none started'}"

    def report(self) -> dict:
        """The workers' states for the iteration's metrics row."""
        dead = sum(w.dead for w in self.workers)
        return {"workers": len(self.usable()), "dead": dead,
                "unavailable": len(self.workers) - dead - len(self.usable()),
                "version": self.version}

    # -- a round: weights published, pairs prepared -------------------------------------

    def begin_round(self, pairs: Any, weight: torch.Tensor) -> np.ndarray:
        """Publish the weights if they moved and prepare `pairs` (token ids, or the body's
        feed) on every worker that is not dead or restarting; returns the base log-probs
        of the first that answered."""
        self.stats, self.base_logprobs = IterationStats(), {}
        self.round += 1
        self.publish(weight, acknowledge=False)
        self.pairs_ref = self.put(pairs)
        first = {self.send_prepare(w).pending for w in self.workers
                 if not w.dead and w.pending is None and w.retry_at is None}
        deadline = time.monotonic() + self.settings.call_timeout_s
        while time.monotonic() < deadline and (first or not self.base_logprobs):
            ready = self.wait_any(self.pending_refs())
            if ready is None:
                break
            for ref in ready:
                first.discard(ref)
                self.answered(ref)
        if not self.base_logprobs:
            raise DistributedError(self.missing(
                f"prepared the iteration within {self.settings.call_timeout_s:g} s"))
        self.stats.seconds["prepare"] = time.perf_counter() - self.stats.marks["start"]
        return self.agreed_base_logprobs()

    def publish(self, weight: torch.Tensor, acknowledge: bool) -> None:
        """Make the next version if `weight` moved; with `acknowledge`, send it now."""
        started = time.perf_counter()
        update = self.weights.advance(weight)  # compares only the step's positions
        if update is not None:
            self.stats.update_bytes += update.nbytes
        if acknowledge:
            acks = {}
            for worker in self.prepared():
                patch = self.patch_ref(worker)
                acks[self.transport.call(worker.actor, "apply", patch)] = worker
                self.count("task_args", patch)
            for ref, worker in acks.items():
                try:
                    worker.version = self.transport.get(ref, self.settings.call_timeout_s)
                except self.transport.Failed as error:
                    self.failed(worker, error)
                    continue
                self.count("results", worker.version)
        self.stats.seconds["broadcast"] += time.perf_counter() - started

    def patch_ref(self, worker: WorkerState) -> Any:
        """Object ref of the update `worker` needs (step patches or a dense snapshot, each
        put once per version), or None."""
        patch = self.weights.patch_for(worker.version)
        if patch is None:
            return None
        key = (patch.version, patch.base)
        if key not in self.refs:
            self.refs = {k: v for k, v in self.refs.items() if k[0] == patch.version}
            self.refs[key] = self.put(patch)
        return self.refs[key]

    def send_prepare(self, worker: WorkerState) -> WorkerState:
        patch = self.patch_ref(worker)
        self.set_pending(worker, self.transport.call(worker.actor, "prepare", self.round,
                                                     self.version, self.pairs_ref, patch))
        worker.pending_round = self.round
        self.count("task_args", self.round, self.version, self.pairs_ref, patch)
        return worker

    def agreed_base_logprobs(self) -> np.ndarray:
        """Base log-probs of the first ready worker; workers that differ are counted."""
        first = next(w.name for w in self.workers if w.name in self.base_logprobs)
        values = self.base_logprobs[first]
        self.stats.base_mismatch = sum(not np.array_equal(v, values)
                                       for v in self.base_logprobs.values())
        return values

    # -- answers and failures -----------------------------------------------------------

    def answered(self, ref) -> None:
        """A worker's pending call finished: it is ready, needs preparing, or failed."""
        worker = self.owner_of(ref)
        pending_round, worker.pending_round = worker.pending_round, None
        self.set_pending(worker, None)
        try:
            result = self.transport.get(ref)
        except self.transport.Failed as error:
            self.failed(worker, error)
            return
        worker.failures = worker.strikes = 0
        worker.last_heard = self.last_progress = time.monotonic()
        if pending_round is not None:
            self.count("results", result)
            worker.version = result[0]
            if pending_round == self.round and worker.version == self.version:
                worker.ready_round = self.round
                self.base_logprobs[worker.name] = result[1]
                return
        if worker.ready_round != self.round:
            self.send_prepare(worker)

    def failed(self, worker: WorkerState, error: Exception, chunk: Any = None) -> None:
        """A call failed: count it, hand back the worker's work (`chunk` and the rest),
        then give up on it (its node is dead, or too many strikes) or probe it again."""
        restarting = isinstance(error, self.transport.Restarting)
        self.stats.failures += 1
        worker.failures += 1
        worker.strikes += not restarting
        worker.lost()
        reason = failure_reason(error)
        node_dead = worker.node_id not in self.transport.alive_nodes()
        log.log(logging.INFO if restarting and not node_dead else logging.WARNING,
                "%s on %s %s (%d failures in a row): %s", worker.name, worker.node,
                "is restarting" if restarting else "failed", worker.failures, reason)
        if self.on_lost is not None:
            self.on_lost(worker, chunk, reason)
        if node_dead or worker.strikes > self.settings.max_restarts + 1:
            worker.dead, worker.retry_at = True, None
            log.error("%s on %s: given up (%s)", worker.name, worker.node, "Ray reports its "
                      "node dead" if node_dead else f"{worker.strikes} failures in a row")
        elif restarting:
            worker.retry_at = time.monotonic() + self.settings.poll_interval_s
        elif worker.pending is None:
            self.send_prepare(worker)

    def first_answer(self, what: str, method: str, *args: Any) -> Any:
        """The answer of the first usable worker to actor.method(*args)."""
        for worker in self.usable():
            ref = self.transport.call(worker.actor, method, *args)
            self.count("task_args", *args)
            try:
                value = self.transport.get(ref, self.settings.call_timeout_s)
            except self.transport.Failed as error:
                self.failed(worker, error)
                continue
            self.count("results", value)
            return value
        raise DistributedError(self.missing(what))

    def wait_any(self, refs: list) -> list | None:
        """Finished refs among `refs` within ray.poll_interval_s, after probing workers
        whose restart was waited for; None when nothing is pending and nobody restarts."""
        now = time.monotonic()
        for worker in self.workers:
            if worker.retry_at is not None and worker.retry_at <= now and not worker.dead:
                worker.retry_at = None
                if worker.pending is None:
                    refs.append(self.send_prepare(worker).pending)
        if refs:  # a straggler's pending call is also one of its tasks: once only
            return self.transport.wait(list(dict.fromkeys(refs)), self.settings.poll_interval_s)
        if any(w.retry_at is not None and not w.dead for w in self.workers):
            time.sleep(self.settings.poll_interval_s)
            return []
        return None

    def pending_refs(self) -> list:
        return list(self.pending_owners)

    # -- bytes --------------------------------------------------------------------------

    def put(self, obj: Any):
        self.stats.bytes["object_store_puts"] += payload_size(obj)
        return self.transport.put(obj)

    def count(self, kind: str, *objects: Any) -> None:
        self.stats.bytes[kind] += payload_size(*objects)
