"""One fault-tolerant manager of the worker actors: every call the coordinator makes to them
(prepare, votes, rebuild, publish) goes through it. Per actor it keeps the health (answers,
failures in a row, restarts, a dead node) and the calls in flight with the work each holds;
one method (`failed`) decides what a failure means and hands the lost work back to its
queue, and one rule finds stragglers (silent past ray.straggler_timeout_s while holding
work). The transport (workers/transport.py) is Ray's or in-process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from compo.config import RayConfig
from workers.stats import IterationStats
from workers.transport import Transport, failure_reason

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
    failures: int = 0  # failed calls in a row, restarts included
    strikes: int = 0  # failures in a row that count toward giving up (restarts do not)
    dead: bool = False  # given up: too many strikes, or its node is dead
    last_heard: float = 0.0
    in_flight: int = 0  # calls holding work (chunks, shards)
    retry_at: float | None = None  # restarting: probe it (send a prepare) at this time

    def lost(self) -> None:
        """After a failure: not usable, holding an unknown version, no work of ours."""
        self.version, self.ready_round, self.in_flight = UNKNOWN_VERSION, None, 0


class WorkQueue(Protocol):
    """Where a call's work (a chunk, a shard) goes back when the call is lost."""

    def requeue(self, work: Any, reason: str) -> None:
        """Queue `work` again for another worker (or not, if it is done)."""


@dataclass(eq=False)
class Call:
    """One outstanding call: its worker, the work it holds and the queue that work is from."""

    worker: WorkerState
    work: Any = None
    queue: WorkQueue | None = None
    round: int | None = None  # a prepare's round
    handed_back: bool = False  # its work was queued again (a straggler's): its answer counts


class ActorManager:
    """Calls to the worker actors, their health, and what a failure or a straggler means."""

    def __init__(self, settings: RayConfig, transport: Transport):
        self.settings, self.transport = settings, transport
        self.workers: list[WorkerState] = []
        self.calls: dict[Any, Call] = {}  # handle -> the call it is
        self.stats, self.round = IterationStats(), 0
        self.last_progress = time.monotonic()
        self.probe: Callable[[WorkerState], None] | None = None  # re-prepare a lost worker

    # -- calls ---------------------------------------------------------------------------

    def call(self, worker: WorkerState, method: str, *args: Any, work: Any = None,
             queue: WorkQueue | None = None, round_id: int | None = None) -> Any:
        """Start worker.actor.method(*args), kept on the books with the `work` it holds."""
        handle = self.transport.call(worker.actor, method, *args)
        self.calls[handle] = Call(worker, work, queue, round_id)
        if work is not None:
            if worker.in_flight == 0:
                worker.last_heard = time.monotonic()
            worker.in_flight += 1
        return handle

    def take(self, handle: Any) -> Call | None:
        """A finished call off the books (None: not ours, or handed back with its worker)."""
        call = self.calls.pop(handle, None)
        if call is None:
            return None
        if call.work is not None:
            call.worker.in_flight = max(0, call.worker.in_flight - 1)
        if call.worker.pending is handle:
            call.worker.pending = None
        return call

    def value(self, handle: Any, call: Call, timeout: float | None = None) -> tuple[bool, Any]:
        """(True, the call's value), or (False, None) once its failure is handled."""
        try:
            return True, self.transport.get(handle, timeout)
        except self.transport.Failed as error:
            self.failed(call.worker, error, call)
            return False, None

    def ask(self, worker: WorkerState, method: str, *args: Any) -> tuple[bool, Any]:
        """worker.actor.method(*args) waited for (ray.call_timeout_s): (ok, value)."""
        handle = self.call(worker, method, *args)
        return self.value(handle, self.take(handle), self.settings.call_timeout_s)

    def set_pending(self, worker: WorkerState, handle: Any) -> None:
        """`handle` (a call on the books) is the one whose answer says `worker` is back."""
        worker.pending = handle

    def pending_refs(self) -> list:
        return [w.pending for w in self.workers if w.pending is not None]

    # -- failures and stragglers: what they mean ----------------------------------------

    def failed(self, worker: WorkerState, error: Exception, call: Call | None = None) -> None:
        """A call failed: count it, hand the worker's work back (the call's and the rest),
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
        self.hand_back(worker, call, reason)
        if node_dead or worker.strikes > self.settings.max_restarts + 1:
            worker.dead, worker.retry_at = True, None
            log.error("%s on %s: given up (%s)", worker.name, worker.node, "Ray reports its "
                      "node dead" if node_dead else f"{worker.strikes} failures in a row")
        elif restarting:
            worker.retry_at = time.monotonic() + self.settings.poll_interval_s
        elif worker.pending is None and self.probe is not None:
            self.probe(worker)

    def hand_back(self, worker: WorkerState, call: Call | None, reason: str) -> None:
        """The failed call's work and every other call of `worker` that holds work go
        back to their queues (first in line); those calls leave the books."""
        lost = [call] if call is not None else []
        for handle, other in list(self.calls.items()):
            if other.worker is worker and other.work is not None:
                del self.calls[handle]
                lost.append(other)
                if worker.pending is handle:
                    worker.pending = None
        for item in lost:
            if item.work is not None and not item.handed_back:
                item.handed_back = True
                item.queue.requeue(item.work, reason)

    def stragglers(self, now: float) -> None:
        """Prepared workers silent past ray.straggler_timeout_s while holding work: their
        work is queued again (the calls stay: a late answer still counts) and they are not
        usable until one of those calls answers."""
        for worker in self.workers:
            silent = now - worker.last_heard
            if (not worker.in_flight or worker.dead or worker.ready_round != self.round
                    or silent <= self.settings.straggler_timeout_s):
                continue
            held = [(h, c) for h, c in self.calls.items()
                    if c.worker is worker and c.work is not None and not c.handed_back]
            log.warning("%s: no answer for %.0f s; re-dispatching its work", worker.name,
                        silent)
            worker.ready_round = None
            for _, call in held:
                call.handed_back = True
                call.queue.requeue(call.work, f"{worker.name} straggling")
            if held and worker.pending is None:
                worker.pending = held[0][0]

    # -- waiting -------------------------------------------------------------------------

    def wait_any(self) -> list | None:
        """Finished calls within ray.poll_interval_s, after probing workers whose restart
        was waited for; None when nothing is on the books and nobody restarts."""
        now = time.monotonic()
        for worker in self.workers:
            if worker.retry_at is not None and worker.retry_at <= now and not worker.dead:
                worker.retry_at = None
                if worker.pending is None and self.probe is not None:
                    self.probe(worker)
        if self.calls:
            return self.transport.wait(list(self.calls), self.settings.poll_interval_s)
        if any(w.retry_at is not None and not w.dead for w in self.workers):
            time.sleep(self.settings.poll_interval_s)
            return []
        return None
