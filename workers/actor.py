"""The Ray actors: the body (workers/body.py) and one worker per GPU (or CPU slot,
workers/worker.py), each delegating every call to its plain class."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import ObjectLostError, RayActorError

from compo.config import ComPOConfig, ModelConfig
from compo.oracles import OracleSetup
from workers.body import Body, HeadPart
from workers.worker import Worker


def node_label(ip: str, node_id: str) -> str:
    """How logs and errors name a node: its address and the start of its Ray node id."""
    return f"{ip}/{node_id[:8]}"


@dataclass(frozen=True)
class HeadRef:
    """Where a head worker gets its HeadPart: the copy the body made once for every worker,
    or, when that copy cannot be had (lost with the body's node, or the body died making it),
    the body again (restarted by Ray)."""

    refs: list[Any]  # [ObjectRef]: nested, so Ray hands the ref, not the value, to __init__
    body: Any  # the body actor

    def fetch(self) -> HeadPart:
        try:
            return ray.get(self.refs[0])
        except (ObjectLostError, RayActorError):  # its copy or its maker gone: ask again
            return ray.get(self.body.head_part.remote())


@ray.remote
class WorkerActor:
    """Thin Ray wrapper: loads the model once, then answers the coordinator's calls."""

    def __init__(self, model: ModelConfig, compo: ComPOConfig, name: str,
                 setup: OracleSetup | None = None, head: HeadRef | None = None):
        """`head`: a head worker's part (the body's); fetched again when Ray restarts it."""
        self.node_id = ray.get_runtime_context().get_node_id()
        node = node_label(ray.util.get_node_ip_address(), self.node_id)
        part = None if head is None else head.fetch()
        self.worker = Worker(model, compo, name, node, setup, part)

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

    def rebuild(self, round_id, version, seed, iteration, kept, method, rows, *args):
        return self.worker.rebuild(round_id, version, seed, iteration, kept, method, rows,
                                   *args)

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
