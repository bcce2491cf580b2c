"""`compo plan`'s figures: the run config and the command's options in, per role memory,
bytes and an estimate of seconds per iteration out (a JSON-ready dict)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, ValidationError

from compo.config import StrictModel, TrainConfig
from compo.errors import ConfigError
from compo.oracles import oracle_kind
from compo.plan import roles, speed
from compo.plan.hardware import (
    GIB,
    GPU_PROCESS_GIB,
    GPUS,
    HOST_PROCESS_GIB,
    NETWORK_GBIT_S,
    TOKENIZER_GIB,
)
from compo.plan.shapes import ModelShapes, read_shapes

MAX_GPUS_PER_ROLE = 64  # the most GPUs the plan tries for one body or generation worker


class PlanOptions(StrictModel):
    """The command's options (validated: each names its flag when wrong)."""

    model: str = Field(description="a model directory (its config.json) or a known name")
    workers: int = Field(gt=0, description="head workers (likelihood) or generation workers")
    gpu: Literal["H100", "A100", "A40"] = "H100"
    gpu_memory_gib: float | None = Field(None, gt=0, description="default: the GPU kind's")
    tokens: int | None = Field(None, gt=0, description="N; default batch_size x 2 x "
                               "data.max_completion_tokens (every response at its limit)")
    gpus_per_body: int | None = Field(None, gt=0, description="default: ray.gpus_per_body "
                                      "when the config has it, else the fewest that fit")
    gpus_per_worker: int | None = Field(None, gt=0, description="generation workers; default "
                                        "ray.gpus_per_worker if >= 1, else the fewest that fit")
    host_memory_gib: float = Field(64.0, gt=0, description="the coordinator's machine")
    network_gbit_s: float = Field(NETWORK_GBIT_S, gt=0)


def parse_options(values: dict) -> PlanOptions:
    """PlanOptions from the parsed flags; a bad value: one line naming its flag."""
    try:
        return PlanOptions(**values)
    except ValidationError as error:
        first = error.errors()[0]
        flag = "--" + str(first["loc"][0]).replace("_", "-")
        raise ConfigError(f"{flag}: {first['msg'].lower()} (got {first.get('input')!r}); "
                          "e.g. --workers 30 --gpu-memory-gib 80") from None


def run_of(config: TrainConfig, tokens: int | None) -> roles.Run:
    """The sizes of one iteration of the run, from its config."""
    data, pairs = config.data, config.batch_size
    completions = tokens or pairs * 2 * data.max_completion_tokens
    return roles.Run(
        kind=config.oracle.kind, generative=oracle_kind(config.oracle.kind).generative,
        dtype=config.model.dtype,
        perturbations=config.compo.num_perturbations, tokens=completions,
        body_tokens=pairs * 2 * data.max_prompt_tokens + completions, pairs=pairs,
        sequence=data.max_prompt_tokens + data.max_completion_tokens,
        body_batch=min(config.model.batch_size, 2 * pairs),
        last_layers=config.compo.perturb.last_layers,
        tail_dtype=config.compo.perturb.tail_dtype, block_elements=config.compo.block_elements,
        prompt_tokens=data.max_prompt_tokens, new_tokens=config.oracle.max_new_tokens,
        generation_batch=config.oracle.generation_batch_size)


def role(parts: dict[str, int], gpus: int, instances: int, overhead_gib: float,
         limit_gib: float) -> dict:
    """One role's entry: GiB per GPU (or per host for gpus 0) with the fixed overhead."""
    gib = sum(parts.values()) / GIB + overhead_gib
    return {"gib": round(gib, 2), "gpus": gpus, "instances": instances,
            "fits": gib <= limit_gib, "overhead_gib": overhead_gib,
            "parts_gib": {name: round(size / GIB, 3) for name, size in parts.items()}}


def gpu_count(parts_for, limit_gib: float, option: int | None, config: TrainConfig,
              name: str) -> tuple[int, str]:
    """GPUs of one instance and where the number comes from: the option, ray.<name> when
    the config sets it (>= 1), else the fewest (<= MAX_GPUS_PER_ROLE) that fit."""
    ray = config.ray
    value = getattr(ray, name, None) if ray and name in ray.model_fields_set else None
    if option is not None:
        return option, f"--{name.replace('_', '-')}"
    if value is not None and value >= 1:
        return math.ceil(value), f"ray.{name}"
    for gpus in range(1, MAX_GPUS_PER_ROLE + 1):
        if sum(parts_for(gpus).values()) / GIB + GPU_PROCESS_GIB <= limit_gib:
            return gpus, "the fewest that fit"
    return MAX_GPUS_PER_ROLE, "none fit"


