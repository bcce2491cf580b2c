"""Generative oracle: responses of perturbed output layers, judged by the oracle service.

Per iteration and prompt the body encodes the prompt once (KV cache); the base response
is generated with the master weight W, each perturbed one with logits = h W^T + r h z^T
(the small term in float32), the body running normally on the generated tokens. Pairs
(prompt, a = base, b = perturbed) go to the service; verdict b is a vote of -1 (perturbed
better), a or tie +1, abstain 0 (excluded from m and n_minus, counted in the metrics).
Sampling streams are functions of (run seed, iteration, perturbation, prompt).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import torch
from torch import nn

from compo.config import ComPOConfig, ConfigError, TrainConfig
from compo.data import TokenizedPair
from compo.modeling import DTYPES, logit_softcap, model_device
from compo.oracle import LikelihoodOracle, combine
from compo.oracle_config import OracleConfig
from compo.perturbation import GOLDEN, MASK64, direction_key, direction_rows, mix64_int
from compo.reporting import checked_run_id, service_token
from compo.scoring import softcap
from oracle_service.client import OracleServiceError, SyncOracleClient
from oracle_service.schemas import (
    ComparisonError,
    ComparisonItem,
    ComparisonResult,
    ErrorKind,
    VerdictLabel,
)

log = logging.getLogger(__name__)

BASE_INDEX = -1  # sampling stream of the base response (perturbation indices are >= 0)
SAMPLING_SALT = 0x5EED_C0DE_5A3B_1E57  # keeps sampling streams apart from direction keys
SEED_BITS = 63  # torch.Generator seeds are taken as non-negative int64
SERVER_ERROR = 500  # HTTP statuses from here on are the service's failure: items abstain
VOTES = {VerdictLabel.B: -1, VerdictLabel.A: 1, VerdictLabel.TIE: 1, VerdictLabel.ABSTAIN: 0}


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
    """Output layer W (float32 master) plus r * z per row: logits = h W^T + r h z^T."""

    weight: torch.Tensor  # [V, d]
    directions: torch.Tensor | None  # [P, V, d] float32; None: the base (one row)
    radius: float
    cap: float | None = None

    @property
    def rows(self) -> int:
        return 1 if self.directions is None else self.directions.shape[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits [P, V] of hidden states [P, d]."""
        hidden = hidden.float()
        logits = hidden @ self.weight.float().T
        if self.directions is not None:
            logits += self.radius * torch.einsum("pvd,pd->pv", self.directions, hidden)
        return softcap(logits, self.cap)


@dataclass
class Generation:
    """Generated token ids per row (EOS included when reached), and logits if kept."""

    tokens: list[list[int]]
    logits: list[torch.Tensor] = field(default_factory=list)  # per step [P, V] float32


@torch.no_grad()
def encode_prefix(model: nn.Module, prompt_ids: Sequence[int]) -> Prefix:
    """Run the body once over the prompt, keeping the KV cache."""
    if not prompt_ids:
        raise ValueError("cannot generate from an empty prompt")
    ids = torch.tensor([list(prompt_ids)], device=model_device(model))
    out = model.base_model(input_ids=ids, use_cache=True)
    return Prefix(out.past_key_values, out.last_hidden_state[:, -1])


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
        out = model.base_model(input_ids=tokens[:, None], past_key_values=cache, use_cache=True)
        cache, hidden = out.past_key_values, out.last_hidden_state[:, -1]
    return Generation([until_eos(row, eos_id) for row in torch.stack(steps, 1).tolist()], kept)


def until_eos(tokens: list[int], eos_id: int | None) -> list[int]:
    """Tokens up to and including the first EOS."""
    if eos_id is None or eos_id not in tokens:
        return tokens
    return tokens[: tokens.index(eos_id) + 1]


def prompt_text(pair: TokenizedPair, tokenizer) -> str:
    """The prompt as the service sees it: the row's text, or the decoded conversation."""
    prompt = pair.row.get("prompt")
    if isinstance(prompt, str):
        return prompt
    return tokenizer.decode(pair.prompt_ids, skip_special_tokens=True)


def perturbation_head(weight: torch.Tensor, keys: Sequence[int], compo: ComPOConfig,
                      cap: float | None) -> PerturbedHead:
    """The head of several perturbations, directions rounded like the estimator's."""
    rows, cols = weight.shape
    directions = direction_rows(keys, 0, rows, cols, weight.device,
                                DTYPES[compo.direction_dtype]).float()
    return PerturbedHead(weight, directions, compo.radius, cap)


