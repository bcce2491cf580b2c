"""The body role: the model, run once per iteration for what the moved parameters consume.

With the likelihood oracle the coordinator asks the body for each iteration's feed
(compo/oracle.py HeadFeed: hidden states, or the tail's inputs with moved MLPs) and hands it
to the head workers, which hold only the moved parameters (workers/worker.py). The body
also gives the head workers what they hold: the oracle without the model and the master.
workers/actor.py wraps it in a Ray actor.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from compo.config import ComPOConfig, ModelConfig
from compo.model.loading import load_model, load_tokenizer, model_device
from compo.model.tail import map_tensors
from compo.oracle import HeadFeed, LikelihoodOracle
from workers.memory import resident_bytes
from workers.protocol import PairIds, as_pairs


@dataclass
class HeadPart:
    """What a head worker holds: the oracle without the model, the master as loaded."""

    oracle: LikelihoodOracle  # detached: head, layout, the tail's own copies
    master: torch.Tensor  # float32 [R, d]

    def to(self, device: torch.device | str) -> HeadPart:
        """On `device`: a copy of the master (each worker steps its own), the head's bias
        and the tail's copies (modules move in place: call it on the worker's own part)."""
        oracle = copy.copy(self.oracle)
        oracle.head = map_tensors(oracle.head, lambda t: t.to(device))
        if oracle.tail is not None:
            oracle.tail = copy.copy(oracle.tail)
            oracle.tail.layers = [layer.to(device) for layer in oracle.tail.layers]  # in place
            oracle.tail.norm = oracle.tail.norm.to(device)
        return HeadPart(oracle, self.master.to(device, copy=True))


class Body:
    """Holds the model; answers feeds (one body pass per iteration) and the head part."""

    def __init__(self, model: ModelConfig, compo: ComPOConfig, name: str = "body",
                 node: str = "local"):
        started = time.perf_counter()
        self.name, self.node = name, node
        network = load_model(model)  # first: its errors say what is wrong with the path
        pad_id = load_tokenizer(model.path).pad_token_id
        self.oracle = LikelihoodOracle(network, compo, pad_id, model.batch_size)
        self.passes = 0  # body passes: one per iteration
        self.load_seconds = time.perf_counter() - started

    def head_part(self) -> HeadPart:
        """The oracle without the model and a copy of the master (on the CPU)."""
        return HeadPart(self.oracle.detached(), self.oracle.master_weight().cpu())

    def feed(self, pairs: Sequence[PairIds]) -> HeadFeed:
        """Run the body once for the pairs' token ids (tensors on the CPU, to travel)."""
        self.passes += 1
        return self.oracle.feed(as_pairs(pairs)).to("cpu")

    def describe(self) -> dict:
        """Who and where the body is, what it holds, how many passes it ran."""
        return {"name": self.name, "node": self.node, "pid": os.getpid(),
                "device": str(model_device(self.oracle.model)), "passes": self.passes,
                "resident_bytes": resident_bytes(), "load_seconds": self.load_seconds}
