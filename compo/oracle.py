"""The likelihood comparison oracle (Definition 3.1), exact and cheap per perturbation.

Only the output layer W is perturbed, so the body runs once per iteration (HeadInputs)
and perturbed logits are base logits + s * r * (h z^T), s the family's logit scale
(compo/model/head.py; the lm_head bias does not move). The vote hinges on the tiny change
of each sequence's log-prob, so it is computed directly, never as a difference of two
large sums:
  change(token) = e[target] - log sum_v p_v exp(e_v)
               = e[target] - log1p(sum_v p_v * expm1(e_v))
with e = s*r*(h z^T) in float32 (through the soft-cap identity for capped models) and
p = softmax(base logits). Low-rank directions (compo.directions) make h z^T as
((h B^T) A) / sqrt(r), never a dense z (compo/directions/products.py).

With compo.perturb.target other than head, weights of the last k layers move too (the
MLPs', or another target's of compo/model/targets/): the master
is the stack of compo/model/layout.py, the body runs once up to the first moved layer, and
per direction the tail (compo/model/tail.py) reruns to h'; then
  e = s * ((h' - h) W^T + r h' z^T)
the exact pre-cap change of the logits under W + r z, with h' - h the float32 difference of
the two tail outputs (never of two sets of logits).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from compo.config import ComPOConfig
from compo.data.formats import TokenizedPair
from compo.directions.products import fused_applies, fused_sums, low_rank_group, product_blocks
from compo.errors import ConfigError
from compo.model.head import Head, head_of
from compo.model.layout import Layout, layout_of, model_tensors
from compo.model.loading import DTYPES
from compo.model.scoring import (
    HeadInputs,
    head_inputs,
    pair_sequences,
    segment_sums,
    sequence_logprobs,
)
from compo.model.tail import TAIL_DTYPES, Tail, TailBatch, map_tensors
from compo.perturbation import (
    block_budget,
    direction_chunks,
    direction_key,
    normals,
    plan_blocks,
    table_tensor,
)


@dataclass
class HeadFeed:
    """What the body sends the moved parameters, once per iteration (no weights in it)."""

    inputs: HeadInputs  # hidden [N, d] model dtype (empty with moved MLPs), targets, segment
    tail_batches: list[TailBatch] | None = None  # the tail's inputs (moved MLPs only)

    def to(self, device: torch.device | str) -> HeadFeed:
        """The feed with every tensor on `device` (it travels on the CPU)."""
        return map_tensors(self, lambda t: t.to(device))


@dataclass
class OracleState:
    """Per-iteration cache: everything a perturbation needs except its direction."""

    inputs: HeadInputs  # hidden [N, d] (model dtype), targets [N], segment [N]
    direction_dtype: torch.dtype  # directions are rounded to this before use
    probs: torch.Tensor  # [N, V] float32 softmax of the base logits
    base_logits: torch.Tensor | None  # [N, V] float32 capped logits (soft-capped models only)
    base_logprobs: torch.Tensor  # [S] float64
    head: Head  # bias, logit scale and soft-cap of the model family
    shape: tuple[int, int]  # (V, d) of the output layer
    master: torch.Tensor | None = None  # the stacked master [R, d] (moved MLPs only)
    tail_batches: list[TailBatch] | None = None  # the tail's inputs (moved MLPs only)

    @property
    def cap(self) -> float | None:
        return self.head.cap


def build_state(inputs: HeadInputs, weight: torch.Tensor, head: Head,
                direction_dtype: torch.dtype) -> OracleState:
    """Base logits under the float32 master weight [V, d], softmax, base log-probs."""
    logits = head.logits(inputs.hidden, weight)  # [N, V] float32
    logprobs = logits.log_softmax(-1)
    picked = logprobs.gather(1, inputs.targets[:, None]).squeeze(1).double()
    base = segment_sums(picked, inputs.segment, inputs.num_sequences)
    return OracleState(
        inputs=inputs, direction_dtype=direction_dtype, probs=logprobs.exp_(),
        base_logits=logits if head.cap is not None else None, base_logprobs=base, head=head,
        shape=tuple(weight.shape),
    )


def product_operand(hidden: torch.Tensor, direction_dtype: torch.dtype) -> torch.Tensor:
    """hidden [N, d] as exact_products multiplies it, converted once per call, not per chunk:
    bf16 on CUDA with bf16 directions (exact products), float32 otherwise."""
    if hidden.is_cuda and hidden.dtype == direction_dtype != torch.float32:
        return hidden
    return hidden.float()


def exact_products(hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """h z^T for P directions: hidden [N, d], rows [P, r, d] -> [P, N, r] float32.

    With bf16 inputs on CUDA the products are exact and accumulate in float32.
    """
    count, width = rows.shape[0], rows.shape[1]
    flat = rows.reshape(count * width, -1)
    if hidden.is_cuda and hidden.dtype == flat.dtype != torch.float32:
        products = torch.mm(hidden, flat.T, out_dtype=torch.float32)
    else:
        products = hidden.float() @ flat.float().T
    return products.view(-1, count, width).transpose(0, 1)


def logit_change(products: torch.Tensor, radius: float, base: torch.Tensor | None,
                 cap: float | None) -> torch.Tensor:
    """Perturbed minus base logits; with soft-capping, via a cancellation-free identity."""
    if cap is None:
        return products * radius
    # base holds capped logits cap*tanh(x), so tanh(x) = base / cap, and
    # tanh(x + e) - tanh(x) = tanh(e) (1 - tanh(x)^2) / (1 + tanh(x) tanh(e))
    t_base, t_step = base / cap, torch.tanh(products * (radius / cap))
    return cap * t_step * (1 - t_base * t_base) / (1 + t_base * t_step)


def logprob_changes(state: OracleState, keys: Sequence[int], radius: float,
                    chunk_rows: int, fused: bool = False) -> torch.Tensor:
    """Change of each sequence's log-prob [P, S] float64 when W moves by radius * z(key).

    fused: one Triton kernel generates z tile by tile in registers and reduces (CUDA);
    otherwise directions come in blocks of chunk_rows rows and torch does the rest.
    """
    if fused:
        from compo.kernels.fused import fused_token_changes

        at_target, spread = fused_token_changes(
            state.inputs.hidden, keys, table_tensor(state.probs.device), state.probs,
            state.inputs.targets, radius, state.base_logits, state.cap)
    else:
        at_target, spread = token_changes(state, keys, radius, chunk_rows)
    return sequence_totals(state, at_target, spread)


def sequence_totals(state: OracleState, at_target: torch.Tensor, spread: torch.Tensor
                    ) -> torch.Tensor:
    """Per-token changes [P, N] summed per sequence: [P, S] float64."""
    per_token = at_target.double() - torch.log1p(spread.double())  # [P, N]
    return segment_sums(per_token, state.inputs.segment, state.base_logprobs.numel())


def tail_logprob_changes(state: OracleState, tail: Tail, layout: Layout, keys: Sequence[int],
                         radius: float, chunk_rows: int, block_elements: int) -> torch.Tensor:
    """[P, S] float64 changes when the output layer and the MLPs of the last layers move by
    radius * z(key): the tail reruns for groups of directions (as many as block_elements
    moved values hold), the body not at all."""
    moved_elements = (layout.shape[0] - layout.head.rows) * layout.width
    per_group = max(1, block_elements // moved_elements)
    out = []
    for start in range(0, len(keys), per_group):
        group = keys[start : start + per_group]
        moved = [moved_tensors(layout, state.master, key, radius, tail.dtype) for key in group]
        hidden = tail.head_inputs(state.tail_batches, moved)  # [P, N, d]
        out.append(sequence_totals(state, *tail_token_changes(state, hidden, group, radius,
                                                              chunk_rows)))
    return torch.cat(out)


def token_changes(state: OracleState, keys: Sequence[int], radius: float,
                  chunk_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token [P, N] float32: the target's logit change and sum_v p_v expm1(change_v),
    accumulated over blocks of chunk_rows output rows."""
    hidden = product_operand(state.inputs.hidden, state.direction_dtype)
    spread = torch.zeros(len(keys), state.inputs.targets.numel(), device=hidden.device)
    at_target = torch.zeros_like(spread)  # [P, N]
    for rows, chunk in direction_chunks(keys, state.shape, chunk_rows, hidden.device,
                                        state.direction_dtype):
        base = None if state.base_logits is None else state.base_logits[:, rows]
        change = logit_change(exact_products(hidden, chunk), radius, base, state.cap)
        accumulate(state, rows, change, at_target, spread)
    return at_target, spread


