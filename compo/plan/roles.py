"""Memory of each role in bytes, part by part, as the code allocates it (OracleState,
plan_blocks, the tail, generation batches), without the fixed per-process overhead."""

from __future__ import annotations

import math
from dataclasses import dataclass

from compo.perturbation import BLOCK_ELEMENTS
from compo.plan.shapes import ModelShapes
from compo.service_oracle.memory import LOGIT_COPIES, MAX_AUTO_BATCH, fitting_batch

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}
INDEX_BYTES = 16  # per completion token: its target and its sequence number (int64 each)
PRODUCT_COPIES = 4  # [P, N, rows] float32 per block: h z^T, its change, p * change, sums


@dataclass(frozen=True)
class Run:
    """The run as the plan sees it: sizes from the run config and the command's options."""

    kind: str  # oracle.kind
    generative: bool  # its workers generate (hold the model); else a body feeds head workers
    dtype: str  # model.dtype
    perturbations: int  # m
    tokens: int  # N: completion tokens of one iteration's pairs (both responses)
    body_tokens: int  # tokens the body reads per iteration (prompts + completions)
    pairs: int  # pairs per iteration (batch_size)
    sequence: int  # longest sequence of a body batch: prompt + completion limits
    body_batch: int  # sequences per forward pass (model.batch_size)
    last_layers: int  # k: the tail's layers (compo.perturb.last_layers; 0 with target head)
    tail_dtype: str
    block_elements: int | None  # compo.block_elements (None: the CUDA default)
    prompt_tokens: int  # data.max_prompt_tokens (generation: the cache's prompt part)
    new_tokens: int  # oracle.max_new_tokens
    generation_batch: int | None  # oracle.generation_batch_size (None: auto)

    @property
    def width(self) -> int:
        return BYTES[self.dtype]


def body(shapes: ModelShapes, run: Run, gpus: int) -> dict[str, int]:
    """The body role on one of its `gpus`: its share of the weights (device_map), the
    activations of one forward batch, and the head inputs it sends."""
    per_token = 4 * shapes.hidden + 3 * shapes.widest + shapes.heads * run.sequence
    return {
        "weights": math.ceil(shapes.loaded_params * run.width / gpus),
        "activations": run.body_batch * run.sequence * per_token * run.width,
        "head_inputs": run.tokens * (shapes.hidden * run.width + INDEX_BYTES),
    }


def direction_blocks(shapes: ModelShapes, run: Run, per_worker: int) -> int:
    """One block of directions (float32) and the products made from it (plan_blocks)."""
    block = run.block_elements or BLOCK_ELEMENTS["cuda"]
    rows = max(1, min(shapes.vocab, block // shapes.hidden))
    group = max(1, min(per_worker, block // (shapes.vocab * shapes.hidden)))
    products = PRODUCT_COPIES * group * run.tokens * rows * 4
    if run.last_layers:  # the moved layer tensors of a group of directions, and its h'
        moved = (shapes.moved_rows - shapes.vocab) * shapes.hidden
        tail_group = max(1, block // moved)
        products += tail_group * (moved * BYTES[run.tail_dtype] + 3 * run.tokens *
                                  shapes.hidden * 4)
    operand = run.tokens * shapes.hidden * 4  # hidden as float32 for the products
    return min(block, group * shapes.vocab * shapes.hidden) * 4 + products + operand


def head_worker(shapes: ModelShapes, run: Run, workers: int) -> dict[str, int]:
    """A head worker: the float32 master of the moved parameters, what the body sent, the
    oracle's per-iteration state, one block of directions, its row shard of the step."""
    parts = {
        "master": shapes.moved_rows * shapes.hidden * 4,
        "hidden": run.tokens * (shapes.hidden * run.width + INDEX_BYTES),
        "probs": run.tokens * shapes.vocab * 4,
        "directions": direction_blocks(shapes, run, math.ceil(run.perturbations / workers)),
        "rebuild_rows": math.ceil(shapes.moved_rows / workers) * shapes.hidden * 4,
    }
    if shapes.capped:  # soft-capped heads keep the capped base logits too
        parts["base_logits"] = run.tokens * shapes.vocab * 4
    if run.last_layers:  # the tail: its layers as loaded and as rerun, and its input
        tail = BYTES[run.tail_dtype]
        parts["tail_layers"] = shapes.tail_params * (run.width + tail)
        parts["tail_inputs"] = run.tokens * shapes.hidden * tail
    return parts


def coordinator(shapes: ModelShapes) -> dict[str, int]:
    """The coordinator (CPU): one float32 master of the moved parameters."""
    return {"master": shapes.moved_rows * shapes.hidden * 4}


def generation_worker(shapes: ModelShapes, run: Run, gpus: int, free: int,
                      per_worker: int) -> tuple[dict[str, int], int]:
    """A generation worker on one of its `gpus` and its batch (oracle.generation_batch_size,
    or sized from `free` as compo/service_oracle/memory.py does): weights, head, caches."""
    weights, master = shapes.loaded_params * run.width, shapes.vocab * shapes.hidden * 4
    parts = {"weights": math.ceil(weights / gpus), "head_master": master}
    row = ((run.prompt_tokens + run.new_tokens) * shapes.kv_elements_per_token * run.width
           + LOGIT_COPIES * 4 * shapes.vocab)
    left = free - weights - master  # free: of all its GPUs together
    batch = run.generation_batch or fitting_batch(max(0, left), row, max(1, per_worker))
    batch = min(batch, MAX_AUTO_BATCH) if run.generation_batch is None else batch
    parts["kv_cache_and_logits"] = math.ceil(batch * row / gpus)  # layers split the cache
    return parts, batch