def votes_from_results(results: Sequence[ComparisonResult], count: int, per_index: int,
                       rule: str) -> torch.Tensor:
    """One vote per perturbation from its per-prompt verdicts (all abstained: 0)."""
    votes = []
    for start in range(0, count * per_index, per_index):
        answered = [VOTES[r.verdict] for r in results[start : start + per_index]
                    if r.verdict is not VerdictLabel.ABSTAIN]
        votes.append(combine(torch.tensor(answered) == -1, rule) if answered else 0)
    return torch.tensor(votes, dtype=torch.int8)


def service_url(config: TrainConfig) -> str:
    """The comparison service of kind=service: oracle.service_url, else oracle_service_url."""
    url = config.oracle.service_url or config.oracle_service_url
    if url is None:
        raise ConfigError("oracle.kind=service needs oracle.service_url (or "
                          "oracle_service_url): the comparison service's base URL")
    return url


def failed_results(items: Sequence[ComparisonItem], error: Exception) -> list[ComparisonResult]:
    """Explicit abstentions for items whose request failed in transit or on the server."""
    if isinstance(error, httpx.TimeoutException):
        kind = ErrorKind.TIMEOUT
    elif isinstance(error, OracleServiceError):
        kind = ErrorKind.SERVER_ERROR
    else:
        kind = ErrorKind.CONNECTION_ERROR
    failure = ComparisonError(kind=kind, message=f"{type(error).__name__}: {error}")
    return [ComparisonResult(verdict=VerdictLabel.ABSTAIN, error=failure,
                             perturbation=item.perturbation) for item in items]


