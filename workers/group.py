"""The coordinator's worker actors at a weights version, prepared per round: versions and
patches, preparation rounds and their answers. Calls, health, failures and restarts are the
actor manager's (workers/manager.py). The coordinator (workers/coordinator.py) holds one
group and drives it through these public methods.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from compo.config import RayConfig
from compo.errors import DistributedError
from compo.model.export import fingerprint
from workers.manager import ActorManager, Call, WorkerState
from workers.protocol import WeightVersions
from workers.stats import IterationStats, payload_size
from workers.transport import Pool, Transport


class WorkerGroup:
    """Worker actors at a weights version, prepared per round; failed ones probed again."""

    def __init__(self, settings: RayConfig, pool: Pool, transport: Transport):
        self.settings, self.pool, self.transport = settings, pool, transport
        self.manager = ActorManager(settings, transport)
        self.manager.probe = self.send_prepare
        self.weights: WeightVersions | None = None
        self.refs, self.pairs_ref = {}, None
        self.base_logprobs = {}

    @property
    def workers(self) -> list[WorkerState]:
        return self.manager.workers

    @property
    def round(self) -> int:
        return self.manager.round

    @property
    def stats(self) -> IterationStats:
        return self.manager.stats

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
        self.manager.workers = [WorkerState(i["name"], i["node"], i["node_id"], actor, i["pid"])
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
        self.manager.stats, self.base_logprobs = IterationStats(), {}
        self.manager.round += 1
        self.publish(weight, acknowledge=False)
        self.pairs_ref = self.put(pairs)
        first = {self.send_prepare(w) for w in self.workers
                 if not w.dead and w.pending is None and w.retry_at is None}
        deadline = time.monotonic() + self.settings.call_timeout_s
        while time.monotonic() < deadline and (first or not self.base_logprobs):
            ready = self.manager.wait_any()
            if ready is None:
                break
            for ref in ready:
                first.discard(ref)
                call = self.manager.take(ref)
                if call is not None:
                    self.answered(ref, call)
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
            acks = []
            for worker in self.prepared():
                patch = self.patch_ref(worker)
                acks.append(self.manager.call(worker, "apply", patch))
                self.count("task_args", patch)
            for handle in acks:
                call = self.manager.take(handle)
                ok, version = self.manager.value(handle, call, self.settings.call_timeout_s)
                if ok:
                    call.worker.version = version
                    self.count("results", version)
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

    def send_prepare(self, worker: WorkerState) -> Any:
        """Prepare the round on `worker`: the call whose answer says it is back."""
        patch = self.patch_ref(worker)
        handle = self.manager.call(worker, "prepare", self.round, self.version, self.pairs_ref,
                                   patch, round_id=self.round)
        self.manager.set_pending(worker, handle)
        self.count("task_args", self.round, self.version, self.pairs_ref, patch)
        return handle

    def agreed_base_logprobs(self) -> np.ndarray:
        """Base log-probs of the first ready worker; workers that differ are counted."""
        first = next(w.name for w in self.workers if w.name in self.base_logprobs)
        values = self.base_logprobs[first]
        self.stats.base_mismatch = sum(not np.array_equal(v, values)
                                       for v in self.base_logprobs.values())
        return values

    # -- answers and failures -----------------------------------------------------------

    def answered(self, ref: Any, call: Call) -> None:
        """A call that is not a phase's own finished (a prepare, or a straggler's late
        answer): the worker is ready, needs preparing, or failed."""
        worker = call.worker
        ok, result = self.manager.value(ref, call)
        if not ok:
            return
        worker.failures = worker.strikes = 0
        worker.last_heard = self.manager.last_progress = time.monotonic()
        if call.round is not None:
            self.count("results", result)
            worker.version = result[0]
            if call.round == self.round and worker.version == self.version:
                worker.ready_round = self.round
                self.base_logprobs[worker.name] = result[1]
                return
        if worker.ready_round != self.round and worker.pending is None:
            self.send_prepare(worker)

    def first_answer(self, what: str, method: str, *args: Any) -> Any:
        """The answer of the first usable worker to actor.method(*args)."""
        for worker in self.usable():
            ok, value = self.manager.ask(worker, method, *args)
            self.count("task_args", *args)
            if ok:
                self.count("results", value)
                return value
        raise DistributedError(self.missing(what))

    # -- bytes --------------------------------------------------------------------------

    def put(self, obj: Any):
        self.stats.bytes["object_store_puts"] += payload_size(obj)
        return self.transport.put(obj)

    def count(self, kind: str, *objects: Any) -> None:
        self.stats.bytes[kind] += payload_size(*objects)
