"""The service oracle's VoteSource: responses of perturbed output layers, judged by the
oracle service.

Per iteration the base response of each prompt is generated with the master weight W and
each perturbed one with W + r z (compo/service_oracle/generation.py). Pairs (prompt,
a = base, b = perturbed) go to the service; verdict b is a vote of -1 (perturbed better),
a or tie +1, abstain 0 (excluded from m and n_minus, counted in the metrics). The counts
(identical responses, lengths, ties, position-inconsistent verdicts, the antithetic signal
check) are sums, so a Ray coordinator adds its workers' counts (compo/service_oracle/metrics.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import torch
from torch import nn

from compo.config import TrainConfig
from compo.data.formats import TokenizedPair
from compo.directions import DirectionsConfig
from compo.errors import ConfigError, JudgeError
from compo.model.head import head_of
from compo.oracle import LikelihoodOracle, combine
from compo.perturbation import direction_key
from compo.service_oracle.budget import check_budget
from compo.service_oracle.generation import (
    BASE_INDEX,
    PerturbedHead,
    Prefix,
    encode_prefix,
    generate,
    generation_radius,
    perturbation_head,
    sampling_seed,
)
from compo.service_oracle.memory import fitting_batch, free_bytes, row_bytes
from compo.service_oracle.metrics import (
    abstentions_from_counts,
    check_counts,
    check_run_id,
    oracle_metrics,
)
from compo.service_oracle.preflight import refusal
from compo.service_oracle.reporting import checked_run_id, service_token
from oracle_service.client import OracleServiceError, SyncOracleClient
from oracle_service.schemas import (
    ComparisonError,
    ComparisonItem,
    ComparisonResult,
    ErrorKind,
    RunBudget,
    VerdictLabel,
)

log = logging.getLogger(__name__)

SERVER_ERROR = 500  # HTTP statuses from here on are the service's failure: items abstain
VOTES = {VerdictLabel.B: -1, VerdictLabel.A: 1, VerdictLabel.TIE: 1, VerdictLabel.ABSTAIN: 0}


def prompt_text(pair: TokenizedPair, tokenizer) -> str:
    """The prompt as the service sees it: the row's text, or the decoded conversation."""
    prompt = pair.row.get("prompt")
    if isinstance(prompt, str):
        return prompt
    return tokenizer.decode(pair.prompt_ids, skip_special_tokens=True)


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
    """The service oracle (compo/oracles/service.py): the oracle service's verdicts on
    generated responses."""

    def __init__(self, model: nn.Module, tokenizer, config: TrainConfig, run_id: str,
                 token: str | None = None, directions: DirectionsConfig | None = None):
        """`token`: the service's bearer token; default: from oracle.token_env.
        `directions`: the family perturbations come from (default: compo.directions)."""
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.directions = directions or config.compo.directions
        self.run_id = checked_run_id(run_id)
        self.url = service_url(config)
        self.token = service_token(config) if token is None else token
        self.scorer = LikelihoodOracle(model, config.compo, tokenizer.pad_token_id,
                                       config.model.batch_size)  # log-probs for the metrics
        self.head = head_of(model)
        self.state, self.weight = None, None
        self.radius: float | None = None  # the generation radius of the prepared prompts
        self.batch_size = config.oracle.generation_batch_size  # None: sized on first use
        self.prompts: list[str] = []
        self.prefixes: list[Prefix] = []
        self.prompt_tokens = 0  # the longest prepared prompt
        self.base: dict[tuple[int, int], list[str]] = {}
        self.counts: Counter = Counter()
        self.pool: ThreadPoolExecutor | None = None  # request threads, kept between calls
        self.local = threading.local()  # each request thread's client
        self.clients: list[SyncOracleClient] = []
        self.lock = threading.Lock()
        self.failure: str | None = None  # the last request that failed in transit or with 5xx

    def prepare(self, pairs: Sequence[TokenizedPair], weight: torch.Tensor) -> torch.Tensor:
        """Score the pairs, encode their prompts once; `weight` is the float32 master W."""
        self.state = self.scorer.prepare(pairs, weight)
        self.weight = weight
        self.prompts = [prompt_text(pair, self.tokenizer) for pair in pairs]
        self.prefixes = [encode_prefix(self.model, pair.prompt_ids) for pair in pairs]
        self.prompt_tokens = max(len(pair.prompt_ids) for pair in pairs)
        radius = generation_radius(self.config.oracle.radius,
                                   [prefix.hidden for prefix in self.prefixes], self.head.scale)
        if radius != self.radius:
            log.info("generation radius r = %.3g (oracle.radius %s %g)", radius,
                     self.config.oracle.radius.mode, self.config.oracle.radius.value)
        self.radius, self.base, self.counts = radius, {}, Counter()
        return self.state.base_logprobs

    def logprobs(self, weight: torch.Tensor) -> torch.Tensor:
        return self.scorer.logprobs(self.state, weight)

    def base_responses(self, seed: int, iteration: int) -> list[str]:
        """The base response per prompt, generated once per iteration."""
        if (seed, iteration) not in self.base:
            head = PerturbedHead(self.weight, None, self.radius, self.head)
            self.base[seed, iteration] = [
                self._texts(prefix, head, seed, iteration, [BASE_INDEX], prompt)[0]
                for prompt, prefix in enumerate(self.prefixes)]
        return self.base[seed, iteration]

    def use_base(self, seed: int, iteration: int, texts: Sequence[str]) -> None:
        """Take base responses generated elsewhere (a Ray run generates them once)."""
        if len(texts) != len(self.prefixes):
            raise ValueError(f"{len(texts)} base responses for {len(self.prefixes)} prompts")
        self.base[seed, iteration] = list(texts)

    def generation_batch(self) -> int:
        """Perturbations per generation batch: configured, or sized once from free memory."""
        if self.batch_size is None:
            weight, compo = self.weight, self.config.compo
            tokens = self.prompt_tokens + self.config.oracle.max_new_tokens
            per_row = row_bytes(tuple(weight.shape), self.model.config,
                                next(self.model.parameters()).dtype, tokens,
                                self.directions.rank or 0)
            self.batch_size = fitting_batch(free_bytes(weight.device), per_row,
                                            compo.num_perturbations)
            log.info("generation batches of %d perturbations (%.0f MiB each), from free "
                     "memory", self.batch_size, self.batch_size * per_row / 2**20)
        return self.batch_size

    def responses(self, seed: int, iteration: int, indices: Sequence[int],
                  sign: int = 1) -> list[list[str]]:
        """Perturbed responses [index][prompt] of W + sign * r z, a generation batch at a time
        (sign -1: the antithetic responses of the signal check)."""
        oracle, out, size = self.config.oracle, [], self.generation_batch()
        for start in range(0, len(indices), size):
            group = list(indices[start : start + size])
            keys = [direction_key(seed, iteration, index) for index in group]
            head = perturbation_head(self.weight, keys, self.radius, self.head,
                                     [sign] * len(group), self.directions)
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
        self.counts["generated_tokens"] += sum(map(len, out.tokens))
        return [self.tokenizer.decode(tokens, skip_special_tokens=True) for tokens in out.tokens]

    def votes(self, seed: int, iteration: int, indices: Sequence[int]) -> torch.Tensor:
        """Votes (int8, -1 / +1 / 0 abstain) from the verdicts. Each generation batch goes
        to the service while the next one is generated (oracle.requests_in_flight); the
        first oracle.signal_checks directions are also judged at -z (not votes)."""
        oracle, started = self.config.oracle, time.perf_counter()
        base = self.base_responses(seed, iteration)
        self.counts["generate_s"] += time.perf_counter() - started
        if self.pool is None:
            self.pool = ThreadPoolExecutor(oracle.requests_in_flight, "compare")
        pending = []
        for first in range(0, len(indices), self.generation_batch()):
            group = indices[first : first + self.generation_batch()]
            texts = self._timed_responses(seed, iteration, group)
            same = self.count_responses(base, texts)
            pending.append((self.pool.submit(self.request, self.items(base, iteration, group,
                                                                      texts)), same))
        checked = [index for index in indices if index < oracle.signal_checks]
        check = self._submit_check(base, seed, iteration, checked) if checked else None
        results = [result for future, same in pending
                   for result in self.counted(future.result(), same)]
        antithetic = check.result()[0] if check is not None else []
        check_budget([*results, *antithetic], iteration)  # stops before the step
        if check is not None:
            self.count_check(results, list(indices), checked, antithetic)
            self.counts["cost_usd"] += sum(r.cost_usd or 0.0 for r in antithetic)
        return votes_from_results(results, len(indices), len(self.prompts),
                                  self.config.compo.vote_rule)

    def _timed_responses(self, seed: int, iteration: int, indices: Sequence[int],
                         sign: int = 1) -> list[list[str]]:
        started = time.perf_counter()
        texts = self.responses(seed, iteration, indices, sign)
        self.counts["generate_s"] += time.perf_counter() - started
        return texts

    def _submit_check(self, base: Sequence[str], seed: int, iteration: int,
                      indices: Sequence[int]) -> Future:
        """Judge the antithetic responses W - r z of `indices` (under the check's run id)."""
        texts = self._timed_responses(seed, iteration, indices, sign=-1)
        items = self.items(base, iteration, indices, texts, check_run_id(self.run_id))
        return self.pool.submit(self.request, items)

    def count_responses(self, base: Sequence[str], texts: Sequence[Sequence[str]]
                        ) -> list[bool]:
        """Count perturbed responses, those identical to the base, lengths in characters;
        whether each (in item order) is identical."""
        same = [text == base[prompt] for row in texts for prompt, text in enumerate(row)]
        self.counts["responses"] += len(same)
        self.counts["identical"] += sum(same)
        self.counts["base_chars"] += len(texts) * sum(map(len, base))
        self.counts["perturbed_chars"] += sum(len(text) for row in texts for text in row)
        return same

    def count_check(self, results: Sequence[ComparisonResult], indices: list[int],
                    checked: Sequence[int], antithetic: Sequence[ComparisonResult]) -> None:
        """Pairs (+z, -z) with two decisive verdicts, how many are opposite, how many b."""
        prompts = len(self.prompts)
        for row, index in enumerate(checked):
            start = indices.index(index) * prompts
            for plus, minus in zip(results[start : start + prompts],
                                   antithetic[row * prompts : (row + 1) * prompts], strict=True):
                self.counts.update(check_counts(plus.verdict, minus.verdict))

    def items(self, base: Sequence[str], iteration: int, indices: Sequence[int],
              texts: Sequence[Sequence[str]], run_id: str | None = None
              ) -> list[ComparisonItem]:
        """(prompt, base, perturbed) per perturbation and prompt, labelled for the stats."""
        return [ComparisonItem(prompt=self.prompts[prompt], response_a=base[prompt],
                               response_b=text, run_id=run_id or self.run_id,
                               iteration=iteration, perturbation=index)
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
                raise JudgeError(refusal(error, self.url, self.config.oracle.token_env,
                                         self.token)) from None  # a 4xx: one line, no vote
            log.warning("oracle service %s failed (%s: %s): %d comparisons abstain", self.url,
                        type(error).__name__, error, len(items))
            results = failed_results(items, error)
            with self.lock:  # request threads: counted here, the rest in the calling thread
                self.failure = f"{type(error).__name__}: {error}"
                self.counts["service_failed"] += len(items)
        return results, time.perf_counter() - started

    def client(self) -> SyncOracleClient:
        """This thread's client, kept: its connections and the service's limits are reused."""
        client = getattr(self.local, "client", None)
        if client is None:
            oracle = self.config.oracle
            budget = (None if oracle.budget_usd is None
                      else RunBudget(run_id=self.run_id, usd=oracle.budget_usd))
            client = SyncOracleClient(self.url, self.token, timeout_s=oracle.timeout_s,
                                      batch_size=oracle.request_batch_size, budget=budget)
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

    def counted(self, answer: tuple[list[ComparisonResult], float],
                identical: Sequence[bool]) -> list[ComparisonResult]:
        """Count a request's verdicts, errors, the judge's own ties (responses that differ)
        and seconds (in the calling thread)."""
        results, seconds = answer
        self.counts["judge_ties"] += sum(r.verdict is VerdictLabel.TIE and not same
                                         for r, same in zip(results, identical, strict=True))
        self.counts["compare_s"] += seconds
        self.counts["comparisons"] += len(results)
        self.counts.update(f"verdict_{r.verdict.value}" for r in results)
        self.counts.update(f"error_{r.error.kind.value}" for r in results if r.error)
        self.counts["position_inconsistent"] += sum(r.position_inconsistent for r in results)
        self.counts["cost_usd"] += sum(r.cost_usd or 0.0 for r in results)
        self.counts["priced"] += sum(r.cost_usd is not None for r in results)
        return results

    def take_counts(self) -> dict:
        """The counts since the last call (or prepare), then start counting afresh."""
        counts, self.counts = dict(self.counts), Counter()
        return counts

    def metrics(self) -> dict:
        return oracle_metrics(self.counts)

    def abstentions(self):
        """This iteration's abstentions and their cause (compo/abstentions.py)."""
        return abstentions_from_counts(self.counts, self.url, self.failure)


