"""The chunk queue without a cluster: chunk sizes, hand-back, re-dispatch, stragglers."""

from dataclasses import dataclass

import pytest
import torch

from compo.config import RayConfig
from compo.data.encoding import load_tokenized
from compo.errors import DistributedError
from compo.model.loading import load_model, load_tokenizer
from compo.oracle import LikelihoodOracle
from compo.votes import LikelihoodVotes, LocalVoteSource
from workers.dispatch import ChunkQueue, chunk_length, make_chunks


@dataclass(eq=False)
class FakeWorker:
    name: str
    in_flight: int = 0
    last_heard: float = 0.0


class Calls:
    """send(worker, chunk) -> a fresh handle, remembered."""

    def __init__(self):
        self.sent = []

    def __call__(self, worker, chunk):
        self.sent.append((worker.name, list(chunk.indices)))
        return f"ref-{len(self.sent)}"


def test_chunks_cut_the_index_list_in_order():
    chunks = make_chunks(range(40), 16)
    assert [(c.first, c.indices) for c in chunks] == [
        (0, range(0, 16)), (16, range(16, 32)), (32, range(32, 40))]
    scattered = make_chunks([7, 3, 9, 10], 3)
    assert [c.indices for c in scattered] == [[7, 3, 9], range(10, 11)]


def busy_workers(m: int, workers: int, setting="auto", batch=None) -> tuple[int, int]:
    """(chunks, workers given at least one chunk by the first assignment) of one iteration."""
    queue = ChunkQueue(RayConfig(chunk_size=setting), batch)
    queue.reset(range(m), workers)
    pool = [FakeWorker(f"w{i}") for i in range(workers)]
    queue.assign(pool, Calls(), now=0.0)
    return len(queue.tasks) + len(queue.queue), sum(w.in_flight > 0 for w in pool)


def test_auto_chunks_keep_every_worker_busy():
    assert busy_workers(1800, 300, 16) == (113, 113)  # the fixed size: 187 workers idle
    assert busy_workers(1800, 300) == (900, 300)  # auto: 2 indices, 3 chunks per worker
    assert busy_workers(1800, 1000) == (1800, 1000)  # never below 1 index
    assert busy_workers(60 * 1000, 1000) == (4000, 1000)  # m = 60 per worker: 4 each
    assert busy_workers(10, 300) == (10, 10)  # fewer indices than workers
    assert chunk_length("auto", 1800, 30) == 15 and chunk_length(12, 1800, 30) == 12
    assert chunk_length("auto", 1800, 300, batch=12) == 12  # whole generation batches
    assert chunk_length("auto", 1800, 10, batch=12) == 48
    assert chunk_length("auto", 0, 0) == 1


def test_reset_sizes_auto_chunks_for_the_live_workers():
    queue = ChunkQueue(RayConfig())
    queue.reset(range(64), workers=2)
    assert [len(c.indices) for c in queue.queue] == [8] * 8
    queue = ChunkQueue(RayConfig(), batch=12)
    queue.reset(range(64), workers=3)
    assert [len(c.indices) for c in queue.queue] == [12] * 5 + [4]


def test_votes_do_not_depend_on_the_chunking(make_config, model_dir):
    """Votes in one call equal those gathered chunk by chunk, at every auto size."""
    config = make_config("chunking")
    tokenizer = load_tokenizer(model_dir)
    pairs = load_tokenized(config.data, tokenizer)[0][:2]
    oracle = LikelihoodOracle(load_model(config.model), config.compo, tokenizer.pad_token_id)
    source = LocalVoteSource(LikelihoodVotes(oracle), config.compo)
    source.prepare(pairs, source.oracle.scorer.master_weight())
    indices = list(range(64))
    whole = source.votes(3, 1, indices)
    for workers in (1, 2, 3, 7, 300):
        size = chunk_length("auto", len(indices), workers)
        parts = [source.votes(3, 1, list(c.indices)) for c in make_chunks(indices, size)]
        assert torch.equal(torch.cat(parts), whole), f"{workers} workers (chunks of {size})"


def test_each_worker_gets_one_chunk_a_round_up_to_tasks_in_flight():
    queue = ChunkQueue(RayConfig(chunk_size=4, tasks_in_flight=2))
    queue.reset(range(24), workers=1)  # six chunks
    a, b, send = FakeWorker("a"), FakeWorker("b"), Calls()
    queue.assign([a, b], send, now=1.0)
    assert [name for name, _ in send.sent] == ["a", "b", "a", "b"]
    assert (a.in_flight, b.in_flight, len(queue.queue)) == (2, 2, 2)
    chunk, worker = queue.take("ref-1")
    assert worker is a and list(chunk.indices) == [0, 1, 2, 3] and a.in_flight == 1
    assert queue.take("ref-1") is None  # not ours any more


def test_a_failed_worker_hands_back_every_chunk_it_held_first_in_line():
    queue = ChunkQueue(RayConfig(chunk_size=4, tasks_in_flight=2))
    queue.reset(range(16), workers=1)
    a, b, send = FakeWorker("a"), FakeWorker("b"), Calls()
    queue.assign([a, b], send, now=0.0)
    failed, _ = queue.take("ref-1")
    queue.hand_back(a, failed, "actor died")  # a held chunks 0.. and 8.. (rounds 1, 2)
    assert [list(c.indices) for c in queue.queue] == [[8, 9, 10, 11], [0, 1, 2, 3]]
    assert queue.redispatched == 2 and queue.refs() == ["ref-2", "ref-4"]
    b.in_flight = 0
    queue.assign([b], send, now=0.0)
    assert send.sent[-2:] == [("b", [8, 9, 10, 11]), ("b", [0, 1, 2, 3])]


def test_a_chunk_that_keeps_failing_stops_the_run_naming_it():
    queue = ChunkQueue(RayConfig(chunk_size=4, max_redispatch=1))
    queue.reset(range(4), workers=1)
    worker, send = FakeWorker("a"), Calls()
    for attempt in range(2):
        queue.assign([worker], send, now=0.0)
        chunk, _ = queue.take(f"ref-{attempt + 1}")
        if attempt == 0:
            queue.requeue(chunk, "boom")
    with pytest.raises(DistributedError, match=r"perturbations 0.. failed 2 times "
                       r"\(ray.max_redispatch=1\); last: boom again"):
        queue.requeue(chunk, "boom again")


def test_a_done_chunk_is_never_sent_again():
    queue = ChunkQueue(RayConfig(chunk_size=4))
    queue.reset(range(8), workers=1)
    worker, send = FakeWorker("a", in_flight=0), Calls()
    queue.assign([worker], send, now=0.0)
    chunk, _ = queue.take("ref-1")
    chunk.done = True
    queue.requeue(chunk, "late duplicate")
    assert list(queue.queue) == [] and queue.redispatched == 0


def test_a_silent_worker_is_a_straggler_and_its_chunks_go_elsewhere():
    queue = ChunkQueue(RayConfig(chunk_size=4, tasks_in_flight=1, straggler_timeout_s=10))
    queue.reset(range(8), workers=1)
    slow, quick, send = FakeWorker("slow"), FakeWorker("quick"), Calls()
    queue.assign([slow, quick], send, now=100.0)
    assert queue.stragglers([slow, quick], now=105.0) == []
    quick.last_heard = 109.0
    found = queue.stragglers([slow, quick], now=111.0)
    assert found == [(slow, "ref-1")] and [list(c.indices) for c in queue.queue] == [[0, 1, 2, 3]]
    assert "ref-1" in queue.refs()  # its late answer still counts