def low_rank_changes(state: OracleState, keys: Sequence[int], radius: float, rank: int,
                     budget: int) -> torch.Tensor:
    """logprob_changes for low-rank directions: h z^T = ((h B^T) A) / sqrt(r) per block of
    rows (compo/directions/products.py), then the same cancellation-free change."""
    if fused_applies(state.probs, state.base_logits):  # CPU, no soft-cap: one compiled pass
        return sequence_totals(state, *fused_sums(state.inputs.hidden, state.probs,
                                                  state.inputs.targets, keys, rank, radius))
    spread = torch.zeros(len(keys), state.inputs.targets.numel(), device=state.probs.device)
    at_target = torch.zeros_like(spread)  # [P, N]
    for rows, products in product_blocks(state.inputs.hidden, keys, state.shape, rank, budget):
        base = None if state.base_logits is None else state.base_logits[:, rows]
        accumulate(state, rows, logit_change(products, radius, base, state.cap), at_target,
                   spread)
    return sequence_totals(state, at_target, spread)


def accumulate(state: OracleState, rows: slice, change: torch.Tensor,
               at_target: torch.Tensor, spread: torch.Tensor) -> None:
    """Add one block of output rows' logit changes [P, N, r] into at_target and spread."""
    local = state.inputs.targets - rows.start  # target token's column inside this block
    inside = (local >= 0) & (local < change.shape[2])
    column = local.clamp(0, change.shape[2] - 1).expand(change.shape[0], -1)[..., None]
    picked = change.gather(2, column).squeeze(2)
    at_target += torch.where(inside, picked, torch.zeros_like(picked))
    spread += (state.probs[:, rows] * change.expm1_()).sum(-1)  # change is a fresh tensor


