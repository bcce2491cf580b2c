"""The Ray actors: the body (workers/body.py) and one worker per GPU (or CPU slot,
workers/worker.py), each delegating every call to its plain class."""

from __future__ import annotations

import ray

from compo.config import ComPOConfig, ModelConfig
from workers.body import Body, HeadPart
from workers.protocol import ServiceSetup
from workers.worker import Worker


def node_label(ip: str, node_id: str) -> str:
    """How logs and errors name a node: its address and the start of its Ray node id."""
    return f"{ip}/{node_id[:8]}"


@ray.remote
class WorkerActor:
    """Thin Ray wrapper: loads the model once, then answers the coordinator's calls."""

    def __init__(self, model: ModelConfig, compo: ComPOConfig, name: str,
                 service: ServiceSetup | None = None, head: HeadPart | None = None):
        self.node_id = ray.get_runtime_context().get_node_id()
        node = node_label(ray.util.get_node_ip_address(), self.node_id)
        self.worker = Worker(model, compo, name, node, service, head)

    def describe(self) -> dict:
        return {**self.worker.describe(), "node_id": self.node_id}

    def apply(self, patch) -> int:
        return self.worker.apply(patch)

    def prepare(self, round_id, version, pairs, patch=None):
        return self.worker.prepare(round_id, version, pairs, patch)

    def base_responses(self, round_id, version, seed, iteration):
        return self.worker.base_responses(round_id, version, seed, iteration)

    def evaluate(self, round_id, version, seed, iteration, indices, base=None):
        return self.worker.evaluate(round_id, version, seed, iteration, indices, base)

    def rebuild(self, round_id, version, seed, iteration, kept, call, rows):
        return self.worker.rebuild(round_id, version, seed, iteration, kept, call, rows)

    def logprobs(self, round_id, version):
        return self.worker.logprobs(round_id, version)


@ray.remote
class BodyActor:
    """Thin Ray wrapper of the body: loads the model once, then feeds the head workers."""

    def __init__(self, model: ModelConfig, compo: ComPOConfig):
        self.node_id = ray.get_runtime_context().get_node_id()
        node = node_label(ray.util.get_node_ip_address(), self.node_id)
        self.body = Body(model, compo, "body", node)

    def describe(self) -> dict:
        return {**self.body.describe(), "node_id": self.node_id}

    def head_part(self) -> HeadPart:
        return self.body.head_part()

    def feed(self, pairs):
        return self.body.feed(pairs)