class ServiceVoteSource:
    """VoteSource whose votes are the oracle service's verdicts on generated responses."""

    def __init__(self, model: nn.Module, tokenizer, config: TrainConfig, run_id: str,
                 token: str | None = None):
        """`token`: the service's bearer token; default: from oracle.token_env."""
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.run_id = checked_run_id(run_id)
        self.url = service_url(config)
        self.token = service_token(config) if token is None else token
        self.scorer = LikelihoodOracle(model, config.compo, tokenizer.pad_token_id,
                                       config.model.batch_size)  # log-probs for the metrics
        self.cap = logit_softcap(model)
        self.state, self.weight = None, None
        self.prompts: list[str] = []
        self.prefixes: list[Prefix] = []
        self.base: dict[tuple[int, int], list[str]] = {}
        self.counts: Counter = Counter()
        self.pool: ThreadPoolExecutor | None = None  # request threads, kept between calls
        self.local = threading.local()  # each request thread's client
        self.clients: list[SyncOracleClient] = []
        self.lock = threading.Lock()

    def prepare(self, pairs: Sequence[TokenizedPair], weight: torch.Tensor) -> torch.Tensor:
        """Score the pairs, encode their prompts once; `weight` is the float32 master W."""
        self.state = self.scorer.prepare(pairs, weight)
        self.weight = weight
        self.prompts = [prompt_text(pair, self.tokenizer) for pair in pairs]
        self.prefixes = [encode_prefix(self.model, pair.prompt_ids) for pair in pairs]
        self.base, self.counts = {}, Counter()
        return self.state.base_logprobs

    def logprobs(self, weight: torch.Tensor) -> torch.Tensor:
        return self.scorer.logprobs(self.state, weight)

    def base_responses(self, seed: int, iteration: int) -> list[str]:
        """The base response per prompt, generated once per iteration."""
        if (seed, iteration) not in self.base:
            head = PerturbedHead(self.weight, None, self.config.compo.radius, self.cap)
            self.base[seed, iteration] = [
                self._texts(prefix, head, seed, iteration, [BASE_INDEX], prompt)[0]
                for prompt, prefix in enumerate(self.prefixes)]
        return self.base[seed, iteration]

    def use_base(self, seed: int, iteration: int, texts: Sequence[str]) -> None:
        """Take base responses generated elsewhere (a Ray run generates them once)."""
        if len(texts) != len(self.prefixes):
            raise ValueError(f"{len(texts)} base responses for {len(self.prefixes)} prompts")
        self.base[seed, iteration] = list(texts)

    def responses(self, seed: int, iteration: int, indices: Sequence[int]) -> list[list[str]]:
        """Perturbed responses [index][prompt], generation_batch_size perturbations at once."""
        oracle, out = self.config.oracle, []
        for start in range(0, len(indices), oracle.generation_batch_size):
            group = list(indices[start : start + oracle.generation_batch_size])
            keys = [direction_key(seed, iteration, index) for index in group]
            head = perturbation_head(self.weight, keys, self.config.compo, self.cap)
            streams = [BASE_INDEX] * len(group) if oracle.noise == "shared" else group
            per_prompt = [self._texts(prefix, head, seed, iteration, streams, prompt)
                          for prompt, prefix in enumerate(self.prefixes)]
            out += [list(texts) for texts in zip(*per_prompt, strict=True)]
        return out

    def _texts(self, prefix: Prefix, head: PerturbedHead, seed: int, iteration: int,
               streams: Sequence[int], prompt: int) -> list[str]:
        """Decoded responses of the head's rows; row i samples from stream streams[i]."""
        generators = [torch.Generator().manual_seed(sampling_seed(seed, iteration, s, prompt))
                      for s in streams]
        out = generate(self.model, prefix, head, self.config.oracle, generators,
                       self.tokenizer.eos_token_id)
        return [self.tokenizer.decode(tokens, skip_special_tokens=True) for tokens in out.tokens]

    def votes(self, seed: int, iteration: int, indices: Sequence[int]) -> torch.Tensor:
        """Votes (int8, -1 / +1 / 0 abstain) from the verdicts. Each generation batch goes
        to the service while the next one is generated (oracle.requests_in_flight)."""
        oracle, started = self.config.oracle, time.perf_counter()
        base = self.base_responses(seed, iteration)
        self.counts["generate_s"] += time.perf_counter() - started
        if self.pool is None:
            self.pool = ThreadPoolExecutor(oracle.requests_in_flight, "compare")
        pending = []
        for first in range(0, len(indices), oracle.generation_batch_size):
            group = indices[first : first + oracle.generation_batch_size]
            started = time.perf_counter()
            texts = self.responses(seed, iteration, group)
            self.counts["generate_s"] += time.perf_counter() - started
            pending.append(self.pool.submit(self.request, self.items(base, iteration, group,
                                                                     texts)))
        results = [result for future in pending for result in self.counted(future.result())]
        return votes_from_results(results, len(indices), len(self.prompts),
                                  self.config.compo.vote_rule)

    def items(self, base: Sequence[str], iteration: int, indices: Sequence[int],
              texts: Sequence[Sequence[str]]) -> list[ComparisonItem]:
        """(prompt, base, perturbed) per perturbation and prompt, labelled for the stats."""
        return [ComparisonItem(prompt=self.prompts[prompt], response_a=base[prompt],
                               response_b=text, run_id=self.run_id, iteration=iteration,
                               perturbation=index)
                for index, row in zip(indices, texts, strict=True)
                for prompt, text in enumerate(row)]

    def request(self, items: list[ComparisonItem]) -> tuple[list[ComparisonResult], float]:
        """The service's verdicts and the seconds they took; a request failing in transit
        or with 5xx abstains, a 4xx (bad token, bad request) raises."""
        started = time.perf_counter()
        try:
            results = self.client().compare(items)
        except (httpx.TransportError, OracleServiceError) as error:
            if isinstance(error, OracleServiceError) and error.status_code < SERVER_ERROR:
                raise
            log.warning("oracle service %s failed (%s: %s): %d comparisons abstain", self.url,
                        type(error).__name__, error, len(items))
            results = failed_results(items, error)
        return results, time.perf_counter() - started

    def client(self) -> SyncOracleClient:
        """This thread's client, kept: its connections and the service's limits are reused."""
        client = getattr(self.local, "client", None)
        if client is None:
            oracle = self.config.oracle
            client = SyncOracleClient(self.url, self.token, timeout_s=oracle.timeout_s,
                                      batch_size=oracle.request_batch_size)
            self.local.client = client
            with self.lock:
                self.clients.append(client)
        return client

    def close(self) -> None:
        """Stop the request threads and close their clients (reopened when used again)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        for client in self.clients:
            client.close()
        self.pool, self.clients, self.local = None, [], threading.local()

    def counted(self, answer: tuple[list[ComparisonResult], float]) -> list[ComparisonResult]:
        """Count a request's verdicts, errors and seconds (in the calling thread)."""
        results, seconds = answer
        self.counts["compare_s"] += seconds
        self.counts["comparisons"] += len(results)
        self.counts.update(f"verdict_{r.verdict.value}" for r in results)
        self.counts.update(f"error_{r.error.kind.value}" for r in results if r.error)
        return results

    def take_counts(self) -> dict:
        """The counts since the last call (or prepare), then start counting afresh."""
        counts, self.counts = dict(self.counts), Counter()
        return counts

    def iteration_metrics(self) -> dict:
        return oracle_metrics(self.counts)


def oracle_metrics(counts: Counter) -> dict:
    """An iteration's comparisons: verdicts, abstentions by error kind, seconds."""
    return {"oracle": {
        "comparisons": counts["comparisons"],
        "verdicts": {label.value: counts[f"verdict_{label.value}"] for label in VerdictLabel},
        "errors": {key.removeprefix("error_"): value for key, value in counts.items()
                   if key.startswith("error_")},
        "generate_s": counts["generate_s"], "compare_s": counts["compare_s"]}}