def moved_tensors(layout: Layout, master: torch.Tensor, key: int, radius: float,
                  dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The MLP tensors of the stack moved by radius * z(key), by name, in `dtype`: each
    block's values start at element block.start * d of the direction."""
    moved = {}
    for block in layout.moved_layers:
        z = normals([key], block.start * layout.width, block.rows * layout.width,
                    master.device)[0].view(block.rows, layout.width).to(dtype)
        start = layout.tensor(master, block).to(dtype)
        moved[block.name] = start + radius * (z.T if block.transposed else z)
    return moved


def tail_token_changes(state: OracleState, hidden: torch.Tensor, keys: Sequence[int],
                       radius: float, chunk_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Like token_changes when the head input also moved (to `hidden` [P, N, d], one per
    direction): pre-cap change s * ((h' - h) W^T + r h' z^T), never a difference of two
    sets of logits; h' - h is the float32 difference of the two tail outputs."""
    shift = (hidden - state.inputs.hidden).float()  # [P, N, d], from the tail's dtype
    hidden = hidden.float()
    spread = torch.zeros(len(keys), hidden.shape[1], device=hidden.device)  # [P, N]
    at_target = torch.zeros_like(spread)
    for rows, chunk in direction_chunks(keys, state.shape, chunk_rows, hidden.device):
        pre = shift @ state.master[rows].T + radius * torch.bmm(hidden, chunk.transpose(1, 2))
        base = None if state.base_logits is None else state.base_logits[:, rows]
        change = logit_change(pre * state.head.scale, 1.0, base, state.cap)  # [P, N, r]
        accumulate(state, rows, change, at_target, spread)
    return at_target, spread


def use_fused(products: str, hidden: torch.Tensor) -> bool:
    """products 'auto': fused on CUDA with compute capability >= 8.0, triton installed and
    d % 4 == 0 (else eager, with one info line saying why), never Triton's CPU interpreter
    (a test tool, ~100x slower than eager); 'fused' insists (a clear error where it cannot)."""
    if products == "eager":
        return False
    from compo.kernels.fused import auto_reason, explain_eager, fused_available

    if products == "fused":
        return fused_available(hidden.device, required=True)
    reason = auto_reason(hidden.device, hidden.shape[-1])
    if reason is not None:
        explain_eager(reason)
    return reason is None


def pair_improved(changes: torch.Tensor) -> torch.Tensor:
    """Per pair [K] bool: log pi(y+) rose and log pi(y-) fell (Definition 3.1)."""
    return (changes[0::2] > 0) & (changes[1::2] < 0)


def combine(improved: torch.Tensor, rule: str) -> int:
    """Vote for a batch of pairs: -1 (perturbed is better) or +1."""
    if rule == "any":
        better = bool(improved.any())
    elif rule == "all":
        better = bool(improved.all())
    elif rule == "majority":
        better = int(improved.sum()) * 2 > improved.numel()
    else:
        raise ValueError(f"unknown vote rule {rule!r}; use any, all or majority")
    return -1 if better else 1


class LikelihoodOracle:
    """Votes of perturbations (seed, iteration, index) on a batch of preference pairs."""

    def __init__(self, model, config: ComPOConfig, pad_id: int, batch_size: int = 8):
        self.model, self.config = model, config
        self.pad_id, self.batch_size = pad_id, batch_size
        self.head = head_of(model)
        self.direction_dtype = DTYPES[config.direction_dtype]
        self.layout = layout_of(model, config.perturb)
        self.tail = (Tail(model, self.layout, dtype=TAIL_DTYPES[config.perturb.tail_dtype])
                     if self.layout.moved_layers else None)
        if self.tail is not None:
            if config.products == "fused":
                raise ConfigError("compo.products: fused computes the output layer's votes "
                                  "only; with compo.perturb.target other than head use auto "
                                  "or eager")
            self.tail.check()

    def prepare(self, pairs: Sequence[TokenizedPair], weight: torch.Tensor) -> OracleState:
        """Run the model body once for these pairs; `weight` is the float32 master (the
        stacked [R, d] of compo/model/layout.py; the output layer alone when k = 0)."""
        return self.state(self.feed(pairs), weight)

    def feed(self, pairs: Sequence[TokenizedPair]) -> HeadFeed:
        """The body's part: run the model up to what the moved parameters consume."""
        if self.model is None:
            raise TypeError("this oracle holds only the moved parameters: the body feeds it")
        sequences = pair_sequences(pairs)
        if self.tail is None:
            return HeadFeed(head_inputs(self.model, sequences, self.pad_id, self.batch_size))
        batches, targets = self.tail.prepare(sequences, self.pad_id, self.batch_size)
        return HeadFeed(targets, batches)

    def state(self, feed: HeadFeed, weight: torch.Tensor) -> OracleState:
        """The moved parameters' part: the iteration's cache from the body's feed."""
        if feed.tail_batches is None:
            return build_state(feed.inputs, weight, self.head, self.direction_dtype)
        tensors = self.layout.tensors(weight)
        hidden = self.tail.head_input(feed.tail_batches, tensors)
        targets = feed.inputs
        inputs = HeadInputs(hidden, targets.targets, targets.segment, targets.num_sequences)
        state = build_state(inputs, tensors[self.layout.head.name], self.head, torch.float32)
        state.master, state.tail_batches = weight, feed.tail_batches
        return state

    def detached(self) -> LikelihoodOracle:
        """This oracle without the model: the head, the layout and the tail's own copies
        (what a head worker holds); it votes on what a body feeds it."""
        head_only = copy.copy(self)
        head_only.model = None
        head_only.tail = None if self.tail is None else self.tail.detached()
        return head_only

    def changes(self, state: OracleState, seed: int, iteration: int,
                indices: Sequence[int]) -> torch.Tensor:
        """Log-prob change per sequence [P, S] for the given perturbation indices."""
        keys = [direction_key(seed, iteration, index) for index in indices]
        if state.tail_batches is not None:
            block = block_budget(self.config.block_elements, state.probs.device)
            return tail_logprob_changes(state, self.tail, self.layout, keys,
                                        self.config.radius, self.chunk_rows(state), block)
        step = self.config.radius * state.head.scale  # the logit change is s * r * (h z^T)
        if self.config.directions.kind == "low_rank":  # the one place the family matters
            return low_rank_changes(state, keys, step, self.config.directions.rank,
                                    block_budget(self.config.block_elements, state.probs.device))
        return logprob_changes(state, keys, step, self.chunk_rows(state), self.fused(state))

    def votes(self, state: OracleState, seed: int, iteration: int,
              indices: Sequence[int]) -> torch.Tensor:
        """Votes (int8, -1 / +1) for the given perturbation indices."""
        per_group = self.group_size(state, len(indices))
        out = []
        for start in range(0, len(indices), per_group):
            changes = self.changes(state, seed, iteration, indices[start : start + per_group])
            out += [combine(pair_improved(row), self.config.vote_rule) for row in changes]
        return torch.tensor(out, dtype=torch.int8)

    def group_size(self, state: OracleState, count: int) -> int:
        """Directions per call: as many as a block of directions holds (eager), or as
        many as one launch's partial sums hold (fused: no directions are stored)."""
        budget = block_budget(self.config.block_elements, state.probs.device)
        if self.config.directions.kind == "low_rank":  # factors only, never a dense block
            return low_rank_group(count, self.config.directions.rank, state.shape, budget)
        if state.tail_batches is None and self.fused(state):
            from compo.kernels.fused import fused_group, tile_for

            tile = tile_for(state.inputs.hidden.dtype, state.cap)
            return max(1, min(count, fused_group(state.probs.shape[0], state.shape[0], budget,
                                                 tile)))
        return plan_blocks(count, state.shape, budget, state.probs.device)[0]

    def fused(self, state: OracleState) -> bool:
        """Whether the fused kernel computes this state's changes (config.products)."""
        return use_fused(self.config.products, state.inputs.hidden)

    def chunk_rows(self, state: OracleState) -> int:
        """Output-layer rows per generated block."""
        return plan_blocks(1, state.shape, self.config.block_elements, state.probs.device)[1]

    def logprobs(self, state: OracleState, weight: torch.Tensor,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Log-probs [S] of the prepared sequences under another master (head math in
        `dtype`)."""
        if state.tail_batches is None:
            return sequence_logprobs(state.inputs, weight, state.head, dtype)
        return self.tail.logprobs(state.tail_batches, state.inputs, weight, state.head, dtype)

    def master_weight(self) -> torch.Tensor:
        """The float32 master: a copy of everything the directions move, stacked [R, d]."""
        return self.layout.stack(model_tensors(self.model, self.layout)).clone()
