"""Bytes per iteration and an estimate of seconds per iteration from the performance model
(/work/shared/DESIGN.md section 5, docs/architecture.md): peak rates x EFFICIENCY."""

from __future__ import annotations

import math

from compo.config import ClipConfig
from compo.plan.hardware import EFFICIENCY, TOKEN_TEXT_BYTES, Gpu
from compo.plan.roles import INDEX_BYTES, Run
from compo.plan.shapes import ModelShapes

VOTE_BYTES = 5  # int32 index + int8 vote
STEP_ENTRY_BYTES = 8  # int32 position + float32 value


def kept_fraction(clip: ClipConfig, elements: int) -> float:
    """Share of the moved entries an accepted step keeps (compo.clip), for a Gaussian-like
    unit vector: entries ~ N(0, 1 / elements)."""
    if clip.mode == "fraction":
        return clip.value
    sigmas = clip.value if clip.mode == "sigma" else clip.value * math.sqrt(elements)
    return math.erfc(sigmas / math.sqrt(2))


def bytes_per_iteration(shapes: ModelShapes, run: Run, workers: int, kept: float
                        ) -> dict[str, int]:
    """What travels in one (accepted) iteration, by kind."""
    moved = shapes.moved_rows * shapes.hidden
    sent = {"votes": run.perturbations * VOTE_BYTES,
            "step_broadcast": math.ceil(kept * moved) * STEP_ENTRY_BYTES * workers}
    if not run.generative:
        per_worker = run.tokens * (shapes.hidden * run.width + INDEX_BYTES)
        sent["body_to_heads"] = per_worker * workers
    else:  # every response (base and perturbed) goes to the judge as text
        responses = (run.perturbations + 1) * run.pairs * run.new_tokens
        sent["judge_requests"] = responses * TOKEN_TEXT_BYTES
    return sent


def flop_seconds(flops: float, tflops: float) -> float:
    return flops / (tflops * 1e12 * EFFICIENCY)


def likelihood_seconds(shapes: ModelShapes, run: Run, gpu: Gpu, workers: int
                       ) -> dict[str, float]:
    """The body once (its device_map GPUs run one after another), then each head worker's
    m / W directions: 2 N d V FLOPs and d V values written and read (+ the tail's FLOPs)."""
    body = flop_seconds(2 * shapes.params * run.body_tokens, gpu.bf16_tflops)
    product = flop_seconds(2 * run.tokens * shapes.hidden * shapes.vocab, gpu.bf16_tflops)
    direction = 2 * shapes.vocab * shapes.hidden * 4 / (gpu.bandwidth_gbs * 1e9 * EFFICIENCY)
    per_direction = product + direction
    if run.last_layers:
        rate = gpu.fp64_tflops if run.tail_dtype == "float64" else gpu.fp32_tflops
        per_direction += flop_seconds(2 * shapes.tail_params * run.tokens, rate)
        per_direction += flop_seconds(2 * run.tokens * shapes.hidden * shapes.vocab,
                                      gpu.fp32_tflops)
    return {"body": body, "heads": math.ceil(run.perturbations / workers) * per_direction}


def generation_seconds(shapes: ModelShapes, run: Run, gpu: Gpu, workers: int, batch: int
                       ) -> dict[str, float]:
    """A generation worker's share of (m + 1) x pairs responses in batches: a prefill, then
    one weight-reading step per new token (memory bound); no judge time."""
    rows = math.ceil((run.perturbations + 1) * run.pairs / workers)
    batches = math.ceil(rows / batch)
    weights = shapes.loaded_params * run.width
    step = weights / (gpu.bandwidth_gbs * 1e9 * EFFICIENCY)
    prefill = flop_seconds(2 * shapes.params * run.prompt_tokens * batch, gpu.bf16_tflops)
    return {"generation": batches * (prefill + run.new_tokens * step)}


def network_seconds(sent: dict[str, int], gbit_s: float) -> float:
    """Every byte of the iteration through one link of `gbit_s` (the coordinator's)."""
    return sum(sent.values()) * 8 / (gbit_s * 1e9)