def likelihood_roles(shapes: ModelShapes, run: roles.Run, config: TrainConfig,
                     options: PlanOptions, limit: float) -> dict:
    """The body (sharded over its GPUs) and the head workers (one GPU each)."""
    gpus, source = gpu_count(lambda g: roles.body(shapes, run, g), limit,
                             options.gpus_per_body, config, "gpus_per_body")
    body = role(roles.body(shapes, run, gpus), gpus, 1, GPU_PROCESS_GIB, limit)
    head = roles.head_worker(shapes, run, options.workers)
    return {"body": {**body, "gpus_from": source},
            "head_worker": role(head, 1, options.workers, GPU_PROCESS_GIB, limit)}


def generation_roles(shapes: ModelShapes, run: roles.Run, config: TrainConfig,
                     options: PlanOptions, limit: float) -> tuple[dict, int]:
    """The generation workers (each sharded over its GPUs) and their generation batch."""
    free = int((limit - GPU_PROCESS_GIB) * GIB)
    per_worker = math.ceil((run.perturbations + 1) * run.pairs / options.workers)

    def sized(g: int) -> tuple[dict[str, int], int]:
        return roles.generation_worker(shapes, run, g, free * g, per_worker)

    gpus, source = gpu_count(lambda g: sized(g)[0], limit, options.gpus_per_worker, config,
                             "gpus_per_worker")
    parts, batch = sized(gpus)
    worker = role(parts, gpus, options.workers, GPU_PROCESS_GIB, limit)
    return {"generation_worker": {**worker, "gpus_from": source}}, batch


def make_plan(config: TrainConfig, options: PlanOptions) -> dict:
    """Every figure of `compo plan` for this run config and these options."""
    shapes = read_shapes(options.model, config.compo.perturb)
    run, gpu = run_of(config, options.tokens), GPUS[options.gpu]
    limit = options.gpu_memory_gib or gpu.memory_gib
    found = {"coordinator": role(roles.coordinator(shapes), 0, 1,
                                 HOST_PROCESS_GIB + TOKENIZER_GIB, options.host_memory_gib)}
    if not run.generative:
        found |= likelihood_roles(shapes, run, config, options, limit)
        seconds, batch = speed.likelihood_seconds(shapes, run, gpu, options.workers), None
    else:
        workers, batch = generation_roles(shapes, run, config, options, limit)
        found |= workers
        seconds = speed.generation_seconds(shapes, run, gpu, options.workers, batch)
    kept = speed.kept_fraction(config.compo.clip, shapes.moved_rows * shapes.hidden)
    sent = speed.bytes_per_iteration(shapes, run, options.workers, kept)
    seconds["network"] = speed.network_seconds(sent, options.network_gbit_s)
    seconds["total"] = sum(seconds.values())
    return summary(shapes, run, options, found, sent, seconds, limit, batch, kept)


def summary(shapes: ModelShapes, run: roles.Run, options: PlanOptions, found: dict,
            sent: dict, seconds: dict, limit: float, batch: int | None, kept: float) -> dict:
    """The plan as one JSON-ready dict (the last line of `compo plan --json`)."""
    return {
        "model": options.model, "params": shapes.params, "vocab": shapes.vocab,
        "hidden": shapes.hidden, "moved_elements": shapes.moved_rows * shapes.hidden,
        "dtype": run.dtype, "oracle": run.kind, "perturbations": run.perturbations,
        "tokens": run.tokens, "workers": options.workers, "gpu": options.gpu,
        "gpu_memory_gib": limit, "host_memory_gib": options.host_memory_gib,
        "network_gbit_s": options.network_gbit_s, "generation_batch": batch,
        "kept_fraction": round(kept, 5),
        "roles": found,
        "gpus_total": sum(r["gpus"] * r["instances"] for r in found.values()),
        "bytes_per_iteration": sum(sent.values()), "bytes_by_kind": sent,
        "seconds_per_iteration_estimate": {k: round(v, 4) for k, v in seconds.items()},
        "fits": all(r["fits"] for r in found.values()),
    }
