"""The chunk queue without a cluster: chunk sizes and the order chunks go out in (hand-back,
re-dispatch and stragglers: tests/workers/test_manager.py)."""

from dataclasses import dataclass

import torch

from compo.config import RayConfig
from compo.data.encoding import load_tokenized
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
        worker.in_flight += 1  # what the actor manager counts
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
    queue.assign(pool, Calls())
    return sum(w.in_flight for w in pool) + len(queue.queue), sum(w.in_flight > 0 for w in pool)


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
    queue.assign([a, b], send)
    assert [name for name, _ in send.sent] == ["a", "b", "a", "b"]
    assert (a.in_flight, b.in_flight, len(queue.queue)) == (2, 2, 2)
