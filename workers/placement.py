"""Reserve a placement group (one bundle per worker), start the worker actors in it, and
wait for them to load the model."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

from compo.config import RayConfig, TrainConfig
from compo.errors import DistributedError
from compo.model.loading import SHARDED
from compo.oracles import OracleSetup, oracle_kind
from workers.actor import BodyActor, HeadRef, WorkerActor, node_label
from workers.body_handle import RemoteBody
from workers.transport import Placement, RayTransport, failure_reason


def plan_workers(total: dict, free: dict, settings: RayConfig,
                 body: bool = False) -> tuple[int, bool]:
    """(number of workers, on GPUs?): GPUs if the cluster has any (use_gpu auto), one
    worker per gpus_per_worker free GPUs (or per cpus_per_worker free CPUs) unless
    num_workers says; `body`: what the body role takes is not a worker's."""
    use_gpu = total.get("GPU", 0) > 0 if settings.use_gpu == "auto" else settings.use_gpu
    if use_gpu and not total.get("GPU", 0):
        raise DistributedError("ray.use_gpu is true but the cluster has no GPUs; set "
                               "use_gpu: auto (CPU workers) or start GPU nodes")
    body_gpus = settings.gpus_per_body if body and use_gpu else 0
    gpu_slots = int(max(0.0, free.get("GPU", 0) - body_gpus) // settings.gpus_per_worker)
    cpus = free.get("CPU", 0) - (settings.cpus_per_body if body else 0)
    count = settings.num_workers or (gpu_slots if use_gpu
                                     else int(cpus // settings.cpus_per_worker))
    if count < 1:
        what = "GPUs" if use_gpu else f"CPUs (ray.cpus_per_worker={settings.cpus_per_worker:g})"
        raise DistributedError(f"no free {what} for a worker; set ray.num_workers or add nodes")
    return count, use_gpu


def connect(settings: RayConfig, address: str | None = None) -> None:
    """Join the cluster at `address` (or settings.address); without one, start a local
    instance sized by the local_* settings, or else do what ray.init() does: join the
    cluster in RAY_ADDRESS (set inside `ray job submit`) or on this machine, or start one."""
    if ray.is_initialized():
        return
    address = address or settings.address
    local = {name: value for name, value in (("num_cpus", settings.local_num_cpus),
             ("object_store_memory", settings.local_object_store_bytes)) if value is not None}
    if address:
        ray.init(address=address)
    elif local:
        ray.init(address="local", include_dashboard=False, **local)
    else:
        ray.init()


@dataclass
class ActorPool:
    """The actors of one run and the placement group that holds their resources."""

    group: Any
    actors: list[Any]
    names: list[str]
    loading: dict[Any, int] = field(default_factory=dict)  # describe() ref -> worker

    def node_of(self, index: int) -> str:
        """"ip/node id" of the node that holds bundle `index` (where the worker runs)."""
        node_id = ray.util.placement_group_table(self.group)["bundles_to_node_id"].get(index)
        for node in ray.nodes():
            if node["NodeID"] == node_id:
                return node_label(node["NodeManagerAddress"], node_id)
        return f"an unplaced bundle (node {node_id})"

    def wait_loaded(self, timeout_s: float, model_path: str) -> list[dict]:
        """What every worker says of itself (Worker.describe) once it has loaded the model;
        fails fast on the first worker that cannot, naming it and its node."""
        described: dict[int, dict] = {}
        deadline = time.monotonic() + timeout_s
        while self.loading:
            ready, _ = ray.wait(list(self.loading), num_returns=1,
                                timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                late = ", ".join(f"{self.names[i]} on {self.node_of(i)}"
                                 for i in sorted(self.loading.values()))
                raise DistributedError(f"{late}: model {model_path} not loaded within "
                                       f"{timeout_s:g} s (ray.load_timeout_s)")
            index = self.loading.pop(ready[0])
            try:
                described[index] = ray.get(ready[0])
            except RayActorError as error:
                raise DistributedError(
                    f"{self.names[index]} on node {self.node_of(index)} could not load the "
                    f"model {model_path}: {failure_reason(error)}") from None
        return [described[i] for i in range(len(self.actors))]

    def shutdown(self) -> None:
        """Kill the actors and give the reserved resources back."""
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        remove_placement_group(self.group)
        self.actors, self.loading = [], {}


def reserve(count: int, use_gpu: bool, settings: RayConfig):
    """A placement group of `count` bundles, or a clear error when the cluster is short."""
    bundle = {"CPU": settings.cpus_per_worker,
              **({"GPU": settings.gpus_per_worker} if use_gpu else {})}
    group = placement_group([dict(bundle) for _ in range(count)],
                            strategy=settings.placement_strategy)
    ready, _ = ray.wait([group.ready()], timeout=settings.placement_timeout_s)
    if not ready:
        free = ray.available_resources()
        remove_placement_group(group)
        raise DistributedError(
            f"could not reserve {count} x {bundle} ({settings.placement_strategy}) within "
            f"{settings.placement_timeout_s:g} s; free now: CPU {free.get('CPU', 0):g}, "
            f"GPU {free.get('GPU', 0):g}. Lower ray.num_workers or add nodes")
    return group


def start_body(config: TrainConfig, settings: RayConfig, use_gpu: bool) -> Any:
    """The body actor, on the coordinator's node where it has room (it outlives workers'
    nodes there); it loads the model in the background."""
    here = ray.get_runtime_context().get_node_id()
    device = ("cpu" if not use_gpu else SHARDED if settings.gpus_per_body > 1 else "cuda")
    model = config.model.model_copy(update={"device": device})
    return BodyActor.options(
        num_cpus=settings.cpus_per_body, num_gpus=settings.gpus_per_body if use_gpu else 0,
        max_restarts=settings.max_restarts, max_task_retries=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True),
    ).remote(model, config.compo)


def worker_device(settings: RayConfig, use_gpu: bool) -> str:
    """model.device of a worker: the CPU, its GPU, or its GPUs (a generation worker with
    ray.gpus_per_worker > 1: the model spread over them with device_map)."""
    if not use_gpu:
        return "cpu"
    return SHARDED if settings.gpus_per_worker > 1 else "cuda"


def start_pool(config: TrainConfig, settings: RayConfig, count: int, use_gpu: bool,
               setup: OracleSetup | None = None, head: HeadRef | None = None) -> ActorPool:
    """Reserve the bundles and start one actor in each; loading runs in the background.
    `setup`: the run's oracle (compo/oracles/); `head`: where head workers get the body's
    HeadPart (they load no model)."""
    group = reserve(count, use_gpu, settings)
    model = config.model.model_copy(update={"device": worker_device(settings, use_gpu)})
    names = [f"worker-{i}" for i in range(count)]
    actors = [
        WorkerActor.options(
            num_cpus=settings.cpus_per_worker,
            num_gpus=settings.gpus_per_worker if use_gpu else 0,
            max_restarts=settings.max_restarts, max_task_retries=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                group, placement_group_bundle_index=i),
        ).remote(model, config.compo, names[i], setup, head)
        for i in range(count)
    ]
    loading = {actor.describe.remote(): i for i, actor in enumerate(actors)}
    return ActorPool(group, actors, names, loading)


def ray_placement(config: TrainConfig, settings: RayConfig, address: str | None,
                  setup: OracleSetup) -> Placement:
    """Join the cluster and start the run's actors on it: the body (an oracle that is not
    generative: head workers load no model) and the workers, which load in the background."""
    generative = oracle_kind(config.oracle.kind).generative
    connect(settings, address)
    transport = RayTransport()
    count, use_gpu = plan_workers(ray.cluster_resources(), ray.available_resources(),
                                  settings, body=not generative)
    body = None if generative else RemoteBody(start_body(config, settings, use_gpu), settings,
                                              transport)
    head = None if body is None else HeadRef([body.head_ref], body.actor)  # no model
    pool = start_pool(config, settings, count, use_gpu, setup, head)
    return Placement(transport, pool, body, use_gpu)
