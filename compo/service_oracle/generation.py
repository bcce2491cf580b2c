"""Generation under a perturbed output layer: the body runs normally on the generated
tokens, the head is logits = h W^T + r h z^T (the small term accumulated in float32).

Per prompt the body encodes the prompt once per iteration (KV cache, copied to every row
of a batch, never recomputed). Dense Gaussian directions are never stored: for each
generated token, the products h_p z_p^T come from the fused row kernel on CUDA (tiles made
in registers) and from blocks of at most V / 2 values per row elsewhere, so a row costs its
logits, hidden state and KV cache, never V x d. Low-rank directions (compo.directions) keep
each row's factors A [r, V], B [r, d] and add ((h B^T) A) / sqrt(r): r (V + d) per token.
Sampling streams are functions of (run seed, iteration, perturbation, prompt) only.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from compo.config import GenerationRadius, OracleConfig
from compo.directions import DirectionsConfig, low_rank_factors
from compo.kernels.fused import fused_reason, fused_row_products
from compo.model.head import PLAIN, Head, head_input, softcap
from compo.model.loading import model_device
from compo.perturbation import (
    GOLDEN,
    LANES,
    MASK64,
    direction_key,
    direction_rows,
    mix64_int,
    table_tensor,
)

BASE_INDEX = -1  # sampling stream of the base response (perturbation indices are >= 0)
SAMPLING_SALT = 0x5EED_C0DE_5A3B_1E57  # keeps sampling streams apart from direction keys
SEED_BITS = 63  # torch.Generator seeds are taken as non-negative int64
RADIUS_DIGITS = 3  # a resolved radius keeps 3 significant digits: last-bit differences of
# the hidden states between processes never change it


def sampling_seed(seed: int, iteration: int, index: int, prompt: int) -> int:
    """Seed of the sampling stream of one response (index BASE_INDEX: the base)."""
    key = mix64_int(direction_key(seed, iteration, index) ^ SAMPLING_SALT)
    return mix64_int((key + (prompt + 1) * GOLDEN) & MASK64) >> (64 - SEED_BITS)


@dataclass
class Prefix:
    """A prompt run through the body once: its KV cache and the last position's state."""

    cache: Any  # transformers Cache of batch 1
    hidden: torch.Tensor  # [1, d], model dtype


def perturbation_products(directions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """h_p z_p^T per row of a block: directions [P, r, d], hidden [P, d] -> [P, r] float32.

    Products and sums in float32, each entry summed over d alone: the bits do not depend on
    how rows are blocked or how many rows a batch has (bf16 x bf16 products are exact).
    """
    return (directions.float() * hidden.float()[:, None, :]).sum(-1)


def block_rows(shape: tuple[int, int]) -> int:
    """Output rows per block of generated directions: a block holds at most half a row of
    logits per direction (V / 2 values), so memory never grows with V x d."""
    vocab, width = shape
    return max(1, min(vocab, vocab // (2 * width)))


def add_products_(logits: torch.Tensor, keys: Sequence[int], hidden: torch.Tensor,
                  factor: torch.Tensor | float) -> torch.Tensor:
    """logits [P, V] += factor * h_p z_p^T, factor a float or [P, 1]: on CUDA from the
    fused row kernel (directions made in registers), elsewhere from blocks of rows."""
    vocab, width = logits.shape[1], hidden.shape[1]
    if hidden.is_cuda and width % LANES == 0 and fused_reason(hidden.device) is None:
        products = fused_row_products(hidden, keys, table_tensor(hidden.device), vocab)
        return logits.add_(products.mul_(factor))
    step = block_rows((vocab, width))
    for start in range(0, vocab, step):
        end = min(vocab, start + step)
        rows = direction_rows(keys, start, end, width, hidden.device)  # [P, r, d] float32
        logits[:, start:end] += factor * perturbation_products(rows, hidden)
    return logits


def add_low_rank_products_(logits: torch.Tensor, factors: tuple[torch.Tensor, torch.Tensor],
                           hidden: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """logits [P, V] += factor * h_p z_p^T for z_p = A_p^T B_p / sqrt(r), factors A [P, r, V]
    and B [P, r, d] float32: c = h B^T / sqrt(r), then the r rows of A one at a time,
    r (V + d) multiply-adds per row, bits independent of the batch."""
    a, b = factors
    coefficients = perturbation_products(b, hidden) * (factor / math.sqrt(a.shape[1]))
    for k in range(a.shape[1]):
        logits.addcmul_(a[:, k], coefficients[:, k : k + 1])
    return logits


@dataclass
class PerturbedHead:
    """Output layer W (float32 master) plus sign_p * r * z(key_p) per row, with the family's
    head: logits = softcap(s * (h W^T + b) + s * sign * r * h z^T). Directions are never
    stored: each token's products are made from the keys (add_products_)."""

    weight: torch.Tensor  # [V, d]
    keys: Sequence[int] | None  # one direction key per row; None: unperturbed rows
    radius: float
    head: Head = PLAIN
    signs: torch.Tensor | None = None  # [P] of +1 / -1 (antithetic rows); None: all +1
    copies: int = 1  # rows of an unperturbed head (keys None)
    directions: DirectionsConfig = field(default_factory=DirectionsConfig)
    factors: tuple[torch.Tensor, torch.Tensor] | None = None  # low rank: made on first use

    @property
    def rows(self) -> int:
        return self.copies if self.keys is None else len(self.keys)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits [P, V] of hidden states [P, d] (model dtype)."""
        logits = self.head.pre_cap(hidden.float(), self.weight)
        if self.keys is not None:
            factor = self.radius * self.head.scale
            if self.signs is not None:
                factor = factor * self.signs[:, None]
            if self.directions.kind == "low_rank":
                add_low_rank_products_(logits, self.low_rank(), hidden, factor)
            else:
                add_products_(logits, self.keys, hidden, factor)
        return softcap(logits, self.head.cap)

    def low_rank(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows' factors A [P, r, V], B [P, r, d] float32, made once per head."""
        if self.factors is None:
            self.factors = low_rank_factors(self.keys, tuple(self.weight.shape),
                                            self.directions.rank, self.weight.device)
        return self.factors


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


def perturbation_head(weight: torch.Tensor, keys: Sequence[int], radius: float, head: Head,
                      signs: Sequence[int] | None = None,
                      directions: DirectionsConfig | None = None) -> PerturbedHead:
    """The head of several perturbations (one row per key; signs -1: antithetic rows),
    directions of the given family (default: dense Gaussian)."""
    sign = None if signs is None else torch.tensor(signs, dtype=torch.float32,
                                                   device=weight.device)
    return PerturbedHead(weight, list(keys), radius, head, sign,
                         directions=directions or DirectionsConfig())


def significant(value: float, digits: int = RADIUS_DIGITS) -> float:
    """`value` rounded to `digits` significant digits."""
    return float(f"{value:.{digits - 1}e}")


def generation_radius(config: GenerationRadius, hidden: Sequence[torch.Tensor],
                      scale: float = 1.0) -> float:
    """r for generation: raw, or value / (scale * RMS ||h||) over the prompts' last hidden
    states, so each logit moves by ~value nats (std): h z_v ~ N(0, ||h||^2) for z ~ N(0, I)."""
    if config.mode == "raw":
        return config.value
    norms = torch.cat([h.double().reshape(-1, h.shape[-1]).norm(dim=-1).cpu() for h in hidden])
    rms = float(norms.pow(2).mean().sqrt())
    if not rms > 0:
        raise ValueError("the prompts' hidden states are zero: use oracle.radius.mode raw")
    return significant(config.value / (abs(scale) * rms))
