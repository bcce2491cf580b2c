"""The actor manager without a cluster (in-process transport, plain actors): work in
flight, what a failure hands back, re-dispatch limits, stragglers, dead nodes."""

import pytest

from compo.config import RayConfig
from compo.errors import DistributedError
from workers.dispatch import ChunkQueue
from workers.manager import UNKNOWN_VERSION, ActorManager, WorkerState
from workers.transport import InProcess


class Echo:
    """An actor that answers its chunk's indices at once."""

    def evaluate(self, indices):
        return list(indices)

    def prepare(self):
        return "prepared"


def manager_of(names, **settings) -> tuple[ActorManager, InProcess, ChunkQueue]:
    transport = InProcess()
    manager = ActorManager(RayConfig(chunk_size=4, **settings), transport)
    manager.round = 1
    manager.workers = [WorkerState(n, "local", "local", Echo(), 0, ready_round=1) for n in names]
    return manager, transport, ChunkQueue(manager.settings)


def send_to(manager: ActorManager, queue: ChunkQueue):
    def send(worker, chunk):
        return manager.call(worker, "evaluate", chunk.indices, work=chunk, queue=queue)
    return send


def test_calls_holding_work_count_in_flight_until_taken():
    manager, _, queue = manager_of(["a", "b"], tasks_in_flight=2)
    queue.reset(range(24), workers=1)  # six chunks
    queue.assign(manager.workers, send_to(manager, queue))
    a, b = manager.workers
    assert (a.in_flight, b.in_flight, len(queue.queue), len(manager.calls)) == (2, 2, 2, 4)
    handle = next(iter(manager.calls))
    call = manager.take(handle)
    assert call.worker is a and list(call.work.indices) == [0, 1, 2, 3] and a.in_flight == 1
    assert manager.value(handle, call) == (True, [0, 1, 2, 3])
    assert manager.take(handle) is None  # off the books


def test_a_failed_worker_hands_back_every_chunk_it_held_first_in_line():
    manager, transport, queue = manager_of(["a", "b"], tasks_in_flight=2)
    queue.reset(range(16), workers=1)
    queue.assign(manager.workers, send_to(manager, queue))
    a, b = manager.workers
    transport.dead.add(id(a.actor))
    probed = []
    manager.probe = probed.append
    handle = next(iter(manager.calls))  # a's first chunk: 0..
    call = manager.take(handle)
    error = pytest.raises(transport.Died, transport.get, transport.call(a.actor, "x")).value
    manager.failed(a, error, call)  # a held chunks 0.. and 8.. (rounds 1, 2)
    assert [list(c.indices) for c in queue.queue] == [[8, 9, 10, 11], [0, 1, 2, 3]]
    assert queue.redispatched == 2 and {c.worker.name for c in manager.calls.values()} == {"b"}
    assert (a.version, a.ready_round, a.in_flight, a.failures, a.dead) == (
        UNKNOWN_VERSION, None, 0, 1, False)
    assert probed == [a] and manager.stats.failures == 1  # probed again: it may come back


def test_a_worker_on_a_dead_node_is_given_up_at_once():
    manager, transport, queue = manager_of(["a"])
    transport.alive_nodes = lambda: set()  # Ray reports its node dead
    error = transport.Died("evaluate: the actor died")
    manager.failed(manager.workers[0], error)
    assert manager.workers[0].dead and manager.wait_any() is None


def test_a_chunk_that_keeps_failing_stops_the_run_naming_it():
    manager, transport, queue = manager_of(["a"], max_redispatch=1)
    queue.reset(range(4), workers=1)
    worker = manager.workers[0]
    for attempt in range(2):
        queue.assign([worker], send_to(manager, queue))
        call = manager.take(next(iter(manager.calls)))
        if attempt == 0:
            manager.failed(worker, RuntimeError("boom"), call)
            worker.ready_round = 1
    with pytest.raises(DistributedError, match=r"perturbations 0.. failed 2 times "
                       r"\(ray.max_redispatch=1\); last: boom again"):
        manager.failed(worker, RuntimeError("boom again"), call)


def test_a_done_chunk_is_never_sent_again():
    manager, _, queue = manager_of(["a"], tasks_in_flight=1)
    queue.reset(range(8), workers=1)
    queue.assign(manager.workers, send_to(manager, queue))
    call = manager.take(next(iter(manager.calls)))
    call.work.done = True
    manager.hand_back(call.worker, call, "late duplicate")
    assert [list(c.indices) for c in queue.queue] == [[4, 5, 6, 7]] and queue.redispatched == 0


def test_a_silent_worker_is_a_straggler_and_its_chunks_go_elsewhere():
    manager, _, queue = manager_of(["slow", "quick"], tasks_in_flight=1,
                                   straggler_timeout_s=10)
    queue.reset(range(8), workers=1)
    queue.assign(manager.workers, send_to(manager, queue))
    slow, quick = manager.workers
    slow.last_heard, quick.last_heard = 100.0, 109.0
    manager.stragglers(now=105.0)
    assert slow.ready_round == 1 and list(queue.queue) == []
    manager.stragglers(now=111.0)
    assert [list(c.indices) for c in queue.queue] == [[0, 1, 2, 3]]
    assert slow.ready_round is None and quick.ready_round == 1  # not usable until it answers
    late = slow.pending
    assert manager.calls[late].worker is slow  # its late answer still counts
    assert manager.take(late).handed_back and slow.pending is None
