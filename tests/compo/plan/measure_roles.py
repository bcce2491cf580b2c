"""Child process of test_rss.py: anonymous RSS growth (bytes) of each role's real
allocations for a saved model. Run with MALLOC_MMAP_THRESHOLD_ set, so freed buffers leave."""

from __future__ import annotations

import copy
import ctypes
import gc
import json
import sys
from pathlib import Path

import torch

from compo.config import ComPOConfig, ModelConfig
from compo.data.formats import TokenizedPair
from compo.model.loading import load_model
from compo.oracle import LikelihoodOracle
from compo.service_oracle.memory import peak_bytes

BLOCK = 1 << 20  # compo.block_elements of the votes measured


def rss() -> int:
    """Anonymous resident memory now (bytes): what the process allocated, not the page
    cache of the files it maps; freed heap is handed back first (malloc_trim)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise OSError("/proc/self/status has no RssAnon line")


def pairs(count: int, length: int, vocab: int) -> list[TokenizedPair]:
    """Random token ids: `count` pairs, an 8-token prompt, each response `length` tokens."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (count, 3, length), generator=generator).tolist()
    return [TokenizedPair(p[0][:8], p[1], p[2], "measure") for p in ids]


def main(path: str, count: int, length: int, dtype: str) -> None:
    """Print the growth of each step as one JSON line."""
    torch.set_num_threads(1)
    config = ModelConfig(path=path, dtype=dtype)
    imported = rss()  # torch and transformers imported
    del_model = load_model(config)  # warm-up: the one-time state of loading, not the model
    del del_model
    start = rss()
    model = load_model(config)  # the body's (or a generation worker's) weights
    loaded = rss()
    oracle = LikelihoodOracle(model, ComPOConfig(), pad_id=0)
    master = oracle.master_weight()  # the coordinator's master (and a head worker's)
    with_master = rss()
    state = oracle.prepare(pairs(count, length, master.shape[0]), master)
    prepared = rss()
    eager = LikelihoodOracle(model, ComPOConfig(block_elements=BLOCK, products="eager"), 0)
    _, votes = peak_bytes(lambda: eager.votes(state, 0, 0, list(range(4))), master.device)
    tokens = state.probs.shape[0]
    print(json.dumps({"first_load_fixed": start - imported, "load_model": loaded - start,
                      "master": with_master - loaded, "state": prepared - with_master,
                      "tokens": tokens, "votes_peak": votes, "block": BLOCK,
                      "head_worker": head_worker_growth(config, count, length)}))


def head_worker_growth(config: ModelConfig, count: int, length: int) -> int:
    """What a real head worker (workers/worker.py, fed by a body) adds: its own master and
    the feed it receives (a copy, as after Ray's transfer), prepared into its state."""
    from workers.body import Body
    from workers.protocol import pair_ids
    from workers.worker import Worker

    body = Body(config, ComPOConfig())
    part = body.head_part()
    feed = body.feed(pair_ids(pairs(count, length, part.master.shape[0])))
    before = rss()
    worker = Worker(config, ComPOConfig(), "head", head=part)
    worker.prepare(0, 0, copy.deepcopy(feed))
    return rss() - before


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
