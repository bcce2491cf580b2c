"""`compo plan`'s figures: the run config and the command's options in, per role memory,
bytes and an estimate of seconds per iteration out (a JSON-ready dict)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, ValidationError

from compo.config import StrictModel, TrainConfig
from compo.errors import ConfigError
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
        kind=config.oracle.kind, dtype=config.model.dtype,
        perturbations=config.compo.num_perturbations, tokens=completions,
        body_tokens=pairs * 2 * data.max_prompt_tokens + completions, pairs=pairs,
        sequence=data.max_prompt_tokens + data.max_completion_tokens,
        body_batch=min(config.model.batch_size, 2 * pairs),
        mlp_last_layers=config.compo.perturb.mlp_last_layers,
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


def fewest_gpus(parts_for, limit_gib: float, chosen: int | None) -> int:
    """`chosen`, or the fewest GPUs (<= MAX_GPUS_PER_ROLE) on which parts_for(g) fits."""
    if chosen is not None:
        return chosen
    for gpus in range(1, MAX_GPUS_PER_ROLE + 1):
        if sum(parts_for(gpus).values()) / GIB + GPU_PROCESS_GIB <= limit_gib:
            return gpus
    return MAX_GPUS_PER_ROLE


def configured(config: TrainConfig, name: str) -> int | None:
    """ray.<name> of the run config when it is a whole number of GPUs (>= 1), else None."""
    value = getattr(config.ray, name, None) if config.ray is not None else None
    return int(value) if value is not None and value >= 1 and value == int(value) else None


def make_plan(config: TrainConfig, options: PlanOptions) -> dict:
    """Every figure of `compo plan` for this run config and these options."""
    shapes = read_shapes(options.model, config.compo.perturb.mlp_last_layers)
    run, gpu = run_of(config, options.tokens), GPUS[options.gpu]
    limit = options.gpu_memory_gib or gpu.memory_gib
    workers = options.workers
    host = roles.coordinator(shapes)
    found = {"coordinator": role(host, 0, 1, HOST_PROCESS_GIB + TOKENIZER_GIB,
                                 options.host_memory_gib)}
    if run.kind == "likelihood":
        body_gpus = fewest_gpus(lambda g: roles.body(shapes, run, g), limit,
                                options.gpus_per_body or configured(config, "gpus_per_body"))
        found["body"] = role(roles.body(shapes, run, body_gpus), body_gpus, 1,
                             GPU_PROCESS_GIB, limit)
        found["head_worker"] = role(roles.head_worker(shapes, run, workers), 1, workers,
                                    GPU_PROCESS_GIB, limit)
        seconds = speed.likelihood_seconds(shapes, run, gpu, workers)
        batch = None
    else:
        free = int((limit - GPU_PROCESS_GIB) * GIB)
        per_worker = math.ceil((run.perturbations + 1) * run.pairs / workers)

        def parts_for(g: int) -> dict[str, int]:
            return roles.generation_worker(shapes, run, g, free * g, per_worker)[0]

        chosen = options.gpus_per_worker or configured(config, "gpus_per_worker")
        worker_gpus = fewest_gpus(parts_for, limit, chosen)
        parts, batch = roles.generation_worker(shapes, run, worker_gpus, free * worker_gpus,
                                               per_worker)
        found["generation_worker"] = role(parts, worker_gpus, workers, GPU_PROCESS_GIB, limit)
        seconds = speed.generation_seconds(shapes, run, gpu, workers, batch)
    kept = speed.kept_fraction(config.compo.clip, shapes.moved_rows * shapes.hidden)
    sent = speed.bytes_per_iteration(shapes, run, workers, kept)
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
