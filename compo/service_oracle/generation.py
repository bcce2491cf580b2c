"""Generation under a perturbed output layer: the body runs normally on the generated
tokens, the head is logits = h W^T + r h z^T (the small term in float32).

Per prompt the body encodes the prompt once (KV cache, reused by every row of a batch).
Sampling streams are functions of (run seed, iteration, perturbation, prompt) only.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from compo.config import ComPOConfig, OracleConfig
from compo.model.head import PLAIN, Head, head_input, softcap
from compo.model.loading import DTYPES, model_device
from compo.perturbation import GOLDEN, MASK64, direction_key, direction_rows, mix64_int

BASE_INDEX = -1  # sampling stream of the base response (perturbation indices are >= 0)
SAMPLING_SALT = 0x5EED_C0DE_5A3B_1E57  # keeps sampling streams apart from direction keys
SEED_BITS = 63  # torch.Generator seeds are taken as non-negative int64


def sampling_seed(seed: int, iteration: int, index: int, prompt: int) -> int:
    """Seed of the sampling stream of one response (index BASE_INDEX: the base)."""
    key = mix64_int(direction_key(seed, iteration, index) ^ SAMPLING_SALT)
    return mix64_int((key + (prompt + 1) * GOLDEN) & MASK64) >> (64 - SEED_BITS)


@dataclass
class Prefix:
    """A prompt run through the body once: its KV cache and the last position's state."""

    cache: Any  # transformers Cache of batch 1
    hidden: torch.Tensor  # [1, d], model dtype


@dataclass
class PerturbedHead:
    """Output layer W (float32 master) plus r * z per row, with the family's head:
    logits = softcap(s * (h W^T + b) + s * r * h z^T)."""

    weight: torch.Tensor  # [V, d]
    directions: torch.Tensor | None  # [P, V, d] float32; None: the base (one row)
    radius: float
    head: Head = PLAIN

    @property
    def rows(self) -> int:
        return 1 if self.directions is None else self.directions.shape[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits [P, V] of hidden states [P, d]."""
        hidden = hidden.float()
        logits = self.head.pre_cap(hidden, self.weight)
        if self.directions is not None:
            step = self.radius * self.head.scale
            logits += step * torch.einsum("pvd,pd->pv", self.directions, hidden)
        return softcap(logits, self.head.cap)


@dataclass
class Generation:
    """Generated token ids per row (EOS included when reached), and logits if kept."""

    tokens: list[list[int]]
    logits: list[torch.Tensor] = field(default_factory=list)  # per step [P, V] float32


@torch.no_grad()
def cache_argument(model: nn.Module) -> str:
    """The name under which the model's forward takes a KV cache (transformers renames it)."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def step_hidden(model: nn.Module, ids: torch.Tensor, cache: Any) -> torch.Tensor:
    """The output layer's input at the last position [B, d]; `cache` is filled in place."""
    kwargs = {cache_argument(model): cache}
    return head_input(model, input_ids=ids, use_cache=True, **kwargs)[:, -1]


def encode_prefix(model: nn.Module, prompt_ids: Sequence[int]) -> Prefix:
    """Run the body once over the prompt, keeping the KV cache."""
    if not prompt_ids:
        raise ValueError("cannot generate from an empty prompt")
    ids = torch.tensor([list(prompt_ids)], device=model_device(model))
    cache = DynamicCache(config=model.config)
    return Prefix(cache, step_hidden(model, ids, cache))


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the tail of each row beyond the smallest set holding top_p of the mass."""
    if top_p >= 1:
        return probs
    ordered, order = probs.sort(-1, descending=True)
    ordered[(ordered.cumsum(-1) - ordered) >= top_p] = 0  # the top token always stays
    return torch.zeros_like(probs).scatter_(-1, order, ordered)


def pick_tokens(logits: torch.Tensor, config: OracleConfig,
                generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Next token per row [P]: greedy at temperature 0, else seeded nucleus sampling."""
    if config.temperature == 0:
        return logits.argmax(-1)
    probs = nucleus((logits / config.temperature).softmax(-1), config.top_p).cpu()
    picked = [torch.multinomial(row, 1, generator=gen) for row, gen in zip(probs, generators,
                                                                           strict=True)]
    return torch.cat(picked).to(logits.device)


@torch.no_grad()
def generate(model: nn.Module, prefix: Prefix, head: PerturbedHead, config: OracleConfig,
             generators: Sequence[torch.Generator], eos_id: int | None,
             keep_logits: bool = False) -> Generation:
    """Up to max_new_tokens per row under the head's logits, one body pass per token."""
    rows = head.rows
    cache = copy.deepcopy(prefix.cache)
    if rows > 1:
        cache.batch_repeat_interleave(rows)
    hidden = prefix.hidden.expand(rows, -1)
    done = torch.zeros(rows, dtype=torch.bool, device=hidden.device)
    steps, kept = [], []
    for step in range(config.max_new_tokens):
        logits = head.logits(hidden)
        if keep_logits:
            kept.append(logits)
        tokens = pick_tokens(logits, config, generators)
        if eos_id is not None:
            tokens = torch.where(done, eos_id, tokens)
            done |= tokens == eos_id
        steps.append(tokens)
        if bool(done.all()) or step + 1 == config.max_new_tokens:
            break
        hidden = step_hidden(model, tokens[:, None], cache)
    return Generation([until_eos(row, eos_id) for row in torch.stack(steps, 1).tolist()], kept)


def until_eos(tokens: list[int], eos_id: int | None) -> list[int]:
    """Tokens up to and including the first EOS."""
    if eos_id is None or eos_id not in tokens:
        return tokens
    return tokens[: tokens.index(eos_id) + 1]


def perturbation_head(weight: torch.Tensor, keys: Sequence[int], compo: ComPOConfig,
                      head: Head) -> PerturbedHead:
    """The head of several perturbations, directions rounded like the estimator's."""
    rows, cols = weight.shape
    directions = direction_rows(keys, 0, rows, cols, weight.device,
                                DTYPES[compo.direction_dtype]).float()
    return PerturbedHead(weight, directions, compo.radius, head)
